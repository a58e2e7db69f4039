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
from ..tasks import TCPRCVPACKS, TCPSNDPACKS, UDPRCVPACKS, UDPSNDPACKS
from ..wire import PROTO_TCP

if TYPE_CHECKING:
    from ..server import AtopServer
    from .engine import Engine

# The balance's protocol and direction -> the index of its packets in a task's counters.
BALANCE_COUNTERS = {
    "tcp_sent": TCPSNDPACKS,
    "tcp_received": TCPRCVPACKS,
    "udp_sent": UDPSNDPACKS,
    "udp_received": UDPRCVPACKS,
}

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
_MALFORMED_INDEXES = tuple(int(reason) for reason in MALFORMED)


class StatusReadings:
    """The engine (and the atop server) as the STATUS registry's sources see them."""

    version = __version__

    def __init__(self, engine: Engine, atop: AtopServer | None = None) -> None:
        self.engine = engine
        self.atop = atop

    def __getattr__(self, name: str) -> Any:
        # Kept for the rest of this reading (one STATUS answer or one publish): the
        # figures under one engine attribute (flows, resolver ...) look it up once.
        value = self.__dict__[name] = getattr(self.engine, name)
        return value

    @property
    def malformed(self) -> int:
        rejects = self.engine.rejects
        return sum([rejects[index] for index in _MALFORMED_INDEXES])

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

    @functools.cached_property
    def locality_figures(self) -> Mapping[str, int]:
        """counted_* and forwarded_* by protocol and direction (locality.Locality)."""
        return self.engine.locality.figures()

    @functools.cached_property
    def balance(self) -> Mapping[str, int]:
        """Where every TCP and UDP packet counted went, by protocol and direction.

        counted = processes (running and finished) + unidentified + pending
        (on flows whose owner is not known yet) + forwarded; the difference,
        ``balance_<protocol>_<direction>``, is 0 when no packet was lost.
        """
        engine = self.engine
        processes = list(engine.registry.finished_counters)
        for task in engine.tasks.by_tgid.values():
            for index, value in enumerate(task.counters):
                processes[index] += value
        pending = dict.fromkeys(BALANCE_COUNTERS, 0)
        for flows in (engine.flows.all_flows(), engine.flows.cookie_flows()):
            for flow in flows:
                proto = "tcp" if flow.proto == PROTO_TCP else "udp"
                pending[f"{proto}_sent"] += flow.snd_packs
                pending[f"{proto}_received"] += flow.rcv_packs
        totals = engine.flows.totals
        # The libpcap path counts every frame before locality.py takes the forwarded
        # ones out; the kernel path sees local sockets' packets only (nothing forwarded).
        kernel_path = engine.kernel_capture is not None
        located = self.locality_figures
        figures: dict[str, int] = {}
        for name, index in BALANCE_COUNTERS.items():
            counted = getattr(totals, name) if kernel_path else located[f"counted_{name}"]
            unidentified = getattr(totals, f"{name}_unidentified")
            accounted = processes[index] + unidentified + pending[name]
            if not kernel_path:
                accounted += located[f"forwarded_{name}"]
            figures[f"balance_{name}_counted"] = counted
            figures[f"balance_{name}_processes"] = processes[index]
            figures[f"balance_{name}_pending"] = pending[name]
            figures[f"balance_{name}"] = counted - accounted
        return figures

    # -- network namespaces and the kernel path (issue 12) --------------------------------

    @property
    def capture_path(self) -> str:
        return "kernel" if self.engine.kernel_capture is not None else "pcap"

    @functools.cached_property
    def namespaces_uncovered(self) -> list[int] | None:
        """pcap path: namespaces other than ours holding TCP/UDP sockets (None: kernel path)."""
        if self.engine.kernel_capture is not None:
            return None
        return self.engine.namespaces_elsewhere.get()

    @property
    def namespaces_uncovered_count(self) -> int | None:
        inodes = self.namespaces_uncovered
        return None if inodes is None else len(inodes)

    @functools.cached_property
    def kernel_pending(self) -> Mapping[str, int] | None:
        """kernel path: packets on socket flows whose owner is not known yet."""
        if self.engine.kernel_capture is None:
            return None
        pending = {"tcp_sent": 0, "tcp_received": 0, "udp_sent": 0, "udp_received": 0}
        for flow in self.engine.flows.cookie_flows():
            if flow.owner is None:
                proto = "tcp" if flow.proto == PROTO_TCP else "udp"
                pending[f"{proto}_sent"] += flow.snd_packs
                pending[f"{proto}_received"] += flow.rcv_packs
        return pending

    @functools.cached_property
    def kernel_object_ids(self) -> Mapping[str, list[int]] | None:
        """kernel path: the kernel ids of its programs and maps, and of the eBPF helper's
        when it is loaded (tests check they go)."""
        capture = self.engine.kernel_capture
        if capture is None:
            return None
        programs, maps = capture.counter.object_ids()
        ids = {"programs": programs, "maps": maps}
        helper = self.engine.kernel
        if helper is not None:
            ids["helper_programs"], ids["helper_maps"] = helper.object_ids()
        return ids
