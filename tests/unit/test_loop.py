"""The daemon's event loop with fake stages: signals and the servers' timers.

Ground truth: the signals the test puts in the loop's list (or sends to this
process), and the calls the fakes record.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from netatopd.daemon.hold import HoldChange
from netatopd.daemon.loop import EventLoop


class FakeLinks:
    def __init__(self) -> None:
        self.cleared = 0

    def clear(self) -> None:
        self.cleared += 1


class FakeHold:
    def after_pass(self, packets: int) -> HoldChange | None:
        return None

    def seconds_left(self) -> float | None:
        return None


class FakeLocality:
    """No local-address socket (the table could not be read): nothing to watch."""

    def fileno(self) -> None:
        return None

    def process_events(self) -> int:
        return 0


class FakeEngine:
    def __init__(self) -> None:
        self.locality = FakeLocality()
        self.links = FakeLinks()
        self.hold = FakeHold()
        self.packets = 0
        self.errors = 0
        self.timeout_s = 0.01
        self.passes = 0
        self.process_events = None  # polling: no proc connector socket

    def drain_capture(self) -> bool:
        return False

    def housekeeping(self, counted: bool) -> None:
        self.passes += 1

    def seconds_until_next_work(self) -> float:
        return 0.0

    def seconds_until_drain(self) -> float:
        return 1.0  # the libpcap path: no kernel counter to drain


class FakeServer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def register(self, selector: Any) -> None:
        self.calls.append("register")

    def service_waiters(self) -> None:
        self.calls.append("service_waiters")

    def waiting_for_loop(self) -> bool:
        return False

    def expire(self) -> None:
        self.calls.append("expire")


class FakeCapture:
    def filenos(self) -> list[int]:
        return []


@pytest.fixture
def make_loop() -> Iterator[Any]:
    """EventLoop over fakes; the signal handlers it installs are put back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loops: list[EventLoop] = []

    def make(pending: list[int] | None = None, atop: bool = True) -> EventLoop:
        loop = EventLoop(
            FakeEngine(),  # type: ignore[arg-type]
            FakeCapture(),  # type: ignore[arg-type]
            FakeServer(),  # type: ignore[arg-type]
            FakeServer() if atop else None,  # type: ignore[arg-type]
            pending,
        )
        loops.append(loop)
        return loop

    try:
        yield make
    finally:
        for loop in loops:
            loop.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_sigterm_right_after_sighup_is_not_lost(make_loop: Any) -> None:
    loop = make_loop()
    loop.received.extend([signal.SIGHUP, signal.SIGTERM])
    assert loop._signals() is True


def test_a_storm_of_sighups_reloads_once_and_a_stop_behind_it_stops(make_loop: Any) -> None:
    loop = make_loop()
    loop.received.extend([signal.SIGHUP] * 50)
    assert loop._signals() is False
    assert loop.engine.links.cleared == 1
    assert loop.received == []
    loop.received.extend([signal.SIGHUP] * 50 + [signal.SIGINT])
    assert loop._signals() is True


def test_real_signals_reach_run(make_loop: Any) -> None:
    loop = make_loop()
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)
    assert loop.run() == 0
    assert loop.engine.links.cleared in (0, 1)  # reload or not: the stop was not lost


def test_signals_noted_before_the_loop_are_acted_on_first(make_loop: Any) -> None:
    pending = [signal.SIGTERM]
    loop = make_loop(pending)
    assert loop.run() == 0
    assert loop.engine.passes == 0  # stopped before counting anything


def test_every_pass_runs_both_servers_timers(make_loop: Any) -> None:
    loop = make_loop()
    loop._pass()
    loop._pass()
    assert loop.server.calls == ["register", "service_waiters", "service_waiters"]
    assert loop.atop.calls == ["register", "expire", "expire"]


def test_a_pass_without_atop_socket(make_loop: Any) -> None:
    loop = make_loop(atop=False)
    loop._pass()
    assert loop.engine.passes == 1
