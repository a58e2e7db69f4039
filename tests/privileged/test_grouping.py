"""End to end: unit, container and --by on every runtime's cgroup layout (issue 14).

Processes are placed, before they exec, into cgroup v2 directories named like
the ones each runtime makes: Docker (``docker-<id>.scope`` and the cgroupfs
driver's ``/docker/<id>``), containerd (``cri-containerd-<id>.scope``), CRI-O
(``crio-<id>.scope``), Podman (``libpod-<id>.scope``), a Kubernetes pod slice
(``kubepods-besteffort-pod<uid>.slice``), a plain systemd service
(``x.service``) and a layout no rule names (grouped by its cgroup path).  Two processes in each send a known number of UDP
datagrams to a server in the test's namespace; the test waits until the
daemon counted them, then lets them exit.

Ground truth: the datagrams each process sent (payload + UDP4_OVERHEAD
bytes each), the unit and container its cgroup path names.  Checked on
``netatop exited --since``, the reports by-unit, by-container and
top-exited-groups (history), and ``netatop query --by container`` (the
shared table: running, then finished while in the exit list).  Every cgroup
directory made here is removed, also when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from netatopd.cgroups import NO_CONTAINER, NO_UNIT
from netatopd.ebpf.skbcount import find_cgroup2_root

from harness import REPO, UDP4_OVERHEAD, Actor, Daemon, wait_until

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpG"
FAST = ("--flush-interval-s", "0.2", "--gc-interval-s", "30")
PAYLOAD_BYTES = 91
WIRE_BYTES = PAYLOAD_BYTES + UDP4_OVERHEAD
PER_LAYOUT = 2  # processes in each cgroup
WAIT_S = 30.0
EXIT_LIST_S = 15.0  # how long a finished process stays in the exit list

# Prints who it is, then on "send" sends N datagrams, on "exit" exits.
# argv: address, port, N, tag.
PROGRAM = r"""
import json, os, socket, sys
cgroup = next((x[3:].strip() for x in open("/proc/self/cgroup") if x.startswith("0::")), "")
print(json.dumps({"pid": os.getpid(), "cgroup": cgroup}), flush=True)
sys.stdin.readline()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(b"g" * 91, (sys.argv[1], int(sys.argv[2])))
print(json.dumps({"sent": int(sys.argv[3])}), flush=True)
sys.stdin.readline()
os._exit(0)
"""


class Layout(NamedTuple):
    """A cgroup path under the test's slice, and what it must be shown as."""

    name: str
    path: str  # relative to the test's slice
    unit: str | None  # as stored (None: none)
    container: str | None
    unit_group: str  # netatop query --by unit, report by-unit ("": the cgroup path)
    container_group: str  # ("": the cgroup path)


def layouts() -> list[Layout]:
    docker, docker_fs, containerd, crio, podman = (secrets.token_hex(32) for _ in range(5))
    pod = str(uuid.uuid4())
    pod_slice = f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice"
    service = f"ntpG-x-{os.getpid()}.service"
    made = [
        ("docker", f"docker-{docker}.scope", "scope", f"docker:{docker}"),
        ("docker-cgroupfs", f"docker/{docker_fs}", None, f"docker:{docker_fs}"),
        ("containerd", f"cri-containerd-{containerd}.scope", "scope", f"containerd:{containerd}"),
        ("cri-o", f"crio-{crio}.scope", "scope", f"cri-o:{crio}"),
        ("podman", f"libpod-{podman}.scope", "scope", f"podman:{podman}"),
        ("kubepods", f"kubepods.slice/kubepods-besteffort.slice/{pod_slice}", None, f"pod:{pod}"),
        ("service", service, "service", None),
        # A layout no rule names: grouped by its cgroup path, never a guess.
        ("unknown", "lxc/ntpG-box", None, None),
    ]
    result = []
    for name, path, kind, container in made:
        unit = path.rsplit("/", 1)[-1] if kind else None
        result.append(
            Layout(
                name,
                path,
                unit,
                container,
                unit or (NO_UNIT if container else ""),
                container or (NO_CONTAINER if unit else ""),
            )
        )
    return result


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns(NETNS_PREFIX)


@pytest.fixture
def daemon(ns: Any, tmp_path: Path) -> Iterator[Daemon]:
    # Identity at exec comes from the proc connector, answered in the initial namespace.
    d = Daemon(ns, tmp_path / "run", *FAST, "--process-events-netns", f"/proc/{os.getpid()}/ns/net")
    try:
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.logs()


