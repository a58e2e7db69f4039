"""The control socket's wire protocol, with a fake backend and a real selector loop."""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.client import ControlClient, DaemonNotRunning
from netatopd.protocol import REPLY, REPLY_MAGIC, REQUEST, REQUEST_MAGIC, Command, pack_netpertask
from netatopd.server import ControlServer, ServerError

RECORD = pack_netpertask(42, 1_700_000_000, "worker", (1, 2, 3, 4, 5, 6, 7, 8))


class Backend:
    def __init__(self) -> None:
        self.exited: list[bytes] = []
        self.gc_runs = 0

    def probe(self) -> bytes:
        return b"netatopd test"

    def force_gc(self) -> object:
        self.gc_runs += 1
        return self.gc_runs

    def gc_done(self, token: object) -> bool:
        return True

    def getcnt_tgid(self, tgid: int) -> bytes | None:
        return RECORD if tgid == 42 else None

    def getcnt_pid(self, pid: int) -> bytes | None:
        return None

    def pop_exited(self) -> bytes | None:
        return self.exited.pop(0) if self.exited else None

    def exit_list_length(self) -> int:
        return len(self.exited)

    def status(self) -> dict[str, object]:
        return {"tcp_sent": 5}

    def list_tasks(self) -> bytes:
        return RECORD * 3

    def list_exited(self) -> bytes:
        return b"".join(self.exited)

    def start_sync(self) -> object:
        return 0.0

    def sync_done(self, token: object) -> bool:
        return True


class Loop:
    """The daemon's loop in miniature: select, dispatch, service waiters."""

    def __init__(self, run_dir: Path) -> None:
        self.backend = Backend()
        self.server = ControlServer(str(run_dir / "control"), self.backend)
        self.selector = selectors.DefaultSelector()
        self.server.register(self.selector)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.02):
                with self.lock:
                    key.data(mask)
            with self.lock:
                self.server.service_waiters()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    lp = Loop(tmp_path)
    yield lp
    lp.close()


def raw_request(path: str, payload: bytes) -> tuple[tuple[int, int, int, int], bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    sock.sendall(payload)
    header = sock.recv(REPLY.size)
    rest = sock.recv(4096)  # b"" once the server closed the connection
    sock.close()
    return REPLY.unpack(header), rest


def test_commands_answer_with_records(loop: Loop, tmp_path: Path) -> None:
    with ControlClient(str(tmp_path)) as client:
        assert client.probe() == "netatopd test"
        record = client.getcnt_tgid(42)
        assert (record.id, record.btime, record.command, record.counters) == (
            42,
            1_700_000_000,
            "worker",
            (1, 2, 3, 4, 5, 6, 7, 8),
        )
        assert [r.id for r in client.list_tasks()] == [42, 42, 42]
        assert client.status() == {"tcp_sent": 5}
        client.force_gc()
        client.sync()
        with pytest.raises(ProcessLookupError):
            client.getcnt_tgid(7)
        with pytest.raises(ProcessLookupError):
            client.getcnt_pid(42)
    assert loop.backend.gc_runs == 1


def test_bad_magic_gets_an_error_and_the_connection_closes(loop: Loop, tmp_path: Path) -> None:
    garbage = b"GET / HTTP/1.0\r\n"
    header, rest = raw_request(str(tmp_path / "control"), garbage)
    assert header == (REPLY_MAGIC, struct.unpack_from("=I", garbage, 4)[0], errno.EBADMSG, 0)
    assert rest == b""
    with ControlClient(str(tmp_path)) as client:  # the daemon carries on
        assert client.probe() == "netatopd test"


def test_unknown_command_gets_einval(loop: Loop, tmp_path: Path) -> None:
    header, rest = raw_request(str(tmp_path / "control"), REQUEST.pack(REQUEST_MAGIC, 99, 0, 0))
    assert header == (REPLY_MAGIC, 99, errno.EINVAL, 0) and rest == b""


def test_getcnt_exit_blocks_and_a_leaving_client_costs_nothing(loop: Loop, tmp_path: Path) -> None:
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.connect(str(tmp_path / "control"))
    gone.sendall(REQUEST.pack(REQUEST_MAGIC, Command.GETCNT_EXIT, 0, 0))
    gone.close()  # leaves while blocked
    got = []

    def wait() -> None:
        with ControlClient(str(tmp_path)) as client:
            got.append(client.getcnt_exit())

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    with loop.lock:
        loop.backend.exited.append(pack_netpertask(9, 1, "done", (0,) * 8))
    waiter.join(5)
    assert [r.id for r in got] == [9]
    with ControlClient(str(tmp_path)) as client:
        client.empty_exit()  # the list is empty now: answers at once


def test_no_daemon_names_the_run_directory(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=str(tmp_path)):
        ControlClient(str(tmp_path))


def test_a_live_server_is_not_replaced(loop: Loop, tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="already"):
        ControlServer(str(tmp_path / "control"), Backend())


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = ControlServer(str(path), Backend())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    server.close()
    assert not path.exists()
