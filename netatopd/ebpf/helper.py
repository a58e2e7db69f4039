"""The optional in-kernel ownership helper: load, drain, report, unload.

Owns the file descriptors of the helper's maps, programs and perf events
(nothing is pinned, so the kernel frees everything once they are closed,
also when the process dies) and the drain statistics.  Callers: the daemon
(``load`` at start, ``status`` for STATUS, ``close`` at exit),
``ownership.KernelOwners`` (``changes`` and ``drain`` each pass), the
privileged tests and bench/bench_ebpf.py.

Records come from ``programs.py``; see its docstring for what is recorded
when.  With the kernel's BTF the helper also loads ``execids.py``'s exec
program and reads its ring (``exec_records``): the identity of each program
at its exec, for ``ownership.IdentityBook``.

``drain`` returns the socket records with the addresses normalised: 4 bytes for
IPv4 (an IPv4-mapped IPv6 address becomes its 4 IPv4 bytes), 16 for IPv6,
and an empty remote address (port 0) for unconnected UDP and listeners.
A wildcard local address stays all zeros.  Times are CLOCK_MONOTONIC
nanoseconds (``time.monotonic_ns()``); pids are those of the initial pid
namespace.

Only sockets of one network namespace are recorded: by default the loading
process's own (the daemon runs inside the namespace it captures), or the
one whose nsfs inode ``load(netns_inode=...)`` names; with
``load(every_namespace=True)`` (the kernel counting path) every
namespace's, each SEND/RECV record naming its socket by cookie.  The programs leave
at once for any other socket and count it (``ebpf_other_netns`` in STATUS),
so the same tuple in two namespaces (containers, tests running at once)
never mixes and other namespaces' traffic does not fill the maps.

The programs' ``struct sock`` / ``struct net`` offsets come from the
kernel's BTF (``btf_path``, normally /sys/kernel/btf/vmlinux); when it is
missing or unusable, from ``calibrate.py`` (probe sockets on loopback, read
by a short-lived program).  STATUS says which (``ebpf_offsets``).

The send and receive programs run on every sendmsg/recvmsg.  With BTF they are
tp_btf programs (BPF_PROG_TYPE_TRACING, expected attach type BPF_TRACE_RAW_TP,
attach_btf_id the kernel's ``btf_trace_sock_send_length`` /
``btf_trace_sock_recv_length`` typedef, attached by BPF_RAW_TRACEPOINT_OPEN
without a name): they get the tracepoint's arguments, ``sk`` and ``ret``, and
``sk`` is a BTF-typed pointer, which lets the kernel path's programs ask the
socket's own storage first (the per-socket fast path, see programs.py; its
maps ``ntp_sock_seen`` and ``ntp_generation``, the generation moved on by
``changes``/``drain`` once a REPORT_INTERVAL_NS or by ``advance_generation``).
When the tp_btf load or attach is refused they are raw tracepoint programs
(BPF_RAW_TRACEPOINT_OPEN by name: the same arguments, ``sk`` untyped), which
also spares the kernel building the tracepoint's record for each call; they
are perf-event tracepoint programs (reading the record) when the offsets were
calibrated, when the BTF does not show the expected arguments, when
``load(raw_tracepoints=False)`` asks for it, or when the raw load or attach
fails.  Each way that fails closes what it opened before the next is tried.
All record the same.  STATUS says which (``ebpf_attach``).  The state and exec
programs are always perf-event tracepoint programs.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
import weakref
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from ..wire import IPV4_MAPPED_PREFIX
from . import syscalls
from .asm import Item, assemble, instruction_count
from .btf import (
    VMLINUX_BTF_PATH,
    Btf,
    BtfError,
    BtfKind,
    NetOffsets,
    SockOffsets,
    net_offsets,
    sock_offsets,
    u64_struct_btf,
)
from .calibrate import CalibrationError, calibrate
from .execids import EXEC_RING_BYTES, ExecRecord, ExecRing, exec_program, task_offsets
from .programs import (
    AF_INET,
    CHANGES,
    CONNECT_KEY,
    COUNTERS,
    EVERY_NAMESPACE,
    FLOW_KEY,
    GENERATION,
    LICENSE,
    OBJECT_NAME_PREFIX,
    OWNER,
    REPORT_INTERVAL_NS,
    SEEN,
    SOCK_SEEN,
    SOCK_SEEN_MEMBERS,
    SOCK_SEEN_NAME,
    TRACEFS_ROOT,
    Counter,
    FastPathFds,
    MapFds,
    OwnerKind,
    TracepointError,
    TracepointFormat,
    btf_length_context,
    length_program,
    raw_length_context,
    read_format,
    state_program,
)
from .syscalls import AttachType, BpfCmd, BpfSyscallError, BtfTypes, MapFlag, MapType, ProgType

__all__ = [
    "AttachKind",
    "EbpfUnavailable",
    "FlowOwner",
    "KernelOwnership",
    "OffsetSource",
    "OwnerKind",
    "loaded_object_ids",
    "namespace_inode",
]

log = logging.getLogger(__name__)

# Map sizes: the flows that can be recorded between two drains (three
# records per TCP flow at most: IO, OPEN, CLOSE) and the connect() calls in flight.
# Flows recorded between two drains (the daemon drains every captured batch, about
# every 10 ms under traffic). The kernel's batch lookup walks every bucket, so a
# larger map costs every drain: 32768 entries took 54 us per empty drain, 8192 took 23.
FLOW_MAP_ENTRIES = 8192
# Every namespace (the kernel counting path): the records of the whole host's sockets,
# where a short-lived process's record is its only owner once its socket is closed.
# 8192 filled while the daemon was held up on a loaded host (issue 12: the records
# of short-lived processes refused, ebpf_flow_update_failed): eight times the room.
EVERY_NAMESPACE_FLOW_MAP_ENTRIES = 65536
# Flows whose last reported thread the programs remember (LRU: the oldest are
# forgotten first, and then merely reported again).
SEEN_MAP_ENTRIES = 16384
CONNECT_MAP_ENTRIES = 8192
BATCH_CHUNK_ENTRIES = 1024
VERIFIER_LOG_BYTES = 1 << 20
ATTACH_CPU = 0  # one perf event per tracepoint is enough: the program runs on every CPU
# The raw tracepoint arguments the send/recv programs read, as the BTF spells them.
RAW_LENGTH_ARGUMENTS = ["struct sock *", "int", "int"]
# The kernel's BTF typedef a tp_btf program on a raw tracepoint is attached by.
BTF_TRACE_PREFIX = "btf_trace_"

SELF_NETNS_PATH = Path("/proc/self/ns/net")


class EbpfUnavailable(Exception):
    """The helper cannot be loaded here; ``reason`` is a sentence for STATUS and logs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class AttachKind(StrEnum):
    """How the send/recv programs are attached (``ebpf_attach`` in STATUS)."""

    NONE = "none"  # not loaded yet
    BTF_TRACEPOINT = "btf_tracepoint"  # tp_btf: the arguments, sk typed by the kernel's BTF
    RAW_TRACEPOINT = "raw_tracepoint"  # BPF_RAW_TRACEPOINT_OPEN: the arguments only
    PERF_TRACEPOINT = "perf_tracepoint"  # perf_event_open: the kernel fills the record first


