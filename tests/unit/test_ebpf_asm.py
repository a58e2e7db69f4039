"""The eBPF assembler (golden bytes for every instruction form), the tracepoint
format parser, the program builders and the decoding of drained records.

Ground truth for the bytes: the instruction encoding of linux/bpf.h and
Documentation/bpf/standardization/instruction-set.rst (code, dst|src<<4,
little-endian s16 offset, s32 immediate).
"""

from __future__ import annotations

import struct

import pytest

from netatopd.ebpf import asm
from netatopd.ebpf.asm import AluOp, Helper, JmpOp, Label, Reg, Size
from netatopd.ebpf.btf import SockOffsets
from netatopd.ebpf.helper import FlowOwner, decode_flow
from netatopd.ebpf.programs import (
    COUNTERS,
    FLOW_KEY,
    OWNER,
    THREAD_COUNTS,
    Counter,
    MapFds,
    OwnerKind,
    TracepointError,
    length_program,
    parse_format,
    state_program,
)


def one(item: asm.Item) -> str:
    return asm.assemble([item]).hex(" ")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # ALU64 / ALU, immediate and register sources
        (asm.mov64_imm(Reg.R1, 5), "b7 01 00 00 05 00 00 00"),
        (asm.mov64_reg(Reg.R6, Reg.R1), "bf 16 00 00 00 00 00 00"),
        (asm.alu64_imm(AluOp.ADD, Reg.R2, -40), "07 02 00 00 d8 ff ff ff"),
        (asm.alu64_reg(AluOp.ADD, Reg.R1, Reg.R2), "0f 21 00 00 00 00 00 00"),
        (asm.alu64_imm(AluOp.AND, Reg.R1, 2), "57 01 00 00 02 00 00 00"),
        (asm.alu32_imm(AluOp.AND, Reg.R1, 2), "54 01 00 00 02 00 00 00"),
        (asm.alu32_reg(AluOp.OR, Reg.R3, Reg.R4), "4c 43 00 00 00 00 00 00"),
        (asm.to_be(Reg.R1, 16), "dc 01 00 00 10 00 00 00"),
        # LDX of each size
        (asm.ldx(Size.W, Reg.R7, Reg.R6, 20), "61 67 14 00 00 00 00 00"),
        (asm.ldx(Size.H, Reg.R1, Reg.R6, 16), "69 61 10 00 00 00 00 00"),
        (asm.ldx(Size.B, Reg.R1, Reg.R6, 3), "71 61 03 00 00 00 00 00"),
        (asm.ldx(Size.DW, Reg.R8, Reg.R6, 8), "79 68 08 00 00 00 00 00"),
        # STX of each size, negative offsets from the frame pointer
        (asm.stx(Size.DW, Reg.FP, -8, Reg.R1), "7b 1a f8 ff 00 00 00 00"),
        (asm.stx(Size.W, Reg.FP, -104, Reg.R6), "63 6a 98 ff 00 00 00 00"),
        (asm.stx(Size.H, Reg.FP, -2, Reg.R1), "6b 1a fe ff 00 00 00 00"),
        (asm.stx(Size.B, Reg.FP, -4, Reg.R1), "73 1a fc ff 00 00 00 00"),
        # ST immediate
        (asm.st_imm(Size.W, Reg.FP, -104, 0), "62 0a 98 ff 00 00 00 00"),
        (asm.st_imm(Size.DW, Reg.FP, -96, 1), "7a 0a a0 ff 01 00 00 00"),
        (asm.st_imm(Size.H, Reg.FP, -2, 6), "6a 0a fe ff 06 00 00 00"),
        (asm.st_imm(Size.B, Reg.FP, -3, 2), "72 0a fd ff 02 00 00 00"),
        # atomic add
        (asm.atomic_add(Size.DW, Reg.R0, 8, Reg.R7), "db 70 08 00 00 00 00 00"),
        (asm.atomic_add(Size.W, Reg.R0, 0, Reg.R1), "c3 10 00 00 00 00 00 00"),
        # LD_IMM64: two slots; the map fd form has src = BPF_PSEUDO_MAP_FD
        (
            asm.ld_imm64(Reg.R1, 0x1122334455667788),
            "18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11",
        ),
        (asm.ld_map_fd(Reg.R1, 7), "18 11 00 00 07 00 00 00 00 00 00 00 00 00 00 00"),
        (asm.ld_imm64(Reg.R2, -1), "18 02 00 00 ff ff ff ff 00 00 00 00 ff ff ff ff"),
        # jumps with numeric offsets, call, exit
        (asm.ja(3), "05 00 03 00 00 00 00 00"),
        (asm.jmp_imm(JmpOp.JEQ, Reg.R0, 0, 2), "15 00 02 00 00 00 00 00"),
        (asm.jmp_imm(JmpOp.JNE, Reg.R1, 2, -1), "55 01 ff ff 02 00 00 00"),
        (asm.jmp_imm(JmpOp.JSET, Reg.R1, 2, 1), "45 01 01 00 02 00 00 00"),
        (asm.jmp_reg(JmpOp.JEQ, Reg.R1, Reg.R2, 4), "1d 21 04 00 00 00 00 00"),
        (asm.jmp32_imm(JmpOp.JSLT, Reg.R7, 0, 5), "c6 07 05 00 00 00 00 00"),
        (asm.call(Helper.PROBE_READ_KERNEL), "85 00 00 00 71 00 00 00"),
        (asm.call(Helper.MAP_UPDATE_ELEM), "85 00 00 00 02 00 00 00"),
        (asm.exit_insn(), "95 00 00 00 00 00 00 00"),
    ],
)
def test_golden_bytes(item: asm.Item, expected: str) -> None:
    assert one(item) == expected


