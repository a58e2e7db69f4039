"""The metrics endpoint's cost: 10,000 processes in 1,000 groups.

Prints, never asserts:
* the counting loop's cost of one snapshot (MetricsBook.publish: fold the
  task table into group totals; the daemon does it at most once a second),
  in thread CPU;
* one scrape's cost in the daemon: the collector and prometheus_client's text
  and OpenMetrics formats, in thread CPU;
* a whole scrape over HTTP from curl (a separate process), wall time, and the
  daemon process's CPU per scrape (every thread: the server's included).

Run: .venv/bin/python bench/bench_metrics.py [--processes 10000] [--groups 1000]
No root needed; the HTTP server listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from netatopd.metrics import MetricsBook
from netatopd.metrics.catalogue import health_figures
from netatopd.metrics.families import SnapshotCollector
from netatopd.metrics.http import MetricsServer
from netatopd.tasks import TaskInfo

REPEATS = 30


def thread_cpu_ms(action: object, repeats: int = REPEATS) -> tuple[float, float]:
    """Median and max thread CPU of action() in milliseconds."""
    samples = []
    for _ in range(repeats):
        started = time.thread_time()
        action()  # type: ignore[operator]
        samples.append((time.thread_time() - started) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=1_000)
    args = parser.parse_args()

    tasks = []
    for pid in range(1, args.processes + 1):
        task = TaskInfo(pid, pid, 1_700_000_000, f"command{pid % args.groups}", "", 0)
        task.counters = [pid, pid * 60, pid, pid * 90, pid, pid * 70, pid, pid * 80]
        tasks.append(task)
    figures: dict[str, object] = dict.fromkeys(health_figures(), 1)
    figures["ownership"] = "kernel"
    book = MetricsBook(("command", "user"), caps={"max_flows": 200_000, "max_tasks": 100_000})
    clock = [0.0]

    def publish() -> None:
        clock[0] += 1.0
        for task in tasks[:: args.processes // 100 or 1]:
            task.counters[1] += 100  # some traffic between snapshots
        book.publish(tasks, figures, clock[0], clock[0])

    median, worst = thread_cpu_ms(publish)
    print(f"{args.processes} processes in {len(book.snapshot.groups)} groups")
    print(f"snapshot (counting loop, once a second): {median:.1f} ms median, {worst:.1f} ms max")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: book.snapshot))
    text = generate_latest(registry)
    lines = text.count(b"\n")
    median, worst = thread_cpu_ms(lambda: generate_latest(registry))
    print(
        f"scrape, text format: {median:.1f} ms median, {worst:.1f} ms max CPU,"
        f" {len(text) / 1024:.0f} KiB, {lines} lines"
    )
    median, worst = thread_cpu_ms(lambda: generate_openmetrics(registry))
    print(f"scrape, OpenMetrics format: {median:.1f} ms median, {worst:.1f} ms max CPU")

    server = MetricsServer("127.0.0.1:0", book)
    host, port = server.address
    url = f"http://{host}:{port}/metrics"
    walls = []
    cpu_before = os.times()
    for _ in range(REPEATS):
        started = time.monotonic()
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
        walls.append((time.monotonic() - started) * 1000)
    cpu_after = os.times()
    server.close()
    cpu_ms = (
        (cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system) * 1000 / REPEATS
    )
    print(
        f"scrape over HTTP (curl): {statistics.median(walls):.1f} ms median wall,"
        f" {cpu_ms:.1f} ms daemon CPU per scrape (server thread, spawning curl included)"
    )


if __name__ == "__main__":
    main()
