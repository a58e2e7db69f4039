"""A small assembler for the eBPF instructions the ownership programs use.

Part of the optional in-kernel ownership helper.  Pure: no I/O, no state.  Each
function returns one instruction (``Insn``) or, for the 16-byte LD_IMM64, a
pair; ``assemble`` turns a list of instructions and ``Label`` markers into
the bytes BPF_PROG_LOAD takes, resolving jump targets given as label names.
Callers: ``programs.py`` and the unit tests.

One instruction is 8 bytes, ``struct bpf_insn`` (linux/bpf.h):
    __u8  code;      opcode: class | size/op | mode/source
    __u8  dst_reg:4; low nibble
    __u8  src_reg:4; high nibble
    __s16 off;       jump offset in instructions after the next one, or memory offset
    __s32 imm;       immediate
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import NamedTuple

log = logging.getLogger(__name__)

# struct bpf_insn, 8 bytes: __u8 code; __u8 dst_reg:4, src_reg:4; __s16 off; __s32 imm
BPF_INSN = struct.Struct("<BBhi")
INSN_BYTES = 8


class Reg(IntEnum):
    """eBPF registers: R0 return value, R1-R5 arguments, R6-R9 callee-saved, R10 frame pointer."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    FP = 10


class InsnClass(IntEnum):
    """The three low bits of the opcode."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(IntEnum):
    """Access size bits of a load or store (value = bytes accessed is ``SIZE_BYTES``)."""

    W = 0x00  # 4 bytes
    H = 0x08  # 2 bytes
    B = 0x10  # 1 byte
    DW = 0x18  # 8 bytes


SIZE_BYTES = {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}


class Mode(IntEnum):
    """Addressing mode bits of a load or store."""

    IMM = 0x00
    MEM = 0x60
    ATOMIC = 0xC0


class Source(IntEnum):
    """Operand source bit of ALU and JMP: immediate (K) or register (X)."""

    K = 0x00
    X = 0x08


class AluOp(IntEnum):
    """ALU operation bits."""

    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JmpOp(IntEnum):
    """Jump operation bits."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0


class Helper(IntEnum):
    """BPF helper function numbers (enum bpf_func_id, linux/bpf.h)."""

    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    KTIME_GET_NS = 5
    GET_CURRENT_PID_TGID = 14
    GET_CURRENT_UID_GID = 15
    GET_CURRENT_COMM = 16
    GET_CURRENT_TASK = 35
    SK_STORAGE_GET = 107
    PROBE_READ_USER = 112
    PROBE_READ_KERNEL = 113
    RINGBUF_RESERVE = 131
    RINGBUF_SUBMIT = 132
    RINGBUF_DISCARD = 133


BPF_TO_BE = 0x08  # END: convert to big endian (a byte swap on x86-64)
BPF_PSEUDO_MAP_FD = 1  # LD_IMM64 src: imm is a map fd the kernel replaces by the map
ATOMIC_ADD = 0x00  # ATOMIC imm: plain fetch-less add


class Insn(NamedTuple):
    """One 8-byte instruction; ``off`` may be a label name for jumps."""

    code: int
    dst: int
    src: int
    off: int | str
    imm: int


class Label(NamedTuple):
    """A jump target: marks the position of the next instruction."""

    name: str


Item = Insn | Label | tuple[Insn, Insn]


