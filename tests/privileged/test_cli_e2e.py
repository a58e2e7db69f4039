"""End to end: the netatop command against netatopd in a namespace with known traffic.

Ground truth: a UDP client sends 40 datagrams of 100 bytes to a server that
answers each with 300 bytes over 127.0.0.1 in a namespace the test makes; each
datagram costs its payload + 20 (IPv4) + 8 (UDP) + 14 (link header) + 4 (CRC)
bytes on the wire.  The CLI runs as a separate process (python -m
netatopd.cli), as a user would run it; the control socket's GETCNT_TGID is the
reference the shared table must equal after `netatop sync` and one publish.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netatopd.cli.topframe import TOP_FINISHED_KEEP_S
from netatopd.table import TableReader, table_path

from harness import REPO, UDP4_OVERHEAD, Actor, Daemon

pytestmark = pytest.mark.privileged

DATAGRAMS = 40
REQUEST_BYTES = 100
REPLY_BYTES = 300
PUBLISH_WAIT_S = 10.0
# Counters of the client and the server, from the ground truth above.
CLIENT = {
    "tcpsndpacks": 0,
    "tcpsndbytes": 0,
    "tcprcvpacks": 0,
    "tcprcvbytes": 0,
    "udpsndpacks": DATAGRAMS,
    "udpsndbytes": DATAGRAMS * (REQUEST_BYTES + UDP4_OVERHEAD),  # 5840
    "udprcvpacks": DATAGRAMS,
    "udprcvbytes": DATAGRAMS * (REPLY_BYTES + UDP4_OVERHEAD),  # 13840
}
SERVER = {
    **CLIENT,
    "udpsndbytes": CLIENT["udprcvbytes"],
    "udprcvbytes": CLIENT["udpsndbytes"],
}


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns("ntpH")


@pytest.fixture
def daemon(ns: Any, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(ns, tmp_path / "run")
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, f"netatopd stopped with {code}:\n{d.logs()}"


@pytest.fixture
def traffic(ns: Any, daemon: Daemon) -> Iterator[tuple[Actor, Actor]]:
    """The known exchange; both actors stay alive until the test ends."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=DATAGRAMS, reply_bytes=REPLY_BYTES)
    client = Actor(
        ns,
        "udp_client",
        addr="127.0.0.1",
        port=server.port,
        count=DATAGRAMS,
        size=REQUEST_BYTES,
        expect_reply=True,
    )
    try:
        assert client.read()["sent"] == DATAGRAMS
        assert server.read()["received"] == DATAGRAMS
        yield server, client
    finally:
        server.finish()
        client.finish()