class OffsetSource(StrEnum):
    """Where the struct offsets the programs use came from (``ebpf_offsets`` in STATUS)."""

    NONE = "none"  # not loaded yet
    BTF = "btf"  # the kernel's BTF
    CALIBRATED = "calibrated"  # calibrate.py, with probe sockets


class FlowOwner(NamedTuple):
    """One record of a flow's owner, as drained."""

    protocol: int  # IPPROTO_TCP or IPPROTO_UDP
    local_addr: bytes  # 4 (IPv4, IPv4-mapped included) or 16 bytes
    local_port: int
    remote_addr: bytes  # empty for unconnected UDP and listeners
    remote_port: int  # 0 for unconnected UDP and listeners
    tgid: int
    tid: int
    comm: str
    time_ns: int  # CLOCK_MONOTONIC
    kind: OwnerKind
    closed: bool  # the socket reached TCP_CLOSE (never set for UDP)
    cookie: int = 0  # the socket cookie (SEND/RECV records); 0: none yet, or not read


class _Program(NamedTuple):
    name: str  # object name in the kernel
    category: str
    tracepoint: str


PROGRAMS = (
    _Program("ntp_send", "sock", "sock_send_length"),
    _Program("ntp_recv", "sock", "sock_recv_length"),
    _Program("ntp_state", "sock", "inet_sock_set_state"),
)
LENGTH_PROGRAMS = {"ntp_send": OwnerKind.SEND, "ntp_recv": OwnerKind.RECV}
# Identity at exec (execids.py): loaded when the kernel's BTF gives the task offsets.
EXEC_PROGRAM = _Program("ntp_exec", "sched", "sched_process_exec")
EXEC_RING_NAME = "ntp_exec_ring"


def _address(family: int, raw: bytes) -> bytes:
    """4 bytes for IPv4 and IPv4-mapped IPv6, else 16."""
    if family == AF_INET:
        return raw[:4]
    if raw[:12] == IPV4_MAPPED_PREFIX:
        return raw[12:16]
    return raw


def decode_flow(key: bytes, value: bytes) -> FlowOwner:
    """A FlowOwner from one (struct flow_key, struct owner) pair of the flows map."""
    laddr, raddr, lport, rport, family, _slot, protocol = FLOW_KEY.unpack(key)
    time_ns, tid, tgid, comm, kind, closed, cookie = OWNER.unpack(value)
    remote = _address(family, raddr)
    if rport == 0 and not any(remote):
        remote = b""
    return FlowOwner(
        protocol=protocol,
        local_addr=_address(family, laddr),
        local_port=lport,
        remote_addr=remote,
        remote_port=rport,
        tgid=tgid,
        tid=tid,
        comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
        time_ns=time_ns,
        kind=OwnerKind(kind),
        closed=bool(closed),
        cookie=cookie,
    )


def _close_all(fds: list[int], perf_fds: list[int], raw_fds: list[int], detach: bool) -> None:
    """Disable the perf events (when ``detach``) and close every fd: the raw tracepoint
    attachments and perf events first (closing detaches), then the rest; empties the
    lists."""
    for fd in perf_fds:
        if detach:
            try:
                syscalls.perf_event_disable(fd)
            except BpfSyscallError as err:
                log.debug("perf event %d: %s", fd, err)
    for fd in [*raw_fds, *perf_fds, *fds]:
        try:
            os.close(fd)
        except OSError as err:
            log.debug("close(%d): %s", fd, err.strerror)
    raw_fds.clear()
    perf_fds.clear()
    fds.clear()


