"""Churning and hostile clients of a running netatopd, and what they cost it.

Owns the client side of the soak test and of the hostile benchmark: the
daemon's resident memory and open descriptors (read from /proc), a STATUS
probe that times one request after another on fresh connections while
something else happens, and the clients themselves (control and atop sockets:
short exchanges, idle connections, clients that never read their answers,
slowloris, malformed requests).  Every loop is bounded in count and in time.
Used by tests/privileged/test_soak.py and bench/bench_hostile.py; it asserts
nothing (the test does, the benchmark prints).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netatopd.client import ControlClient
from netatopd.protocol import NETPERTASK_SIZE, REQUEST, REQUEST_MAGIC, Command

CONNECT_TIMEOUT_S = 10.0
STATUS_TIMEOUT_S = 30.0
PROBE_INTERVAL_S = 0.05


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def memory_kib(pid: int) -> dict[str, int]:
    """MEMORY_FIELDS of pid in KiB (/proc/PID/status): resident memory, and its parts
    (anonymous: the heap; file: libraries, mapped database; shared memory)."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in MEMORY_FIELDS:
                found[name] = int(value.split()[0])
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of pid in KiB."""
    return memory_kib(pid)["VmRSS"]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Latency:
    """STATUS requests made during one phase: seconds each took, and the ones that failed."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.seconds:
            return f"STATUS 0 answered, {len(self.failures)} failed"
        return (
            f"STATUS {len(self.seconds)} answered, {len(self.failures)} failed, "
            f"median {statistics.median(self.seconds) * 1000:.1f} ms, "
            f"max {max(self.seconds) * 1000:.1f} ms"
        )


class StatusProbe:
    """A thread that asks STATUS on a fresh connection every PROBE_INTERVAL_S, as
    `netatop status` would, and files each answer's latency under the current phase."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.phases: dict[str, Latency] = {}
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(STATUS_TIMEOUT_S + CONNECT_TIMEOUT_S)

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[Latency]:
        self.phases.setdefault(phase, Latency())
        self.phase = phase
        try:
            yield self.phases[phase]
        finally:
            self.phase = "between"

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            latency = self.phases.setdefault(self.phase, Latency())
            started = time.monotonic()
            try:
                with ControlClient(str(self.run_dir), timeout_s=STATUS_TIMEOUT_S) as client:
                    client.status()
            except (OSError, ConnectionError) as err:
                latency.failures.append(f"{type(err).__name__}: {err}")
                continue
            latency.seconds.append(time.monotonic() - started)


def connect(path: Path) -> socket.socket:
    """A connection to path; while the listen backlog is full (EAGAIN: a Unix socket
    with a timeout does not wait for room) it tries again, for CONNECT_TIMEOUT_S."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


def repeat(count: int, limit_s: float, action: Callable[[int], object]) -> int:
    """action(index) count times or until limit_s has passed; how many were done."""
    deadline = time.monotonic() + limit_s
    for index in range(count):
        if time.monotonic() > deadline:
            return index
        action(index)
    return count


def status_churn(run_dir: Path, count: int, limit_s: float) -> int:
    """Connect, STATUS, disconnect: count times or until limit_s; how many were answered."""

    def exchange(_: int) -> None:
        with ControlClient(str(run_dir), timeout_s=STATUS_TIMEOUT_S) as client:
            client.status()

    return repeat(count, limit_s, exchange)


def never_reading(control: Path, clients: int, requests: int) -> list[socket.socket]:
    """clients connections that send up to requests LIST_TASKS each and never read;
    the caller closes them.  Sending stops at the first one that would block."""
    request = REQUEST.pack(REQUEST_MAGIC, int(Command.LIST_TASKS), 0, 0)
    socks = []
    for _ in range(clients):
        sock = connect(control)
        sock.setblocking(False)
        for _ in range(requests):
            try:
                sock.send(request)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        socks.append(sock)
    return socks


def idle(path: Path, clients: int) -> list[socket.socket]:
    """clients connections that send nothing; the caller closes them.  Past the daemon's
    limit each newcomer evicts the oldest idle one, so every connect succeeds."""
    return [connect(path) for _ in range(clients)]


def slowloris(path: Path, clients: int, limit_s: float, interval_s: float = 0.5) -> int:
    """clients connections that send a request one byte every interval_s for limit_s
    (a 16-byte request then takes 8 s); closes them; how many bytes went out."""
    socks = [connect(path) for _ in range(clients)]
    request = REQUEST.pack(REQUEST_MAGIC, int(Command.STATUS), 0, 0)
    sent = 0
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(request[sent % len(request) : sent % len(request) + 1])
            sent += 1
            time.sleep(interval_s)
    finally:
        close_all(socks)
    return sent * clients


def malformed_requests(control: Path, count: int, limit_s: float) -> int:
    """count connections each sending one request with a bad magic (the daemon answers
    EBADMSG and closes); how many were sent."""

    def send(index: int) -> None:
        with connect(control) as sock:
            sock.sendall(REQUEST.pack(0xBAD0 + index % 16, int(Command.STATUS), 0, 0))
            with contextlib.suppress(OSError):
                sock.recv(4096)

    return repeat(count, limit_s, send)


def atop_sample(sock: socket.socket) -> int:
    """One atop request and its whole answer, read 96 bytes at a time; records read."""
    sock.sendall(bytes(NETPERTASK_SIZE))
    records = 0
    while True:
        record = sock.recv(NETPERTASK_SIZE, socket.MSG_WAITALL)
        if len(record) != NETPERTASK_SIZE:
            raise ConnectionError(errno.EPROTO, f"short atop record ({len(record)} bytes)")
        records += 1
        if int.from_bytes(record[:4], "little", signed=True) == 0:
            return records


def atop_churn(atop: Path, count: int, limit_s: float) -> int:
    """Connect, one sample, disconnect: count times or until limit_s; samples read."""

    def sample(_: int) -> None:
        with connect(atop) as sock:
            atop_sample(sock)

    return repeat(count, limit_s, sample)


def atop_never_reading(atop: Path, clients: int, requests: int) -> list[socket.socket]:
    """clients atop connections that send requests samples' worth of requests and never
    read; the caller closes them."""
    socks = []
    for _ in range(clients):
        sock = connect(atop)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            sock.send(bytes(NETPERTASK_SIZE * requests))
        socks.append(sock)
    return socks
