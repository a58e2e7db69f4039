"""End to end: who a process is, from the proc connector (issue 14).

netatopd runs in a test network namespace and subscribes to the proc
connector in the initial one (engine.open_process_events).  Processes made
here are separate programs (fork + exec, like curl): each reports its own
identity (pid, btime by atop's formula, comm, command line, uid, cgroup) read
from /proc while it ran, sends one UDP datagram to a server in the namespace
and exits within a few milliseconds, before the daemon has attributed its
packet.  Their history rows must carry that identity: the real btime, the
uid and the command line (not the kernel's 15-character name with uid
unknown); a process exits and its task is finished with the kernel's exit
time, between the moment the test told it to exit and the moment its parent
saw it gone; a process started in a cgroup named like a Docker container's
carries that container.

Owners of processes that are gone come from the eBPF helper's records
(--ownership auto): without it the test is skipped.  The history is read
with a separate apsw connection (read-only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from harness import (
    REPO,
    UDP4_OVERHEAD,
    Actor,
    Daemon,
    docker_scope_dir,
    exit_timed,
    kill_if_running,
    wait_until,
)

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpI"
WAIT_S = 30.0
FAST = ("--flush-interval-s", "0.2", "--gc-interval-s", "30")
CHILD_UID = 65534
PAYLOAD_BYTES = 77
CURLS = 5

# A curl-like program: prints who it is (from /proc/self), sends one datagram, exits.
# argv: address, port, tag (the tag makes each command line its own).
CURL = r"""
import json, os, socket, sys
stat = open("/proc/self/stat", "rb").read()
start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
boot_s = next(int(x.split()[1]) for x in open("/proc/stat", "rb") if x.startswith(b"btime "))
hz = os.sysconf("SC_CLK_TCK")
raw = open("/proc/self/cmdline", "rb").read()
cgroup = next(
    (x[3:].strip() for x in open("/proc/self/cgroup") if x.startswith("0::")), ""
)
print(json.dumps({
    "pid": os.getpid(),
    "btime": (start_ticks + boot_s * hz) // hz,
    "comm": open("/proc/self/comm").read().strip(),
    "cmdline": raw.rstrip(b"\0").replace(b"\0", b" ").decode(),
    "uid": os.getuid(),
    "cgroup": cgroup,
}), flush=True)
if len(sys.argv) > 4:
    sys.stdin.readline()  # wait to be told
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(b"c" * 77, (sys.argv[1], int(sys.argv[2])))
if len(sys.argv) > 4:
    sys.stdin.readline()
os._exit(0)
"""


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns(NETNS_PREFIX)


@pytest.fixture
def daemon(ns: Any, tmp_path: Path) -> Iterator[Daemon]:
    # The proc connector answers in the test's own namespace (the initial one here):
    # the daemon, inside ns, opens it there.
    d = Daemon(ns, tmp_path / "run", *FAST, "--process-events-netns", f"/proc/{os.getpid()}/ns/net")
    try:
        status = d.status()
        if status["ownership"] != "kernel":
            pytest.skip(
                f"PRIVILEGED TEST SKIPPED: eBPF helper not loaded: {status['ownership_note']}"
            )
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.logs()


def db_path(d: Daemon) -> Path:
    return d.run_dir.parent / f"{d.run_dir.name}.db"


def exited_rows(d: Daemon, pids: set[int]) -> dict[int, dict[str, Any]]:
    """The history's exited rows of these pids, by tgid (read-only connection)."""
    path = db_path(d)
    if not path.exists():
        return {}
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = [r[1] for r in conn.execute("PRAGMA table_info(exited)")]
        rows = [dict(zip(names, r, strict=True)) for r in conn.execute("SELECT * FROM exited")]
    finally:
        conn.close()
    found: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["tgid"] in pids:
            assert row["tgid"] not in found, f"two rows for pid {row['tgid']}"
            found[row["tgid"]] = row
    return found


