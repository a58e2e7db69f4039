"""netatopd under issue 13's attacks: RSS, open fds and STATUS latency under each.

Run as root (it makes a network namespace ``ntpH<pid>`` and deletes it):

    .venv/bin/python bench/bench_hostile.py               # about 2 minutes
    .venv/bin/python bench/bench_hostile.py --seconds 5   # each attack 5 s

One daemon (its defaults) lives through, one after the other, each for
--seconds: nothing (the idle reference), clients that send LIST_TASKS and
never read the answers (with TASKS processes alive, so that answers are
large), 300 idle connections on each socket, slowloris clients, a flood of new
flows, malformed frames on the namespace's loopback, malformed control
requests, nothing again.  Between attacks it waits (at most SETTLE_S) for the
flow table to be back to its size at the start, so that each attack's figures
are its own (a flood's flows stay --udp-idle-s, 16 s, and slow the daemon
meanwhile).  All along a STATUS probe asks STATUS on a fresh connection every
50 ms (as ``netatop status`` would); the daemon's RSS (/proc/PID/status) and
open fds (/proc/PID/fd) are sampled every 0.25 s.  Printed per attack: RSS at
the start, peak and after; fds peak and once the attack's clients are gone;
STATUS answered, failed, median and max latency; what the attack did.  The
clients are in tests/privileged/hostile.py (shared with the soak test).
Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "privileged"))

from netatopd.protocol import REQUEST, REQUEST_MAGIC, Command  # noqa: E402
from netatopd.server import MAX_CLIENTS  # noqa: E402

import hostile  # noqa: E402
from harness import Actor, Daemon  # noqa: E402

SAMPLE_INTERVAL_S = 0.25
TASKS = 300
IDLE_CLIENTS = MAX_CLIENTS + 44
SLOWLORIS_CLIENTS = 250
NEVER_READING_CLIENTS = 4
FLOOD_FLOWS = 250_000
MIB_KIB = 1024
SETTLE_S = 60.0  # at most this long between attacks for the flow table to empty

# Frames after the MAC addresses (hex), each malformed in its own way.
MALFORMED_FRAMES = [
    "0800" + "45" + "00" * 5,  # IPv4 header cut short
    "0800" + "4f" + "00" * 25,  # IPv4 header length 60 in a 26-byte packet
    "0800" + "35" + "00" * 19,  # IP version 3
    "86dd" + "60" + "00" * 9,  # IPv6 header cut short
    "0800" + "4500ffff00010000401100007f0000017f000001" + "00" * 8,  # tot_len 65,535
]


class Netns:
    def __init__(self) -> None:
        self.name = f"ntpH{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        self.exec_prefix = ["ip", "netns", "exec", self.name]
        subprocess.run([*self.exec_prefix, "ip", "link", "set", "lo", "up"], check=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


class Sampler:
    """RSS and fds of pid every SAMPLE_INTERVAL_S, in a thread, while in a `with`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[int] = []
        self.fds: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            self.rss.append(hostile.rss_kib(self.pid))
            self.fds.append(hostile.open_fds(self.pid))
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return


