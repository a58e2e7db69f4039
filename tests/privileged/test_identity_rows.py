"""End to end: who a process is, on every row netatop prints from the live daemon (issue 14).

A program runs as uid 65534 in a cgroup named like a Docker container's scope
(docker-<64 hex>.scope under the cgroup v2 root), reports its own identity
(pid, btime, command line, uid, cgroup) read from /proc, sends DATAGRAMS UDP
datagrams of PAYLOAD_BYTES to a server in the test's network namespace and
waits to be told to exit.  While it runs, `netatop query PID --json` (read
from the shared table) must give its uid, user, command line, unit and
container and its exact counters (datagrams x size on the wire); the human
table, piped, its user and its whole command line.  After it exits, `netatop
exited --json` (the daemon's live exit list, over the control socket),
`netatop query PID --json` (the table's exit-list row) and `netatop wait-exit
--json` must give the same.  The daemon learns of forks and execs from the
proc connector in the initial namespace (--process-events-netns).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

NETNS_PREFIX = "ntpR"
WAIT_S = 30.0
CHILD_UID = 65534
DATAGRAMS = 3
PAYLOAD_BYTES = 200

# Prints who it is (from /proc/self), then on each line of stdin: sends DATAGRAMS
# datagrams, then exits.  argv: address, port, datagrams, bytes, tag (its own command line).
PROGRAM = r"""
import json, os, socket, sys
stat = open("/proc/self/stat", "rb").read()
start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
boot_s = next(int(x.split()[1]) for x in open("/proc/stat", "rb") if x.startswith(b"btime "))
hz = os.sysconf("SC_CLK_TCK")
raw = open("/proc/self/cmdline", "rb").read()
cgroup = next((x[3:].strip() for x in open("/proc/self/cgroup") if x.startswith("0::")), "")
print(json.dumps({
    "pid": os.getpid(),
    "btime": (start_ticks + boot_s * hz) // hz,
    "comm": open("/proc/self/comm").read().strip(),
    "cmdline": raw.rstrip(b"\0").replace(b"\0", b" ").decode(),
    "uid": os.getuid(),
    "cgroup": cgroup,
}), flush=True)
sys.stdin.readline()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(b"r" * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
print("sent", flush=True)
sys.stdin.readline()
os._exit(0)
"""


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns(NETNS_PREFIX)


@pytest.fixture
def daemon(ns: Any, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(
        ns,
        tmp_path / "run",
        "--flush-interval-s",
        "0.2",
        "--process-events-netns",
        f"/proc/{os.getpid()}/ns/net",
    )
    try:
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.logs()


@pytest.fixture
def docker_scope() -> Iterator[tuple[Path, str]]:
    """A cgroup v2 directory named like a Docker container's scope, removed afterwards."""
    with docker_scope_dir("ntpR") as found:
        yield found


def netatop(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The netatop command, its output piped (not a terminal), no COLUMNS."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args, "--run-dir", str(d.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )


def query_row(d: Daemon, pid: int) -> dict[str, Any] | None:
    done = netatop(d, "query", "--json", str(pid))
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


def test_identity_on_query_exited_and_wait_exit(
    ns: Any, daemon: Daemon, docker_scope: tuple[Path, str]
) -> None:
    scope, container_id = docker_scope
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=DATAGRAMS, reply_bytes=-1)
    # The shell waits until the test moved it into the scope (from outside: /sys is
    # remounted in the namespace), then becomes the program, as uid CHILD_UID.
    argv = [
        *ns.exec_prefix,
        "sh",
        "-c",
        'read go && exec "$@"',
        "sh",
        "setpriv",
        f"--reuid={CHILD_UID}",
        f"--regid={CHILD_UID}",
        "--clear-groups",
        sys.executable,
        "-c",
        PROGRAM,
        "127.0.0.1",
        str(server.port),
        str(DATAGRAMS),
        str(PAYLOAD_BYTES),
        "ntpR-identity-rows --a-long-argument-so-the-line-is-wide " + "x" * 120,
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        (scope / "cgroup.procs").write_text(f"{proc.pid}\n")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        me = json.loads(proc.stdout.readline())
        proc.stdin.write("send\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "sent\n"
        assert server.read()["received"] == DATAGRAMS
        try:
            user = pwd.getpwuid(CHILD_UID).pw_name
        except KeyError:
            user = str(CHILD_UID)
        identity = {
            "uid": CHILD_UID,
            "user": user,
            "cmdline": me["cmdline"],
            "unit": f"docker-{container_id}.scope",
            "container": f"docker:{container_id}",
            "cgroup": me["cgroup"],
        }
        counters = {
            "udpsndpacks": DATAGRAMS,
            "udpsndbytes": DATAGRAMS * (PAYLOAD_BYTES + UDP4_OVERHEAD),
            "udprcvpacks": 0,
            "tcpsndpacks": 0,
        }
        assert me["uid"] == CHILD_UID and me["cgroup"].endswith(f"/docker-{container_id}.scope")
        assert me["cmdline"].endswith("x" * 120)

        # Running: from the shared table.
        running = wait_until(
            "its datagrams in the table",
            lambda: (r := query_row(daemon, me["pid"])) and r["udpsndpacks"] == DATAGRAMS and r,
        )
        assert running["kind"] == "process" and running["btime"] == me["btime"], running
        assert {k: running[k] for k in identity} == identity, running
        assert {k: running[k] for k in counters} == counters, running
        table = netatop(daemon, "query", str(me["pid"]))
        header, line = table.stdout.splitlines()
        assert header.split()[:3] == ["PID", "USER", "COMMAND"] and header.endswith(" CMDLINE")
        assert line.split()[:2] == [str(me["pid"]), user]
        # piped: the whole line, nothing cut; the newlines of `python -c` shown as '?'
        shown = me["cmdline"].replace("\n", "?")
        assert "\n" in me["cmdline"] and line.endswith(" " + shown)

        before, after = exit_timed(proc)
    finally:
        kill_if_running(proc)
        server.finish()

    # Finished: the live exit list over the control socket (not the history).
    def listed() -> dict[str, Any] | None:
        rows = json.loads(netatop(daemon, "exited", "--json").stdout)
        return next((r for r in rows if r["pid"] == me["pid"]), None)

    finished = wait_until("netatop exited to list it", listed, timeout_s=2.0)
    assert finished["kind"] == "exited" and finished["btime"] == me["btime"], finished
    assert {k: finished[k] for k in identity} == identity, finished
    assert {k: finished[k] for k in counters} == counters, finished
    assert before - 0.05 <= finished["exit_time"] <= after + 0.05, (before, finished, after)
    text = netatop(daemon, "exited", "--pid", str(me["pid"])).stdout.splitlines()
    assert text[0].split()[:3] == ["PID", "USER", "EXITED"]
    assert text[1].split()[:2] == [str(me["pid"]), user]
    assert text[1].endswith(" " + shown)  # piped: never cut at 80 columns
    assert len(text[1]) > 200

    # query PID of the finished process: the table's exit-list row, identity included.
    gone = wait_until(
        "query to say it finished",
        lambda: (r := query_row(daemon, me["pid"])) and r["kind"] == "exited" and r,
        timeout_s=2.0,
    )
    assert {k: gone[k] for k in (*identity, *counters)} == {**identity, **counters}, gone

    # wait-exit takes it off the exit list (GETCNT_EXIT) with the same fields.
    taken = json.loads(netatop(daemon, "wait-exit", "--json", "--count", "1").stdout)
    assert taken["pid"] == me["pid"], taken
    assert {k: taken[k] for k in (*identity, *counters)} == {**identity, **counters}, taken
    assert taken["exit_time"] == finished["exit_time"]
