"""Unit tests of netatopd.wire: the layouts, and what capture and counting derive from them.

Ground truth: the C sizeof of each struct (libpcap sll.h and sf-pcap.h,
linux/ip.h, linux/ipv6.h, net/ipv6.h, linux/udp.h, linux/tcp.h on x86-64
Linux), frames laid out by hand in tests/unit/frames.py, and the fixed lanes'
kernel filters as written out by hand before they were derived.
"""

from __future__ import annotations

import struct

import pytest
from frames import A4, A6, B4, B6, ETH, HOST, ipv4, ipv6, sll2, tcp, udp

from netatopd import counting, wire
from netatopd.capture import lanes
from netatopd.capture.lanes import LaneKind
from netatopd.parse import PROTO_TCP, PROTO_UDP


def test_struct_sizes_match_c_sizeof() -> None:
    assert wire.SLL2_HEADER.size == 20
    assert wire.IPHDR.size == 20
    assert wire.IPV6HDR.size == 40
    assert wire.IPV6_OPT_HDR.size == 2
    assert wire.FRAG_HDR.size == 8
    assert wire.IP_AUTH_HDR.size == 12
    assert wire.UDPHDR.size == 8
    assert wire.TCPHDR.size == 20
    assert wire.PCAP_SF_PKTHDR.size == 16
    assert wire.PORTS.size == 4
    assert wire.ICMPHDR.size == 8


def test_member_offsets_are_the_c_offsets() -> None:
    # offsetof in C for the members the filters and the readers name.
    assert wire.SLL2_HEADER.offset("sll2_if_index") == 4
    assert wire.SLL2_HEADER.offset("sll2_hatype") == 8
    assert wire.SLL2_HEADER.offset("sll2_pkttype") == 10
    assert wire.IPHDR.offset("tot_len") == 2
    assert wire.IPHDR.offset("frag_off") == 6
    assert wire.IPHDR.offset("protocol") == 9
    assert wire.IPHDR.offset("saddr") == 12
    assert wire.IPV6HDR.offset("payload_len") == 4
    assert wire.IPV6HDR.offset("nexthdr") == 6
    assert wire.IPV6HDR.offset("saddr") == 8
    assert wire.PCAP_SF_PKTHDR.offset("caplen") == 8
    assert wire.ICMPHDR.offset("echo_id") == 4  # struct icmphdr un.echo.id, icmp6_identifier


def test_fields_skip_what_is_not_wanted() -> None:
    assert wire.IPHDR.fields("tot_len", "protocol") == "2xH5xB"
    assert wire.IPHDR.fields("tot_len", "protocol", whole=True) == "2xH5xB10x"
    assert wire.IPHDR.fields(("saddr", "daddr")) == "12x8s"
    assert wire.IPHDR.fields("protocol", "tot_len") == wire.IPHDR.fields("tot_len", "protocol")
    assert wire.IPHDR.fields(whole=True) == "20x"
    with pytest.raises(KeyError):
        wire.IPHDR.fields("nexthdr")
    with pytest.raises(ValueError):
        wire.IPHDR.fields(("daddr", "saddr"))


def test_layouts_add_up_to_a_frame() -> None:
    frame = wire.SLL2_HEADER + wire.IPHDR + wire.PORTS
    assert frame.size == 20 + 20 + 4
    assert frame.offset("tot_len") == 20 + 2
    assert frame.offset("source") == 40
    # A run across headers: the key is saddr, daddr and the ports, in wire order.
    data = sll2(0x0800, ETH, 1, HOST) + ipv4(PROTO_UDP, B4, A4, udp(53, 5000))
    (key,) = frame.view(("saddr", "dest")).unpack_from(data)
    assert key == B4 + A4 + struct.pack("!HH", 53, 5000)
    with pytest.raises(ValueError):
        wire.IPHDR + wire.PCAP_SF_PKTHDR  # network and native order do not mix
    with pytest.raises(ValueError):
        wire.IPHDR + wire.IPV6HDR  # saddr twice


def test_ports_are_the_start_of_both_transport_headers() -> None:
    assert wire.PORTS.members == wire.TCPHDR.members[:2] == wire.UDPHDR.members[:2]


def test_fixed_frames_are_cooked_header_ip_header_and_ports() -> None:
    assert wire.IPV4_FIXED.frame_bytes == 20 + 20 + 4 == 44
    assert wire.IPV6_FIXED.frame_bytes == 20 + 40 + 4 == 64
    assert wire.IPV4_FIXED.record_bytes == 16 + 44
    assert wire.IPV6_FIXED.record_bytes == 16 + 64
    assert wire.FIXED_FRAMES == {4: wire.IPV4_FIXED, 6: wire.IPV6_FIXED}
    # counting.count_records compares IPv4's whole first byte (no mask to apply).
    assert wire.IPV4_FIXED.first_byte_mask == 0xFF


