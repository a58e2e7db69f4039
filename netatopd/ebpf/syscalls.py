"""The raw bpf(2), perf_event_open(2), mount(2) and umount2(2) system calls through ctypes.

The one home of every bpf() command, flag and ``union bpf_attr`` layout the
ebpf package uses (the ownership helper and the cgroup_skb counter).  Owns
nothing; calls
libc's ``syscall()`` (``netatopd.libc``).  Every function here is one system call with
its ``union bpf_attr`` member (or ``struct perf_event_attr``) packed with
``struct``.  Every failure is raised as :class:`BpfSyscallError` carrying the
command name and the errno.  Callers: ``programs.py`` (map creation, program
load), ``helper.py`` (attach, drain, status, enumeration; BTF load and
tp_btf programs for the per-socket storage), ``skbcount.py``
(cgroup_skb programs: map-in-map, attach, detach, links, query, the cgroup2
mount) and the tests.

Layouts are those of the kernel UAPI headers ``linux/bpf.h`` and
``linux/perf_event.h`` on x86-64; the kernel accepts an attribute shorter than
its own as long as it knows every member we pass.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
from enum import IntEnum
from typing import NamedTuple

from ..libc import libc

log = logging.getLogger(__name__)

# System call numbers on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
NR_PERF_EVENT_OPEN = 298
NR_BPF = 321

BPF_OBJ_NAME_LEN = 16


class BpfCmd(IntEnum):
    """Commands of bpf(2) (enum bpf_cmd, linux/bpf.h)."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    ENABLE_STATS = 32


class MapType(IntEnum):
    """enum bpf_map_type (linux/bpf.h), the ones used here."""

    HASH = 1
    ARRAY = 2
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    ARRAY_OF_MAPS = 12
    SK_STORAGE = 24  # Linux 5.2+: a value per socket, found from the socket itself
    RINGBUF = 27  # Linux 5.8+


class MapFlag(IntEnum):
    """map_flags of BPF_MAP_CREATE (linux/bpf.h), the ones used here."""

    NONE = 0
    NO_PREALLOC = 1 << 0  # BPF_F_NO_PREALLOC: entries allocated on use (SK_STORAGE needs it)
    MMAPABLE = 1 << 10  # BPF_F_MMAPABLE: an array map user space can mmap (Linux 5.5+)


class ProgType(IntEnum):
    """enum bpf_prog_type (linux/bpf.h), the ones used here."""

    TRACEPOINT = 5
    CGROUP_SKB = 8
    RAW_TRACEPOINT = 17  # Linux 4.17+: context is the tracepoint's arguments, u64 each
    TRACING = 26  # Linux 5.5+: with TRACE_RAW_TP, a raw tracepoint typed by BTF ("tp_btf")


class AttachType(IntEnum):
    """enum bpf_attach_type (linux/bpf.h), the ones used here."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    TRACE_RAW_TP = 23  # a TRACING program on a raw tracepoint named by attach_btf_id


class AttachFlag(IntEnum):
    """attach_flags of BPF_PROG_ATTACH (linux/bpf.h), the ones used here."""

    NONE = 0
    ALLOW_MULTI = 1 << 1  # BPF_F_ALLOW_MULTI: beside other programs on the cgroup


class UpdateFlag(IntEnum):
    """Flags of BPF_MAP_UPDATE_ELEM (linux/bpf.h)."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


class StatsType(IntEnum):
    """enum bpf_stats_type (linux/bpf.h)."""

    RUN_TIME = 0


# perf_event_open constants (linux/perf_event.h).
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400  # _IO('$', 0)
PERF_EVENT_IOC_DISABLE = 0x2401  # _IO('$', 1)
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)

# union bpf_attr, BPF_MAP_CREATE member (first members), 60 bytes:
#   __u32 map_type; __u32 key_size; __u32 value_size; __u32 max_entries;
#   __u32 map_flags; __u32 inner_map_fd; __u32 numa_node;
#   char map_name[BPF_OBJ_NAME_LEN]; __u32 map_ifindex; __u32 btf_fd;
#   __u32 btf_key_type_id; __u32 btf_value_type_id;
BPF_ATTR_MAP_CREATE = struct.Struct("=IIIIIII16sIIII")

