"""In-process cost of the per-packet path on synthetic capture batches; not a test.

Builds batches of pcap records (pcap_sf_pkthdr + cooked v2 frame) as
Capture.read_batch hands them out, and times, per packet, each counting path
of counting.py followed by FlowTable.charge of its sums:
  * parse.parse_batch + count_packets (the two-step path),
  * count_records (the fused walk, the lane for uncommon frames),
  * count_fixed (a fixed lane's batch: the same frames captured to the lane's
    length, counted with Counter over struct.iter_unpack),
  * count_records and count_fixed with the daemon's locality split
    (locality.Locality.split: local or forwarded per distinct row) between
    counting and charging, on a host that owns the addresses ("+split") and on
    a router that owns none of them ("+split, forwarded": no flow is charged),
for established flows: UDP over loopback (each packet a send and a receive),
TCP received on ethernet, and UDP over IPv6 loopback.  The best of a few
rounds is taken (the least disturbed by the machine).

Usage: .venv/bin/python bench/perpacket.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netatopd.capture.lanes import LaneKind  # noqa: E402
from netatopd.counting import count_fixed, count_packets, count_records  # noqa: E402
from netatopd.flows import FlowTable  # noqa: E402
from netatopd.locality import Locality  # noqa: E402
from netatopd.parse import REJECT_COUNTERS_LENGTH, parse_batch  # noqa: E402
from netatopd.wire import (  # noqa: E402
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    ETH_P_IP,
    ETH_P_IPV6,
    IPHDR,
    IPV6HDR,
    PCAP_SF_PKTHDR,
    PROTO_TCP,
    PROTO_UDP,
    SLL2_HEADER,
    TCPHDR,
    UDPHDR,
    PacketType,
)

BATCH_PACKETS = 2048
FLOWS = 8
ROUNDS = 5
BATCHES_PER_ROUND = 100
SNAPLEN_BYTES = 128
LINKS = {1: (14, 65536), 2: (14, 1500)}

RECORD_HEADER = PCAP_SF_PKTHDR.struct
SLL2 = SLL2_HEADER.struct
IPV4 = IPHDR.struct  # without options
IPV6 = IPV6HDR.struct


def frame(version: int, proto: int, ifindex: int, hatype: int, flow: int) -> bytes:
    transport = (
        TCPHDR.struct.pack(40000 + flow, 443, 1, 1, 0x5010, 512, 0, 0) + b"\xa5" * 64
        if proto == PROTO_TCP
        else UDPHDR.struct.pack(40000 + flow, 50000 + flow, 72, 0) + b"\xa5" * 64
    )
    if version == 4:
        ip = IPV4.pack(
            0x45, 0, 20 + len(transport), 1, 0x4000, 64, proto, 0, b"\x7f\0\0\1", b"\x7f\0\0\1"
        )
        ethertype = ETH_P_IP
    else:
        loopback = bytes(15) + b"\1"
        ip = IPV6.pack(0x60, bytes(3), len(transport), proto, 64, loopback, loopback)
        ethertype = ETH_P_IPV6
    return SLL2.pack(ethertype, 0, ifindex, hatype, PacketType.HOST, 6, bytes(8)) + ip + transport


def records(
    version: int, proto: int, ifindex: int, hatype: int, snaplen: int = SNAPLEN_BYTES
) -> bytes:
    out = []
    for n in range(BATCH_PACKETS):
        data = frame(version, proto, ifindex, hatype, n % FLOWS)
        captured = data[:snaplen]
        out.append(RECORD_HEADER.pack(1_700_000_000, n, len(captured), len(data)) + captured)
    return b"".join(out)


SCENARIOS = {
    "UDP v4 loopback": (4, PROTO_UDP, 1, ARPHRD_LOOPBACK),
    "TCP v4 ethernet received": (4, PROTO_TCP, 2, ARPHRD_ETHER),
    "UDP v6 loopback": (6, PROTO_UDP, 1, ARPHRD_LOOPBACK),
}


class StaticAddresses:
    """A local table that never changes: every address local, or none."""

    generation = 1

    def __init__(self, local: bool) -> None:
        self.local = local

    def is_local(self, address: bytes) -> bool:
        return self.local

    def fileno(self) -> int:
        return -1

    def process_events(self) -> int:
        return 0

    def close(self) -> None:
        pass


def best_ns_per_packet(step: Callable[[bytes], None], batch: bytes) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(BATCHES_PER_ROUND):
            step(batch)
        best = min(best, (time.perf_counter() - started) / BATCHES_PER_ROUND)
    return best * 1e9 / BATCH_PACKETS


def measure() -> dict[str, float]:
    """Nanoseconds per packet, by path and scenario."""
    results: dict[str, float] = {}
    rejects = [0] * REJECT_COUNTERS_LENGTH
    for name, facts in SCENARIOS.items():
        batch = records(*facts)
        two_step = FlowTable()
        fused = FlowTable()

        def parse_and_count(batch: bytes, table: FlowTable = two_step) -> None:
            table.charge(count_packets(parse_batch(batch, LINKS, rejects)), 1.0)
            table.dirty.clear()

        def fused_walk(batch: bytes, table: FlowTable = fused) -> None:
            table.charge(count_records(batch, LINKS, rejects), 1.0)
            table.dirty.clear()

        lane = LaneKind(facts[0])
        fixed_batch = records(*facts, snaplen=lane.frame_bytes)
        lanes = FlowTable()

        def fixed_lane(batch: bytes, table: FlowTable = lanes, lane: LaneKind = lane) -> None:
            table.charge(count_fixed(batch, BATCH_PACKETS, lane, LINKS, rejects), 1.0)
            table.dirty.clear()

        results[f"parse_batch+count_packets, {name}"] = best_ns_per_packet(parse_and_count, batch)
        results[f"count_records, {name}"] = best_ns_per_packet(fused_walk, batch)
        results[f"count_fixed, {name}"] = best_ns_per_packet(fixed_lane, fixed_batch)
        for label, local in (("+split", True), ("+split, forwarded", False)):
            locality = Locality(StaticAddresses(local))
            split_records, split_fixed = FlowTable(), FlowTable()

            def records_split(
                batch: bytes, table: FlowTable = split_records, split: Locality = locality
            ) -> None:
                sums = count_records(batch, LINKS, rejects)
                split.split(sums)
                table.charge(sums, 1.0)
                table.dirty.clear()

            def fixed_split(
                batch: bytes,
                table: FlowTable = split_fixed,
                lane: LaneKind = lane,
                split: Locality = locality,
            ) -> None:
                sums = count_fixed(batch, BATCH_PACKETS, lane, LINKS, rejects)
                split.split(sums)
                table.charge(sums, 1.0)
                table.dirty.clear()

            results[f"count_records{label}, {name}"] = best_ns_per_packet(records_split, batch)
            results[f"count_fixed{label}, {name}"] = best_ns_per_packet(fixed_split, fixed_batch)
    return results


def main() -> None:
    for name, ns_per_packet in measure().items():
        print(f"{name:50} {ns_per_packet:6.0f} ns/packet")


if __name__ == "__main__":
    main()
