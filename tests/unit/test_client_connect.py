"""ControlClient's connect while the daemon's listen backlog is full (found by the soak
test, tests/privileged/test_soak.py: 300 quick connections made `netatop status` fail
with EAGAIN).  A Unix stream socket with a timeout does not wait for room in the
backlog; the client must, up to its timeout.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.client import ControlClient, DaemonNotRunning
from netatopd.defaults import CONTROL_SOCKET_NAME
from netatopd.protocol import COUNTER_NAMES


@pytest.fixture
def full_backlog(tmp_path: Path) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listener (backlog 0) that accepts nothing, with its backlog filled."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / CONTROL_SOCKET_NAME))
    listener.listen(0)
    waiting: list[socket.socket] = []
    for _ in range(8):  # bounded: the backlog of 0 holds one or two
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(tmp_path / CONTROL_SOCKET_NAME))
        except BlockingIOError:
            sock.close()
            break
        waiting.append(sock)
    else:
        pytest.fail("the backlog never filled")
    try:
        yield listener, waiting
    finally:
        for sock in waiting:
            sock.close()
        listener.close()


def test_a_full_backlog_is_waited_for_until_the_daemon_accepts(
    tmp_path: Path, full_backlog: tuple[socket.socket, list[socket.socket]]
) -> None:
    listener, waiting = full_backlog

    def accept_later() -> None:
        time.sleep(0.3)
        for _ in waiting:
            listener.accept()[0].close()

    acceptor = threading.Thread(target=accept_later)
    acceptor.start()
    try:
        with ControlClient(str(tmp_path), timeout_s=10) as client:
            assert client.sock.getpeername() == str(tmp_path / CONTROL_SOCKET_NAME)
    finally:
        acceptor.join(10)


def test_a_backlog_full_for_the_whole_timeout_is_a_sentence(
    tmp_path: Path, full_backlog: tuple[socket.socket, list[socket.socket]]
) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonNotRunning, match="did not take the connection"):
        ControlClient(str(tmp_path), timeout_s=0.3)
    assert time.monotonic() - started >= 0.3


def test_an_older_daemon_without_the_detail_commands_is_asked_the_plain_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon from before the *_DETAIL commands answers them EINVAL and closes the
    connection (server.py's rule for an unknown command).  The client asks the plain
    command on a new connection; rows come without identity; netatop says why once."""
    from netatopd.cli import sources
    from netatopd.protocol import REPLY, REPLY_MAGIC, REQUEST, Command, pack_netpertask

    counters = tuple(range(1, 9))
    asked: list[int] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / CONTROL_SOCKET_NAME))
    listener.listen(4)
    listener.settimeout(10)

    def old_daemon() -> None:
        for _ in range(6):  # bounded: two connections a call, three calls
            conn, _ = listener.accept()
            with conn:
                _, command, _, _ = REQUEST.unpack(conn.recv(REQUEST.size, socket.MSG_WAITALL))
                asked.append(command)
                if command == Command.LIST_TASKS:
                    payload = pack_netpertask(4321, 1_700_000_000, "old", counters)
                    conn.sendall(REPLY.pack(REPLY_MAGIC, command, 0, len(payload)) + payload)
                else:
                    conn.sendall(REPLY.pack(REPLY_MAGIC, command, errno.EINVAL, 0))

    server = threading.Thread(target=old_daemon)
    server.start()
    try:
        with ControlClient(str(tmp_path), timeout_s=10) as client:
            (detail,) = client.list_tasks_detail()
            assert client.without_identity
        assert (detail["tgid"], detail["command"], detail["uid"], detail["cmdline"]) == (
            4321,
            "old",
            -1,
            "",
        )
        assert tuple(detail[name] for name in COUNTER_NAMES) == counters
        for _ in range(2):  # through the CLI's call(): the note is said once
            (row,) = sources.call(str(tmp_path), lambda c: c.list_tasks_detail())
            assert row["tgid"] == 4321
    finally:
        server.join(timeout=10)
        listener.close()
    assert asked == [Command.LIST_TASKS_DETAIL, Command.LIST_TASKS] * 3
    assert capsys.readouterr().err.count("netatopd is older than this netatop") == 1
