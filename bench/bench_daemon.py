"""Benchmark of netatopd against the C floor (tcpdump) and its peer (nethogs); not a test.

Run as root: ``.venv/bin/python bench/bench_daemon.py [--quick]``.  It makes its
own network namespace, runs bounded traffic on that namespace's loopback
(bench/traffic.py, pinned to CPU 1) under each monitor (pinned to CPU 0) and
prints one table: median and spread (min..max) over a few repeats, and the
ratios measured in the same run.  It prints; it never asserts.

Figures (see bench/README.md for what each one measures and how):
  * CPU microseconds per packet offered, established UDP (64-byte payload, 8
    flows) at 50k, 100k pps and unpaced, and a mixed IPv4/IPv6 TCP/UDP set;
  * packets lost by netatopd (capture_dropped, offered minus counted);
  * new-flow owner latency with 1,000 idle processes holding 20,000
    descriptors, and the cost of one full /proc inode scan;
  * RSS with 100,000 flows and 10,000 tasks (tables built by the library);
  * idle CPU with no traffic;
  * ``netatop query --json`` and one atop-socket answer with 50,000 processes;
  * the kernel counting path (``--capture kernel``, monitor netatopd-kernel): its
    CPU per packet as above, and (section sender) what a monitored Python UDP
    sender pays under no monitor, the libpcap path, the kernel path, tcpdump and
    nethogs in one run (interleaved with no-monitor rounds: none, m1, none, m2, ...),
    the daemon's CPU per datagram during that send (less its idle CPU), and the
    cgroup_skb programs' own ns per packet from the kernel's BPF run statistics;
  * in-process cost of the per-packet path (parse_batch + count_packets against
    count_records and count_fixed, each charged to a FlowTable) on synthetic batches.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netatopd.client import ControlClient, DaemonNotRunning  # noqa: E402

from senders import UDP_MAX_RATE  # noqa: E402

PYTHON = sys.executable
TRAFFIC = str(REPO / "bench" / "traffic.py")
MONITOR_CPU = 0
GENERATOR_CPU = 1
START_TIMEOUT_S = 20.0
QUIET_CPU_NS = 2_000_000  # a monitor using less than this per 100 ms is done
QUIET_LIMIT_S = 5.0
IDLE_WINDOW_S = 2.0  # the daemon's idle CPU before each paced run (its fixed cost a second)


# -- plumbing ---------------------------------------------------------------------------


class Netns:
    """A network namespace with loopback up; delete() removes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.exec_prefix = ["ip", "netns", "exec", name]
        subprocess.run(
            [*self.exec_prefix, "ip", "link", "set", "lo", "up"], check=True, capture_output=True
        )

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def task_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of pid (user + system), from schedstat, in ns."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError):
            with open(path) as file:
                total += int(file.read().split()[0])
    return total


def proc_status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def wait_quiet(pid: int) -> None:
    """Wait until the process stops using CPU (it has caught up), bounded."""
    time.sleep(0.3)
    deadline = time.monotonic() + QUIET_LIMIT_S
    quiet = 0
    last = task_cpu_ns(pid)
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = task_cpu_ns(pid)
        quiet = quiet + 1 if now - last < QUIET_CPU_NS else 0
        last = now


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Traffic:
    """One bench/traffic.py role inside the namespace, talking JSON lines."""

    def __init__(self, ns: Netns, role: str, **args: Any) -> None:
        args.setdefault("cpu", GENERATOR_CPU)
        self.proc = subprocess.Popen(
            [*ns.exec_prefix, PYTHON, "-u", TRAFFIC, role, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.first = self.read(120.0)

    def read(self, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"traffic role gave no answer (exit {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the monitors ---------------------------------------------------------------------


class Monitor:
    """A packet monitor running inside the namespace, pinned to MONITOR_CPU."""

    name = "?"

    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(MONITOR_CPU), *ns.exec_prefix, *self.argv()],
            stdout=subprocess.DEVNULL if self.quiet_stdout() else self.log,
            stderr=self.log,
            cwd=REPO,
        )
        self.pid = self.proc.pid  # taskset and ip netns exec both exec: same pid
        self.ready()

    def argv(self) -> list[str]:
        raise NotImplementedError

    def quiet_stdout(self) -> bool:
        return True

    def ready(self) -> None:
        time.sleep(1.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-500:]}")

    def cpu_ns(self) -> int:
        return task_cpu_ns(self.pid)

    def settle(self) -> None:
        wait_quiet(self.pid)

    def counts(self) -> dict[str, Any] | None:
        return None

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


