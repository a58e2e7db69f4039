"""Packet parser: captured cooked-v2 frames in, packet tuples or reject reasons out.

Owns the rules of what a frame counts as: ``direction`` (from the cooked
header's hatype and packet type), the packet's key and its ``wire_bytes``,
and why a frame is refused (``Reject``).  Pure: no I/O, no state of its own,
no object per packet except the result tuple and its key.  The layouts it
reads are wire.py's.  The caller owns the reject counters (a list indexed by
``Reject``) and the link table (ifindex -> (link header bytes, MTU bytes),
see capture/links.py).
Callers: counting.py (``parse_record`` for the frames its fast walk does not
take, ``direction`` and ``wire_bytes`` per distinct row of a fixed lane).
``parse_batch`` (every record of a batch, one by one) is the plain path the
tests, the benchmarks and the privileged capture tests compare against; the
daemon does not call it.

A packet is ``(direction, proto, key, wire_bytes)``:

* ``direction``: ``Direction`` (loopback packets are seen once, as incoming,
  and count as a send for the source and a receive for the destination);
* ``proto``: the IP protocol number (PROTO_TCP, PROTO_UDP, PROTO_ICMP,
  PROTO_ICMPV6);
* ``key``: source address + destination address + source port + destination
  port as raw bytes in wire order, 12 bytes for IPv4 and 36 for IPv6; for
  ICMP and ICMPv6, which are only counted, the two addresses, the echo
  identifier (bytes 4-5 of the ICMP header) and the type and code, also 12
  or 36 bytes (locality.py tells a forwarded one from them, asking conntrack
  through a masquerade), or the two addresses alone (8 or 32 bytes) when the
  packet or the capture ends before the identifier;
* ``wire_bytes``: the kernel module's "real load on the wire", computed from
  the IP header's length (not the captured length), which may not claim
  more than the frame's length on the wire (``IP_LENGTH_BEYOND_FRAME``):
  ``ip_len + hhl + 4``, plus ``(ip_len // mtu) * (20 + hhl + 4)`` when the
  packet is a GSO/GRO aggregate larger than the MTU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import IntEnum

from .wire import (
    ARPHRD_LOOPBACK,
    CRC_BYTES,
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_HDR,
    ICMPHDR,
    IP6_FRAGMENT_MASK,
    IP_FRAGMENT_MASK,
    IPHDR,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPV6_OPT_HDR,
    IPV6HDR,
    PCAP_SF_PKTHDR,
    PORTS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    SLL2_HEADER,
    PacketType,
)

log = logging.getLogger(__name__)

__all__ = [  # what other modules take from here, wire.py's numbers included
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "REJECT_COUNTERS_LENGTH",
    "UNKNOWN_LINK",
    "Direction",
    "Packet",
    "Reject",
    "direction",
    "parse_batch",
    "parse_frame",
    "parse_record",
    "wire_bytes",
]

IPV6_EXTENSION_HEADERS_MAX = 8  # a longer chain is refused
UNKNOWN_LINK = (0, 65536)  # (hhl, mtu) for an ifindex the link table does not know


class Direction(IntEnum):
    RECEIVED = 0
    SENT = 1
    LOOPBACK = 2  # a send for the source endpoint and a receive for the destination


class Reject(IntEnum):
    """Why a frame is not counted; indexes the caller's rejects list (index 0 unused)."""

    TRUNCATED_LINK = 1  # shorter than the 20-byte cooked header
    OTHERHOST = 2  # addressed to another host (promiscuous copy), or an unknown packet type
    NOT_IP = 3  # not IPv4 nor IPv6
    TRUNCATED_IP = 4  # IP header cut short by the snap length
    BAD_IP_HEADER = 5  # version, IHL or total length inconsistent
    BAD_IPV6_EXTENSION = 6  # extension chain past the captured bytes / IP length, or too long
    TRUNCATED_TRANSPORT = 7  # fewer than 4 bytes of TCP/UDP header (the ports)
    FRAGMENT = 8  # a fragment, first or later: never credited to a process (netatopd(8))
    OTHER_PROTOCOL = 9  # not TCP/UDP/ICMP/ICMPv6 (ESP, no-next-header, SCTP, ...)
    LOOPBACK_OUTGOING = 10  # outgoing copy of a loopback packet (libpcap normally drops it)
    IP_LENGTH_BEYOND_FRAME = 11  # the IP length claims more than the frame carried on the wire


