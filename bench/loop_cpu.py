"""netatopd with the CPU time of each step of its loop accounted; not a test.

Starts ``netatopd.daemon.main`` with the loop's steps wrapped: each call adds
the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID, user + system, in ns)
to its step's total.  At exit a table of calls, total CPU and CPU per call is
written to the file named by NETATOPD_LOOP_CPU_OUT (default: standard error).
Each wrapped call costs about a microsecond more, so small steps look dearer
than they are; profile-free otherwise (cProfile costs far more per packet).

Usage, inside a namespace where bench/traffic.py sends (as root):
    python bench/loop_cpu.py --run-dir D/run --db D/db --atop-socket D/atop
"""

from __future__ import annotations

import atexit
import os
import selectors
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netatopd import daemon, exitlist, flows, history, ownership, server  # noqa: E402
from netatopd.capture import pcap  # noqa: E402
from netatopd.daemon import engine, hold  # noqa: E402
from netatopd.ebpf import helper, syscalls  # noqa: E402

OUT_ENV = "NETATOPD_LOOP_CPU_OUT"
totals: dict[str, list[int]] = {}  # step -> [calls, thread CPU ns]


def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started_ns = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            entry = totals.setdefault(label, [0, 0])
            entry[0] += 1
            entry[1] += time.thread_time_ns() - started_ns

    return wrapper


def wrap_method(owner: Any, name: str) -> None:  # a class, or a module
    setattr(owner, name, timed(f"{owner.__name__}.{name}", getattr(owner, name)))


STEPS: tuple[tuple[Any, str], ...] = (
    (engine.Engine, "drain_capture"),
    (pcap.Capture, "read_batch"),
    (engine, "count_records"),  # wrapped where drain_capture looks it up
    (engine, "count_fixed"),
    (flows.FlowTable, "charge"),
    (ownership.Resolver, "resolve"),
    (ownership.KernelOwners, "drain"),
    (helper.KernelOwnership, "drain"),
    (ownership.Resolver, "_apply_kernel_records"),
    (ownership.Resolver, "_processes_changed"),
    (ownership.Resolver, "rescan"),
    (ownership.Resolver, "settle"),
    (engine.Engine, "housekeeping"),
    (engine.Engine, "publish"),
    (engine.Engine, "seconds_until_next_work"),
    (ownership.Sweeper, "run"),
    (ownership.Sweeper, "due"),
    (exitlist.ExitList, "expire"),
    (history.HistoryWriter, "sample_due"),
    (engine.Engine, "table_figures"),
    (hold.Hold, "due"),
    (server.ControlServer, "service_waiters"),
    (selectors.EpollSelector, "select"),
)


def report() -> None:
    lines = [f"{'step':44} {'calls':>8} {'CPU ms':>10} {'us/call':>10}"]
    for label, (calls, cpu_ns) in sorted(totals.items(), key=lambda item: -item[1][1]):
        per_call_us = cpu_ns / max(calls, 1) / 1e3
        lines.append(f"{label:44} {calls:8} {cpu_ns / 1e6:10.1f} {per_call_us:10.1f}")
    text = "\n".join(lines) + "\n"
    path = os.environ.get(OUT_ENV)
    if path:
        with open(path, "w") as out:
            out.write(text)
    else:
        sys.stderr.write(text)


def main() -> None:
    for owner, name in STEPS:
        wrap_method(owner, name)
    # The eBPF helper's drain calls these through the module: wrap them there.
    syscalls.bpf = timed("syscalls.bpf", syscalls.bpf)
    syscalls.map_lookup_batch = timed("syscalls.map_lookup_batch", syscalls.map_lookup_batch)
    atexit.register(report)
    daemon.main()


if __name__ == "__main__":
    main()
