"""The metric families of one scrape, built from the latest snapshot.

``SnapshotCollector`` is a ``prometheus_client`` custom collector: on each
scrape (in the HTTP server's thread) it reads the book's current
``MetricsSnapshot`` once and builds every family from it; the exposition
format is prometheus_client's.  The names follow the Prometheus conventions
(base units, ``_total`` on counters, sent and received as separate metrics,
the ``netatop_`` prefix).  Registered by http.MetricsServer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from .book import MetricsSnapshot
from .catalogue import FORWARDED_PREFIX, HEALTH, PREFIX

# The four counters of a group, as (metric, help, index of the TCP counter in
# COUNTER_NAMES order; the UDP counter is 4 further).
GROUP_COUNTERS: tuple[tuple[str, str, int], ...] = (
    ("sent_packets", "Packets sent", 0),
    ("sent_bytes", "Bytes sent on the wire (IP length + link header + 4)", 1),
    ("received_packets", "Packets received", 2),
    ("received_bytes", "Bytes received on the wire (IP length + link header + 4)", 3),
)
PROTOCOLS = (("tcp", 0), ("udp", 4))


def group_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """netatop_{sent,received}_{packets,bytes}_total by protocol and group."""
    labels = ["protocol", *snapshot.labels]
    for name, text, index in GROUP_COUNTERS:
        family = CounterMetricFamily(
            f"{PREFIX}{name}",
            f"{text} by the processes of a group (finished ones included), per protocol.",
            labels=labels,
        )
        for key, counters in snapshot.groups:
            for protocol, base in PROTOCOLS:
                family.add_metric([protocol, *key], counters[base + index])
        yield family


def process_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The --metrics-top-processes busiest running processes, by pid."""
    if not snapshot.processes:
        return
    for name, text, index in GROUP_COUNTERS:
        family = CounterMetricFamily(
            f"{PREFIX}process_{name}",
            f"{text} by one of the busiest running processes, per protocol.",
            labels=["protocol", "pid", "command"],
        )
        for tgid, command, counters in snapshot.processes:
            for protocol, base in PROTOCOLS:
                family.add_metric([protocol, str(tgid), command], counters[base + index])
        yield family


def health_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The daemon's health from the STATUS figures the snapshot carries."""
    figures = snapshot.figures
    for entry in HEALTH:
        present = [
            (labels, value)
            for figure, labels in entry.figures
            if isinstance(value := figures.get(figure), int | float) and not isinstance(value, bool)
        ]
        if not present:
            continue
        label_names = [name for name, _ in present[0][0]]
        family: Metric
        if entry.kind == "counter":
            family = CounterMetricFamily(entry.name, entry.help, labels=label_names)
        elif entry.kind == "gauge":
            family = GaugeMetricFamily(entry.name, entry.help, labels=label_names)
        else:
            family = Metric(entry.name, entry.help, entry.kind)
        for labels, value in present:
            scaled = value * entry.scale if entry.scale != 1.0 else value
            if isinstance(family, CounterMetricFamily | GaugeMetricFamily):
                family.add_metric([v for _, v in labels], scaled)
            else:
                family.add_sample(entry.name, dict(labels), scaled)
        yield family
    for figure, value in figures.items():
        if figure.startswith(FORWARDED_PREFIX) and isinstance(value, int):
            counter = CounterMetricFamily(
                f"{PREFIX}{figure}", f"STATUS figure {figure}: forwarded traffic."
            )
            counter.add_metric([], value)
            yield counter


def daemon_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """Caps, the eBPF helper, the build, the start time and the series cap's figures."""
    caps = snapshot.caps
    if "max_flows" in caps:
        yield GaugeMetricFamily(
            f"{PREFIX}flows_max", "The flow table cap (--max-flows).", value=caps["max_flows"]
        )
    if "max_tasks" in caps:
        yield GaugeMetricFamily(
            f"{PREFIX}tasks_max", "The task table cap (--max-tasks).", value=caps["max_tasks"]
        )
    ownership = snapshot.figures.get("ownership")
    if ownership is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}ebpf_helper_loaded",
            "1 when the eBPF ownership helper is loaded, 0 when owners come from /proc.",
            value=1 if ownership == "kernel" else 0,
        )
    build = GaugeMetricFamily(
        f"{PREFIX}build_info", "netatopd's version (the value is always 1).", labels=["version"]
    )
    build.add_metric([__version__], 1)
    yield build
    yield GaugeMetricFamily(
        f"{PREFIX}start_time_seconds",
        "When the daemon started, seconds since the epoch.",
        value=snapshot.started_s,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}metrics_groups",
        "Groups with series of their own (the 'other' group apart).",
        value=snapshot.own_groups,
    )
    yield CounterMetricFamily(
        f"{PREFIX}metrics_series_overflow",
        "Groups counted in the 'other' group because --metrics-max-series was reached.",
        value=snapshot.series_overflow,
    )


class SnapshotCollector(Collector):
    """A prometheus_client collector over the snapshot a callable returns."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()  # read once: every family shows the same moment
        yield from group_families(snapshot)
        yield from process_families(snapshot)
        yield from health_families(snapshot)
        yield from daemon_families(snapshot)
