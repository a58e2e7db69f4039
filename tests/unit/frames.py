"""Frames and capture records for the per-packet path's unit tests.

Frames are laid out from the header formats (sll2_header, iphdr, ipv6hdr,
udphdr, tcphdr); ``records`` wraps them as libpcap's pcap_dump writes them.
"""

from __future__ import annotations

import struct

from netatopd.flows import FlowTable
from netatopd.parse import PROTO_TCP, PROTO_UDP

# ifindex -> (hhl, mtu): 1 lo, 2 ethernet, 9 a tun device.
LINKS: dict[int, tuple[int, int]] = {1: (14, 65536), 2: (14, 1500), 9: (0, 1400)}
LO, ETH, TUN, UNKNOWN = 1, 2, 9, 77
ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE = 1, 772, 0xFFFE
HOST, OTHERHOST, OUTGOING = 0, 3, 4

A4 = bytes((192, 0, 2, 1))
B4 = bytes((198, 51, 100, 2))
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")


def sll2(ethertype: int, ifindex: int, hatype: int, pkttype: int) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, ifindex, hatype, pkttype, 6, bytes(8))


def ipv4(
    proto: int,
    src: bytes,
    dst: bytes,
    body: bytes,
    *,
    frag_off: int = 0x4000,
    options: bytes = b"",
    tot_len: int | None = None,
) -> bytes:
    length = 20 + len(options) + len(body) if tot_len is None else tot_len
    version_ihl = 0x40 | ((20 + len(options)) // 4)
    header = struct.pack(
        "!BBHHHBBH4s4s", version_ihl, 0, length, 7, frag_off, 64, proto, 0, src, dst
    )
    return header + options + body


def ipv6(
    nexthdr: int, src: bytes, dst: bytes, body: bytes, payload_len: int | None = None
) -> bytes:
    length = len(body) if payload_len is None else payload_len
    return struct.pack("!IHBB16s16s", 0x60000000, length, nexthdr, 64, src, dst) + body


def udp(sport: int, dport: int, data: bytes = b"\xa5" * 16) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIHHHH", sport, dport, 1, 1, 0x5010, 512, 0, 0) + data


def records(frames: list[bytes], snaplen: int = 128) -> bytes:
    """pcap_sf_pkthdr (ts_sec, ts_usec, caplen, len) + captured bytes, per frame."""
    out = []
    for n, frame in enumerate(frames):
        captured = frame[:snaplen]
        out.append(struct.pack("=IIII", 1_700_000_000, n, len(captured), len(frame)) + captured)
    return b"".join(out)


def snapshot(flows: FlowTable) -> tuple[object, ...]:
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
    counts = (flows.count, flows.overflow, len(flows.dirty), len(flows.new))
    return (flows.totals.as_dict(), counts, described)


def varied_frames() -> list[bytes]:
    eth_in4 = sll2(0x0800, ETH, ARPHRD_ETHER, HOST)
    eth_out4 = sll2(0x0800, ETH, ARPHRD_ETHER, OUTGOING)
    lo4 = sll2(0x0800, LO, ARPHRD_LOOPBACK, HOST)
    lo6 = sll2(0x86DD, LO, ARPHRD_LOOPBACK, HOST)
    eth_in6 = sll2(0x86DD, ETH, ARPHRD_ETHER, HOST)
    return [
        lo4 + ipv4(PROTO_UDP, A4, A4, udp(40000, 53)),
        lo4 + ipv4(PROTO_UDP, A4, A4, udp(40000, 53)),
        lo4 + ipv4(PROTO_TCP, A4, A4, tcp(41000, 80, b"x" * 10)),
        lo4 + ipv4(PROTO_TCP, A4, A4, tcp(80, 41000)),
        eth_in4 + ipv4(PROTO_TCP, B4, A4, tcp(443, 50000, b"y" * 100)),
        eth_out4 + ipv4(PROTO_TCP, A4, B4, tcp(50000, 443)),
        eth_out4 + ipv4(PROTO_UDP, A4, B4, udp(5353, 5353)),
        eth_in4 + ipv4(PROTO_UDP, B4, A4, udp(5353, 5353)),
        sll2(0x0800, TUN, ARPHRD_NONE, HOST) + ipv4(PROTO_UDP, B4, A4, udp(1194, 1194)),
        sll2(0x0800, UNKNOWN, ARPHRD_ETHER, HOST) + ipv4(PROTO_UDP, B4, A4, udp(9, 9)),
        # A GSO aggregate of 4000 bytes on a 1500-byte MTU (only the head captured).
        eth_out4 + ipv4(PROTO_TCP, A4, B4, tcp(50000, 443, bytes(3960))),
        lo6 + ipv6(PROTO_UDP, A6, A6, udp(40001, 53)),
        eth_in6 + ipv6(PROTO_TCP, B6, A6, tcp(443, 50001, b"z" * 20)),
        # The slow path: IPv6 hop-by-hop header, IPv4 options, ICMP, fragments.
        eth_in6 + ipv6(0, B6, A6, bytes((PROTO_UDP, 0)) + bytes(6) + udp(7, 50002)),
        eth_in4 + ipv4(PROTO_UDP, B4, A4, udp(7, 50003), options=bytes(4)),
        eth_in4 + ipv4(1, B4, A4, bytes(8)),  # ICMP: counted, no flow
        eth_in4 + ipv4(50, B4, A4, bytes(16)),  # ESP: not counted
        eth_in4 + ipv4(PROTO_UDP, B4, A4, udp(7, 50004), frag_off=0x0010),
        # Rejected: outgoing loopback copy, another host's frame, not IP.
        sll2(0x0800, LO, ARPHRD_LOOPBACK, OUTGOING) + ipv4(PROTO_UDP, A4, A4, udp(1, 2)),
        sll2(0x0800, ETH, ARPHRD_ETHER, OTHERHOST) + ipv4(PROTO_UDP, B4, A4, udp(1, 2)),
        sll2(0x0806, ETH, ARPHRD_ETHER, HOST) + bytes(28),
        # Ports outside the IP length, and a BIG TCP aggregate (tot_len 0).
        eth_in4 + ipv4(PROTO_UDP, B4, A4, udp(7, 7), tot_len=22),
        eth_in4 + ipv4(PROTO_TCP, B4, A4, tcp(443, 50000) + bytes(70000), tot_len=0),
    ]
