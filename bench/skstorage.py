"""A per-socket-storage variant of the kernel path's counting programs, for measuring only.

Used by bench_skbcount.py to compare ``BPF_MAP_TYPE_SK_STORAGE`` (the counts
live in the socket itself, found through ``bpf_sk_storage_get``) with the
daemon's hash map keyed by socket cookie (ebpf/skbcount.py).  The programs
add the same wire segments and IP bytes (skbcount's own instructions for
them) into a 32-byte value per socket and always return 1.  Not the daemon's
path: user space cannot walk such a map with bpf(2) (only look up its own
sockets' entries by fd), and an entry goes away with its socket, so a closed
socket's counts would need another program at socket release to copy them
out; see bench/README.md.

Loaded with the raw bpf() system call like the daemon's programs; the map
needs BTF for its key and value, made here (three types) and loaded with
BPF_BTF_LOAD.  ``SkStorageCounter`` closes everything on ``close``; the
programs are attached with cgroup links, so the kernel detaches them when
the process dies.
"""

from __future__ import annotations

import ctypes
import os
import struct
from enum import IntEnum

from netatopd.ebpf import skbcount, syscalls
from netatopd.ebpf.asm import (
    Insn,
    InsnClass,
    Item,
    JmpOp,
    Label,
    Size,
    assemble,
    atomic_add,
    exit_insn,
    jmp_imm,
    ld_map_fd,
    ldx,
    mov64_imm,
    mov64_reg,
)
from netatopd.ebpf.syscalls import AttachType, ProgType

R0, R1, R2, R3, R4 = skbcount.R0, skbcount.R1, skbcount.R2, skbcount.R3, skbcount.R4
R6, R7, R8 = skbcount.R6, skbcount.R7, skbcount.R8


class Cmd(IntEnum):
    """The bpf(2) commands used here that syscalls.BpfCmd does not name."""

    MAP_CREATE = 0
    BTF_LOAD = 18


MAP_TYPE_SK_STORAGE = 24
F_NO_PREALLOC = 1
SK_STORAGE_GET = 107  # bpf_sk_storage_get(map, sk, value, flags)
SK_STORAGE_GET_F_CREATE = 1
VALUE = struct.Struct("=QQQQ")  # sent packets, sent IP bytes, received packets, received bytes

# map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node,
# map_name[16], map_ifindex, btf_fd, btf_key_type_id, btf_value_type_id
MAP_CREATE_BTF = struct.Struct("=IIIIIII16sIIII")
BTF_LOAD = struct.Struct("=QQIII")  # btf, btf_log_buf, btf_size, btf_log_size, level
BTF_HEADER = struct.Struct("=HBBIIIII")  # magic, version, flags, hdr_len, offsets
BTF_KIND_INT, BTF_KIND_STRUCT = 1, 4


def btf_blob() -> tuple[bytes, int, int]:
    """(BTF of int and struct ntp_sk_counts {4 x u64}, key type id, value type id)."""
    strings = b"\0int\0unsigned long long\0ntp_sk_counts\0sp\0sb\0rp\0rb\0"

    def name(text: str) -> int:
        return strings.index(b"\0" + text.encode() + b"\0") + 1

    types = b"".join(
        [
            # 1: int, 4 bytes, signed, 32 bits
            struct.pack("=III", name("int"), BTF_KIND_INT << 24, 4),
            struct.pack("=I", (1 << 24) | 32),
            # 2: unsigned long long, 8 bytes, 64 bits
            struct.pack("=III", name("unsigned long long"), BTF_KIND_INT << 24, 8),
            struct.pack("=I", 64),
            # 3: struct ntp_sk_counts, 32 bytes, four members of type 2
            struct.pack("=III", name("ntp_sk_counts"), BTF_KIND_STRUCT << 24 | 4, VALUE.size),
            *(
                struct.pack("=III", name(member), 2, index * 64)
                for index, member in enumerate(("sp", "sb", "rp", "rb"))
            ),
        ]
    )
    header = BTF_HEADER.pack(0xEB9F, 1, 0, BTF_HEADER.size, 0, len(types), len(types), len(strings))
    return header + types + strings, 1, 3


