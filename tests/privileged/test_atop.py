"""atop's view: the daemon's atop socket, spoken byte for byte like atop 2.10 does.

atop (started with -K) sends one 96-byte struct netpertask per sample (its
contents uninitialised) and reads the answer 96 bytes per recv() until a
record with id 0.  Ground truth: datagrams x wire size, as in test_daemon.py.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from netatopd.protocol import NETPERTASK_SIZE, unpack_netpertask

from harness import UDP4_OVERHEAD, Actor, Daemon

pytestmark = pytest.mark.privileged


class AtopClient:
    """What atop does: one request per sample on a connection kept open."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))

    def sample(self) -> dict[int, tuple[int, str, tuple[int, ...]]]:
        self.sock.sendall(os.urandom(NETPERTASK_SIZE))  # uninitialised, like atop's
        answer: dict[int, tuple[int, str, tuple[int, ...]]] = {}
        while True:
            record = self.sock.recv(NETPERTASK_SIZE)
            assert len(record) == NETPERTASK_SIZE, "a recv of 96 bytes must get a whole record"
            task_id, btime, command, counters = unpack_netpertask(record)
            if task_id == 0:
                return answer
            assert task_id not in answer, "a tgid appears once per answer"
            answer[task_id] = (btime, command, counters)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def setup(make_netns: Any, tmp_path: Path) -> Any:
    ns = make_netns("ntpt")
    d = Daemon(ns, tmp_path / "run", "--exit-lifetime-s", "60")
    yield ns, d, tmp_path / "run.atop"
    assert d.stop() == 0, d.logs()
    assert not (tmp_path / "run.atop").exists()  # removed on a clean exit


def test_atop_sees_exact_counters_and_finished_processes_once(setup: Any) -> None:
    ns, d, path = setup
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=30, reply_bytes=200)
    client = Actor(
        ns, "udp_client", addr="127.0.0.1", port=server.port, count=30, size=100, expect_reply=True
    )
    assert client.read()["sent"] == 30 and server.read()["received"] == 30
    d.sync()
    first, second = AtopClient(path), AtopClient(path)
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    garbage.connect(str(path))
    garbage.sendall(b"\x01\x02\x03\x04\x05")
    garbage.close()  # a partial request, then gone: costs nothing
    try:
        per_request, per_reply = 100 + UDP4_OVERHEAD, 200 + UDP4_OVERHEAD
        expected_client = (0, 0, 0, 0, 30, 30 * per_request, 30, 30 * per_reply)
        answer = first.sample()
        with d.client() as c:
            control = c.getcnt_tgid(client.pid)
        assert answer[client.pid] == (control.btime, control.command, expected_client)
        assert answer[server.pid][2] == (0, 0, 0, 0, 30, 30 * per_reply, 30, 30 * per_request)
        # An early disconnect in the middle of an answer costs the others nothing.
        quitter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        quitter.connect(str(path))
        quitter.sendall(bytes(NETPERTASK_SIZE))
        quitter.recv(NETPERTASK_SIZE)
        quitter.close()
        assert second.sample()[client.pid][2] == expected_client
        # The client finishes: each atop connection gets its final counters once more.
        client.finish()
        with d.client() as c:
            c.force_gc()
            assert client.pid in [r.id for r in c.list_exited()]
        for atop in (first, second):
            answer = atop.sample()
            assert answer[client.pid][2] == expected_client
            assert client.pid not in atop.sample()  # then it is left out
            assert server.pid in answer
        # A client that connects after the process finished never sees it.
        late = AtopClient(path)
        assert client.pid not in late.sample()
        late.close()
        assert d.status()["atop_garbage"] >= 1
    finally:
        first.close()
        second.close()
        server.finish()
        client.finish()


def test_a_second_daemon_does_not_steal_the_atop_socket(setup: Any, tmp_path: Path) -> None:
    ns, d, path = setup
    with pytest.raises(AssertionError, match="exited with 5"):
        Daemon(ns, tmp_path / "other", "--atop-socket", str(path))
    assert AtopClient(path).sample() is not None  # the first daemon still serves it
    time.sleep(0)
