"""What a program on sock:sock_send_length / sock:sock_recv_length costs a UDP sender,
attached as a perf-event tracepoint, as a raw tracepoint or as a tp_btf program.

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
* ``helper-perf`` / ``helper-raw`` / ``helper-btf``: the ownership helper as
  the kernel counting path loads it (every namespace), its send/recv programs
  attached one way or another (``KernelOwnership.load(raw_tracepoints=...,
  btf_tracepoints=...)``); ``helper-btf`` is the tp_btf way with the per-socket
  fast path (the generation is not moved on during a slice: a slice's sends
  after the first are the fast path's, as a busy socket's are between two
  generations);
* ``cgroup-trivial``: two cgroup_skb programs that only return 1, at ingress and
  egress of the cgroup v2 root: the kernel's dispatch of the kernel path's
  hooks with nothing done in them (a loopback datagram passes both);
* ``cgroup-count``: the kernel path's counting programs as the daemon loads them
  (``KernelCounter.open()``; not drained during a slice);
* ``kernel-path``: both, what ``netatopd --capture kernel`` loads.

``--helper-calls N`` measures instead what one bpf_ktime_get_ns or
bpf_get_current_pid_tgid call costs in such a program, and ``--run-stats N``
the helper's ntp_send nanoseconds a run, raw against tp_btf (BPF run
statistics), on a UDP socket with its cookie and on an AF_UNIX pair.

Interleaved: each of REPEATS repeats runs none, v1, none, v2, ..., none, so every
variant's round has a no-program round right before and right after it; its
slowdown is its rate against the mean of those two.  The sender's own CPU
(user + system, from wait4) a datagram is taken too, and the CPU a variant
adds against the mean of its two neighbours: on a shared machine this is the
steadier figure (the rate also falls when other work takes the sender's CPU;
the CPU a datagram does not).  Last, each variant's best (lowest) CPU a
datagram against the best no-program round: the least disturbed rounds.  Median and spread
(min..max) over the repeats; the load average before and after.  Bounded:
every round stops after SECONDS and at most MAX_SENDS datagrams.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this tree's package, not an installed one

from netatopd.ebpf import KernelOwnership, loaded_programs, syscalls  # noqa: E402
from netatopd.ebpf.asm import Helper, Reg, assemble, call, exit_insn, mov64_imm  # noqa: E402
from netatopd.ebpf.programs import read_format  # noqa: E402
from netatopd.ebpf.skbcount import KernelCounter, find_cgroup2_root  # noqa: E402

from senders import UDP_MAX_RATE  # noqa: E402

SECONDS = 2.0
REPEATS = 5
MAX_SENDS = 10_000_000
PAYLOAD_BYTES = 64
SENDER_CPU = 1
TRACEPOINTS = ("sock_send_length", "sock_recv_length")
SLICE_SENDS = 5_000
WARM_UP_SENDS = 1_000
CLEAN_POLL_S = 0.2
SO_COOKIE = 57  # asm-generic/socket.h: asking gives the socket its cookie

_COOKIE_LINE = "send, payload = sender.send"
SENDER = UDP_MAX_RATE.replace(
    _COOKIE_LINE, f"sender.getsockopt(socket.SOL_SOCKET, {SO_COOKIE}, 8)\n{_COOKIE_LINE}"
)
assert SENDER != UDP_MAX_RATE, "senders.UDP_MAX_RATE changed: update the cookie line"

Variant = Callable[[], contextlib.AbstractContextManager[object]]


class Round(NamedTuple):
    """One sender round: its rate and its own CPU (user + system) a datagram."""

    per_s: float
    cpu_ns: float


def run_sender(netns: str, seconds: float) -> Round:
    """One sender round.  ``ip netns exec`` and ``taskset`` exec the sender in place,
    so the child's resource usage (wait4) is the sender's own."""
    argv = ["ip", "netns", "exec", netns, "taskset", "-c", str(SENDER_CPU)]
    argv += [sys.executable, "-c", SENDER, str(seconds), str(MAX_SENDS), str(PAYLOAD_BYTES)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()  # the sender stops by itself after ``seconds``
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed with status {proc.returncode}")
    answer = json.loads(out)
    cpu_s = usage.ru_utime + usage.ru_stime
    return Round(float(answer["per_s"]), cpu_s * 1e9 / int(answer["sent"]))


def _trivial_program(prog_type: syscalls.ProgType, name: str) -> int:
    code = assemble([mov64_imm(Reg.R0, 0), exit_insn()])
    fd = syscalls.prog_load(prog_type, code, "GPL", name)
    OURS.add(syscalls.object_id(fd))
    return fd


# Ids of the programs this run loaded (they may outlive their close for a moment).
OURS: set[int] = set()
FOREIGN_NAMES = ("ntp_send", "ntp_recv")


def foreign_length_programs() -> int:
    """Programs named ntp_send / ntp_recv that this run did not load: another daemon's
    helper.  With one attached as a perf-event tracepoint program the kernel builds the
    tracepoint's record for every call whatever this run attaches, so a perf program
    of ours then costs only its own run, and a raw one adds a second probe."""
    return sum(
        1
        for prog_id, name in loaded_programs().items()
        if prog_id not in OURS and name in FOREIGN_NAMES
    )


@contextlib.contextmanager
def _closed_after() -> Iterator[list[int]]:
    """A list for the fds a variant opens; closed in reverse order when it ends."""
    fds: list[int] = []
    try:
        yield fds
    finally:
        for fd in reversed(fds):
            os.close(fd)


@contextlib.contextmanager
def perf_trivial() -> Iterator[object]:
    """A return-0 program on both tracepoints through perf events."""
    with _closed_after() as fds:
        prog = _trivial_program(syscalls.ProgType.TRACEPOINT, "ntp_bench_perf")
        fds.append(prog)
        for name in TRACEPOINTS:
            perf = syscalls.perf_event_open_tracepoint(read_format("sock", name).id, 0)
            fds.append(perf)
            syscalls.perf_event_attach(perf, prog)
        yield None


@contextlib.contextmanager
def raw_trivial() -> Iterator[object]:
    """A return-0 program on both tracepoints as a raw tracepoint."""
    with _closed_after() as fds:
        prog = _trivial_program(syscalls.ProgType.RAW_TRACEPOINT, "ntp_bench_raw")
        fds.append(prog)
        for name in TRACEPOINTS:
            fds.append(syscalls.raw_tracepoint_open(name, prog))
        yield None


def helper(raw: bool, btf: bool = False) -> Variant:
    def variant() -> contextlib.AbstractContextManager[object]:
        try:
            loaded = KernelOwnership.load(  # type: ignore[call-arg]
                every_namespace=True, raw_tracepoints=raw, btf_tracepoints=btf
            )
        except TypeError:  # a tree before tp_btf (raw tracepoints first), or before raw
            if btf:
                raise
            try:
                loaded = KernelOwnership.load(every_namespace=True, raw_tracepoints=raw)  # type: ignore[call-arg]
            except TypeError:  # a tree before raw tracepoints: the perf programs only
                if raw:
                    raise
                loaded = KernelOwnership.load(every_namespace=True)
        expected = "btf_tracepoint" if btf else "raw_tracepoint" if raw else "perf_tracepoint"
        attached = loaded.status()["ebpf_attach"]
        if attached != expected:
            loaded.close()
            raise RuntimeError(f"asked for {expected}, loaded {attached}")
        OURS.update(loaded.object_ids()[0])
        return loaded

    return variant


@contextlib.contextmanager
def cgroup_trivial() -> Iterator[object]:
    """Two return-1 cgroup_skb programs (ingress and egress) at the cgroup v2 root: what
    the kernel's dispatch of such a program costs, with nothing done in it."""
    root = find_cgroup2_root()
    if root is None:
        raise RuntimeError("no cgroup v2 mount")
    with _closed_after() as fds:
        cgroup = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(cgroup)
        for attach_type, name in (
            (syscalls.AttachType.CGROUP_INET_INGRESS, "ntp_bench_cgi"),
            (syscalls.AttachType.CGROUP_INET_EGRESS, "ntp_bench_cge"),
        ):
            code = assemble([mov64_imm(Reg.R0, 1), exit_insn()])
            prog = syscalls.prog_load(
                syscalls.ProgType.CGROUP_SKB, code, "GPL", name, expected_attach_type=attach_type
            )
            fds.append(prog)
            OURS.add(syscalls.object_id(prog))
            fds.append(syscalls.link_create(prog, cgroup, attach_type))
        yield None