_live: weakref.WeakSet[KernelOwnership] = weakref.WeakSet()
_live_lock = threading.Lock()


def _close_in_child() -> None:
    """After fork(): the child drops its copies of every helper fd.

    The perf events are not disabled (that would stop them for the parent
    too); the child only stops holding the objects alive, so nothing stays
    loaded once the parent closes its helper, whatever the children do.
    """
    for instance in list(_live):
        instance._forget_after_fork()


os.register_at_fork(after_in_child=_close_in_child)


def namespace_inode(path: Path = SELF_NETNS_PATH) -> int:
    """The nsfs inode of a namespace file (``/proc/PID/ns/net``, ``/run/netns/NAME``).

    The default is the calling process's network namespace.  EbpfUnavailable
    when the file cannot be looked at.
    """
    try:
        return os.stat(path).st_ino
    except OSError as err:
        raise EbpfUnavailable(
            f"cannot find the network namespace at {path} ({err.strerror})"
        ) from err


def _ensure_tracefs(root: Path) -> None:
    try:
        if (root / "events").is_dir():
            return
    except OSError as err:
        raise EbpfUnavailable(
            f"cannot look into tracefs at {root} ({err.strerror}): the helper needs root"
        ) from err
    try:
        syscalls.mount_tracefs(str(root))
    except BpfSyscallError as err:
        raise EbpfUnavailable(
            f"tracefs is not mounted at {root} and mounting it failed ({os.strerror(err.errno)})"
        ) from err
    log.info("mounted tracefs at %s", root)
    if not (root / "events").is_dir():
        raise EbpfUnavailable(f"tracefs mounted at {root} has no events directory")


def _reason(what: str, err: BpfSyscallError) -> str:
    if err.errno in (errno.EPERM, errno.EACCES):
        return (
            f"{what} was refused ({os.strerror(err.errno)}): "
            "the helper needs root (CAP_BPF and CAP_PERFMON)"
        )
    return f"{what} failed: {err}"


