"""Optional in-kernel ownership helper: eBPF tracepoint programs loaded with raw bpf().

Used by ``ownership.KernelOwners`` and the daemon.  Owns nothing itself; the
modules are, in load order: ``syscalls`` (bpf(2), perf_event_open(2) through
ctypes), ``asm`` (instruction encoding), ``btf`` (struct sock offsets from
/sys/kernel/btf/vmlinux), ``calibrate`` (the same offsets without BTF, from
probe sockets), ``programs`` (the tracepoint programs and map
layouts) and ``helper`` (load, drain, status, close).  Callers import the
public names re-exported here; where the helper cannot be loaded,
``KernelOwnership.load`` raises ``EbpfUnavailable`` and the daemon keeps its
/proc resolution.
"""

from .helper import (
    AttachKind,
    EbpfUnavailable,
    FlowOwner,
    KernelOwnership,
    OffsetSource,
    OwnerKind,
    loaded_object_ids,
    loaded_programs,
    namespace_inode,
)

__all__ = [
    "AttachKind",
    "EbpfUnavailable",
    "FlowOwner",
    "KernelOwnership",
    "OffsetSource",
    "OwnerKind",
    "loaded_object_ids",
    "loaded_programs",
    "namespace_inode",
]