REJECT_COUNTERS_LENGTH = len(Reject) + 1

# A packet: (Direction, IP protocol, key, wire bytes).
Packet = tuple[int, int, bytes, int]

# The members parse reads, from wire.py's layouts:
_SLL2_FIELDS = SLL2_HEADER.view("sll2_protocol", "sll2_if_index", "sll2_hatype", "sll2_pkttype")
_IPHDR_FIELDS = IPHDR.view("version_ihl", "tot_len", "frag_off", "protocol")
_IPV6HDR_FIELDS = IPV6HDR.view("version_priority", "payload_len", "nexthdr")
_IPV6_OPT_HDR = IPV6_OPT_HDR.struct  # nexthdr, hdrlen (AH's first two members too)
_FRAG_HDR_FIELDS = FRAG_HDR.view("nexthdr", "frag_off")
_PCAP_SF_PKTHDR_LENGTHS = PCAP_SF_PKTHDR.view("caplen", "len")
_RECORD_HEADER_BYTES = PCAP_SF_PKTHDR.size
_SLL2_BYTES = SLL2_HEADER.size
_IPHDR_BYTES = IPHDR.size  # without options
_IPV6HDR_BYTES = IPV6HDR.size
_IPV4_ADDRESSES_OFFSET = IPHDR.offset("saddr")  # saddr, daddr
_IPV4_ADDRESSES_BYTES = IPHDR.width("saddr") + IPHDR.width("daddr")
_IPV6_ADDRESSES_OFFSET = IPV6HDR.offset("saddr")
_IPV6_ADDRESSES_BYTES = IPV6HDR.width("saddr") + IPV6HDR.width("daddr")
_FRAG_HDR_BYTES = FRAG_HDR.size
_PORTS_BYTES = PORTS.size  # source port + destination port, the start of TCP and UDP
# ICMP and ICMPv6: the key takes the echo identifier, then the type and code (what
# other messages than queries carry where the identifier is, their rows keep too).
_ICMP_ID_START = ICMPHDR.offset("echo_id")
_ICMP_KEY_BYTES = _ICMP_ID_START + ICMPHDR.width("echo_id")  # the header up to the id's end
_ICMP_TYPE_CODE_BYTES = ICMPHDR.width("type") + ICMPHDR.width("code")
assert ICMPHDR.offset("type") == 0 and ICMPHDR.offset("code") == 1

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
    """The kernel module's load on the wire for one IP packet of ip_len bytes.

    An aggregate larger than the MTU also pays, for each further segment, an
    IPv4 header (20 bytes, as the module counts for either family), a link
    header and a CRC.
    """
    total = ip_len + hhl + CRC_BYTES
    if mtu > 0 and ip_len > mtu:
        total += (ip_len // mtu) * (_IPHDR_BYTES + hhl + CRC_BYTES)
    return total


def direction(hatype: int, pkttype: int) -> Direction | Reject:
    """How a frame counts, from its cooked header's sll2_hatype and sll2_pkttype.

    Loopback frames are seen once (their outgoing copy is refused); elsewhere
    outgoing frames are sends and host, broadcast and multicast ones receives.
    The per-packet walks (``_parse`` here and ``counting.count_records``)
    inline this rule, a call a packet being measurably dearer
    (bench/perpacket.py); tests/unit/test_parse.py holds both inline copies
    to this function for every (hatype, pkttype).
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
    if end - start < _SLL2_BYTES:
        return Reject.TRUNCATED_LINK
    ethertype, ifindex, hatype, pkttype = _SLL2_FIELDS.unpack_from(buf, start)
    # direction(hatype, pkttype), inlined (see there)
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
    ip = start + _SLL2_BYTES
    if ethertype == ETH_P_IP:
        if end - ip < _IPHDR_BYTES:
            return Reject.TRUNCATED_IP
        version_ihl, ip_len, frag_off, proto = _IPHDR_FIELDS.unpack_from(buf, ip)
        header_bytes = (version_ihl & 0x0F) * 4  # ihl_bytes
        if version_ihl >> 4 != 4 or header_bytes < _IPHDR_BYTES:
            return Reject.BAD_IP_HEADER
        if ip_len < header_bytes:
            # A BIG TCP aggregate (over 64 KiB) has tot_len 0; the frame says how long it is.
            if ip_len == 0 and original_bytes - _SLL2_BYTES > _IP_MAX_BYTES:
                ip_len = original_bytes - _SLL2_BYTES
            else:
                return Reject.BAD_IP_HEADER
        elif original_bytes and ip_len > original_bytes - _SLL2_BYTES:
            # More than the frame carried: the kernel drops it as truncated, so must we.
            return Reject.IP_LENGTH_BEYOND_FRAME
        if frag_off & IP_FRAGMENT_MASK:
            return Reject.FRAGMENT
        transport = ip + header_bytes
        if transport > end:
            return Reject.TRUNCATED_IP
        addresses = ip + _IPV4_ADDRESSES_OFFSET
        addresses_end = addresses + _IPV4_ADDRESSES_BYTES
    elif ethertype == ETH_P_IPV6:
        if end - ip < _IPV6HDR_BYTES:
            return Reject.TRUNCATED_IP
        first_byte, payload_len, proto = _IPV6HDR_FIELDS.unpack_from(buf, ip)
        if first_byte >> 4 != 6:
            return Reject.BAD_IP_HEADER
        ip_len = _IPV6HDR_BYTES + payload_len
        if payload_len == 0 and original_bytes - _SLL2_BYTES - _IPV6HDR_BYTES > _IP_MAX_BYTES:
            ip_len = original_bytes - _SLL2_BYTES  # BIG TCP aggregate: payload_len 0
        elif original_bytes and ip_len > original_bytes - _SLL2_BYTES:
            return Reject.IP_LENGTH_BEYOND_FRAME
        transport = ip + _IPV6HDR_BYTES
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
                    if frag_off & IP6_FRAGMENT_MASK:
                        return Reject.FRAGMENT
                    transport += _FRAG_HDR_BYTES
                elif proto == IPPROTO_AH:
                    proto, hdrlen = _IPV6_OPT_HDR.unpack_from(buf, transport)
                    transport += (hdrlen + 2) * 4  # auth_header_bytes
                else:
                    proto, hdrlen = _IPV6_OPT_HDR.unpack_from(buf, transport)
                    transport += (hdrlen + 1) * 8  # ipv6_option_header_bytes
            if transport > limit:
                return Reject.BAD_IPV6_EXTENSION
        addresses = ip + _IPV6_ADDRESSES_OFFSET
        addresses_end = addresses + _IPV6_ADDRESSES_BYTES
    else:
        return Reject.NOT_IP
    if proto == PROTO_TCP or proto == PROTO_UDP:
        ports_end = transport + _PORTS_BYTES
        if ports_end > end or ports_end > ip + ip_len:
            return Reject.TRUNCATED_TRANSPORT
        key = buf[addresses:addresses_end] + buf[transport:ports_end]
    elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        # addresses + echo identifier + type + code (conntrack's ICMP tuple); the
        # addresses alone when the capture or the packet ends before the identifier.
        icmp_end = transport + _ICMP_KEY_BYTES
        if icmp_end > end or icmp_end > ip + ip_len:
            key = buf[addresses:addresses_end]
        else:
            key = (
                buf[addresses:addresses_end]
                + buf[transport + _ICMP_ID_START : icmp_end]
                + buf[transport : transport + _ICMP_TYPE_CODE_BYTES]
            )
    else:
        return Reject.OTHER_PROTOCOL
    try:
        hhl, mtu = links[ifindex]
    except KeyError:
        hhl, mtu = UNKNOWN_LINK
    total = ip_len + hhl + CRC_BYTES  # wire_bytes, inlined
    if ip_len > mtu > 0:
        total += (ip_len // mtu) * (_IPHDR_BYTES + hhl + CRC_BYTES)
    return (direction, proto, key, total)


def parse_frame(
    frame: bytes,
    links: Mapping[int, tuple[int, int]],
    original_bytes: int = 0,
) -> Packet | Reject:
    """One cooked-v2 frame -> a Packet, or the Reject reason.  Never raises.

    ``original_bytes`` is the frame's length on the wire (pcap's ``len``,
    cooked header included) when known (0: not known): the IP length may not
    claim more, and aggregates over 64 KiB, whose IP header carries no
    length, take theirs from it.
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

    For callers that walk a Batch themselves (counting.count_records hands it
    the frames its fast walk does not take); never raises.
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
        frame = position + _RECORD_HEADER_BYTES
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
