"""Privileged tests of capture + parse: real libpcap on 'any' inside network namespaces.

Ground truth: the traffic generator itself (N datagrams of S bytes, with the
addresses and ports of its sockets), checked against what the receiving
socket got.  Namespaces come from the ``make_netns`` fixture (conftest.py)
and are always deleted.

How the namespaces are entered: this thread calls setns(2) on
/run/netns/NAME, opens the Capture, the LinkTable and the traffic sockets,
then setns(2) back to its own namespace.  A socket stays in the namespace it
was created in, so the capture can be read (and the sockets used) from any
namespace afterwards.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import inside

from netatopd.capture import Capture, CaptureError, LinkTable
from netatopd.capture import lanes as lanes_module
from netatopd.capture.lanes import CaptureLanes, LaneKind
from netatopd.capture.pcap import CaptureFilterError, PcapStatus
from netatopd.counting import count_fixed, count_records
from netatopd.flows import FlowTable
from netatopd.parse import (
    PROTO_UDP,
    REJECT_COUNTERS_LENGTH,
    Direction,
    Packet,
    Reject,
    parse_batch,
)

pytestmark = pytest.mark.privileged

DATAGRAMS = 40
PAYLOAD_BYTES = 200
DRAIN_LIMIT_S = 5.0  # the most a drain waits for the expected packets
SETTLE_S = 0.1  # read on this long after the expected count, to catch extras
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def closing() -> Iterator[Callable[[object], None]]:
    """Register things with a close() method; all are closed after the test."""
    things: list[object] = []
    try:
        yield things.append
    finally:
        for thing in reversed(things):
            thing.close()  # type: ignore[attr-defined]


def drain(
    capture: Capture, links: LinkTable, wanted: Callable[[Packet], bool], count: int
) -> tuple[list[Packet], list[Packet], list[int], float]:
    """Read until `count` wanted packets were seen (bounded), then a little longer.

    Returns (wanted packets, other packets, rejects, newest timestamp).
    """
    rejects = [0] * REJECT_COUNTERS_LENGTH
    matched: list[Packet] = []
    others: list[Packet] = []
    newest = 0.0
    deadline = time.monotonic() + DRAIN_LIMIT_S
    settle_until: float | None = None
    while True:
        now = time.monotonic()
        if now > deadline or (settle_until is not None and now > settle_until):
            break
        select.select([capture], [], [], 0.02)
        batch = capture.read_batch()
        if batch.count:
            newest = max(newest, batch.newest_timestamp_s)
            for packet in parse_batch(batch.records, links, rejects):
                (matched if wanted(packet) else others).append(packet)
        if settle_until is None and len(matched) >= count:
            settle_until = time.monotonic() + SETTLE_S
    return matched, others, rejects, newest


def send_datagrams(sender: socket.socket, destination: tuple[str, int]) -> None:
    payload = b"\xa5" * PAYLOAD_BYTES
    for _ in range(DATAGRAMS):
        assert sender.sendto(payload, destination) == PAYLOAD_BYTES


def receive_datagrams(receiver: socket.socket) -> int:
    receiver.settimeout(2.0)
    received = 0
    for _ in range(DATAGRAMS):
        data = receiver.recv(4096)
        assert len(data) == PAYLOAD_BYTES
        received += 1
    return received


def udp_key(family: socket.AddressFamily, source: tuple, destination: tuple) -> bytes:
    return (
        socket.inet_pton(family, source[0])
        + socket.inet_pton(family, destination[0])
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
    )


@pytest.mark.parametrize(
    ("family", "address", "ip_header_bytes"),
    [(socket.AF_INET, "127.0.0.1", 20), (socket.AF_INET6, "::1", 40)],
    ids=["ipv4", "ipv6"],
)
def test_loopback_udp_seen_once_as_loopback(
    make_netns: Callable[[str], object],
    closing: Callable[[object], None],
    family: socket.AddressFamily,
    address: str,
    ip_header_bytes: int,
) -> None:
    ns = make_netns("ntpA")
    with inside(ns.name):  # type: ignore[attr-defined]
        capture = Capture("any")
        closing(capture)
        links = LinkTable()
        closing(links)
        receiver = socket.socket(family, socket.SOCK_DGRAM)
        closing(receiver)
        receiver.bind((address, 0))
        sender = socket.socket(family, socket.SOCK_DGRAM)
        closing(sender)
        sender.bind((address, 0))
    source = sender.getsockname()[:2]
    destination = receiver.getsockname()[:2]
    key = udp_key(family, source, destination)

    started_s = time.time()
    send_datagrams(sender, destination)
    assert receive_datagrams(receiver) == DATAGRAMS
    matched, others, rejects, newest = drain(
        capture, links, lambda packet: packet[2] == key, DATAGRAMS
    )
    finished_s = time.time()

    expected_wire = ip_header_bytes + 8 + PAYLOAD_BYTES + 14 + 4
    assert matched == [(Direction.LOOPBACK, PROTO_UDP, key, expected_wire)] * DATAGRAMS
    assert others == []
    assert sum(rejects) == 0
    # Timestamps are on time.time()'s clock (pcap keeps microseconds).
    assert started_s - 1e-6 <= newest <= finished_s
    stats = capture.stats()
    # libpcap's counter sees both copies of a loopback packet, delivers one.
    assert stats.received == 2 * DATAGRAMS
    assert stats.dropped == 0


@pytest.fixture
def veth_pair(make_netns: Callable[[str], object]) -> tuple[str, str]:
    """Two namespaces joined by a veth pair: 192.0.2.1/24 <-> 192.0.2.2/24."""
    left = make_netns("ntpA")
    right = make_netns("ntpA")
    left_name: str = left.name  # type: ignore[attr-defined]
    right_name: str = right.name  # type: ignore[attr-defined]
    for argv in (
        ["-n", left_name, "link", "add", "va", "type", "veth", "peer", "name", "vb"],
        ["-n", left_name, "link", "set", "vb", "netns", right_name],
        ["-n", left_name, "addr", "add", "192.0.2.1/24", "dev", "va"],
        ["-n", right_name, "addr", "add", "192.0.2.2/24", "dev", "vb"],
        ["-n", left_name, "link", "set", "va", "up"],
        ["-n", right_name, "link", "set", "vb", "up"],
    ):
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)
    return left_name, right_name


def test_veth_sender_sees_sent_receiver_sees_received(
    veth_pair: tuple[str, str], closing: Callable[[object], None]
) -> None:
    left, right = veth_pair
    with inside(left):
        sent_capture = Capture("any")
        closing(sent_capture)
        sent_links = LinkTable()
        closing(sent_links)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closing(sender)
        sender.bind(("192.0.2.1", 0))
    with inside(right):
        received_capture = Capture("any")
        closing(received_capture)
        received_links = LinkTable()
        closing(received_links)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closing(receiver)
        receiver.bind(("192.0.2.2", 0))
        warm_up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closing(warm_up)
        warm_up.bind(("192.0.2.2", 0))
        warm_up.settimeout(0.1)

    # Resolve ARP first (bounded), on another port, so no datagram waits in a queue.
    for _ in range(50):
        sender.sendto(b"warm-up", warm_up.getsockname())
        try:
            warm_up.recv(64)
            break
        except TimeoutError:
            continue
    else:
        pytest.fail("the veth pair never carried a datagram")

    source = sender.getsockname()
    destination = receiver.getsockname()
    key = udp_key(socket.AF_INET, source, destination)
    send_datagrams(sender, destination)
    assert receive_datagrams(receiver) == DATAGRAMS

    expected_wire = 20 + 8 + PAYLOAD_BYTES + 14 + 4  # veth: ethernet, MTU 1500

    matched, others, _, _ = drain(sent_capture, sent_links, lambda p: p[2] == key, DATAGRAMS)
    assert matched == [(Direction.SENT, PROTO_UDP, key, expected_wire)] * DATAGRAMS
    assert not any(packet[2] == key for packet in others)

    matched, others, _, _ = drain(
        received_capture, received_links, lambda p: p[2] == key, DATAGRAMS
    )
    assert matched == [(Direction.RECEIVED, PROTO_UDP, key, expected_wire)] * DATAGRAMS

    for capture in (sent_capture, received_capture):
        stats = capture.stats()
        assert stats.received >= DATAGRAMS
        assert stats.dropped == 0


def test_link_table_inside_namespace(
    veth_pair: tuple[str, str], closing: Callable[[object], None]
) -> None:
    left, _ = veth_pair
    with inside(left):
        links = LinkTable()
        closing(links)
        va = socket.if_nametoindex("va")
        lo = socket.if_nametoindex("lo")
    # Asked from the test's own namespace: still answers for `left`.
    assert links[va] == (14, 1500)
    assert links[lo] == (14, 65536)
    subprocess.run(
        ["ip", "-n", left, "link", "set", "va", "mtu", "1400"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert links[va] == (14, 1500)  # cached until forgotten
    links.forget(va)
    assert links[va] == (14, 1400)
    subprocess.run(
        ["ip", "-n", left, "link", "del", "va"], check=True, capture_output=True, timeout=30
    )
    links.forget(va)
    assert links[va] == (0, 65536)
    assert va not in links


def test_close_is_idempotent_and_final(
    make_netns: Callable[[str], object],
) -> None:
    ns = make_netns("ntpA")
    with inside(ns.name):  # type: ignore[attr-defined]
        capture = Capture("any")
    assert capture.fileno() >= 0
    assert capture.read_batch().count == 0
    capture.close()
    capture.close()
    with pytest.raises(CaptureError):
        capture.read_batch()
    with pytest.raises(CaptureError):
        capture.stats()


def test_no_such_interface(make_netns: Callable[[str], object]) -> None:
    ns = make_netns("ntpA")
    with inside(ns.name), pytest.raises(CaptureError) as caught:  # type: ignore[attr-defined]
        Capture("ntpAnosuch0")
    assert caught.value.status == PcapStatus.ERROR_NO_SUCH_DEVICE


def test_lanes_on_a_missing_interface_fail_whole(make_netns: Callable[[str], object]) -> None:
    ns = make_netns("ntpA")
    before = len(os.listdir("/proc/self/fd"))
    with inside(ns.name), pytest.raises(CaptureError) as caught:  # type: ignore[attr-defined]
        CaptureLanes("ntpAnosuch0")
    assert caught.value.status == PcapStatus.ERROR_NO_SUCH_DEVICE
    assert len(os.listdir("/proc/self/fd")) == before  # no lane left open
    with inside(ns.name):  # type: ignore[attr-defined]
        lanes = CaptureLanes("any", buffer_bytes=4 << 20)
    assert [lane.kind for lane in lanes.lanes] == [LaneKind.IPV4, LaneKind.IPV6, LaneKind.OTHER]
    assert len(lanes.filenos()) == 3
    lanes.close()
    lanes.close()
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(CaptureError):
        lanes.stats()


def test_lanes_fall_back_to_one_handle_when_a_filter_is_refused(
    make_netns: Callable[[str], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libpcap that cannot compile a lane's filter: one handle takes everything."""
    ns = make_netns("ntpA")
    monkeypatch.setattr(lanes_module, "IPV4_FIXED_FILTER", "ip and and")
    before = len(os.listdir("/proc/self/fd"))
    with inside(ns.name):  # type: ignore[attr-defined]
        lanes = CaptureLanes("any", buffer_bytes=4 << 20)
    try:
        assert lanes.single is True
        assert "bad capture filter 'ip and and'" in lanes.fallback
        assert [lane.kind for lane in lanes.lanes] == [LaneKind.OTHER]
        assert len(os.listdir("/proc/self/fd")) == before + 1  # the one handle's socket
    finally:
        lanes.close()
    # One handle asked for, and its filter refused: nothing to fall back to.
    monkeypatch.setattr(lanes_module, "DEFAULT_FILTER", "ip and and")
    with inside(ns.name), pytest.raises(CaptureFilterError):  # type: ignore[attr-defined]
        CaptureLanes("any", single=True, buffer_bytes=4 << 20)
    assert len(os.listdir("/proc/self/fd")) == before


def test_bad_filter(make_netns: Callable[[str], object]) -> None:
    ns = make_netns("ntpA")
    with inside(ns.name), pytest.raises(CaptureError, match="bad capture filter"):  # type: ignore[attr-defined]
        Capture("any", bpf_filter="ip and and")


CHILD = """
import sys
from netatopd.capture import Capture, CapturePermissionError
try:
    Capture("any")
except CapturePermissionError as err:
    print(err)
    sys.exit(0)
sys.exit(3)
"""


def test_unprivileged_user_gets_permission_error(make_netns: Callable[[str], object]) -> None:
    make_netns("ntpA")  # only for the root check and its loud skip
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "CAP_NET_RAW" in done.stdout and "CAP_NET_ADMIN" in done.stdout


# -- capture lanes ---------------------------------------------------------------------

LANE_ROUNDS = 10  # datagrams of each kind below
FRAGMENTED_BYTES = 3000  # over the veth MTU of 1500: three IPv4 fragments, none credited


def snapshot(flows: FlowTable) -> tuple[dict[str, int], tuple[int, int], list[tuple]]:
    """Totals, (flows, overflow), and every flow's identity and counters, sorted."""
    described = sorted(
        (
            f.proto,
            f.local_addr,
            f.local_port,
            f.remote_addr,
            f.remote_port,
            f.snd_packs,
            f.snd_bytes,
            f.rcv_packs,
            f.rcv_bytes,
        )
        for f in flows.all_flows()
    )
    return flows.totals.as_dict(), (flows.count, flows.overflow), described


def _drain_lanes(
    captures: list[CaptureLanes], flows: list[FlowTable], links: LinkTable, rejects: list[list[int]]
) -> list[int]:
    """Read every lane of every capture, in turns, until none got anything for a while
    (bounded); the frames each capture counted."""
    counted = [0] * len(captures)
    deadline = time.monotonic() + DRAIN_LIMIT_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 2 * SETTLE_S:
        select.select([fd for c in captures for fd in c.filenos()], [], [], 0.02)
        for index, lanes in enumerate(captures):
            for kind, capture in lanes.lanes:
                batch = capture.read_batch()
                if not batch.count:
                    continue
                quiet_since = time.monotonic()
                counted[index] += batch.count
                table, reasons = flows[index], rejects[index]
                if kind.frame_bytes:
                    position = 0
                    while position < len(batch.records):  # every record the lane's length
                        caplen = struct.unpack_from("=8xI", batch.records, position)[0]
                        assert caplen == kind.frame_bytes, kind.name
                        position += 16 + caplen
                    sums = count_fixed(batch.records, batch.count, kind, links, reasons)
                else:
                    sums = count_records(batch.records, links, reasons)
                table.charge(sums, 1.0)
    return counted


def test_lanes_partition_the_traffic_and_count_like_one_handle(
    veth_pair: tuple[str, str], closing: Callable[[object], None]
) -> None:
    """The three lanes and one handle, open side by side, count the same traffic the same.

    Ground truth for the UDP flows: LANE_ROUNDS datagrams of each size, each
    size + 8 + 20 IP bytes (+ 40 for IPv6 instead of 20) + 14 + 4 on the wire;
    the fragmented datagrams count nothing for the flow: all three fragments
    of each, the first included, are rejected as fragments (netatopd(8)).
    """
    left, right = veth_pair
    # No IPv6 on the veth pair: its neighbour discovery and MLD reports would come at
    # any moment, between the last reads of the two captures.
    for netns, device in ((left, "va"), (right, "vb")):
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{device}.disable_ipv6=1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    with inside(left):
        lanes = CaptureLanes("any", buffer_bytes=8 << 20)
        closing(lanes)
        single = CaptureLanes("any", buffer_bytes=8 << 20, single=True)
        closing(single)
        links = LinkTable()
        closing(links)
        sockets: dict[str, socket.socket] = {}
        for name, family, address in (
            ("veth", socket.AF_INET, "192.0.2.1"),
            ("options", socket.AF_INET, "192.0.2.1"),
            ("lo6", socket.AF_INET6, "::1"),
            ("lo6_sink", socket.AF_INET6, "::1"),
        ):
            sockets[name] = socket.socket(family, socket.SOCK_DGRAM)
            closing(sockets[name])
            sockets[name].bind((address, 0))
        # Four bytes of IPv4 options (NOPs and an end of list): a 24-byte header.
        sockets["options"].setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x00")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        closing(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        closing(client)
    # 192.0.2.2 answers ARP from the right namespace; nothing listens on port 9 there,
    # so every datagram to it also brings an ICMP port unreachable back (other lane).
    peer = ("192.0.2.2", 9)
    sizes = (0, 1, 64, 1000)
    for size in sizes:
        for _ in range(LANE_ROUNDS):
            sockets["veth"].sendto(b"\x5a" * size, peer)
            time.sleep(0.001)  # ICMP replies are rate limited per second, not per burst
    for _ in range(LANE_ROUNDS):
        sockets["options"].sendto(b"\x5a" * 50, peer)
        sockets["veth"].sendto(b"\x5a" * FRAGMENTED_BYTES, peer)
        for size in (0, 64):
            sockets["lo6"].sendto(b"\x5a" * size, sockets["lo6_sink"].getsockname())
    client.connect(listener.getsockname())
    served, _ = listener.accept()
    closing(served)
    for _ in range(LANE_ROUNDS):
        client.sendall(b"q" * 100)
        assert served.recv(4096)
    client.close()
    served.close()

    tables = [FlowTable(), FlowTable()]
    reasons = [[0] * REJECT_COUNTERS_LENGTH, [0] * REJECT_COUNTERS_LENGTH]
    lane_count, one_count = _drain_lanes([lanes, single], tables, links, reasons)
    lane_flows, one_flows = snapshot(tables[0]), snapshot(tables[1])
    lane_rejects, one_rejects = reasons
    lane_stats, one_stats = lanes.stats(), single.stats()
    assert lane_count == one_count
    assert lane_flows == one_flows
    assert lane_rejects == one_rejects
    assert lane_stats.received == one_stats.received  # each frame in exactly one lane
    assert lane_stats.dropped == one_stats.dropped == 0

    # (protocol, local port) -> (sent packets, sent bytes)
    flows_by_port = {(row[0], row[2]): (row[5], row[6]) for row in lane_flows[2]}
    veth_port = sockets["veth"].getsockname()[1]
    expected_veth_bytes = LANE_ROUNDS * sum(size + 8 + 20 + 18 for size in sizes)
    assert flows_by_port[(PROTO_UDP, veth_port)] == (
        LANE_ROUNDS * len(sizes),
        expected_veth_bytes,
    )
    options_port = sockets["options"].getsockname()[1]
    assert flows_by_port[(PROTO_UDP, options_port)] == (
        LANE_ROUNDS,
        LANE_ROUNDS * (50 + 8 + 24 + 18),
    )
    lo6_port = sockets["lo6"].getsockname()[1]
    assert flows_by_port[(PROTO_UDP, lo6_port)] == (
        2 * LANE_ROUNDS,
        LANE_ROUNDS * ((0 + 8 + 40 + 18) + (64 + 8 + 40 + 18)),
    )
    assert lane_rejects[Reject.FRAGMENT] == 3 * LANE_ROUNDS
    assert lane_flows[0]["icmp_received"] >= 1
