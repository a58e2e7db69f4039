"""Unit tests of counting.count_fixed, the sums of a fixed capture lane's batch.

Ground truth: counting.count_records on the same records (held to the
two-step parse_batch + count_packets path by test_account_records.py), and for one
batch the counts worked out by hand.  The records are what a fixed lane hands
over: only the frames its kernel filter takes (``lane_takes`` below restates
the filters of capture/lanes.py; tests/privileged/test_capture.py holds the
kernel to them), each cut to the lane's frame length.
"""

from __future__ import annotations

import random

from frames import (
    A4,
    A6,
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    B4,
    B6,
    ETH,
    HOST,
    LINKS,
    LO,
    OUTGOING,
    ipv4,
    ipv6,
    records,
    sll2,
    snapshot,
    tcp,
    udp,
    varied_frames,
)

from netatopd.capture.lanes import LaneKind
from netatopd.counting import FIXED_RECORDS, count_fixed, count_records
from netatopd.flows import FlowTable
from netatopd.parse import PROTO_TCP, PROTO_UDP, REJECT_COUNTERS_LENGTH, Reject, parse_batch


def lane_takes(kind: LaneKind, frame: bytes) -> bool:
    """Whether the kernel filter of a fixed lane (capture/lanes.py) takes the frame."""
    ethertype = int.from_bytes(frame[0:2], "big")
    ip = frame[20:]
    if kind == LaneKind.IPV4:
        # A filter reading past the frame's end rejects it (BPF load out of bounds).
        return (
            ethertype == 0x0800
            and len(ip) >= 10
            and ip[0] == 0x45
            and int.from_bytes(ip[6:8], "big") & 0x3FFF == 0  # no fragment, first ones too
            and ip[9] in (PROTO_TCP, PROTO_UDP)
            and int.from_bytes(ip[2:4], "big") >= 24
        )
    return (
        ethertype == 0x86DD
        and len(ip) >= 7
        and ip[0] & 0xF0 == 0x60
        and ip[6] in (PROTO_TCP, PROTO_UDP)
        and int.from_bytes(ip[4:6], "big") >= 4
    )


def lane_records(kind: LaneKind, frames: list[bytes]) -> tuple[bytes, int]:
    taken = [frame for frame in frames if lane_takes(kind, frame)]
    return records(taken, snaplen=kind.frame_bytes), len(taken)


def fixed_and_walked(
    kind: LaneKind, batches: list[tuple[bytes, int]], max_flows: int = 1000
) -> tuple[tuple[object, ...], list[int], tuple[object, ...], list[int]]:
    walked, fixed = FlowTable(max_flows), FlowTable(max_flows)
    walked_rejects = [0] * REJECT_COUNTERS_LENGTH
    fixed_rejects = [0] * REJECT_COUNTERS_LENGTH
    for data, count in batches:
        walked.charge(count_records(data, LINKS, walked_rejects), 5.0)
        fixed.charge(count_fixed(data, count, kind, LINKS, fixed_rejects), 5.0)
    return snapshot(walked), walked_rejects, snapshot(fixed), fixed_rejects


def test_record_layouts_match_the_lanes() -> None:
    # pcap_sf_pkthdr (16 bytes) + the lane's frame bytes: 16 + 44 and 16 + 64.
    assert FIXED_RECORDS[LaneKind.IPV4][0].size == 16 + LaneKind.IPV4.frame_bytes == 60
    assert FIXED_RECORDS[LaneKind.IPV6][0].size == 16 + LaneKind.IPV6.frame_bytes == 80
    assert LaneKind.OTHER.frame_bytes == 0


