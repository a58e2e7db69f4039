"""The daemon's event loop: one selector, the signals, and the --hold-ms hold.

The capture lanes' descriptors, the control and atop sockets, the rtnetlink
socket of the local addresses (locality.Locality: a change of the local
table is applied before the next batch is split) and a signal wake-up socket
share one selector.  Each pass drains the capture
(engine.Engine.drain_capture), applies the hold (hold.Hold), does the
housekeeping that is due, lets the control server finish waiting requests
and has both servers close clients whose time is up (the loop wakes at least
once a second).  SIGTERM and SIGINT stop the loop, SIGHUP reloads the
interface facts; signals are noted by the handler and acted on in the loop.
The proc connector's socket (fork, exec, exit) is in the selector too: its
events go to ``Engine.on_process_events`` as they come.
With ``--capture kernel`` there is no capture descriptor: the select timeout
is also bounded by the next drain of the kernel counter
(``Engine.seconds_until_drain``), the loop's timer.
Owned by main.run, which builds the engine and the servers first.
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import time

from ..capture.kernel import KernelCapture
from ..capture.lanes import CaptureLanes
from ..capture.pcap import CaptureError
from ..netlink.socket import NetlinkError
from ..server import AtopServer, ControlServer
from .engine import Engine
from .exitcodes import ExitCode
from .hold import HoldChange

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CaptureFailed(Exception):
    """The capture stopped working; the daemon exits with ExitCode.ERROR."""


class EventLoop:
    """The selector and its wake-ups; run() until a stop signal."""

    def __init__(
        self,
        engine: Engine,
        capture: CaptureLanes | KernelCapture,
        server: ControlServer,
        atop: AtopServer | None,
        pending_signals: list[int] | None = None,
    ) -> None:
        """pending_signals: signals noted before the loop existed (main.run's start),
        acted on at the first pass."""
        self.engine = engine
        self.server = server
        self.atop = atop
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.received: list[int] = pending_signals if pending_signals is not None else []
        self.capture_fds = capture.filenos()
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._watch_capture(True)
        self.selector.register(self.wake_read, selectors.EVENT_READ, None)
        addresses_fd = engine.locality.fileno()
        if addresses_fd is not None:
            self.selector.register(addresses_fd, selectors.EVENT_READ, self._on_local_table)
        if engine.process_events is not None:
            self.selector.register(
                engine.process_events.fileno(), selectors.EVENT_READ, self._on_process_events
            )
        server.register(self.selector)
        if atop is not None:
            atop.register(self.selector)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    def _on_local_table(self, mask: int) -> None:
        """rtnetlink told of a change of the local table (or lost some: then it dumps)."""
        try:
            self.engine.locality.process_events()
        except NetlinkError as err:
            self.engine.errors += 1
            log.error("local addresses: %s", err)

    def _on_process_events(self, mask: int) -> None:
        """The proc connector has fork, exec or exit events (Engine.on_process_events)."""
        self.engine.on_process_events()

    def _watch_capture(self, watch: bool) -> None:
        for fd in self.capture_fds:
            if watch:
                self.selector.register(fd, selectors.EVENT_READ, None)
            else:
                self.selector.unregister(fd)

    def _timeout_s(self) -> float:
        engine = self.engine
        timeout = min(engine.seconds_until_next_work(), engine.seconds_until_drain())
        held_s = engine.hold.seconds_left()
        if held_s is not None:
            timeout = min(timeout, held_s)
        if self.server.waiting_for_loop():
            timeout = min(timeout, engine.timeout_s)
        return timeout

    def _dispatch(self, timeout_s: float) -> None:
        for key, mask in self.selector.select(timeout_s):
            if key.data is not None:
                try:
                    key.data(mask)
                except Exception:  # one client's trouble must not stop the counting
                    self.engine.errors += 1
                    log.exception("control socket handler failed")
            elif key.fileobj is self.wake_read:
                try:
                    self.wake_read.recv(512)
                except BlockingIOError:
                    pass

    def _signals(self) -> bool:
        """Act on the signals received; True when one says stop.

        Every signal noted is looked at (a stop signal behind any number of SIGHUPs
        is never lost); SIGHUPs received together reload the facts once.
        """
        reload = False
        while self.received:
            signum = signal.Signals(self.received.pop(0))
            if signum in STOP_SIGNALS:
                log.info("%s: stopping", signum.name)
                return True
            reload = True
        if reload:
            log.info("SIGHUP: interface facts reloaded")
            self.engine.links.clear()
        return False

    def _pass(self) -> None:
        """Count what the capture holds, hold if at load, and do what is due."""
        engine = self.engine
        packets_before = engine.packets
        counted = engine.drain_capture()
        change = engine.hold.after_pass(engine.packets - packets_before)
        if change is HoldChange.START:
            self._watch_capture(False)
        elif change is HoldChange.END:
            self._watch_capture(True)
        engine.housekeeping(counted)
        self.server.service_waiters()  # runs the control server's expire
        if self.atop is not None:
            self.atop.expire()  # a stalled atop client is closed even if its socket is quiet

    def run(self) -> ExitCode:
        """Until a stop signal; raises CaptureFailed when the capture breaks."""
        while True:
            self._dispatch(self._timeout_s())
            if self._signals():
                return ExitCode.OK
            try:
                self._pass()
            except CaptureError as err:
                raise CaptureFailed(f"capture failed: {err}") from err
            except Exception:
                self.engine.errors += 1
                log.exception("error in the counting loop; carrying on")
                time.sleep(0.01)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self.wake_read.close()
        self.wake_write.close()