def settle(d: Daemon, flows_limit: int, timeout_s: float = SETTLE_S) -> float:
    """Wait until the daemon's flow table is back to flows_limit (a flood's flows expire
    after --udp-idle-s, 16 s, and the next sweep), bounded; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if int(d.status()["flows"]) <= flows_limit:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def settled_fds(pid: int, limit: int, timeout_s: float = 40.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        fds = hostile.open_fds(pid)
        if fds <= limit or time.monotonic() > deadline:
            return fds
        time.sleep(0.1)


# ------------------------------------------------------------------------ the attacks


def nothing(ctx: dict[str, Any], seconds: float) -> str:
    time.sleep(seconds)
    return "idle reference"


def never_reading(ctx: dict[str, Any], seconds: float) -> str:
    """LIST_TASKS requests sent as fast as the socket takes them, never a byte read; a
    client the daemon closes comes back."""
    control: Path = ctx["d"].run_dir / "control"
    request = REQUEST.pack(REQUEST_MAGIC, int(Command.LIST_TASKS), 0, 0)
    socks = hostile.never_reading(control, NEVER_READING_CLIENTS, 1)
    sent = closed = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            blocked = 0
            for index, sock in enumerate(socks):
                try:
                    sock.send(request * 64)
                    sent += 64
                except BlockingIOError:
                    blocked += 1
                except OSError:
                    closed += 1
                    sock.close()
                    socks[index] = hostile.never_reading(control, 1, 1)[0]
            if blocked == len(socks):
                time.sleep(0.01)
    finally:
        hostile.close_all(socks)
    return (
        f"{NEVER_READING_CLIENTS} clients, {sent} LIST_TASKS requests sent "
        f"({TASKS} tasks), {closed} times closed by the daemon"
    )


def idle_connections(ctx: dict[str, Any], seconds: float) -> str:
    d: Daemon = ctx["d"]
    control = hostile.idle(d.run_dir / "control", IDLE_CLIENTS)
    atop = hostile.idle(ctx["atop"], IDLE_CLIENTS)
    try:
        time.sleep(seconds)
    finally:
        hostile.close_all(control)
        hostile.close_all(atop)
    return f"{IDLE_CLIENTS} idle on the control socket, {IDLE_CLIENTS} on the atop socket"


def slowloris(ctx: dict[str, Any], seconds: float) -> str:
    sent = hostile.slowloris(ctx["d"].run_dir / "control", SLOWLORIS_CLIENTS, seconds)
    return f"{SLOWLORIS_CLIENTS} clients, one byte every 0.5 s ({sent} bytes)"


def flood(ctx: dict[str, Any], seconds: float) -> str:
    actor = Actor(
        ctx["ns"], "flow_flood", addr="127.0.0.1", count=FLOOD_FLOWS, size=18, limit_s=seconds
    )
    try:
        sent = actor.read(timeout_s=seconds + 30)["sent"]
    finally:
        actor.finish()
    return f"{sent} datagrams, each from a new source port"


def malformed_frames(ctx: dict[str, Any], seconds: float) -> str:
    repeat = int(seconds * 1000 / 1.2)  # raw_frames pauses 1 ms per round
    actor = Actor(
        ctx["ns"],
        "raw_frames",
        interface="lo",
        destination_mac="00:00:00:00:00:00",
        frames_hex=MALFORMED_FRAMES,
        repeat=repeat,
    )
    try:
        sent = actor.first["sent"]
    finally:
        actor.finish()
    return f"{sent} malformed frames ({len(MALFORMED_FRAMES)} kinds)"


def malformed_requests(ctx: dict[str, Any], seconds: float) -> str:
    sent = hostile.malformed_requests(ctx["d"].run_dir / "control", 100_000, seconds)
    return f"{sent} connections with a bad magic"


ATTACKS: list[tuple[str, Callable[[dict[str, Any], float], str]]] = [
    ("idle reference", nothing),
    ("never-reading LIST_TASKS", never_reading),
    ("idle connections", idle_connections),
    ("slowloris", slowloris),
    ("flood of new flows", flood),
    ("malformed frames", malformed_frames),
    ("malformed requests", malformed_requests),
    ("idle again", nothing),
]


@contextlib.contextmanager
def tasks_alive(ns: Netns, count: int, lifetime_s: float) -> Iterator[None]:
    """count processes alive (each sent one datagram) for lifetime_s: LIST_TASKS answers
    of count records."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=count, reply_bytes=-1)
    burst = Actor(
        ns,
        "udp_burst",
        addr="127.0.0.1",
        port=server.port,
        count=count,
        batch=count,
        size=16,
        lifetime_ms=int(lifetime_s * 1000),
    )
    try:
        yield
    finally:
        burst.proc.kill()
        server.proc.kill()
        burst.proc.wait()
        server.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="each attack this long")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_hostile.py needs root (a network namespace, AF_PACKET)")
    ns = Netns()
    tmp = Path(tempfile.mkdtemp(prefix="netatop-hostile-"))
    d = Daemon(ns, tmp / "run", "--db", str(tmp / "run.db"))
    ctx = {"d": d, "ns": ns, "atop": tmp / "run.atop"}
    rows = []
    base_fds = 0
    try:
        time.sleep(2.0)  # past start-up
        base_fds = hostile.open_fds(d.proc.pid)
        base_flows = int(d.status()["flows"])
        print(
            f"netatopd pid {d.proc.pid}: RSS {hostile.rss_kib(d.proc.pid) / MIB_KIB:.1f} MiB,"
            f" fds {base_fds} after start; each attack {args.seconds:g} s",
            flush=True,
        )
        with hostile.StatusProbe(d.run_dir) as probe:
            for name, attack in ATTACKS:
                start_rss = hostile.rss_kib(d.proc.pid)
                lifetime = args.seconds + 10
                with contextlib.ExitStack() as stack:
                    if attack is never_reading:
                        stack.enter_context(tasks_alive(ns, TASKS, lifetime))
                        time.sleep(2.0)
                    with probe.during(name) as latency, Sampler(d.proc.pid) as sampler:
                        what = attack(ctx, args.seconds)
                fds_after = settled_fds(d.proc.pid, base_fds + 2)
                rss_after = hostile.rss_kib(d.proc.pid)
                with probe.during("settling"):
                    waited = settle(d, base_flows + 64)
                seconds = latency.seconds or [float("nan")]
                row = (
                    name,
                    start_rss / MIB_KIB,
                    max(sampler.rss) / MIB_KIB,
                    rss_after / MIB_KIB,
                    max(sampler.fds),
                    fds_after,
                    len(latency.seconds),
                    len(latency.failures),
                    statistics.median(seconds) * 1000,
                    max(seconds) * 1000,
                    what,
                )
                rows.append(row)
                print(
                    f"{name}: RSS {row[1]:.1f} -> peak {row[2]:.1f} -> {row[3]:.1f} MiB; "
                    f"fds peak {row[4]}, after {row[5]}; STATUS {row[6]} answered, "
                    f"{row[7]} failed, median {row[8]:.1f} ms, max {row[9]:.1f} ms; {what}; "
                    f"flow table back to the start's after {waited:.0f} s",
                    flush=True,
                )
                for failure in latency.failures[:3]:
                    print(f"  failed: {failure}")
    finally:
        code = d.stop()
        ns.delete()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print()
    print(
        "| attack | RSS start MiB | RSS peak | RSS after | fds peak | fds after | STATUS "
        "answered | failed | median ms | max ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row[0]} | {row[1]:.1f} | {row[2]:.1f} | {row[3]:.1f} | {row[4]} | {row[5]} "
            f"| {row[6]} | {row[7]} | {row[8]:.1f} | {row[9]:.1f} |"
        )
    print(f"netatopd stopped with {code}; fds after start {base_fds}")


if __name__ == "__main__":
    main()
