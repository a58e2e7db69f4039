"""Which STATUS figures the metrics endpoint exports, and under which names.

Data only: each ``Health`` entry is one metric family made from one or more
STATUS figures (netatopd.status.FIELDS, by name), with the labels each figure
gets and the factor to base units.  ``book.MetricsBook`` reads the figures
named here at each publish; ``families.SnapshotCollector`` builds the families.
Figures that start with ``forwarded_`` are exported too, whatever they are,
as ``netatop_<figure>_total``, once the STATUS registry has them.
Imports nothing of prometheus_client, so the loop side does not load it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..status import FIELDS

PREFIX = "netatop_"
FORWARDED_PREFIX = "forwarded_"  # STATUS figures of forwarded traffic, when present


class Health(NamedTuple):
    """One metric family of the daemon's health, made of STATUS figures."""

    name: str  # without the _total of a counter (prometheus_client adds it)
    kind: str  # "counter" or "gauge"
    help: str
    figures: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (figure, labels)
    scale: float = 1.0


def _by_protocol(*pairs: tuple[str, str]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return tuple((figure, (("protocol", protocol),)) for figure, protocol in pairs)


def _one(figure: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return ((figure, ()),)


HEALTH: tuple[Health, ...] = (
    Health(
        "netatop_host_sent_packets",
        "counter",
        "Packets this host sent, counted by netatopd (processes plus unidentified).",
        _by_protocol(("tcp_sent", "tcp"), ("udp_sent", "udp"), ("icmp_sent", "icmp")),
    ),
    Health(
        "netatop_host_received_packets",
        "counter",
        "Packets delivered to this host, counted by netatopd (processes plus unidentified).",
        _by_protocol(("tcp_received", "tcp"), ("udp_received", "udp"), ("icmp_received", "icmp")),
    ),
    Health(
        "netatop_unidentified_sent_packets",
        "counter",
        "Sent packets no process was found for.",
        _by_protocol(("tcp_sent_unidentified", "tcp"), ("udp_sent_unidentified", "udp")),
    ),
    Health(
        "netatop_unidentified_received_packets",
        "counter",
        "Received packets no process was found for.",
        _by_protocol(("tcp_received_unidentified", "tcp"), ("udp_received_unidentified", "udp")),
    ),
    Health(
        "netatop_malformed_packets",
        "counter",
        "Captured frames too short or malformed to count.",
        _one("malformed"),
    ),
    Health(
        "netatop_capture_dropped_packets",
        "counter",
        "Packets the capture ring dropped (the reader was too slow).",
        _one("capture_dropped"),
    ),
    Health(
        "netatop_capture_interface_dropped_packets",
        "counter",
        "Packets the interface or its driver dropped, as libpcap reports.",
        _one("capture_interface_dropped"),
    ),
    Health("netatop_flows", "gauge", "Flow entries (sockinfo) in use.", _one("flows")),
    Health(
        "netatop_flows_pending_owner",
        "gauge",
        "Flow entries whose owner is still being looked for.",
        _one("flows_pending"),
    ),
    Health(
        "netatop_flows_overflow",
        "counter",
        "New flows refused at the flow table cap (--max-flows).",
        _one("flows_overflow"),
    ),
    Health("netatop_tasks", "gauge", "Process entries (taskinfo) in use.", _one("tasks")),
    Health(
        "netatop_tasks_overflow",
        "counter",
        "New processes refused at the task table cap (--max-tasks).",
        _one("tasks_overflow"),
    ),
    Health(
        "netatop_exit_list_processes",
        "gauge",
        "Finished processes waiting in the exit list.",
        _one("exited"),
    ),
    Health(
        "netatop_owner_resolution_seconds",
        "summary",
        "Delay from a new flow's first packet read to its owner known, over the latest"
        " 1000 new flows.",
        (
            ("owner_latency_ms_p50", (("quantile", "0.5"),)),
            ("owner_latency_ms_p99", (("quantile", "0.99"),)),
            ("owner_latency_ms_max", (("quantile", "1"),)),
        ),
        scale=0.001,
    ),
    Health(
        "netatop_history_pending_records",
        "gauge",
        "Records (finished processes, samples) waiting to be written to SQLite.",
        _one("history_pending"),
    ),
    Health(
        "netatop_history_dropped_records",
        "counter",
        "Records dropped before they reached SQLite (queue full or stopping).",
        _one("history_dropped"),
    ),
    Health(
        "netatop_history_write_errors",
        "counter",
        "SQLite write cycles that failed.",
        _one("history_write_errors"),
    ),
)

# Figures read besides those of HEALTH: 'ownership' says whether the eBPF helper is loaded.
OTHER_FIGURES = ("ownership",)


def health_figures() -> tuple[str, ...]:
    """Every STATUS figure a snapshot carries (forwarded_* as the registry has them)."""
    named = [figure for entry in HEALTH for figure, _ in entry.figures]
    forwarded = [name for name in FIELDS if name.startswith(FORWARDED_PREFIX)]
    return (*named, *forwarded, *OTHER_FIGURES)
