"""Limits of the control and atop sockets under misbehaving clients (issue 13, items 1 and 2).

Each test drives the server by hand on one thread: ``Pump`` runs the selector
handlers (and the control server's ``service_waiters``, as the daemon loop
does) until nothing happens any more, and time comes from a ``Clock`` the test
advances, so no test sleeps.  Clients are raw non-blocking sockets: a client
that "never reads" just never calls recv.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from netatopd import server as server_module
from netatopd.exitlist import ExitJournal
from netatopd.protocol import REPLY, REPLY_MAGIC, REQUEST, REQUEST_MAGIC, Command
from netatopd.server import AtopServer, ControlServer
from netatopd.tasks import TaskInfo

MIB = 1 << 20
PER_CLIENT_CAP = 1 * MIB  # netatop-control(5): answers queued for one client
BIG_REPLY = bytes(64 * 1024)  # a LIST_TASKS of about 680 processes
RECORD = 96


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Backend:
    """A control backend whose LIST_TASKS answer is 64 KiB and GETCNT_EXIT never answers."""

    def probe(self) -> bytes:
        return b"netatopd limits"

    def force_gc(self) -> object:
        return 0

    def gc_done(self, token: object) -> bool:
        return True

    def getcnt_tgid(self, tgid: int) -> bytes | None:
        return None

    def getcnt_pid(self, pid: int) -> bytes | None:
        return None

    def pop_exited(self) -> bytes | None:
        return None

    def exit_list_length(self) -> int:
        return 0

    def status(self) -> dict[str, object]:
        return {"tcp_sent": 5}

    def list_tasks(self) -> bytes:
        return BIG_REPLY

    def list_exited(self) -> bytes:
        return b""

    def start_sync(self) -> object:
        return 0

    def sync_done(self, token: object) -> bool:
        return True


class AtopBackend:
    def __init__(self, processes: int) -> None:
        self.tasks = []
        for tgid in range(1, processes + 1):
            task = TaskInfo(tgid, start_time_ticks=tgid, btime=1_700_000_000, command="p")
            task.counters = [tgid] * 8
            self.tasks.append(task)

    def atop_tasks(self) -> Iterable[TaskInfo]:
        return self.tasks


class Pump:
    """The daemon loop's part, by hand: run ready handlers until nothing is ready."""

    def __init__(self, server: ControlServer | AtopServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.register(self.selector)

    def __call__(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            events = self.selector.select(0)
            for key, mask in events:
                key.data(mask)
            if isinstance(self.server, ControlServer):
                self.server.service_waiters()
            elif hasattr(self.server, "expire"):
                self.server.expire()
            if not events:
                return

    def close(self) -> None:
        self.server.close()
        self.selector.close()


def control_queued(server: ControlServer) -> list[int]:
    return [len(conn.outbox) for conn in server.connections.values()]


def connect(path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(path)
    sock.setblocking(False)
    return sock


def request(command: Command) -> bytes:
    return REQUEST.pack(REQUEST_MAGIC, int(command), 0, 0)


def send_some(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed this connection (whatever it had queued is read away first)."""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def read_replies(sock: socket.socket, pump: Pump, expected: int) -> list[tuple[int, int, int]]:
    """Read expected replies (pumping the server meanwhile): (command, error, length) each."""
    received = bytearray()
    replies: list[tuple[int, int, int]] = []
    for _ in range(100_000):
        pump(5)
        try:
            received += sock.recv(1 << 20)
        except BlockingIOError:
            pass
        while len(received) >= REPLY.size:
            magic, command, error, length = REPLY.unpack_from(received)
            if len(received) < REPLY.size + length:
                break
            assert magic == REPLY_MAGIC
            del received[: REPLY.size + length]
            replies.append((command, error, length))
        if len(replies) >= expected:
            return replies
    raise AssertionError(f"only {len(replies)} of {expected} replies came")


def probe_answered(path: str, pump: Pump) -> bool:
    sock = connect(path)
    try:
        sock.send(request(Command.STATUS))
        pump()
        return read_replies(sock, pump, 1) == [(Command.STATUS, 0, len(b'{"tcp_sent": 5}'))]
    finally:
        sock.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def control(tmp_path: Path, clock: Clock) -> Iterator[tuple[ControlServer, Pump]]:
    server = ControlServer(str(tmp_path / "control"), Backend(), clock=clock)
    pump = Pump(server)
    yield server, pump
    pump.close()


def flood_without_reading(sock: socket.socket, pump: Pump, requests: int) -> int:
    """Send up to requests LIST_TASKS without reading; the number the socket took."""
    payload = request(Command.LIST_TASKS) * requests
    sent = 0
    idle_rounds = 0
    while sent < len(payload) and idle_rounds < 5:
        n = send_some(sock, payload[sent:])
        sent += n
        pump()
        idle_rounds = 0 if n else idle_rounds + 1
    return sent // REQUEST.size


# -- item 1: output is capped ---------------------------------------------------------------


def test_a_client_that_never_reads_is_served_no_more_than_its_cap(tmp_path: Path) -> None:
    server = ControlServer(str(tmp_path / "control"), Backend())
    pump = Pump(server)
    sock = connect(server.path, rcvbuf=4096)
    try:
        sent = flood_without_reading(sock, pump, 200)
        queued = control_queued(server)
        assert queued and max(queued) <= PER_CLIENT_CAP + REPLY.size + len(BIG_REPLY), (
            f"{max(queued)} bytes queued for one client that reads nothing"
        )
        assert len(server.connections) == 1  # held back, not dropped yet
        # Once it reads, every answer comes, in order, and the rest of its requests too.
        replies = read_replies(sock, pump, sent)
        assert replies == [(Command.LIST_TASKS, 0, len(BIG_REPLY))] * sent
    finally:
        sock.close()
        pump.close()


def test_a_client_that_stays_over_its_cap_is_dropped_with_one_line(
    control: tuple[ControlServer, Pump], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server, pump = control
    sock = connect(server.path, rcvbuf=4096)
    try:
        flood_without_reading(sock, pump, 200)
        clock.advance(20)
        pump()
        assert len(server.connections) == 1  # still within its time
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="netatopd.server"):
            clock.advance(11)
            pump()
        assert not server.connections
        assert closed_by_server(sock)
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "read" in lines[0], lines
    finally:
        sock.close()


def test_total_output_is_capped_and_status_still_answers(
    control: tuple[ControlServer, Pump], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, pump = control
    total_cap = 3 * MIB
    monkeypatch.setattr(server_module, "MAX_OUTPUT_BYTES_TOTAL", total_cap)
    hogs = [connect(server.path, rcvbuf=4096) for _ in range(8)]
    try:
        for sock in hogs:
            flood_without_reading(sock, pump, 100)
        reply_bytes = REPLY.size + len(BIG_REPLY)
        assert sum(control_queued(server)) <= total_cap + len(hogs) * reply_bytes
        assert probe_answered(server.path, pump)  # a new client is served meanwhile
        clock.advance(2)  # the hogs read nothing for 2 s while the total is over
        pump()
        assert sum(control_queued(server)) <= total_cap
        assert probe_answered(server.path, pump)
        assert sum(closed_by_server(sock) for sock in hogs) >= 1
    finally:
        for sock in hogs:
            sock.close()


def test_atop_queues_one_answer_per_client_and_drops_a_stalled_one(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = AtopBackend(20_000)  # a 1.9 MB answer
    server = AtopServer(str(tmp_path / "atop"), backend, ExitJournal(), clock=clock)
    pump = Pump(server)
    sock = connect(server.path, rcvbuf=4096)
    try:
        sent = 0
        for _ in range(50):  # 16 requests ahead, as many as atop may queue
            sent += send_some(sock, bytes(RECORD * 16)[sent:])
            pump()
        assert server.requests == 1  # the second answer waits for the first to be read
        clock.advance(29)
        pump()
        assert len(server.connections) == 1
        with caplog.at_level(logging.WARNING, logger="netatopd.server"):
            clock.advance(2)
            pump()
        assert not server.connections
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "read" in lines[0], lines
    finally:
        sock.close()
        pump.close()


def test_atop_total_output_is_capped(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = AtopBackend(5_000)  # 480 KB an answer
    answer_bytes = (5_000 + 1) * RECORD
    total_cap = 2 * MIB
    monkeypatch.setattr(server_module, "ATOP_MAX_OUTPUT_BYTES_TOTAL", total_cap)
    server = AtopServer(str(tmp_path / "atop"), backend, ExitJournal(), clock=clock)
    pump = Pump(server)
    stalled = [connect(server.path, rcvbuf=4096) for _ in range(10)]
    try:
        for sock in stalled:
            sock.send(bytes(RECORD))
            pump()
        clock.advance(2)
        pump()
        held = sum(
            len(conn.answer) for conn in server.connections.values() if conn.answer is not None
        )
        assert held <= total_cap
        assert sum(closed_by_server(sock) for sock in stalled) >= 10 - total_cap // answer_bytes
    finally:
        for sock in stalled:
            sock.close()
        pump.close()


# -- item 2: idle and slow clients, the connection limit ------------------------------------


def test_an_idle_control_client_is_closed_after_30_s(
    control: tuple[ControlServer, Pump], clock: Clock
) -> None:
    server, pump = control
    idle = connect(server.path)
    slow = connect(server.path)  # slowloris: half a request, then nothing
    parked = connect(server.path)  # waits for an exited process: never idle
    try:
        slow.send(request(Command.PROBE)[:7])
        parked.send(request(Command.GETCNT_EXIT))
        pump()
        clock.advance(29)
        pump()
        assert len(server.connections) == 3
        clock.advance(2)
        pump()
        assert closed_by_server(idle) and closed_by_server(slow)
        assert not closed_by_server(parked)
        clock.advance(3600)
        pump()
        assert not closed_by_server(parked)
        assert len(server.connections) == 1
    finally:
        for sock in (idle, slow, parked):
            sock.close()


def test_a_full_control_socket_evicts_the_oldest_idle_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_CLIENTS", 4)
    server = ControlServer(str(tmp_path / "control"), Backend())
    pump = Pump(server)
    parked = connect(server.path)
    parked.send(request(Command.GETCNT_EXIT))
    pump()
    idle = []
    for _ in range(3):
        idle.append(connect(server.path))
        pump()
    try:
        for _ in range(10):  # each newcomer is answered; nobody is locked out
            assert probe_answered(server.path, pump)
        assert closed_by_server(idle[0])
        assert not closed_by_server(parked)  # waiting is not idle
        assert len(server.connections) <= 4
    finally:
        for sock in [parked, *idle]:
            sock.close()
        pump.close()


def test_evictions_are_logged_at_most_once_per_interval_with_a_count(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server_module, "MAX_CLIENTS", 4)
    server = ControlServer(str(tmp_path / "control"), Backend(), clock=clock)
    pump = Pump(server)
    socks = []
    try:
        with caplog.at_level(logging.INFO, logger="netatopd.server"):
            for _ in range(54):
                socks.append(connect(server.path))
                pump()
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(lines) == 1, lines  # the first eviction, at once
            clock.advance(60)
            pump()
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 2, lines
        assert "49" in lines[1], lines  # the other 49 evictions, counted in one line
    finally:
        for sock in socks:
            sock.close()
        pump.close()


def test_a_full_atop_socket_evicts_the_oldest_idle_client(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_CLIENTS", 4)
    server = AtopServer(str(tmp_path / "atop"), AtopBackend(3), ExitJournal())
    pump = Pump(server)
    idle = []
    for _ in range(4):
        idle.append(connect(server.path))
        pump()
    newcomer = connect(server.path)
    try:
        pump()
        newcomer.send(bytes(RECORD))
        pump()
        answer = b""
        for _ in range(100):
            pump()
            try:
                answer += newcomer.recv(1 << 16)
            except BlockingIOError:
                pass
            if len(answer) == 4 * RECORD:
                break
        assert len(answer) == 4 * RECORD  # three processes and the terminator
        assert closed_by_server(idle[0])
        assert not any(closed_by_server(sock) for sock in idle[1:])
    finally:
        for sock in [newcomer, *idle]:
            sock.close()
        pump.close()


def test_atop_keeps_an_idle_connection_between_samples(tmp_path: Path, clock: Clock) -> None:
    server = AtopServer(str(tmp_path / "atop"), AtopBackend(3), ExitJournal(), clock=clock)
    pump = Pump(server)
    sock = connect(server.path)
    try:
        pump()
        clock.advance(600)  # atop -K with a 10-minute interval
        pump()
        assert not closed_by_server(sock)
        assert len(server.connections) == 1
    finally:
        sock.close()
        pump.close()


def test_accept_failures_are_rate_limited(
    control: tuple[ControlServer, Pump], caplog: pytest.LogCaptureFixture
) -> None:
    server, pump = control

    class OutOfDescriptors:
        def accept(self) -> tuple[socket.socket, object]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    listener = server.listener
    server.listener = OutOfDescriptors()  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.WARNING, logger="netatopd.server"):
            for _ in range(100):
                server._accept(selectors.EVENT_READ)
    finally:
        server.listener = listener
    assert len(caplog.records) == 1