# union bpf_attr, BPF_BTF_LOAD member (first members), 28 bytes:
#   __aligned_u64 btf; __aligned_u64 btf_log_buf; __u32 btf_size; __u32 btf_log_size;
#   __u32 btf_log_level;
BPF_ATTR_BTF_LOAD = struct.Struct("=QQIII")

# union bpf_attr, BPF_MAP_*_ELEM member, 32 bytes:
#   __u32 map_fd; (pad 4); __aligned_u64 key; __aligned_u64 value (or next_key);
#   __u64 flags;
BPF_ATTR_MAP_ELEM = struct.Struct("=I4xQQQ")

# union bpf_attr, BPF_MAP_*_BATCH member, 56 bytes:
#   __aligned_u64 in_batch; __aligned_u64 out_batch; __aligned_u64 keys;
#   __aligned_u64 values; __u32 count; __u32 map_fd; __u64 elem_flags; __u64 flags;
BPF_ATTR_MAP_BATCH = struct.Struct("=QQQQIIQQ")
BPF_ATTR_MAP_BATCH_COUNT_OFFSET = 32

# union bpf_attr, BPF_PROG_LOAD member (first members only), 120 bytes:
#   __u32 prog_type; __u32 insn_cnt; __aligned_u64 insns; __aligned_u64 license;
#   __u32 log_level; __u32 log_size; __aligned_u64 log_buf; __u32 kern_version;
#   __u32 prog_flags; char prog_name[BPF_OBJ_NAME_LEN]; __u32 prog_ifindex;
#   __u32 expected_attach_type; __u32 prog_btf_fd; __u32 func_info_rec_size;
#   __aligned_u64 func_info; __u32 func_info_cnt; __u32 line_info_rec_size;
#   __aligned_u64 line_info; __u32 line_info_cnt; __u32 attach_btf_id;
#   __u32 attach_btf_obj_fd (0: vmlinux); __u32 core_relo_cnt;
BPF_ATTR_PROG_LOAD = struct.Struct("=IIQQIIQII16sIIIIQIIQIIII")

# union bpf_attr, BPF_*_GET_NEXT_ID / BPF_*_GET_FD_BY_ID member, 12 bytes:
#   __u32 start_id (or prog_id / map_id); __u32 next_id; __u32 open_flags;
BPF_ATTR_GET_ID = struct.Struct("=III")
BPF_ATTR_GET_ID_NEXT_OFFSET = 4

# union bpf_attr, BPF_OBJ_GET_INFO_BY_FD member, 16 bytes:
#   __u32 bpf_fd; __u32 info_len; __aligned_u64 info;
BPF_ATTR_INFO = struct.Struct("=IIQ")

# union bpf_attr, BPF_ENABLE_STATS member, 4 bytes:  __u32 type;
BPF_ATTR_ENABLE_STATS = struct.Struct("=I")

# union bpf_attr, BPF_PROG_ATTACH / BPF_PROG_DETACH member (first members), 20 bytes:
#   __u32 target_fd; __u32 attach_bpf_fd; __u32 attach_type; __u32 attach_flags;
#   __u32 replace_bpf_fd;
BPF_ATTR_PROG_ATTACH = struct.Struct("=IIIII")

# union bpf_attr, BPF_PROG_QUERY member (first members), 32 bytes:
#   __u32 target_fd; __u32 attach_type; __u32 query_flags; __u32 attach_flags;
#   __aligned_u64 prog_ids; __u32 prog_cnt; (pad 4)
BPF_ATTR_PROG_QUERY = struct.Struct("=IIIIQI4x")
BPF_ATTR_PROG_QUERY_COUNT_OFFSET = 24

# union bpf_attr, BPF_LINK_CREATE member (first members), 16 bytes:
#   __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags;
BPF_ATTR_LINK_CREATE = struct.Struct("=IIII")

# union bpf_attr, BPF_RAW_TRACEPOINT_OPEN member, 16 bytes:
#   __u64 name (a pointer to the tracepoint's NUL-terminated name, or 0 for a
#   TRACING program, whose tracepoint is its attach_btf_id); __u32 prog_fd;
#   then 4 bytes of padding (later kernels put a __u64 cookie after it; 0 here)
BPF_ATTR_RAW_TRACEPOINT = struct.Struct("=QI4x")

MNT_DETACH = 2  # umount2 flag (sys/mount.h): detach now, clean up when unused