def curl(
    ns: Any,
    port: int,
    tag: str,
    *,
    uid: int = -1,
    prefix: tuple[str, ...] = (),
    stdin: bool = False,
) -> Any:
    """Start the curl-like program in the namespace (as uid if >= 0, after prefix)."""
    as_user = ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups") if uid >= 0 else ()
    argv = [*ns.exec_prefix, *prefix, *as_user, sys.executable, "-c", CURL, "127.0.0.1", str(port)]
    return subprocess.Popen(
        [*argv, tag],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def sent_packets(d: Daemon, pid: int) -> int:
    """UDP packets the daemon counts for pid so far (0 while it has no task)."""
    try:
        return d.counters(pid)["udpsndpacks"]
    except ProcessLookupError:
        return 0


def netatop(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args, "--run-dir", str(d.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_short_lived_programs_keep_their_identity(ns: Any, daemon: Daemon) -> None:
    """5 programs living a few ms: each row has its real btime, uid and command line."""
    status = daemon.status()
    assert status["process_events"] == "proc connector", status
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=CURLS, reply_bytes=-1)
    children: list[dict[str, Any]] = []
    try:
        for index in range(CURLS):
            proc = curl(ns, server.port, f"ntpI-curl-{index}", uid=CHILD_UID)
            out, _ = proc.communicate(timeout=WAIT_S)
            assert proc.returncode == 0
            children.append(json.loads(out))
        assert server.read()["received"] == CURLS
    finally:
        server.finish()
    pids = {child["pid"] for child in children}
    rows = wait_until(
        "every program in the history",
        lambda: (r := exited_rows(daemon, pids)) and len(r) == CURLS and r,
    )
    for child in children:
        row = rows[child["pid"]]
        assert row["btime"] == child["btime"] != 0, (row, child)
        assert row["uid"] == CHILD_UID == child["uid"], row
        assert row["cmdline"] == child["cmdline"], row
        assert row["cmdline"].endswith(f"ntpI-curl-{children.index(child)}"), row
        assert row["command"] == child["comm"], row
        assert row["cgroup"] == child["cgroup"], row
        assert (row["udpsndpacks"], row["udpsndbytes"]) == (1, PAYLOAD_BYTES + UDP4_OVERHEAD)
        assert row["first_activity"] <= row["last_activity"] <= row["exit_time"], row
    assert daemon.status()["process_events_lost"] == 0


def test_exit_is_known_at_once_with_the_kernels_time(ns: Any, daemon: Daemon) -> None:
    """netatop exited lists a process right after it exits; the row's exit time is the real one.

    Ground truth: the exit happened after the test told the process to exit
    (before) and before its parent's wait returned (after); the sweep runs
    every 30 s here, and the reaping between sweeps would give a later time.
    """
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=1, reply_bytes=-1)
    argv = [*ns.exec_prefix, sys.executable, "-c", CURL, "127.0.0.1", str(server.port), "x", "y"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        me = json.loads(proc.stdout.readline())
        proc.stdin.write("send\n")
        proc.stdin.flush()
        assert server.read()["received"] == 1
        wait_until("its datagram counted", lambda: sent_packets(daemon, me["pid"]) == 1)
        before, after = exit_timed(proc)
    finally:
        kill_if_running(proc)
        server.finish()
    listed = wait_until(
        "netatop exited to list it",
        lambda: (
            me["pid"] in [r["pid"] for r in json.loads(netatop(daemon, "exited", "--json").stdout)]
        ),
        timeout_s=1.0,
    )
    assert listed
    query = wait_until(
        "netatop query to say it finished",
        lambda: (
            (q := netatop(daemon, "query", "--json", str(me["pid"]))).returncode == 0
            and json.loads(q.stdout)[0]["kind"] == "exited"
            and q
        ),
        timeout_s=1.0,
    )
    assert json.loads(query.stdout)[0]["udpsndpacks"] == 1
    row = wait_until("its history row", lambda: exited_rows(daemon, {me["pid"]}))[me["pid"]]
    assert before - 0.005 <= row["exit_time"] <= after + 0.005, (before, row["exit_time"], after)
    assert row["btime"] == me["btime"]


@pytest.fixture
def docker_cgroup() -> Iterator[tuple[Path, str]]:
    """A cgroup v2 directory named like a Docker container's scope, removed afterwards."""
    with docker_scope_dir("ntpI") as found:
        yield found


def test_a_process_in_a_docker_scope_carries_its_container(
    ns: Any, daemon: Daemon, docker_cgroup: tuple[Path, str]
) -> None:
    """A program started in docker-<id>.scope: its row says unit and container docker:<id>."""
    scope, container_id = docker_cgroup
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=1, reply_bytes=-1)
    # The shell waits until the test moved it into the scope (/sys is remounted in
    # the namespace: the test writes cgroup.procs from outside), then execs the program.
    enter = ("sh", "-c", 'read go && exec "$@"', "sh")
    try:
        proc = curl(ns, server.port, "ntpI-docker", prefix=enter, stdin=True)
        (scope / "cgroup.procs").write_text(f"{proc.pid}\n")
        out, _ = proc.communicate("go\n", timeout=WAIT_S)
        assert proc.returncode == 0
        assert server.read()["received"] == 1
    finally:
        server.finish()
    me = json.loads(out)
    assert me["cgroup"].endswith(f"/docker-{container_id}.scope"), me
    row = wait_until("its history row", lambda: exited_rows(daemon, {me["pid"]}))[me["pid"]]
    assert row["container"] == f"docker:{container_id}", row
    assert row["unit"] == f"docker-{container_id}.scope", row
    assert row["cgroup"] == me["cgroup"], row
    assert row["btime"] == me["btime"] and row["cmdline"] == me["cmdline"], row