def test_hand_worked_batch() -> None:
    # On lo (hhl 14, MTU 65536), 192.0.2.1:40000 -> 192.0.2.1:53 UDP with 16 data bytes:
    # ip_len 44, wire 44 + 14 + 4 = 62.  Five such datagrams, then three with 100 data
    # bytes (ip_len 128, wire 146): the sender sent 8 packets of 5 * 62 + 3 * 146 = 748
    # bytes and the receiver received the same.  Two sent TCP segments on ethernet
    # (MTU 1500), 40 data bytes: ip_len 80, wire 98 each; one outgoing loopback copy,
    # which is not counted.
    lo = sll2(0x0800, LO, ARPHRD_LOOPBACK, HOST)
    small = lo + ipv4(PROTO_UDP, A4, A4, udp(40000, 53))
    large = lo + ipv4(PROTO_UDP, A4, A4, udp(40000, 53, b"\x01" * 100))
    segment = sll2(0x0800, ETH, ARPHRD_ETHER, OUTGOING) + ipv4(
        PROTO_TCP, A4, B4, tcp(50000, 443, b"d" * 40)
    )
    copy = sll2(0x0800, LO, ARPHRD_LOOPBACK, OUTGOING) + ipv4(PROTO_UDP, A4, A4, udp(1, 2))
    frames = [small, large, segment, small, small, large, copy, small, segment, small, large]
    data, count = lane_records(LaneKind.IPV4, frames)
    assert count == 11 and len(data) == 11 * 60
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    flows.charge(count_fixed(data, count, LaneKind.IPV4, LINKS, rejects), 1.0)
    sender = flows.udp_flow(A4, 40000)
    assert sender is not None
    receiver = flows.udp_flow(A4, 53)
    assert receiver is not None
    assert (sender.snd_packs, sender.snd_bytes, sender.rcv_packs) == (8, 748, 0)
    assert (receiver.rcv_packs, receiver.rcv_bytes, receiver.snd_packs) == (8, 748, 0)
    connection = flows.tcp_flow(A4, 50000, B4, 443)
    assert connection is not None
    assert (connection.snd_packs, connection.snd_bytes, connection.rcv_packs) == (2, 196, 0)
    assert flows.totals.udp_sent == 8 and flows.totals.tcp_sent == 2
    assert rejects[Reject.LOOPBACK_OUTGOING] == 1
    assert flows.count == 3
    # Flows are made in the order their first packets came.
    assert [f.local_port for f in flows.new] == [40000, 53, 50000]


def test_same_counts_as_count_records_for_both_lanes() -> None:
    frames = varied_frames()
    # Two more IPv6 endpoints and a received IPv6 segment of a known connection.
    frames += [
        sll2(0x86DD, ETH, ARPHRD_ETHER, OUTGOING) + ipv6(PROTO_UDP, A6, B6, udp(5000, 53)),
        sll2(0x86DD, ETH, ARPHRD_ETHER, HOST) + ipv6(PROTO_TCP, B6, A6, tcp(443, 50001)),
    ]
    for kind in (LaneKind.IPV4, LaneKind.IPV6):
        batches = [
            lane_records(kind, frames),
            lane_records(kind, frames[::-1]),
            lane_records(kind, frames[2:12] * 7),
        ]
        assert all(count > 0 for _, count in batches), kind.name
        walked, walked_rejects, fixed, fixed_rejects = fixed_and_walked(kind, batches)
        assert fixed == walked, kind.name
        assert fixed_rejects == walked_rejects, kind.name


def test_a_short_record_sends_the_batch_the_slow_way() -> None:
    # A frame from the wire claiming tot_len 60 but only 30 IP bytes long passes the
    # IPv4 lane's filter and is captured with 50 bytes, not 44+: the batch is then not
    # whole 60-byte records and count_records walks it (the short frame's IP length
    # claims more than the frame carried, like every other path says).
    head = sll2(0x0800, ETH, ARPHRD_ETHER, HOST)
    good = head + ipv4(PROTO_UDP, B4, A4, udp(53, 5000))
    short = head + ipv4(PROTO_UDP, B4, A4, udp(53, 5001), tot_len=60)[:23]
    assert lane_takes(LaneKind.IPV4, short) and len(short) < 44
    data, count = lane_records(LaneKind.IPV4, [good, short, good])
    assert len(data) != count * 60
    walked, walked_rejects, fixed, fixed_rejects = fixed_and_walked(LaneKind.IPV4, [(data, count)])
    assert (fixed, fixed_rejects) == (walked, walked_rejects)
    assert fixed_rejects[Reject.IP_LENGTH_BEYOND_FRAME] == 1
    assert fixed[0]["udp_received"] == 2  # type: ignore[index]


def test_random_damage_counts_the_same() -> None:
    # Damage lands on the bytes that come from the wire (IP header and ports), not on
    # the cooked header, which libpcap writes from the kernel's facts about the
    # packet: an interface's hatype is the same in every record (count_fixed reads
    # it once per interface and batch).
    rng = random.Random(16)
    frames = varied_frames()
    for _ in range(300):
        damaged = []
        for frame in rng.sample(frames, 8):
            data = bytearray(frame)
            for _ in range(rng.randrange(0, 4)):
                data[rng.randrange(20, min(len(data), 70))] = rng.randrange(256)
            damaged.append(bytes(data))
        for kind in (LaneKind.IPV4, LaneKind.IPV6):
            batch = lane_records(kind, damaged)
            walked, walked_rejects, fixed, fixed_rejects = fixed_and_walked(kind, [batch])
            assert (fixed, fixed_rejects) == (walked, walked_rejects)