# struct bpf_prog_info (linux/bpf.h), the members read here; 232 bytes in all:
#   __u32 type @0; __u32 id @4; ... char name[16] @64; ...
#   __u64 run_time_ns @192; __u64 run_cnt @200; __u64 recursion_misses @208;
#   __u32 verified_insns @216
BPF_PROG_INFO_SIZE = 232
# Both bpf_prog_info and bpf_map_info begin with __u32 type; __u32 id;
BPF_INFO_HEAD = struct.Struct("=II")
BPF_PROG_INFO_NAME_OFFSET = 64
BPF_PROG_INFO_RUN = struct.Struct("=QQQI")  # run_time_ns, run_cnt, recursion_misses, verified_insns
BPF_PROG_INFO_RUN_OFFSET = 192

# struct bpf_map_info (linux/bpf.h), 88 bytes; the first members:
#   __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries;
#   __u32 map_flags; char name[16];
BPF_MAP_INFO_SIZE = 88
BPF_MAP_INFO_HEAD = struct.Struct("=IIIIII16s")
BPF_MAP_INFO_NAME_OFFSET = 24

# struct perf_event_attr (linux/perf_event.h), PERF_ATTR_SIZE_VER7 = 128 bytes;
# the members set here, the rest zero:
#   __u32 type @0; __u32 size @4; __u64 config @8; __u64 sample_period @16;
#   __u64 sample_type @24; __u64 read_format @32; __u64 flag bits @40;
#   __u32 wakeup_events @48; __u32 bp_type @52; then 72 bytes we leave zero
PERF_EVENT_ATTR = struct.Struct("=IIQQQQQII72x")
PERF_EVENT_ATTR_SIZE = 128


class BpfSyscallError(Exception):
    """A bpf(2) or perf_event_open(2) call failed.

    ``call`` names the command, ``errno`` is the kernel's error number and
    ``log`` the verifier log for a rejected program (else empty).
    """

    def __init__(self, call: str, error_number: int, log_text: str = "") -> None:
        self.call = call
        self.errno = error_number
        self.log = log_text
        super().__init__(f"{call}: [Errno {error_number}] {os.strerror(error_number)}")


def _syscall(call: str, number: int, *args: object) -> int:
    """One raw system call; returns its result or raises BpfSyscallError."""
    result = int(libc().syscall(ctypes.c_long(number), *args))
    if result < 0:
        raise BpfSyscallError(call, ctypes.get_errno())
    return result


def bpf(cmd: BpfCmd, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, attr, sizeof attr); the attribute buffer may be written back."""
    return _syscall(
        cmd.name,
        NR_BPF,
        ctypes.c_int(cmd),
        ctypes.cast(attr, ctypes.c_void_p),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )


def _buffer(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A writable C copy of ``data``, exactly as long (no trailing NUL)."""
    return ctypes.create_string_buffer(data, len(data))