def netatop(
    run_dir: Path, *args: str, user: int | None = None, columns: int = 80
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; user: another uid (and its group, no other group)."""
    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user, "group": user, "extra_groups": []}
    return subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "COLUMNS": str(columns)},
        **as_user,
    )


def sync_and_wait_for_a_publish(run_dir: Path) -> None:
    """`netatop sync`, then wait until a publish begun after it has finished."""
    done = netatop(run_dir, "sync")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    with TableReader(table_path(str(run_dir))) as reader:
        after_sync = reader.snapshot().generation
        deadline = time.monotonic() + PUBLISH_WAIT_S
        while reader.snapshot().generation < after_sync + 2:
            assert time.monotonic() < deadline, "no publish within 10 s"
            time.sleep(0.02)


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_query_json_equals_the_control_socket(daemon: Daemon, traffic: tuple[Actor, Actor]) -> None:
    server, client = traffic
    sync_and_wait_for_a_publish(daemon.run_dir)
    done = netatop(daemon.run_dir, "query", "--json", str(client.pid), str(server.pid))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["pid"] for row in rows] == [client.pid, server.pid]
    for row, actor, expected in ((rows[0], client, CLIENT), (rows[1], server, SERVER)):
        counters = {name: row[name] for name in CLIENT}
        assert counters == expected
        assert counters == daemon.counters(actor.pid)  # the control socket's GETCNT_TGID
        with daemon.client() as control:
            record = control.getcnt_tgid(actor.pid)
        assert (row["tgid"], row["kind"], row["btime"], row["command"]) == (
            actor.pid,
            "process",
            record.btime,
            record.command,
        )
        assert row["command"] == comm(actor.pid)


def test_query_human_units_and_unknown_pid(daemon: Daemon, traffic: tuple[Actor, Actor]) -> None:
    server, client = traffic
    sync_and_wait_for_a_publish(daemon.run_dir)
    unknown = 4194304 + 1  # above any pid_max: never a process
    done = netatop(daemon.run_dir, "query", str(client.pid), str(unknown), columns=120)
    assert done.returncode == 1
    assert done.stderr == (
        f"netatop: process {unknown} is not known to netatopd (no traffic seen, or it finished "
        f"and left the exit list: netatop exited --pid {unknown} --since 1d looks in the history)\n"
    )
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "PID", "USER", "COMMAND", "TCPSND", "TCPSNDB", "TCPRCV", "TCPRCVB",
        "UDPSND", "UDPSNDB", "UDPRCV", "UDPRCVB", "CMDLINE",
    ]  # fmt: skip
    # 5840 bytes = 5.70 KiB sent, 13840 bytes = 13.5 KiB received; then the command line
    assert lines[1].split()[:15] == [
        str(client.pid), "root", comm(client.pid), "0", "0", "B", "0", "0", "B",
        "40", "5.70", "KiB", "40", "13.5", "KiB",
    ]  # fmt: skip
    assert all(len(line) <= 120 for line in lines)


def test_status_json_and_human(daemon: Daemon, traffic: tuple[Actor, Actor]) -> None:
    sync_and_wait_for_a_publish(daemon.run_dir)
    done = netatop(daemon.run_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    # 40 requests and 40 replies, each seen once on loopback: 80 sent and 80 received.
    expected = {
        "udp_sent": 80,
        "udp_received": 80,
        "udp_sent_unidentified": 0,
        "udp_received_unidentified": 0,
        "tcp_sent": 0,
        "tcp_received": 0,
        "tasks": 2,
        "tasks_overflow": 0,
        "flows_overflow": 0,
        "capture_dropped": 0,
    }
    assert {name: figures[name] for name in expected} == expected
    assert set(figures) == set(daemon.status())
    human = netatop(daemon.run_dir, "status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert re.fullmatch(r"  UDP +80 +80 +0 +0", lines[lines.index("") + 3]), human.stdout
    table_line = next(line for line in lines if line.startswith("Table "))
    fill = re.match(
        r"Table +(\d+) rows of \d+ \([0-9.]+%\), processes 2, threads (\d+),", table_line
    )
    assert fill is not None, table_line
    assert int(fill.group(1)) == 2 + int(fill.group(2))  # no process has finished


def test_query_threads(daemon: Daemon, traffic: tuple[Actor, Actor]) -> None:
    """With the eBPF helper the single thread of the client has all its counters; without, none."""
    server, client = traffic
    sync_and_wait_for_a_publish(daemon.run_dir)
    ownership = daemon.status()["ownership"]
    done = netatop(daemon.run_dir, "query", "--threads", "--json", str(client.pid))
    if ownership == "proc":
        assert done.returncode == 1
        assert json.loads(done.stdout) == []
        assert f"netatop: no thread rows for {client.pid}" in done.stderr.splitlines()
        return
    assert done.returncode == 0, (ownership, done.stderr)
    rows = json.loads(done.stdout)
    assert [(r["pid"], r["tgid"], r["kind"]) for r in rows] == [(client.pid, client.pid, "thread")]
    assert {name: rows[0][name] for name in CLIENT} == CLIENT


def test_top_in_a_terminal_shows_the_process_and_quits_on_q(
    daemon: Daemon, traffic: tuple[Actor, Actor]
) -> None:
    server, client = traffic
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    modes_before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "netatopd.cli", "top", "--interval", "0.5",
            "--run-dir", str(daemon.run_dir),
        ],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "", "LINES": ""},
    )  # fmt: skip
    seen = b""
    # PID, state R (running), USER ('-' until the table carries it), COMMAND
    wanted = re.compile(rb"\r\n *%d R +\S+ +%s " % (client.pid, comm(client.pid).encode()))
    try:
        deadline = time.monotonic() + 20
        while not wanted.search(seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"client not shown: {seen[-3000:]!r}"
            if select.select([master], [], [], remaining)[0]:
                seen += os.read(master, 65536)
        assert re.search(rb"\r\n *%d R +\S+ +%s " % (server.pid, comm(server.pid).encode()), seen)
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
        modes_after = termios.tcgetattr(slave)
        while select.select([master], [], [], 0.5)[0]:
            seen += os.read(master, 65536)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    assert seen.startswith(b"\x1b[?1049h")
    assert seen.endswith(b"\x1b[?25h\x1b[?1049l")  # cursor back, alternate screen left
    assert modes_after == modes_before


def test_top_marks_a_finished_process_then_lets_it_go(
    daemon: Daemon, traffic: tuple[Actor, Actor]
) -> None:
    """The client's row turns X (with its lifetime bytes, the ground truth), then leaves."""
    server, client = traffic
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "netatopd.cli", "top", "--interval", "0.5",
            "--run-dir", str(daemon.run_dir),
        ],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "", "LINES": "", "NO_COLOR": "1"},
    )  # fmt: skip
    command = comm(client.pid).encode()
    lifetime = b"19.2 KiB"  # 5840 + 13840 bytes sent and received
    running = re.compile(rb"\r\n *%d R +\S+ +%s .* %s\b" % (client.pid, command, lifetime))
    finished = re.compile(rb"\r\n *%d X +\S+ +%s .* %s\b" % (client.pid, command, lifetime))
    seen = b""

    def read(seconds: float) -> None:
        nonlocal seen
        if select.select([master], [], [], seconds)[0]:
            seen += os.read(master, 65536)

    try:
        deadline = time.monotonic() + 20
        while not running.search(seen):
            assert time.monotonic() < deadline, f"client not shown: {seen[-3000:]!r}"
            read(0.5)
        client.finish()
        while not finished.search(seen):
            assert time.monotonic() < deadline + 20, f"client not marked: {seen[-3000:]!r}"
            gc = netatop(daemon.run_dir, "gc")  # the sweep finds it gone now
            assert gc.returncode == 0, gc.stderr
            read(0.5)
        marked_at = len(seen)
        end = time.monotonic() + TOP_FINISHED_KEEP_S + 3.0  # frames come as the daemon publishes
        while time.monotonic() < end:
            read(end - time.monotonic())
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    frames = seen[marked_at:].split(b"\x1b[Hnetatop top ")
    last_marked = max(i for i, frame in enumerate(frames) if finished.search(frame))
    later = frames[last_marked + 1 :]
    assert len(later) >= 2, "no frames after the row left"
    assert not any(re.search(rb"\r\n *%d " % client.pid, frame) for frame in later)
    assert re.search(rb"\r\n *%d R " % server.pid, later[-1])  # the server still runs


