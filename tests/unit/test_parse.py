"""Unit tests of netatopd.parse: golden cooked-v2 frames written out in hex.

Ground truth: each frame below is laid out by hand from the header formats
(sll2_header, iphdr, ipv6hdr and its extension headers, tcphdr, udphdr); the
expected key and wire bytes are worked out by hand in the comments.
"""

from __future__ import annotations

import random
import struct

import pytest

from netatopd import counting, parse, wire
from netatopd.parse import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    REJECT_COUNTERS_LENGTH,
    Direction,
    Reject,
    parse_batch,
    parse_frame,
)

# ifindex -> (hhl, mtu): 1 lo, 2 and 3 ethernet, 9 a tun device.
LINKS: dict[int, tuple[int, int]] = {1: (14, 65536), 2: (14, 1500), 3: (14, 1500), 9: (0, 1400)}


def frame(hex_text: str) -> bytes:
    return bytes.fromhex("".join(hex_text.split()))


# sll2 headers: protocol, reserved, ifindex, hatype, pkttype, halen, addr[8]
SLL2_ETH2_OUT_V4 = "0800 0000 00000002 0001 04 06 020000000001 0000"
SLL2_ETH3_IN_V4 = "0800 0000 00000003 0001 00 06 020000000002 0000"
SLL2_LO_IN_V4 = "0800 0000 00000001 0304 00 06 000000000000 0000"
SLL2_ETH3_IN_V6 = "86dd 0000 00000003 0001 00 06 020000000002 0000"

# IPv4 TCP, sent on eth ifindex 2: 192.0.2.1:54321 -> 198.51.100.2:80, SYN with
# 20 bytes of options: tot_len 60, only the 20-byte TCP header captured.
# wire = 60 + 14 + 4 = 78.
IPV4_TCP_SENT = frame(
    SLL2_ETH2_OUT_V4
    + "45 00 003c 1c46 4000 40 06 0000 c0000201 c6336402"
    + "d431 0050 00000000 00000000 a002 7210 0000 0000"
)
IPV4_TCP_SENT_KEY = frame("c0000201 c6336402 d431 0050")

# IPv4 UDP, received on eth ifindex 3: 198.51.100.2:53 -> 192.0.2.1:58097, 8 bytes
# of data: tot_len 36.  wire = 36 + 14 + 4 = 54.
IPV4_UDP_RECEIVED = frame(
    SLL2_ETH3_IN_V4
    + "45 00 0024 0001 0000 40 11 0000 c6336402 c0000201"
    + "0035 e2f1 0010 0000 0102030405060708"
)
IPV4_UDP_RECEIVED_KEY = frame("c6336402 c0000201 0035 e2f1")

# Loopback (ifindex 1, ARPHRD_LOOPBACK 0x0304, incoming): 127.0.0.1:40000 ->
# 127.0.0.1:5555, 100 bytes of data: tot_len 128, cut at 108 IP bytes (snaplen 128).
# wire = 128 + 14 + 4 = 146.
LOOPBACK_UDP = frame(
    SLL2_LO_IN_V4
    + "45 00 0080 0002 4000 40 11 0000 7f000001 7f000001"
    + "9c40 15b3 006c 0000"
    + "00" * 80
)
LOOPBACK_UDP_KEY = frame("7f000001 7f000001 9c40 15b3")

# IPv4 with 4 bytes of options (IHL 6: NOP NOP NOP EOL), UDP 192.0.2.7:1000 ->
# 192.0.2.8:2000, no data: tot_len 24 + 8 = 32; wire = 32 + 14 + 4 = 50.
IPV4_OPTIONS_UDP = frame(
    SLL2_ETH3_IN_V4
    + "46 00 0020 0003 0000 40 11 0000 c0000207 c0000208 01010100 03e8 07d0 0008 0000"
)
IPV4_OPTIONS_UDP_KEY = frame("c0000207 c0000208 03e8 07d0")

V6_SRC = "20010db8000000000000000000000001"  # 2001:db8::1
V6_DST = "20010db8000000000000000000000002"  # 2001:db8::2

