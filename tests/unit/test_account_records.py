"""Unit tests of counting.count_records, the fused parse-and-count walk, charged to flows.

Ground truth: the two-step path it replaces, ``count_packets(parse_batch(...))``,
which test_parse.py and test_core.py pin to hand-worked values; and, for a few
frames, the counts worked out by hand in the comments.  Frames are laid out
from the header formats (sll2_header, iphdr, ipv6hdr, udphdr, tcphdr).
"""

from __future__ import annotations

import random
import struct

from frames import (
    A4,
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    ARPHRD_NONE,
    B4,
    ETH,
    HOST,
    LINKS,
    LO,
    OUTGOING,
    TUN,
    ipv4,
    records,
    sll2,
    snapshot,
    tcp,
    udp,
    varied_frames,
)

from netatopd.capture.pcap import Batch
from netatopd.counting import count_packets, count_records
from netatopd.flows import UDP_KEY_CACHE_ENTRIES_MAX, FlowTable
from netatopd.parse import PROTO_TCP, PROTO_UDP, REJECT_COUNTERS_LENGTH, Reject, parse_batch


def both_ways(
    batches: list[bytes], max_flows: int = 1000
) -> tuple[tuple[object, ...], list[int], tuple[object, ...], list[int]]:
    two_step, fused = FlowTable(max_flows), FlowTable(max_flows)
    two_step_rejects = [0] * REJECT_COUNTERS_LENGTH
    fused_rejects = [0] * REJECT_COUNTERS_LENGTH
    for batch in batches:
        two_step.charge(count_packets(parse_batch(batch, LINKS, two_step_rejects)), 5.0)
        fused.charge(count_records(batch, LINKS, fused_rejects), 5.0)
    return snapshot(two_step), two_step_rejects, snapshot(fused), fused_rejects


def test_hand_worked_loopback_udp() -> None:
    # 3 datagrams 127-style on lo from 192.0.2.1:40000 to 192.0.2.1:53, 16 bytes of data:
    # ip_len = 20 + 8 + 16 = 44, wire = 44 + 14 + 4 = 62 each; every one is a send
    # for the :40000 endpoint and a receive for the :53 endpoint.
    frame = sll2(0x0800, LO, ARPHRD_LOOPBACK, HOST) + ipv4(PROTO_UDP, A4, A4, udp(40000, 53))
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    flows.charge(count_records(records([frame] * 3), LINKS, rejects), 1.0)
    sender = flows.udp_flow(A4, 40000)
    assert sender is not None
    receiver = flows.udp_flow(A4, 53)
    assert receiver is not None
    assert (sender.snd_packs, sender.snd_bytes, sender.rcv_packs) == (3, 186, 0)
    assert (receiver.rcv_packs, receiver.rcv_bytes, receiver.snd_packs) == (3, 186, 0)
    assert flows.totals.udp_sent == 3 and flows.totals.udp_received == 3
    assert flows.count == 2 and rejects == [0] * REJECT_COUNTERS_LENGTH


def test_hand_worked_gso_and_tun() -> None:
    # Sent on ethernet (MTU 1500): tot_len 4000 -> 4000 + 18 + (4000 // 1500) * (20 + 18) = 4094.
    big = sll2(0x0800, ETH, ARPHRD_ETHER, OUTGOING) + ipv4(
        PROTO_TCP, A4, B4, tcp(50000, 443, bytes(4000 - 40))
    )
    # Received on a tun device (hhl 0): 44 + 0 + 4 = 48.
    tun = sll2(0x0800, TUN, ARPHRD_NONE, HOST) + ipv4(PROTO_UDP, B4, A4, udp(1194, 1194))
    flows = FlowTable()
    flows.charge(count_records(records([big, tun]), LINKS, [0] * REJECT_COUNTERS_LENGTH), 1.0)
    connection = flows.tcp_flow(A4, 50000, B4, 443)
    assert connection is not None
    assert (connection.snd_packs, connection.snd_bytes) == (1, 4094)
    local = flows.udp_flow(A4, 1194)
    assert local is not None
    assert (local.rcv_packs, local.rcv_bytes) == (1, 48)