def test_forward_label_skips_the_instructions_between() -> None:
    code = asm.assemble(
        [
            asm.jmp_imm(JmpOp.JEQ, Reg.R1, 0, "end"),
            asm.mov64_imm(Reg.R0, 1),
            asm.ld_imm64(Reg.R2, 5),  # two slots
            Label("end"),
            asm.exit_insn(),
        ]
    )
    assert len(code) == 5 * 8
    assert struct.unpack_from("<h", code, 2)[0] == 3  # mov + 2 slots of ld_imm64


def test_backward_label() -> None:
    code = asm.assemble([Label("top"), asm.mov64_imm(Reg.R0, 0), asm.ja("top")])
    assert struct.unpack_from("<h", code, 8 + 2)[0] == -2


def test_jump_to_next_instruction_has_offset_zero() -> None:
    code = asm.assemble([asm.ja("next"), Label("next"), asm.exit_insn()])
    assert code[:8].hex(" ") == "05 00 00 00 00 00 00 00"


def test_undefined_and_duplicate_labels_are_refused() -> None:
    with pytest.raises(asm.AssemblerError, match="undefined"):
        asm.assemble([asm.ja("nowhere")])
    with pytest.raises(asm.AssemblerError, match="twice"):
        asm.assemble([Label("a"), Label("a"), asm.exit_insn()])


def test_bad_operands_are_refused() -> None:
    with pytest.raises(asm.AssemblerError):
        asm.to_be(Reg.R1, 8)
    with pytest.raises(asm.AssemblerError):
        asm.atomic_add(Size.H, Reg.R0, 0, Reg.R1)


def test_instruction_count_counts_ld_imm64_twice() -> None:
    assert asm.instruction_count([asm.ld_map_fd(Reg.R1, 3), Label("x"), asm.exit_insn()]) == 3


# --- tracepoint formats --------------------------------------------------------

SEND_FORMAT = """name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;

print fmt: "sk address = %p", REC->sk
"""

STATE_FORMAT = """name: inet_sock_set_state
ID: 2287
format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
"""

SOCK = SockOffsets(16, 14, 12, 4, 0, 72, 56, 532, False)
FDS = MapFds(flows=3, threads=4, connect=5, counters=6)


def test_parse_format_fields_and_id() -> None:
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    assert fmt.id == 2284
    assert fmt.fields["sk"] == (8, 8, False)
    assert fmt.fields["ret"] == (20, 4, True)
    assert fmt.fields["common_pid"] == (4, 4, True)
    state = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    assert state.fields["saddr_v6"] == (40, 16, False)  # array brackets stripped from the name


def test_parse_format_without_id_is_refused() -> None:
    with pytest.raises(TracepointError):
        parse_format("sock", "x", "format:\n")