def load_btf() -> tuple[int, int, int]:
    """(BTF fd, key type id, value type id)."""
    blob, key_id, value_id = btf_blob()
    data = ctypes.create_string_buffer(blob, len(blob))
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(
        BTF_LOAD.pack(ctypes.addressof(data), ctypes.addressof(log), len(blob), len(log), 1),
        BTF_LOAD.size,
    )
    try:
        fd = syscalls.bpf(Cmd.BTF_LOAD, attr)  # type: ignore[arg-type]
    except syscalls.BpfSyscallError as err:
        raise RuntimeError(f"BPF_BTF_LOAD: {err}: {log.value.decode(errors='replace')}") from err
    return fd, key_id, value_id


def create_storage_map(btf_fd: int, key_id: int, value_id: int) -> int:
    attr = ctypes.create_string_buffer(
        MAP_CREATE_BTF.pack(
            MAP_TYPE_SK_STORAGE,
            4,
            VALUE.size,
            0,
            F_NO_PREALLOC,
            0,
            0,
            b"ntp_skb_skstor",
            0,
            btf_fd,
            key_id,
            value_id,
        ),
        MAP_CREATE_BTF.size,
    )
    return syscalls.bpf(Cmd.MAP_CREATE, attr)  # type: ignore[arg-type]


def storage_program(attach_type: AttachType, storage_fd: int) -> list[Item]:
    """Add this skb's segments and IP bytes to its socket's storage (made when absent)."""
    packets_at = 0 if attach_type == AttachType.CGROUP_INET_EGRESS else 16
    return [
        mov64_reg(R6, R1),
        *skbcount._segments_and_bytes(),
        ldx(Size.DW, R1, R6, skbcount.SKB_SK),
        jmp_imm(JmpOp.JEQ, R1, 0, "out"),
        skbcount._call(skbcount.SkbHelper.SK_FULLSOCK),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_reg(R2, R0),
        ld_map_fd(R1, storage_fd),
        mov64_imm(R3, 0),
        mov64_imm(R4, SK_STORAGE_GET_F_CREATE),
        Insn(InsnClass.JMP | JmpOp.CALL, 0, 0, 0, SK_STORAGE_GET),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        atomic_add(Size.DW, R0, packets_at, R7),
        atomic_add(Size.DW, R0, packets_at + 8, R8),
        Label("out"),
        mov64_imm(R0, 1),
        exit_insn(),
    ]


class SkStorageCounter:
    """The two storage programs attached at the cgroup v2 root by links; close() undoes."""

    def __init__(self, run_stats: bool = False) -> None:
        self.fds: list[int] = []
        self.links: list[int] = []
        self.prog_fds: dict[str, int] = {}
        try:
            root = skbcount.find_cgroup2_root()
            if root is None:
                raise RuntimeError("no cgroup2 mount")
            cgroup_fd = self._keep(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            btf_fd, key_id, value_id = load_btf()
            self._keep(btf_fd)
            storage_fd = self._keep(create_storage_map(btf_fd, key_id, value_id))
            if run_stats:
                self._keep(syscalls.enable_run_stats())
            for name, attach_type in (
                ("ntp_skb_sin", AttachType.CGROUP_INET_INGRESS),
                ("ntp_skb_sout", AttachType.CGROUP_INET_EGRESS),
            ):
                items = storage_program(attach_type, storage_fd)
                code = assemble(items)
                try:
                    fd = syscalls.prog_load(
                        ProgType.CGROUP_SKB, code, "GPL", name, expected_attach_type=attach_type
                    )
                except syscalls.BpfSyscallError:
                    syscalls.prog_load(
                        ProgType.CGROUP_SKB,
                        code,
                        "GPL",
                        name,
                        1 << 20,
                        expected_attach_type=attach_type,
                    )
                    raise
                self.prog_fds[name] = self._keep(fd)
                self.links.append(syscalls.link_create(fd, cgroup_fd, attach_type))
        except BaseException:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def run_stats(self) -> dict[str, tuple[int, int]]:
        result = {}
        for name, fd in self.prog_fds.items():
            stats = syscalls.prog_run_stats(fd)
            result[name] = (stats.run_cnt, stats.run_time_ns)
        return result

    def close(self) -> None:
        for fd in [*self.links, *self.fds]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.links.clear()
        self.fds.clear()

    def __enter__(self) -> SkStorageCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
