"""What a program on sock:sock_send_length / sock:sock_recv_length costs a UDP sender,
attached as a perf-event tracepoint or as a raw tracepoint.

Run as root: ``.venv/bin/python bench/bench_rawtp.py``.  A Python UDP sender
(bench/senders.py, its socket given its cookie first, as the kernel path's
cgroup_skb programs would at its first packet) sends 64-byte datagrams at its
maximum rate for SECONDS on the loopback of a namespace made for the run,
pinned to one CPU.  Variants:

* ``none``: nothing attached;
* ``perf-trivial`` / ``raw-trivial``: a program that only returns 0, on both
  tracepoints, as BPF_PROG_TYPE_TRACEPOINT through perf_event_open (the kernel
  fills the tracepoint's record in a per-CPU buffer first) or as
  BPF_PROG_TYPE_RAW_TRACEPOINT (BPF_RAW_TRACEPOINT_OPEN: the arguments only);
* ``helper-perf`` / ``helper-raw``: the ownership helper as the kernel counting
  path loads it (every namespace), its send/recv programs attached one way or
  the other (``KernelOwnership.load(raw_tracepoints=...)``).

Interleaved: each of REPEATS repeats runs none, v1, none, v2, ..., none, so every
variant's round has a no-program round right before and right after it; its
slowdown is its rate against the mean of those two.  Median and spread
(min..max) over the repeats; the load average before and after.  Bounded:
every round stops after SECONDS and at most MAX_SENDS datagrams.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this tree's package, not an installed one

from netatopd.ebpf import KernelOwnership, syscalls  # noqa: E402
from netatopd.ebpf.asm import Reg, assemble, exit_insn, mov64_imm  # noqa: E402
from netatopd.ebpf.programs import read_format  # noqa: E402

from senders import UDP_MAX_RATE  # noqa: E402

SECONDS = 2.0
REPEATS = 5
MAX_SENDS = 10_000_000
PAYLOAD_BYTES = 64
SENDER_CPU = 1
TRACEPOINTS = ("sock_send_length", "sock_recv_length")
SO_COOKIE = 57  # asm-generic/socket.h: asking gives the socket its cookie

_COOKIE_LINE = "send, payload = sender.send"
SENDER = UDP_MAX_RATE.replace(
    _COOKIE_LINE, f"sender.getsockopt(socket.SOL_SOCKET, {SO_COOKIE}, 8)\n{_COOKIE_LINE}"
)
assert SENDER != UDP_MAX_RATE, "senders.UDP_MAX_RATE changed: update the cookie line"

Variant = Callable[[], contextlib.AbstractContextManager[object]]


def run_sender(netns: str, seconds: float) -> float:
    """Datagrams per second of one sender round."""
    argv = ["ip", "netns", "exec", netns, "taskset", "-c", str(SENDER_CPU)]
    argv += [sys.executable, "-c", SENDER, str(seconds), str(MAX_SENDS), str(PAYLOAD_BYTES)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=REPO
    )
    return float(json.loads(done.stdout)["per_s"])


def _trivial_program(prog_type: syscalls.ProgType, name: str) -> int:
    code = assemble([mov64_imm(Reg.R0, 0), exit_insn()])
    return syscalls.prog_load(prog_type, code, "GPL", name)


@contextlib.contextmanager
def perf_trivial() -> Iterator[object]:
    """A return-0 program on both tracepoints through perf events."""
    fds: list[int] = []
    try:
        prog = _trivial_program(syscalls.ProgType.TRACEPOINT, "ntp_bench_perf")
        fds.append(prog)
        for name in TRACEPOINTS:
            perf = syscalls.perf_event_open_tracepoint(read_format("sock", name).id, 0)
            fds.append(perf)
            syscalls.perf_event_attach(perf, prog)
        yield None
    finally:
        for fd in reversed(fds):
            os.close(fd)


@contextlib.contextmanager
def raw_trivial() -> Iterator[object]:
    """A return-0 program on both tracepoints as a raw tracepoint."""
    fds: list[int] = []
    try:
        prog = _trivial_program(syscalls.ProgType.RAW_TRACEPOINT, "ntp_bench_raw")
        fds.append(prog)
        for name in TRACEPOINTS:
            fds.append(syscalls.raw_tracepoint_open(name, prog))
        yield None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def helper(raw: bool) -> Variant:
    def variant() -> contextlib.AbstractContextManager[object]:
        try:
            return KernelOwnership.load(every_namespace=True, raw_tracepoints=raw)  # type: ignore[call-arg]
        except TypeError:  # a tree before raw tracepoints: the perf programs only
            if raw:
                raise
            return KernelOwnership.load(every_namespace=True)

    return variant


VARIANTS: dict[str, Variant] = {
    "perf-trivial": perf_trivial,
    "raw-trivial": raw_trivial,
    "helper-perf": helper(False),
    "helper-raw": helper(True),
}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    wanted = [name for name in args.variants.split(",") if name]
    for name in wanted:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name} (known: {', '.join(VARIANTS)})")
    netns = f"ntpR{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    slowdowns: dict[str, list[float]] = {name: [] for name in wanted}
    rates: dict[str, list[float]] = {name: [] for name in ["none", *wanted]}
    print(f"load average before: {load_average()}")
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for repeat in range(args.repeats):
            previous = run_sender(netns, args.seconds)
            rates["none"].append(previous)
            for name in wanted:
                with VARIANTS[name]():
                    rate = run_sender(netns, args.seconds)
                after = run_sender(netns, args.seconds)
                rates["none"].append(after)
                rates[name].append(rate)
                slowdowns[name].append(100.0 * (1 - rate / ((previous + after) / 2)))
                previous = after
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{name} {slowdowns[name][-1]:.1f}%" for name in wanted)
                + f" (load {load_average()})",
                flush=True,
            )
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    print(f"load average after: {load_average()}")
    none = rates["none"]
    print(
        f"no program: {statistics.median(none) / 1e3:.0f}k datagrams/s "
        f"({min(none) / 1e3:.0f}k..{max(none) / 1e3:.0f}k)"
    )
    print("| variant | datagrams/s (median) | sender slowed by, median (min..max) |")
    print("| --- | --- | --- |")
    for name in wanted:
        values = slowdowns[name]
        print(
            f"| {name} | {statistics.median(rates[name]) / 1e3:.0f}k | "
            f"{statistics.median(values):.1f}% ({min(values):.1f}..{max(values):.1f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
