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
from typing import NoReturn

from . import __version__
from .attribution import RESCAN_INTERVAL_S_DEFAULT, UNOWNED_LIMIT_S_DEFAULT, Resolver
from .capture.links import LinkTable
from .capture.pcap import Capture, CaptureError, CapturePermissionError, LibpcapMissing
from .client import CONTROL_SOCKET_NAME, RUN_DIR_DEFAULT
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
from .tasks import MAX_TASKS_DEFAULT, TaskInfo, TaskTable

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_LIBPCAP, EXIT_PRIVILEGES, EXIT_RUN_DIR = 0, 1, 2, 3, 4, 5
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

    def housekeeping(self) -> None:
        now_s = time.time()
        self.resolver.settle(now_s)
        self.resolver.resolve(now_s)
        if self.sweeper.due():
            self.sweeper.run(now_s)
        self.exit_list.expire()

    def seconds_until_next_work(self) -> float:
        wait = min(IDLE_WAKE_S, self.sweeper.seconds_until_due())
        if self.resolver.pending:
            wait = min(wait, max(0.0, self.resolver.pending[0][0] - time.time()))
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
        """A thread is answered only when its process has this one thread (then tid == tgid)."""
        task = self.tasks.get(pid)
        if task is None:
            return None
        try:
            if self.procfs.stat(pid).num_threads != 1:
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
            ownership="proc",
            uptime_s=round(time.time() - self.started_s, 3),
        )
        return status

    def close(self) -> None:
        self.sockdiag.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netatopd",
        description="Count every TCP and UDP packet per process, like the netatop kernel "
        "module, from user space (libpcap, sock_diag, /proc). Runs in the foreground; "
        "stop with SIGTERM or Ctrl-C.",
        epilog="Example: netatopd --run-dir /run/netatop --log-level info",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"netatopd {__version__}")
    add("--interface", default="any", help="interface to capture on (default: any)")
    add(
        "--run-dir",
        default=RUN_DIR_DEFAULT,
        help=f"runtime directory: control socket, table (default: {RUN_DIR_DEFAULT})",
    )
    add("--db", default=DB_DEFAULT, help=f"SQLite history database (default: {DB_DEFAULT})")
    add(
        "--control-mode",
        default="0600",
        help="permission bits of the control socket, octal (default: 0600)",
    )
    add("--snaplen", type=int, default=128, help="bytes captured per packet (default: 128)")
    add("--buffer-mib", type=int, default=64, help="capture ring size in MiB (default: 64)")
    add(
        "--capture-timeout-ms",
        type=int,
        default=10,
        help="libpcap block timeout: a packet is seen at most this late (default: 10)",
    )
    add(
        "--gc-interval-s",
        type=float,
        default=GC_INTERVAL_S_DEFAULT,
        help="garbage collection interval (default: 15)",
    )
    add(
        "--exit-lifetime-s",
        type=float,
        default=EXIT_LIFETIME_S_DEFAULT,
        help="how long an unread finished process stays in the exit list (default: 15)",
    )
    add(
        "--unowned-limit-s",
        type=float,
        default=UNOWNED_LIMIT_S_DEFAULT,
        help="a flow without owner this long is counted unidentified (default: 60)",
    )
    add(
        "--tcp-idle-s",
        type=float,
        default=TCP_IDLE_S_DEFAULT,
        help="owned TCP flows idle this long are dropped (default: 1800)",
    )
    add(
        "--udp-idle-s",
        type=float,
        default=UDP_IDLE_S_DEFAULT,
        help="UDP flows on ports above 1024 idle this long are dropped (default: 16)",
    )
    add(
        "--rescan-interval-ms",
        type=float,
        default=RESCAN_INTERVAL_S_DEFAULT * 1000,
        help="incremental /proc rescan interval while traffic flows (default: 250)",
    )
    add(
        "--max-flows",
        type=int,
        default=MAX_FLOWS_DEFAULT,
        help=f"flow table cap (default: {MAX_FLOWS_DEFAULT})",
    )
    add(
        "--max-tasks",
        type=int,
        default=MAX_TASKS_DEFAULT,
        help=f"task table cap (default: {MAX_TASKS_DEFAULT})",
    )
    add(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default: warning)",
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
    for name in (
        "gc_interval_s",
        "exit_lifetime_s",
        "unowned_limit_s",
        "tcp_idle_s",
        "udp_idle_s",
        "rescan_interval_ms",
    ):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("snaplen", "buffer_mib", "capture_timeout_ms", "max_flows", "max_tasks"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


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
    engine = Engine(options, capture)
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
        capture.close()
        engine.close()
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