def test_program_refuses_a_missing_or_resized_field() -> None:
    fmt = parse_format(
        "sock",
        "sock_send_length",
        SEND_FORMAT.replace(
            "size:4;\tsigned:1;\n\tfield:int flags", "size:8;\tsigned:1;\n\tfield:int flags"
        ),
    )
    with pytest.raises(TracepointError, match="ret is 8 bytes"):
        length_program(OwnerKind.SEND, fmt, SOCK, FDS)
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT.replace("flags", "other"))
    with pytest.raises(TracepointError, match="no field flags"):
        length_program(OwnerKind.SEND, fmt, SOCK, FDS)


def _instructions(code: bytes) -> list[tuple[int, int, int, int]]:
    return [asm.BPF_INSN.unpack_from(code, i) for i in range(0, len(code), 8)]


def test_length_program_uses_the_parsed_offsets_and_map_fds() -> None:
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    code = asm.assemble(length_program(OwnerKind.SEND, fmt, SOCK, FDS))
    insns = _instructions(code)
    # ret is loaded from record offset 20 into R7, sk from offset 8 into R8
    assert (0x61, 0x67, 20, 0) in insns
    assert (0x79, 0x68, 8, 0) in insns
    # map fds appear as BPF_PSEUDO_MAP_FD loads
    fds = {imm for code_, regs, _off, imm in insns if code_ == 0x18 and regs >> 4 == 1}
    assert fds == {3, 4, 6}
    # the kind stored in the owner record is SEND (st_imm W at value+32)
    assert (0x62, 0x0A, -80 + 32, OwnerKind.SEND) in insns
    # it ends with r0 = 0; exit
    assert insns[-2:] == [(0xB7, 0x00, 0, 0), (0x95, 0, 0, 0)]


def test_state_program_assembles_with_every_label_resolved() -> None:
    fmt = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    items = state_program(fmt, FDS)
    code = asm.assemble(items)
    assert len(code) == asm.instruction_count(items) * 8
    fds = {
        imm for code_, regs, _off, imm in _instructions(code) if code_ == 0x18 and regs >> 4 == 1
    }
    assert fds == {3, 5, 6}


# --- map layouts and decoding --------------------------------------------------


def test_layout_sizes() -> None:
    assert FLOW_KEY.size == 40
    assert OWNER.size == 40
    assert THREAD_COUNTS.size == 16
    assert COUNTERS.size == 8 * len(Counter)


def test_decode_ipv4_flow() -> None:
    key = FLOW_KEY.pack(
        bytes([192, 0, 2, 1]) + bytes(12), bytes([198, 51, 100, 7]) + bytes(12), 40000, 80, 2, 0, 6
    )
    value = OWNER.pack(123456789, 4242, 4200, b"curl\0" + bytes(11), OwnerKind.SEND, 0)
    assert decode_flow(key, value) == FlowOwner(
        6,
        b"\xc0\x00\x02\x01",
        40000,
        b"\xc6\x33\x64\x07",
        80,
        4200,
        4242,
        "curl",
        123456789,
        OwnerKind.SEND,
        False,
    )


def test_decode_ipv4_mapped_ipv6_becomes_ipv4() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 9])
    key = FLOW_KEY.pack(
        mapped, bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 1]), 5000, 443, 10, 1, 6
    )
    value = OWNER.pack(1, 11, 10, b"a" * 16, OwnerKind.CONNECT, 1)
    owner = decode_flow(key, value)
    assert (owner.local_addr, owner.remote_addr) == (
        bytes([192, 0, 2, 9]),
        bytes([198, 51, 100, 1]),
    )
    assert owner.comm == "a" * 16 and owner.closed is True and owner.kind is OwnerKind.CONNECT


def test_decode_ipv6_and_unconnected_udp() -> None:
    local = bytes.fromhex("20010db8000000000000000000000001")
    key = FLOW_KEY.pack(local, bytes(16), 53, 0, 10, 0, 17)
    value = OWNER.pack(5, 7, 7, b"dns\0" + bytes(12), OwnerKind.RECV, 0)
    owner = decode_flow(key, value)
    assert owner.local_addr == local
    assert owner.remote_addr == b"" and owner.remote_port == 0
    assert (owner.protocol, owner.tgid, owner.tid) == (17, 7, 7)
