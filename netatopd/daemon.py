"""Stage 9: the daemon — wiring, signals and the loop.

Owns every stage's object and the one event loop that drives them: the
capture descriptor, the control socket and a signal wake-up pipe share one
selector.  Each pass reads the capture ring dry in batches; each batch is
parsed, counted on its flows, settled into tasks and the new flows' owners
are looked up.  With --hold-ms, a pass at sustained load takes the capture
descriptor out of the selector for that long, so the next batches are larger.
The sweep runs on its interval and on FORCE_GC.  Nothing here
runs per packet except the calls into parse.py and flows.py.

Exit status: 0 clean stop; 1 unexpected error; 2 bad options; 3 libpcap
missing; 4 missing privileges; 5 run directory or socket unusable.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import NoReturn

from . import __version__
from .attribution import Resolver
from .capture.lanes import CaptureLanes, LaneKind
from .capture.links import LinkTable
from .capture.pcap import (
    CaptureError,
    CapturePermissionError,
    LibpcapMissing,
    load_libpcap,
)
from .client import CONTROL_SOCKET_NAME
from .config import OPTIONS, ConfigError, resolve
from .counting import count_fixed, count_records
from .ebpf import EbpfUnavailable, KernelOwnership
from .exitlist import (
    ExitJournal,
    ExitList,
    Sweeper,
)
from .flows import FlowTable
from .netlink.sockdiag import SockDiag
from .parse import Reject
from .procfs import ProcAccessDenied, ProcessGone, ProcFS
from .protocol import pack_netpertask
from .server import AtopServer, ControlServer, ServerError, prepare_socket_path
from .store import HistoryWriter, StoreError, open_db
from .table import TableWriter, table_path
from .tasks import ExitedTask, Kind, TaskInfo, TaskRow, TaskTable

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_LIBPCAP, EXIT_PRIVILEGES, EXIT_RUN_DIR = 0, 1, 2, 3, 4, 5
EXIT_NO_KERNEL_OWNERSHIP = 6
# Records a read takes from one capture lane at most.  With the 50 ms hold a lane
# gathers 2,500 packets at 50k a second: taken in one read they cost one Counter
# pass instead of two (bench_daemon.py, 3 repeats: 0.444 against 0.468 us a packet
# at 50k pps with 2048; the same at higher rates).
BATCH_PACKETS = 8192
IDLE_WAKE_S = 1.0  # longest sleep when nothing is due
RECENT_TRAFFIC_S = 5.0  # after traffic, the loop wakes every rescan interval this long
SYNC_MARGIN_S = 0.02
HOLD_MIN_PPS = 20_000  # --hold-ms applies from this counted rate (config.py's help says it)
# --hold-ms -1: the hold with the eBPF helper.  It records each flow's owner when the
# process sends or receives, so reading packets later loses no owner; without it a
# later read finds fewer short-lived processes in /proc, so there is no hold then.
HOLD_MS_WITH_KERNEL_OWNERSHIP = 50
MALFORMED = (
    "TRUNCATED_LINK",
    "TRUNCATED_IP",
    "BAD_IP_HEADER",
    "BAD_IPV6_EXTENSION",
    "TRUNCATED_TRANSPORT",
)


class KernelOwnershipFailed(Exception):
    """--ownership kernel was asked for and the eBPF helper did not load."""


SIMULATE_EBPF_FAILURE_ENV = "NETATOPD_SIMULATE_EBPF_FAILURE"  # tests: pretend the load failed


def load_kernel_ownership(mode: str) -> tuple[KernelOwnership | None, str]:
    """The eBPF helper for --ownership auto|kernel, or None for proc; and a note for STATUS."""
    if mode == "proc":
        return None, "/proc and sock_diag (--ownership proc)"
    try:
        if os.environ.get(SIMULATE_EBPF_FAILURE_ENV) == "1":
            raise EbpfUnavailable(f"simulated load failure ({SIMULATE_EBPF_FAILURE_ENV}=1)")
        helper = KernelOwnership.load()
    except EbpfUnavailable as err:
        if mode == "kernel":
            raise KernelOwnershipFailed(
                f"the eBPF ownership helper did not load: {err.reason}"
            ) from err
        log.warning("eBPF ownership helper not loaded (%s); owners come from /proc", err.reason)
        return None, f"/proc and sock_diag: eBPF helper not loaded: {err.reason}"
    return helper, "eBPF helper (sock_send_length, sock_recv_length, inet_sock_set_state)"


class Engine:
    """Every stage wired together, plus the answers the control socket gives."""

    def __init__(self, options: argparse.Namespace, capture: CaptureLanes) -> None:
        self.options = options
        self.capture = capture
        self.timeout_s = options.capture_timeout_ms / 1000.0
        self.last_pass_monotonic_s = time.monotonic()
        self.holds = 0
        self.links = LinkTable()
        self.rejects = [0] * (max(int(r) for r in Reject) + 1)
        self.procfs = ProcFS()
        self.sockdiag = SockDiag()
        self.kernel, self.ownership_note = load_kernel_ownership(options.ownership)
        hold_ms = options.hold_ms
        if hold_ms < 0:
            hold_ms = HOLD_MS_WITH_KERNEL_OWNERSHIP if self.kernel is not None else 0
        self.hold_s = hold_ms / 1000.0
        self.flows = FlowTable(max_flows=options.max_flows)
        self.tasks = TaskTable(max_tasks=options.max_tasks)
        self.exit_list = ExitList(lifetime_s=options.exit_lifetime_s)
        self.journal = ExitJournal()
        self.gc_requested = False  # a FORCE_GC waits for the twice-a-second limit
        self.atop: AtopServer | None = None
        self.resolver = Resolver(
            self.flows,
            self.tasks,
            self.procfs,
            self.sockdiag,
            on_task_gone=self._task_gone,
            unowned_limit_s=options.unowned_limit_s,
            rescan_interval_s=options.rescan_interval_ms / 1000.0,
            kernel=self.kernel,
        )
        self.sweeper = Sweeper(
            self.flows,
            self.tasks,
            self.resolver,
            self.exit_list,
            self.procfs,
            self.sockdiag,
            gc_interval_s=options.gc_interval_s,
            tcp_idle_s=options.tcp_idle_s,
            udp_idle_s=options.udp_idle_s,
        )
        self.table = TableWriter(
            table_path(options.run_dir), options.table_capacity, options.publish_interval_ms
        )
        self.publish_interval_s = options.publish_interval_ms / 1000.0
        self.last_publish_monotonic_s = 0.0
        self.packets_at_publish = -1
        self.last_packet_monotonic_s = 0.0
        self.history: HistoryWriter | None = None
        self.history_problem = "disabled (--no-history)" if options.no_history else ""
        if not options.no_history:
            try:
                self.history = HistoryWriter(
                    options.db,
                    flush_interval_s=options.flush_interval_s,
                    sample_interval_s=options.sample_interval_s or None,
                    retention_days=options.retention_days,
                )
            except StoreError as err:
                # Counting matters more than history: carry on without it, and say so.
                self.history_problem = f"disabled: {err}"
                log.error("history %s", self.history_problem)
            else:
                self.history.start()
                self.exit_list.listeners.append(self._persist_exited)
        self.started_s = time.time()
        self.packets = 0
        self.batches = 0
        self.last_drained_s = 0.0  # wall time of the last read that left the ring empty
        self.errors = 0

    # -- the counting path ---------------------------------------------------------------

    def drain_capture(self) -> bool:
        """Read every capture lane dry, batch by batch, and count every packet.

        True when packets were counted: then the resolver has just looked up,
        retried and settled everything due (housekeeping need not again).
        """
        flows = self.flows
        links = self.links
        rejects = self.rejects
        counted = False
        started_s = time.time()
        for kind, capture in self.capture.lanes:
            while True:
                batch = capture.read_batch(BATCH_PACKETS)
                count = batch.count
                if count:
                    now_s = time.time()
                    if kind == LaneKind.OTHER:
                        sums = count_records(batch.records, links, rejects)
                    else:
                        sums = count_fixed(batch.records, count, kind, links, rejects)
                    flows.charge(sums, now_s)
                    self.packets += count
                    self.batches += 1
                    counted = True
                if count < BATCH_PACKETS:
                    break
        self.last_drained_s = started_s
        if counted:
            now_s = time.time()
            # Owners first: the kernel may name a new holder of a flow (a port
            # reused by another process), and these packets are its.
            self.resolver.resolve(now_s)
            self.resolver.settle(now_s)
            self.last_packet_monotonic_s = time.monotonic()
        return counted

    def hold_due(self, packets_before: int) -> bool:
        """Whether the pass that began at packets_before ran at sustained load (--hold-ms).

        The rate is the packets of this pass over the time since the previous
        pass ended; any wake-up (a control request, a timer) starts a pass.
        """
        now_s = time.monotonic()
        elapsed_s = now_s - self.last_pass_monotonic_s
        self.last_pass_monotonic_s = now_s
        if not self.hold_s:
            return False
        return self.packets - packets_before >= HOLD_MIN_PPS * max(elapsed_s, self.timeout_s)

    def _task_gone(self, task: TaskInfo) -> None:
        self.tasks.remove(task)
        exited = task.finished(time.time())
        self.exit_list.add(exited)
        self.journal.append(exited)  # for the atop socket's once-more rule

    def atop_tasks(self) -> Iterable[TaskInfo]:
        return self.tasks.by_tgid.values()

    def _persist_exited(self, exited: ExitedTask) -> None:
        if self.history is not None:
            self.history.add_exited((exited,))

    def housekeeping(self, resolved: bool = False) -> None:
        """Everything due besides counting; resolved: drain_capture just resolved and settled."""
        now_s = time.time()
        if not resolved or self.flows.dirty or self.flows.new:
            self.resolver.settle(now_s)
            self.resolver.resolve(now_s)
        if self.sweeper.due():
            self.sweeper.run(now_s)
            self.gc_requested = False
        elif self.gc_requested and self.sweeper.force(now_s):
            self.gc_requested = False
        self.exit_list.expire()
        if self.history is not None and self.history.sample_due(now_s):
            self.history.add_samples(
                now_s,
                self.options.sample_interval_s,
                [(task.row(), task.uid) for task in self.tasks.by_tgid.values()],
            )
        # Publish every interval while anything is counted, else once a second
        # (a heartbeat: readers tell a live daemon from a dead one by the update time).
        since_publish_s = time.monotonic() - self.last_publish_monotonic_s
        active = self.packets != self.packets_at_publish
        if since_publish_s >= (self.publish_interval_s if active else IDLE_WAKE_S):
            self.publish()

    def rows(self) -> list[TaskRow]:
        """Every live process (and thread the kernel named), then the exit list."""
        rows = self.tasks.rows(threads=True)
        rows.extend(
            TaskRow(Kind.EXITED, e.tgid, e.tgid, e.btime, e.command, e.counters, e.last_activity_s)
            for e in self.exit_list.snapshot()
        )
        return rows

    def publish(self) -> None:
        """Write the shared table (batched: every publish interval, never per packet)."""
        self.last_publish_monotonic_s = time.monotonic()
        self.packets_at_publish = self.packets
        self.table.publish(self.rows(), self.table_figures())

    def table_figures(self) -> dict[str, int]:
        """The STATUS_FIELDS figures of status() that it has (only those; cheaper)."""
        stats = self.capture.stats()
        figures = self.flows.totals.as_dict()
        figures.update(
            malformed=sum(self.rejects[int(Reject[name])] for name in MALFORMED),
            flows=self.flows.count,
            flows_overflow=self.flows.overflow,
            tasks=len(self.tasks),
            tasks_overflow=self.tasks.overflow,
            exited=len(self.exit_list),
            capture_received=stats.received,
            capture_dropped=stats.dropped,
            resolver_misses=self.resolver.misses,
            flows_pending=self.resolver.pending_count(),
            resolver_lookups=self.resolver.lookups,
            exited_expired=self.exit_list.expired,
            capture_interface_dropped=stats.interface_dropped,
        )
        if self.history is not None:
            history = self.history.stats()
            figures.update(
                history_persisted=history.get("persisted_exited", 0),
                history_pending=history.get("pending", 0),
                history_dropped=history.get("dropped", 0),
            )
        return figures

    def seconds_until_next_work(self) -> float:
        wait = min(IDLE_WAKE_S, self.sweeper.seconds_until_due())
        if (
            self.kernel is None
            and time.monotonic() - self.last_packet_monotonic_s < RECENT_TRAFFIC_S
        ):
            # Flows are in use: look for processes that took sockets over (forks) promptly
            # (the eBPF helper names them itself).
            wait = min(wait, self.resolver.rescan_interval_s)
        if self.gc_requested:
            wait = min(wait, self.sweeper.seconds_until_forcible())
        if self.resolver.pending:
            wait = min(wait, max(0.0, self.resolver.pending[0][0] - time.time()))
        if self.packets != self.packets_at_publish:
            next_publish = self.last_publish_monotonic_s + self.publish_interval_s
            wait = min(wait, max(0.0, next_publish - time.monotonic()))
        if self.exit_list.entries:
            oldest = self.exit_list.entries[0][1]
            wait = min(wait, max(0.0, oldest + self.exit_list.lifetime_s - time.monotonic()))
        return wait

    # -- answers for the control socket ------------------------------------------------

    def probe(self) -> bytes:
        return f"netatopd {__version__}".encode()

    def force_gc(self) -> object:
        """Sweep now, or as soon as the twice-a-second limit allows; the token waits for it."""
        token = self.sweeper.runs
        now_s = time.time()
        self.resolver.settle(now_s)
        if not self.sweeper.force(now_s):
            self.gc_requested = True
        return token

    def gc_done(self, token: object) -> bool:
        assert isinstance(token, int)
        return self.sweeper.runs > token

    @staticmethod
    def _record(task: TaskInfo, task_id: int | None = None) -> bytes:
        return pack_netpertask(
            task.tgid if task_id is None else task_id, task.btime, task.command, task.counters
        )

    def getcnt_tgid(self, tgid: int) -> bytes | None:
        task = self.tasks.get(tgid)
        return None if task is None else self._record(task)

    def getcnt_pid(self, pid: int) -> bytes | None:
        """Counters of one thread; never invented.

        With the eBPF helper, a thread the kernel named as owner of a flow has its
        own counters.  Otherwise a thread is answered only when it is its process's
        single thread (then its counters are the process's); anything else is ESRCH.
        """
        try:
            tgid = self.procfs.tgid_of(pid)
        except (ProcessGone, ProcAccessDenied):
            # A thread that ended keeps its counters until the next sweep.
            owners = [t.tgid for t in self.tasks.by_tgid.values() if pid in t.threads]
            if not owners:
                return None
            tgid = owners[0]
        task = self.tasks.get(tgid)
        if task is None:
            return None
        thread = task.threads.get(pid)
        if thread is not None:
            return pack_netpertask(pid, task.btime, task.command, thread)
        try:
            if pid != tgid or self.procfs.stat(pid).num_threads != 1:
                return None
        except (ProcessGone, ProcAccessDenied):
            return None
        return self._record(task, pid)

    def pop_exited(self) -> bytes | None:
        exited = self.exit_list.pop_oldest()
        if exited is None:
            return None
        return pack_netpertask(exited.tgid, exited.btime, exited.command, exited.counters)

    def exit_list_length(self) -> int:
        return len(self.exit_list)

    def list_tasks(self) -> bytes:
        return b"".join(self._record(task) for task in self.tasks.by_tgid.values())

    def list_exited(self) -> bytes:
        return b"".join(
            pack_netpertask(e.tgid, e.btime, e.command, e.counters)
            for e in self.exit_list.snapshot()
        )

    def start_sync(self) -> object:
        return time.time()

    def sync_done(self, token: object) -> bool:
        """True once every packet captured before the SYNC request has been counted."""
        assert isinstance(token, float)
        if self.last_drained_s < token + 2 * self.timeout_s + SYNC_MARGIN_S:
            return False
        now_s = time.time()
        self.resolver.settle(now_s)
        self.resolver.resolve(now_s, everything=True)
        return True

    def status(self) -> dict[str, object]:
        stats = self.capture.stats()
        status: dict[str, object] = {"version": __version__}
        status.update(self.flows.totals.as_dict())
        status["malformed"] = sum(self.rejects[int(Reject[name])] for name in MALFORMED)
        status["rejected"] = {r.name.lower(): self.rejects[int(r)] for r in Reject}
        status.update(
            flows=self.flows.count,
            flows_overflow=self.flows.overflow,
            flows_pending=self.resolver.pending_count(),
            flows_written_off=self.resolver.unowned_written_off,
            tasks=len(self.tasks),
            tasks_overflow=self.tasks.overflow,
            exited=len(self.exit_list),
            exited_expired=self.exit_list.expired,
            capture_received=stats.received,
            capture_dropped=stats.dropped,
            capture_interface_dropped=stats.interface_dropped,
            packets_counted=self.packets,
            capture_lanes=len(self.capture.lanes),
            capture_holds=self.holds,
            capture_hold_ms=round(self.hold_s * 1000),
            resolver_lookups=self.resolver.lookups,
            resolver_misses=self.resolver.misses,
            resolver_not_found=self.resolver.not_found,
            resolver_endpoint_finds=self.resolver.endpoint_finds,
            resolver_udp_rechecks=self.resolver.udp_rechecks,
            **self.resolver.owner_latency_ms(),
            inode_full_scans=self.resolver.inodes.full_scans,
            proc_denied=self.resolver.inodes.denied,
            gc_runs=self.sweeper.runs,
            table_capacity=self.table.capacity,
            history=self.options.db if self.history is not None else self.history_problem,
            ownership="kernel" if self.kernel is not None else "proc",
            ownership_note=self.ownership_note,
            uptime_s=round(time.time() - self.started_s, 3),
        )
        if self.capture.fallback:
            status["capture_lanes_fallback"] = self.capture.fallback
        if self.kernel is not None:
            for name, value in self.kernel.status().items():
                if name != "ownership":
                    status[name if name.startswith("ebpf_") else f"ebpf_{name}"] = value
            owners = self.resolver.kernel
            assert owners is not None
            status.update(
                ebpf_records=owners.records,
                ebpf_drains=owners.drains,
                ebpf_drains_skipped=owners.drains_skipped,
                resolver_kernel_finds=self.resolver.kernel_finds,
            )
        if self.atop is not None:
            status.update(self.atop.stats())
        if self.history is not None:
            history = self.history.stats()
            status.update(
                history_persisted=history.get("persisted_exited", 0),
                history_samples=history.get("persisted_samples", 0),
                history_pending=history.get("pending", 0),
                history_dropped=history.get("dropped", 0),
                history_disk_full_skips=history.get("disk_full_skips", 0),
                history_write_errors=history.get("write_errors", 0),
            )
        return status

    def close(self) -> None:
        """Stop: the last counters into the table and the history, then release everything."""
        now_s = time.time()
        self.resolver.settle(now_s)
        try:
            self.publish()
        finally:
            self.table.close(unlink=True)
            if self.history is not None:
                self.history.stop()
            if self.kernel is not None:
                self.kernel.close()
            self.sockdiag.close()


def _fail(code: int, message: str) -> NoReturn:
    log.error("%s", message)
    sys.exit(code)


def run(options: argparse.Namespace) -> int:
    try:
        os.makedirs(options.run_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        _fail(EXIT_RUN_DIR, f"cannot create run directory {options.run_dir}: {err.strerror}")
    try:
        capture = CaptureLanes(
            options.interface,
            snaplen_bytes=options.snaplen,
            buffer_bytes=options.buffer_mib << 20,
            timeout_ms=options.capture_timeout_ms,
            single=options.single_lane,
        )
    except LibpcapMissing as err:
        _fail(EXIT_NO_LIBPCAP, str(err))
    except CapturePermissionError as err:
        _fail(EXIT_PRIVILEGES, str(err))
    except CaptureError as err:
        _fail(EXIT_ERROR, f"cannot capture on {options.interface}: {err}")
    try:
        engine = Engine(options, capture)
    except KernelOwnershipFailed as err:
        capture.close()
        _fail(EXIT_NO_KERNEL_OWNERSHIP, str(err))
    try:
        server = ControlServer(
            os.path.join(options.run_dir, CONTROL_SOCKET_NAME), engine, options.control_mode
        )
    except ServerError as err:
        engine.close()
        capture.close()
        _fail(EXIT_RUN_DIR, str(err))
    if not options.no_atop_socket:
        try:
            engine.atop = AtopServer(
                options.atop_socket, engine, engine.journal, group=options.atop_group or None
            )
        except ServerError as err:
            server.close()
            engine.close()
            capture.close()
            _fail(EXIT_RUN_DIR, f"atop socket: {err}")

    selector = selectors.DefaultSelector()
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    capture_fds = capture.filenos()
    for fd in capture_fds:
        selector.register(fd, selectors.EVENT_READ, None)
    # --hold-ms: while held, the capture fd is out of the selector (the ring fills
    # meanwhile); any other wake-up still drains it, so SYNC and requests stay prompt.
    held_until_s = 0.0
    selector.register(wake_read, selectors.EVENT_READ, None)
    server.register(selector)
    if engine.atop is not None:
        engine.atop.register(selector)
    log.info(
        "netatopd %s counting on %s; control socket %s", __version__, options.interface, server.path
    )
    code = EXIT_OK
    try:
        while True:
            timeout = engine.seconds_until_next_work()
            if held_until_s:
                timeout = min(timeout, max(0.0, held_until_s - time.monotonic()))
            if server.waiting_for_loop():
                timeout = min(timeout, engine.timeout_s)
            for key, mask in selector.select(timeout):
                if key.data is not None:
                    try:
                        key.data(mask)
                    except Exception:  # one client's trouble must not stop the counting
                        engine.errors += 1
                        log.exception("control socket handler failed")
                elif key.fileobj is wake_read:
                    try:
                        wake_read.recv(512)
                    except BlockingIOError:
                        pass
            if received:
                signum = signal.Signals(received.pop(0))
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: interface facts reloaded")
                    engine.links.clear()
                    received.clear()
                else:
                    log.info("%s: stopping", signum.name)
                    break
            try:
                packets_before = engine.packets
                counted = engine.drain_capture()
                hold = engine.hold_due(packets_before)
                if hold:
                    if not held_until_s:
                        for fd in capture_fds:
                            selector.unregister(fd)
                        engine.holds += 1
                    held_until_s = time.monotonic() + engine.hold_s
                elif held_until_s:
                    for fd in capture_fds:
                        selector.register(fd, selectors.EVENT_READ, None)
                    held_until_s = 0.0
                engine.housekeeping(counted)
                server.service_waiters()
            except CaptureError as err:
                _fail(EXIT_ERROR, f"capture failed: {err}")
            except Exception:
                engine.errors += 1
                log.exception("error in the counting loop; carrying on")
                time.sleep(0.01)
    finally:
        server.close()
        if engine.atop is not None:
            engine.atop.close()
        try:
            engine.close()
        finally:
            capture.close()
            signal.set_wakeup_fd(-1)
    return code


CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE = 2, 12, 13, 19


def effective_capabilities() -> int:
    """The CapEff bits of this process (linux/capability.h numbering)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check(options: argparse.Namespace) -> int:
    """--check: print what would be used and whether it can be; no capture is started."""
    problems: list[tuple[int, str]] = []
    print(f"netatopd {__version__}: configuration")
    print(f"  configuration file: {options.config or 'none'}")
    for option in OPTIONS:
        dest = option.flag[2:].replace("-", "_")
        value = getattr(options, dest)
        shown = oct(value) if dest == "control_mode" else value
        print(f"  {option.flag[2:]:22} {shown!s:34} ({options.sources[dest]})")
    print("checks:")

    def report(ok: bool, what: str, code: int = EXIT_ERROR) -> None:
        print(f"  {'ok     ' if ok else 'PROBLEM'} {what}")
        if not ok:
            problems.append((code, what))

    try:
        load_libpcap()
        report(True, "libpcap loads")
    except LibpcapMissing as err:
        report(False, str(err), EXIT_NO_LIBPCAP)
    caps = effective_capabilities()
    needed = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN)
    report(
        caps & needed == needed,
        "CAP_NET_RAW and CAP_NET_ADMIN (capture, sock_diag)"
        + ("" if caps & needed == needed else ": missing; run as root or grant them"),
        EXIT_PRIVILEGES,
    )
    proc_caps = (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH)
    if not caps & proc_caps:
        print(
            "  warning CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH missing: "
            "other users' sockets stay unowned"
        )
    run_dir = options.run_dir
    parent = run_dir if os.path.isdir(run_dir) else os.path.dirname(os.path.abspath(run_dir))
    report(
        os.access(parent, os.W_OK),
        f"run directory {run_dir} can be created and written",
        EXIT_RUN_DIR,
    )
    sockets = [(os.path.join(run_dir, CONTROL_SOCKET_NAME), "control socket")]
    if not options.no_atop_socket:
        sockets.append((options.atop_socket, "atop socket"))
    for path, what in sockets:
        try:
            prepare_socket_path(path, what, remove_stale=False)
            report(True, f"{what} {path} is free")
        except ServerError as err:
            report(False, str(err), EXIT_RUN_DIR)
    if options.no_history:
        print("  -       history off (--no-history)")
    elif os.path.exists(options.db):
        try:
            open_db(options.db, readonly=True).close()
            report(True, f"history database {options.db} opens")
        except StoreError as err:
            report(False, f"history database: {err} (netatopd would run without history)")
    else:
        directory = os.path.dirname(os.path.abspath(options.db))
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        report(os.access(existing, os.W_OK), f"history database {options.db} can be created")
    if options.ownership != "proc":
        # Loading the helper is the only sure test; --check only tells what it will use.
        btf = os.path.exists("/sys/kernel/btf/vmlinux")
        tracepoints = os.path.isdir("/sys/kernel/tracing/events/sock") or os.path.isdir(
            "/sys/kernel/debug/tracing/events/sock"
        )
        print(
            "  -       eBPF helper: struct offsets from "
            + ("the kernel's BTF" if btf else "calibration (no /sys/kernel/btf/vmlinux)")
            + ("" if tracepoints else "; tracefs not mounted yet (the daemon mounts it)")
        )
    if problems:
        print(f"{len(problems)} problem(s); netatopd would not start as configured")
        return problems[0][0]
    print("all checks passed")
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="netatopd: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        options = resolve(argv)
    except ConfigError as err:
        _fail(EXIT_USAGE, str(err))
    logging.getLogger().setLevel(getattr(logging, options.log_level.upper()))
    if options.check:
        sys.exit(check(options))
    try:
        sys.exit(run(options))
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)
    except OSError as err:
        if err.errno == errno.EPERM:
            _fail(
                EXIT_PRIVILEGES,
                f"{err.strerror}: netatopd needs root or CAP_NET_RAW and CAP_NET_ADMIN",
            )
        raise


if __name__ == "__main__":
    main()