# IPv6 TCP with hop-by-hop (8 bytes: next 60, len 0, PadN 4) and destination
# options (16 bytes: next 6, len 1, PadN 12), then a 20-byte TCP header:
# 2001:db8::1:443 -> 2001:db8::2:50000.  payload_len 8 + 16 + 20 = 44,
# ip_len 84, wire = 84 + 14 + 4 = 102.
IPV6_TCP_EXTENSIONS = frame(
    SLL2_ETH3_IN_V6
    + "60000000 002c 00 40"
    + V6_SRC
    + V6_DST
    + "3c 00 0104 00000000"
    + "06 01 010c 000000000000000000000000"
    + "01bb c350 00000001 00000000 5010 ffff 0000 0000"
)
IPV6_TCP_EXTENSIONS_KEY = frame(V6_SRC + V6_DST + "01bb c350")

# IPv6 first fragment (offset 0, M=1): fragment header next 17, then UDP
# 2001:db8::1:5000 -> 2001:db8::2:6000.  payload_len 8 + 1232 = 1240 (only the
# first 8 bytes of UDP captured), ip_len 1280.  A fragment, the first one too, is
# never credited to a process (netatopd(8)): rejected as FRAGMENT.
IPV6_FIRST_FRAGMENT = frame(
    SLL2_ETH3_IN_V6
    + "60000000 04d8 2c 40"
    + V6_SRC
    + V6_DST
    + "11 00 0001 12345678"
    + "1388 1770 0fa0 0000"
)

# The same datagram's second fragment: offset 1232 bytes = 0x04d0, M=0.
IPV6_LATER_FRAGMENT = frame(
    SLL2_ETH3_IN_V6 + "60000000 0030 2c 40" + V6_SRC + V6_DST + "11 00 04d0 12345678" + "00" * 40
)

# IPv4 TCP GSO aggregate sent on ifindex 2 (MTU 1500): tot_len 64000 = 0xfa00.
# wire = 64000 + 14 + 4 + (64000 // 1500 = 42) * (20 + 14 + 4 = 38) = 64018 + 1596 = 65614.
IPV4_TCP_GSO = frame(
    SLL2_ETH2_OUT_V4
    + "45 00 fa00 1c47 4000 40 06 0000 c0000201 c6336402"
    + "d431 0050 00000001 00000001 5010 7210 0000 0000"
)

# IPv6 with an authentication header (next 17, hdrlen 4: (4 + 2) * 4 = 24 bytes),
# then UDP 2001:db8::1:7 -> 2001:db8::2:9.  payload_len 24 + 8 = 32, ip_len 72,
# wire on the tun ifindex 9 (hhl 0) = 72 + 0 + 4 = 76.
IPV6_AH_UDP = frame(
    "86dd 0000 00000009 fffe 00 00 0000000000000000"
    + "60000000 0020 33 40"
    + V6_SRC
    + V6_DST
    + "11 04 0000 00000100 00000001 0000000000000000 00000000"
    + "0007 0009 0008 0000"
)
IPV6_AH_UDP_KEY = frame(V6_SRC + V6_DST + "0007 0009")

# ICMPv4 echo received on ifindex 3: tot_len 84, wire 84 + 14 + 4 = 102, key: the addresses,
# the echo identifier (0x0001), type 8 and code 0.
IPV4_ICMP = frame(
    SLL2_ETH3_IN_V4 + "45 00 0054 0004 0000 40 01 0000 c6336402 c0000201 0800 0000 0001 0001"
)
# ICMPv6 (echo request) received: payload_len 8, ip_len 48, wire 48 + 14 + 4 = 66.
IPV6_ICMP = frame(SLL2_ETH3_IN_V6 + "60000000 0008 3a 40" + V6_SRC + V6_DST + "8000 0000 0001 0001")

