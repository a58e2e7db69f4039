"""The daemon's event loop: one selector, the signals, and the --hold-ms hold.

The capture lanes' descriptors, the control and atop sockets and a signal
wake-up socket share one selector.  Each pass drains the capture
(engine.Engine.drain_capture), applies the hold (hold.Hold), does the
housekeeping that is due and lets the control server finish waiting requests.
SIGTERM and SIGINT stop the loop, SIGHUP reloads the interface facts.
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
    ) -> None:
        self.engine = engine
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.received: list[int] = []
        self.capture_fds = capture.filenos()
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._watch_capture(True)
        self.selector.register(self.wake_read, selectors.EVENT_READ, None)
        server.register(self.selector)
        if atop is not None:
            atop.register(self.selector)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)

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
        """Act on a received signal; True when it says stop."""
        if not self.received:
            return False
        signum = signal.Signals(self.received.pop(0))
        if signum == signal.SIGHUP:
            log.info("SIGHUP: interface facts reloaded")
            self.engine.links.clear()
            self.received.clear()
            return False
        log.info("%s: stopping", signum.name)
        return True

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
        self.server.service_waiters()

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