@pytest.fixture
def slice_dir() -> Iterator[Path]:
    """The test's own cgroup v2 directory; it and everything made under it removed after."""
    root = find_cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy mounted: these tests need one"
    top = Path(root) / f"ntpG-{os.getpid()}.slice"
    top.mkdir()
    try:
        yield top
    finally:
        deadline = time.monotonic() + 10
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            while os.path.isdir(dirpath):
                try:
                    os.rmdir(dirpath)
                except OSError:  # EBUSY until the last process in it is reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        assert not top.exists()


class Child(NamedTuple):
    layout: Layout
    proc: subprocess.Popen[str]
    pid: int
    cgroup: str
    datagrams: int


def netatop(d: Daemon, *args: str) -> Any:
    """netatop's JSON answer (the command must succeed)."""
    run_dir = () if args[0] == "report" else ("--run-dir", str(d.run_dir))
    result = subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args, *run_dir],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def db(d: Daemon) -> str:
    return str(d.run_dir.parent / f"{d.run_dir.name}.db")


def sent_packets(d: Daemon, pid: int) -> int:
    try:
        return d.counters(pid)["udpsndpacks"]
    except ProcessLookupError:
        return 0


def tell(child: Child, line: str) -> None:
    assert child.proc.stdin is not None
    child.proc.stdin.write(line + "\n")
    child.proc.stdin.flush()


