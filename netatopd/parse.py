"""Packet parser: captured cooked-v2 frames in, packet tuples or reject reasons out.

Stage: parse (second stage, after capture/).  Pure: no I/O, no state of its
own, no object per packet except the result tuple and its key.  The caller
owns the reject counters (a list indexed by ``Reject``) and the link table
(ifindex -> (link header bytes, MTU bytes), see capture/links.py).
Callers: the daemon loop (``parse_batch`` on each capture Batch) and the tests.

A packet is ``(direction, proto, key, wire_bytes)``:

* ``direction``: ``Direction`` (loopback packets are seen once, as incoming,
  and count as a send for the source and a receive for the destination);
* ``proto``: the IP protocol number (PROTO_TCP, PROTO_UDP, PROTO_ICMP,
  PROTO_ICMPV6);
* ``key``: source address + destination address + source port + destination
  port as raw bytes in wire order, 12 bytes for IPv4 and 36 for IPv6; b"" for
  ICMP and ICMPv6, which are only counted;
* ``wire_bytes``: the kernel module's "real load on the wire", computed from
  the IP header's length (not the captured length):
  ``ip_len + hhl + 4``, plus ``(ip_len // mtu) * (20 + hhl + 4)`` when the
  packet is a GSO/GRO aggregate larger than the MTU.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from enum import IntEnum

log = logging.getLogger(__name__)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARPHRD_LOOPBACK = 772

# IPv6 extension headers this parser walks (next-header values).
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60
IPV6_EXTENSION_HEADERS_MAX = 8  # a longer chain is refused

CRC_BYTES = 4  # the Ethernet frame check sequence the module adds to every packet
UNKNOWN_LINK = (0, 65536)  # (hhl, mtu) for an ifindex the link table does not know


class Direction(IntEnum):
    RECEIVED = 0
    SENT = 1
    LOOPBACK = 2  # a send for the source endpoint and a receive for the destination


class PacketType(IntEnum):
    """sll2_pkttype: the kernel's PACKET_* (linux/if_packet.h)."""

    HOST = 0
    BROADCAST = 1
    MULTICAST = 2
    OTHERHOST = 3
    OUTGOING = 4


class Reject(IntEnum):
    """Why a frame is not counted; indexes the caller's rejects list (index 0 unused)."""

    TRUNCATED_LINK = 1  # shorter than the 20-byte cooked header
    OTHERHOST = 2  # addressed to another host (promiscuous copy), or an unknown packet type
    NOT_IP = 3  # not IPv4 nor IPv6
    TRUNCATED_IP = 4  # IP header cut short by the snap length
    BAD_IP_HEADER = 5  # version, IHL or total length inconsistent
    BAD_IPV6_EXTENSION = 6  # extension chain past the captured bytes / IP length, or too long
    TRUNCATED_TRANSPORT = 7  # fewer than 4 bytes of TCP/UDP header (the ports)
    FRAGMENT = 8  # non-first fragment: no ports
    OTHER_PROTOCOL = 9  # not TCP/UDP/ICMP/ICMPv6 (ESP, no-next-header, SCTP, ...)
    LOOPBACK_OUTGOING = 10  # outgoing copy of a loopback packet (libpcap normally drops it)


REJECT_COUNTERS_LENGTH = len(Reject) + 1

# A packet: (Direction, IP protocol, key, wire bytes).
Packet = tuple[int, int, bytes, int]

# struct sll2_header (libpcap pcap/sll.h), 20 bytes, network order:
#   uint16 sll2_protocol;       ETH_P_*
#   uint16 sll2_reserved_mbz;
#   uint32 sll2_if_index;
#   uint16 sll2_hatype;         ARPHRD_*
#   uint8  sll2_pkttype;        PACKET_*
#   uint8  sll2_halen;
#   uint8  sll2_addr[8];
SLL2_HEADER = struct.Struct("!HHIHBB8s")
# The sll2_header members parse reads: protocol, if_index, hatype, pkttype.
_SLL2_FIELDS = struct.Struct("!H2xIHB")

