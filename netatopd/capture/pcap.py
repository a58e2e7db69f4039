"""libpcap through ctypes: the capture stage's only contact with C.

Owns one libpcap handle opened on ``any`` (or a
named interface) in Linux cooked v2 framing (DLT_LINUX_SLL2), its kernel BPF
filter, and a libc ``open_memstream`` buffer that libpcap's own ``pcap_dump``
writes packet records into, so that no Python code runs per packet.
Callers: capture/lanes.py (one Capture per lane: ``fileno()`` for the
selector, ``read_batch()`` when readable, ``stats()`` for STATUS),
daemon.check (``load_libpcap``) and the privileged tests; the records of a
Batch are summed by counting.py (``count_records``, ``count_fixed``).

How a batch is read: ``pcap_dispatch`` is given ``pcap_dump`` (a C function
inside libpcap) as its callback and a ``pcap_dumper_t`` writing into a
memory stream.  After the dispatch the stream is flushed, the bytes written
are copied out, and the stream is rewound, so its buffer never grows past the
largest batch.  Each record is a 16-byte ``struct pcap_sf_pkthdr`` followed by
``caplen`` captured bytes (``PCAP_SF_PKTHDR`` in wire.py).

Immediate mode is deliberately not used: it turns off TPACKET_V3 block
batching, which is what keeps the per-packet cost low.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

from ..defaults import (
    BUFFER_MIB_DEFAULT,
    CAPTURE_TIMEOUT_MS_DEFAULT,
    INTERFACE_DEFAULT,
    SNAPLEN_BYTES_DEFAULT,
)
from ..libc import libc
from ..wire import PCAP_SF_PKTHDR

log = logging.getLogger(__name__)

DEFAULT_FILTER = "ip or ip6"  # parse.py sorts out TCP/UDP/ICMP and extension headers

DLT_LINUX_SLL2 = 276  # Linux cooked capture v2 (20-byte header, carries the ifindex)
PCAP_ERRBUF_SIZE = 256
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
SEEK_SET = 0
FSETLOCKING_BYCALLER = 2  # stdio_ext.h: the stream's owner does the locking (here: none needed)
PCAP_MAGIC_MICROSECONDS = 0xA1B2C3D4

# The fallback name when ctypes.util.find_library cannot ask ldconfig.
LIBPCAP_FALLBACK_NAME = "libpcap.so.0.8"

# struct pcap_file_header (pcap/pcap.h), the savefile header pcap_dump_fopen
# writes first, 24 bytes, native byte order:
#   bpf_u_int32 magic;          PCAP_MAGIC_MICROSECONDS
#   u_short     version_major;  2
#   u_short     version_minor;  4
#   bpf_int32   thiszone;       0
#   bpf_u_int32 sigfigs;        0
#   bpf_u_int32 snaplen;
#   bpf_u_int32 linktype;       DLT_LINUX_SLL2 here
PCAP_FILE_HEADER = struct.Struct("=IHHiIII")

# The members of pcap_sf_pkthdr (wire.PCAP_SF_PKTHDR, the record header pcap_dump
# writes before each packet) that Batch.newest_timestamp_s reads.
_PCAP_SF_PKTHDR_TS_CAPLEN = PCAP_SF_PKTHDR.view("ts_sec", "ts_usec", "caplen")


class PcapStatus(IntEnum):
    """Return codes of pcap_activate and friends (pcap/pcap.h)."""

    OK = 0
    WARNING = 1
    WARNING_PROMISC_NOTSUP = 2
    WARNING_TSTAMP_TYPE_NOTSUP = 3
    ERROR = -1
    ERROR_BREAK = -2
    ERROR_NOT_ACTIVATED = -3
    ERROR_ACTIVATED = -4
    ERROR_NO_SUCH_DEVICE = -5
    ERROR_RFMON_NOTSUP = -6
    ERROR_NOT_RFMON = -7
    ERROR_PERM_DENIED = -8
    ERROR_IFACE_NOT_UP = -9
    ERROR_CANTSET_TSTAMP_TYPE = -10
    ERROR_PROMISC_PERM_DENIED = -11
    ERROR_TSTAMP_PRECISION_NOTSUP = -12


class CaptureError(Exception):
    """A libpcap call failed; ``status`` is libpcap's return code when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LibpcapMissing(CaptureError):
    """libpcap could not be loaded."""


