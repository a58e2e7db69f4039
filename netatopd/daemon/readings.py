"""The object the STATUS registry (netatopd.status) reads the daemon's figures from.

One ``StatusReadings`` is made for each STATUS answer (answers.Answers.status)
and each shared-table publish (engine.Engine.table_figures).  It passes plain
attribute paths through to the engine, reads each costly source once (the
capture's counters, the history writer's, the eBPF helper's, the resolver's
latency figures) and computes the figures that are not one attribute.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..capture.pcap import CaptureStats
from ..parse import Reject

if TYPE_CHECKING:
    from ..server import AtopServer
    from .engine import Engine

# The reasons parse.py rejects a packet for that make it malformed (the others
# are packets not for this host, or of no protocol counted).
MALFORMED = (
    Reject.TRUNCATED_LINK,
    Reject.TRUNCATED_IP,
    Reject.BAD_IP_HEADER,
    Reject.BAD_IPV6_EXTENSION,
    Reject.TRUNCATED_TRANSPORT,
    Reject.IP_LENGTH_BEYOND_FRAME,
)


class StatusReadings:
    """The engine (and the atop server) as the STATUS registry's sources see them."""

    version = __version__

    def __init__(self, engine: Engine, atop: AtopServer | None = None) -> None:
        self.engine = engine
        self.atop = atop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    @property
    def malformed(self) -> int:
        rejects = self.engine.rejects
        return sum(rejects[int(reason)] for reason in MALFORMED)

    @property
    def rejected(self) -> dict[str, int]:
        rejects = self.engine.rejects
        return {reason.name.lower(): rejects[int(reason)] for reason in Reject}

    @property
    def task_count(self) -> int:
        return len(self.engine.tasks)

    @property
    def exit_count(self) -> int:
        return len(self.engine.exit_list)

    @property
    def lane_count(self) -> int:
        return len(self.engine.capture.lanes)

    @functools.cached_property
    def capture_stats(self) -> CaptureStats:
        return self.engine.capture.stats()

    @functools.cached_property
    def owner_latency(self) -> Mapping[str, float | int]:
        return self.engine.resolver.owner_latency_ms()

    @functools.cached_property
    def history_stats(self) -> Mapping[str, int] | None:
        history = self.engine.history
        return None if history is None else history.stats()

    @property
    def history_note(self) -> str:
        """The database in use, or why there is none."""
        engine = self.engine
        return engine.options.db if engine.history is not None else engine.history_problem

    @property
    def ownership(self) -> str:
        return "kernel" if self.engine.kernel is not None else "proc"

    @functools.cached_property
    def kernel_status(self) -> Mapping[str, int | str] | None:
        kernel = self.engine.kernel
        return None if kernel is None else kernel.status()

    @property
    def uptime_s(self) -> float:
        engine = self.engine
        return round(engine.clock.wall() - engine.started_s, 3)

    @functools.cached_property
    def atop_stats(self) -> Mapping[str, int] | None:
        return None if self.atop is None else self.atop.stats()