@pytest.mark.parametrize("kind", [LaneKind.IPV4, LaneKind.IPV6])
def test_lane_snap_length_is_the_fixed_frame(kind: LaneKind) -> None:
    # The lane captures each frame to frame_bytes; counting.count_fixed reads records of
    # exactly the record header + that frame.
    frame = wire.FIXED_FRAMES[kind.value]
    assert kind.frame_bytes == frame.frame_bytes == frame.layout.size
    layout, length_extra = counting.FIXED_RECORDS[kind.value]
    assert layout.size == wire.PCAP_SF_PKTHDR.size + kind.frame_bytes == frame.record_bytes
    assert length_extra == frame.length_extra


def test_lane_filters_are_derived_from_the_fixed_frames() -> None:
    # The filters as they were written by hand: offsets 0, 6, 9, 2 of iphdr and
    # 0, 6, 4 of ipv6hdr; 24 = iphdr + ports, 4 = the ports.
    assert lanes.IPV4_FIXED_FILTER == (
        "ip and ip[0] == 0x45 and ip[6:2] & 0x3fff == 0"
        " and (ip[9] == 6 or ip[9] == 17) and ip[2:2] >= 24"
    )
    assert lanes.IPV6_FIXED_FILTER == (
        "ip6 and ip6[0] & 0xf0 == 0x60 and (ip6[6] == 6 or ip6[6] == 17) and ip6[4:2] >= 4"
    )
    # A frame declared differently gets a different filter: nothing is restated.
    moved = wire.IPV4_FIXED._replace(protocols=(PROTO_UDP,), length_min=28)
    assert lanes.fixed_filter(moved) == (
        "ip and ip[0] == 0x45 and ip[6:2] & 0x3fff == 0 and (ip[9] == 17) and ip[2:2] >= 28"
    )


def test_readers_pick_the_members_the_layouts_name() -> None:
    # count_records' one-unpack readers and count_fixed's record format agree with the
    # whole structs on a hand-made frame of each family.
    v4 = sll2(0x0800, ETH, 1, HOST) + ipv4(PROTO_TCP, B4, A4, tcp(443, 50000))
    v6 = sll2(0x86DD, ETH, 1, HOST) + ipv6(PROTO_UDP, B6, A6, udp(53, 5000))
    sll2_v4 = wire.SLL2_HEADER.struct.unpack_from(v4)
    ip = wire.IPHDR.struct.unpack_from(v4, 20)
    key4 = B4 + A4 + struct.pack("!HH", 443, 50000)
    assert counting._IPV4_FRAME.unpack_from(v4) == (
        *(sll2_v4[0], sll2_v4[2], sll2_v4[3], sll2_v4[4]),
        *(ip[0], ip[2], ip[4], ip[6]),
        key4,
    )
    sll2_v6 = wire.SLL2_HEADER.struct.unpack_from(v6)
    ip6 = wire.IPV6HDR.struct.unpack_from(v6, 20)
    key6 = B6 + A6 + struct.pack("!HH", 53, 5000)
    assert counting._IPV6_FRAME.unpack_from(v6) == (
        *(sll2_v6[0], sll2_v6[2], sll2_v6[3], sll2_v6[4]),
        *(ip6[0], ip6[2], ip6[3]),
        key6,
    )
    # The record header's len (the frame on the wire), read in the frame's byte order.
    header = wire.PCAP_SF_PKTHDR.struct.pack(1, 2, 44, len(v4))
    original = int.from_bytes(header[12:16], "big")
    assert counting._original_bytes(original) == len(v4)
    record = header + v4[:44]
    assert counting.FIXED_RECORDS[4][0].unpack(record) == (
        original,
        ETH,
        HOST,
        ip[2],
        PROTO_TCP,
        key4,
    )
    header = wire.PCAP_SF_PKTHDR.struct.pack(1, 2, 64, len(v6))
    record = header + v6[:64]
    assert counting.FIXED_RECORDS[6][0].unpack(record) == (
        int.from_bytes(header[12:16], "big"),
        ETH,
        HOST,
        ip6[2],
        PROTO_UDP,
        key6,
    )


def test_constants_shared_by_several_modules() -> None:
    assert wire.IPV4_MAPPED_PREFIX == bytes(10) + b"\xff\xff"
    assert (wire.ETH_P_IP, wire.ETH_P_IPV6, wire.ARPHRD_LOOPBACK) == (0x0800, 0x86DD, 772)
    assert wire.PacketType.OUTGOING == 4 and wire.CRC_BYTES == 4