class CapturePermissionError(CaptureError):
    """The kernel refused the packet socket: privileges are missing."""


class CaptureFilterError(CaptureError):
    """libpcap could not compile a capture filter, or the kernel refused it."""


class CaptureStats(NamedTuple):
    """struct pcap_stat, with names and ints.  Counters wrap at 2**32 (u_int in C)."""

    received: int
    dropped: int
    interface_dropped: int


class Batch(NamedTuple):
    """Packet records from one dispatch: PCAP_SF_PKTHDR + caplen bytes each."""

    records: bytes
    count: int  # type: ignore[assignment]  # shadows tuple.count, the brief's name

    @property
    def newest_timestamp_s(self) -> float:
        """The latest record time stamp (0.0 when empty), found by a walk on request.

        Not taken on the counting path: it visits every record, and the daemon
        does not need it (the tests do).
        """
        records = self.records
        size = len(records)
        newest = 0
        position = 0
        unpack_from = _PCAP_SF_PKTHDR_TS_CAPLEN.unpack_from
        header_bytes = PCAP_SF_PKTHDR.size
        while position + header_bytes <= size:
            seconds, microseconds, caplen = unpack_from(records, position)
            stamp = seconds * 1_000_000 + microseconds
            if stamp > newest:
                newest = stamp
            position += header_bytes + caplen
        return newest / 1e6


EMPTY_BATCH = Batch(b"", 0)


class bpf_program(ctypes.Structure):  # noqa: N801 - the C name
    """struct bpf_program (pcap/bpf.h): u_int bf_len; struct bpf_insn *bf_insns."""

    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class pcap_stat(ctypes.Structure):  # noqa: N801 - the C name
    """struct pcap_stat (pcap/pcap.h) on Linux: u_int ps_recv, ps_drop, ps_ifdrop."""

    _fields_ = [
        ("ps_recv", ctypes.c_uint),
        ("ps_drop", ctypes.c_uint),
        ("ps_ifdrop", ctypes.c_uint),
    ]


