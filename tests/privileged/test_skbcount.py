"""The kernel counting path's core (netatopd.ebpf.skbcount) against ground truth.

Traffic runs in network namespaces the tests make; sockets are created in a
worker thread that entered the namespace with setns(2) (a socket stays in the
namespace it was created in, whichever thread then uses it).  The programs
sit at the cgroup v2 root and see the whole machine's traffic (other tests
included), so every assertion looks only at the cookies of sockets made
here (SO_COOKIE).

Ground truth:
* UDP, n datagrams of s bytes: n packets each way, IP bytes n * (s + 8 + 20)
  over IPv4, n * (s + 8 + 40) over IPv6; wire bytes add 14 (link header,
  ethernet and loopback) + 4 (CRC) per packet.
* TCP with timestamps, SACK and window scaling off (a 20-byte header, 24 on
  SYN and SYN-ACK for the MSS option), GSO on (veth default): the connecting
  socket's packets sent equal ``tcpi_segs_out`` and received ``tcpi_segs_in``;
  IP bytes are segments * (20 + IP header) + 4 (MSS option) + payload
  (``tcpi_bytes_sent`` / ``tcpi_bytes_received``).  The kernel delivers the
  SYN and the handshake's final ACK through the listener, and sends the
  SYN-ACK from it: the listener has 1 packet sent and 2 received.  The
  accepted socket's ``tcpi_segs_in`` counts that final ACK twice
  (``tcp_create_openreq_child`` starts it at 1, ``tcp_child_process`` adds
  the same skb), so its own packets received are ``tcpi_segs_in - 2``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import in_namespace

from netatopd.ebpf.skbcount import (
    SEEN_MAP_ENTRIES,
    AttachMode,
    KernelCounter,
    SocketCounts,
    find_cgroup2_root,
    wire_bytes,
)
from netatopd.ebpf.syscalls import AttachType, prog_query

from bpf_objects import wait_gone

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpK"
SO_COOKIE = 57
SO_NETNS_COOKIE = 71
TCP_INFO_BYTES = 232
TCPI_BYTES_RECEIVED = 128  # __u64 (linux/tcp.h struct tcp_info)
TCPI_SEGS_OUT = 136  # __u32
TCPI_SEGS_IN = 140  # __u32
TCPI_BYTES_SENT = 200  # __u64
TIMEOUT_S = 10.0
QUIET_WAIT_S = 10.0
LINK_HEADER = 14
UDP_COUNT = 40
UDP_SIZE = 300
TCP_BULK_BYTES = 4 << 20
MSS_OPTION_BYTES = 4
IP4, IP6 = 20, 40
UDP_HEADER, TCP_HEADER = 8, 20


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("PRIVILEGED TEST SKIPPED: cgroup_skb programs need root")


def in_netns(name: str, function: Callable[[], Any]) -> Any:
    """function() run in a thread inside the namespace /run/netns/<name>; its result."""
    return in_namespace(name, function, TIMEOUT_S)


def cookie(sock: socket.socket) -> int:
    return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])


def netns_cookie(sock: socket.socket) -> int:
    return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])


def tcp_info(sock: socket.socket) -> tuple[int, int, int, int]:
    """(segs_out, segs_in, bytes_sent, bytes_received)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    return (
        struct.unpack_from("=I", raw, TCPI_SEGS_OUT)[0],
        struct.unpack_from("=I", raw, TCPI_SEGS_IN)[0],
        struct.unpack_from("=Q", raw, TCPI_BYTES_SENT)[0],
        struct.unpack_from("=Q", raw, TCPI_BYTES_RECEIVED)[0],
    )


class Totals:
    """Every drain of a counter added up per cookie."""

    def __init__(self, counter: KernelCounter) -> None:
        self.counter = counter
        self.sums: dict[int, list[int]] = {}
        self.info: dict[int, SocketCounts] = {}

    def drain(self) -> Totals:
        for key, counts in self.counter.drain().items():
            row = self.sums.setdefault(key, [0, 0, 0, 0])
            row[0] += counts.sent_packets
            row[1] += counts.sent_ip_bytes
            row[2] += counts.recv_packets
            row[3] += counts.recv_ip_bytes
            self.info[key] = counts
        return self

    def of(self, sock_cookie: int) -> tuple[int, int, int, int]:
        """(sent packets, sent IP bytes, received packets, received IP bytes)."""
        sent_p, sent_b, recv_p, recv_b = self.sums.get(sock_cookie, [0, 0, 0, 0])
        return sent_p, sent_b, recv_p, recv_b


