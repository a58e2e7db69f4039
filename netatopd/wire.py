"""Wire layouts: every header the per-packet path reads, declared once, as data.

Owns the C structs of a captured record (pcap_sf_pkthdr, sll2_header, iphdr,
ipv6hdr and the extension headers parse walks, tcphdr, udphdr), the numbers
several modules test against (ETH_P_*, ARPHRD_*, PACKET_*, IPPROTO_*) and
the two *fixed frames*: the common TCP/UDP frames of one IP family that a
fixed capture lane takes, each captured to exactly the cooked header, the IP
header and the ports.  Imports nothing of ours.

Everything that reads or selects these bytes is derived from here: parse.py
and counting.py build their ``struct`` formats with ``Layout.fields``
(members they do not read become padding), and capture/lanes.py builds the
fixed lanes' kernel filters from the members, offsets and values of
``FIXED_FRAMES``, so the filter and the reader cannot drift apart.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

# linux/if_ether.h: sll2_protocol values.
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# linux/if_arp.h: sll2_hatype values.
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772

# netinet/in.h: IP protocol numbers (iphdr.protocol, ipv6hdr.nexthdr).
IPPROTO_HOPOPTS = 0  # IPv6 hop-by-hop options header
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
IPPROTO_ROUTING = 43  # IPv6 routing header
IPPROTO_FRAGMENT = 44  # IPv6 fragment header
IPPROTO_AH = 51  # authentication header
PROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60  # IPv6 destination options header

IP_OFFSET_MASK = 0x1FFF  # fragment offset in iphdr.frag_off, 8-byte units
IP_MF = 0x2000  # more fragments, in iphdr.frag_off
IP_FRAGMENT_MASK = IP_MF | IP_OFFSET_MASK  # non-zero: a fragment, the first one too
IP6_OFFSET_MASK = 0xFFF8  # fragment offset in frag_hdr.frag_off, already in bytes
IP6_MF = 0x0001  # more fragments, in frag_hdr.frag_off
IP6_FRAGMENT_MASK = IP6_MF | IP6_OFFSET_MASK  # non-zero: a fragment (0: an atomic fragment)

# An IPv4 address written as IPv6 (::ffff:a.b.c.d): these 12 bytes, then the 4.
IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

CRC_BYTES = 4  # the Ethernet frame check sequence the kernel module adds to every packet


class PacketType(IntEnum):
    """sll2_pkttype: the kernel's PACKET_* (linux/if_packet.h)."""

    HOST = 0
    BROADCAST = 1
    MULTICAST = 2
    OTHERHOST = 3
    OUTGOING = 4


# A member of a layout: a name (the C member's) and its struct format code.
Member = tuple[str, str]
# What Layout.fields reads: a member's name, or (first, last) for the bytes from the
# start of member first to the end of member last, as one bytes string.
Wanted = str | tuple[str, str]


class Layout:
    """A C struct as data: its members in order, each with a ``struct`` format code.

    ``struct`` is the whole struct; ``fields`` gives the format that reads
    only some members (the others skipped as padding), so a reader names the
    members it wants instead of restating offsets.  Layouts of one byte order
    add up (``+``) to the headers of a frame, one after the other.
    """

    def __init__(self, c_name: str, byte_order: str, members: Sequence[Member]) -> None:
        self.c_name = c_name
        self.byte_order = byte_order
        self.members = tuple(members)
        self.struct = struct.Struct(byte_order + "".join(code for _, code in self.members))
        self.size = self.struct.size
        self._offsets: dict[str, int] = {}
        self._widths: dict[str, int] = {}
        offset = 0
        for name, code in self.members:
            if name in self._offsets:
                raise ValueError(f"{c_name}: member {name} twice")
            width = struct.calcsize(byte_order + code)
            self._offsets[name] = offset
            self._widths[name] = width
            offset += width

    def __add__(self, other: Layout) -> Layout:
        if other.byte_order != self.byte_order:
            raise ValueError(f"{self.c_name} and {other.c_name}: different byte orders")
        return Layout(
            f"{self.c_name} + {other.c_name}", self.byte_order, self.members + other.members
        )

    def __repr__(self) -> str:
        return f"Layout({self.c_name!r}, {self.size} bytes)"

    def offset(self, name: str) -> int:
        """Where member name starts, in bytes from the start of the layout."""
        return self._offsets[name]

    def width(self, name: str) -> int:
        """How many bytes member name takes."""
        return self._widths[name]

    def fields(self, *wanted: Wanted, whole: bool = False) -> str:
        """The format (without byte order) reading only the wanted members, in layout order.

        A name reads that member with its own code; (first, last) reads the
        bytes from first to last as one ``Ns`` string.  Everything else is
        padding; the format ends after the last wanted member, or with
        ``whole`` at the end of the layout (for records read back to back).
        """
        starts: dict[str, str] = {}  # member name -> the format code read there
        ends: dict[str, str] = {}  # last member of a run -> its first
        for want in wanted:
            if isinstance(want, tuple):
                first, last = want
                length = self.offset(last) + self.width(last) - self.offset(first)
                if length <= 0:
                    raise ValueError(f"{self.c_name}: {last} is before {first}")
                starts[first] = f"{length}s"
                ends[first] = last
            else:
                self.offset(want)  # KeyError for a member the layout does not have
                starts[want] = dict(self.members)[want]
                ends[want] = want
        parts: list[str] = []
        padding = 0
        run_until: str | None = None  # inside a (first, last) run: its last member
        for name, _ in self.members:
            if run_until is not None:
                if name == run_until:
                    run_until = None
                continue
            code = starts.get(name)
            if code is None:
                padding += self.width(name)
                continue
            if padding:
                parts.append(_padding(padding))
                padding = 0
            parts.append(code)
            if ends[name] != name:
                run_until = ends[name]
        if whole and padding:
            parts.append(_padding(padding))
        return "".join(parts)

    def view(self, *wanted: Wanted) -> struct.Struct:
        """A Struct reading only the wanted members from the start of the layout."""
        return struct.Struct(self.byte_order + self.fields(*wanted))