_DAEMON_HELP: list[str] = []


def daemon_private_paths(workdir: Path) -> list[str]:
    """Options that keep the daemon's sockets in workdir, for the options it has."""
    if not _DAEMON_HELP:
        _DAEMON_HELP.append(
            subprocess.run(
                [PYTHON, "-m", "netatopd.daemon", "--help"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
    if "--atop-socket" in _DAEMON_HELP[0]:
        return ["--atop-socket", str(workdir / "atop.sock")]
    return []


class Netatopd(Monitor):
    name = "netatopd"
    extra: list[str] = []
    entry = ["-m", "netatopd.daemon"]

    def argv(self) -> list[str]:
        self.run_dir = self.workdir / "run"
        return [
            PYTHON,
            *self.entry,
            "--run-dir",
            str(self.run_dir),
            "--db",
            str(self.workdir / "netatop.db"),
            *daemon_private_paths(self.workdir),
            *self.extra,
        ]

    def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netatopd exited: {self.log_path.read_text()[-800:]}")
            try:
                with self.client() as client:
                    client.probe()
                return
            except (DaemonNotRunning, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("netatopd did not answer in time") from None
                time.sleep(0.05)

    def client(self) -> ControlClient:
        return ControlClient(str(self.run_dir), timeout_s=30.0)

    def settle(self) -> None:
        with self.client() as client:
            client.sync()
        wait_quiet(self.pid)

    def counts(self) -> dict[str, Any]:
        with self.client() as client:
            return client.status()


class NetatopdSingleLane(Netatopd):
    """The daemon with one capture handle and a Python walk per frame (the old path)."""

    name = "netatopd-single-lane"

    def argv(self) -> list[str]:
        return [*super().argv(), "--single-lane"]


class NetatopdKernel(Netatopd):
    """The daemon on the kernel counting path (--capture kernel: cgroup_skb programs)."""

    name = "netatopd-kernel"

    def argv(self) -> list[str]:
        return [*super().argv(), "--capture", "kernel"]


class NetatopdKernelProc(NetatopdKernel):
    """The kernel counting path without the eBPF helper (owners from sock_diag and /proc):
    what the helper's tracepoint programs add to the monitored application's cost."""

    name = "netatopd-kernel-proc"

    def argv(self) -> list[str]:
        return [*super().argv(), "--ownership", "proc"]


class Tcpdump(Monitor):
    name = "tcpdump"

    def argv(self) -> list[str]:
        return ["tcpdump", "-i", "any", "-w", "/dev/null"]


class Nethogs(Monitor):
    name = "nethogs"

    def argv(self) -> list[str]:
        return ["nethogs", "-a", "-C", "-t"]


def ensure_tool(command: str, package: str, notes: list[str]) -> bool:
    if shutil.which(command):
        return True
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", package], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0 or not shutil.which(command):
        notes.append(f"{command} skipped: apt-get install {package} failed")
        return False
    notes.append(f"{command}: installed the Debian package {package}")
    return True


# -- figures ---------------------------------------------------------------------------


class Figures:
    """figure name -> monitor -> samples, in insertion order, printed as one table."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}
        self.units: dict[str, str] = {}

    def add(self, figure: str, monitor: str, value: float, unit: str) -> None:
        self.rows.setdefault(figure, {}).setdefault(monitor, []).append(value)
        self.units[figure] = unit

    def monitors(self) -> set[str]:
        """Every monitor with a figure."""
        return {monitor for per_monitor in self.rows.values() for monitor in per_monitor}

    def median(self, figure: str, monitor: str) -> float | None:
        values = self.rows.get(figure, {}).get(monitor)
        return statistics.median(values) if values else None


def spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{fmt(median)}"
    return f"{fmt(median)} ({fmt(min(values))}..{fmt(max(values))})"


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_table(figures: Figures, monitors: list[str], notes: list[str]) -> None:
    print()
    print("figure".ljust(46) + "".join(m.ljust(26) for m in monitors) + "ratios (medians)")
    for figure, per_monitor in figures.rows.items():
        cells = []
        for monitor in monitors:
            values = per_monitor.get(monitor)
            cells.append((spread(values) if values else "-").ljust(26))
        ratios = []
        ours = figures.median(figure, "netatopd")
        if ours and figure.startswith("cpu"):
            peer = figures.median(figure, "nethogs")
            floor = figures.median(figure, "tcpdump")
            if peer:
                ratios.append(f"nethogs/netatopd {peer / ours:.1f}x")
            if floor:
                ratios.append(f"netatopd/tcpdump {ours / floor:.1f}x")
        label = f"{figure} [{figures.units[figure]}]"
        print(label.ljust(46) + "".join(cells) + ", ".join(ratios))
    print()
    print("median (min..max) over the repeats; CPU = utime+stime of all the monitor's threads")
    print("(schedstat, ns) over the run / packets offered; monitors on CPU", MONITOR_CPU)
    print("and traffic on CPU", GENERATOR_CPU)
    for note in notes:
        print("note:", note)


# -- measurements ----------------------------------------------------------------------


class Run(NamedTuple):
    cpu_ns: int
    offered: int
    elapsed_s: float
    counts_before: dict[str, Any] | None
    counts_after: dict[str, Any] | None
    wall_s: float = 0.0  # from the CPU reading before the send to the one after the settle
    idle_ns_per_s: float | None = None  # CPU a second over an idle window just before


def measured_run(monitor: Monitor, gen: Traffic, command: str, idle_s: float = 0.0) -> Run:
    """One send measured; idle_s > 0: the monitor's CPU over that long with no traffic
    of ours first (after the warm-up and settle, flows known), as a rate."""
    gen.ask("go 20000 400")  # warm-up: flows exist and their owners are known
    monitor.settle()
    before_counts = monitor.counts()
    idle_ns_per_s = None
    if idle_s > 0:
        idle_cpu, idle_wall = monitor.cpu_ns(), time.monotonic()
        time.sleep(idle_s)
        idle_ns_per_s = (monitor.cpu_ns() - idle_cpu) / (time.monotonic() - idle_wall)
    before, before_wall = monitor.cpu_ns(), time.monotonic()
    answer = gen.ask(command)
    monitor.settle()
    after, after_wall = monitor.cpu_ns(), time.monotonic()
    after_counts = monitor.counts()
    return Run(
        after - before,
        int(answer["sent"]),
        float(answer.get("elapsed_s", 0.0)),
        before_counts,
        after_counts,
        after_wall - before_wall,
        idle_ns_per_s,
    )


def delta(run: Run, *names: str) -> int:
    assert run.counts_before is not None and run.counts_after is not None
    return sum(int(run.counts_after.get(n, 0)) - int(run.counts_before.get(n, 0)) for n in names)


def cpu_figures(
    figures: Figures,
    ns: Netns,
    workdir: Path,
    monitor_classes: list[type[Monitor]],
    rates: list[tuple[str, int, int]],
    mixed_count: int,
    repeats: int,
) -> None:
    for monitor_class in monitor_classes:
        monitor = monitor_class(ns, workdir)
        udp = mixed = None
        try:
            udp = Traffic(ns, "udp", flows=8, payload_bytes=64)
            mixed = Traffic(ns, "mixed", payload_bytes=64)
            for _ in range(repeats):
                for label, rate, count in rates:
                    idle_s = IDLE_WINDOW_S if isinstance(monitor, Netatopd) else 0.0
                    run = measured_run(monitor, udp, f"go {rate} {count}", idle_s)
                    name = monitor.name
                    figures.add(
                        f"cpu/packet UDP {label}", name, run.cpu_ns / 1000 / run.offered, "us"
                    )
                    if run.idle_ns_per_s is not None:
                        # The fixed cost a second (the daemon with no traffic of ours), and
                        # the marginal cost a packet: the run's CPU less that rate over the
                        # run's wall time (the send and the settle), over the packets.
                        figures.add(
                            f"  idle CPU before UDP {label}",
                            name,
                            run.idle_ns_per_s / 1e6,
                            "ms/s",
                        )
                        marginal_ns = run.cpu_ns - run.idle_ns_per_s * run.wall_s
                        figures.add(
                            f"  cpu/packet UDP {label} less idle",
                            name,
                            marginal_ns / 1000 / run.offered,
                            "us",
                        )
                        figures.add(f"  send + settle UDP {label}", name, run.wall_s, "s")
                    if run.elapsed_s:
                        figures.add(
                            f"offered rate UDP {label}", name, run.offered / run.elapsed_s, "pps"
                        )
                    if run.counts_before is not None:
                        counted = delta(run, "udp_sent", "udp_received", "tcp_sent", "tcp_received")
                        if counted > 0:
                            # The kernel path counts the whole machine (and a loopback
                            # datagram twice, sent and received): CPU per packet it counted.
                            figures.add(
                                f"cpu/counted packet UDP {label}",
                                name,
                                run.cpu_ns / 1000 / counted,
                                "us",
                            )
                        figures.add(
                            f"lost UDP {label}: capture_dropped",
                            name,
                            delta(run, "capture_dropped"),
                            "packets",
                        )
                        figures.add(
                            f"lost UDP {label}: offered-counted",
                            name,
                            run.offered - delta(run, "udp_sent"),
                            "packets",
                        )
                run = measured_run(monitor, mixed, f"go 0 {mixed_count}")
                figures.add(
                    "cpu/packet mixed v4/v6 TCP/UDP",
                    monitor.name,
                    run.cpu_ns / 1000 / run.offered,
                    "us",
                )
                if run.counts_before is not None:
                    figures.add(
                        "lost mixed: capture_dropped",
                        monitor.name,
                        delta(run, "capture_dropped"),
                        "packets",
                    )
                    figures.add(
                        "lost mixed: offered-counted",
                        monitor.name,
                        run.offered - delta(run, "udp_sent", "tcp_sent"),
                        "packets",
                    )
        finally:
            for gen in (udp, mixed):
                if gen is not None:
                    gen.close()
            monitor.stop()


def latency_figures(
    figures: Figures, ns: Netns, workdir: Path, samples: int, processes: int, descriptors: int
) -> None:
    from netatopd.ownership import InodeIndex
    from netatopd.procfs import ProcFS

    idle = Traffic(ns, "idle", processes=processes, descriptors=descriptors)
    daemon = newflow = None
    try:
        held = idle.first["descriptors"]
        for _ in range(3):
            index = InodeIndex(ProcFS())
            started = time.perf_counter()
            index.refresh(full=True)
            figures.add(
                "full /proc inode scan", "netatopd", (time.perf_counter() - started) * 1000, "ms"
            )
        figures.add("  processes scanned", "netatopd", len(index.pid_fd_count), "")
        figures.add("  descriptors they hold", "netatopd", sum(index.pid_fd_count.values()), "")
        daemon = Netatopd(ns, workdir)
        time.sleep(2.0)  # its first full scan
        newflow = Traffic(ns, "newflow")
        latencies = []
        unresolved = 0
        with daemon.client() as client:
            for _ in range(samples):
                answer = newflow.ask("go")
                pid, sent_s = int(answer["pid"]), float(answer["sent_s"])
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    try:
                        counters = client.getcnt_tgid(pid).as_dict()
                        if int(counters["udpsndpacks"]) >= 1:  # type: ignore[call-overload]
                            latencies.append((time.time() - sent_s) * 1000)
                            break
                    except ProcessLookupError:
                        pass
                    time.sleep(0.0005)
                else:
                    unresolved += 1
            own = client.status()  # the daemon's own figure: first packet read -> owner known
        if int(own.get("owner_latency_samples", 0)):
            for name in ("p50", "p99", "max"):
                figures.add(
                    f"  daemon's own: first packet read -> owner known, {name}",
                    "netatopd",
                    float(own[f"owner_latency_ms_{name}"]),
                    "ms",
                )
        if latencies:
            latencies.sort()
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            figures.add(
                f"new-flow owner latency p50 ({processes} idle procs, {held} fds)",
                "netatopd",
                statistics.median(latencies),
                "ms",
            )
            p90 = latencies[int(len(latencies) * 0.9)]
            figures.add("new-flow owner latency p90", "netatopd", p90, "ms")
            figures.add("new-flow owner latency p99", "netatopd", p99, "ms")
            figures.add("new-flow owner latency max", "netatopd", latencies[-1], "ms")
        figures.add("new flows not attributed within 2 s", "netatopd", unresolved, "flows")
    finally:
        for thing in (newflow, idle):
            if thing is not None:
                thing.close()
        if daemon is not None:
            daemon.stop()


def idle_figures(figures: Figures, ns: Netns, workdir: Path, seconds: float) -> None:
    daemon = Netatopd(ns, workdir)
    try:
        time.sleep(1.0)
        cpu = daemon.cpu_ns()
        switches = proc_status_field(daemon.pid, "voluntary_ctxt_switches")
        time.sleep(seconds)
        used = daemon.cpu_ns() - cpu
        woken = proc_status_field(daemon.pid, "voluntary_ctxt_switches") - switches
        figures.add(
            f"idle CPU ({seconds:.0f} s, no traffic)",
            "netatopd",
            used / seconds / 1e7,
            "% of a core",
        )
        figures.add("idle wake-ups (main thread)", "netatopd", woken / seconds, "/s")
        figures.add(
            "RSS of the idle daemon",
            "netatopd",
            proc_status_field(daemon.pid, "VmRSS") / 1024,
            "MiB",
        )
        for part in ("RssAnon", "RssFile", "RssShmem"):  # the capture ring is not anonymous
            figures.add(f"  {part}", "netatopd", proc_status_field(daemon.pid, part) / 1024, "MiB")
    finally:
        daemon.stop()


MEMORY_SCRIPT = r"""
import json, struct, sys
import netatopd.daemon  # every module the daemon loads
from netatopd.counting import count_records
from netatopd.flows import FlowTable, FlowState
from netatopd.parse import REJECT_COUNTERS_LENGTH
from netatopd.tasks import TaskInfo, TaskTable

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

flows_wanted, tasks_wanted = int(sys.argv[1]), int(sys.argv[2])
baseline = rss()
HEADER = struct.Struct("=IIII")
def frame(proto, src, dst, sport, dport):
    # cooked v2 header (IPv4, ifindex 2, ethernet, PACKET_HOST), IPv4 header, ports
    ip_len = 20 + (20 if proto == 6 else 8)
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 6 + b"\0\0")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, proto, 0, src, dst)
    body = struct.pack("!HH", sport, dport) + b"\0" * (ip_len - 24)
    data = sll2 + ip + body
    return HEADER.pack(0, 0, len(data), len(data)) + data
flows = FlowTable(max_flows=flows_wanted * 2)
rejects = [0] * REJECT_COUNTERS_LENGTH
links = {2: (14, 1500)}
half = flows_wanted // 2
batch = []
for n in range(flows_wanted):
    local = bytes((192, 0, 2, 1 + n // 50000))
    remote = bytes((198, 51, 100, 1 + n % 200))
    if n < half:  # TCP connections to a local server
        batch.append(frame(6, remote, local, 1024 + n % 50000, 443))
    else:  # UDP local ports
        batch.append(frame(17, remote, local, 53, 1024 + n % 50000))
    if len(batch) == 2048:
        flows.charge(count_records(b"".join(batch), links, rejects), 1.0)
        batch = []
flows.charge(count_records(b"".join(batch), links, rejects), 1.0)
tasks = TaskTable(max_tasks=tasks_wanted * 2)
owners = []
for n in range(tasks_wanted):
    command = f"worker{n}"
    task = TaskInfo(100000 + n, 123456 + n, 1700000000 + n, command, f"/usr/bin/{command} -v", 1000)
    tasks.admit(task)
    owners.append(task)
for n, flow in enumerate(flows.all_flows()):
    flow.owner = owners[n % tasks_wanted]
    flow.state = FlowState.OWNED
    flow.inode = 1000000 + n
    flow.uid = 1000
flows.new.clear()
after = rss()
print(json.dumps({"flows": flows.count, "tasks": len(tasks), "rss": after, "baseline": baseline}))
"""


def memory_figures(figures: Figures, flows: int, tasks: int) -> None:
    done = subprocess.run(
        [PYTHON, "-c", MEMORY_SCRIPT, str(flows), str(tasks)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-800:])
    answer = json.loads(done.stdout)
    figures.add(
        f"RSS, {answer['flows']} flows + {answer['tasks']} tasks (library)",
        "netatopd",
        answer["rss"] / 2**20,
        "MiB",
    )
    figures.add(
        "  of which the tables", "netatopd", (answer["rss"] - answer["baseline"]) / 2**20, "MiB"
    )


class StubBackend:
    """The answers of the control and atop sockets, from a table of many tasks."""

    def __init__(self, count: int) -> None:
        from netatopd.tasks import TaskInfo

        self.tasks = {}
        for n in range(count):
            task = TaskInfo(100000 + n, 123456 + n, 1700000000 + n, f"worker{n}")
            task.counters = [n, 100 * n, n, 100 * n, 0, 0, n, 60 * n]
            self.tasks[task.tgid] = task

    def list_tasks(self) -> bytes:
        from netatopd.protocol import pack_netpertask

        return b"".join(
            pack_netpertask(t.tgid, t.btime, t.command, t.counters) for t in self.tasks.values()
        )

    def atop_tasks(self) -> Any:
        return self.tasks.values()

    def probe(self) -> bytes:
        return b"netatopd bench"

    def status(self) -> dict[str, object]:
        return {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raise AttributeError(name)


@contextlib.contextmanager
def serving(servers: list[Any]) -> Iterator[None]:
    import selectors

    selector = selectors.DefaultSelector()
    for server in servers:
        server.register(selector)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, mask in selector.select(0.05):
                if key.data is not None:
                    key.data(mask)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for server in servers:
            server.close()


def query_figures(figures: Figures, workdir: Path, count: int, repeats: int) -> None:
    from netatopd.server import ControlServer

    backend = StubBackend(count)
    run_dir = workdir / "query"
    run_dir.mkdir()
    control = ControlServer(str(run_dir / "control"), backend)
    servers: list[Any] = [control]
    atop_path = str(run_dir / "atop")
    try:
        from netatopd.exitlist import ExitJournal
        from netatopd.server import AtopServer

        servers.append(AtopServer(atop_path, backend, ExitJournal()))
    except Exception as err:  # noqa: BLE001 - report and go on
        figures.add(f"atop answer skipped ({type(err).__name__})", "netatopd", 0, "")
    with serving(servers):
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(
                [PYTHON, "-m", "netatopd.cli", "query", "--json", "--run-dir", str(run_dir)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                check=True,
                timeout=120,
            )
            figures.add(
                f"netatop query --json, {count} procs (wall)",
                "netatopd",
                (time.perf_counter() - started) * 1000,
                "ms",
            )
            with ControlClient(str(run_dir)) as client:
                started = time.perf_counter()
                listed = client.list_tasks()
                figures.add(
                    f"  of which LIST over the socket ({len(listed)})",
                    "netatopd",
                    (time.perf_counter() - started) * 1000,
                    "ms",
                )
        if len(servers) > 1:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(atop_path)
                for _ in range(repeats):
                    started = time.perf_counter()
                    sock.sendall(bytes(96))
                    # Read in large pieces: a Python reader doing one recv per
                    # record would time itself rather than the server.
                    answer = bytearray()
                    while True:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            raise RuntimeError("atop socket closed")
                        answer += chunk
                        whole = len(answer) - len(answer) % 96
                        if whole and struct.unpack_from("=i", answer, whole - 96)[0] == 0:
                            break
                    records = len(answer) // 96 - 1
                    figures.add(
                        f"atop socket answer, {records} procs",
                        "netatopd",
                        (time.perf_counter() - started) * 1000,
                        "ms",
                    )


def inprocess_figures(figures: Figures, repeats: int) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from perpacket import measure

    for _ in range(repeats):
        for name, ns_per_packet in measure().items():
            figures.add(f"in-process {name}", "netatopd", ns_per_packet / 1000, "us")


# -- main ----------------------------------------------------------------------------------


SENDER = UDP_MAX_RATE
SENDER_MAX_SENDS = 20_000_000


def sender_rate(ns: Netns, seconds: float) -> tuple[float, int]:
    """(datagrams per second, datagrams) of one Python UDP sender at its maximum rate,
    64-byte datagrams on the namespace's loopback, pinned to GENERATOR_CPU."""
    argv = ["taskset", "-c", str(GENERATOR_CPU), *ns.exec_prefix, PYTHON, "-c", SENDER]
    done = subprocess.run(
        [*argv, str(seconds), str(SENDER_MAX_SENDS), "64"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    answer = json.loads(done.stdout)
    return float(answer["per_s"]), int(answer["sent"])


def program_run_stats(object_ids: dict[str, list[int]]) -> tuple[int, int]:
    """(runs, ns) summed over the kernel path's programs, from the kernel's BPF statistics."""
    from netatopd.ebpf import syscalls

    runs = run_ns = 0
    for prog_id in object_ids["programs"]:
        fd = syscalls.get_fd_by_id(syscalls.BpfCmd.PROG_GET_FD_BY_ID, prog_id)
        if fd is None:
            continue
        try:
            info = syscalls.obj_get_info(fd, syscalls.BPF_PROG_INFO_SIZE)
        finally:
            os.close(fd)
        time_ns, count, _misses, _verified = syscalls.BPF_PROG_INFO_RUN.unpack_from(
            info, syscalls.BPF_PROG_INFO_RUN_OFFSET
        )
        runs += int(count)
        run_ns += int(time_ns)
    return runs, run_ns


def sender_figures(
    figures: Figures,
    ns: Netns,
    workdir: Path,
    seconds: float,
    repeats: int,
    notes: list[str],
    wanted: list[str] | None = None,
) -> None:
    """What the monitored application pays: a UDP sender's rate with no monitor, under the
    libpcap path, the kernel path (BPF statistics off), tcpdump and nethogs, in one run;
    then the kernel path once more with BPF statistics on for the programs' own ns a
    packet (a loopback datagram is one run at egress and one at ingress).

    Interleaved: each repeat runs none, m1, none, m2, ..., none, so every monitor's
    round has a no-monitor round right before and right after it; its slowdown is
    its rate against the mean of those two (a drift of the machine's load between
    rounds cancels out), reported as median and spread over the repeats.  For the
    daemon, its CPU during the send is also taken, less its CPU over an idle window
    of the same length just before (the kernel path counts the whole machine, so
    other traffic is not charged to the datagrams), per datagram sent.
    """
    available: list[tuple[str, type[Monitor]]] = [
        ("netatopd", Netatopd),
        ("netatopd-kernel", NetatopdKernel),
        ("netatopd-kernel-proc", NetatopdKernelProc),
    ]
    for name, cls in (("tcpdump", Tcpdump), ("nethogs", Nethogs)):
        if shutil.which(name):
            available.append((name, cls))
    monitors = [(n, c) for n, c in available if wanted is None or n in wanted]
    for _ in range(repeats):
        before, _ = sender_rate(ns, seconds)
        figures.add("sender rate, 64-byte UDP, max", "none", before, "pps")
        for name, monitor_class in monitors:
            monitor = monitor_class(ns, workdir)
            try:
                daemon = isinstance(monitor, Netatopd)
                if daemon:
                    monitor.settle()
                    idle_start = monitor.cpu_ns()
                    time.sleep(seconds)
                    idle_ns = monitor.cpu_ns() - idle_start
                send_start = monitor.cpu_ns()
                switches = proc_status_field(monitor.pid, "voluntary_ctxt_switches")
                rate, sent = sender_rate(ns, seconds)
                send_ns = monitor.cpu_ns() - send_start
                switches = proc_status_field(monitor.pid, "voluntary_ctxt_switches") - switches
            finally:
                monitor.stop()
            after, _ = sender_rate(ns, seconds)
            figures.add("sender rate, 64-byte UDP, max", "none", after, "pps")
            figures.add("sender rate, 64-byte UDP, max", name, rate, "pps")
            figures.add(
                "sender slowed by (vs none beside)",
                name,
                (1 - 2 * rate / (before + after)) * 100,
                "%",
            )
            if daemon:
                # The main thread's sleeps ended (poll wake-ups), a load-independent figure.
                figures.add("daemon wake-ups/s during the send", name, switches / seconds, "/s")
            if daemon and sent:
                figures.add("daemon cpu/datagram sent", name, send_ns / sent / 1000, "us")
                figures.add(
                    "daemon cpu/datagram sent, less idle",
                    name,
                    (send_ns - idle_ns) / sent / 1000,
                    "us",
                )
            before = after
    os.environ["NETATOPD_BPF_RUN_STATS"] = "1"
    try:
        monitor = NetatopdKernel(ns, workdir)
        try:
            ids = monitor.counts()["kernel_object_ids"]
            runs_before, ns_before = program_run_stats(ids)
            _, sent = sender_rate(ns, seconds)
            runs_after, ns_after = program_run_stats(ids)
        finally:
            monitor.stop()
    finally:
        del os.environ["NETATOPD_BPF_RUN_STATS"]
    runs = runs_after - runs_before
    if runs:
        figures.add(
            "programs ns/run (BPF stats on)", "netatopd-kernel", (ns_after - ns_before) / runs, "ns"
        )
        figures.add(
            "programs ns/packet sent (egress+ingress)",
            "netatopd-kernel",
            (ns_after - ns_before) / sent,
            "ns",
        )
    else:
        notes.append("BPF run statistics not available: no programs figure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets and repeats (<1 min)")
    parser.add_argument("--repeats", type=int, help="repeats of each figure (default 3, quick 1)")
    parser.add_argument(
        "--only",
        default="cpu,latency,memory,idle,query,inprocess,sender",
        help="comma-separated sections to run (default: all)",
    )
    parser.add_argument(
        "--monitors",
        default="netatopd,netatopd-kernel,tcpdump,nethogs",
        help="monitors for the CPU figures: netatopd, netatopd-single-lane (the daemon"
        " with --single-lane), netatopd-kernel (--capture kernel), tcpdump, nethogs",
    )
    parser.add_argument("--daemon-option", action="append", default=[], help="extra option")
    parser.add_argument(
        "--sender-repeats",
        type=int,
        help="interleaved repeats of the sender section (default 7, quick 3)",
    )
    parser.add_argument(
        "--sender-monitors",
        default="netatopd,netatopd-kernel,tcpdump,nethogs",
        help="monitors of the sender section (each between two rounds with none)",
    )
    options = parser.parse_args()
    Netatopd.extra = list(options.daemon_option)
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("taskset"):
        sys.exit("bench_daemon.py needs root and the ip and taskset commands")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench_daemon.py needs two CPUs (monitor on one, traffic on the other)")
    repeats = options.repeats or (1 if options.quick else 3)
    quick = options.quick
    sections = set(options.only.split(","))
    rates = [
        ("50k pps", 50_000, 25_000 if quick else 100_000),
        ("100k pps", 100_000, 50_000 if quick else 200_000),
        ("unpaced", 0, 60_000 if quick else 300_000),
    ]
    notes: list[str] = []
    wanted = options.monitors.split(",")
    monitor_classes: list[type[Monitor]] = []
    for monitor_class, package in (
        (Netatopd, ""),
        (NetatopdSingleLane, ""),
        (NetatopdKernel, ""),
        (Tcpdump, "tcpdump"),
        (Nethogs, "nethogs"),
    ):
        if monitor_class.name not in wanted:
            continue
        if package and not ensure_tool(monitor_class.name, package, notes):
            continue
        monitor_classes.append(monitor_class)
    os.sched_setaffinity(0, {MONITOR_CPU})  # this process mostly sleeps
    figures = Figures()
    started = time.monotonic()
    load_before = os.getloadavg()
    ns = Netns(f"ntpG{os.getpid()}b")
    try:
        with tempfile.TemporaryDirectory(prefix="netatop-bench-") as temp:
            workdir = Path(temp)
            if "cpu" in sections:
                cpu_figures(
                    figures,
                    ns,
                    workdir,
                    monitor_classes,
                    rates,
                    20_000 if quick else 100_000,
                    repeats,
                )
            if "latency" in sections:
                latency_figures(figures, ns, workdir, 20 if quick else 100, 1000, 20_000)
            if "memory" in sections:
                memory_figures(figures, 100_000, 10_000)
            if "idle" in sections:
                idle_figures(figures, ns, workdir, 3.0 if quick else 10.0)
            if "query" in sections:
                query_figures(figures, workdir, 50_000, repeats if not quick else 2)
            if "inprocess" in sections:
                inprocess_figures(figures, repeats)
            if "sender" in sections:
                sender_figures(
                    figures,
                    ns,
                    workdir,
                    2.0 if quick else 5.0,
                    options.sender_repeats or (3 if quick else 7),
                    notes,
                    options.sender_monitors.split(","),
                )
    finally:
        ns.delete()
    shown = [m.name for m in monitor_classes] or ["netatopd"]
    if "sender" in sections:
        sender_shown = [m for m in options.sender_monitors.split(",") if m in figures.monitors()]
        shown = ["none", *dict.fromkeys([*shown, *sender_shown])]
    print_table(figures, shown, notes)
    print(f"bench took {time.monotonic() - started:.0f} s")
    loads = " ".join(f"{value:.2f}" for value in load_before)
    loads_end = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average (1, 5, 15 min): at the start {loads}, at the end {loads_end}")


if __name__ == "__main__":
    main()
