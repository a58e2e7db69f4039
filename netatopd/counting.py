"""Counting: a capture batch in, what it adds per (kind, packet key) out.

Owns the per-batch walks that turn captured records into ``BatchSums``:
packets and wire bytes per (kind, packet key), in the order the sums first
appeared, plus the ICMP packets (counted, never on a flow; their rows by
direction and parse.py's ICMP key -- addresses, echo identifier, type and
code -- let locality.py take the forwarded ones out).  Knows nothing of
flows: ``flows.FlowTable.charge`` adds the sums to the flows they belong to.
Pure like parse.py: the caller owns the reject counters and the link table.
Callers: the daemon's drain_capture (``count_records`` for the other lane and
a single handle, ``count_fixed`` for a fixed lane's batch), and
``count_packets`` for the tests and the benchmarks.

A kind is parse.Direction's value for UDP, and the same + ``TCP_KIND`` for
TCP.  Per packet the walks do one unpack and one dictionary update; the
frame layouts they read are wire.py's.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from collections.abc import Iterable, Mapping

from .parse import (
    UNKNOWN_LINK,
    Direction,
    Packet,
    Reject,
    direction,
    parse_record,
    wire_bytes,
)
from .wire import (
    ARPHRD_LOOPBACK,
    CRC_BYTES,
    ETH_P_IP,
    ETH_P_IPV6,
    FIXED_FRAMES,
    IP_FRAGMENT_MASK,
    IPHDR,
    IPV4_FIXED,
    IPV6_FIXED,
    PCAP_SF_PKTHDR,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    SLL2_HEADER,
    FixedFrame,
)

RECEIVED, SENT, LOOPBACK = Direction.RECEIVED.value, Direction.SENT.value, Direction.LOOPBACK.value
TCP_KIND = 3  # added to a Direction's value for the kinds of TCP sums
KINDS = 6

# Sums of one kind: packet key -> [packets, wire bytes].
KindSums = dict[bytes, list[int]]


class BatchSums:
    """What one batch adds: [packets, wire bytes] per (kind, packet key), and ICMP packets.

    ``order`` lists each (kind, key) once, as first seen, so flows are made in
    the order their first packets came.
    """

    __slots__ = ("by_kind", "order", "icmp_sent", "icmp_received", "icmp_rows")

    def __init__(self) -> None:
        self.by_kind: tuple[KindSums, ...] = tuple({} for _ in range(KINDS))
        self.order: list[tuple[int, bytes]] = []
        self.icmp_sent = 0
        self.icmp_received = 0
        # (Direction, ICMP key: addresses [+ echo identifier, type, code]) -> [packets, bytes]
        self.icmp_rows: dict[tuple[int, bytes], list[int]] = {}

    def add(self, kind: int, key: bytes, packets: int, wire_bytes: int) -> None:
        """Add packets of wire_bytes in all to the sum of (kind, key)."""
        sums_of_kind = self.by_kind[kind]
        sums = sums_of_kind.get(key)
        if sums is None:
            sums_of_kind[key] = [packets, wire_bytes]
            self.order.append((kind, key))
        else:
            sums[0] += packets
            sums[1] += wire_bytes

    def add_icmp(
        self, counted_as: int, packets: int, addresses: bytes = b"", wire_bytes: int = 0
    ) -> None:
        """Count ICMP or ICMPv6 packets seen in one Direction with one key (parse.py's)."""
        if counted_as != RECEIVED:
            self.icmp_sent += packets
        if counted_as != SENT:
            self.icmp_received += packets
        if addresses:
            row = self.icmp_rows.get((counted_as, addresses))
            if row is None:
                self.icmp_rows[(counted_as, addresses)] = [packets, wire_bytes]
            else:
                row[0] += packets
                row[1] += wire_bytes

    def __bool__(self) -> bool:
        return bool(self.order) or bool(self.icmp_sent) or bool(self.icmp_received)


def count_packets(packets: Iterable[Packet]) -> BatchSums:
    """The sums of parsed packets (parse.parse_batch's): the plain, readable path.

    The daemon uses count_records and count_fixed; the tests hold them to
    this one on the same records.
    """
    sums = BatchSums()
    for counted_as, proto, key, packet_bytes in packets:
        if proto == PROTO_TCP:
            sums.add(counted_as + TCP_KIND, key, 1, packet_bytes)
        elif proto == PROTO_UDP:
            sums.add(counted_as, key, 1, packet_bytes)
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            sums.add_icmp(counted_as, 1, key, packet_bytes)
    return sums


# The frames count_records reads with one unpack each: wire.py's fixed frames, the
# members it needs, and the key (saddr + daddr + source port + destination port).
_IPV4_FRAME = struct.Struct(
    IPV4_FIXED.layout.byte_order
    + IPV4_FIXED.layout.fields(
        "sll2_protocol",
        "sll2_if_index",
        "sll2_hatype",
        "sll2_pkttype",
        "version_ihl",
        "tot_len",
        "frag_off",
        "protocol",
        ("saddr", "dest"),
    )
)
_IPV6_FRAME = struct.Struct(
    IPV6_FIXED.layout.byte_order
    + IPV6_FIXED.layout.fields(
        "sll2_protocol",
        "sll2_if_index",
        "sll2_hatype",
        "sll2_pkttype",
        "version_priority",
        "payload_len",
        "nexthdr",
        ("saddr", "dest"),
    )
)
_PCAP_SF_PKTHDR_LENGTHS = PCAP_SF_PKTHDR.view("caplen", "len")
_RECORD_HEADER_BYTES = PCAP_SF_PKTHDR.size
_SLL2_BYTES = SLL2_HEADER.size  # pcap's len counts it, the IP length does not
_NO_MTU = 1 << 62  # stands for an MTU of 0 (unknown): no packet is larger
_SEGMENT_HEADER_BYTES = IPHDR.size  # what parse.wire_bytes adds per further GSO segment


def count_records(
    records: bytes,
    links: Mapping[int, tuple[int, int]],
    rejects: list[int],
) -> BatchSums:
    """Parse and sum a capture Batch's records in one walk.

    Sums exactly what ``count_packets(parse.parse_batch(records, links,
    rejects))`` sums, in the same order, without a tuple per packet.  The
    common frames (wire.py's fixed frames: IPv4 without options, IPv6
    without extension headers, TCP or UDP, not a later fragment, the ports
    inside the packet) are read with one unpack; every other frame goes
    through ``parse.parse_record``.
    """
    batch = BatchSums()
    sums_by_kind = batch.by_kind
    order = batch.order
    unpack_lengths = _PCAP_SF_PKTHDR_LENGTHS.unpack_from
    unpack_ipv4 = _IPV4_FRAME.unpack_from
    unpack_ipv6 = _IPV6_FRAME.unpack_from
    # wire.py's numbers and fixed frames, as locals for the loop.
    eth_p_ip, eth_p_ipv6, ip_fragment_mask = ETH_P_IP, ETH_P_IPV6, IP_FRAGMENT_MASK
    sll2_bytes = _SLL2_BYTES
    arphrd_loopback, proto_tcp, proto_udp = ARPHRD_LOOPBACK, PROTO_TCP, PROTO_UDP
    ipv4_frame_bytes, ipv6_frame_bytes = IPV4_FIXED.frame_bytes, IPV6_FIXED.frame_bytes
    ipv4_first_byte, ipv4_length_min = IPV4_FIXED.first_byte, IPV4_FIXED.length_min
    ipv6_version_mask, ipv6_first_byte = IPV6_FIXED.first_byte_mask, IPV6_FIXED.first_byte
    ipv6_length_min, ipv6_length_extra = IPV6_FIXED.length_min, IPV6_FIXED.length_extra
    # The link facts of the last ifindex seen: frames of one batch mostly share it.
    link_ifindex = -1
    link_overhead = link_mtu = link_gso_overhead = 0
    size = len(records)
    position = 0
    while position < size:
        frame = position + _RECORD_HEADER_BYTES
        if frame > size:
            rejects[Reject.TRUNCATED_LINK] += 1
            break
        caplen, original_bytes = unpack_lengths(records, position)
        position = frame + caplen
        proto = 0  # stays 0 when the frame is not for the fast path
        if caplen >= ipv4_frame_bytes and position <= size:
            (ethertype, ifindex, hatype, pkttype, first_byte, ip_len, frag_off, proto, key) = (
                unpack_ipv4(records, frame)
            )
            if ethertype == eth_p_ip:
                if (
                    first_byte != ipv4_first_byte  # first_byte_mask 0xff
                    or frag_off & ip_fragment_mask
                    or ip_len < ipv4_length_min
                    or ip_len > original_bytes - sll2_bytes  # parse rejects it
                ):
                    proto = 0
            elif ethertype == eth_p_ipv6 and caplen >= ipv6_frame_bytes:
                (ethertype, ifindex, hatype, pkttype, first_byte, ip_len, proto, key) = unpack_ipv6(
                    records, frame
                )
                ip_len += ipv6_length_extra  # payload_len -> the IP length
                if (
                    first_byte & ipv6_version_mask != ipv6_first_byte
                    or ip_len < ipv6_length_min + ipv6_length_extra
                    or ip_len > original_bytes - sll2_bytes  # parse rejects it
                ):
                    proto = 0
            else:
                proto = 0
        if proto == proto_udp or proto == proto_tcp:
            # parse.direction(hatype, pkttype), inlined: a call a packet is measurably
            # dearer (bench/perpacket.py); test_parse.py holds this copy to it.
            if hatype == arphrd_loopback:  # seen once, a send and a receive
                if pkttype == 4:  # PacketType.OUTGOING
                    rejects[Reject.LOOPBACK_OUTGOING] += 1
                    continue
                kind = LOOPBACK
            elif pkttype == 4:  # PacketType.OUTGOING
                kind = SENT
            elif pkttype <= 2:  # PacketType.HOST, BROADCAST, MULTICAST
                kind = RECEIVED
            else:
                rejects[Reject.OTHERHOST] += 1
                continue
            if ifindex != link_ifindex:
                try:
                    hhl, mtu = links[ifindex]
                except KeyError:
                    hhl, mtu = UNKNOWN_LINK
                link_ifindex = ifindex
                link_overhead = hhl + CRC_BYTES
                link_mtu = mtu if mtu > 0 else _NO_MTU
                link_gso_overhead = _SEGMENT_HEADER_BYTES + hhl + CRC_BYTES
            packet_bytes = ip_len + link_overhead  # parse.wire_bytes, inlined
            if ip_len > link_mtu:
                packet_bytes += (ip_len // link_mtu) * link_gso_overhead
        else:
            result = parse_record(
                records, frame, position if position < size else size, original_bytes, links
            )
            if result.__class__ is not tuple:
                rejects[result] += 1  # type: ignore[index]
                continue
            kind, proto, key, packet_bytes = result
            if proto != proto_udp and proto != proto_tcp:  # ICMP, ICMPv6: only counted
                batch.add_icmp(kind, 1, key, packet_bytes)
                continue
        if proto == proto_tcp:
            kind += TCP_KIND
        sums_of_kind = sums_by_kind[kind]
        sums = sums_of_kind.get(key)
        if sums is None:
            sums_of_kind[key] = [1, packet_bytes]
            order.append((kind, key))
        else:
            sums[0] += 1
            sums[1] += packet_bytes
    return batch


def _fixed_record_format(frame: FixedFrame) -> struct.Struct:
    """What count_fixed reads of one record of a fixed lane, skipping the rest.

    pcap_sf_pkthdr's len (the frame's length on the wire; the record header
    is in native order and the frame in network order, so it reads
    byte-swapped on a little-endian host: ``_original_bytes`` turns it back,
    once per distinct row), sll2_if_index, sll2_pkttype, the length member, the protocol
    member, and saddr + daddr + ports (the key).  Members that change from
    packet to packet (id, checksums, time stamps) are skipped, so the records
    of one flow and packet size unpack to equal tuples (len too: equal
    packets have equal lengths).
    sll2_hatype is a property of the interface: it is read once per interface
    and batch (``_fixed_record_hatype``), not per record.
    """
    layout = frame.layout
    record_header = PCAP_SF_PKTHDR.fields("len", whole=True)  # in the frame's byte order
    return struct.Struct(
        layout.byte_order
        + record_header
        + layout.fields(
            "sll2_if_index",
            "sll2_pkttype",
            frame.length_member,
            frame.protocol_member,
            ("saddr", "dest"),
            whole=True,
        )
    )


# IP version -> (record layout, bytes to add to the length read to get the IP length)
FIXED_RECORDS: dict[int, tuple[struct.Struct, int]] = {
    version: (_fixed_record_format(frame), frame.length_extra)
    for version, frame in FIXED_FRAMES.items()
}


def _original_bytes(read: int) -> int:
    """pcap_sf_pkthdr's len (native order) from what _fixed_record_format read (network order)."""
    if sys.byteorder == "big":
        return read
    return int.from_bytes(read.to_bytes(4, "big"), "little")


_FIXED_IFINDEX_OFFSET = PCAP_SF_PKTHDR.size + SLL2_HEADER.offset("sll2_if_index")
_FIXED_IFINDEX_BYTES = SLL2_HEADER.width("sll2_if_index")
_FIXED_HATYPE = SLL2_HEADER.view("sll2_hatype")  # from the start of the cooked header


def _fixed_record_hatype(records: bytes, record_bytes: int, ifindex: int) -> int:
    """sll2_hatype of the first record of a fixed-lane batch whose sll2_if_index is ifindex."""
    pattern = ifindex.to_bytes(_FIXED_IFINDEX_BYTES, "big")
    position = records.find(pattern, _FIXED_IFINDEX_OFFSET)
    while position >= 0:
        if (position - _FIXED_IFINDEX_OFFSET) % record_bytes == 0:
            cooked = position - SLL2_HEADER.offset("sll2_if_index")
            return int(_FIXED_HATYPE.unpack_from(records, cooked)[0])
        position = records.find(pattern, position + 1)
    return 0  # not reached: the caller read ifindex from one of these records


def count_fixed(
    records: bytes,
    count: int,
    ip_version: int,
    links: Mapping[int, tuple[int, int]],
    rejects: list[int],
) -> BatchSums:
    """The sums of a fixed capture lane's batch (capture/lanes.py), without a Python
    loop per packet.

    The lane's kernel filter guarantees the frames' shape (wire.FIXED_FRAMES)
    and its snap length makes every record the same size, so the batch is
    split and counted in C: one ``Counter`` over ``iter_unpack`` gives how
    many packets each (length on the wire, link, packet type, IP length,
    protocol, key) had, and only those few distinct rows are looked at here;
    an IP length beyond what the frame carried is rejected, as parse does.  A batch whose size is
    not ``count`` whole records (a frame from the wire shorter than its IP
    header claims) is walked by count_records instead.  Sums exactly what
    count_records sums for the same records.
    """
    layout, length_extra = FIXED_RECORDS[ip_version]
    if len(records) != count * layout.size:
        return count_records(records, links, rejects)
    batch = BatchSums()
    interfaces: dict[int, tuple[int, int, int]] = {}  # ifindex -> (sll2_hatype, hhl, mtu)
    for (original, ifindex, pkttype, ip_len, proto, key), packets in Counter(
        layout.iter_unpack(records)
    ).items():
        interface = interfaces.get(ifindex)
        if interface is None:
            try:
                hhl, mtu = links[ifindex]
            except KeyError:
                hhl, mtu = UNKNOWN_LINK
            hatype = _fixed_record_hatype(records, layout.size, ifindex)
            interface = interfaces[ifindex] = (hatype, hhl, mtu)
        hatype, hhl, mtu = interface
        counted_as = direction(hatype, pkttype)
        if isinstance(counted_as, Reject):
            rejects[counted_as] += packets
            continue
        ip_len += length_extra
        if ip_len > _original_bytes(original) - _SLL2_BYTES:
            rejects[Reject.IP_LENGTH_BEYOND_FRAME] += packets
            continue
        kind = int(counted_as)
        if proto == PROTO_TCP:
            kind += TCP_KIND
        elif proto != PROTO_UDP:  # the lane filter lets no other through
            rejects[Reject.OTHER_PROTOCOL] += packets
            continue
        batch.add(kind, key, packets, packets * wire_bytes(ip_len, hhl, mtu))
    return batch