def _padding(length: int) -> str:
    return "x" if length == 1 else f"{length}x"


# struct pcap_sf_pkthdr (libpcap sf-pcap.h), the record header of a capture Batch,
# 16 bytes, native order:
PCAP_SF_PKTHDR = Layout(
    "pcap_sf_pkthdr",
    "=",
    [
        ("ts_sec", "I"),  # uint32 ts_sec;    time stamp, seconds
        ("ts_usec", "I"),  # uint32 ts_usec;  time stamp, microseconds
        ("caplen", "I"),  # uint32 caplen;    bytes captured (the frame that follows)
        ("len", "I"),  # uint32 len;          bytes on the wire, cooked header included
    ],
)

# struct sll2_header (libpcap pcap/sll.h), the cooked v2 link header, 20 bytes:
SLL2_HEADER = Layout(
    "sll2_header",
    "!",
    [
        ("sll2_protocol", "H"),  # uint16 sll2_protocol;      ETH_P_*
        ("sll2_reserved_mbz", "H"),  # uint16 sll2_reserved_mbz;
        ("sll2_if_index", "I"),  # uint32 sll2_if_index;      the interface
        ("sll2_hatype", "H"),  # uint16 sll2_hatype;          ARPHRD_*
        ("sll2_pkttype", "B"),  # uint8  sll2_pkttype;        PACKET_* (PacketType)
        ("sll2_halen", "B"),  # uint8  sll2_halen;
        ("sll2_addr", "8s"),  # uint8  sll2_addr[8];
    ],
)

# struct iphdr (linux/ip.h), 20 bytes without options:
IPHDR = Layout(
    "iphdr",
    "!",
    [
        ("version_ihl", "B"),  # uint8  version:4, ihl:4;  (ihl in 4-byte units)
        ("tos", "B"),  # uint8  tos;
        ("tot_len", "H"),  # uint16 tot_len;               header + payload bytes
        ("id", "H"),  # uint16 id;
        ("frag_off", "H"),  # uint16 frag_off;             flags:3, offset:13
        ("ttl", "B"),  # uint8  ttl;
        ("protocol", "B"),  # uint8  protocol;             IPPROTO_*
        ("check", "H"),  # uint16 check;
        ("saddr", "4s"),  # uint32 saddr;
        ("daddr", "4s"),  # uint32 daddr;
    ],
)

# struct ipv6hdr (linux/ipv6.h), 40 bytes:
IPV6HDR = Layout(
    "ipv6hdr",
    "!",
    [
        ("version_priority", "B"),  # uint8 priority:4, version:4;  (version: high nibble)
        ("flow_lbl", "3s"),  # uint8  flow_lbl[3];
        ("payload_len", "H"),  # uint16 payload_len;   bytes after this 40-byte header
        ("nexthdr", "B"),  # uint8  nexthdr;            IPPROTO_*
        ("hop_limit", "B"),  # uint8  hop_limit;
        ("saddr", "16s"),  # struct in6_addr saddr;
        ("daddr", "16s"),  # struct in6_addr daddr;
    ],
)

# struct ipv6_opt_hdr (linux/ipv6.h), 2 bytes, the start of hop-by-hop, routing
# and destination options headers (and, with another unit, AH):
IPV6_OPT_HDR = Layout(
    "ipv6_opt_hdr",
    "!",
    [
        ("nexthdr", "B"),  # uint8 nexthdr;
        ("hdrlen", "B"),  # uint8 hdrlen;   8-byte units, not counting the first 8
    ],
)

# struct frag_hdr (net/ipv6.h), 8 bytes:
FRAG_HDR = Layout(
    "frag_hdr",
    "!",
    [
        ("nexthdr", "B"),  # uint8  nexthdr;
        ("reserved", "B"),  # uint8  reserved;
        ("frag_off", "H"),  # uint16 frag_off;   offset:13, res:2, M:1
        ("identification", "I"),  # uint32 identification;
    ],
)

# struct ip_auth_hdr (linux/ip.h), 12 bytes before the variable ICV:
IP_AUTH_HDR = Layout(
    "ip_auth_hdr",
    "!",
    [
        ("nexthdr", "B"),  # uint8  nexthdr;
        ("hdrlen", "B"),  # uint8  hdrlen;   4-byte units, minus 2
        ("reserved", "H"),  # uint16 reserved;
        ("spi", "I"),  # uint32 spi;
        ("seq_no", "I"),  # uint32 seq_no;
    ],
)

# struct udphdr (linux/udp.h), 8 bytes:
UDPHDR = Layout(
    "udphdr",
    "!",
    [
        ("source", "H"),  # uint16 source;
        ("dest", "H"),  # uint16 dest;
        ("len", "H"),  # uint16 len;
        ("check", "H"),  # uint16 check;
    ],
)

# struct tcphdr (linux/tcp.h), 20 bytes without options:
TCPHDR = Layout(
    "tcphdr",
    "!",
    [
        ("source", "H"),  # uint16 source;
        ("dest", "H"),  # uint16 dest;
        ("seq", "I"),  # uint32 seq;
        ("ack_seq", "I"),  # uint32 ack_seq;
        ("doff_flags", "H"),  # uint16 doff:4, res1:4, cwr..fin:8;
        ("window", "H"),  # uint16 window;
        ("check", "H"),  # uint16 check;
        ("urg_ptr", "H"),  # uint16 urg_ptr;
    ],
)

# struct icmphdr (linux/icmp.h) with its union as un.echo, 8 bytes; struct icmp6hdr
# (linux/icmpv6.h) has the same first 8 bytes for echo (icmp6_identifier, icmp6_sequence):
ICMPHDR = Layout(
    "icmphdr",
    "!",
    [
        ("type", "B"),  # uint8  type;
        ("code", "B"),  # uint8  code;
        ("checksum", "H"),  # uint16 checksum;
        ("echo_id", "H"),  # uint16 un.echo.id;        of echo and the other queries
        ("echo_sequence", "H"),  # uint16 un.echo.sequence;
    ],
)

# The ports: the first two members of both tcphdr and udphdr, all a flow needs.
PORTS = Layout("ports", "!", TCPHDR.members[:2])
assert UDPHDR.members[:2] == PORTS.members


class FixedFrame(NamedTuple):
    """The frames a fixed capture lane takes: the common TCP/UDP frames of one IP family.

    The lane's kernel filter takes a frame when its cooked protocol is
    ``ethertype``, ``ip_header``'s member ``first_byte_member`` masked with
    ``first_byte_mask`` equals ``first_byte`` (the version, and for IPv4 a
    20-byte header), it is no fragment (if the family says so in its header:
    more-fragments flag and offset 0), the protocol is one of ``protocols`` and the length member
    is at least ``length_min`` (the ports are inside the packet).  Each such
    frame is captured to ``layout``: cooked header, IP header, ports.
    """

    ip_version: int
    ethertype: int
    ip_header: Layout
    layout: Layout  # sll2_header + ip_header + ports
    first_byte_member: str
    first_byte_mask: int
    first_byte: int
    fragment_member: str | None  # holds the fragment flag and offset (IP_FRAGMENT_MASK), or None
    protocol_member: str
    protocols: tuple[int, ...]
    length_member: str
    length_min: int
    length_extra: int  # add to the length member to get the IP packet's length

    @property
    def frame_bytes(self) -> int:
        """The captured length of every frame (the lane's snap length)."""
        return self.layout.size

    @property
    def record_bytes(self) -> int:
        """The length of every record of the lane's batches: record header + frame."""
        return PCAP_SF_PKTHDR.size + self.layout.size


IPV4_FIXED = FixedFrame(
    ip_version=4,
    ethertype=ETH_P_IP,
    ip_header=IPHDR,
    layout=SLL2_HEADER + IPHDR + PORTS,  # 44 bytes
    first_byte_member="version_ihl",
    first_byte_mask=0xFF,
    first_byte=0x45,  # version 4, ihl 5: no options
    fragment_member="frag_off",
    protocol_member="protocol",
    protocols=(PROTO_TCP, PROTO_UDP),
    length_member="tot_len",
    length_min=IPHDR.size + PORTS.size,  # tot_len counts the header
    length_extra=0,
)
IPV6_FIXED = FixedFrame(
    ip_version=6,
    ethertype=ETH_P_IPV6,
    ip_header=IPV6HDR,
    layout=SLL2_HEADER + IPV6HDR + PORTS,  # 64 bytes
    first_byte_member="version_priority",
    first_byte_mask=0xF0,
    first_byte=0x60,  # version 6
    fragment_member=None,  # a fragment header is an extension header: nexthdr 44
    protocol_member="nexthdr",
    protocols=(PROTO_TCP, PROTO_UDP),  # no extension headers
    length_member="payload_len",
    length_min=PORTS.size,  # payload_len does not count the 40-byte header
    length_extra=IPV6HDR.size,
)
FIXED_FRAMES: dict[int, FixedFrame] = {4: IPV4_FIXED, 6: IPV6_FIXED}  # by IP version