class AssemblerError(Exception):
    """A program cannot be assembled (unknown or duplicate label, jump too far)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> Insn:
    return Insn(code, int(dst), int(src), off, int(imm))


# --- ALU ---------------------------------------------------------------------


def alu64_imm(op: AluOp, dst: Reg, imm: int) -> Insn:
    """dst = dst <op> imm, 64 bits."""
    return _insn(InsnClass.ALU64 | op | Source.K, dst, 0, 0, imm)


def alu64_reg(op: AluOp, dst: Reg, src: Reg) -> Insn:
    """dst = dst <op> src, 64 bits."""
    return _insn(InsnClass.ALU64 | op | Source.X, dst, src)


def alu32_imm(op: AluOp, dst: Reg, imm: int) -> Insn:
    """dst = (u32)(dst <op> imm); the upper half is cleared."""
    return _insn(InsnClass.ALU | op | Source.K, dst, 0, 0, imm)


def alu32_reg(op: AluOp, dst: Reg, src: Reg) -> Insn:
    """dst = (u32)(dst <op> src); the upper half is cleared."""
    return _insn(InsnClass.ALU | op | Source.X, dst, src)


def mov64_imm(dst: Reg, imm: int) -> Insn:
    """dst = imm (sign-extended 32-bit immediate)."""
    return alu64_imm(AluOp.MOV, dst, imm)


def mov64_reg(dst: Reg, src: Reg) -> Insn:
    """dst = src."""
    return alu64_reg(AluOp.MOV, dst, src)


def to_be(dst: Reg, bits: int) -> Insn:
    """dst = htobe<bits>(dst): a byte swap on little endian; bits is 16, 32 or 64."""
    if bits not in (16, 32, 64):
        raise AssemblerError(f"byte swap of {bits} bits")
    return _insn(InsnClass.ALU | AluOp.END | BPF_TO_BE, dst, 0, 0, bits)


# --- memory ------------------------------------------------------------------


def ldx(size: Size, dst: Reg, src: Reg, off: int) -> Insn:
    """dst = *(size *)(src + off), zero-extended."""
    return _insn(InsnClass.LDX | size | Mode.MEM, dst, src, off)


def stx(size: Size, dst: Reg, off: int, src: Reg) -> Insn:
    """*(size *)(dst + off) = src."""
    return _insn(InsnClass.STX | size | Mode.MEM, dst, src, off)


def st_imm(size: Size, dst: Reg, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return _insn(InsnClass.ST | size | Mode.MEM, dst, 0, off, imm)


def atomic_add(size: Size, dst: Reg, off: int, src: Reg) -> Insn:
    """*(size *)(dst + off) += src, atomically (size W or DW)."""
    if size not in (Size.W, Size.DW):
        raise AssemblerError("atomic add needs a 4- or 8-byte access")
    return _insn(InsnClass.STX | size | Mode.ATOMIC, dst, src, off, ATOMIC_ADD)


def ld_imm64(dst: Reg, imm: int, src: int = 0) -> tuple[Insn, Insn]:
    """dst = 64-bit immediate: two instruction slots."""
    low = imm & 0xFFFFFFFF
    high = (imm >> 32) & 0xFFFFFFFF
    return (
        _insn(InsnClass.LD | Size.DW | Mode.IMM, dst, src, 0, _signed32(low)),
        _insn(0, 0, 0, 0, _signed32(high)),
    )


def ld_map_fd(dst: Reg, map_fd: int) -> tuple[Insn, Insn]:
    """dst = pointer to the map behind ``map_fd`` (BPF_PSEUDO_MAP_FD)."""
    return ld_imm64(dst, map_fd, BPF_PSEUDO_MAP_FD)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def imm32(value: int) -> int:
    """A 32-bit immediate given signed or unsigned, as the signed number ``imm`` holds.

    For a JMP32 compare with an unsigned 32-bit constant (such as an inode
    number above 2**31): the bits are the same, only Python's view differs.
    """
    if not -(1 << 31) <= value <= 0xFFFFFFFF:
        raise AssemblerError(f"immediate {value} does not fit in 32 bits")
    return _signed32(value & 0xFFFFFFFF)


# --- jumps -------------------------------------------------------------------


def ja(target: str | int) -> Insn:
    """goto target."""
    return _insn(InsnClass.JMP | JmpOp.JA, 0, 0, target)


def jmp_imm(op: JmpOp, dst: Reg, imm: int, target: str | int) -> Insn:
    """if (dst <op> imm) goto target, 64-bit compare."""
    return _insn(InsnClass.JMP | op | Source.K, dst, 0, target, imm)


def jmp_reg(op: JmpOp, dst: Reg, src: Reg, target: str | int) -> Insn:
    """if (dst <op> src) goto target, 64-bit compare."""
    return _insn(InsnClass.JMP | op | Source.X, dst, src, target)


def jmp32_imm(op: JmpOp, dst: Reg, imm: int, target: str | int) -> Insn:
    """if ((u32/s32)dst <op> imm) goto target, 32-bit compare."""
    return _insn(InsnClass.JMP32 | op | Source.K, dst, 0, target, imm)


def call(helper: Helper) -> Insn:
    """r0 = helper(r1, ..., r5); r1-r5 are clobbered."""
    return _insn(InsnClass.JMP | JmpOp.CALL, 0, 0, 0, helper)


def exit_insn() -> Insn:
    """return r0."""
    return _insn(InsnClass.JMP | JmpOp.EXIT)


# --- assembly ----------------------------------------------------------------


def _flatten(items: Iterable[Item]) -> list[Insn | Label]:
    flat: list[Insn | Label] = []
    for item in items:
        if isinstance(item, Insn | Label):
            flat.append(item)
        else:
            flat.extend(item)
    return flat


def assemble(items: Sequence[Item]) -> bytes:
    """The program's bytes; label names in ``off`` become relative offsets.

    A jump's offset counts instructions from the one after the jump, so a
    jump to the next instruction has offset 0.
    """
    flat = _flatten(items)
    positions: dict[str, int] = {}
    position = 0
    for item in flat:
        if isinstance(item, Label):
            if item.name in positions:
                raise AssemblerError(f"label {item.name!r} defined twice")
            positions[item.name] = position
        else:
            position += 1
    out = bytearray()
    position = 0
    for item in flat:
        if isinstance(item, Label):
            continue
        off = item.off
        if isinstance(off, str):
            if off not in positions:
                raise AssemblerError(f"jump to undefined label {off!r}")
            off = positions[off] - (position + 1)
        if not -0x8000 <= off <= 0x7FFF:
            raise AssemblerError(f"jump offset {off} out of range")
        out += BPF_INSN.pack(item.code, (item.dst & 0x0F) | ((item.src & 0x0F) << 4), off, item.imm)
        position += 1
    return bytes(out)


def instruction_count(items: Sequence[Item]) -> int:
    """Number of 8-byte slots the items occupy."""
    return sum(1 for item in _flatten(items) if isinstance(item, Insn))