GOLDEN_PACKETS: list[tuple[str, bytes, tuple[int, int, bytes, int]]] = [
    (
        "ipv4 tcp sent",
        IPV4_TCP_SENT,
        (Direction.SENT, PROTO_TCP, IPV4_TCP_SENT_KEY, 78),
    ),
    (
        "ipv4 udp received",
        IPV4_UDP_RECEIVED,
        (Direction.RECEIVED, PROTO_UDP, IPV4_UDP_RECEIVED_KEY, 54),
    ),
    ("loopback", LOOPBACK_UDP, (Direction.LOOPBACK, PROTO_UDP, LOOPBACK_UDP_KEY, 146)),
    (
        "ipv4 options",
        IPV4_OPTIONS_UDP,
        (Direction.RECEIVED, PROTO_UDP, IPV4_OPTIONS_UDP_KEY, 50),
    ),
    (
        "ipv6 hop-by-hop + destination options",
        IPV6_TCP_EXTENSIONS,
        (Direction.RECEIVED, PROTO_TCP, IPV6_TCP_EXTENSIONS_KEY, 102),
    ),
    (
        "gso aggregate",
        IPV4_TCP_GSO,
        (Direction.SENT, PROTO_TCP, IPV4_TCP_SENT_KEY, 65614),
    ),
    ("ipv6 ah", IPV6_AH_UDP, (Direction.RECEIVED, PROTO_UDP, IPV6_AH_UDP_KEY, 76)),
    (
        "icmp",
        IPV4_ICMP,
        (Direction.RECEIVED, PROTO_ICMP, frame("c6336402 c0000201 0001 0800"), 102),
    ),
    (
        "icmpv6",
        IPV6_ICMP,
        (Direction.RECEIVED, PROTO_ICMPV6, frame(V6_SRC + V6_DST + "0001 8000"), 66),
    ),
    # Captured up to the checksum only: the identifier is not there, the addresses are
    # the key (locality.py's address test alone decides such a row).
    (
        "icmp cut before the identifier",
        IPV4_ICMP[:-4],
        (Direction.RECEIVED, PROTO_ICMP, frame("c6336402 c0000201"), 102),
    ),
    (
        "icmpv6 shorter than its identifier",
        frame(SLL2_ETH3_IN_V6 + "60000000 0004 3a 40" + V6_SRC + V6_DST + "8000 0000"),
        (Direction.RECEIVED, PROTO_ICMPV6, frame(V6_SRC + V6_DST), 62),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [(data, expected) for _, data, expected in GOLDEN_PACKETS],
    ids=[name for name, _, _ in GOLDEN_PACKETS],
)
def test_golden_packet(data: bytes, expected: tuple[int, int, bytes, int]) -> None:
    assert parse_frame(data, LINKS) == expected


def test_eight_extension_headers_are_walked() -> None:
    # 7 destination options headers (next 60) and an 8th (next 17), then UDP 7 -> 9:
    # payload_len 64 + 8 = 72 = 0x48, ip_len 112, wire 112 + 14 + 4 = 130.
    data = frame(
        SLL2_ETH3_IN_V6
        + "60000000 0048 3c 40"
        + V6_SRC
        + V6_DST
        + "3c00000000000000" * 7
        + "1100000000000000"
        + "0007 0009 0008 0000"
    )
    assert parse_frame(data, LINKS) == (
        Direction.RECEIVED,
        PROTO_UDP,
        frame(V6_SRC + V6_DST + "0007 0009"),
        130,
    )


def test_key_lengths() -> None:
    assert len(IPV4_TCP_SENT_KEY) == 12
    assert len(IPV6_TCP_EXTENSIONS_KEY) == 36


def test_loopback_outgoing_copy_is_not_counted_twice() -> None:
    outgoing = bytearray(LOOPBACK_UDP)
    outgoing[10] = 4  # sll2_pkttype = PACKET_OUTGOING
    assert parse_frame(bytes(outgoing), LINKS) is Reject.LOOPBACK_OUTGOING


@pytest.mark.parametrize(("pkttype", "direction"), [(0, 0), (1, 0), (2, 0), (4, 1)])
def test_packet_types(pkttype: int, direction: int) -> None:
    data = bytearray(IPV4_UDP_RECEIVED)
    data[10] = pkttype
    result = parse_frame(bytes(data), LINKS)
    assert isinstance(result, tuple)
    assert result[0] == direction


def test_first_fragments_are_not_credited() -> None:
    # A first fragment has ports, but its datagram may never complete (the kernel
    # then delivers nothing): neither family credits it to a process.
    data = bytearray(IPV4_UDP_RECEIVED)
    data[20 + 6 : 20 + 8] = b"\x20\x00"  # MF set, offset 0
    assert parse_frame(bytes(data), LINKS) is Reject.FRAGMENT
    assert parse_frame(IPV6_FIRST_FRAGMENT, LINKS) is Reject.FRAGMENT
    # An atomic fragment (RFC 6946: fragment header, offset 0, M=0) is a whole datagram.
    atomic = _with(IPV6_FIRST_FRAGMENT, IP + 40 + 2, "0000")
    atomic = _with(atomic, IP + 4, "0010")  # payload_len 8 + 8: the frame's own length
    result = parse_frame(atomic, LINKS, original_bytes=len(atomic))
    assert result == (Direction.RECEIVED, PROTO_UDP, frame(V6_SRC + V6_DST + "1388 1770"), 74)


def test_unknown_ifindex_uses_no_link_header() -> None:
    # ifindex 3 unknown to the mapping: hhl 0, mtu 65536 -> 36 + 0 + 4.
    assert parse_frame(IPV4_UDP_RECEIVED, {}) == (
        Direction.RECEIVED,
        PROTO_UDP,
        IPV4_UDP_RECEIVED_KEY,
        40,
    )


def test_link_table_subclass_missing_is_consulted() -> None:
    class Links(dict[int, tuple[int, int]]):
        def __missing__(self, ifindex: int) -> tuple[int, int]:
            return (0, 1000)

    # tot_len 64000 on a link with hhl 0, mtu 1000: 64000 + 4 + 64 * 24 = 65540.
    assert parse_frame(IPV4_TCP_GSO, Links()) == (
        Direction.SENT,
        PROTO_TCP,
        IPV4_TCP_SENT_KEY,
        65540,
    )


def test_big_tcp_aggregate_takes_length_from_the_record() -> None:
    data = bytearray(IPV4_TCP_GSO)
    data[22:24] = b"\x00\x00"  # tot_len 0: an aggregate over 64 KiB
    # pcap len 20 + 100000: ip_len 100000, wire 100000 + 18 + 66 * 38 = 102526.
    assert parse_frame(bytes(data), LINKS, original_bytes=100020) == (
        Direction.SENT,
        PROTO_TCP,
        IPV4_TCP_SENT_KEY,
        102526,
    )
    assert parse_frame(bytes(data), LINKS) is Reject.BAD_IP_HEADER


def test_wire_bytes_helper() -> None:
    assert parse.wire_bytes(1500, 14, 1500) == 1518
    assert parse.wire_bytes(1501, 14, 1500) == 1501 + 18 + 38
    assert parse.wire_bytes(64000, 0, 1400) == 64000 + 4 + 45 * 24


def test_bit_field_helpers() -> None:
    assert parse.ihl_bytes(0x45) == 20
    assert parse.ihl_bytes(0x4F) == 60
    assert parse.ipv6_option_header_bytes(0) == 8
    assert parse.ipv6_option_header_bytes(1) == 16
    assert parse.auth_header_bytes(4) == 24


def _with(data: bytes, offset: int, replacement: str) -> bytes:
    patch = frame(replacement)
    return data[:offset] + patch + data[offset + len(patch) :]


IP = 20  # offset of the IP header in a frame
REJECTS: list[tuple[str, bytes, Reject]] = [
    ("short link header", IPV4_UDP_RECEIVED[:19], Reject.TRUNCATED_LINK),
    ("otherhost", _with(IPV4_UDP_RECEIVED, 10, "03"), Reject.OTHERHOST),
    ("unknown packet type", _with(IPV4_UDP_RECEIVED, 10, "07"), Reject.OTHERHOST),
    ("arp", _with(IPV4_UDP_RECEIVED, 0, "0806"), Reject.NOT_IP),
    ("short ipv4 header", IPV4_UDP_RECEIVED[: IP + 19], Reject.TRUNCATED_IP),
    ("short ipv6 header", IPV6_ICMP[: IP + 39], Reject.TRUNCATED_IP),
    ("ipv4 options cut", IPV4_OPTIONS_UDP[: IP + 22], Reject.TRUNCATED_IP),
    ("version 6 in ipv4 frame", _with(IPV4_UDP_RECEIVED, IP, "65"), Reject.BAD_IP_HEADER),
    ("ihl 4", _with(IPV4_UDP_RECEIVED, IP, "44"), Reject.BAD_IP_HEADER),
    ("tot_len below ihl", _with(IPV4_UDP_RECEIVED, IP + 2, "0010"), Reject.BAD_IP_HEADER),
    ("version 4 in ipv6 frame", _with(IPV6_ICMP, IP, "40"), Reject.BAD_IP_HEADER),
    (
        "hop-by-hop past captured bytes",
        _with(IPV6_TCP_EXTENSIONS, IP + 41, "14"),
        Reject.BAD_IPV6_EXTENSION,
    ),
    (
        "extension chain cut",
        IPV6_TCP_EXTENSIONS[: IP + 40 + 8 + 4],
        Reject.BAD_IPV6_EXTENSION,
    ),
    (
        "extension chain past payload_len",
        _with(IPV6_TCP_EXTENSIONS, IP + 4, "0010"),
        Reject.BAD_IPV6_EXTENSION,
    ),
    (
        "nine destination options headers",
        frame(
            SLL2_ETH3_IN_V6
            + "60000000 0050 3c 40"
            + V6_SRC
            + V6_DST
            + "3c00000000000000" * 8
            + "1100000000000000"
            + "0007 0009 0008 0000"
        ),
        Reject.BAD_IPV6_EXTENSION,
    ),
    (
        "udp ports cut",
        IPV4_UDP_RECEIVED[: IP + 20 + 3],
        Reject.TRUNCATED_TRANSPORT,
    ),
    (
        "tot_len leaves no room for ports",
        _with(IPV4_UDP_RECEIVED, IP + 2, "0016"),
        Reject.TRUNCATED_TRANSPORT,
    ),
    ("ipv4 later fragment", _with(IPV4_UDP_RECEIVED, IP + 6, "00b9"), Reject.FRAGMENT),
    ("ipv6 later fragment", IPV6_LATER_FRAGMENT, Reject.FRAGMENT),
    ("ipv4 first fragment", _with(IPV4_UDP_RECEIVED, IP + 6, "2000"), Reject.FRAGMENT),
    ("ipv6 first fragment", IPV6_FIRST_FRAGMENT, Reject.FRAGMENT),
    ("esp", _with(IPV4_UDP_RECEIVED, IP + 9, "32"), Reject.OTHER_PROTOCOL),
    ("sctp", _with(IPV4_UDP_RECEIVED, IP + 9, "84"), Reject.OTHER_PROTOCOL),
    ("ipv6 no next header", _with(IPV6_ICMP, IP + 6, "3b"), Reject.OTHER_PROTOCOL),
    (
        "loopback outgoing copy",
        _with(LOOPBACK_UDP, 10, "04"),
        Reject.LOOPBACK_OUTGOING,
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(data, reason) for _, data, reason in REJECTS],
    ids=[name for name, _, _ in REJECTS],
)
def test_reject(data: bytes, reason: Reject) -> None:
    assert parse_frame(data, LINKS) is reason


# A frame of 60 bytes on the wire (20 cooked + 40 IP) whose IP header claims more:
# the kernel drops it as truncated, so it is rejected, never credited (issue 13).
LENGTH_REJECTS: list[tuple[str, bytes, int, Reject]] = [
    (
        "ipv4 tot_len 65535 in a 60-byte frame",
        _with(IPV4_UDP_RECEIVED, IP + 2, "ffff"),
        60,
        Reject.IP_LENGTH_BEYOND_FRAME,
    ),
    (
        "ipv4 tot_len one byte more than the frame",
        IPV4_UDP_RECEIVED,
        20 + 0x24 - 1,
        Reject.IP_LENGTH_BEYOND_FRAME,
    ),
    (
        "ipv6 payload_len 65535 in a 68-byte frame",
        _with(IPV6_ICMP, IP + 4, "ffff"),
        len(IPV6_ICMP),
        Reject.IP_LENGTH_BEYOND_FRAME,
    ),
    (
        "ipv6 payload_len beyond the frame, extension headers",
        IPV6_TCP_EXTENSIONS,
        len(IPV6_TCP_EXTENSIONS) - 1,
        Reject.IP_LENGTH_BEYOND_FRAME,
    ),
]


@pytest.mark.parametrize(
    ("data", "original_bytes", "reason"),
    [(data, original, reason) for _, data, original, reason in LENGTH_REJECTS],
    ids=[name for name, _, _, _ in LENGTH_REJECTS],
)
def test_ip_length_beyond_the_frame_is_rejected(
    data: bytes, original_bytes: int, reason: Reject
) -> None:
    assert parse_frame(data, LINKS, original_bytes=original_bytes) is reason


def test_ip_length_within_the_frame_is_counted() -> None:
    # Exactly the frame (a GSO/GRO aggregate: IP length = pcap len - 20), and less
    # than the frame (Ethernet padding of a short packet): both counted, from the IP length.
    assert parse_frame(IPV4_TCP_GSO, LINKS, original_bytes=20 + 64000)[3] == 65614
    assert parse_frame(IPV4_UDP_RECEIVED, LINKS, original_bytes=20 + 46)[3] == 54
    # Captured short of the IP length (snap length) is normal: the original length counts.
    assert parse_frame(LOOPBACK_UDP, LINKS, original_bytes=20 + 128)[3] == 146


def test_every_reject_reason_is_exercised() -> None:
    exercised = {reason for _, _, reason in REJECTS}
    exercised |= {reason for _, _, _, reason in LENGTH_REJECTS}
    assert exercised == set(Reject)


def test_reject_values_are_explicit_and_index_the_counters() -> None:
    assert [int(reason) for reason in Reject] == list(range(1, len(Reject) + 1))
    assert REJECT_COUNTERS_LENGTH == len(Reject) + 1


def records_of(
    frames: list[bytes], originals: list[int] | None = None, timestamp_s: int = 1_700_000_000
) -> bytes:
    """pcap_sf_pkthdr + frame for each frame; len = originals[i], else the captured length."""
    out = bytearray()
    for number, data in enumerate(frames):
        original = len(data) if originals is None else originals[number]
        out += struct.pack("=IIII", timestamp_s, number, len(data), original)
        out += data
    return bytes(out)


def test_parse_batch_counts_packets_and_rejects() -> None:
    frames = [
        IPV4_TCP_SENT,
        IPV6_LATER_FRAGMENT,
        LOOPBACK_UDP,
        IPV4_UDP_RECEIVED[:10],
        IPV6_TCP_EXTENSIONS,
        IPV6_LATER_FRAGMENT,
    ]
    # The frames' lengths on the wire: IPV4_TCP_SENT was captured without its
    # options, LOOPBACK_UDP cut at the snap length; the others are whole.
    originals = [20 + 60, 108, 20 + 128, 10, len(IPV6_TCP_EXTENSIONS), 108]
    rejects = [0] * REJECT_COUNTERS_LENGTH
    packets = parse_batch(records_of(frames, originals), LINKS, rejects)
    assert packets == [
        (Direction.SENT, PROTO_TCP, IPV4_TCP_SENT_KEY, 78),
        (Direction.LOOPBACK, PROTO_UDP, LOOPBACK_UDP_KEY, 146),
        (Direction.RECEIVED, PROTO_TCP, IPV6_TCP_EXTENSIONS_KEY, 102),
    ]
    expected = [0] * REJECT_COUNTERS_LENGTH
    expected[Reject.FRAGMENT] = 2
    expected[Reject.TRUNCATED_LINK] = 1
    assert rejects == expected


def test_parse_batch_uses_record_length_for_big_aggregates() -> None:
    data = bytearray(IPV4_TCP_GSO)
    data[22:24] = b"\x00\x00"
    records = struct.pack("=IIII", 1, 0, len(data), 100020) + bytes(data)
    rejects = [0] * REJECT_COUNTERS_LENGTH
    assert parse_batch(records, LINKS, rejects) == [
        (Direction.SENT, PROTO_TCP, IPV4_TCP_SENT_KEY, 102526)
    ]


def test_parse_batch_truncated_records() -> None:
    whole = records_of([IPV4_UDP_RECEIVED, IPV4_TCP_SENT])
    rejects = [0] * REJECT_COUNTERS_LENGTH
    # Second record: header complete, frame cut to 30 bytes -> its IP header is short.
    cut = len(whole) - len(IPV4_TCP_SENT) + 30
    packets = parse_batch(whole[:cut], LINKS, rejects)
    assert packets == [(Direction.RECEIVED, PROTO_UDP, IPV4_UDP_RECEIVED_KEY, 54)]
    assert rejects[Reject.TRUNCATED_IP] == 1
    # Second record header itself cut short.
    rejects = [0] * REJECT_COUNTERS_LENGTH
    cut = len(whole) - len(IPV4_TCP_SENT) - 5
    assert len(parse_batch(whole[:cut], LINKS, rejects)) == 1
    assert rejects[Reject.TRUNCATED_LINK] == 1
    assert parse_batch(b"", LINKS, rejects) == []


def _valid_result(result: object) -> bool:
    if isinstance(result, Reject):
        return True
    if not isinstance(result, tuple) or len(result) != 4:
        return False
    direction, proto, key, wire = result
    return (
        direction in (0, 1, 2)
        and proto in (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6)
        and len(key) in ((8, 12, 32, 36) if proto in (PROTO_ICMP, PROTO_ICMPV6) else (12, 36))
        and wire > 0
    )


ALL_FRAMES = [data for _, data, _ in GOLDEN_PACKETS] + [data for _, data, _ in REJECTS]


def test_every_truncation_of_every_frame() -> None:
    for data in ALL_FRAMES:
        for length in range(len(data) + 1):
            assert _valid_result(parse_frame(data[:length], LINKS)), (data.hex(), length)


def test_fuzz_random_bytes_and_mutations() -> None:
    rng = random.Random(20240611)
    for _ in range(20000):
        data = rng.randbytes(rng.randrange(0, 160))
        assert _valid_result(parse_frame(data, LINKS)), data.hex()
    for _ in range(20000):
        base = bytearray(rng.choice(ALL_FRAMES))
        for _ in range(rng.randrange(1, 4)):
            if base:
                base[rng.randrange(len(base))] = rng.randrange(256)
        assert _valid_result(parse_frame(bytes(base), LINKS)), base.hex()
    rejects = [0] * REJECT_COUNTERS_LENGTH
    for _ in range(2000):
        packets = parse_batch(rng.randbytes(rng.randrange(0, 400)), LINKS, rejects)
        assert all(_valid_result(packet) for packet in packets)


def test_field_views_read_the_right_members() -> None:
    # The partial structs parse uses (built by wire.Layout.view) must pick the same
    # members as the whole C structs.
    sll2 = wire.SLL2_HEADER.struct.unpack_from(IPV4_TCP_SENT)
    assert parse._SLL2_FIELDS.unpack_from(IPV4_TCP_SENT) == (sll2[0], sll2[2], sll2[3], sll2[4])
    ip = wire.IPHDR.struct.unpack_from(IPV4_TCP_SENT, 20)
    assert parse._IPHDR_FIELDS.unpack_from(IPV4_TCP_SENT, 20) == (ip[0], ip[2], ip[4], ip[6])
    ip6 = wire.IPV6HDR.struct.unpack_from(IPV6_TCP_EXTENSIONS, 20)
    assert parse._IPV6HDR_FIELDS.unpack_from(IPV6_TCP_EXTENSIONS, 20) == (ip6[0], ip6[2], ip6[3])
    assert ip6[0] >> 4 == 6  # the version, in the high nibble of the first member
    fragment = wire.FRAG_HDR.struct.unpack_from(IPV6_LATER_FRAGMENT, 60)
    assert parse._FRAG_HDR_FIELDS.unpack_from(IPV6_LATER_FRAGMENT, 60) == (
        fragment[0],
        fragment[2],
    )
    record = struct.pack("=IIII", 1, 2, 3, 4)
    assert parse._PCAP_SF_PKTHDR_LENGTHS.unpack_from(record) == (3, 4)


# -- one rule for a frame's direction ---------------------------------------------------

# sll2_hatype values: every one the rule names, its neighbours, and some it does not.
HATYPES = (0, 1, 24, 512, 771, 772, 773, 776, 0xFFFE, 0xFFFF)


def _udp_frame(hatype: int, pkttype: int, sport: int, options: bool = False) -> bytes:
    """An IPv4 UDP frame 192.0.2.1:sport -> 192.0.2.2:53; with options it is not a
    fixed frame, so counting.count_records hands it to parse."""
    option_bytes = bytes(4) if options else b""
    header_bytes = 20 + len(option_bytes)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | header_bytes // 4,
        0,
        header_bytes + 8,
        1,
        0,
        64,
        PROTO_UDP,
        0,
        bytes((192, 0, 2, 1)),
        bytes((192, 0, 2, 2)),
    )
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, hatype, pkttype, 6, bytes(8))
    return sll2 + ip + option_bytes + struct.pack("!HHHH", sport, 53, 8, 0)