def test_same_counts_as_parse_batch_and_count_packets() -> None:
    frames = varied_frames()
    batches = [records(frames), records(frames[::-1]), records(frames[3:9] * 5)]
    two_step, two_step_rejects, fused, fused_rejects = both_ways(batches)
    assert fused == two_step
    assert fused_rejects == two_step_rejects
    # The varied frames do reach every kind of reject the slow path gives.
    for reason in (
        Reject.LOOPBACK_OUTGOING,
        Reject.OTHERHOST,
        Reject.NOT_IP,
        Reject.FRAGMENT,
        Reject.OTHER_PROTOCOL,
        Reject.TRUNCATED_TRANSPORT,
    ):
        assert fused_rejects[reason] >= 1, reason.name


def test_truncated_records_like_parse_batch() -> None:
    whole = records(varied_frames()[:4])
    for cut in (len(whole) - 1, len(whole) - 30, len(whole) - 100, 10, 0):
        two_step, two_step_rejects, fused, fused_rejects = both_ways([whole[:cut]])
        assert (fused, fused_rejects) == (two_step, two_step_rejects), cut


def test_short_snaplen_goes_the_slow_way() -> None:
    # 40 captured bytes: the fast path needs 44 (IPv4) or 64 (IPv6).
    frames = varied_frames()
    two_step, two_step_rejects, fused, fused_rejects = both_ways([records(frames, snaplen=40)])
    assert (fused, fused_rejects) == (two_step, two_step_rejects)
    assert fused_rejects[Reject.TRUNCATED_TRANSPORT] >= 1


def test_random_damage_counts_the_same() -> None:
    rng = random.Random(6)
    frames = varied_frames()
    for _ in range(300):
        damaged = []
        for frame in rng.sample(frames, 8):
            data = bytearray(frame)
            for _ in range(rng.randrange(0, 4)):
                data[rng.randrange(0, min(len(data), 70))] = rng.randrange(256)
            damaged.append(bytes(data))
        two_step, two_step_rejects, fused, fused_rejects = both_ways([records(damaged)])
        assert (fused, fused_rejects) == (two_step, two_step_rejects)


def test_flow_cap_refuses_like_count_packets() -> None:
    frames = [
        sll2(0x0800, ETH, ARPHRD_ETHER, HOST) + ipv4(PROTO_UDP, B4, A4, udp(53, port))
        for port in range(1000, 1010)
    ]
    two_step, _, fused, _ = both_ways([records(frames * 3)], max_flows=4)
    assert fused == two_step
    assert fused[1] == (4, 6 * 3, 4, 4)  # flows, refused (once a packet), dirty, new
    assert fused[0]["udp_received_unidentified"] == 6 * 3  # type: ignore[index]


def test_removed_flow_is_not_counted_again() -> None:
    frame = sll2(0x0800, ETH, ARPHRD_ETHER, HOST) + ipv4(PROTO_UDP, B4, A4, udp(53, 5000))
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    flows.charge(count_records(records([frame]), LINKS, rejects), 1.0)
    first = flows.udp_flow(A4, 5000)
    assert first is not None
    flows.remove(first)
    flows.charge(count_records(records([frame, frame]), LINKS, rejects), 2.0)
    second = flows.udp_flow(A4, 5000)
    assert second is not None
    assert second is not first
    assert (first.rcv_packs, second.rcv_packs) == (1, 2)
    assert flows.count == 1


def test_udp_key_cache_is_bounded() -> None:
    # More distinct remote endpoints than the cache holds, all to one local port.
    count = UDP_KEY_CACHE_ENTRIES_MAX + 10
    flows = FlowTable()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    head = sll2(0x0800, ETH, ARPHRD_ETHER, HOST)
    for first in range(0, count, 4096):
        frames = [
            head + ipv4(PROTO_UDP, bytes((198, 51, 100, n % 250)), A4, udp(1024 + n // 250, 53))
            for n in range(first, min(count, first + 4096))
        ]
        flows.charge(count_records(records(frames), LINKS, rejects), 1.0)
    local = flows.udp_flow(A4, 53)
    assert local is not None
    assert local.rcv_packs == count
    assert flows.count == 1
    assert len(flows._udp_received_cache) <= UDP_KEY_CACHE_ENTRIES_MAX


def test_batch_newest_timestamp_walks_the_records() -> None:
    stamps = [(1_700_000_000, 900_000), (1_700_000_001, 5), (1_700_000_000, 999_999)]
    data = b"".join(struct.pack("=IIII", s, us, 3, 3) + b"abc" for s, us in stamps)
    assert Batch(data, 3).newest_timestamp_s == 1_700_000_001.000005
    assert Batch(b"", 0).newest_timestamp_s == 0.0