def test_a_finished_process_by_pid(daemon: Daemon, traffic: tuple[Actor, Actor]) -> None:
    """query PID and exited --pid give a finished client's final counters (the ground truth)."""
    server, client = traffic
    sync_and_wait_for_a_publish(daemon.run_dir)
    client.finish()
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while True:
        gc = netatop(daemon.run_dir, "gc")
        assert gc.returncode == 0, gc.stderr
        done = netatop(daemon.run_dir, "query", "--json", str(client.pid))
        if done.returncode == 0 and json.loads(done.stdout)[0]["kind"] == "exited":
            break  # until then the table may still show it running
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.1)
    (row,) = json.loads(done.stdout)
    assert (row["pid"], row["kind"]) == (client.pid, "exited")
    assert {name: row[name] for name in CLIENT} == CLIENT
    assert "has finished: its final counters" in done.stderr
    listed = netatop(daemon.run_dir, "exited", "--json", "--pid", str(client.pid))
    assert listed.returncode == 0, listed.stderr
    assert [{name: r[name] for name in CLIENT} for r in json.loads(listed.stdout)] == [CLIENT]
    # The history has it too, once the writer has committed it.
    db = daemon.run_dir.parent / f"{daemon.run_dir.name}.db"
    while True:
        stored = netatop(
            daemon.run_dir, "exited", "--json", "--pid", str(client.pid), "--since", "1h ago",
            "--db", str(db),
        )  # fmt: skip
        if stored.returncode == 0:
            break
        assert time.monotonic() < deadline + PUBLISH_WAIT_S, stored.stderr
        time.sleep(0.2)
    (kept,) = json.loads(stored.stdout)
    assert {name: kept[name] for name in CLIENT} == CLIENT


NOBODY = 65534


@pytest.fixture
def open_run_dir() -> Iterator[Path]:
    """A run directory another user may reach (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="netatop-e2e-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base / "run"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_another_user_is_pointed_to_the_group_and_sees_the_table(
    ns: Any, open_run_dir: Path
) -> None:
    # The table is root's alone by default; --table-group shares it with nobody's
    # group (nogroup, gid 65534), the control socket stays root's.
    daemon = Daemon(ns, open_run_dir, "--table-group", str(NOBODY))
    try:
        server = Actor(ns, "udp_server", addr="127.0.0.1", count=DATAGRAMS, reply_bytes=REPLY_BYTES)
        client = Actor(
            ns, "udp_client", addr="127.0.0.1", port=server.port, count=DATAGRAMS,
            size=REQUEST_BYTES, expect_reply=True,
        )  # fmt: skip
        try:
            assert client.read()["sent"] == DATAGRAMS
            sync_and_wait_for_a_publish(open_run_dir)
            sentence = (
                f"netatop: no permission to use {open_run_dir}/control: run as root, or ask to "
                "be in the group netatopd gives its control socket (netatopd --control-group); "
                "netatop exited --since TIME works without it (it reads the history database, "
                "if that is readable)\n"
            )
            for command in (["sync"], ["gc"], ["exited"], ["wait-exit", "--count", "1"]):
                refused = netatop(open_run_dir, *command, user=NOBODY)
                assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", sentence)
            status = netatop(open_run_dir, "status", user=NOBODY)
            assert status.returncode == 0, status.stderr
            lines = status.stdout.splitlines()
            with TableReader(table_path(str(open_run_dir))) as reader:
                daemon_pid = reader.snapshot().daemon_pid
            assert lines[0].startswith(
                f"netatopd pid {daemon_pid}: figures from the shared table (updated "
            )
            assert "netatopd ?" not in status.stdout
            # 40 requests and 40 replies: 80 sent and 80 received, as root sees them
            assert any(re.fullmatch(r"  UDP +80 +80 +0 +0", line) for line in lines), lines
            query = netatop(open_run_dir, "query", "--json", str(client.pid), user=NOBODY)
            assert query.returncode == 0, query.stderr
            assert {name: json.loads(query.stdout)[0][name] for name in CLIENT} == CLIENT
        finally:
            client.finish()
            server.finish()
    finally:
        code = daemon.stop()
        assert code == 0, f"netatopd stopped with {code}:\n{daemon.logs()}"
