"""What the kernel counting path's cgroup_skb programs cost the monitored application.

Run as root: ``.venv/bin/python bench/bench_skbcount.py``.  A Python UDP
sender on the loopback of a network namespace made for the run sends small
datagrams at its maximum rate for SECONDS (to a socket of its own that is
never read: each datagram still passes both programs, the receive queue
drops what overflows).  Rounds alternate: no program attached, the
programs attached (BPF statistics off), attached with statistics on (the
programs' nanoseconds per run from ``run_time_ns / run_cnt``).  The best of
REPEATS rounds of each is kept; the ratio is the sender's slowdown.  The
counter is drained once a second during the attached rounds, as the daemon
would.  Bounded: every round stops after SECONDS and at most MAX_SENDS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from netatopd.ebpf.skbcount import KernelCounter

from senders import UDP_MAX_RATE

SECONDS = 3.0
REPEATS = 3
MAX_SENDS = 10_000_000
PAYLOAD_BYTES = 64
DRAIN_INTERVAL_S = 1.0
REPO = Path(__file__).resolve().parents[1]

SENDER = UDP_MAX_RATE


def run_sender(netns: str, seconds: float, counter: KernelCounter | None) -> float:
    """Datagrams per second of one sender round; drains ``counter`` meanwhile."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER]
    argv += [str(seconds), str(MAX_SENDS), str(PAYLOAD_BYTES)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + seconds + 30
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("sender did not finish")
        time.sleep(DRAIN_INTERVAL_S)
        if counter is not None:
            counter.drain()
    assert proc.stdout is not None
    result = json.loads(proc.stdout.read())
    return float(result["per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespace, bpf)")
    netns = f"ntpbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        best: dict[str, float] = {"none": 0.0, "attached": 0.0, "attached+stats": 0.0}
        ns_per_run: dict[str, float] = {}
        for _ in range(args.repeats):
            best["none"] = max(best["none"], run_sender(netns, args.seconds, None))
            with KernelCounter.open() as counter:
                rate = run_sender(netns, args.seconds, counter)
                best["attached"] = max(best["attached"], rate)
            with KernelCounter.open(run_stats=True) as counter:
                rate = run_sender(netns, args.seconds, counter)
                best["attached+stats"] = max(best["attached+stats"], rate)
                for name, (runs, run_ns) in counter.run_stats().items():
                    if runs:
                        value = run_ns / runs
                        ns_per_run[name] = min(ns_per_run.get(name, value), value)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    baseline = best["none"]
    print(f"UDP sender on a namespace's loopback, {PAYLOAD_BYTES}-byte datagrams, best of")
    print(f"{args.repeats} rounds of {args.seconds:.0f} s each:")
    for name, rate in best.items():
        change = (rate / baseline - 1) * 100 if baseline else 0.0
        print(f"  {name:16s} {rate / 1000:8.1f} k datagrams/s  {change:+6.1f} %")
    for name, value in sorted(ns_per_run.items()):
        print(f"  {name:16s} {value:8.0f} ns a run (BPF statistics, best round)")


if __name__ == "__main__":
    main()