def _records(frames: list[bytes]) -> bytes:
    return b"".join(struct.pack("=IIII", 0, 0, len(f), len(f)) + f for f in frames)


def _expected(frames: list[tuple[int, int, int]]) -> tuple[dict[int, int], list[int]]:
    """parse.direction's answers: source port -> Direction, and the rejects."""
    directions: dict[int, int] = {}
    rejects = [0] * REJECT_COUNTERS_LENGTH
    for hatype, pkttype, sport in frames:
        counted_as = parse.direction(hatype, pkttype)
        if isinstance(counted_as, Reject):
            rejects[counted_as] += 1
        else:
            directions[sport] = counted_as
    return directions, rejects


def _counted(data: bytes) -> tuple[dict[int, int], list[int]]:
    """counting.count_records' answers on the same frames, as _expected gives them."""
    rejects = [0] * REJECT_COUNTERS_LENGTH
    sums = counting.count_records(data, LINKS, rejects)
    directions = {int.from_bytes(key[8:10], "big"): kind for kind, key in sums.order}
    return directions, rejects


@pytest.mark.parametrize("options", [False, True], ids=["fixed frame", "parsed frame"])
def test_inline_direction_rules_agree_with_direction(options: bool) -> None:
    # parse._parse and counting.count_records inline parse.direction; both must give
    # its answer for every packet type on every hatype above, and for every hatype
    # with the packet types the rule tells apart (host, multicast, otherhost, outgoing).
    combinations = [(h, p) for h in HATYPES for p in range(256)]
    combinations += [(h, p) for h in range(65536) for p in (0, 2, 3, 4) if h not in HATYPES]
    for first in range(0, len(combinations), 60000):
        chunk = [(h, p, n) for n, (h, p) in enumerate(combinations[first : first + 60000])]
        frames = [_udp_frame(h, p, 1024 + n, options) for h, p, n in chunk]
        expected = _expected([(h, p, 1024 + n) for h, p, n in chunk])
        assert _counted(_records(frames)) == expected
        for (hatype, pkttype, _), data in zip(chunk[::97], frames[::97], strict=True):
            result = parse_frame(data, LINKS)
            answer = parse.direction(hatype, pkttype)
            assert (result if isinstance(result, Reject) else result[0]) == answer
    # Every answer the rule has was reached.
    answers = {parse.direction(h, p) for h, p in combinations}
    assert answers == {
        Direction.RECEIVED,
        Direction.SENT,
        Direction.LOOPBACK,
        Reject.OTHERHOST,
        Reject.LOOPBACK_OUTGOING,
    }


def test_parse_frame_direction_for_every_packet_type() -> None:
    for hatype in HATYPES:
        for pkttype in range(256):
            result = parse_frame(_udp_frame(hatype, pkttype, 9, options=True), LINKS)
            answer = parse.direction(hatype, pkttype)
            assert (result if isinstance(result, Reject) else result[0]) == answer
