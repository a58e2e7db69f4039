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
    return EngineCounter()


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
