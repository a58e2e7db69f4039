"""The daemon and traffic actors, started inside a test's network namespace."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

from netatopd.client import ControlClient, DaemonNotRunning
from netatopd.ebpf.skbcount import find_cgroup2_root
from netatopd.protocol import COUNTER_NAMES

ACTORS = str(Path(__file__).with_name("actors.py"))
START_TIMEOUT_S = 20.0
REPO = Path(__file__).resolve().parents[2]

# Ground truth of the kernel module's byte formula: IP length + link header
# (14 on loopback and ethernet) + 4 (CRC).
LINK_OVERHEAD = 14 + 4
UDP4_OVERHEAD = 20 + 8 + LINK_OVERHEAD
UDP6_OVERHEAD = 40 + 8 + LINK_OVERHEAD


PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_the_test() -> None:
    """In a child before its exec: SIGTERM it when the test process goes (killed by a
    timeout, say), so no daemon of ours outlives the suite with its programs loaded."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Daemon:
    """netatopd running in a namespace with a private run directory."""

    def __init__(self, netns: Any, run_dir: Path, *options: str) -> None:
        self.run_dir = run_dir
        self.netns = netns
        self.log_path = run_dir.parent / f"{run_dir.name}.log"
        argv = [
            *netns.exec_prefix,
            sys.executable,
            "-m",
            "netatopd.daemon",
            "--run-dir",
            str(run_dir),
            "--db",
            str(run_dir.parent / f"{run_dir.name}.db"),
            "--atop-socket",
            str(run_dir.parent / f"{run_dir.name}.atop"),
            "--log-level",
            "info",
            *options,
        ]
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=_die_with_the_test,  # noqa: PLW1509 - the test's own thread
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"netatopd exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with self.client() as client:
                    client.probe()
                break
            except (DaemonNotRunning, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"netatopd did not answer in time:\n{self.logs()}"
                    ) from None
                time.sleep(0.05)

    def client(self, timeout_s: float | None = 30.0) -> ControlClient:
        return ControlClient(str(self.run_dir), timeout_s=timeout_s)

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def sync(self) -> None:
        with self.client() as client:
            client.sync()

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            return client.status()

    def counters(self, pid: int) -> dict[str, int]:
        with self.client() as client:
            return dict(client.getcnt_tgid(pid).as_dict())  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Actor:
    """One traffic process from actors.py, talking JSON lines."""

    def __init__(self, netns: Any, role: str, **args: Any) -> None:
        self.proc = subprocess.Popen(
            [*netns.exec_prefix, sys.executable, "-u", ACTORS, role, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_the_test,  # noqa: PLW1509 - the test's own thread
        )
        self.pending = b""
        first = self.read()
        self.first = first
        self.pid: int = first["pid"]
        self.port: int = first.get("port", 0)

    def read(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The actor's next JSON line (several may arrive in one pipe read: keep the rest)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                err = (
                    self.proc.stderr.read()
                    if self.proc.poll() is not None and self.proc.stderr
                    else ""
                )
                raise AssertionError(f"actor gave no answer (exit {self.proc.poll()}): {err}")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        result: dict[str, Any] = json.loads(line)
        return result

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        if self.proc.poll() is None:
            try:
                self.tell("exit")
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def set_sysctl(netns: Any, name: str, value: str) -> None:
    path = "/proc/sys/" + name.replace(".", "/")
    netns.run("sh", "-c", f"echo {value} > {path}")


def attributed_packets(
    d: Daemon, children: list[dict[str, Any]]
) -> tuple[int, int, list[tuple[int, int]]]:
    """After the children finished: (attributed, truth, [(truth, attributed) per child]).

    Ground truth of a child: its connection's TCP_INFO segments out and in; what
    the daemon attributed: the child's exit-list record (after a forced sweep).
    """
    with d.client() as c:
        c.force_gc()
        exited = {r.id: r for r in c.list_exited()}
    per_child = []
    for child in children:
        segments = child["segs_out"] + child["segs_in"]
        record = exited.get(child["pid"])
        got = record.counters[0] + record.counters[2] if record is not None else 0
        per_child.append((segments, got))
    return sum(g for _, g in per_child), sum(s for s, _ in per_child), per_child


def fix_tcp_header_sizes(netns: Any) -> None:
    """No timestamps, SACK or window scaling in the namespace: a TCP header is 20
    bytes, 24 on SYN and SYN-ACK (the MSS option), so wire bytes are exact."""
    for name in ("tcp_timestamps", "tcp_sack", "tcp_window_scaling"):
        set_sysctl(netns, f"net.ipv4.{name}", "0")


def pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


BALANCE_DIRECTIONS = ("tcp_sent", "tcp_received", "udp_sent", "udp_received")


def assert_balanced(status: dict[str, Any]) -> None:
    """Nothing lost: for each protocol and direction, every TCP and UDP packet counted is
    a process's (running or finished), unidentified, pending on a flow, or forwarded.

    Recomputed here from the terms STATUS reports, and held to its own difference
    (balance_*), which must be 0; the packets counted are the local ones (tcp_sent
    ...) and the forwarded ones.
    """
    for name in BALANCE_DIRECTIONS:
        counted = status[f"balance_{name}_counted"]
        terms = {
            "processes": status[f"balance_{name}_processes"],
            "unidentified": status[f"{name}_unidentified"],
            "pending": status[f"balance_{name}_pending"],
            "forwarded": status[f"forwarded_{name}"],
        }
        assert counted == sum(terms.values()), (name, counted, terms)
        assert status[f"balance_{name}"] == 0, (name, counted, terms)
        assert counted == status[name] + status[f"forwarded_{name}"], (name, counted, status)


def read_only(db: Path) -> apsw.Connection:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def exited_rows(db: Path) -> dict[tuple[int, int], dict[str, int]]:
    """(tgid, btime) -> counters, for every row of the exited table."""
    if not db.exists():
        return {}
    conn = read_only(db)
    try:
        rows = conn.execute(f"SELECT tgid, btime, {', '.join(COUNTER_NAMES)} FROM exited")
        return {
            (row[0], row[1]): dict(zip(COUNTER_NAMES, row[2:], strict=True))
            for row in rows.fetchall()
        }
    finally:
        conn.close()


def udp(sent: int = 0, sent_bytes: int = 0, received: int = 0, received_bytes: int = 0) -> dict:
    return {
        "tcpsndpacks": 0,
        "tcpsndbytes": 0,
        "tcprcvpacks": 0,
        "tcprcvbytes": 0,
        "udpsndpacks": sent,
        "udpsndbytes": sent_bytes,
        "udprcvpacks": received,
        "udprcvbytes": received_bytes,
    }


class Started:
    """The daemons a test started, each with a run directory of its own in tmp_path;
    each is stopped (SIGTERM) at the end unless killed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.daemons: list[Daemon] = []
        self.killed: set[int] = set()

    def start(self, ns: Any, *options: str) -> Daemon:
        d = Daemon(ns, self.tmp_path / f"run{len(self.daemons)}", *options)
        self.daemons.append(d)
        return d

    def kill(self, d: Daemon) -> None:
        """SIGKILL: no final flush, no clean-up of any kind."""
        self.killed.add(id(d))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=30)
        d.log.close()

    def stop_all(self) -> list[str]:
        problems = []
        for d in self.daemons:
            code = d.stop()
            if id(d) not in self.killed and code != 0:
                problems.append(f"netatopd stopped with {code}:\n{d.logs()}")
        return problems


WAIT_S = 60.0  # longest wait for something the daemon does on its own schedule
POLL_S = 0.05


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll check() until it returns something true (bounded); that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


def exit_timed(proc: subprocess.Popen[str], timeout_s: float = WAIT_S) -> tuple[float, float]:
    """Tell a test process that reads its orders on stdin to exit ("exit"); (the time it
    was told, the time its wait returned): the window its exit time must fall in."""
    assert proc.stdin is not None
    before = time.time()
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    assert proc.wait(timeout=timeout_s) == 0
    return before, time.time()


def kill_if_running(proc: subprocess.Popen[str]) -> None:
    """For a finally: a test process still running (its test failed) is killed and reaped."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class TimedLines:
    """Every JSON line an actor prints, with the monotonic time it arrived."""

    def __init__(self, actor: Actor) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stdout = actor.proc.stdout
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self._stdout is not None
        for line in self._stdout:
            with self._lock:
                self.lines.append((time.monotonic(), json.loads(line)))

    def snapshot(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return list(self.lines)

    def done(self) -> bool:
        return any("done" in line for _, line in self.snapshot())


@contextlib.contextmanager
def docker_scope_dir(tag: str) -> Iterator[tuple[Path, str]]:
    """A cgroup v2 directory named like a Docker container's scope (under a slice named
    tag-PID), and its 64-hex container id; removed afterwards, once its processes are gone."""
    root = find_cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy mounted"
    parent = Path(root) / f"{tag}-{os.getpid()}.slice"
    container_id = secrets.token_hex(32)
    scope = parent / f"docker-{container_id}.scope"
    scope.mkdir(parents=True)
    try:
        yield scope, container_id
    finally:
        for directory in (scope, parent):
            deadline = time.monotonic() + 10
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:  # EBUSY until the last process in it is reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def fork_once_handshake_charged(d: Daemon, server: Actor) -> None:
    """A forking tcp_server (actors.tcp_server, fork=True) has accepted: tell it to fork once
    the daemon has charged its process the handshake (a SYN-ACK sent, the SYN received), so
    that nothing before the fork can reach the child's counters."""
    assert server.read()["accepted"]

    def parent_has_handshake() -> bool:
        d.sync()
        parent = d.counters(server.pid)
        return parent["tcpsndpacks"] >= 1 and parent["tcprcvpacks"] >= 1

    wait_until("the handshake charged to the parent", parent_has_handshake)
    server.tell("fork")
