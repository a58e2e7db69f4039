"""Identity at exec, taken in the kernel: the ``ntp_exec`` program and its ring buffer.

Part of the optional in-kernel ownership helper.  Owns the program for the
``sched:sched_process_exec`` tracepoint (built here, loaded and attached by
``helper.KernelOwnership``), the layout of its records, the ``task_struct``
/ ``mm_struct`` offsets it needs (from BTF only: without BTF the program is
not loaded and identities come from /proc alone) and ``ExecRing``, the
reader of the ring buffer (``ntp_exec_ring``) the records go through.
Callers: ``helper.py`` and, through ``KernelOwnership.exec_records``, the
daemon's engine, which hands the records to ``ownership.IdentityBook``.

The program runs in the task that has just exec'd, before the kernel tells
the proc connector, so a program that ends a millisecond later is still
named: per exec one record (``EXEC_RECORD``) with the tgid, the parent's
tgid (``task->real_parent->tgid``), the real uid
(``bpf_get_current_uid_gid``), the start time (``task->start_boottime``, the
CLOCK_BOOTTIME nanoseconds /proc/PID/stat's field 22 is made from), the
command name and the first ``ARGS_BYTES`` of the argument area
(``mm->arg_start .. arg_end``, NUL-separated as /proc/PID/cmdline gives it,
read with ``bpf_probe_read_user``) with the area's whole length.  It only
observes.  A full ring (EXEC_LOST) or a failed read (EXEC_READ_FAILED, the
record discarded) is counted in the helper's event counters.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

from .asm import (
    AluOp,
    Helper,
    Item,
    JmpOp,
    Label,
    Reg,
    Size,
    alu64_imm,
    alu64_reg,
    call,
    exit_insn,
    ja,
    jmp_imm,
    ld_map_fd,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
)
from .btf import POINTER_BYTES, Btf, BtfError, BtfKind

R0, R1, R2, R3 = Reg.R0, Reg.R1, Reg.R2, Reg.R3
R7, R8, R9, FP = Reg.R7, Reg.R8, Reg.R9, Reg.FP

ARGS_BYTES = 256  # the argument area's first bytes a record carries
EXEC_RING_BYTES = 256 * 1024  # a power of two, a multiple of the page: ~860 records

# struct exec_record, 304 bytes, one per exec:
#   __u32 tgid;            bpf_get_current_pid_tgid() >> 32
#   __u32 uid;             bpf_get_current_uid_gid() & 0xffffffff (the real uid)
#   __u32 ppid;            task->real_parent->tgid
#   __u32 pad;
#   __u64 start_ns;        task->start_boottime (CLOCK_BOOTTIME ns)
#   char  comm[16];        bpf_get_current_comm
#   __u64 args_len;        mm->arg_end - mm->arg_start (the whole area)
#   __u8  args[256];       its first min(args_len, 256) bytes
EXEC_RECORD = struct.Struct(f"=IIIIQ16sQ{ARGS_BYTES}s")
REC_TGID, REC_UID, REC_PPID, REC_START, REC_COMM, REC_ARGS_LEN, REC_ARGS = (
    0,
    4,
    8,
    16,
    24,
    40,
    48,
)

# The program's stack: three u64 scratch slots (counter key at STACK_KEY).
STACK_POINTER = -8  # a pointer read from the task (real_parent, mm)
STACK_ARG_START = -16
STACK_ARG_END = -24
STACK_KEY = -32  # __u32 0, the counters map's key

# Ring buffer record header (kernel/bpf/ringbuf.c): __u32 len (two flag bits), __u32 pg_off.
RING_HEADER = struct.Struct("=II")
RING_POSITION = struct.Struct("=Q")
RING_BUSY = 1 << 31
RING_DISCARD = 1 << 30


class TaskOffsets(NamedTuple):
    """Byte offsets the exec program reads, from BTF."""

    start_boottime: int  # task_struct, u64
    real_parent: int  # task_struct, struct task_struct *
    tgid: int  # task_struct, pid_t
    mm: int  # task_struct, struct mm_struct *
    arg_start: int  # mm_struct, unsigned long
    arg_end: int  # mm_struct, unsigned long


def task_offsets(btf: Btf) -> TaskOffsets:
    """Resolve the members the exec program reads; BtfError when one is missing or odd."""
    expected = (
        ("task_struct", "start_boottime", 8, None),
        ("task_struct", "real_parent", POINTER_BYTES, BtfKind.PTR),
        ("task_struct", "tgid", 4, None),
        ("task_struct", "mm", POINTER_BYTES, BtfKind.PTR),
        ("mm_struct", "arg_start", 8, None),
        ("mm_struct", "arg_end", 8, None),
    )
    found: list[int] = []
    for struct_name, name, size, kind in expected:
        member, member_kind = btf.locate(struct_name, name)
        if member.size_bytes != size or member.bit_size or (kind and member_kind != kind):
            raise BtfError(
                f"{struct_name}.{name} is {member.size_bytes} bytes of {member_kind.name},"
                f" expected {size}"
            )
        found.append(member.offset_bytes)
    return TaskOffsets(*found)


class ExecRecord(NamedTuple):
    """One exec as the kernel saw it."""

    tgid: int
    ppid: int
    uid: int
    start_boottime_ns: int  # CLOCK_BOOTTIME ns: /proc/PID/stat field 22 is this in ticks
    comm: str
    args: bytes  # the argument area's first bytes, NUL-separated
    args_len: int  # the whole area's length (> len(args): cut)


def decode_record(raw: bytes) -> ExecRecord:
    tgid, uid, ppid, _pad, start_ns, comm, args_len, args = EXEC_RECORD.unpack_from(raw)
    return ExecRecord(
        tgid=tgid,
        ppid=ppid,
        uid=uid,
        start_boottime_ns=start_ns,
        comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
        args=args[: min(args_len, ARGS_BYTES)],
        args_len=args_len,
    )


def _count(counter_offset: int) -> list[Item]:
    """counters[slot] += 1 (R9 points at this CPU's counter record)."""
    return [
        ldx(Size.DW, R1, R9, counter_offset),
        alu64_imm(AluOp.ADD, R1, 1),
        stx(Size.DW, R9, counter_offset, R1),
    ]


def _read_kernel(dst: list[Item], size: int, src_base: Reg, src_offset: int) -> list[Item]:
    """bpf_probe_read_kernel(R1 as set by ``dst``, size, src_base + src_offset); a fault
    goes to ``failed``."""
    return [
        *dst,
        mov64_imm(R2, size),
        mov64_reg(R3, src_base),
        alu64_imm(AluOp.ADD, R3, src_offset),
        call(Helper.PROBE_READ_KERNEL),
        jmp_imm(JmpOp.JNE, R0, 0, "failed"),
    ]


def _to_stack(offset: int) -> list[Item]:
    return [mov64_reg(R1, FP), alu64_imm(AluOp.ADD, R1, offset)]


def _to_record(offset: int) -> list[Item]:
    return [mov64_reg(R1, R7), alu64_imm(AluOp.ADD, R1, offset)]


def exec_program(
    task: TaskOffsets,
    ring_fd: int,
    counters_fd: int,
    events_slot: int,
    lost_slot: int,
    failed_slot: int,
) -> list[Item]:
    """The program for sched:sched_process_exec: one EXEC_RECORD into the ring per exec.

    ``*_slot``: the helper's Counter slots for execs seen, records lost to a
    full ring and records discarded after a failed read.
    """
    return [
        # R9 = this CPU's counters; count the exec
        st_imm(Size.W, FP, STACK_KEY, 0),
        ld_map_fd(R1, counters_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_reg(R9, R0),
        *_count(events_slot * 8),
        # R7 = a record in the ring, or lost
        ld_map_fd(R1, ring_fd),
        mov64_imm(R2, EXEC_RECORD.size),
        mov64_imm(R3, 0),
        call(Helper.RINGBUF_RESERVE),
        jmp_imm(JmpOp.JEQ, R0, 0, "lost"),
        mov64_reg(R7, R0),
        # tgid, uid, comm
        call(Helper.GET_CURRENT_PID_TGID),
        alu64_imm(AluOp.RSH, R0, 32),
        stx(Size.W, R7, REC_TGID, R0),
        call(Helper.GET_CURRENT_UID_GID),
        stx(Size.W, R7, REC_UID, R0),
        st_imm(Size.W, R7, REC_PPID + 4, 0),
        *_to_record(REC_COMM),
        mov64_imm(R2, 16),
        call(Helper.GET_CURRENT_COMM),
        # R8 = current task: start time, parent's tgid
        call(Helper.GET_CURRENT_TASK),
        mov64_reg(R8, R0),
        *_read_kernel(_to_record(REC_START), 8, R8, task.start_boottime),
        *_read_kernel(_to_stack(STACK_POINTER), 8, R8, task.real_parent),
        ldx(Size.DW, R3, FP, STACK_POINTER),
        mov64_reg(R1, R7),
        alu64_imm(AluOp.ADD, R1, REC_PPID),
        mov64_imm(R2, 4),
        alu64_imm(AluOp.ADD, R3, task.tgid),
        call(Helper.PROBE_READ_KERNEL),
        jmp_imm(JmpOp.JNE, R0, 0, "failed"),
        # R8 = task->mm; the argument area's bounds
        *_read_kernel(_to_stack(STACK_POINTER), 8, R8, task.mm),
        ldx(Size.DW, R8, FP, STACK_POINTER),
        jmp_imm(JmpOp.JEQ, R8, 0, "failed"),
        *_read_kernel(_to_stack(STACK_ARG_START), 8, R8, task.arg_start),
        *_read_kernel(_to_stack(STACK_ARG_END), 8, R8, task.arg_end),
        ldx(Size.DW, R2, FP, STACK_ARG_END),
        ldx(Size.DW, R1, FP, STACK_ARG_START),
        alu64_reg(AluOp.SUB, R2, R1),
        stx(Size.DW, R7, REC_ARGS_LEN, R2),
        # R2 = min(length, ARGS_BYTES), unsigned (a negative length reads ARGS_BYTES)
        jmp_imm(JmpOp.JLE, R2, ARGS_BYTES, "length_ok"),
        mov64_imm(R2, ARGS_BYTES),
        Label("length_ok"),
        *_to_record(REC_ARGS),
        ldx(Size.DW, R3, FP, STACK_ARG_START),
        call(Helper.PROBE_READ_USER),
        jmp_imm(JmpOp.JNE, R0, 0, "failed"),
        mov64_reg(R1, R7),
        mov64_imm(R2, 0),
        call(Helper.RINGBUF_SUBMIT),
        ja("out"),
        Label("failed"),
        *_count(failed_slot * 8),
        mov64_reg(R1, R7),
        mov64_imm(R2, 0),
        call(Helper.RINGBUF_DISCARD),
        ja("out"),
        Label("lost"),
        *_count(lost_slot * 8),
        Label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


class ExecRing:
    """The consumer side of ``ntp_exec_ring``: its pages mapped, records taken in order.

    Owns the two mappings (closed by ``close``; the map's fd belongs to the
    helper).  The data pages are mapped twice in a row by the kernel, so a
    record that wraps is read in one piece.
    """

    def __init__(self, fd: int, size: int = EXEC_RING_BYTES) -> None:
        self.size = size
        self.mask = size - 1
        page = mmap.PAGESIZE
        self.consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self.data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self.consumer.close()
            raise
        self.records = 0  # records taken
        self.discarded = 0  # records the program discarded (a failed read)

    def take(self) -> list[ExecRecord]:
        """Every record submitted since the last call, oldest first."""
        page = mmap.PAGESIZE
        (produced,) = RING_POSITION.unpack_from(self.data, 0)
        (consumed,) = RING_POSITION.unpack_from(self.consumer, 0)
        records: list[ExecRecord] = []
        while consumed < produced:
            where = page + (consumed & self.mask)
            length, _page_offset = RING_HEADER.unpack_from(self.data, where)
            if length & RING_BUSY:
                break  # still being written: the next call takes it
            discarded = length & RING_DISCARD
            length &= ~(RING_BUSY | RING_DISCARD) & 0xFFFFFFFF
            if discarded:
                self.discarded += 1
            elif length >= EXEC_RECORD.size:
                start = where + RING_HEADER.size
                records.append(decode_record(self.data[start : start + EXEC_RECORD.size]))
            consumed += (length + RING_HEADER.size + 7) & ~7
        RING_POSITION.pack_into(self.consumer, 0, consumed)
        self.records += len(records)
        return records

    def close(self) -> None:
        self.data.close()
        self.consumer.close()