def _address(buffer: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buffer is None else ctypes.addressof(buffer)


class BtfTypes(NamedTuple):
    """A loaded BTF object (``btf_load``) and the ids of a map's key and value in it."""

    fd: int
    key_type_id: int
    value_type_id: int


def map_create(
    map_type: MapType,
    key_size: int,
    value_size: int,
    max_entries: int,
    name: str,
    flags: MapFlag = MapFlag.NONE,
    inner_map_fd: int = 0,
    btf: BtfTypes | None = None,
) -> int:
    """BPF_MAP_CREATE; returns the map's fd (close-on-exec).

    ``inner_map_fd`` is the template map of a map-in-map (ARRAY_OF_MAPS);
    ``btf`` the loaded BTF and type ids of key and value, which some map types
    need (SK_STORAGE).
    """
    btf_fd, key_type_id, value_type_id = btf if btf is not None else (0, 0, 0)
    attr = _buffer(
        BPF_ATTR_MAP_CREATE.pack(
            map_type,
            key_size,
            value_size,
            max_entries,
            flags,
            inner_map_fd,
            0,
            name.encode()[: BPF_OBJ_NAME_LEN - 1],
            0,
            btf_fd,
            key_type_id,
            value_type_id,
        )
    )
    return bpf(BpfCmd.MAP_CREATE, attr)


def btf_load(blob: bytes, log_size: int = 4096) -> int:
    """BPF_BTF_LOAD of a BTF blob; returns its fd.  A refused blob's
    BpfSyscallError carries the kernel's log."""
    data = _buffer(blob)
    log_buffer = ctypes.create_string_buffer(log_size)
    attr = _buffer(
        BPF_ATTR_BTF_LOAD.pack(_address(data), _address(log_buffer), len(blob), log_size, 1)
    )
    try:
        return bpf(BpfCmd.BTF_LOAD, attr)
    except BpfSyscallError as err:
        err.log = log_buffer.value.decode("utf-8", "replace")
        raise


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM; None when the key is absent.

    For a per-CPU map ``value_size`` must be the value size rounded up to 8
    times the number of possible CPUs.
    """
    key_buffer = _buffer(key)
    value_buffer = ctypes.create_string_buffer(value_size)
    attr = _buffer(BPF_ATTR_MAP_ELEM.pack(map_fd, _address(key_buffer), _address(value_buffer), 0))
    try:
        bpf(BpfCmd.MAP_LOOKUP_ELEM, attr)
    except BpfSyscallError as err:
        if err.errno == errno.ENOENT:
            return None
        raise
    return value_buffer.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
    """BPF_MAP_UPDATE_ELEM."""
    key_buffer = _buffer(key)
    value_buffer = _buffer(value)
    attr = _buffer(
        BPF_ATTR_MAP_ELEM.pack(map_fd, _address(key_buffer), _address(value_buffer), flags)
    )
    bpf(BpfCmd.MAP_UPDATE_ELEM, attr)


_BATCH_BUFFERS: dict[str, ctypes.Array[ctypes.c_char]] = {}


def _batch_buffer(role: str, size: int) -> ctypes.Array[ctypes.c_char]:
    """A reusable buffer for batch operations (allocating and zeroing one per
    call cost more than the system call); the kernel only writes into it."""
    buffer = _BATCH_BUFFERS.get(role)
    if buffer is None or len(buffer) < size:
        buffer = _BATCH_BUFFERS[role] = ctypes.create_string_buffer(size)
    return buffer


def map_lookup_batch(
    map_fd: int, key_size: int, value_size: int, delete: bool, chunk_count: int
) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map with BPF_MAP_LOOKUP[_AND_DELETE]_BATCH.

    ``chunk_count`` elements are asked for per call; it must be at least the
    longest hash bucket (the kernel answers ENOSPC otherwise, and we then
    retry with a larger chunk).  With ``delete`` each element returned is
    removed in the same call, so nothing recorded between two drains is lost.
    """
    cmd = BpfCmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else BpfCmd.MAP_LOOKUP_BATCH
    result: list[tuple[bytes, bytes]] = []
    in_batch = ctypes.create_string_buffer(8)
    out_batch = ctypes.create_string_buffer(8)
    first = True
    while True:
        keys = _batch_buffer("keys", key_size * chunk_count)
        values = _batch_buffer("values", value_size * chunk_count)
        attr = _buffer(
            BPF_ATTR_MAP_BATCH.pack(
                0 if first else _address(in_batch),
                _address(out_batch),
                _address(keys),
                _address(values),
                chunk_count,
                map_fd,
                0,
                0,
            )
        )
        done = False
        try:
            bpf(cmd, attr)
        except BpfSyscallError as err:
            if err.errno == errno.ENOSPC:
                chunk_count *= 2
                continue
            if err.errno != errno.ENOENT:
                raise
            done = True
        (count,) = struct.unpack_from("=I", attr.raw, BPF_ATTR_MAP_BATCH_COUNT_OFFSET)
        # Copy out only what the kernel filled (the buffers are much larger).
        raw_keys = ctypes.string_at(keys, count * key_size)
        raw_values = ctypes.string_at(values, count * value_size)
        for index in range(count):
            result.append(
                (
                    raw_keys[index * key_size : (index + 1) * key_size],
                    raw_values[index * value_size : (index + 1) * value_size],
                )
            )
        if done:
            return result
        ctypes.memmove(in_batch, out_batch, 8)
        first = False


def prog_load(
    prog_type: ProgType,
    instructions: bytes,
    license_text: str,
    name: str,
    log_size: int = 0,
    expected_attach_type: AttachType | None = None,
    attach_btf_id: int = 0,
) -> int:
    """BPF_PROG_LOAD; returns the program's fd.

    With ``log_size`` the verifier's log (level 1) is kept and attached to
    the BpfSyscallError of a rejected program.  ``expected_attach_type`` is
    needed by the program types that check it at load (cgroup_skb, tracing);
    ``attach_btf_id`` is the vmlinux BTF type a TRACING program attaches to.
    """
    insns = _buffer(instructions)
    license_buffer = ctypes.create_string_buffer(license_text.encode())
    log_buffer = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _buffer(
        BPF_ATTR_PROG_LOAD.pack(
            prog_type,
            len(instructions) // 8,
            _address(insns),
            _address(license_buffer),
            1 if log_size else 0,
            log_size,
            _address(log_buffer),
            0,
            0,
            name.encode()[: BPF_OBJ_NAME_LEN - 1],
            0,
            0 if expected_attach_type is None else expected_attach_type,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            attach_btf_id,
            0,
            0,
        )
    )
    try:
        return bpf(BpfCmd.PROG_LOAD, attr)
    except BpfSyscallError as err:
        if log_buffer is not None:
            err.log = log_buffer.value.decode("utf-8", "replace")
        raise


def prog_attach(target_fd: int, prog_fd: int, attach_type: AttachType, flags: AttachFlag) -> None:
    """BPF_PROG_ATTACH of a program to a cgroup (``target_fd``)."""
    attr = _buffer(BPF_ATTR_PROG_ATTACH.pack(target_fd, prog_fd, attach_type, flags, 0))
    bpf(BpfCmd.PROG_ATTACH, attr)


def prog_detach(target_fd: int, prog_fd: int, attach_type: AttachType) -> None:
    """BPF_PROG_DETACH of one program (needed for AttachFlag.ALLOW_MULTI attachments)."""
    attr = _buffer(BPF_ATTR_PROG_ATTACH.pack(target_fd, prog_fd, attach_type, 0, 0))
    bpf(BpfCmd.PROG_DETACH, attr)


def link_create(prog_fd: int, target_fd: int, attach_type: AttachType) -> int:
    """BPF_LINK_CREATE; returns the link's fd (closing its last copy detaches)."""
    attr = _buffer(BPF_ATTR_LINK_CREATE.pack(prog_fd, target_fd, attach_type, 0))
    return bpf(BpfCmd.LINK_CREATE, attr)


def raw_tracepoint_open(name: str | None, prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: attach a raw tracepoint program to the tracepoint
    ``name`` (e.g. ``sock_send_length``, no category), or a TRACING program
    (``name`` None) to the tracepoint its attach_btf_id names; returns the fd
    whose closing detaches it."""
    name_buffer = None if name is None else ctypes.create_string_buffer(name.encode())
    attr = _buffer(BPF_ATTR_RAW_TRACEPOINT.pack(_address(name_buffer), prog_fd))
    return bpf(BpfCmd.RAW_TRACEPOINT_OPEN, attr)


def prog_query(target_fd: int, attach_type: AttachType, capacity: int = 256) -> list[int]:
    """BPF_PROG_QUERY: ids of the programs attached at the cgroup (not inherited ones)."""
    ids = (ctypes.c_uint32 * capacity)()
    attr = _buffer(
        BPF_ATTR_PROG_QUERY.pack(target_fd, attach_type, 0, 0, ctypes.addressof(ids), capacity)
    )
    bpf(BpfCmd.PROG_QUERY, attr)
    (count,) = struct.unpack_from("=I", attr.raw, BPF_ATTR_PROG_QUERY_COUNT_OFFSET)
    return [int(ids[index]) for index in range(min(count, capacity))]


def get_next_id(cmd: BpfCmd, start_id: int) -> int | None:
    """BPF_PROG_GET_NEXT_ID / BPF_MAP_GET_NEXT_ID; None after the last one."""
    attr = _buffer(BPF_ATTR_GET_ID.pack(start_id, 0, 0))
    try:
        bpf(cmd, attr)
    except BpfSyscallError as err:
        if err.errno == errno.ENOENT:
            return None
        raise
    (next_id,) = struct.unpack_from("=I", attr.raw, BPF_ATTR_GET_ID_NEXT_OFFSET)
    return int(next_id)


def get_fd_by_id(cmd: BpfCmd, object_id: int) -> int | None:
    """BPF_PROG_GET_FD_BY_ID / BPF_MAP_GET_FD_BY_ID; None if it went away."""
    attr = _buffer(BPF_ATTR_GET_ID.pack(object_id, 0, 0))
    try:
        return bpf(cmd, attr)
    except BpfSyscallError as err:
        if err.errno == errno.ENOENT:
            return None
        raise


def obj_get_info(fd: int, info_size: int) -> bytes:
    """BPF_OBJ_GET_INFO_BY_FD into a zeroed buffer of ``info_size`` bytes."""
    info = ctypes.create_string_buffer(info_size)
    attr = _buffer(BPF_ATTR_INFO.pack(fd, info_size, _address(info)))
    bpf(BpfCmd.OBJ_GET_INFO_BY_FD, attr)
    return info.raw


def object_id(fd: int) -> int:
    """The kernel id of a program or map (both info structs start with type, id)."""
    info = obj_get_info(fd, BPF_INFO_HEAD.size)
    return int(BPF_INFO_HEAD.unpack(info)[1])


class ProgRunStats(NamedTuple):
    """A program's run statistics from struct bpf_prog_info (counted while
    BPF_ENABLE_STATS is on) and its verified instruction count."""

    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int


def prog_run_stats(prog_fd: int) -> ProgRunStats:
    """BPF_OBJ_GET_INFO_BY_FD of a program, its run statistics."""
    info = obj_get_info(prog_fd, BPF_PROG_INFO_SIZE)
    return ProgRunStats(*BPF_PROG_INFO_RUN.unpack_from(info, BPF_PROG_INFO_RUN_OFFSET))


def enable_run_stats() -> int:
    """BPF_ENABLE_STATS (run time and count): on while the returned fd is open."""
    attr = _buffer(BPF_ATTR_ENABLE_STATS.pack(StatsType.RUN_TIME))
    return bpf(BpfCmd.ENABLE_STATS, attr)


def perf_event_open_tracepoint(tracepoint_id: int, cpu: int) -> int:
    """perf_event_open for one tracepoint, every process (pid -1) on ``cpu``.

    A BPF program set on this event runs for the tracepoint on every CPU;
    pid -1 with cpu -1 is refused by the kernel (EINVAL).
    """
    attr = _buffer(
        PERF_EVENT_ATTR.pack(
            PERF_TYPE_TRACEPOINT,
            PERF_EVENT_ATTR_SIZE,
            tracepoint_id,
            1,
            PERF_SAMPLE_RAW,
            0,
            0,
            1,
            0,
        )
    )
    return _syscall(
        "perf_event_open",
        NR_PERF_EVENT_OPEN,
        ctypes.cast(attr, ctypes.c_void_p),
        ctypes.c_int(-1),
        ctypes.c_int(cpu),
        ctypes.c_int(-1),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )


def perf_event_attach(perf_fd: int, prog_fd: int) -> None:
    """PERF_EVENT_IOC_SET_BPF then PERF_EVENT_IOC_ENABLE on the event."""
    try:
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as err:
        raise BpfSyscallError("PERF_EVENT_IOC_SET_BPF", err.errno or errno.EIO) from err


def perf_event_disable(perf_fd: int) -> None:
    """PERF_EVENT_IOC_DISABLE; closing the fd afterwards detaches the program."""
    try:
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0)
    except OSError as err:
        raise BpfSyscallError("PERF_EVENT_IOC_DISABLE", err.errno or errno.EIO) from err


def mount_filesystem(fstype: str, target: str) -> None:
    """mount -t <fstype> <fstype> <target> (tracefs, cgroup2)."""
    mount = libc().mount
    mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    mount.restype = ctypes.c_int
    if mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        raise BpfSyscallError(f"mount {fstype}", ctypes.get_errno())


def mount_tracefs(target: str) -> None:
    """mount -t tracefs tracefs <target>."""
    mount_filesystem("tracefs", target)


def umount_lazy(target: str) -> None:
    """umount2(target, MNT_DETACH)."""
    umount2 = libc().umount2
    umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    umount2.restype = ctypes.c_int
    if umount2(target.encode(), MNT_DETACH) != 0:
        raise BpfSyscallError("umount2", ctypes.get_errno())


def possible_cpu_count(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs: a per-CPU map value holds one copy for each ("0-3,8" list)."""
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError as err:
        raise BpfSyscallError(f"read {path}", err.errno or errno.EIO) from err
    count = 0
    for part in text.split(","):
        first, _dash, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count