# struct iphdr (linux/ip.h), 20 bytes without options, network order:
#   uint8  version:4, ihl:4;  uint8 tos;  uint16 tot_len;  uint16 id;
#   uint16 frag_off (flags:3, offset:13);  uint8 ttl;  uint8 protocol;
#   uint16 check;  uint32 saddr;  uint32 daddr
IPHDR = struct.Struct("!BBHHHBBH4s4s")
# The iphdr members parse reads: version/ihl, tot_len, frag_off, protocol.
_IPHDR_FIELDS = struct.Struct("!BxH2xHxB")
IPV4_ADDRESSES_OFFSET = 12  # saddr, daddr: 8 bytes
IP_OFFSET_MASK = 0x1FFF  # fragment offset in frag_off, 8-byte units

# struct ipv6hdr (linux/ipv6.h), 40 bytes, network order:
#   uint32 version:4, priority (traffic class):8, flow_lbl:20;
#   uint16 payload_len;  uint8 nexthdr;  uint8 hop_limit;
#   uint8 saddr[16];  uint8 daddr[16]
IPV6HDR = struct.Struct("!IHBB16s16s")
# The ipv6hdr members parse reads: first byte (version), payload_len, nexthdr.
_IPV6HDR_FIELDS = struct.Struct("!B3xHB")
IPV6_ADDRESSES_OFFSET = 8  # saddr, daddr: 32 bytes

# struct ipv6_opt_hdr (linux/ipv6.h), 2 bytes, the start of hop-by-hop,
# routing and destination options headers (and, with another unit, AH):
#   uint8 nexthdr;  uint8 hdrlen   (8-byte units, not counting the first 8)
IPV6_OPT_HDR = struct.Struct("!BB")

# struct frag_hdr (net/ipv6.h), 8 bytes:
#   uint8 nexthdr;  uint8 reserved;  uint16 frag_off (offset:13, res:2, M:1);
#   uint32 identification
FRAG_HDR = struct.Struct("!BBHI")
# The frag_hdr members parse reads: nexthdr, frag_off.
_FRAG_HDR_FIELDS = struct.Struct("!BxH")
IP6_OFFSET_MASK = 0xFFF8  # fragment offset in frag_off, already in bytes

# struct ip_auth_hdr (linux/ip.h), 12 bytes before the variable ICV:
#   uint8 nexthdr;  uint8 hdrlen (4-byte units, minus 2);  uint16 reserved;
#   uint32 spi;  uint32 seq_no
IP_AUTH_HDR = struct.Struct("!BBHII")

# struct udphdr (linux/udp.h), 8 bytes: uint16 source, dest, len, check.
UDPHDR = struct.Struct("!HHHH")
# struct tcphdr (linux/tcp.h), 20 bytes without options: uint16 source, dest;
# uint32 seq, ack_seq; uint16 doff/flags; uint16 window, check, urg_ptr.
TCPHDR = struct.Struct("!HHIIHHHH")
PORTS_BYTES = 4  # source port + destination port, the start of both headers

# struct pcap_sf_pkthdr (libpcap sf-pcap.h), the record header of a Batch,
# 16 bytes, native order: uint32 ts_sec, ts_usec, caplen, len (len includes
# the 20-byte cooked header).  The members parse_batch reads: caplen, len.
PCAP_SF_PKTHDR = struct.Struct("=IIII")
_PCAP_SF_PKTHDR_LENGTHS = struct.Struct("=8xII")

_IPV6_EXTENSIONS = frozenset(
    (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS)
)
_IP_MAX_BYTES = 65535


def ihl_bytes(version_ihl: int) -> int:
    """IPv4 header length in bytes from iphdr's first byte (low nibble, 4-byte units)."""
    return (version_ihl & 0x0F) * 4


def ipv6_option_header_bytes(hdrlen: int) -> int:
    """Length of a hop-by-hop, routing or destination options header (8-byte units + 1)."""
    return (hdrlen + 1) * 8