class timeval(ctypes.Structure):  # noqa: N801 - the C name
    """struct timeval: time_t tv_sec; suseconds_t tv_usec (both long on Linux)."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class pcap_pkthdr(ctypes.Structure):  # noqa: N801 - the C name
    """struct pcap_pkthdr (pcap/pcap.h): struct timeval ts; bpf_u_int32 caplen, len."""

    _fields_ = [("ts", timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


# typedef void (*pcap_handler)(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes);
PCAP_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(pcap_pkthdr), ctypes.POINTER(ctypes.c_ubyte)
)

_libpcap: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _declare_libpcap(lib: ctypes.CDLL) -> None:
    """argtypes and restype of every libpcap call this module makes."""
    p = ctypes.c_void_p  # pcap_t *, pcap_dumper_t *, FILE *
    c_int = ctypes.c_int
    prototypes: dict[str, tuple[list[type], type | None]] = {
        "pcap_create": ([ctypes.c_char_p, ctypes.c_char_p], p),
        "pcap_set_snaplen": ([p, c_int], c_int),
        "pcap_set_buffer_size": ([p, c_int], c_int),
        "pcap_set_timeout": ([p, c_int], c_int),
        "pcap_activate": ([p], c_int),
        "pcap_set_datalink": ([p, c_int], c_int),
        "pcap_datalink": ([p], c_int),
        "pcap_compile": (
            [p, ctypes.POINTER(bpf_program), ctypes.c_char_p, c_int, ctypes.c_uint32],
            c_int,
        ),
        "pcap_setfilter": ([p, ctypes.POINTER(bpf_program)], c_int),
        "pcap_freecode": ([ctypes.POINTER(bpf_program)], None),
        "pcap_setnonblock": ([p, c_int, ctypes.c_char_p], c_int),
        "pcap_get_selectable_fd": ([p], c_int),
        "pcap_stats": ([p, ctypes.POINTER(pcap_stat)], c_int),
        "pcap_geterr": ([p], ctypes.c_char_p),
        "pcap_statustostr": ([c_int], ctypes.c_char_p),
        "pcap_close": ([p], None),
        "pcap_dispatch": ([p, c_int, PCAP_HANDLER, p], c_int),
        "pcap_dump_fopen": ([p, p], p),
        "pcap_dump_close": ([p], None),
        "pcap_lib_version": ([], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in prototypes.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype


def _declare_libc(lib: ctypes.CDLL) -> None:
    """argtypes and restype of the stdio calls behind the memory stream."""
    p = ctypes.c_void_p
    lib.open_memstream.argtypes = [ctypes.POINTER(p), ctypes.POINTER(ctypes.c_size_t)]
    lib.open_memstream.restype = p
    lib.fflush.argtypes = [p]
    lib.fflush.restype = ctypes.c_int
    lib.fseek.argtypes = [p, ctypes.c_long, ctypes.c_int]
    lib.fseek.restype = ctypes.c_int
    lib.fclose.argtypes = [p]
    lib.fclose.restype = ctypes.c_int
    lib.free.argtypes = [p]
    lib.free.restype = None
    # glibc's stdio_ext.h: int __fsetlocking(FILE *, int); optional (the stream works without).
    fsetlocking = getattr(lib, "__fsetlocking", None)
    if fsetlocking is not None:
        fsetlocking.argtypes = [p, ctypes.c_int]
        fsetlocking.restype = ctypes.c_int


def load_libpcap(candidates: Sequence[str] | None = None) -> ctypes.CDLL:
    """libpcap with its prototypes declared, loaded once per process.

    ``candidates`` replaces the usual names (ldconfig's answer for "pcap", then
    LIBPCAP_FALLBACK_NAME); with it nothing is cached, which is how the tests
    simulate a host without libpcap.
    """
    global _libpcap
    if candidates is None and _libpcap is not None:
        return _libpcap
    if candidates is None:
        found = ctypes.util.find_library("pcap")
        names = [name for name in (found, LIBPCAP_FALLBACK_NAME) if name]
    else:
        names = list(candidates)
    errors: list[str] = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as err:
            errors.append(str(err))
            continue
        try:
            _declare_libpcap(lib)
        except AttributeError as err:
            raise LibpcapMissing(
                f"{name} lacks a libpcap call this program needs ({err}); libpcap 1.10 or "
                "later is required: apt-get install libpcap0.8"
            ) from err
        if candidates is None:
            _libpcap = lib
        return lib
    raise LibpcapMissing(
        "libpcap is not installed (tried "
        + ", ".join(names or ["nothing"])
        + "): install the Debian package libpcap0.8 (apt-get install libpcap0.8)"
        + (f"; {'; '.join(errors)}" if errors else "")
    )


def load_libc() -> ctypes.CDLL:
    """The C library (open_memstream, fflush, fseek, fclose, free), declared once."""
    global _libc
    if _libc is None:
        try:
            lib = libc()
        except OSError as err:
            raise CaptureError(f"cannot load the C library: {err}") from err
        _declare_libc(lib)
        _libc = lib
    return _libc


def _status_text(lib: ctypes.CDLL, status: int) -> str:
    text = lib.pcap_statustostr(status)
    return text.decode("utf-8", "replace") if text else f"status {status}"


class Capture:
    """One libpcap handle in cooked v2 framing, read in non-blocking batches."""

    def __init__(
        self,
        interface: str = INTERFACE_DEFAULT,
        snaplen_bytes: int = SNAPLEN_BYTES_DEFAULT,
        buffer_bytes: int = BUFFER_MIB_DEFAULT << 20,
        timeout_ms: int = CAPTURE_TIMEOUT_MS_DEFAULT,
        bpf_filter: str = DEFAULT_FILTER,
    ) -> None:
        self.interface = interface
        self._lib = load_libpcap()
        self._libc = load_libc()
        self._handle: int | None = None
        self._dumper: int | None = None
        self._stream: int | None = None
        # open_memstream keeps these two up to date on each fflush.
        self._stream_buffer = ctypes.c_void_p()
        self._stream_bytes = ctypes.c_size_t()
        self._dump_callback = PCAP_HANDLER(
            ctypes.cast(self._lib.pcap_dump, ctypes.c_void_p).value  # type: ignore[arg-type]
        )
        try:
            self._open(interface, snaplen_bytes, buffer_bytes, timeout_ms, bpf_filter)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------

    def _open(
        self,
        interface: str,
        snaplen_bytes: int,
        buffer_bytes: int,
        timeout_ms: int,
        bpf_filter: str,
    ) -> None:
        lib = self._lib
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        handle = lib.pcap_create(interface.encode(), errbuf)
        if not handle:
            raise CaptureError(
                f"pcap_create({interface!r}): {errbuf.value.decode(errors='replace')}"
            )
        self._handle = handle
        for call, value in (
            (lib.pcap_set_snaplen, snaplen_bytes),
            (lib.pcap_set_buffer_size, buffer_bytes),
            (lib.pcap_set_timeout, timeout_ms),
        ):
            status = call(handle, value)
            if status != 0:
                raise CaptureError(
                    f"{call.__name__}({value}) on {interface!r}: {_status_text(lib, status)}",
                    status,
                )
        self._activate(handle, interface)
        status = lib.pcap_set_datalink(handle, DLT_LINUX_SLL2)
        if status != 0 or lib.pcap_datalink(handle) != DLT_LINUX_SLL2:
            raise CaptureError(
                f"interface {interface!r} does not offer Linux cooked v2 framing "
                f"(DLT_LINUX_SLL2, libpcap 1.10 or later): {self._error_text()}",
                status,
            )
        self._set_filter(handle, bpf_filter)
        if lib.pcap_setnonblock(handle, 1, errbuf) != 0:
            raise CaptureError(f"pcap_setnonblock: {errbuf.value.decode(errors='replace')}")
        self._open_stream(handle)
        log.debug(
            "capturing on %r: snaplen %d bytes, buffer %d bytes, block timeout %d ms, filter %r",
            interface,
            snaplen_bytes,
            buffer_bytes,
            timeout_ms,
            bpf_filter,
        )

    def _activate(self, handle: int, interface: str) -> None:
        status = self._lib.pcap_activate(handle)
        if status == 0:
            return
        if status > 0:
            log.warning(
                "pcap_activate(%r): %s: %s",
                interface,
                _status_text(self._lib, status),
                self._error_text(),
            )
            return
        if status in (PcapStatus.ERROR_PERM_DENIED, PcapStatus.ERROR_PROMISC_PERM_DENIED):
            raise CapturePermissionError(
                f"no permission to capture on {interface!r} ({self._error_text()}): run as root "
                "or grant the capabilities CAP_NET_RAW and CAP_NET_ADMIN",
                status,
            )
        if status == PcapStatus.ERROR_NO_SUCH_DEVICE:
            raise CaptureError(f"no such interface {interface!r}: {self._error_text()}", status)
        detail = self._error_text() if status == PcapStatus.ERROR else ""
        raise CaptureError(
            f"pcap_activate({interface!r}): {_status_text(self._lib, status)}"
            + (f": {detail}" if detail else ""),
            status,
        )

    def _set_filter(self, handle: int, bpf_filter: str) -> None:
        program = bpf_program()
        if (
            self._lib.pcap_compile(
                handle, ctypes.byref(program), bpf_filter.encode(), 1, PCAP_NETMASK_UNKNOWN
            )
            != 0
        ):
            raise CaptureFilterError(f"bad capture filter {bpf_filter!r}: {self._error_text()}")
        try:
            if self._lib.pcap_setfilter(handle, ctypes.byref(program)) != 0:
                raise CaptureFilterError(f"pcap_setfilter({bpf_filter!r}): {self._error_text()}")
        finally:
            self._lib.pcap_freecode(ctypes.byref(program))

    def _open_stream(self, handle: int) -> None:
        libc = self._libc
        stream = libc.open_memstream(
            ctypes.byref(self._stream_buffer), ctypes.byref(self._stream_bytes)
        )
        if not stream:
            errno = ctypes.get_errno()
            raise CaptureError(f"open_memstream failed (errno {errno})")
        self._stream = stream
        # Only this object's thread writes the stream: spare pcap_dump's two fwrite
        # calls a packet the stream lock.
        fsetlocking = getattr(libc, "__fsetlocking", None)
        if fsetlocking is not None:
            fsetlocking(stream, FSETLOCKING_BYCALLER)
        dumper = self._lib.pcap_dump_fopen(handle, stream)
        if not dumper:
            raise CaptureError(f"pcap_dump_fopen: {self._error_text()}")
        self._dumper = dumper  # from here on pcap_dump_close fcloses the stream
        # The savefile header comes first: check it once, then rewind over it.
        libc.fflush(stream)
        if self._stream_bytes.value != PCAP_FILE_HEADER.size or not self._stream_buffer.value:
            raise CaptureError(
                f"pcap_dump_fopen wrote {self._stream_bytes.value} header bytes, "
                f"expected {PCAP_FILE_HEADER.size}"
            )
        header = PCAP_FILE_HEADER.unpack(
            ctypes.string_at(self._stream_buffer.value, PCAP_FILE_HEADER.size)
        )
        if header[0] != PCAP_MAGIC_MICROSECONDS or header[6] != DLT_LINUX_SLL2:
            raise CaptureError(f"unexpected savefile header from pcap_dump_fopen: {header}")
        libc.fseek(stream, 0, SEEK_SET)

    def _error_text(self) -> str:
        if not self._handle:
            return ""
        text = self._lib.pcap_geterr(self._handle)
        return text.decode("utf-8", "replace") if text else ""

    # -- use ------------------------------------------------------------------

    def fileno(self) -> int:
        """The packet socket's descriptor, for select/poll (readable = a block is ready)."""
        if not self._handle:
            raise CaptureError("capture is closed")
        fd: int = self._lib.pcap_get_selectable_fd(self._handle)
        if fd < 0:
            raise CaptureError(f"{self.interface!r} has no selectable descriptor")
        return fd

    def read_batch(self, max_packets: int = 2048) -> Batch:
        """Up to max_packets records that are ready now; an empty Batch when none are."""
        if not self._handle or not self._dumper or not self._stream:
            raise CaptureError("capture is closed")
        count = self._lib.pcap_dispatch(
            self._handle, max_packets, self._dump_callback, self._dumper
        )
        if count < 0:
            if count == PcapStatus.ERROR_BREAK:
                return EMPTY_BATCH
            raise CaptureError(f"pcap_dispatch on {self.interface!r}: {self._error_text()}", count)
        if count == 0:
            return EMPTY_BATCH
        stream = self._stream
        if self._libc.fflush(stream) != 0:
            errno = ctypes.get_errno()
            self._libc.fseek(stream, 0, SEEK_SET)
            raise CaptureError(f"{count} packets lost: memory stream flush failed (errno {errno})")
        size = self._stream_bytes.value
        records = ctypes.string_at(self._stream_buffer.value, size)  # type: ignore[arg-type]
        self._libc.fseek(stream, 0, SEEK_SET)
        return Batch(records, count)

    def stats(self) -> CaptureStats:
        """libpcap's counters since the handle was activated.

        On ``any`` the kernel counts both copies of a loopback packet in
        ``received`` while only one is delivered.
        """
        if not self._handle:
            raise CaptureError("capture is closed")
        counters = pcap_stat()
        if self._lib.pcap_stats(self._handle, ctypes.byref(counters)) != 0:
            raise CaptureError(f"pcap_stats on {self.interface!r}: {self._error_text()}")
        return CaptureStats(counters.ps_recv, counters.ps_drop, counters.ps_ifdrop)

    def close(self) -> None:
        """Release the dumper, its memory stream and the handle; safe to call twice."""
        if self._dumper:
            self._lib.pcap_dump_close(self._dumper)  # fcloses the stream too
            self._dumper = None
            self._stream = None
        elif self._stream:
            self._libc.fclose(self._stream)
            self._stream = None
        if self._stream_buffer.value:
            # fclose left the final buffer here; open_memstream's caller frees it.
            self._libc.free(self._stream_buffer)
            self._stream_buffer.value = None
        if self._handle:
            self._lib.pcap_close(self._handle)
            self._handle = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - finalizers must not raise
            pass