@pytest.fixture
def counter() -> Iterator[KernelCounter]:
    root_or_skip()
    with KernelCounter.open() as kernel_counter:
        yield kernel_counter


def veth_pair(left: Any, right: Any, left_addrs: list[str], right_addrs: list[str]) -> None:
    """A veth pair between two namespaces, up, with the given addresses (nodad for IPv6)."""
    left_dev, right_dev = f"{left.name[-8:]}a", f"{right.name[-8:]}b"
    subprocess.run(
        ["ip", "link", "add", left_dev, "type", "veth", "peer", "name", right_dev],
        check=True,
        capture_output=True,
        timeout=30,
    )
    for ns, dev, addrs in ((left, left_dev, left_addrs), (right, right_dev, right_addrs)):
        subprocess.run(
            ["ip", "link", "set", dev, "netns", ns.name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.run("ip", "addr", "add", addr, "dev", dev, *extra)
        ns.run("ip", "link", "set", dev, "up")


def no_tcp_options(ns: Any) -> None:
    for name in ("tcp_timestamps", "tcp_sack", "tcp_window_scaling"):
        ns.run("sh", "-c", f"echo 0 > /proc/sys/net/ipv4/{name}")


def udp_exchange(
    sender_ns: str, receiver_ns: str, family: int, target: str
) -> tuple[int, int, int]:
    """UDP_COUNT datagrams of UDP_SIZE bytes; (sender cookie, receiver cookie, netns cookie)."""
    receiver = in_netns(receiver_ns, lambda: socket.socket(family, socket.SOCK_DGRAM))
    sender = in_netns(sender_ns, lambda: socket.socket(family, socket.SOCK_DGRAM))
    with receiver, sender:
        receiver.settimeout(TIMEOUT_S)
        receiver.bind((target, 0))
        port = receiver.getsockname()[1]
        payload = b"u" * UDP_SIZE
        for _ in range(UDP_COUNT):
            sender.sendto(payload, (target, port))
        for _ in range(UDP_COUNT):
            assert len(receiver.recv(65536)) == UDP_SIZE
        return cookie(sender), cookie(receiver), netns_cookie(sender)


def assert_udp(totals: Totals, sender: int, receiver: int, ip_header: int) -> None:
    ip_bytes = UDP_COUNT * (UDP_SIZE + UDP_HEADER + ip_header)
    assert totals.of(sender) == (UDP_COUNT, ip_bytes, 0, 0)
    assert totals.of(receiver) == (0, 0, UDP_COUNT, ip_bytes)
    wire = UDP_COUNT * (UDP_SIZE + UDP_HEADER + ip_header + LINK_HEADER + 4)
    assert wire_bytes(ip_bytes, UDP_COUNT, LINK_HEADER) == wire
    for key in (sender, receiver):
        assert totals.info[key].protocol == socket.IPPROTO_UDP


@pytest.mark.parametrize(
    ("family", "target", "ip_header"),
    [(socket.AF_INET, "127.0.0.1", IP4), (socket.AF_INET6, "::1", IP6)],
)
def test_udp_loopback_in_a_namespace(
    counter: KernelCounter, make_netns: Callable[..., Any], family: int, target: str, ip_header: int
) -> None:
    ns = make_netns(NETNS_PREFIX)
    sender, receiver, ns_cookie = udp_exchange(ns.name, ns.name, family, target)
    totals = Totals(counter).drain()
    assert_udp(totals, sender, receiver, ip_header)
    assert totals.info[sender].netns_cookie == ns_cookie
    assert totals.info[sender].family == family


def test_udp_over_veth_ipv4_and_ipv6(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    left, right = make_netns(NETNS_PREFIX), make_netns(NETNS_PREFIX)
    veth_pair(left, right, ["192.0.2.1/24", "2001:db8::1/64"], ["192.0.2.2/24", "2001:db8::2/64"])
    sender4, receiver4, left_cookie = udp_exchange(
        left.name, right.name, socket.AF_INET, "192.0.2.2"
    )
    sender6, receiver6, _ = udp_exchange(left.name, right.name, socket.AF_INET6, "2001:db8::2")
    totals = Totals(counter).drain()
    assert_udp(totals, sender4, receiver4, IP4)
    assert_udp(totals, sender6, receiver6, IP6)
    assert totals.info[sender4].netns_cookie == left_cookie
    assert totals.info[receiver4].netns_cookie != left_cookie


def _quiet_tcp_info(socks: list[socket.socket]) -> list[tuple[int, int, int, int]]:
    """TCP_INFO of every socket once two readings 200 ms apart agree (bounded)."""
    deadline = time.monotonic() + QUIET_WAIT_S
    previous = [tcp_info(s) for s in socks]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = [tcp_info(s) for s in socks]
        if current == previous:
            return current
        previous = current
    raise AssertionError("TCP traffic did not settle")


@pytest.mark.parametrize(
    ("family", "left_addr", "right_addr", "ip_header"),
    [
        (socket.AF_INET, "192.0.2.1/24", "192.0.2.2/24", IP4),
        (socket.AF_INET6, "2001:db8::1/64", "2001:db8::2/64", IP6),
    ],
)
def test_tcp_bulk_over_veth_counts_wire_segments(
    counter: KernelCounter,
    make_netns: Callable[..., Any],
    family: int,
    left_addr: str,
    right_addr: str,
    ip_header: int,
) -> None:
    left, right = make_netns(NETNS_PREFIX), make_netns(NETNS_PREFIX)
    no_tcp_options(left)
    no_tcp_options(right)
    veth_pair(left, right, [left_addr], [right_addr])
    server_addr = right_addr.split("/")[0]
    listener = in_netns(right.name, lambda: socket.socket(family, socket.SOCK_STREAM))
    client = in_netns(left.name, lambda: socket.socket(family, socket.SOCK_STREAM))
    with listener, client:
        listener.settimeout(TIMEOUT_S)
        client.settimeout(TIMEOUT_S)
        listener.bind((server_addr, 0))
        listener.listen(1)
        client.connect((server_addr, listener.getsockname()[1]))
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(TIMEOUT_S)
            received = bytearray()

            def read_all() -> None:
                while len(received) < TCP_BULK_BYTES:
                    chunk = accepted.recv(1 << 20)
                    if not chunk:
                        return
                    received.extend(chunk)

            reader = threading.Thread(target=read_all)
            reader.start()
            client.sendall(b"t" * TCP_BULK_BYTES)
            reader.join(TIMEOUT_S)
            assert len(received) == TCP_BULK_BYTES
            accepted.sendall(b"r" * 1000)  # a little data back
            assert len(client.recv(4096)) > 0
            socks = [client, accepted, listener]
            cookies = [cookie(s) for s in socks[:2]] + [cookie(listener)]
            infos = _quiet_tcp_info(socks[:2])
            totals = Totals(counter).drain()
            assert _quiet_tcp_info(socks[:2]) == infos, "traffic after the drain"
    (c_out, c_in, c_sent, c_received), (a_out, a_in, a_sent, a_received) = infos
    header = ip_header + TCP_HEADER
    assert c_out > TCP_BULK_BYTES // 65536  # many segments: the aggregates were split
    assert totals.of(cookies[0]) == (
        c_out,
        c_out * header + MSS_OPTION_BYTES + c_sent,
        c_in,
        c_in * header + MSS_OPTION_BYTES + c_received,
    )
    # The accepted socket: its segs_in counts the handshake's last ACK twice,
    # and the listener received it; it sent no SYN-ACK (the listener did).
    assert totals.of(cookies[1]) == (
        a_out,
        a_out * header + a_sent,
        a_in - 2,
        (a_in - 2) * header + a_received,
    )
    assert totals.of(cookies[2]) == (
        1,
        header + MSS_OPTION_BYTES,
        2,
        2 * header + MSS_OPTION_BYTES,
    )
    for key in cookies:
        assert totals.info[key].protocol == socket.IPPROTO_TCP


def test_forwarded_packets_are_not_counted(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    left, router, right = (make_netns(NETNS_PREFIX) for _ in range(3))
    veth_pair(left, router, ["192.0.2.1/24"], ["192.0.2.254/24"])
    veth_pair(router, right, ["198.51.100.254/24"], ["198.51.100.1/24"])
    router.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    left.run("ip", "route", "add", "default", "via", "192.0.2.254")
    right.run("ip", "route", "add", "default", "via", "198.51.100.254")
    probe = in_netns(router.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with probe:
        router_cookie = netns_cookie(probe)
    sender, receiver, _ = udp_exchange(left.name, right.name, socket.AF_INET, "198.51.100.1")
    totals = Totals(counter).drain()
    assert_udp(totals, sender, receiver, IP4)
    # The router's own kernel sockets send ICMPv6 (MLD, neighbour discovery):
    # local traffic, not TCP or UDP.  Nothing forwarded reaches any socket there.
    in_router = [
        info
        for info in totals.info.values()
        if info.netns_cookie == router_cookie
        and info.protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
    ]
    assert in_router == []


def test_counts_between_drains_add_up(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    """Draining while traffic flows loses and repeats nothing."""
    ns = make_netns(NETNS_PREFIX)
    receiver = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    totals = Totals(counter)
    rounds, per_round = 20, 50
    with receiver, sender:
        receiver.settimeout(TIMEOUT_S)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind(("127.0.0.1", 0))
        stop = threading.Event()

        def drain_loop() -> None:
            for _ in range(10_000):
                if stop.is_set():
                    return
                totals.drain()

        drainer = threading.Thread(target=drain_loop)
        drainer.start()
        try:
            for _ in range(rounds):
                for _ in range(per_round):
                    sender.sendto(b"d" * 64, receiver.getsockname())
                for _ in range(per_round):
                    receiver.recv(1024)
        finally:
            stop.set()
            drainer.join(TIMEOUT_S)
        totals.drain()
        n = rounds * per_round
        ip_bytes = n * (64 + UDP_HEADER + IP4)
        assert totals.of(cookie(sender)) == (n, ip_bytes, 0, 0)
        assert totals.of(cookie(receiver)) == (0, 0, n, ip_bytes)
    assert counter.lost() == (0, 0)


EMPTY_DRAIN_TRIES = 200


def test_drain_of_an_empty_map_is_skipped_and_a_new_socket_is_news(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    """A drain right after a drain finds no entry made (the news counter did not
    move): it returns nothing without switching maps.  A socket's first packet
    moves the counter, and the next drain counts it exactly.  The programs count
    the whole machine, so the empty moment is waited for (bounded)."""
    for _ in range(EMPTY_DRAIN_TRIES):
        counter.drain()
        skipped = counter.skipped_drains
        got = counter.drain()
        if counter.skipped_drains > skipped:
            assert got == {}
            break
        time.sleep(0.005)
    else:
        pytest.fail(f"the socket map was never empty in {EMPTY_DRAIN_TRIES} tries")
    ns = make_netns(NETNS_PREFIX)
    receiver = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with receiver, sender:
        receiver.settimeout(TIMEOUT_S)
        receiver.bind(("127.0.0.1", 0))
        entries, sockets = counter.news()
        sender.sendto(b"n" * 64, receiver.getsockname())
        receiver.recv(1024)
        assert counter.changes() == (True, True)
        after_entries, after_sockets = counter.news()
        assert after_entries >= entries + 2  # the sender's entry and the receiver's
        assert after_sockets >= sockets + 2  # both met for the first time
        totals = Totals(counter).drain()
        ip_bytes = 64 + UDP_HEADER + IP4
        assert totals.of(cookie(sender)) == (1, ip_bytes, 0, 0)
        assert totals.of(cookie(receiver)) == (0, 0, 1, ip_bytes)


def test_a_known_socket_makes_entries_but_is_no_new_socket(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    """After its first drain a socket that goes on sending makes a new entry in
    each map in use (news entries move) but is not met for the first time again
    (news sockets do not move for it); its counts stay exact over the drains."""
    ns = make_netns(NETNS_PREFIX)
    receiver = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    ip_bytes = 64 + UDP_HEADER + IP4
    with receiver, sender:
        receiver.settimeout(TIMEOUT_S)
        receiver.bind(("127.0.0.1", 0))
        totals = Totals(counter)
        sender.sendto(b"k" * 64, receiver.getsockname())
        receiver.recv(1024)
        totals.drain()
        _, sockets = counter.news()
        rounds = 5
        for _ in range(rounds):
            entries, _ = counter.news()
            sender.sendto(b"k" * 64, receiver.getsockname())
            receiver.recv(1024)
            assert counter.news()[0] >= entries + 2  # a new entry for each, in the new map
            totals.drain()
        # Other sockets of the machine may be new meanwhile, never these two: the
        # LRU holds both cookies (far fewer sockets than its entries met since).
        assert counter.news()[1] - sockets < SEEN_MAP_ENTRIES
        seen = counter.seen_cookies()
        assert cookie(sender) in seen and cookie(receiver) in seen
        assert totals.of(cookie(sender)) == (rounds + 1, (rounds + 1) * ip_bytes, 0, 0)
        assert totals.of(cookie(receiver)) == (0, 0, rounds + 1, (rounds + 1) * ip_bytes)


def test_the_wake_ring_turns_readable_for_a_new_socket_only(
    counter: KernelCounter, make_netns: Callable[..., Any]
) -> None:
    """A socket met for the first time writes to the wake ring: its fd turns
    readable, and take_wake empties it.  The same socket sending again after a
    drain (a new entry, not a new socket) writes nothing for itself.  Other
    sockets of the machine may wake it too, so the quiet moment is waited for."""
    fd = counter.wake_fileno()
    assert fd is not None  # kernel 5.8+: this machine has ring buffers
    ns = make_netns(NETNS_PREFIX)
    receiver = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = in_netns(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with receiver, sender:
        receiver.settimeout(TIMEOUT_S)
        receiver.bind(("127.0.0.1", 0))
        for _ in range(EMPTY_DRAIN_TRIES):
            counter.take_wake()
            if not select.select([fd], [], [], 0)[0]:
                break
            time.sleep(0.005)
        sender.sendto(b"w" * 64, receiver.getsockname())
        receiver.recv(1024)
        assert select.select([fd], [], [], TIMEOUT_S)[0] == [fd]
        assert counter.take_wake()
        assert not counter.take_wake()  # emptied
        Totals(counter).drain()
        quiet = False
        for _ in range(EMPTY_DRAIN_TRIES):
            counter.take_wake()
            sender.sendto(b"w" * 64, receiver.getsockname())
            receiver.recv(1024)
            if not select.select([fd], [], [], 0.002)[0]:
                quiet = True  # known sockets sent and received: no wake-up
                break
        assert quiet, "the wake ring was never quiet while known sockets sent"


@pytest.mark.parametrize("mode", [AttachMode.LINK, AttachMode.PROG_ATTACH])
def test_close_detaches_and_unloads_everything(mode: AttachMode) -> None:
    root_or_skip()
    kernel_counter = KernelCounter.open(attach=mode)
    cgroup = kernel_counter.cgroup_path
    assert cgroup == find_cgroup2_root()
    prog_ids, map_ids = kernel_counter.object_ids()
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert prog_ids[0] in prog_query(fd, AttachType.CGROUP_INET_INGRESS)
        assert prog_ids[1] in prog_query(fd, AttachType.CGROUP_INET_EGRESS)
    finally:
        os.close(fd)
    kernel_counter.close()
    kernel_counter.close()  # twice is fine
    assert kernel_counter.closed
    wait_gone(prog_ids, map_ids, cgroup)


def test_private_cgroup2_mount_when_none_is_mounted(tmp_path: Path) -> None:
    root_or_skip()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    with KernelCounter.open(mountinfo_path=mountinfo) as kernel_counter:
        private = kernel_counter.cgroup_path
        assert private != find_cgroup2_root()
        assert private in Path("/proc/self/mounts").read_text()
        prog_ids, map_ids = kernel_counter.object_ids()
    assert not os.path.exists(private)
    wait_gone(prog_ids, map_ids, find_cgroup2_root() or "/sys/fs/cgroup")


def test_killed_process_leaves_nothing_attached(tmp_path: Path) -> None:
    """With links (the default) the kernel detaches when the process dies."""
    root_or_skip()
    script = textwrap.dedent(
        """
        import sys, time
        from netatopd.ebpf.skbcount import KernelCounter
        counter = KernelCounter.open()
        progs, maps = counter.object_ids()
        print(" ".join(map(str, progs)), "/", " ".join(map(str, maps)), flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        progs_text, _, maps_text = line.partition("/")
        prog_ids = [int(x) for x in progs_text.split()]
        map_ids = [int(x) for x in maps_text.split()]
        assert len(prog_ids) == 2 and len(map_ids) == 7, line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT_S)
    wait_gone(prog_ids, map_ids, find_cgroup2_root() or "/sys/fs/cgroup")
