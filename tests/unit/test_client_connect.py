"""ControlClient's connect while the daemon's listen backlog is full (found by the soak
test, tests/privileged/test_soak.py: 300 quick connections made `netatop status` fail
with EAGAIN).  A Unix stream socket with a timeout does not wait for room in the
backlog; the client must, up to its timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.client import ControlClient, DaemonNotRunning
from netatopd.defaults import CONTROL_SOCKET_NAME


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
