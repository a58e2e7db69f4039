"""The calibration search over struct images, and the calibration program's shape.

Ground truth: synthetic ``struct sock`` images built here from a layout we
choose (deliberately not Linux's, so nothing passes by matching the real
kernel by accident), filled with the values each probe socket is declared to
hold; the search must return exactly that layout, and must refuse when a
field is missing or fits more than one offset.  For the program: the
instruction encoding of linux/bpf.h (LD_IMM64 carries the low half of the
immediate in the first slot, the high half in the second).
"""

from __future__ import annotations

import random
import struct

import pytest

from netatopd.ebpf import asm
from netatopd.ebpf.btf import NetOffsets, SockOffsets
from netatopd.ebpf.calibrate import (
    CALIBRATION_RECORD,
    RECORD_SOCK_IMAGE,
    RECORD_TARGET_IMAGE,
    SOCK_COMMON_SEARCH_BYTES,
    SOCK_IMAGE_BYTES,
    TARGET_IMAGE_BYTES,
    CalibrationError,
    Probe,
    calibration_program,
    find_field,
    find_net_offsets,
    find_sock_offsets,
    net_pointer_candidates,
)
from netatopd.ebpf.programs import parse_format

AF_INET, AF_INET6, TCP, UDP = 2, 10, 6, 17

# The layout of the synthetic struct sock (not Linux's).
LAYOUT = SockOffsets(
    skc_family=22,
    skc_num=20,
    skc_dport=18,
    skc_rcv_saddr=8,
    skc_daddr=12,
    skc_v6_rcv_saddr=96,
    skc_v6_daddr=112,
    sk_protocol=600,
    sk_protocol_is_bitfield=False,
)
NET_POINTER_AT = 64
PROTO_POINTER_AT = 72  # per protocol and family: differs between probes
SELF_POINTER_AT = 80  # per socket (a list head pointing at itself)
NET_ADDRESS = 0xFFFF888012345000
DECOY_COPY_AT = 800  # like inet_sock's inet_saddr / inet_sport: after struct sock

V4 = [bytes([127, 12, 34, 56]), bytes([127, 65, 43, 21]), bytes([127, 23, 45, 67])]
MAPPED = bytes(10) + b"\xff\xff"
V6 = [MAPPED + V4[0], MAPPED + V4[1], bytes(15) + b"\x01", MAPPED + bytes([127, 1, 2, 3])]


def image_of(
    family: int,
    protocol: int,
    local: bytes,
    lport: int,
    remote: bytes,
    rport: int,
    index: int,
    layout: SockOffsets = LAYOUT,
    pointers: tuple[int, int, int] = (NET_POINTER_AT, PROTO_POINTER_AT, SELF_POINTER_AT),
) -> bytes:
    """A struct sock image holding the values at ``layout``; other bytes random but fixed."""
    rng = random.Random(index)
    image = bytearray(rng.randbytes(SOCK_IMAGE_BYTES))
    struct.pack_into("=H", image, layout.skc_family, family)
    struct.pack_into("=H", image, layout.skc_num, lport)
    struct.pack_into("!H", image, layout.skc_dport, rport)
    if family == AF_INET:
        image[layout.skc_rcv_saddr : layout.skc_rcv_saddr + 4] = local
        image[layout.skc_daddr : layout.skc_daddr + 4] = remote
    else:
        image[layout.skc_v6_rcv_saddr : layout.skc_v6_rcv_saddr + 16] = local
        image[layout.skc_v6_daddr : layout.skc_v6_daddr + 16] = remote
    struct.pack_into("=H", image, layout.sk_protocol, protocol)
    net_at, proto_at, self_at = pointers
    struct.pack_into("=Q", image, net_at, NET_ADDRESS)
    struct.pack_into("=Q", image, proto_at, 0xFFFFFFFF82000000 + family * 64 + protocol)
    struct.pack_into("=Q", image, self_at, 0xFFFF888100000000 + index * 0x1000)
    # the copies inet_sock keeps after struct sock: same local address and port
    image[DECOY_COPY_AT : DECOY_COPY_AT + len(local)] = local
    struct.pack_into("=H", image, DECOY_COPY_AT + 16, lport)
    return bytes(image)


def probe(
    family: int, protocol: int, local: bytes, lport: int, remote: bytes, rport: int, index: int
) -> Probe:
    image = image_of(family, protocol, local, lport, remote, rport, index)
    return Probe(family, protocol, local, lport, remote, rport, image)