class KernelOwnership:
    """The loaded helper: three socket programs attached, five maps, their statistics;
    with BTF also ntp_exec and its ring (execids.py); with tp_btf send/recv programs
    on every namespace also the per-socket storage and the generation (programs.py)."""

    def __init__(self) -> None:
        # Use load(); the constructor only prepares empty state.
        self._fds: list[int] = []  # maps, programs, stats: closed last
        self._perf_fds: list[int] = []  # perf events: disabled and closed first
        self._raw_fds: list[int] = []  # raw tracepoint attachments: closed first
        self._attach_kind = AttachKind.NONE
        self._maps: MapFds | None = None
        # The changes counter mapped into this process (None: read with a syscall).
        self._changes_view: mmap.mmap | None = None
        # The per-socket fast path's maps (tp_btf programs, every namespace), and the
        # generation: mapped writable (None: written with a syscall), when advanced.
        self._fast: FastPathFds | None = None
        self._generation_view: mmap.mmap | None = None
        self._generation = 0
        self._generation_advanced_ns = 0
        self._prog_fds: dict[str, int] = {}
        self._flow_entries = FLOW_MAP_ENTRIES
        self._netns_inode = 0
        self._cpu_count = 1
        self._run_stats = False
        self._flows_last_drain = 0
        self._flows_peak_drain = 0
        self._flows_drained = 0
        self._drains = 0
        self._load_ms = 0.0
        self._offsets_source = OffsetSource.NONE
        # The exec program's ring (None: not loaded) and why it is not, for STATUS.
        self._exec_ring: ExecRing | None = None
        self._exec_ring_fd = -1
        self._exec_note = "not loaded"
        self._btf: Btf | None = None  # the kernel's BTF, once read (dropped after load)
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _close_all, self._fds, self._perf_fds, self._raw_fds, True
        )

    @classmethod
    def load(
        cls,
        *,
        tracefs_root: Path = TRACEFS_ROOT,
        btf_path: Path = VMLINUX_BTF_PATH,
        flow_entries: int | None = None,
        run_stats: bool = False,
        netns_inode: int | None = None,
        every_namespace: bool = False,
        raw_tracepoints: bool = True,
        btf_tracepoints: bool = True,
    ) -> KernelOwnership:
        """Create the maps, load and attach the programs; EbpfUnavailable when impossible.

        Only sockets of the network namespace whose nsfs inode is
        ``netns_inode`` are recorded; None (the default) means the calling
        process's own namespace (``namespace_inode()``); ``every_namespace``
        records the sockets of every namespace (the kernel counting path, whose
        flows are sockets named by cookie; ``netns_inode`` is then 0).

        ``flow_entries``: the records the flows map holds between two drains
        (default ``FLOW_MAP_ENTRIES``, ``EVERY_NAMESPACE_FLOW_MAP_ENTRIES`` for
        every namespace).

        Struct offsets come from the BTF at ``btf_path``; when it is missing
        or unusable (tests force this with a path that does not exist) they
        are calibrated with probe sockets in the calling thread's namespace
        (``calibrate.py``); EbpfUnavailable names both failures.

        ``run_stats`` turns on the kernel's run time/count statistics (the
        BPF_ENABLE_STATS fd, equivalent to kernel.bpf_stats_enabled=1 while
        the helper is loaded); it costs two clock reads per program run.
        Our own event counters are always kept.

        ``btf_tracepoints`` and ``raw_tracepoints`` (both by default) attach the
        send/recv programs as tp_btf programs, else raw tracepoints, when the BTF
        allows (see the module docstring); ``btf_tracepoints=False`` starts with
        the raw ones, ``raw_tracepoints=False`` keeps the perf-event tracepoint
        programs (bench_rawtp.py and the tests).
        """
        if flow_entries is None:
            flow_entries = EVERY_NAMESPACE_FLOW_MAP_ENTRIES if every_namespace else FLOW_MAP_ENTRIES
        if every_namespace:
            netns_inode = EVERY_NAMESPACE
        elif netns_inode is None:
            netns_inode = namespace_inode()
        elif not 0 < netns_inode <= 0xFFFFFFFF:
            raise ValueError(f"netns_inode {netns_inode} is not a 32-bit inode number")
        self = cls()
        self._flow_entries = flow_entries
        self._netns_inode = netns_inode
        started = _monotonic_ms()
        try:
            self._load(tracefs_root, btf_path, run_stats, raw_tracepoints, btf_tracepoints)
        except BaseException:
            self.close()
            raise
        self._load_ms = _monotonic_ms() - started
        with _live_lock:
            _live.add(self)
        log.info(
            "eBPF ownership helper loaded in %.0f ms for %s",
            self._load_ms,
            "every network namespace" if every_namespace else f"network namespace {netns_inode}",
        )
        return self

    def _load(
        self,
        tracefs_root: Path,
        btf_path: Path,
        run_stats: bool,
        raw_tracepoints: bool,
        btf_tracepoints: bool,
    ) -> None:
        _ensure_tracefs(tracefs_root)
        try:
            formats = {
                p.name: read_format(p.category, p.tracepoint, tracefs_root) for p in PROGRAMS
            }
        except TracepointError as err:
            raise EbpfUnavailable(
                f"tracepoint not usable: {err} (sock_send_length needs Linux 6.3+)"
            ) from err
        sock, net = self._offsets(btf_path, formats["ntp_send"])
        try:
            self._cpu_count = syscalls.possible_cpu_count()
            self._maps = MapFds(
                flows=self._keep(
                    syscalls.map_create(
                        MapType.HASH, FLOW_KEY.size, OWNER.size, self._flow_entries, "ntp_flows"
                    )
                ),
                connect=self._keep(
                    syscalls.map_create(
                        MapType.LRU_HASH,
                        CONNECT_KEY.size,
                        OWNER.size,
                        CONNECT_MAP_ENTRIES,
                        "ntp_connect",
                    )
                ),
                counters=self._keep(
                    syscalls.map_create(MapType.PERCPU_ARRAY, 4, COUNTERS.size, 1, "ntp_counters")
                ),
                seen=self._keep(
                    syscalls.map_create(
                        MapType.LRU_HASH, FLOW_KEY.size, SEEN.size, SEEN_MAP_ENTRIES, "ntp_seen"
                    )
                ),
                changes=self._keep(self._changes_map()),
            )
        except BpfSyscallError as err:
            raise EbpfUnavailable(_reason("creating the BPF maps", err)) from err
        if run_stats:
            try:
                self._keep(syscalls.enable_run_stats())
                self._run_stats = True
            except BpfSyscallError as err:
                log.warning("BPF run statistics not available: %s", err)
        inode = self._netns_inode
        # tp_btf, else raw tracepoints, else perf-event tracepoints: each tried when the
        # one before is refused.
        why_not_raw = self._raw_refused(raw_tracepoints, sock)
        if why_not_raw is None:
            why_not_btf = "asked for (btf_tracepoints=False)" if not btf_tracepoints else None
            if why_not_btf is None:
                why_not_btf = self._attach_btf(sock, net)
            if why_not_btf is not None:
                log.info("send/recv programs not on BTF tracepoints: %s", why_not_btf)
                why_not_raw = self._attach_raw(sock, net)
        if why_not_raw is not None:
            log.info("send/recv programs on perf-event tracepoints: %s", why_not_raw)
            self._attach_kind = AttachKind.PERF_TRACEPOINT
        builds = {
            name: length_program(kind, formats[name], sock, self._maps, net, inode)
            for name, kind in LENGTH_PROGRAMS.items()
            if why_not_raw is not None
        }
        builds["ntp_state"] = state_program(formats["ntp_state"], self._maps, net, inode)
        perf_programs = [program for program in PROGRAMS if program.name in builds]
        for program in perf_programs:
            self._prog_fds[program.name] = self._keep(
                self._load_program(program.name, builds[program.name])
            )
        for program in perf_programs:
            self._attach(program, formats[program.name].id, self._prog_fds[program.name])
        self._load_exec(tracefs_root, btf_path)
        self._btf = None

    def _raw_refused(self, wanted: bool, sock: SockOffsets) -> str | None:
        """Why the send/recv programs cannot be raw tracepoint programs, or None."""
        if not wanted:
            return "asked for (raw_tracepoints=False)"
        if self._offsets_source != OffsetSource.BTF or self._btf is None:
            return "struct offsets calibrated, not from BTF"
        if sock.sk_protocol_is_bitfield:
            return "sk_protocol is a bitfield (Linux before 5.6)"
        for program in PROGRAMS:
            if program.name not in LENGTH_PROGRAMS:
                continue
            try:
                arguments = self._btf.tracepoint_arguments(program.tracepoint)
            except BtfError as err:
                return str(err)
            if arguments != RAW_LENGTH_ARGUMENTS:
                return f"{program.tracepoint} has arguments {arguments}"
        return None

    def _attach_raw(self, sock: SockOffsets, net: NetOffsets) -> str | None:
        """Load and attach the send/recv programs as raw tracepoint programs.

        None when both are attached; else the reason, with everything this
        step opened closed again (the perf programs are loaded instead).
        """
        maps = self._maps
        assert maps is not None
        opened: dict[str, int] = {}
        try:
            context = raw_length_context(sock)
            for name, kind in LENGTH_PROGRAMS.items():
                items = length_program(kind, context, sock, maps, net, self._netns_inode)
                opened[name] = self._keep(self._load_program(name, items, ProgType.RAW_TRACEPOINT))
            for program in PROGRAMS:
                if program.name in opened:
                    self._raw_fds.append(
                        syscalls.raw_tracepoint_open(program.tracepoint, opened[program.name])
                    )
        except (BpfSyscallError, EbpfUnavailable, ValueError) as err:
            reason = err.reason if isinstance(err, EbpfUnavailable) else str(err)
            for fd in [*self._raw_fds, *opened.values()]:
                if fd in self._fds:
                    self._fds.remove(fd)
                os.close(fd)
            self._raw_fds.clear()
            log.warning("raw tracepoint programs not attached (%s)", reason)
            return f"raw tracepoints failed: {reason}"
        self._prog_fds.update(opened)
        self._attach_kind = AttachKind.RAW_TRACEPOINT
        return None

    def _attach_btf(self, sock: SockOffsets, net: NetOffsets) -> str | None:
        """Load and attach the send/recv programs as tp_btf programs
        (BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, attach_btf_id the tracepoint's
        ``btf_trace_*`` typedef), with the per-socket fast path for every namespace.

        None when both are attached; else the reason, with everything this step
        opened (programs, attachments, the fast path's maps) closed again.  Called
        after ``_raw_refused`` found the BTF and the arguments as expected.
        """
        maps = self._maps
        assert maps is not None and self._btf is not None
        opened: dict[str, int] = {}
        step_fds: list[int] = []  # the fast path's BTF and maps
        try:
            attach_ids = {
                name: self._btf.find(BTF_TRACE_PREFIX + program.tracepoint, BtfKind.TYPEDEF)
                for program in PROGRAMS
                if (name := program.name) in LENGTH_PROGRAMS
            }
            fast = None
            if self._netns_inode == EVERY_NAMESPACE and sock.skc_cookie >= 0:
                fast = self._fast_path_maps(step_fds)
            context = btf_length_context(sock)
            for name, kind in LENGTH_PROGRAMS.items():
                items = length_program(kind, context, sock, maps, net, self._netns_inode, fast)
                opened[name] = self._keep(
                    self._load_program(name, items, ProgType.TRACING, attach_ids[name])
                )
            for program in PROGRAMS:
                if program.name in opened:
                    self._raw_fds.append(syscalls.raw_tracepoint_open(None, opened[program.name]))
        except (BpfSyscallError, BtfError, EbpfUnavailable, ValueError) as err:
            reason = err.reason if isinstance(err, EbpfUnavailable) else str(err)
            for fd in [*self._raw_fds, *opened.values(), *step_fds]:
                if fd in self._fds:
                    self._fds.remove(fd)
                os.close(fd)
            self._raw_fds.clear()
            self._release_generation()
            log.warning("tp_btf programs not attached (%s)", reason)
            return f"BTF tracepoints failed: {reason}"
        self._prog_fds.update(opened)
        self._fds.extend(step_fds)
        self._fast = fast
        self._attach_kind = AttachKind.BTF_TRACEPOINT
        return None

    def _fast_path_maps(self, opened: list[int]) -> FastPathFds:
        """The per-socket storage (with its BTF) and the generation map, their fds
        appended to ``opened``; the generation mapped writable where the kernel allows."""
        blob, key_id, value_id = u64_struct_btf(SOCK_SEEN_NAME, SOCK_SEEN_MEMBERS)
        try:
            btf_fd = syscalls.btf_load(blob)
        except BpfSyscallError as err:
            raise EbpfUnavailable(f"loading the storage's BTF failed: {err} {err.log}") from err
        opened.append(btf_fd)
        storage = syscalls.map_create(
            MapType.SK_STORAGE,
            4,
            SOCK_SEEN.size,
            0,
            SOCK_SEEN_NAME,
            MapFlag.NO_PREALLOC,
            btf=BtfTypes(btf_fd, key_id, value_id),
        )
        opened.append(storage)
        try:
            generation = syscalls.map_create(
                MapType.ARRAY, 4, GENERATION.size, 1, "ntp_generation", MapFlag.MMAPABLE
            )
        except BpfSyscallError as err:
            log.debug("mmapable ntp_generation refused (%s); written with bpf()", err)
            generation = syscalls.map_create(MapType.ARRAY, 4, GENERATION.size, 1, "ntp_generation")
        opened.append(generation)
        try:
            self._generation_view = mmap.mmap(
                generation, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as err:
            log.debug("mmap of ntp_generation failed (%s); written with bpf()", err.strerror)
        self._generation_advanced_ns = time.monotonic_ns()
        return FastPathFds(storage=storage, generation=generation)

    def _load_program(
        self,
        name: str,
        items: list[Item],
        prog_type: ProgType = ProgType.TRACEPOINT,
        attach_btf_id: int = 0,
    ) -> int:
        """BPF_PROG_LOAD of a tracepoint program (a TRACING one on the raw tracepoint
        ``attach_btf_id`` names); EbpfUnavailable with the verifier's last words when
        it is refused."""
        code = assemble(items)
        tracing = prog_type == ProgType.TRACING
        expected = AttachType.TRACE_RAW_TP if tracing else None
        try:
            fd = syscalls.prog_load(prog_type, code, LICENSE, name, 0, expected, attach_btf_id)
        except BpfSyscallError as err:
            if err.errno in (errno.EPERM, errno.EACCES):
                raise EbpfUnavailable(_reason(f"loading {name}", err)) from err
            # Load again with the verifier's log, to say why.
            try:
                fd = syscalls.prog_load(
                    prog_type, code, LICENSE, name, VERIFIER_LOG_BYTES, expected, attach_btf_id
                )
            except BpfSyscallError as logged:
                tail = "\n".join(logged.log.strip().splitlines()[-12:])
                log.error("verifier rejected %s:\n%s", name, tail)
                last = tail.splitlines()[-1] if tail else ""
                raise EbpfUnavailable(
                    f"the kernel's verifier rejected {name} ({os.strerror(logged.errno)}: {last})"
                ) from logged
        log.debug("%s: %d instructions", name, instruction_count(items))
        return fd

    def _attach(self, program: _Program, tracepoint_id: int, prog_fd: int) -> None:
        try:
            perf_fd = syscalls.perf_event_open_tracepoint(tracepoint_id, ATTACH_CPU)
        except BpfSyscallError as err:
            raise EbpfUnavailable(
                _reason(f"perf_event_open for {program.tracepoint}", err)
            ) from err
        self._perf_fds.append(perf_fd)
        try:
            syscalls.perf_event_attach(perf_fd, prog_fd)
        except BpfSyscallError as err:
            raise EbpfUnavailable(
                _reason(f"attaching {program.name} to {program.tracepoint}", err)
            ) from err

    def _load_exec(self, tracefs_root: Path, btf_path: Path) -> None:
        """The exec program and its ring, or none (the reason kept for STATUS, logged).

        Needs the task offsets from BTF (no calibration for them): without
        BTF, identities come from /proc alone.  A failure before the attach
        leaves the socket programs loaded and closes what the exec part had
        opened; a failed attach fails the load, as for the other programs.
        """
        maps = self._maps
        assert maps is not None
        try:
            btf = self._btf if self._btf is not None else Btf.from_file(btf_path)
            task = task_offsets(btf)
        except BtfError as err:
            self._exec_note = f"no BTF for task offsets ({err})"
            log.warning("identity at exec not taken in the kernel: %s", self._exec_note)
            return
        opened: list[int] = []
        try:
            exec_format = read_format(EXEC_PROGRAM.category, EXEC_PROGRAM.tracepoint, tracefs_root)
            ring_fd = syscalls.map_create(MapType.RINGBUF, 0, 0, EXEC_RING_BYTES, EXEC_RING_NAME)
            opened.append(ring_fd)
            items = exec_program(
                task,
                ring_fd,
                maps.counters,
                Counter.EXEC_EVENTS,
                Counter.EXEC_LOST,
                Counter.EXEC_READ_FAILED,
            )
            prog_fd = self._load_program(EXEC_PROGRAM.name, items)
            opened.append(prog_fd)
            ring = ExecRing(ring_fd)
        except (TracepointError, BpfSyscallError, EbpfUnavailable, OSError) as err:
            for fd in opened:
                os.close(fd)
            reason = err.reason if isinstance(err, EbpfUnavailable) else str(err)
            self._exec_note = f"not loaded: {reason}"
            log.warning("identity at exec not taken in the kernel: %s", reason)
            return
        self._keep(ring_fd)
        self._prog_fds[EXEC_PROGRAM.name] = self._keep(prog_fd)
        self._exec_ring, self._exec_ring_fd = ring, ring_fd
        # An attach failure is fatal as for the other programs (load() closes everything).
        self._attach(EXEC_PROGRAM, exec_format.id, prog_fd)
        self._exec_note = "sched_process_exec"

    def _changes_map(self) -> int:
        """The changes counter's array map, mapped into memory where the kernel allows."""
        try:
            fd = syscalls.map_create(
                MapType.ARRAY, 4, CHANGES.size, 1, "ntp_changes", MapFlag.MMAPABLE
            )
        except BpfSyscallError as err:
            log.debug("mmapable ntp_changes refused (%s); read with bpf() instead", err)
            return syscalls.map_create(MapType.ARRAY, 4, CHANGES.size, 1, "ntp_changes")
        try:
            self._changes_view = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as err:
            log.debug("mmap of ntp_changes failed (%s); read with bpf() instead", err.strerror)
        return fd

    def _offsets(
        self, btf_path: Path, send_format: TracepointFormat
    ) -> tuple[SockOffsets, NetOffsets]:
        """Struct offsets from the BTF at ``btf_path``, else by calibration; records the source.

        EbpfUnavailable, naming both failures, when neither works (a kernel
        without CONFIG_NET_NS has no ``skc_net`` and fails both ways).
        """
        try:
            btf = Btf.from_file(btf_path)
            self._btf = btf  # for the exec program's task offsets
            offsets = sock_offsets(btf), net_offsets(btf)
        except BtfError as btf_err:
            started = _monotonic_ms()
            try:
                offsets = calibrate(send_format)
            except CalibrationError as calibration_err:
                raise EbpfUnavailable(
                    f"struct sock offsets unknown: BTF: {btf_err}; calibration: {calibration_err}"
                ) from calibration_err
            log.warning(
                "kernel BTF unusable (%s): struct offsets calibrated with probe sockets in %.0f ms",
                btf_err,
                _monotonic_ms() - started,
            )
            self._offsets_source = OffsetSource.CALIBRATED
            return offsets
        self._offsets_source = OffsetSource.BTF
        return offsets

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _release_generation(self) -> None:
        view, self._generation_view = self._generation_view, None
        if view is not None:
            view.close()

    def _release_view(self) -> None:
        """Unmap the changes counter, the generation and the exec ring (a mapping holds
        its map alive)."""
        view, self._changes_view = self._changes_view, None
        if view is not None:
            view.close()
        self._release_generation()
        ring, self._exec_ring = self._exec_ring, None
        if ring is not None:
            ring.close()

    def _forget_after_fork(self) -> None:
        self._release_view()
        _close_all(self._fds, self._perf_fds, self._raw_fds, detach=False)
        self._closed = True

    def _require_loaded(self) -> MapFds:
        if self._closed or self._maps is None:
            raise EbpfUnavailable("the eBPF ownership helper is closed")
        return self._maps

    # --- reading ---------------------------------------------------------------------

    def advance_generation(self) -> int:
        """Start a new generation of the per-socket fast path (with tp_btf programs on
        every namespace; else nothing to do): each thread's next call on each socket
        is recorded again.  Returns the new generation (0 without the fast path)."""
        self._require_loaded()
        fast = self._fast
        self._generation_advanced_ns = time.monotonic_ns()
        if fast is None:
            return 0
        self._generation += 1
        value = GENERATION.pack(self._generation)
        view = self._generation_view
        if view is not None:
            view[: GENERATION.size] = value  # one aligned 8-byte store
            return self._generation
        try:
            syscalls.map_update(fast.generation, b"\0\0\0\0", value)
        except BpfSyscallError as err:
            raise EbpfUnavailable(f"writing ntp_generation failed: {err}") from err
        return self._generation

    def _tick(self) -> None:
        """A new generation once REPORT_INTERVAL_NS has passed since the last one."""
        if (
            self._fast is not None
            and time.monotonic_ns() - self._generation_advanced_ns >= REPORT_INTERVAL_NS
        ):
            self.advance_generation()

    def changes(self) -> int:
        """How many records the programs have written so far (one syscall, no walk).

        A caller that saw the same number before has nothing to drain: the
        programs count a record only after it is in the flows map.  Also moves
        the fast path's generation on once a REPORT_INTERVAL_NS (``_tick``).
        """
        maps = self._require_loaded()
        self._tick()
        view = self._changes_view
        if view is not None:
            return CHANGES.unpack_from(view)[0]
        try:
            raw = syscalls.map_lookup(maps.changes, b"\0\0\0\0", CHANGES.size)
        except BpfSyscallError as err:
            raise EbpfUnavailable(f"reading ntp_changes failed: {err}") from err
        return CHANGES.unpack(raw)[0] if raw is not None else 0

    def drain(self) -> list[FlowOwner]:
        """Every record written since the last drain, removed from the kernel map."""
        maps = self._require_loaded()
        self._tick()
        try:
            pairs = syscalls.map_lookup_batch(
                maps.flows, FLOW_KEY.size, OWNER.size, delete=True, chunk_count=BATCH_CHUNK_ENTRIES
            )
        except BpfSyscallError as err:
            raise EbpfUnavailable(f"draining ntp_flows failed: {err}") from err
        owners = [decode_flow(key, value) for key, value in pairs]
        self._drains += 1
        self._flows_last_drain = len(owners)
        self._flows_peak_drain = max(self._flows_peak_drain, len(owners))
        self._flows_drained += len(owners)
        return owners

    @property
    def takes_exec(self) -> bool:
        """True when the exec program is loaded (``exec_records`` gives identities)."""
        return self._exec_ring is not None and not self._closed

    def exec_records(self) -> list[ExecRecord]:
        """The execs the kernel recorded since the last call, oldest first ([] without
        the exec program)."""
        ring = self._exec_ring
        if ring is None or self._closed:
            return []
        return ring.take()

    def counters(self) -> dict[Counter, int]:
        """The programs' event counters, summed over every CPU."""
        maps = self._require_loaded()
        stride = COUNTERS.size  # a multiple of 8 already
        try:
            raw = syscalls.map_lookup(maps.counters, b"\0\0\0\0", stride * self._cpu_count)
        except BpfSyscallError as err:
            raise EbpfUnavailable(f"reading ntp_counters failed: {err}") from err
        totals = [0] * len(Counter)
        if raw is not None:
            for cpu in range(self._cpu_count):
                for index, value in enumerate(COUNTERS.unpack_from(raw, cpu * stride)):
                    totals[index] += value
        return {counter: totals[counter] for counter in Counter}

    def status(self) -> dict[str, int | str]:
        """Figures for STATUS: program runs, recursion misses, map fill and drops."""
        self._require_loaded()
        result: dict[str, int | str] = {
            "ownership": "kernel",
            "ebpf_load_ms": round(self._load_ms),
            "ebpf_run_stats": "on" if self._run_stats else "off",
            "ebpf_netns_inode": self._netns_inode,
            "ebpf_offsets": self._offsets_source.value,
            "ebpf_attach": self._attach_kind.value,
            "ebpf_exec": self._exec_note,
            "ebpf_exec_records": self._exec_ring.records if self._exec_ring is not None else 0,
        }
        for name, fd in self._prog_fds.items():
            try:
                stats = syscalls.prog_run_stats(fd)
            except BpfSyscallError as err:
                raise EbpfUnavailable(f"reading {name} info failed: {err}") from err
            result[f"{name}_run_cnt"] = stats.run_cnt
            result[f"{name}_run_time_ns"] = stats.run_time_ns
            result[f"{name}_recursion_misses"] = stats.recursion_misses
            result[f"{name}_verified_insns"] = stats.verified_insns
        for counter, value in self.counters().items():
            result[f"ebpf_{counter.name.lower()}"] = value
        result["ebpf_flow_map_entries"] = self._flow_entries
        result["ebpf_flows_last_drain"] = self._flows_last_drain
        result["ebpf_flows_peak_drain"] = self._flows_peak_drain
        result["ebpf_flow_map_fill_percent"] = self._flows_peak_drain * 100 // self._flow_entries
        result["ebpf_flows_drained"] = self._flows_drained
        result["ebpf_records_written"] = self.changes()
        result["ebpf_drains"] = self._drains
        result["ebpf_connect_map_entries"] = CONNECT_MAP_ENTRIES
        # Drops: refusals of the preallocated hash maps (E2BIG when full) and
        # connect() records not found at establishment (a state event lost to
        # recursion, or evicted from the LRU connect map).
        result["ebpf_drops"] = int(result["ebpf_flow_update_failed"]) + int(
            result["ebpf_connect_update_failed"]
        )
        return result

    @property
    def offsets_source(self) -> OffsetSource:
        """Where the struct offsets came from: BTF or calibration."""
        return self._offsets_source

    @property
    def attach_kind(self) -> AttachKind:
        """How the send/recv programs are attached: tp_btf, raw or perf-event tracepoints."""
        return self._attach_kind

    @property
    def fast_path(self) -> bool:
        """True when the send/recv programs ask the socket's storage first."""
        return self._fast is not None

    @property
    def netns_inode(self) -> int:
        """The nsfs inode of the network namespace whose sockets are recorded."""
        return self._netns_inode

    def object_ids(self) -> tuple[list[int], list[int]]:
        """The kernel ids of this helper's programs and maps."""
        maps = self._require_loaded()
        prog_ids = [syscalls.object_id(fd) for fd in self._prog_fds.values()]
        map_ids = [syscalls.object_id(fd) for fd in maps]
        if self._fast is not None:
            map_ids += [syscalls.object_id(fd) for fd in self._fast]
        if self._exec_ring_fd >= 0:
            map_ids.append(syscalls.object_id(self._exec_ring_fd))
        return prog_ids, map_ids

    # --- unloading -------------------------------------------------------------------

    def close(self) -> None:
        """Detach the programs and close every fd; safe to call twice."""
        self._closed = True
        self._release_view()
        self._finalizer()
        with _live_lock:
            _live.discard(self)

    @property
    def closed(self) -> bool:
        """True once close() ran (or in a child after fork)."""
        return self._closed

    def __enter__(self) -> KernelOwnership:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _monotonic_ms() -> float:
    return time.monotonic_ns() / 1e6


def _named_objects(
    next_cmd: BpfCmd, fd_cmd: BpfCmd, info_size: int, name_offset: int
) -> dict[int, str]:
    """Id -> name of every loaded object of one kind named ``ntp_*`` (ours)."""
    named: dict[int, str] = {}
    current = 0
    while True:
        next_id = syscalls.get_next_id(next_cmd, current)
        if next_id is None:
            return named
        current = next_id
        fd = syscalls.get_fd_by_id(fd_cmd, next_id)
        if fd is None:
            continue  # freed meanwhile
        try:
            info = syscalls.obj_get_info(fd, info_size)
        finally:
            os.close(fd)
        name = (
            info[name_offset : name_offset + syscalls.BPF_OBJ_NAME_LEN].split(b"\0", 1)[0].decode()
        )
        if name.startswith(OBJECT_NAME_PREFIX):
            named[next_id] = name


def loaded_programs() -> dict[int, str]:
    """Id -> name of every loaded program named ``ntp_*`` (ours), any process's."""
    try:
        return _named_objects(
            BpfCmd.PROG_GET_NEXT_ID,
            BpfCmd.PROG_GET_FD_BY_ID,
            syscalls.BPF_PROG_INFO_SIZE,
            syscalls.BPF_PROG_INFO_NAME_OFFSET,
        )
    except BpfSyscallError as err:
        raise EbpfUnavailable(_reason("enumerating BPF objects", err)) from err


def loaded_object_ids() -> tuple[list[int], list[int]]:
    """Ids of every loaded program and map named ``ntp_*`` (ours), any process's."""
    prog_ids = list(loaded_programs())
    try:
        map_ids = _named_objects(
            BpfCmd.MAP_GET_NEXT_ID,
            BpfCmd.MAP_GET_FD_BY_ID,
            syscalls.BPF_MAP_INFO_SIZE,
            syscalls.BPF_MAP_INFO_NAME_OFFSET,
        )
    except BpfSyscallError as err:
        raise EbpfUnavailable(_reason("enumerating BPF objects", err)) from err
    return prog_ids, list(map_ids)
