"""Where the kernel path's daemon spends its CPU a second: idle, paced and unpaced; not a test.

Run as root: ``.venv/bin/python bench/kernel_split.py [--seconds 5] [--repeats 1]
[--daemon-option=--sum-interval-ms=1000 ...]``.
Like bench_daemon.py's cpu section, it makes a network namespace, starts
``netatopd --capture kernel`` in it (pinned to CPU 0) and a UDP sender of
bench/traffic.py (8 flows, 64-byte payloads, CPU 1), warms up, then measures
windows of the same length: idle (no traffic of ours), 50k pps, 100k pps and
unpaced.  For each window it prints the daemon's CPU a second (every thread,
schedstat), its main thread's voluntary wake-ups a second, the CPU a packet
and the same less the idle window's rate (the marginal cost a packet), and
the split: the main thread's CPU a second in each step of its loop (the
daemon runs inside this script with those steps wrapped, as in loop_cpu.py;
nested steps are included in their callers' figures).  The kernel path counts
the whole machine: on a shared host the other processes' traffic is in every
window (the load average is printed beside each).  It prints; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_daemon as bench  # noqa: E402
from loop_cpu import timed, totals  # noqa: E402  (the loop's steps wrapped the same way)

DAEMON_FLAG = "--as-daemon"  # this script, started again as the wrapped daemon
OUT_ENV = "NETATOPD_KERNEL_SPLIT_OUT"  # where the daemon writes each window's split


def run_daemon(argv: list[str]) -> None:
    """The daemon with its steps wrapped; SIGUSR1 starts a window, SIGUSR2 writes it."""
    from netatopd import flows, ownership, table
    from netatopd.capture import kernel
    from netatopd.daemon import engine, loop
    from netatopd.daemon.main import main
    from netatopd.ebpf import skbcount, syscalls
    from netatopd.ownership import registry

    steps: tuple[tuple[Any, str], ...] = (
        (loop.EventLoop, "_pass"),
        (selectors.EpollSelector, "select"),
        (engine.Engine, "_read_sums"),
        (kernel.KernelCapture, "drain"),
        (skbcount.KernelCounter, "drain"),
        (flows.FlowTable, "charge_sockets"),
        (ownership.Resolver, "resolve"),
        (ownership.Resolver, "settle"),
        (engine.Engine, "housekeeping"),
        (registry.TaskRegistry, "reap"),
        (ownership.Sweeper, "run"),
        (engine.Engine, "publish"),
        (engine.Engine, "table_figures"),
        (table.TableWriter, "publish_tasks"),
        (engine.Engine, "on_process_events"),
    )
    for owner, name in steps:
        setattr(owner, name, timed(f"{owner.__name__}.{name}", getattr(owner, name)))
    for name in ("map_update", "map_lookup_batch"):  # called through the module
        setattr(syscalls, name, timed(f"bpf {name}", getattr(syscalls, name)))
    publish_tasks = table.TableWriter.publish_tasks

    def counted_publish(writer: Any, tasks: Any, exited: list[Any], status: Any) -> int:
        """The table's size (live tasks, exit-list entries) summed over the publishes."""
        totals.setdefault("table: live tasks (sum)", [0, 0])[0] += len(tasks.by_tgid)
        totals.setdefault("table: exit-list rows (sum)", [0, 0])[0] += len(exited)
        return publish_tasks(writer, tasks, exited, status)

    table.TableWriter.publish_tasks = counted_publish  # type: ignore[method-assign]
    out = os.environ[OUT_ENV]
    window: dict[str, float] = {}

    def start(*_: object) -> None:
        totals.clear()
        window["monotonic"] = time.monotonic()

    def write(*_: object) -> None:
        seconds = time.monotonic() - window.get("monotonic", 0.0)
        split = {
            label: (calls / seconds, ns / 1e6 / seconds) for label, (calls, ns) in totals.items()
        }
        Path(out + ".new").write_text(json.dumps(split))
        os.replace(out + ".new", out)  # whole: the bench reads it once it exists

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, write)
    main(argv)


class SplitDaemon(bench.NetatopdKernel):
    name = "netatopd-kernel"
    entry = [str(Path(__file__).resolve()), DAEMON_FLAG]


def window(
    daemon: SplitDaemon, out: Path, label: str, send: Callable[[], int], idle_ms_s: float | None
) -> float:
    os.kill(daemon.pid, signal.SIGUSR1)
    time.sleep(0.05)
    cpu, wakes = daemon.cpu_ns(), bench.proc_status_field(daemon.pid, "voluntary_ctxt_switches")
    started = time.monotonic()
    sent = send()
    seconds = time.monotonic() - started
    used_ns = daemon.cpu_ns() - cpu
    wakes = bench.proc_status_field(daemon.pid, "voluntary_ctxt_switches") - wakes
    os.kill(daemon.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 5.0
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    split = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    ms_s = used_ns / 1e6 / seconds
    line = f"{label:8} {seconds:5.2f} s  {sent / seconds:8.0f} pps  CPU {ms_s:6.2f} ms/s"
    line += f"  wake-ups {wakes / seconds:5.1f}/s"
    if sent:
        line += f"  {used_ns / 1000 / sent:6.3f} us/packet"
        if idle_ms_s is not None:
            line += f", less idle {(ms_s - idle_ms_s) * 1000 / (sent / seconds):6.3f}"
    print(f"{line}  (load {os.getloadavg()[0]:.2f})")
    for step, (calls, step_ms_s) in sorted(split.items(), key=lambda item: -item[1][1]):
        print(f"    {step:36} {calls:7.1f}/s {step_ms_s:8.3f} ms/s")
    return ms_s


def idle_for(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == DAEMON_FLAG:
        run_daemon(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each window")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the four windows")
    parser.add_argument(
        "--daemon-option", action="append", default=[], help="extra daemon option (repeat)"
    )
    options = parser.parse_args()
    SplitDaemon.extra = list(options.daemon_option)
    if os.geteuid() != 0:
        sys.exit("kernel_split.py needs root")
    os.sched_setaffinity(0, {bench.MONITOR_CPU})
    ns = bench.Netns(f"ntpS{os.getpid()}")
    try:
        with tempfile.TemporaryDirectory(prefix="netatop-split-") as temp:
            workdir = Path(temp)
            out = workdir / "split.json"
            os.environ[OUT_ENV] = str(out)
            daemon = SplitDaemon(ns, workdir)
            udp = None
            try:
                udp = bench.Traffic(ns, "udp", flows=8, payload_bytes=64)
                udp.ask("go 20000 400")  # warm-up: flows exist, owners known
                daemon.settle()
                for _ in range(options.repeats):
                    seconds = options.seconds
                    idle = window(daemon, out, "idle", lambda s=seconds: idle_for(s), None)
                    for rate in (50_000, 100_000, 0):
                        count = int((rate or 250_000) * seconds)
                        command = f"go {rate} {count}"
                        label = f"{rate // 1000}k pps" if rate else "unpaced"
                        window(daemon, out, label, lambda c=command: int(udp.ask(c)["sent"]), idle)
            finally:
                if udp is not None:
                    udp.close()
                daemon.stop()
    finally:
        ns.delete()
    print("CPU: every thread of the daemon (schedstat); the split: its main thread's CPU in")
    print("each wrapped step (nested steps counted in their callers too), about 1 us a call more")


if __name__ == "__main__":
    main()