def test_hatype_is_read_per_interface_from_the_batch() -> None:
    # Two interfaces in one batch whose ifindex bytes also occur elsewhere in the
    # records (ifindex 0x0a000001 = the bytes of 10.0.0.1): lo (ifindex 1, loopback:
    # a send and a receive) and an ethernet interface (received only).
    lo_index, eth_index = 1, 0x0A000001
    links = {lo_index: (14, 65536), eth_index: (14, 1500)}
    ten = bytes((10, 0, 0, 1))
    eth = sll2(0x0800, eth_index, ARPHRD_ETHER, HOST) + ipv4(PROTO_UDP, ten, A4, udp(53, 6000))
    lo = sll2(0x0800, lo_index, ARPHRD_LOOPBACK, HOST) + ipv4(PROTO_UDP, ten, ten, udp(7, 8))
    data, count = lane_records(LaneKind.IPV4, [lo, eth, lo, eth, eth])
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    flows.charge(count_fixed(data, count, LaneKind.IPV4, links, rejects), 1.0)
    # ip_len 44 (16 data bytes): wire 62 on either link.
    assert flows.totals.udp_received == 3 + 2 and flows.totals.udp_sent == 2
    received = flows.udp_flow(A4, 6000)
    assert received is not None
    assert (received.rcv_packs, received.rcv_bytes) == (3, 3 * 62)
    looped = flows.udp_flow(ten, 8)
    assert looped is not None
    sender = flows.udp_flow(ten, 7)
    assert sender is not None
    assert (looped.rcv_packs, sender.snd_packs) == (2, 2)


def test_flow_cap_refuses_like_count_records() -> None:
    frames = [
        sll2(0x0800, ETH, ARPHRD_ETHER, HOST) + ipv4(PROTO_UDP, B4, A4, udp(53, port))
        for port in range(1000, 1010)
    ]
    batch = lane_records(LaneKind.IPV4, frames * 3)
    walked, _, fixed, _ = fixed_and_walked(LaneKind.IPV4, [batch], max_flows=4)
    assert fixed == walked
    assert fixed[1] == (4, 6 * 3, 4, 4)  # flows, refused (once a packet), dirty, new


def test_empty_batch_counts_nothing() -> None:
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    flows.charge(count_fixed(b"", 0, LaneKind.IPV6, LINKS, rejects), 1.0)
    assert flows.count == 0 and flows.totals.as_dict() == FlowTable().totals.as_dict()
    assert rejects == [0] * REJECT_COUNTERS_LENGTH


def test_ip_length_beyond_the_frame_is_rejected_on_every_path() -> None:
    # Issue 13: a remote host sends 60-byte Ethernet frames (46 IP bytes) to a bound
    # UDP port claiming tot_len 65535 (IPv6: payload_len 65535).  The kernel drops
    # them as truncated; pcap's len says how long each frame was (20 cooked + 46), so
    # every path rejects them (IP_LENGTH_BEYOND_FRAME) and credits nothing: the
    # port's flow gets only the legitimate datagrams, exact.
    head4 = sll2(0x0800, ETH, ARPHRD_ETHER, HOST)
    head6 = sll2(0x86DD, ETH, ARPHRD_ETHER, HOST)
    liar4 = head4 + ipv4(PROTO_UDP, B4, A4, udp(40000, 5000, b"x" * 18), tot_len=65535)
    liar6 = head6 + ipv6(PROTO_UDP, B6, A6, udp(40000, 5000, b"x" * 18), payload_len=65535)
    good4 = head4 + ipv4(PROTO_UDP, B4, A4, udp(40000, 5000, b"y" * 100))
    good6 = head6 + ipv6(PROTO_UDP, B6, A6, udp(40000, 5000, b"y" * 100))
    assert len(liar4) == 20 + 46
    for kind, liar, good, address, ip_header in (
        (LaneKind.IPV4, liar4, good4, A4, 20),
        (LaneKind.IPV6, liar6, good6, A6, 40),
    ):
        assert lane_takes(kind, liar)
        frames = [liar] * 1000 + [good] * 3
        data, count = lane_records(kind, frames)
        assert len(data) == count * FIXED_RECORDS[kind][0].size  # whole records: the C way
        walked, walked_rejects, fixed, fixed_rejects = fixed_and_walked(kind, [(data, count)])
        assert (fixed, fixed_rejects) == (walked, walked_rejects)
        assert fixed_rejects[Reject.IP_LENGTH_BEYOND_FRAME] == 1000
        flows = FlowTable()
        flows.charge(count_fixed(data, count, kind, LINKS, [0] * REJECT_COUNTERS_LENGTH), 1.0)
        port = flows.udp_flow(address, 5000)
        assert port is not None
        # 3 datagrams of 100 bytes: IP header + 8 + 100 + 14 + 4 each.
        assert (port.rcv_packs, port.rcv_bytes) == (3, 3 * (ip_header + 8 + 100 + 18))
        # The two-step path agrees.
        rejects = [0] * REJECT_COUNTERS_LENGTH
        packets = parse_batch(records(frames), LINKS, rejects)
        assert len(packets) == 3 and rejects[Reject.IP_LENGTH_BEYOND_FRAME] == 1000
