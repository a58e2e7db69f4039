"""--hold-ms: whether a pass ran at sustained load, and the hold that follows.

While held, the event loop (loop.EventLoop) keeps the capture descriptors out
of its selector, so the capture ring fills and the next reads take larger
batches; any other wake-up still drains the ring, so SYNC and requests stay
prompt.  Owns the hold's state (when it ends, how many there were); the
engine (engine.Engine) makes one and reports its figures in STATUS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from ..defaults import HOLD_MIN_PPS, HOLD_MS_WITH_KERNEL_OWNERSHIP


def hold_seconds(hold_ms_option: int, kernel_ownership: bool) -> float:
    """The hold --hold-ms asks for; -1 decides by the ownership source."""
    if hold_ms_option < 0:
        hold_ms_option = HOLD_MS_WITH_KERNEL_OWNERSHIP if kernel_ownership else 0
    return hold_ms_option / 1000.0


class HoldChange(IntEnum):
    """What the loop does with the capture descriptors after a pass."""

    NONE = 0
    START = 1  # take them out of the selector
    END = 2  # put them back


class Hold:
    """The hold state between passes of the event loop."""

    def __init__(
        self,
        hold_s: float,
        block_timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hold_s = hold_s
        self.block_timeout_s = block_timeout_s
        self.monotonic = monotonic
        self.last_pass_monotonic_s = monotonic()
        self.held_until_s = 0.0  # monotonic; 0: not held
        self.holds = 0

    @property
    def hold_ms(self) -> int:
        return round(self.hold_s * 1000)

    def due(self, packets: int) -> bool:
        """Whether a pass that counted packets ran at sustained load.

        The rate is the packets of this pass over the time since the previous
        pass ended, never less than one capture block timeout; any wake-up (a
        control request, a timer) starts a pass.
        """
        now_s = self.monotonic()
        elapsed_s = now_s - self.last_pass_monotonic_s
        self.last_pass_monotonic_s = now_s
        if not self.hold_s:
            return False
        return packets >= HOLD_MIN_PPS * max(elapsed_s, self.block_timeout_s)

    def after_pass(self, packets: int) -> HoldChange:
        """Start, extend or end the hold after a pass that counted packets."""
        if self.due(packets):
            started = not self.held_until_s
            if started:
                self.holds += 1
            self.held_until_s = self.monotonic() + self.hold_s
            return HoldChange.START if started else HoldChange.NONE
        if self.held_until_s:
            self.held_until_s = 0.0
            return HoldChange.END
        return HoldChange.NONE

    def seconds_left(self) -> float | None:
        """Until the hold ends; None when not held."""
        if not self.held_until_s:
            return None
        return max(0.0, self.held_until_s - self.monotonic())