def probe_set() -> list[Probe]:
    """Twelve probes like calibrate's: both ends of each pair, every kind twice."""
    return [
        probe(AF_INET, TCP, V4[1], 41001, V4[0], 5001, 0),
        probe(AF_INET, TCP, V4[0], 5001, V4[1], 41001, 1),
        probe(AF_INET, UDP, V4[2], 42002, V4[0], 43003, 2),
        probe(AF_INET, UDP, V4[0], 43003, V4[2], 42002, 3),
        probe(AF_INET6, TCP, V6[1], 44004, V6[0], 5002, 4),
        probe(AF_INET6, TCP, V6[0], 5002, V6[1], 44004, 5),
        probe(AF_INET6, TCP, V6[2], 45005, V6[2], 5003, 6),
        probe(AF_INET6, TCP, V6[2], 5003, V6[2], 45005, 7),
        probe(AF_INET6, UDP, V6[3], 46006, V6[0], 47007, 8),
        probe(AF_INET6, UDP, V6[0], 47007, V6[3], 46006, 9),
        probe(AF_INET6, UDP, V6[2], 48008, V6[2], 49009, 10),
        probe(AF_INET6, UDP, V6[2], 49009, V6[2], 48008, 11),
    ]


def test_the_synthetic_layout_is_found_exactly() -> None:
    assert find_sock_offsets(probe_set()) == LAYOUT


def test_a_second_layout_is_found_too() -> None:
    # Linux's own sock_common layout on x86-64, sk_protocol at 532, skc_net at 48.
    layout = SockOffsets(16, 14, 12, 4, 0, 72, 56, 532, False)
    probes = [
        p._replace(
            image=image_of(
                p.family,
                p.protocol,
                p.local_addr,
                p.local_port,
                p.remote_addr,
                p.remote_port,
                100 + i,
                layout,
                (48, 40, 24),
            )
        )
        for i, p in enumerate(probe_set())
    ]
    assert find_sock_offsets(probes) == layout
    assert net_pointer_candidates(probes) == {48: NET_ADDRESS}


def test_copies_after_sock_common_are_not_taken_for_its_members() -> None:
    # Without the sock_common bound the local address also fits the decoy copy.
    probes = [p for p in probe_set() if p.family == AF_INET]
    with pytest.raises(CalibrationError, match=r"ambiguous, offsets \[8, 800\]"):
        find_field("skc_rcv_saddr", probes, lambda p: p.local_addr, 4)
    bounded = find_field(
        "skc_rcv_saddr", probes, lambda p: p.local_addr, 4, SOCK_COMMON_SEARCH_BYTES
    )
    assert bounded == LAYOUT.skc_rcv_saddr


def test_a_coincidence_in_one_probe_is_removed_by_the_others() -> None:
    probes = probe_set()
    first = bytearray(probes[0].image)
    struct.pack_into("=H", first, 30, probes[0].local_port)  # the port again, by chance
    probes[0] = probes[0]._replace(image=bytes(first))
    with pytest.raises(CalibrationError, match=r"ambiguous, offsets \[20, 30\]"):
        find_field("skc_num", probes[:1], lambda p: struct.pack("=H", p.local_port), 2, 256)
    assert find_sock_offsets(probes).skc_num == LAYOUT.skc_num


def test_a_value_at_the_same_second_place_in_every_probe_is_ambiguous() -> None:
    probes = []
    for p in probe_set():
        image = bytearray(p.image)
        struct.pack_into("!H", image, 40, p.remote_port)  # a consistent second copy
        probes.append(p._replace(image=bytes(image)))
    with pytest.raises(CalibrationError, match=r"skc_dport: ambiguous, offsets \[18, 40\]"):
        find_sock_offsets(probes)


def test_a_field_missing_from_one_probe_fails() -> None:
    probes = probe_set()
    broken = bytearray(probes[5].image)
    struct.pack_into("=H", broken, LAYOUT.skc_family, 0)
    probes[5] = probes[5]._replace(image=bytes(broken))
    with pytest.raises(CalibrationError, match="skc_family: no offset holds the expected value"):
        find_sock_offsets(probes)


def test_a_misaligned_field_is_not_found() -> None:
    # an in6_addr starting at an odd offset is not plausible: not found at all
    probes = []
    for index, p in enumerate(probe_set()):
        image = bytearray(image_of(p.family, p.protocol, b"", 0, b"", 0, 200 + index))
        struct.pack_into("=H", image, LAYOUT.skc_family, p.family)
        if p.family == AF_INET6:
            image[97:113] = p.local_addr
        probes.append(p._replace(image=bytes(image)))
    with pytest.raises(CalibrationError, match="skc_v6_rcv_saddr: no offset"):
        find_field(
            "skc_v6_rcv_saddr", probes, lambda p: p.local_addr if p.family == 10 else None, 4
        )


