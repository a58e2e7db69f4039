"""netatopd's start and stop: options, logging, the wiring of capture, engine and sockets.

``main`` (the ``netatopd`` command and ``python -m netatopd.daemon``) reads
the options, runs --check (check.py) or ``run``; ``run`` opens the capture,
builds the engine (engine.py), the control and atop servers over its answers
(answers.py), and hands them to the event loop (loop.py).  Start-up failures
exit with a sentence and a status from exitcodes.py.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import NoReturn

from .. import __version__
from ..capture.kernel import KernelCapture
from ..capture.lanes import CaptureLanes
from ..capture.pcap import CaptureError, CapturePermissionError, LibpcapMissing
from ..client import CONTROL_SOCKET_NAME
from ..config import ConfigError, resolve
from ..server import AtopServer, ControlServer, ServerError
from .answers import Answers
from .check import check
from .engine import Engine, KernelOwnershipFailed
from .exitcodes import ExitCode
from .loop import CaptureFailed, EventLoop

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
        )
    except CaptureError as err:
        raise KernelCaptureFailed(str(err)) from err


def run(options: argparse.Namespace) -> int:
    try:
        os.makedirs(options.run_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        _fail(ExitCode.RUN_DIR, f"cannot create run directory {options.run_dir}: {err.strerror}")
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
    try:
        engine = Engine(options, capture)
    except KernelOwnershipFailed as err:
        capture.close()
        _fail(ExitCode.NO_KERNEL_OWNERSHIP, str(err))
    answers = Answers(engine)
    try:
        server = ControlServer(
            os.path.join(options.run_dir, CONTROL_SOCKET_NAME), answers, options.control_mode
        )
    except ServerError as err:
        engine.close()
        capture.close()
        _fail(ExitCode.RUN_DIR, str(err))
    if not options.no_atop_socket:
        try:
            answers.atop = AtopServer(
                options.atop_socket, answers, engine.journal, group=options.atop_group or None
            )
        except ServerError as err:
            server.close()
            engine.close()
            capture.close()
            _fail(ExitCode.RUN_DIR, f"atop socket: {err}")

    loop = EventLoop(engine, capture, server, answers.atop)
    where = (
        f"every network namespace (cgroup_skb at {capture.counter.cgroup_path})"
        if isinstance(capture, KernelCapture)
        else options.interface
    )
    log.info("netatopd %s counting on %s; control socket %s", __version__, where, server.path)
    try:
        return loop.run()
    except CaptureFailed as err:
        _fail(ExitCode.ERROR, str(err))
    finally:
        server.close()
        if answers.atop is not None:
            answers.atop.close()
        try:
            engine.close()
        finally:
            capture.close()
            loop.close()


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
