"""Hostile cases that need root (issue 13): forged control sockets, a full filesystem,
a read-only one.

Each forged daemon is a child Python process that answers STATUS with made-up
figures, serving as nobody (uid 65534).  The client must refuse it before it
believes a byte.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.client import ControlClient
from netatopd.rundir import RunDirError, open_directory

from conftest import root_or_skip

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534

# Serves forged STATUS replies at argv[1]; argv[2] "bind-as-nobody" drops to nobody
# before bind (the file is nobody's), "listen-as-nobody" after bind and before listen
# (the file is root's, the peer credentials nobody's).
FORGER = """
import json, os, socket, sys
from netatopd.protocol import REPLY, REPLY_MAGIC, REQUEST

path, how = sys.argv[1], sys.argv[2]

def drop():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if how == "bind-as-nobody":
    drop()
sock.bind(path)
if how == "listen-as-nobody":
    drop()
sock.listen(8)
print("ready", flush=True)
while True:
    conn, _ = sock.accept()
    request = conn.recv(REQUEST.size)
    if len(request) == REQUEST.size:
        _, command, _, _ = REQUEST.unpack(request)
        payload = json.dumps({"tcp_sent": 999999}).encode()
        conn.sendall(REPLY.pack(REPLY_MAGIC, command, 0, len(payload)) + payload)
    conn.close()
"""


@pytest.fixture
def world_writable_dir() -> Iterator[Path]:
    """A run directory in /tmp that anybody may write in (the attack's setting)."""
    root_or_skip()
    path = Path(tempfile.mkdtemp(prefix="netatop-run-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_forger(path: Path, how: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", FORGER, str(path), how],
        cwd="/",
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        _, err = child.communicate(timeout=10)
        raise AssertionError(f"the forged daemon did not start: {err}")
    return child


@pytest.mark.parametrize("how", ["bind-as-nobody", "listen-as-nobody"])
def test_a_forged_control_socket_is_refused(world_writable_dir: Path, how: str) -> None:
    forger = start_forger(world_writable_dir / "control", how)
    try:
        owner = os.lstat(world_writable_dir / "control").st_uid
        assert owner == (NOBODY if how == "bind-as-nobody" else 0)
        with pytest.raises(PermissionError) as caught:
            with ControlClient(str(world_writable_dir), timeout_s=5) as client:
                client.status()  # forged figures: {"tcp_sent": 999999}
        assert caught.value.errno == errno.EPERM
        assert "65534" in str(caught.value.strerror) and "not trusting" in str(
            caught.value.strerror
        )
    finally:
        forger.kill()
        forger.wait(10)


def test_a_control_socket_of_root_is_believed(tmp_path: Path) -> None:
    root_or_skip()
    forger = start_forger(tmp_path / "control", "as-root")
    try:
        with ControlClient(str(tmp_path), timeout_s=5) as client:
            assert client.status() == {"tcp_sent": 999999}
    finally:
        forger.kill()
        forger.wait(10)


def test_a_full_run_directory_fails_at_creation_not_with_sigbus(small_tmpfs: Path) -> None:
    with open_directory(str(small_tmpfs / "run")) as run:
        with pytest.raises(RunDirError, match="no room for") as caught:
            run.create_file(".table.1.new", 0o600, size_bytes=15 << 20)
        assert caught.value.errno == errno.ENOSPC
        assert os.listdir(run.path) == []


def test_a_read_only_run_directory_is_a_sentence(small_tmpfs: Path) -> None:
    (small_tmpfs / "run").mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-o", "remount,ro", str(small_tmpfs)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with pytest.raises(RunDirError, match="not writable by netatopd"):
        open_directory(str(small_tmpfs / "run"))
