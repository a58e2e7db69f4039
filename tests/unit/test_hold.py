"""--hold-ms: when a drain pass counts as sustained load (Hold.due), the hold, and the option.

Ground truth: HOLD_MIN_PPS (20,000 packets a second) times the time since the
previous pass, never less than one capture block timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netatopd.capture.pcap import CaptureStats
from netatopd.config import ConfigError, resolve
from netatopd.daemon.engine import Engine
from netatopd.daemon.hold import Hold, HoldChange


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_hold(clock: Clock, hold_ms: int, timeout_ms: int = 10) -> Hold:
    return Hold(hold_ms / 1000.0, timeout_ms / 1000.0, monotonic=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_threshold_is_the_rate_over_the_time_since_the_last_pass(clock: Clock) -> None:
    hold = make_hold(clock, hold_ms=30)
    clock.now_s += 0.03125  # 1/32 s: exact in binary
    assert hold.due(624) is False  # 624 in 1/32 s: 19,968 a second
    clock.now_s += 0.03125
    assert hold.due(625) is True  # 625 in 1/32 s: exactly 20,000 a second


def test_a_short_pass_is_measured_over_one_block_timeout(clock: Clock) -> None:
    # A control request woke the loop 1 ms after the last pass: 50 packets are
    # 50,000 a second over 1 ms but only 5,000 over the 10 ms block timeout.
    hold = make_hold(clock, hold_ms=30)
    clock.now_s += 0.001
    assert hold.due(50) is False
    clock.now_s += 0.001
    assert hold.due(200) is True  # 200 over the 10 ms block timeout: 20,000 a second


def test_never_without_the_option(clock: Clock) -> None:
    hold = make_hold(clock, hold_ms=0)
    clock.now_s += 0.010
    assert hold.due(1_000_000) is False
    assert hold.last_pass_monotonic_s == clock.now_s  # still tracked
    assert hold.after_pass(1_000_000) is HoldChange.NONE and hold.holds == 0


def test_a_hold_starts_is_extended_and_ends(clock: Clock) -> None:
    hold = make_hold(clock, hold_ms=30)
    step_s = 0.015625  # 1/64 s, exact in binary: 312.5 packets are 20,000 a second
    assert hold.seconds_left() is None
    clock.now_s += step_s
    assert hold.after_pass(313) is HoldChange.START
    assert hold.holds == 1 and hold.seconds_left() == pytest.approx(0.030)
    clock.now_s += 0.030
    assert hold.seconds_left() == 0.0
    assert hold.after_pass(1000) is HoldChange.NONE  # still at load: held on, not counted again
    assert hold.holds == 1 and hold.seconds_left() == pytest.approx(0.030)
    clock.now_s += step_s
    assert hold.after_pass(312) is HoldChange.END
    assert hold.seconds_left() is None
    clock.now_s += step_s
    assert hold.after_pass(313) is HoldChange.START and hold.holds == 2


def test_option_default_and_minimum(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    # -1: decided by the ownership source when the engine starts (see
    # tests/privileged/test_daemon.py::test_default_hold_follows_the_ownership_source)
    assert resolve(["--config", str(config)], environ={}).hold_ms == -1
    assert resolve(["--config", str(config), "--hold-ms", "30"], environ={}).hold_ms == 30
    assert resolve(["--config", str(config), "--hold-ms", "0"], environ={}).hold_ms == 0
    with pytest.raises(ConfigError):
        resolve(["--config", str(config), "--hold-ms", "-2"], environ={})


def test_proc_ownership_engine_has_no_default_hold(tmp_path: Path) -> None:
    options = resolve(
        ["--run-dir", str(tmp_path), "--no-history", "--ownership", "proc", "--no-atop-socket"],
        environ={},
    )
    engine = Engine(options, FakeLanes())  # type: ignore[arg-type]
    try:
        assert engine.hold.hold_s == 0.0
    finally:
        engine.close()


class FakeLanes:
    """What Engine needs of CaptureLanes outside the loop."""

    def stats(self) -> CaptureStats:
        return CaptureStats(0, 0, 0)
