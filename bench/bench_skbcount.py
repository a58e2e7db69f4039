"""What the kernel counting path's cgroup_skb programs cost the monitored application.

Run as root: ``.venv/bin/python bench/bench_skbcount.py``.  A Python UDP
sender on the loopback of a network namespace made for the run sends small
datagrams at its maximum rate for SECONDS (to a socket of its own that is
never read: each datagram still passes both programs, the receive queue
drops what overflows).  Two variants of the programs: ``hash``, the daemon's
(ebpf/skbcount.py: a hash map keyed by socket cookie, drained every
DRAIN_INTERVAL_S as the daemon reads known sockets' sums), and ``sk_storage``
(bench/skstorage.py: the counts in per-socket storage, never drained).

Interleaved: each of REPEATS repeats runs none, hash, none, sk_storage, none
(BPF statistics off), so every attached round has a no-program round right
before and right after it; its slowdown is its rate against the mean of
those two.  Then one round of each variant with BPF statistics on gives the
programs' nanoseconds per run (``run_time_ns / run_cnt``; the programs count
the whole machine, so other traffic's runs are in it too).  Median and
spread (min..max) over the repeats.  Bounded: every round stops after
SECONDS and at most MAX_SENDS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this tree's package, not an installed one

from skstorage import SkStorageCounter  # noqa: E402

from netatopd.ebpf.skbcount import KernelCounter  # noqa: E402

from senders import UDP_MAX_RATE  # noqa: E402

SECONDS = 3.0
REPEATS = 5
MAX_SENDS = 10_000_000
PAYLOAD_BYTES = 64
DRAIN_INTERVAL_S = 0.25

SENDER = UDP_MAX_RATE


def run_sender(netns: str, seconds: float, drain: Callable[[], object] | None) -> float:
    """Datagrams per second of one sender round; calls ``drain`` meanwhile."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER]
    argv += [str(seconds), str(MAX_SENDS), str(PAYLOAD_BYTES)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + seconds + 30
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("sender did not finish")
        time.sleep(DRAIN_INTERVAL_S)
        if drain is not None:
            drain()
    assert proc.stdout is not None
    result = json.loads(proc.stdout.read())
    return float(result["per_s"])


def attached(variant: str, run_stats: bool) -> Any:
    """The variant's programs attached (a context manager with run_stats())."""
    if variant == "hash":
        return KernelCounter.open(run_stats=run_stats)
    return SkStorageCounter(run_stats=run_stats)


def drainer(variant: str, counter: Any) -> Callable[[], object] | None:
    return counter.drain if variant == "hash" else None


def spread(values: list[float], digits: int = 1) -> str:
    median = statistics.median(values)
    return f"{median:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespace, bpf)")
    variants = ("hash", "sk_storage")
    rates: dict[str, list[float]] = {"none": [], "hash": [], "sk_storage": []}
    slowdown: dict[str, list[float]] = {"hash": [], "sk_storage": []}
    ns_per_run: dict[str, float] = {}
    netns = f"ntpbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        for _ in range(args.repeats):
            before = run_sender(netns, args.seconds, None)
            rates["none"].append(before)
            for variant in variants:
                with attached(variant, False) as counter:
                    rate = run_sender(netns, args.seconds, drainer(variant, counter))
                after = run_sender(netns, args.seconds, None)
                rates["none"].append(after)
                rates[variant].append(rate)
                slowdown[variant].append((1 - 2 * rate / (before + after)) * 100)
                before = after
        for variant in variants:
            with attached(variant, True) as counter:
                with contextlib.suppress(Exception):
                    counter.drain()  # hash: start from an empty map
                start = counter.run_stats()
                run_sender(netns, args.seconds, drainer(variant, counter))
                end = counter.run_stats()
            runs = sum(end[n][0] - start[n][0] for n in end)
            run_ns = sum(end[n][1] - start[n][1] for n in end)
            if runs:
                ns_per_run[variant] = run_ns / runs
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    print(f"UDP sender on a namespace's loopback, {PAYLOAD_BYTES}-byte datagrams, {args.repeats}")
    print(f"interleaved repeats of {args.seconds:.0f} s rounds, median (min..max):")
    for name, values in rates.items():
        line = f"  {name:12s} {spread([v / 1000 for v in values])} k datagrams/s"
        if name in slowdown:
            line += f"   slowed by {spread(slowdown[name])} % (vs the none rounds beside it)"
        print(line)
    for name, value in ns_per_run.items():
        print(f"  {name:12s} {value:.0f} ns a run, egress and ingress (BPF statistics on)")


if __name__ == "__main__":
    main()
