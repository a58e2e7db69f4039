"""Issue 15 items 8 and 9 against a real netatopd: a report over a window that ends
now agrees with query, an empty query says why, status stays short without --verbose.

Ground truth: a UDP client sends 40 datagrams of 100 bytes to a server that
answers each with 300 bytes over 127.0.0.1 in a namespace the test makes; each
datagram costs its payload + 20 (IPv4) + 8 (UDP) + 14 (link header) + 4 (CRC)
bytes on the wire.  The command runs as a separate process (python -m
netatopd.cli), as a user would run it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import apsw
import pytest

from harness import REPO, UDP4_OVERHEAD, Actor, Daemon, wait_until

pytestmark = pytest.mark.privileged

DATAGRAMS = 40
REQUEST_BYTES = 100
REPLY_BYTES = 300
# The client's figures as the reports sum them, from the ground truth above.
CLIENT = {
    "sndpacks": DATAGRAMS,
    "sndbytes": DATAGRAMS * (REQUEST_BYTES + UDP4_OVERHEAD),  # 5840
    "rcvpacks": DATAGRAMS,
    "rcvbytes": DATAGRAMS * (REPLY_BYTES + UDP4_OVERHEAD),  # 13840
}


def netatop(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80"},
    )


def client_samples(db: Path, pid: int) -> int:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        row = conn.execute("SELECT count(*) FROM samples WHERE tgid = ?", (pid,)).fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "sampling",
    [
        pytest.param((), id="no-sample-of-the-client-yet"),
        pytest.param(("--sample-interval-s", "1", "--flush-interval-s", "1"), id="sampled"),
    ],
)
def test_report_over_a_window_that_ends_now_agrees_with_query(
    make_netns: Any, tmp_path: Path, sampling: tuple[str, ...]
) -> None:
    ns = make_netns("ntpR")
    daemon = Daemon(ns, tmp_path / "run", *sampling)
    db = tmp_path / "run.db"
    try:
        server = Actor(ns, "udp_server", addr="127.0.0.1", count=DATAGRAMS, reply_bytes=REPLY_BYTES)
        client = Actor(
            ns, "udp_client", addr="127.0.0.1", port=server.port, count=DATAGRAMS,
            size=REQUEST_BYTES, expect_reply=True,
        )  # fmt: skip
        try:
            assert client.read()["sent"] == DATAGRAMS
            assert server.read()["received"] == DATAGRAMS
            daemon.sync()
            if sampling:  # the client's traffic is in committed samples before the report
                wait_until(
                    "a committed sample of the client", lambda: client_samples(db, client.pid)
                )
            else:  # the first sample was taken at the start, before any traffic
                assert client_samples(db, client.pid) == 0
            query = wait_until(
                "the table to show the client's last reply",
                lambda: [
                    row
                    for row in json.loads(
                        netatop(daemon.run_dir, "query", "--json", str(client.pid)).stdout
                    )
                    if row["udprcvpacks"] == DATAGRAMS
                ],
            )[0]
            done = netatop(
                daemon.run_dir, "report", "top-processes", "--since", "10m", "--pid",
                str(client.pid), "--db", str(db), "--format", "json",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            rows = json.loads(done.stdout)
            assert len(rows) == 1, rows
            figures = {name: rows[0][name] for name in CLIENT}
            assert figures == CLIENT
            assert figures == {
                "sndpacks": query["udpsndpacks"],
                "sndbytes": query["udpsndbytes"],
                "rcvpacks": query["udprcvpacks"],
                "rcvbytes": query["udprcvbytes"],
            }
            assert re.fullmatch(
                r"netatop: figures from the history's samples \((the last at [0-9:]{8}|none yet)\), and for "
                r"running processes their counts since, from netatopd's table at [0-9:]{8}\n",
                done.stderr,
            ), done.stderr
        finally:
            server.finish()
            client.finish()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.logs()


def test_an_empty_query_of_a_daemon_just_started_says_so(make_netns: Any, tmp_path: Path) -> None:
    ns = make_netns("ntpR")
    daemon = Daemon(ns, tmp_path / "run", "--no-history")
    try:
        done = netatop(daemon.run_dir, "query")
        uptime_s = daemon.status()["uptime_s"]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.logs()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["PID", "USER"] and len(done.stdout.splitlines()) == 1
    assert uptime_s < 10, "the daemon took too long to answer for this test"
    assert re.fullmatch(
        r"netatop: no process yet: netatopd started only \d+ s ago; a process appears once it "
        r"sends or receives TCP or UDP\n",
        done.stderr,
    ), done.stderr


def test_status_without_verbose_shows_no_internal_counters(make_netns: Any, tmp_path: Path) -> None:
    ns = make_netns("ntpR")
    daemon = Daemon(ns, tmp_path / "run")
    try:
        plain = netatop(daemon.run_dir, "status")
        verbose = netatop(daemon.run_dir, "status", "--verbose")
        figures = daemon.status()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.logs()
    assert plain.returncode == 0 and verbose.returncode == 0, plain.stderr + verbose.stderr
    lines = plain.stdout.splitlines()
    print("\n".join(lines))
    internal = [name for name in figures if name.startswith("ebpf_")]
    assert not any(line.startswith("eBPF") for line in lines)
    for name in internal:  # none of the helper's own figures, by label
        assert name.removeprefix("ebpf_").replace("_", " ") not in plain.stdout, name
    assert len(lines) <= 24, plain.stdout  # one screen
    if figures["ownership"] == "kernel":  # the helper runs: --verbose adds its figures
        assert any(line.startswith("eBPF") for line in verbose.stdout.splitlines())
        assert len(verbose.stdout.splitlines()) > len(lines)


def test_a_daemon_in_another_namespace_needs_its_own_atop_socket(
    make_netns: Any, tmp_path: Path
) -> None:
    """README, atop: a Unix socket path is not in a network namespace, so a second daemon
    in another namespace is refused on the same --atop-socket and starts with its own."""
    first_ns, second_ns = make_netns("ntpR"), make_netns("ntpS")
    shared = tmp_path / "atop.sock"
    first = Daemon(first_ns, tmp_path / "first", "--atop-socket", str(shared))
    try:
        with pytest.raises(AssertionError, match="exited with 5") as refused:
            Daemon(second_ns, tmp_path / "second", "--atop-socket", str(shared))
        assert "--atop-socket" in str(refused.value) and str(shared) in str(refused.value)
        assert not (tmp_path / "second").exists()  # its failed start left no run directory
        own = Daemon(second_ns, tmp_path / "third", "--atop-socket", str(tmp_path / "own.sock"))
        try:
            assert (tmp_path / "own.sock").exists() and shared.exists()
        finally:
            assert own.stop() == 0, own.logs()
    finally:
        code = first.stop()
    assert code == 0, first.logs()
