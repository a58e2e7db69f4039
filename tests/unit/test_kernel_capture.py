"""KernelCapture's two rates: new sockets drained at once, known sockets' sums later.

Ground truth: a fake counter whose ``changes`` says what the programs' news
counters would, and which records every real drain (map switch + walk).
"""

from __future__ import annotations

from typing import Any

import pytest

from netatopd.capture import kernel as kernel_module
from netatopd.capture.kernel import KernelCapture
from netatopd.ebpf.skbcount import SocketCounts

UDP, AF_INET = 17, 2


class FakeCounter:
    """changes() from the fields; drain() hands out what was sent and records the call."""

    def __init__(self, wake_fd: int | None = None) -> None:
        self.anything = False
        self.new_socket = False
        self.sent: dict[int, int] = {}  # cookie -> datagrams of 100 IP bytes
        self.drains = 0
        self.wake_fd = wake_fd
        self.woken = False  # what the wake ring holds

    def wake_fileno(self) -> int | None:
        return self.wake_fd

    def take_wake(self) -> bool:
        woken, self.woken = self.woken, False
        return woken

    def changes(self) -> tuple[bool, bool]:
        return self.anything, self.new_socket

    def drain(self) -> dict[int, SocketCounts]:
        self.drains += 1
        out = {
            cookie: SocketCounts(cookie, 1, UDP, AF_INET, n, 100 * n, 0, 0)
            for cookie, n in self.sent.items()
        }
        self.sent.clear()
        self.anything = self.new_socket = False
        return out

    def send(self, cookie: int, datagrams: int, new: bool) -> None:
        self.sent[cookie] = self.sent.get(cookie, 0) + datagrams
        self.anything = True
        self.new_socket = self.new_socket or new
        self.woken = self.woken or new


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(kernel_module.time, "monotonic", lambda: now[0])
    return now


def capture_of(counter: FakeCounter) -> KernelCapture:
    """Drain interval 10 ms, sum interval 250 ms."""
    fake: Any = counter
    return KernelCapture(fake, drain_interval_s=0.01, sum_interval_s=0.25)


def sent(sums: list[tuple[int, ...]] | None) -> dict[int, int]:
    assert sums is not None
    return {row[0]: row[4] for row in sums}


def test_known_sockets_wait_for_the_sum_interval_new_ones_do_not(clock: list[float]) -> None:
    counter = FakeCounter()
    capture = capture_of(counter)
    counter.send(7, 3, new=True)
    assert sent(capture.drain()) == {7: 3}  # a new socket: at once
    counter.send(7, 5, new=False)
    for _ in range(24):  # 240 ms of 10 ms checks: the known socket's sums wait
        clock[0] += 0.01
        assert capture.drain() is None
    assert counter.drains == 1 and capture.deferred == 24
    counter.send(8, 1, new=True)  # a new socket brings the known one's sums along
    clock[0] += 0.01
    assert sent(capture.drain()) == {7: 5, 8: 1}
    counter.send(7, 2, new=False)
    clock[0] += 0.1
    assert capture.drain() is None
    clock[0] += 0.15  # 250 ms since the last read: the sums are due
    assert sent(capture.drain()) == {7: 2}
    assert capture.packets == 3 + 5 + 1 + 2  # nothing lost, nothing twice


def test_force_and_want_sums_read_known_sockets_at_once(clock: list[float]) -> None:
    counter = FakeCounter()
    capture = capture_of(counter)
    counter.send(7, 1, new=True)
    capture.drain()
    counter.send(7, 4, new=False)
    clock[0] += 0.01
    assert capture.drain() is None
    assert sent(capture.drain(force=True)) == {7: 4}  # a process exits
    counter.send(7, 6, new=False)
    clock[0] += 0.01
    capture.want_sums()  # a SYNC waits
    assert sent(capture.drain()) == {7: 6}
    counter.send(7, 1, new=False)
    clock[0] += 0.01
    assert capture.drain() is None  # want_sums is for one read


def test_nothing_to_drain_is_a_complete_empty_drain(clock: list[float]) -> None:
    counter = FakeCounter()
    capture = capture_of(counter)
    assert capture.drain() == []  # complete: everything up to now is counted
    assert capture.deferred == 0 and capture.drains == 1


def test_a_read_with_nothing_moved_does_not_drain_the_counter(clock: list[float]) -> None:
    """The news counters unchanged since the last switch: no map switch, no walk
    (the counter's drain is not called), and still a complete, empty read."""
    counter = FakeCounter()
    capture = capture_of(counter)
    counter.send(7, 2, new=True)
    assert sent(capture.drain()) == {7: 2}
    assert counter.drains == 1
    for _ in range(3):
        clock[0] += 0.25
        assert capture.drain() == []  # the sum interval is up, nothing moved
        assert capture.drain(force=True) == []
    assert counter.drains == 1 and capture.drains == 7
    counter.send(7, 1, new=False)
    assert sent(capture.drain(force=True)) == {7: 1}
    assert counter.drains == 2 and capture.packets == 3


def test_the_sum_interval_is_never_shorter_than_the_drain_interval() -> None:
    fake: Any = FakeCounter()
    assert KernelCapture(fake, drain_interval_s=0.5, sum_interval_s=0.1).sum_interval_s == 0.5


def test_with_a_wake_ring_the_loop_sleeps_until_a_new_socket_or_the_sums(
    clock: list[float],
) -> None:
    counter = FakeCounter(wake_fd=42)
    capture = capture_of(counter)
    assert capture.filenos() == [42]
    assert capture.due()  # the first drain
    assert capture.drain() == []
    assert capture.seconds_until_drain() == pytest.approx(0.25)  # not 10 ms: no polling
    counter.send(7, 2, new=False)
    clock[0] += 0.1
    assert not capture.due()  # known sockets' sums wait
    counter.send(9, 1, new=True)  # the ring wakes the loop
    assert capture.due()
    assert sent(capture.drain()) == {7: 2, 9: 1}
    counter.send(10, 1, new=True)  # another new socket at once: one drain interval later
    assert not capture.due()
    assert capture.seconds_until_drain() == pytest.approx(0.01)
    clock[0] += 0.01
    assert capture.due()
    assert sent(capture.drain()) == {10: 1}


def test_without_a_wake_ring_the_loop_polls_every_drain_interval(clock: list[float]) -> None:
    counter = FakeCounter()
    capture = capture_of(counter)
    assert capture.filenos() == []
    capture.drain()
    assert capture.seconds_until_drain() == pytest.approx(0.01)