def start_children(ns: Any, top: Path, port: int, where: list[Layout]) -> list[Child]:
    """PER_LAYOUT programs in each layout's cgroup (moved there before they exec)."""
    enter = ("sh", "-c", 'read go && exec "$@"', "sh")
    children = []
    for index, layout in enumerate(where):
        directory = top / layout.path
        directory.mkdir(parents=True, exist_ok=True)
        for member in range(PER_LAYOUT):
            datagrams = 1 + index + member * 10  # every process its own count
            argv = [*ns.exec_prefix, *enter, sys.executable, "-c", PROGRAM, "127.0.0.1"]
            proc = subprocess.Popen(
                [*argv, str(port), str(datagrams), f"ntpG-{layout.name}-{member}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            (directory / "cgroup.procs").write_text(f"{proc.pid}\n")
            child = Child(layout, proc, proc.pid, "", datagrams)
            tell(child, "go")
            assert proc.stdout is not None
            me = json.loads(proc.stdout.readline())
            assert me["pid"] == proc.pid, me
            assert me["cgroup"].endswith("/" + layout.path), me
            children.append(child._replace(cgroup=me["cgroup"]))
    return children


def send_all(d: Daemon, children: list[Child]) -> None:
    """Each child sends its datagrams; returns once the daemon counted every one."""
    for child in children:
        tell(child, "send")
        assert child.proc.stdout is not None
        assert json.loads(child.proc.stdout.readline()) == {"sent": child.datagrams}
    for child in children:
        wait_until(
            f"{child.layout.name} {child.pid}'s datagrams counted",
            lambda c=child: sent_packets(d, c.pid) == c.datagrams,
            timeout_s=WAIT_S,
        )


def exit_all(children: list[Child]) -> None:
    for child in children:
        tell(child, "exit")
    for child in children:
        assert child.proc.wait(timeout=WAIT_S) == 0


def stop_children(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def expected_groups(children: list[Child], key: str) -> dict[str, tuple[int, int]]:
    """group -> (processes, datagrams sent) over the children."""
    result: dict[str, tuple[int, int]] = {}
    for child in children:
        group = getattr(child.layout, key) or child.cgroup
        processes, datagrams = result.get(group, (0, 0))
        result[group] = (processes + 1, datagrams + child.datagrams)
    return result


def run(ns: Any, d: Daemon, top: Path) -> tuple[list[Child], float, dict[str, Any]]:
    """The scenario: start, send, exit.  Returns the children, the start time, and what
    netatop query --by container said while they ran and once they had exited."""
    where = layouts()
    total = sum(1 + i + m * 10 for i in range(len(where)) for m in range(PER_LAYOUT))
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=total, reply_bytes=-1)
    started = time.time() - 1.0
    children: list[Child] = []
    answers: dict[str, Any] = {}
    try:
        children = start_children(ns, top, server.port, where)
        send_all(d, children)
        assert server.read()["received"] == total
        answers["running"] = netatop(d, "query", "--by", "container", "--json")
        exited_at = time.monotonic()
        exit_all(children)
        pids = {c.pid for c in children}
        wait_until(
            "every child in the exit list",
            lambda: pids <= {r["pid"] for r in netatop(d, "exited", "--json")},
            timeout_s=WAIT_S,
        )
        assert time.monotonic() - exited_at < EXIT_LIST_S, "too slow: left the exit list"
        # query reads the shared table, published every 250 ms: wait for the publish
        # that no longer shows the children running.
        ours = set(expected_groups(children, "container_group")) - {NO_CONTAINER}
        answers["finished"] = wait_until(
            "the table to show every child finished",
            lambda: (
                (found := netatop(d, "query", "--by", "container", "--json"))
                and all(g["running"] == 0 for g in found if g["container"] in ours)
                and found
            ),
            timeout_s=WAIT_S,
        )
    finally:
        stop_children(children)
        server.finish()
    return children, started, answers


def by_key(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    result = {row[key]: row for row in rows}
    assert len(result) == len(rows), f"a {key} twice: {rows}"
    return result


def history_rows(d: Daemon, since: str, pids: set[int]) -> dict[int, dict[str, Any]] | None:
    rows = netatop(d, "exited", "--since", since, "--json", "--db", db(d))
    found = {row["pid"]: row for row in rows if row["pid"] in pids}
    return found if len(found) == len(pids) else None


def test_history_and_reports_name_every_layout(ns: Any, daemon: Daemon, slice_dir: Path) -> None:
    children, started, _ = run(ns, daemon, slice_dir)
    pids = {c.pid for c in children}
    since = datetime.fromtimestamp(started).isoformat(timespec="seconds")  # local time
    # exited --since (history): each process with its unit, container and cgroup.
    rows = wait_until(
        "every child in the history",
        lambda: history_rows(daemon, since, pids),
        timeout_s=WAIT_S,
    )
    for child in children:
        row = rows[child.pid]
        assert (row["unit"], row["container"], row["cgroup"]) == (
            child.layout.unit,
            child.layout.container,
            child.cgroup,
        ), (child.layout.name, row)
        assert (row["udpsndpacks"], row["udpsndbytes"]) == (
            child.datagrams,
            child.datagrams * WIRE_BYTES,
        ), (child.layout.name, row)
    window = ("--since", since, "--db", db(daemon), "--format", "json")
    # by-unit and by-container (samples): exact sums for the groups only the children
    # send in (the server in the namespace only receives).
    for report, key in (("by-unit", "unit_group"), ("by-container", "container_group")):
        column = key.removesuffix("_group")
        expected = expected_groups(children, key)
        found = wait_until(
            f"report {report} to hold every datagram",
            lambda r=report, c=column, e=expected: (
                (g := by_key(netatop(daemon, "report", r, *window), c))
                and all(k in g and g[k]["sndpacks"] == n for k, (_, n) in e.items())
                and g
            ),
            timeout_s=WAIT_S,
        )
        for group, (processes, datagrams) in expected.items():
            assert found[group]["sndpacks"] == datagrams, (report, group, found[group])
            assert found[group]["sndbytes"] == datagrams * WIRE_BYTES, (report, group)
            if group not in (NO_UNIT, NO_CONTAINER):  # the server may share those
                assert found[group]["processes"] == processes, (report, group, found[group])
                assert found[group]["rcvpacks"] == 0, (report, group, found[group])
    # top-exited-groups --by container (final counters of the finished processes).
    groups = by_key(
        netatop(daemon, "report", "top-exited-groups", "--by", "container", *window), "key"
    )
    for group, (processes, datagrams) in expected_groups(children, "container_group").items():
        assert groups[group]["sndpacks"] == datagrams, (group, groups[group])
        if group != NO_CONTAINER:
            assert groups[group]["processes"] == processes, (group, groups[group])


def test_query_by_container_sums_running_and_finished_processes(
    ns: Any, daemon: Daemon, slice_dir: Path
) -> None:
    """Needs the shared table to carry each process's cgroup, unit and container."""
    children, _, answers = run(ns, daemon, slice_dir)
    expected = expected_groups(children, "container_group")
    for moment, running in (("running", PER_LAYOUT), ("finished", 0)):
        groups = by_key(answers[moment], "container")
        for group, (processes, datagrams) in expected.items():
            assert group in groups, (moment, group, answers[moment])
            # Only the children send (the server in the namespace only receives).
            assert groups[group]["udpsndpacks"] == datagrams, (moment, group, groups[group])
            assert groups[group]["udpsndbytes"] == datagrams * WIRE_BYTES, (moment, group)
            if group == NO_CONTAINER:
                continue  # the server may be counted there too
            assert (groups[group]["processes"], groups[group]["running"]) == (
                processes,
                running,
            ), (moment, group, groups[group])
