"""--hold-ms: when a drain pass counts as sustained load (Engine.hold_due), and the option.

Ground truth: HOLD_MIN_PPS (20,000 packets a second) times the time since the
previous pass, never less than one capture block timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netatopd import daemon
from netatopd.capture.pcap import CaptureStats
from netatopd.config import ConfigError, resolve


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def bare_engine(clock: Clock, hold_ms: int, timeout_ms: int = 10) -> daemon.Engine:
    """An Engine with only what hold_due reads (no capture, no tables)."""
    engine = daemon.Engine.__new__(daemon.Engine)
    engine.hold_s = hold_ms / 1000.0
    engine.timeout_s = timeout_ms / 1000.0
    engine.last_pass_monotonic_s = clock()
    engine.packets = 0
    return engine


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(daemon.time, "monotonic", clock)
    return clock


def test_threshold_is_the_rate_over_the_time_since_the_last_pass(clock: Clock) -> None:
    engine = bare_engine(clock, hold_ms=30)
    clock.now_s += 0.03125  # 1/32 s: exact in binary
    engine.packets = 624  # 624 in 1/32 s: 19,968 a second
    assert engine.hold_due(0) is False
    clock.now_s += 0.03125
    engine.packets = 624 + 625  # 625 in 1/32 s: exactly 20,000 a second
    assert engine.hold_due(624) is True


def test_a_short_pass_is_measured_over_one_block_timeout(clock: Clock) -> None:
    # A control request woke the loop 1 ms after the last pass: 50 packets are
    # 50,000 a second over 1 ms but only 5,000 over the 10 ms block timeout.
    engine = bare_engine(clock, hold_ms=30)
    clock.now_s += 0.001
    engine.packets = 50
    assert engine.hold_due(0) is False
    clock.now_s += 0.001
    engine.packets = 50 + 200  # 200 over the 10 ms block timeout: 20,000 a second
    assert engine.hold_due(50) is True


def test_never_without_the_option(clock: Clock) -> None:
    engine = bare_engine(clock, hold_ms=0)
    clock.now_s += 0.010
    engine.packets = 1_000_000
    assert engine.hold_due(0) is False
    assert engine.last_pass_monotonic_s == clock.now_s  # still tracked


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
    engine = daemon.Engine(options, FakeLanes())  # type: ignore[arg-type]
    try:
        assert engine.hold_s == 0.0
    finally:
        engine.close()


class FakeLanes:
    """What Engine needs of CaptureLanes outside the loop."""

    def stats(self) -> CaptureStats:
        return CaptureStats(0, 0, 0)