@contextlib.contextmanager
def cgroup_counting() -> Iterator[object]:
    """The kernel path's two cgroup_skb counting programs, as the daemon loads them
    (ebpf/skbcount.py; not drained during a slice: the socket's entry is made once)."""
    with KernelCounter.open() as counter:
        OURS.update(counter.object_ids()[0])
        yield None


@contextlib.contextmanager
def kernel_path() -> Iterator[object]:
    """What ``netatopd --capture kernel`` loads: the counting programs and the helper
    (its send/recv programs as tp_btf programs with the per-socket fast path)."""
    with cgroup_counting(), helper(True, btf=True)():
        yield None


VARIANTS: dict[str, Variant] = {
    # nothing attached, as a variant: what the method reads when nothing differs
    "none-again": contextlib.nullcontext,
    "perf-trivial": perf_trivial,
    "raw-trivial": raw_trivial,
    "helper-perf": helper(False),
    "helper-raw": helper(True),
    "helper-btf": helper(True, btf=True),
    "cgroup-trivial": cgroup_trivial,
    "cgroup-count": cgroup_counting,
    "kernel-path": kernel_path,
}


def sliced(wanted: list[str], rounds: int, sends: int, clean_wait_s: float = 0.0) -> None:
    """The precise figure: in this process, pinned to SENDER_CPU, slices of ``sends``
    64-byte sends on one connected UDP socket (given its cookie) on the loopback,
    each variant attached for its slice only (after WARM_UP_SENDS untimed sends),
    round after round in an order that turns each round; the thread's own CPU
    (user + system) a send, and each variant's difference to the no-program slice
    of the same round (paired: drifts of the machine cancel out).  With
    ``clean_wait_s`` each round first waits, within that many seconds in all, until
    no other daemon's send/recv programs are loaded."""
    os.sched_setaffinity(0, {SENDER_CPU})
    per_call: dict[str, list[float]] = {name: [] for name in ["none", *wanted]}
    added: dict[str, list[float]] = {name: [] for name in wanted}
    # the same, only the rounds with no other daemon's send/recv programs loaded
    clean: dict[str, list[float]] = {name: [] for name in wanted}
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        sink.bind(("127.0.0.1", 0))
        sender.connect(sink.getsockname())
        sender.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        send, payload = sender.send, b"b" * PAYLOAD_BYTES

        def one_slice() -> float:
            for _ in range(WARM_UP_SENDS):  # caches refilled after a load or close
                send(payload)
            started = time.thread_time_ns()
            for _ in range(sends):
                send(payload)
            return (time.thread_time_ns() - started) / sends

        one_slice()  # warm up
        order = ["none", *wanted]
        deadline = time.monotonic() + clean_wait_s
        for index in range(rounds):
            # the order turns each round, so no variant always follows the same one
            shift = index % len(order)
            foreign = foreign_length_programs()
            # --clean-wait-s: wait (bounded) for a moment without another daemon's programs
            while foreign and time.monotonic() < deadline:
                time.sleep(CLEAN_POLL_S)
                foreign = foreign_length_programs()
            values: dict[str, float] = {}
            for name in order[shift:] + order[:shift]:
                with VARIANTS[name]() if name != "none" else contextlib.nullcontext():
                    values[name] = one_slice()
                per_call[name].append(values[name])
            foreign += foreign_length_programs()
            for name in wanted:
                added[name].append(values[name] - values["none"])
                if not foreign:
                    clean[name].append(values[name] - values["none"])
    base = statistics.median(per_call["none"])
    print(
        f"in-process slices ({rounds} rounds of {sends} sends): no program "
        f"{_spread(per_call['none'], 0)} ns CPU a send"
    )
    clean_rounds = len(clean[wanted[0]]) if wanted else 0
    print(f"rounds with no other daemon's ntp_send/ntp_recv loaded: {clean_rounds} of {rounds}")
    print(
        "| variant | CPU a send | added vs the round's no-program slice | the same, % "
        "| added, rounds with no other daemon's programs |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in wanted:
        alone = (
            f"{statistics.median(clean[name]):+.0f} ns "
            f"({100 * statistics.median(clean[name]) / base:+.1f}%)"
            if clean[name]
            else "-"
        )
        print(
            f"| {name} | {_spread(per_call[name], 0)} ns | "
            f"{statistics.median(added[name]):+.0f} ns | "
            f"{100 * statistics.median(added[name]) / base:+.1f}% | {alone} |"
        )


HELPER_CALLS = 20  # --helper-calls: calls of the helper in the measuring program
HELPER_CALL_SENDS = 20_000


def helper_calls(rounds: int) -> None:
    """What one call of bpf_ktime_get_ns / bpf_get_current_pid_tgid costs in a raw
    tracepoint program on sock_send_length: BPF run statistics (run_time_ns /
    run_cnt over HELPER_CALL_SENDS sends) of a program calling it HELPER_CALLS
    times against an empty one, the difference divided by HELPER_CALLS.  (The
    statistics' own two clock reads a run are in both and cancel.)"""
    stats = syscalls.enable_run_stats()
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
            sender.connect(sink.getsockname())
            for _ in range(rounds):
                for helper_id in (Helper.KTIME_GET_NS, Helper.GET_CURRENT_PID_TGID):
                    per_run = {}
                    for calls in (0, HELPER_CALLS):
                        items = [call(helper_id) for _ in range(calls)]
                        code = assemble([*items, mov64_imm(Reg.R0, 0), exit_insn()])
                        prog = syscalls.prog_load(
                            syscalls.ProgType.RAW_TRACEPOINT, code, "GPL", "ntp_bench_call"
                        )
                        try:
                            link = syscalls.raw_tracepoint_open(TRACEPOINTS[0], prog)
                            try:
                                for _ in range(HELPER_CALL_SENDS):
                                    sender.send(b"c")
                                    with contextlib.suppress(BlockingIOError):
                                        sink.recv(8)
                            finally:
                                os.close(link)
                            run = syscalls.prog_run_stats(prog)
                        finally:
                            os.close(prog)
                        per_run[calls] = run.run_time_ns / max(run.run_cnt, 1)
                    each = (per_run[HELPER_CALLS] - per_run[0]) / HELPER_CALLS
                    print(
                        f"{helper_id.name.lower()}: {each:.1f} ns a call (empty program "
                        f"{per_run[0]:.1f} ns a run, with the calls "
                        f"{per_run[HELPER_CALLS]:.1f})"
                    )
    finally:
        os.close(stats)


STATS_SENDS = 30_000
STATS_VARIANTS = {"helper-raw": (True, False), "helper-btf": (True, True)}


def run_stats(rounds: int) -> None:
    """ntp_send's own nanoseconds a run (BPF run statistics, which add their own two
    clock reads a run) with the helper loaded as the kernel path loads it, raw or
    tp_btf, over STATS_SENDS sends each round on a new socket: a UDP socket given
    its cookie (the fast path's case with tp_btf) and an AF_UNIX datagram pair (not
    TCP or UDP: counted as another protocol, every call).  Median (min..max)."""
    for family in ("udp", "unix"):
        for name, (raw, btf) in STATS_VARIANTS.items():
            per_run = []
            for _ in range(rounds):
                loaded = KernelOwnership.load(  # type: ignore[call-arg]
                    every_namespace=True, run_stats=True, raw_tracepoints=raw, btf_tracepoints=btf
                )
                try:
                    prog = loaded._prog_fds["ntp_send"]
                    if family == "udp":
                        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        sink.bind(("127.0.0.1", 0))
                        sender.connect(sink.getsockname())
                        sender.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
                    else:
                        sender, sink = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                    with sink, sender:
                        sink.setblocking(False)
                        sender.send(b"s")  # the socket's first call: recorded
                        before = syscalls.prog_run_stats(prog)
                        for _ in range(STATS_SENDS):
                            sender.send(b"s")
                            with contextlib.suppress(BlockingIOError):
                                sink.recv(8)
                        after = syscalls.prog_run_stats(prog)
                finally:
                    loaded.close()
                runs = max(after.run_cnt - before.run_cnt, 1)
                per_run.append((after.run_time_ns - before.run_time_ns) / runs)
            print(f"{family} {name}: ntp_send {_spread(per_run)} ns a run")


def _spread(values: list[float], digits: int = 1) -> str:
    """median (min..max)"""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}..{max(values):.{digits}f})"
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--variants", default=",".join(name for name in VARIANTS if name != "none-again")
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=0,
        help="rounds of the in-process sliced measurement instead of the sender rounds",
    )
    parser.add_argument("--slice-sends", type=int, default=SLICE_SENDS)
    parser.add_argument(
        "--clean-wait-s",
        type=float,
        default=0.0,
        help="seconds in all that the slices may wait for no other daemon's programs",
    )
    parser.add_argument(
        "--helper-calls",
        type=int,
        default=0,
        help="rounds measuring one bpf_ktime_get_ns / bpf_get_current_pid_tgid call instead",
    )
    parser.add_argument(
        "--run-stats",
        type=int,
        default=0,
        help="rounds measuring ntp_send's ns a run (BPF statistics), raw and tp_btf, instead",
    )
    args = parser.parse_args()
    if args.run_stats:
        print(f"load average before: {load_average()}")
        run_stats(args.run_stats)
        print(f"load average after: {load_average()}")
        return 0
    if args.helper_calls:
        print(f"load average before: {load_average()}")
        helper_calls(args.helper_calls)
        print(f"load average after: {load_average()}")
        return 0
    wanted = [name for name in args.variants.split(",") if name]
    for name in wanted:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name} (known: {', '.join(VARIANTS)})")
    if args.slices:
        print(f"load average before: {load_average()}")
        sliced(wanted, args.slices, args.slice_sends, args.clean_wait_s)
        print(f"load average after: {load_average()}")
        return 0
    netns = f"ntpR{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    slowdowns: dict[str, list[float]] = {name: [] for name in wanted}
    cpu_added: dict[str, list[float]] = {name: [] for name in wanted}
    rates: dict[str, list[float]] = {name: [] for name in ["none", *wanted]}
    cpus: dict[str, list[float]] = {name: [] for name in ["none", *wanted]}
    print(f"load average before: {load_average()}")
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for repeat in range(args.repeats):
            previous = run_sender(netns, args.seconds)
            rates["none"].append(previous.per_s)
            cpus["none"].append(previous.cpu_ns)
            for name in wanted:
                with VARIANTS[name]():
                    attached = run_sender(netns, args.seconds)
                after = run_sender(netns, args.seconds)
                rates["none"].append(after.per_s)
                cpus["none"].append(after.cpu_ns)
                rates[name].append(attached.per_s)
                cpus[name].append(attached.cpu_ns)
                beside = (previous.per_s + after.per_s) / 2
                slowdowns[name].append(100.0 * (1 - attached.per_s / beside))
                cpu_added[name].append(attached.cpu_ns - (previous.cpu_ns + after.cpu_ns) / 2)
                previous = after
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(
                    f"{name} {slowdowns[name][-1]:.1f}% {cpu_added[name][-1]:+.0f} ns"
                    for name in wanted
                )
                + f" (load {load_average()})",
                flush=True,
            )
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    print(f"load average after: {load_average()}")
    none, none_cpu = rates["none"], cpus["none"]
    print(
        f"no program: {statistics.median(none) / 1e3:.0f}k datagrams/s "
        f"({min(none) / 1e3:.0f}k..{max(none) / 1e3:.0f}k), sender CPU "
        f"{statistics.median(none_cpu):.0f} ns a datagram "
        f"({min(none_cpu):.0f}..{max(none_cpu):.0f})"
    )
    print(
        "| variant | datagrams/s | sender slowed by | sender CPU a datagram | "
        "CPU added a datagram (vs none beside) | the same, % | best round's CPU vs none's best |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = statistics.median(none_cpu)
    best = min(none_cpu)
    for name in wanted:
        print(
            f"| {name} | {statistics.median(rates[name]) / 1e3:.0f}k | {_spread(slowdowns[name])}%"
            f" | {statistics.median(cpus[name]):.0f} ns | {_spread(cpu_added[name], 0)} ns"
            f" | {100 * statistics.median(cpu_added[name]) / base:.1f}%"
            f" | {min(cpus[name]) - best:+.0f} ns ({100 * (min(cpus[name]) / best - 1):+.1f}%) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