def auth_header_bytes(hdrlen: int) -> int:
    """Length of an IPv6 authentication header (4-byte units + 2, RFC 4302)."""
    return (hdrlen + 2) * 4


def wire_bytes(ip_len: int, hhl: int, mtu: int) -> int:
    """The kernel module's load on the wire for one IP packet of ip_len bytes."""
    total = ip_len + hhl + CRC_BYTES
    if mtu > 0 and ip_len > mtu:
        total += (ip_len // mtu) * (20 + hhl + CRC_BYTES)
    return total


def direction(hatype: int, pkttype: int) -> Direction | Reject:
    """How a frame counts, from its cooked header's sll2_hatype and sll2_pkttype.

    Loopback frames are seen once (their outgoing copy is refused); elsewhere
    outgoing frames are sends and host, broadcast and multicast ones receives.
    The per-packet walks (_parse, flows.FlowTable.account_records) inline this.
    """
    if hatype == ARPHRD_LOOPBACK:
        if pkttype == PacketType.OUTGOING:
            return Reject.LOOPBACK_OUTGOING
        return Direction.LOOPBACK
    if pkttype == PacketType.OUTGOING:
        return Direction.SENT
    if pkttype <= PacketType.MULTICAST:
        return Direction.RECEIVED
    return Reject.OTHERHOST


def _parse(
    buf: bytes,
    start: int,
    end: int,
    original_bytes: int,
    links: Mapping[int, tuple[int, int]],
) -> Packet | Reject:
    """Parse the frame buf[start:end]; original_bytes is its length on the wire (or 0)."""
    if end - start < 20:
        return Reject.TRUNCATED_LINK
    ethertype, ifindex, hatype, pkttype = _SLL2_FIELDS.unpack_from(buf, start)
    # direction(hatype, pkttype), inlined
    if hatype == ARPHRD_LOOPBACK:
        if pkttype == 4:  # PacketType.OUTGOING
            return Reject.LOOPBACK_OUTGOING
        direction = 2  # Direction.LOOPBACK
    elif pkttype == 4:  # PacketType.OUTGOING
        direction = 1  # Direction.SENT
    elif pkttype <= 2:  # PacketType.HOST, BROADCAST, MULTICAST
        direction = 0  # Direction.RECEIVED
    else:
        return Reject.OTHERHOST
    ip = start + 20
    if ethertype == ETH_P_IP:
        if end - ip < 20:
            return Reject.TRUNCATED_IP
        version_ihl, ip_len, frag_off, proto = _IPHDR_FIELDS.unpack_from(buf, ip)
        header_bytes = (version_ihl & 0x0F) * 4  # ihl_bytes
        if version_ihl >> 4 != 4 or header_bytes < 20:
            return Reject.BAD_IP_HEADER
        if ip_len < header_bytes:
            # A BIG TCP aggregate (over 64 KiB) has tot_len 0; the frame says how long it is.
            if ip_len == 0 and original_bytes - 20 > _IP_MAX_BYTES:
                ip_len = original_bytes - 20
            else:
                return Reject.BAD_IP_HEADER
        if frag_off & IP_OFFSET_MASK:
            return Reject.FRAGMENT
        transport = ip + header_bytes
        if transport > end:
            return Reject.TRUNCATED_IP
        addresses = ip + IPV4_ADDRESSES_OFFSET
        addresses_end = addresses + 8
    elif ethertype == ETH_P_IPV6:
        if end - ip < 40:
            return Reject.TRUNCATED_IP
        first_byte, payload_len, proto = _IPV6HDR_FIELDS.unpack_from(buf, ip)
        if first_byte >> 4 != 6:
            return Reject.BAD_IP_HEADER
        ip_len = 40 + payload_len
        if payload_len == 0 and original_bytes - 60 > _IP_MAX_BYTES:
            ip_len = original_bytes - 20  # BIG TCP aggregate: payload_len 0
        transport = ip + 40
        if proto in _IPV6_EXTENSIONS:
            ip_end = ip + ip_len
            limit = end if end < ip_end else ip_end
            headers = 0
            while proto in _IPV6_EXTENSIONS:
                headers += 1
                # Every extension header is at least 8 bytes long.
                if headers > IPV6_EXTENSION_HEADERS_MAX or transport + 8 > limit:
                    return Reject.BAD_IPV6_EXTENSION
                if proto == IPPROTO_FRAGMENT:
                    proto, frag_off = _FRAG_HDR_FIELDS.unpack_from(buf, transport)
                    if frag_off & IP6_OFFSET_MASK:
                        return Reject.FRAGMENT
                    transport += 8
                elif proto == IPPROTO_AH:
                    proto, hdrlen = IPV6_OPT_HDR.unpack_from(buf, transport)
                    transport += (hdrlen + 2) * 4  # auth_header_bytes
                else:
                    proto, hdrlen = IPV6_OPT_HDR.unpack_from(buf, transport)
                    transport += (hdrlen + 1) * 8  # ipv6_option_header_bytes
            if transport > limit:
                return Reject.BAD_IPV6_EXTENSION
        addresses = ip + IPV6_ADDRESSES_OFFSET
        addresses_end = addresses + 32
    else:
        return Reject.NOT_IP
    if proto == PROTO_TCP or proto == PROTO_UDP:
        ports_end = transport + PORTS_BYTES
        if ports_end > end or ports_end > ip + ip_len:
            return Reject.TRUNCATED_TRANSPORT
        key = buf[addresses:addresses_end] + buf[transport:ports_end]
    elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        key = b""
    else:
        return Reject.OTHER_PROTOCOL
    try:
        hhl, mtu = links[ifindex]
    except KeyError:
        hhl, mtu = UNKNOWN_LINK
    total = ip_len + hhl + CRC_BYTES  # wire_bytes, inlined
    if ip_len > mtu > 0:
        total += (ip_len // mtu) * (20 + hhl + CRC_BYTES)
    return (direction, proto, key, total)


def parse_frame(
    frame: bytes,
    links: Mapping[int, tuple[int, int]],
    original_bytes: int = 0,
) -> Packet | Reject:
    """One cooked-v2 frame -> a Packet, or the Reject reason.  Never raises.

    ``original_bytes`` is the frame's length on the wire (pcap's ``len``,
    cooked header included) when known; it is only needed for aggregates over
    64 KiB, whose IP header carries no length.
    """
    return _parse(frame, 0, len(frame), original_bytes, links)


def parse_record(
    records: bytes,
    start: int,
    end: int,
    original_bytes: int,
    links: Mapping[int, tuple[int, int]],
) -> Packet | Reject:
    """The frame records[start:end] of a Batch -> a Packet, or the Reject reason.

    For callers that walk a Batch themselves (flows.FlowTable.account_records
    hands it the frames its fast path does not take); never raises.
    """
    return _parse(records, start, end, original_bytes, links)


def parse_batch(
    records: bytes,
    links: Mapping[int, tuple[int, int]],
    rejects: list[int],
) -> list[Packet]:
    """The packets of a capture Batch's records; rejects[reason] += 1 for the others.

    ``rejects`` is owned by the caller, REJECT_COUNTERS_LENGTH long.  A record
    header that runs past the end of ``records`` counts as TRUNCATED_LINK and
    ends the walk.
    """
    packets: list[Packet] = []
    append = packets.append
    unpack_lengths = _PCAP_SF_PKTHDR_LENGTHS.unpack_from
    size = len(records)
    position = 0
    while position < size:
        frame = position + 16
        if frame > size:
            rejects[Reject.TRUNCATED_LINK] += 1
            break
        caplen, original_bytes = unpack_lengths(records, position)
        position = frame + caplen
        result = _parse(
            records, frame, position if position < size else size, original_bytes, links
        )
        if result.__class__ is tuple:
            append(result)
        else:
            rejects[result] += 1  # type: ignore[index]
    return packets