def test_probes_must_cover_both_families_and_protocols() -> None:
    with pytest.raises(CalibrationError, match="IPv4 and IPv6, TCP and UDP"):
        find_sock_offsets([p for p in probe_set() if p.protocol == TCP])
    with pytest.raises(CalibrationError, match="no probe socket tells"):
        find_field("x", probe_set(), lambda p: None, 2)


def test_the_shared_kernel_pointer_is_the_only_net_candidate() -> None:
    assert net_pointer_candidates(probe_set()) == {NET_POINTER_AT: NET_ADDRESS}


def test_no_shared_pointer_fails() -> None:
    probes = []
    for index, p in enumerate(probe_set()):
        image = bytearray(p.image)
        struct.pack_into("=Q", image, NET_POINTER_AT, NET_ADDRESS + index * 8)
        probes.append(p._replace(image=bytes(image)))
    with pytest.raises(CalibrationError, match="no kernel pointer is shared"):
        net_pointer_candidates(probes)


def test_a_shared_user_space_looking_value_is_no_candidate() -> None:
    probes = []
    for p in probe_set():
        image = bytearray(p.image)
        struct.pack_into("=Q", image, 88, 0x00007F0012345678)  # shared, but not a kernel address
        probes.append(p._replace(image=bytes(image)))
    assert net_pointer_candidates(probes) == {NET_POINTER_AT: NET_ADDRESS}


INODE = 4026532871


def net_image(inum_at: int | None) -> bytes:
    image = bytearray(random.Random(inum_at).randbytes(TARGET_IMAGE_BYTES))
    if inum_at is not None:
        struct.pack_into("=I", image, inum_at, INODE)
    return bytes(image)


def test_the_namespace_inode_gives_both_net_offsets() -> None:
    targets = {64: net_image(176), 136: None, 200: net_image(None)}
    assert find_net_offsets(targets, INODE) == NetOffsets(sk_net=64, net_ns_inum=176)


def test_the_inode_behind_two_pointers_is_ambiguous() -> None:
    with pytest.raises(CalibrationError, match=r"ambiguous, \(sock, net\) offsets"):
        find_net_offsets({64: net_image(176), 72: net_image(40)}, INODE)
    with pytest.raises(CalibrationError, match="ambiguous"):
        image = bytearray(net_image(176))
        struct.pack_into("=I", image, 300, INODE)
        find_net_offsets({64: bytes(image)}, INODE)


def test_no_inode_fails() -> None:
    with pytest.raises(CalibrationError, match="none of the 2 shared pointers"):
        find_net_offsets({64: net_image(None), 136: None}, INODE)


SEND_FORMAT = """name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
"""


def test_the_program_matches_our_thread_and_copies_into_the_record() -> None:
    marker = (1234 << 32) | 5678
    code = asm.assemble(
        calibration_program(parse_format("sock", "sock_send_length", SEND_FORMAT), 7, marker)
    )
    insns = [asm.BPF_INSN.unpack_from(code, i) for i in range(0, len(code), 8)]
    # r6 = r1; call get_current_pid_tgid; r1 = marker (two slots); if r0 != r1 goto out
    assert insns[0] == (0xBF, 0x16, 0, 0)
    assert insns[1] == (0x85, 0, 0, asm.Helper.GET_CURRENT_PID_TGID)
    assert insns[2] == (0x18, 0x01, 0, 5678) and insns[3] == (0, 0, 0, 1234)
    assert insns[4][:2] == (0x5D, 0x10)  # JNE r0, r1 (register source)
    # r8 = *(u64 *)(r6 + 8): the sk field of the format
    assert insns[5] == (0x79, 0x68, 8, 0)
    # the two copies read into the record at its image offsets, with constant sizes
    sizes = [imm for code_, regs, _off, imm in insns if code_ == 0xB7 and regs == 0x02]
    assert sizes == [SOCK_IMAGE_BYTES, TARGET_IMAGE_BYTES]
    adds = [imm for code_, regs, _off, imm in insns if code_ == 0x07 and regs == 0x01]
    assert adds == [RECORD_SOCK_IMAGE, RECORD_TARGET_IMAGE]
    assert insns[-1] == (0x95, 0, 0, 0)
    assert CALIBRATION_RECORD.size == 32 + SOCK_IMAGE_BYTES + TARGET_IMAGE_BYTES


def test_a_format_without_sk_is_refused() -> None:
    text = SEND_FORMAT.replace("void * sk;", "void * skaddr;")
    with pytest.raises(CalibrationError, match="no 8-byte field sk"):
        calibration_program(parse_format("sock", "sock_send_length", text), 7, 1)
