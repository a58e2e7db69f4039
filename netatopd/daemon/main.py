"""netatopd's start and stop: options, logging, the wiring of capture, engine and sockets.

``main`` (the ``netatopd`` command and ``python -m netatopd.daemon``) reads
the options, runs --check (check.py) or ``run``; ``run`` checks and locks the
run directory (rundir.py) before it touches anything in it, checks the
database and atop socket directories, opens the capture, builds the engine
(engine.py), the control and atop servers over its answers (answers.py) and
the metrics server (metrics.http, with --metrics-listen), and hands them to
the event loop (loop.py).  Start-up failures exit with a sentence and a
status from exitcodes.py; whatever was set up is undone, and what the
daemon made in the file system for itself (the run directory and the atop
socket's directory if it created them, the lock file) is removed again.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import NoReturn

from .. import __version__
from ..capture.kernel import KernelCapture
from ..capture.lanes import CaptureLanes
from ..capture.pcap import CaptureError, CapturePermissionError, LibpcapMissing
from ..config import ConfigError, resolve
from ..defaults import CONTROL_SOCKET_NAME
from ..metrics import MetricsListenError
from ..rundir import DATABASE_DIR_MODE, RUN_DIR_MODE, RunDirError, SafeDirectory, open_directory
from ..server import AtopServer, ControlServer, ServerError, resolve_group
from ..table import TableError
from .answers import Answers
from .check import check
from .engine import Engine, KernelOwnershipFailed
from .exitcodes import ExitCode
from .loop import STOP_SIGNALS, CaptureFailed, EventLoop

log = logging.getLogger(__name__)

# Benchmarks: keep the kernel's BPF run statistics on while the kernel path runs.
RUN_STATS_ENV = "NETATOPD_BPF_RUN_STATS"


def _fail(code: ExitCode, message: str) -> NoReturn:
    log.error("%s", message)
    sys.exit(code)


class KernelCaptureFailed(Exception):
    """--capture kernel and the cgroup_skb programs did not load."""


def open_kernel_capture(options: argparse.Namespace) -> KernelCapture:
    """The --capture kernel path: the programs loaded and attached, or KernelCaptureFailed."""
    try:
        return KernelCapture.open(
            options.drain_interval_ms / 1000.0,
            run_stats=os.environ.get(RUN_STATS_ENV) == "1",
            sum_interval_s=options.sum_interval_ms / 1000.0,
        )
    except CaptureError as err:
        raise KernelCaptureFailed(str(err)) from err


def _groups(options: argparse.Namespace) -> dict[str, int | None]:
    """--table-group, --control-group, --atop-group as gids (None when empty); a group
    that does not exist is a bad option (exit status 2)."""
    gids: dict[str, int | None] = {}
    for dest in ("table_group", "control_group", "atop_group"):
        name = getattr(options, dest)
        try:
            gids[dest] = resolve_group(name) if name else None
        except ServerError as err:
            _fail(ExitCode.USAGE, f"--{dest.replace('_', '-')}: {err}")
    return gids


def _directory(path: str, option: str, mode: int, what: str) -> SafeDirectory:
    """The checked directory (made with mode if missing), or exit 5 naming option."""
    try:
        return open_directory(path, mode, what)
    except RunDirError as err:
        _fail(ExitCode.RUN_DIR, f"{option}: {err}")


def _defer_signals() -> list[int]:
    """Until the event loop takes them over, stop and reload signals are only noted
    (the loop acts on them first thing): a SIGTERM during the start still stops the
    daemon cleanly, a SIGHUP does not kill it."""
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    for signum in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, note)
    return pending


def run(options: argparse.Namespace) -> int:
    """Start, count until a stop signal, stop; every step undone on the way out.

    The run directory is checked and locked before anything in it is touched;
    then the database and atop socket directories are checked, the capture
    opened, the engine (and the table) built and the sockets bound.
    """
    pending_signals = _defer_signals()
    gids = _groups(options)
    started = False

    def unless_started(action: Callable[[], object]) -> Callable[[], None]:
        """action on the way out of a start that failed (before the loop ran)."""

        def undo_made() -> None:
            if not started:
                action()

        return undo_made

    with ExitStack() as undo:
        run_dir = _directory(options.run_dir, "--run-dir", RUN_DIR_MODE, "run directory")
        # A start that fails leaves no run directory behind: what this daemon made
        # (the directory, its lock file) goes again; what was there stays.
        undo.callback(unless_started(run_dir.remove_made))
        undo.callback(run_dir.close)
        try:
            lock = run_dir.lock()
        except RunDirError as err:  # AlreadyRunning names the other daemon's pid
            _fail(ExitCode.RUN_DIR, f"--run-dir: {err}")
        undo.callback(lock.release)
        undo.callback(unless_started(lock.remove_made))
        if not options.no_history:
            db_dir = os.path.dirname(os.path.abspath(options.db))
            # Checked here, before the history writer opens (and maybe makes) the file.
            _directory(db_dir, "--db", DATABASE_DIR_MODE, "database directory").close()
        atop_dir = None
        if not options.no_atop_socket:
            atop_dir = _directory(
                os.path.dirname(os.path.abspath(options.atop_socket)),
                "--atop-socket",
                RUN_DIR_MODE,
                "atop socket's directory",
            )
            undo.callback(unless_started(atop_dir.remove_made))
            undo.callback(atop_dir.close)
        capture: CaptureLanes | KernelCapture
        try:
            if options.capture == "kernel":
                capture = open_kernel_capture(options)
            else:
                capture = CaptureLanes(
                    options.interface,
                    snaplen_bytes=options.snaplen,
                    buffer_bytes=options.buffer_mib << 20,
                    timeout_ms=options.capture_timeout_ms,
                    single=options.single_lane,
                )
        except KernelCaptureFailed as err:
            _fail(ExitCode.NO_KERNEL_CAPTURE, str(err))
        except LibpcapMissing as err:
            _fail(ExitCode.NO_LIBPCAP, str(err))
        except CapturePermissionError as err:
            _fail(ExitCode.PRIVILEGES, str(err))
        except CaptureError as err:
            _fail(ExitCode.ERROR, f"cannot capture on {options.interface}: {err}")
        undo.callback(capture.close)
        try:
            engine = Engine(options, capture, run_dir=run_dir, table_group=gids["table_group"])
        except KernelOwnershipFailed as err:
            _fail(ExitCode.NO_KERNEL_OWNERSHIP, str(err))
        except TableError as err:
            _fail(ExitCode.RUN_DIR, f"--run-dir: {err}")
        undo.callback(engine.close)
        answers = Answers(engine)
        try:
            server = ControlServer(
                run_dir.join(CONTROL_SOCKET_NAME),
                answers,
                options.control_mode,
                directory=run_dir,
                group=gids["control_group"],
            )
        except ServerError as err:
            _fail(ExitCode.RUN_DIR, f"--run-dir: {err}")
        undo.callback(server.close)
        if atop_dir is not None:
            try:
                answers.atop = AtopServer(
                    atop_dir.join(os.path.basename(options.atop_socket)),
                    answers,
                    engine.journal,
                    group=gids["atop_group"],
                    directory=atop_dir,
                )
            except ServerError as err:
                _fail(ExitCode.RUN_DIR, f"--atop-socket: {err}")
            undo.callback(answers.atop.close)

        if engine.metrics is not None:
            from ..metrics.http import MetricsServer  # prometheus_client: only when asked for

            try:
                metrics_server = MetricsServer(options.metrics_listen, engine.metrics)
            except MetricsListenError as err:
                _fail(ExitCode.ERROR, str(err))
            undo.callback(metrics_server.close)

        loop = EventLoop(engine, capture, server, answers.atop, pending_signals)
        undo.callback(loop.close)
        where = (
            f"every network namespace (cgroup_skb at {capture.counter.cgroup_path})"
            if isinstance(capture, KernelCapture)
            else options.interface
        )
        log.info("netatopd %s counting on %s; control socket %s", __version__, where, server.path)
        started = True
        try:
            return loop.run()
        except CaptureFailed as err:
            _fail(ExitCode.ERROR, str(err))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="netatopd: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        options = resolve(argv)
    except ConfigError as err:
        _fail(ExitCode.USAGE, str(err))
    logging.getLogger().setLevel(getattr(logging, options.log_level.upper()))
    if options.check:
        sys.exit(check(options))
    try:
        sys.exit(run(options))
    except KeyboardInterrupt:
        sys.exit(ExitCode.OK)
    except OSError as err:
        if err.errno == errno.EPERM:
            _fail(
                ExitCode.PRIVILEGES,
                f"{err.strerror}: netatopd needs root or CAP_NET_RAW and CAP_NET_ADMIN",
            )
        raise
