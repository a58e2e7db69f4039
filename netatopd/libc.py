"""The C library, loaded once for every module that calls it through ctypes.

Owns the one ``ctypes.CDLL`` handle of libc (errno kept for
``ctypes.get_errno()``, ``syscall()`` returning a C long).  Callers:
``procfs`` (pidfd_open, pidfd_getfd), ``capture.pcap`` (the open_memstream
stream libpcap writes through), ``ebpf.syscalls`` (bpf, perf_event_open,
mount, umount2) and the privileged tests (setns, tests/privileged/netns.py).
Each caller declares the prototypes of the other calls it makes; the handle
is loaded at the first call, so importing a caller costs nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

LIBC_FALLBACK_NAME = "libc.so.6"


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library; OSError when it cannot be loaded."""
    name = ctypes.util.find_library("c") or LIBC_FALLBACK_NAME
    lib = ctypes.CDLL(name, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib
