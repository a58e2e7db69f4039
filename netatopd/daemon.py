"""Stage 9: the daemon — wiring, signals and the loop.

Owns every stage's object and the one event loop that drives them: the
capture descriptor, the control socket and a signal wake-up pipe share one
selector.  Each pass reads the capture ring dry in batches; each batch is
parsed, counted on its flows, settled into tasks and the new flows' owners
are looked up.  The sweep runs on its interval and on FORCE_GC.  Nothing here
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
from typing import NamedTuple, NoReturn

from . import __version__
from .attribution import RESCAN_INTERVAL_S_DEFAULT, UNOWNED_LIMIT_S_DEFAULT, Resolver
from .capture.links import LinkTable
from .capture.pcap import Capture, CaptureError, CapturePermissionError, LibpcapMissing
from .client import CONTROL_SOCKET_NAME, RUN_DIR_DEFAULT
from .ebpf import EbpfUnavailable, KernelOwnership
from .exitlist import (
    EXIT_LIFETIME_S_DEFAULT,
    GC_INTERVAL_S_DEFAULT,
    TCP_IDLE_S_DEFAULT,
    UDP_IDLE_S_DEFAULT,
    ExitList,
    Sweeper,
)
from .flows import MAX_FLOWS_DEFAULT, FlowTable
from .netlink.sockdiag import SockDiag
from .parse import Reject, parse_batch
from .procfs import ProcAccessDenied, ProcessGone, ProcFS
from .protocol import pack_netpertask
from .server import ControlServer, ServerError
from .store import HistoryWriter, StoreError
from .table import STATUS_FIELDS, TableWriter, table_path
from .tasks import MAX_TASKS_DEFAULT, ExitedTask, Kind, TaskInfo, TaskRow, TaskTable

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_LIBPCAP, EXIT_PRIVILEGES, EXIT_RUN_DIR = 0, 1, 2, 3, 4, 5
EXIT_NO_KERNEL_OWNERSHIP = 6
DB_DEFAULT = "/var/lib/netatop/netatop.db"
BATCH_PACKETS = 2048
IDLE_WAKE_S = 1.0  # longest sleep when nothing is due
SYNC_MARGIN_S = 0.02
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

    def __init__(self, options: argparse.Namespace, capture: Capture) -> None:
        self.options = options
        self.capture = capture
        self.timeout_s = options.capture_timeout_ms / 1000.0
        self.links = LinkTable()
        self.rejects = [0] * (max(int(r) for r in Reject) + 1)
        self.procfs = ProcFS()
        self.sockdiag = SockDiag()
        self.kernel, self.ownership_note = load_kernel_ownership(options.ownership)
        self.flows = FlowTable(max_flows=options.max_flows)
        self.tasks = TaskTable(max_tasks=options.max_tasks)
        self.exit_list = ExitList(lifetime_s=options.exit_lifetime_s)
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

    def drain_capture(self) -> None:
        """Read the capture ring dry, batch by batch, and count every packet."""
        while True:
            started_s = time.time()
            batch = self.capture.read_batch(BATCH_PACKETS)
            if batch.count:
                packets = parse_batch(batch.records, self.links, self.rejects)
                now_s = time.time()
                self.flows.account(packets, now_s)
                self.resolver.settle(now_s)
                self.resolver.resolve(now_s)
                self.packets += batch.count
                self.batches += 1
            if batch.count < BATCH_PACKETS:
                self.last_drained_s = started_s
                return

    def _task_gone(self, task: TaskInfo) -> None:
        self.tasks.remove(task)
        self.exit_list.add(task.finished(time.time()))

    def _persist_exited(self, exited: ExitedTask) -> None:
        if self.history is not None:
            self.history.add_exited((exited,))

    def housekeeping(self) -> None:
        now_s = time.time()
        self.resolver.settle(now_s)
        self.resolver.resolve(now_s)
        if self.sweeper.due():
            self.sweeper.run(now_s)
        self.exit_list.expire()
        if self.history is not None and self.history.sample_due(now_s):
            self.history.add_samples(
                now_s,
                self.options.sample_interval_s,
                [(task.row(), task.uid) for task in self.tasks.by_tgid.values()],
            )
        if time.monotonic() - self.last_publish_monotonic_s >= self.publish_interval_s:
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
        status = self.status()
        figures = {}
        for name in STATUS_FIELDS:
            value = status.get(name)
            if isinstance(value, int):
                figures[name] = value
        self.table.publish(self.rows(), figures)

    def seconds_until_next_work(self) -> float:
        wait = min(IDLE_WAKE_S, self.sweeper.seconds_until_due())
        if self.resolver.pending:
            wait = min(wait, max(0.0, self.resolver.pending[0][0] - time.time()))
        next_publish = self.last_publish_monotonic_s + self.publish_interval_s
        wait = min(wait, max(0.0, next_publish - time.monotonic()))
        if self.exit_list.entries:
            oldest = self.exit_list.entries[0][1]
            wait = min(wait, max(0.0, oldest + self.exit_list.lifetime_s - time.monotonic()))
        return wait

    # -- answers for the control socket ------------------------------------------------

    def probe(self) -> bytes:
        return f"netatopd {__version__}".encode()

    def force_gc(self) -> None:
        now_s = time.time()
        self.resolver.settle(now_s)
        self.sweeper.force(now_s)

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
            resolver_lookups=self.resolver.lookups,
            resolver_misses=self.resolver.misses,
            resolver_not_found=self.resolver.not_found,
            resolver_endpoint_finds=self.resolver.endpoint_finds,
            inode_full_scans=self.resolver.inodes.full_scans,
            proc_denied=self.resolver.inodes.denied,
            gc_runs=self.sweeper.runs,
            table_capacity=self.table.capacity,
            history=self.options.db if self.history is not None else self.history_problem,
            ownership="kernel" if self.kernel is not None else "proc",
            ownership_note=self.ownership_note,
            uptime_s=round(time.time() - self.started_s, 3),
        )
        if self.kernel is not None:
            for name, value in self.kernel.status().items():
                if name != "ownership":
                    status[name if name.startswith("ebpf_") else f"ebpf_{name}"] = value
            owners = self.resolver.kernel
            assert owners is not None
            status.update(
                ebpf_records=owners.records,
                ebpf_drains=owners.drains,
                resolver_kernel_finds=self.resolver.kernel_finds,
            )
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


class Option(NamedTuple):
    """One long option of the daemon (the configuration file's keys mirror them)."""

    flag: str
    kind: type  # str, int, float or bool (a switch)
    default: object
    help: str
    minimum: float | None = None  # values below are refused
    choices: tuple[str, ...] = ()


OPTIONS: tuple[Option, ...] = (
    Option("--interface", str, "any", "interface to capture on"),
    Option("--run-dir", str, RUN_DIR_DEFAULT, "runtime directory: control socket, shared table"),
    Option("--db", str, DB_DEFAULT, "SQLite history database"),
    Option(
        "--no-history",
        bool,
        False,
        "keep no SQLite history (finished processes stay only in the exit list)",
    ),
    Option("--control-mode", str, "0600", "permission bits of the control socket, octal"),
    Option("--snaplen", int, 128, "bytes captured per packet", 64),
    Option("--buffer-mib", int, 64, "capture ring size in MiB", 1),
    Option(
        "--capture-timeout-ms",
        int,
        10,
        "libpcap block timeout: a packet is read at most this late",
        1,
    ),
    Option("--gc-interval-s", float, GC_INTERVAL_S_DEFAULT, "garbage collection interval", 0.01),
    Option(
        "--exit-lifetime-s",
        float,
        EXIT_LIFETIME_S_DEFAULT,
        "how long an unread finished process stays in the exit list",
        0.01,
    ),
    Option(
        "--unowned-limit-s",
        float,
        UNOWNED_LIMIT_S_DEFAULT,
        "a flow without owner this long is counted unidentified",
        0.01,
    ),
    Option(
        "--tcp-idle-s",
        float,
        TCP_IDLE_S_DEFAULT,
        "owned TCP flows idle this long are dropped",
        0.01,
    ),
    Option(
        "--udp-idle-s",
        float,
        UDP_IDLE_S_DEFAULT,
        "UDP flows on ports above 1024 idle this long are dropped",
        0.01,
    ),
    Option(
        "--rescan-interval-ms",
        float,
        RESCAN_INTERVAL_S_DEFAULT * 1000,
        "incremental /proc rescan interval while traffic flows",
        1,
    ),
    Option("--max-flows", int, MAX_FLOWS_DEFAULT, "flow table cap", 1),
    Option("--max-tasks", int, MAX_TASKS_DEFAULT, "task table cap", 1),
    Option("--publish-interval-ms", int, 250, "how often the shared table is rewritten", 10),
    Option("--table-capacity", int, MAX_TASKS_DEFAULT + 20_000, "rows of the shared table", 1),
    Option(
        "--flush-interval-s", float, 5.0, "how often finished processes are written to SQLite", 0.01
    ),
    Option(
        "--sample-interval-s",
        float,
        60.0,
        "how often running processes are sampled into SQLite; 0 disables",
        0,
    ),
    Option("--retention-days", float, 30.0, "history older than this is deleted", 0.001),
    Option(
        "--ownership",
        str,
        "auto",
        "who tells the owner of a flow: kernel (eBPF helper), proc (/proc and sock_diag), "
        "auto (kernel where it loads, else proc)",
        None,
        ("auto", "kernel", "proc"),
    ),
    Option(
        "--log-level",
        str,
        "warning",
        "log level on stderr",
        None,
        ("debug", "info", "warning", "error"),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netatopd",
        description="Count every TCP and UDP packet per process, like the netatop kernel "
        "module, from user space (libpcap, sock_diag, /proc). Runs in the foreground; "
        "stop with SIGTERM or Ctrl-C.",
        epilog="Example: netatopd --run-dir /run/netatop --log-level info",
    )
    parser.add_argument("--version", action="version", version=f"netatopd {__version__}")
    for option in OPTIONS:
        if option.kind is bool:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(
                option.flag,
                type=option.kind,
                default=option.default,
                choices=option.choices or None,
                help=f"{option.help} (default: {option.default})",
            )
    return parser


def _fail(code: int, message: str) -> NoReturn:
    log.error("%s", message)
    sys.exit(code)


def _check_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    try:
        options.control_mode = int(options.control_mode, 8)
    except ValueError:
        parser.error(f"--control-mode: {options.control_mode!r} is not an octal mode like 0600")
    for option in OPTIONS:
        value = getattr(options, option.flag[2:].replace("-", "_"))
        if option.minimum is not None and value < option.minimum:
            parser.error(f"{option.flag} must be at least {option.minimum}, not {value}")


def run(options: argparse.Namespace) -> int:
    try:
        os.makedirs(options.run_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        _fail(EXIT_RUN_DIR, f"cannot create run directory {options.run_dir}: {err.strerror}")
    try:
        capture = Capture(
            options.interface,
            snaplen_bytes=options.snaplen,
            buffer_bytes=options.buffer_mib << 20,
            timeout_ms=options.capture_timeout_ms,
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
        capture.close()
        _fail(EXIT_RUN_DIR, str(err))

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
    selector.register(capture.fileno(), selectors.EVENT_READ, None)
    selector.register(wake_read, selectors.EVENT_READ, None)
    server.register(selector)
    log.info(
        "netatopd %s counting on %s; control socket %s", __version__, options.interface, server.path
    )
    code = EXIT_OK
    try:
        while True:
            timeout = engine.seconds_until_next_work()
            if server.waiting_for_sync():
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
                engine.drain_capture()
                engine.housekeeping()
                server.service_waiters()
            except CaptureError as err:
                _fail(EXIT_ERROR, f"capture failed: {err}")
            except Exception:
                engine.errors += 1
                log.exception("error in the counting loop; carrying on")
                time.sleep(0.01)
    finally:
        server.close()
        try:
            engine.close()
        finally:
            capture.close()
            signal.set_wakeup_fd(-1)
    return code


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    options = parser.parse_args(argv)
    _check_options(parser, options)
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper()),
        format="netatopd: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
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
