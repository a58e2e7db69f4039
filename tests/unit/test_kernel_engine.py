"""The engine on the kernel path: when known sockets' sums are read (fixed cost a second).

Ground truth: a fake counter (test_kernel_capture.FakeCounter) that records
every real drain (map switch + walk), and the clock the test moves.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine import FakeTime
from test_kernel_capture import FakeCounter

from netatopd.capture import kernel as kernel_module
from netatopd.capture.kernel import KernelCapture
from netatopd.config import resolve
from netatopd.daemon.engine import REAP_INTERVAL_S, SIMULATE_CONNECTOR_FAILURE_ENV, Engine
from netatopd.tasks import TaskInfo

SUM_INTERVAL_S = 10.0  # longer than the test: only forced reads drain
GONE_PID = 4_000_000  # above pid_max: no such process
WAKE_FD = 1_000_000  # a wake ring (never watched here: the tests call what the loop would)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(kernel_module.time, "monotonic", lambda: fake.monotonic_s)
    return fake


class EngineCounter(FakeCounter):
    """FakeCounter with what STATUS asks of the counter."""

    def lost(self) -> tuple[int, int]:
        return 0, 0

    def run_stats(self) -> dict[str, tuple[int, int]]:
        return {}


@pytest.fixture
def counter() -> FakeCounter:
    return EngineCounter(wake_fd=WAKE_FD)


@pytest.fixture
def engine(
    tmp_path: Path, fake_time: FakeTime, counter: FakeCounter, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    monkeypatch.setenv(SIMULATE_CONNECTOR_FAILURE_ENV, "1")  # unit tests: no kernel events
    options: argparse.Namespace = resolve(
        [
            "--run-dir",
            str(tmp_path / "run"),
            "--no-history",
            "--ownership",
            "proc",
            "--no-atop-socket",
            "--capture",
            "kernel",
        ],
        environ={},
    )
    (tmp_path / "run").mkdir()
    fake: Any = counter
    capture = KernelCapture(fake, drain_interval_s=0.01, sum_interval_s=SUM_INTERVAL_S)
    engine = Engine(options, capture, fake_time.clock())
    try:
        yield engine
    finally:
        engine.table.close(unlink=True)
        engine.sockdiag.close()
        engine.locality.close()


def test_the_reap_reads_no_sums_while_no_task_finishes(
    engine: Engine, fake_time: FakeTime, counter: FakeCounter
) -> None:
    """A live task is reaped every REAP_INTERVAL_S; known sockets' sums stay in the
    kernel until the sum interval (a read each reap doubled the reads a second)."""
    engine.drain_capture(force=True)  # the start's read
    me = os.getpid()  # a live task: the reap keeps it
    engine.tasks.admit(TaskInfo(me, engine.procfs.stat(me).start_time_ticks, 0, "pytest"))
    counter.send(cookie=7, datagrams=3, new=False)
    drains_before, reaps = counter.drains, 0
    for _ in range(12):
        fake_time.advance(REAP_INTERVAL_S)
        engine.housekeeping()
        reaps += 1
    assert reaps * REAP_INTERVAL_S < SUM_INTERVAL_S
    assert counter.drains == drains_before
    assert counter.sent == {7: 3}  # still in the kernel
    assert engine.tasks.get(me) is not None


def test_a_task_the_reap_finishes_has_the_sums_read_first(
    engine: Engine, fake_time: FakeTime, counter: FakeCounter
) -> None:
    """The before_finish hook reads the sums once the reap saw the process gone."""
    engine.drain_capture(force=True)
    task = TaskInfo(GONE_PID, -1, 1_700_000_000, "ghost")
    engine.tasks.admit(task)
    counter.send(cookie=7, datagrams=3, new=False)
    drains_before = counter.drains
    fake_time.advance(REAP_INTERVAL_S)
    engine.housekeeping()
    assert task.exited
    assert counter.drains == drains_before + 1 and counter.sent == {}


def run_loop(engine: Engine, fake_time: FakeTime, counter: FakeCounter, seconds: float) -> int:
    """The event loop's passes with the clock moved to each wake-up (loop.EventLoop's
    timeout, 1 ms of epoll rounding); a known socket sends before every pass."""
    passes = 0
    end_s = fake_time.monotonic_s + seconds
    while fake_time.monotonic_s < end_s and passes < 10_000:
        timeout_s = min(engine.seconds_until_next_work(), engine.seconds_until_drain())
        fake_time.advance(timeout_s + 0.001)
        counter.send(cookie=7, datagrams=10, new=False)
        passes += 1
        engine.drain_capture()
        engine.housekeeping()
    return passes


@pytest.fixture
def steady(engine: Engine, fake_time: FakeTime, counter: FakeCounter) -> Engine:
    """A live task (reaped every REAP_INTERVAL_S) out of phase with the sums' reads."""
    me = os.getpid()
    engine.tasks.admit(TaskInfo(me, engine.procfs.stat(me).start_time_ticks, 0, "pytest"))
    capture = engine.kernel_capture
    assert capture is not None
    capture.sum_interval_s = REAP_INTERVAL_S  # the default: 250 ms, as the reap
    engine.housekeeping()  # the reap and the publish now ...
    fake_time.advance(0.1)
    counter.send(cookie=7, datagrams=1, new=True)
    engine.drain_capture()  # ... the first read 100 ms later (a new socket)
    engine.housekeeping()
    return engine


def test_reap_publish_and_sums_share_one_wake_up(
    steady: Engine, fake_time: FakeTime, counter: FakeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady traffic of known sockets: one wake-up a sum interval reads the sums, reaps
    and publishes (out of phase they made two or three)."""
    engine = steady
    publish, reap = engine.publish, engine.registry.reap
    done = {"publish": 0, "reap": 0}

    def counted_publish() -> None:
        done["publish"] += 1
        publish()

    def counted_reap(now_s: float, limit: int) -> list[TaskInfo]:
        done["reap"] += 1
        return reap(now_s, limit)

    run_loop(engine, fake_time, counter, 3.0)  # the socket's owner given up meanwhile
    monkeypatch.setattr(engine, "publish", counted_publish)
    monkeypatch.setattr(engine.registry, "reap", counted_reap)
    reads_before = counter.drains
    passes = run_loop(engine, fake_time, counter, 5.0)
    reads, publishes = counter.drains - reads_before, done["publish"]
    assert 19 <= done["reap"] <= 21
    assert 19 <= reads <= 21  # every 250 ms
    assert 19 <= publishes <= 21
    assert passes <= reads + 1  # the reap and the publish woke the loop no more
    assert counter.sent == {}  # every pass's datagrams read in that pass (due then)


def test_a_step_done_at_the_end_of_its_interval_is_not_due_again_at_once(
    engine: Engine, fake_time: FakeTime
) -> None:
    """Back-dated to the last read only when that read was well within the interval:
    a publish in the last DUE_SLACK_S before the next read counts as done now."""
    capture = engine.kernel_capture
    assert capture is not None
    capture.read_monotonic_s = fake_time.monotonic_s - 0.1
    engine.publish()
    assert engine.last_publish_monotonic_s == capture.read_monotonic_s  # in the read's phase
    capture.read_monotonic_s = fake_time.monotonic_s - (engine.publish_interval_s - 0.0005)
    engine.publish()
    assert engine.last_publish_monotonic_s == fake_time.monotonic_s
    engine.packets += 1  # counters changed: the next publish is due an interval later
    assert engine.seconds_until_next_work() > engine.publish_interval_s / 2
