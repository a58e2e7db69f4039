"""End to end: user, unit, container and --by on every runtime's cgroup layout (issue 14).

Processes are placed, before they exec, into cgroup v2 directories named like
the ones each runtime makes: Docker (``docker-<id>.scope`` and the cgroupfs
driver's ``/docker/<id>``), containerd (``cri-containerd-<id>.scope``), CRI-O
(``crio-<id>.scope``), Podman (``libpod-<id>.scope``), a Kubernetes pod slice
(``kubepods-besteffort-pod<uid>.slice``), a plain systemd service
(``x.service``) and a layout no rule names (grouped by its cgroup path).  Two
processes in each, one a member of each of two test users (uids USER_IDS,
each with its own command name, MEMBER_COMMANDS), send a known number of UDP
datagrams to a server in the test's namespace; the test waits until the
daemon counted them, then lets them exit.

Ground truth: the datagrams each process sent (payload + UDP4_OVERHEAD bytes
each), and who it is: its pid, btime, command line, uid and cgroup path as it
read them from /proc itself, the unit and container its cgroup path names.

The scenario runs once (one daemon, one set of processes: the module's
fixture) and records every surface at two moments; the tests check what it
recorded.  While the processes run: `netatop query --json` and `--csv` (the
shared table), the table read directly (TableReader), `netatop query --by
command|user|unit|container --json`, `netatop top --json` (one frame, and
one --by container).  Once they exited: `netatop
exited --json` and `--csv` (the daemon's live exit list), the table's
exit-list rows, the same four --by answers, `netatop wait-exit --json`
(GETCNT_EXIT), then the history: `netatop exited --since`, the reports
by-command, by-user, by-unit, by-container and top-exited-groups --by each key.  Every cgroup directory made here is removed, also when
the scenario fails.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from netatopd.cgroups import NO_CONTAINER, NO_UNIT
from netatopd.ebpf.skbcount import find_cgroup2_root
from netatopd.protocol import COUNTER_NAMES
from netatopd.table import Snapshot, open_table
from netatopd.tasks import Kind

from conftest import Netns, root_or_skip
from harness import REPO, UDP4_OVERHEAD, Actor, Daemon, wait_until

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpG"
FAST = ("--flush-interval-s", "0.2", "--gc-interval-s", "30")
PAYLOAD_BYTES = 91
WIRE_BYTES = PAYLOAD_BYTES + UDP4_OVERHEAD
USER_IDS = (65534, 65533)  # member m of each layout runs as USER_IDS[m]
MEMBER_COMMANDS = ("ntpG-m0", "ntpG-m1")  # and is the command MEMBER_COMMANDS[m]
PER_LAYOUT = len(USER_IDS)  # processes in each cgroup
WAIT_S = 30.0
EXIT_LIST_S = 15.0  # how long a finished process stays in the exit list
BY_KEYS = ("command", "user", "unit", "container")

# Prints who it is (from /proc/self), then on "send" sends N datagrams, on "exit"
# exits.  argv: address, port, N, tag.
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
    "command": open("/proc/self/comm").read().strip(),
    "cmdline": raw.rstrip(b"\0").replace(b"\0", b" ").decode(),
    "uid": os.getuid(),
    "cgroup": cgroup,
}), flush=True)
sys.stdin.readline()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(b"g" * 91, (sys.argv[1], int(sys.argv[2])))
print(json.dumps({"sent": int(sys.argv[3])}), flush=True)
sys.stdin.readline()
os._exit(0)
"""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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


class Child(NamedTuple):
    layout: Layout
    member: int
    proc: subprocess.Popen[str]
    me: dict[str, Any]  # what it read of itself from /proc: pid, btime, command, ...
    datagrams: int

    @property
    def pid(self) -> int:
        return int(self.me["pid"])

    @property
    def cgroup(self) -> str:
        return str(self.me["cgroup"])

    def group(self, by: str, report: bool = False) -> str | int:
        """Its group under query --by (report: the reports' JSON, a user by uid)."""
        if by == "command":
            return MEMBER_COMMANDS[self.member]
        if by == "user":
            return USER_IDS[self.member] if report else user_name(USER_IDS[self.member])
        return getattr(self.layout, f"{by}_group") or self.cgroup

    def identity(self) -> dict[str, Any]:
        """The identity fields of its JSON rows (null: none)."""
        return {
            "btime": self.me["btime"],
            "command": self.me["command"],
            "uid": self.me["uid"],
            "user": user_name(self.me["uid"]),
            "cmdline": self.me["cmdline"],
            "unit": self.layout.unit,
            "container": self.layout.container,
            "cgroup": self.cgroup,
        }

    def counters(self) -> dict[str, int]:
        """Its counters: only datagrams sent (the server only receives)."""
        result = dict.fromkeys(COUNTER_NAMES, 0)
        result["udpsndpacks"] = self.datagrams
        result["udpsndbytes"] = self.datagrams * WIRE_BYTES
        return result


@dataclasses.dataclass
class Scenario:
    """What every surface said, recorded once; the tests check it."""

    daemon: Daemon
    children: list[Child]
    started: float  # epoch seconds, a second before the first child
    running: dict[str, Any] = dataclasses.field(default_factory=dict)  # surface -> answer
    finished: dict[str, Any] = dataclasses.field(default_factory=dict)
    taken: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # wait-exit
    history: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


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
    if "--csv" in args:
        return list(csv.DictReader(io.StringIO(result.stdout)))
    if "--json" in args and args[0] in ("wait-exit", "top"):
        return [json.loads(line) for line in result.stdout.splitlines()]
    return json.loads(result.stdout)


def db(d: Daemon) -> str:
    return str(d.run_dir.parent / f"{d.run_dir.name}.db")


def sent_packets(d: Daemon, pid: int) -> int:
    try:
        return d.counters(pid)["udpsndpacks"]
    except ProcessLookupError:
        return 0


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def start_children(ns: Netns, top: Path, bin_dir: Path, port: int) -> list[Child]:
    """PER_LAYOUT programs in each layout's cgroup (moved there before they exec)."""
    enter = ("sh", "-c", 'read go && exec "$@"', "sh")
    children = []
    for index, layout in enumerate(layouts()):
        directory = top / layout.path
        directory.mkdir(parents=True, exist_ok=True)
        for member, uid in enumerate(USER_IDS):
            datagrams = 1 + index + member * 10  # every process its own count
            become = ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")
            python = str(bin_dir / MEMBER_COMMANDS[member])
            tag = f"ntpG-{layout.name}-{member}"
            argv = [*ns.exec_prefix, *enter, *become, python, "-c", PROGRAM, "127.0.0.1"]
            proc = subprocess.Popen(
                [*argv, str(port), str(datagrams), tag],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=bin_dir,
            )
            try:
                (directory / "cgroup.procs").write_text(f"{proc.pid}\n")
                tell(proc, "go")
                assert proc.stdout is not None
                me = json.loads(proc.stdout.readline())
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            children.append(Child(layout, member, proc, me, datagrams))
            assert me["pid"] == proc.pid, me
            assert me["cgroup"].endswith("/" + layout.path), me
            assert (me["uid"], me["command"]) == (uid, MEMBER_COMMANDS[member]), me
            assert me["cmdline"].endswith(tag), me
    return children


def send_all(d: Daemon, children: list[Child]) -> None:
    """Each child sends its datagrams; returns once the daemon counted every one."""
    for child in children:
        tell(child.proc, "send")
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
        tell(child.proc, "exit")
    for child in children:
        assert child.proc.wait(timeout=WAIT_S) == 0


def stop_children(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def table_shows(d: Daemon, children: list[Child], kind: Kind) -> Snapshot | None:
    """A snapshot of the table (read directly) with every child as a row of kind with
    all its datagrams, and no child as a row of another process kind; else None."""
    with open_table(str(d.run_dir)) as reader:
        snapshot = reader.snapshot()
    pids = {c.pid for c in children}
    rows = [r for r in snapshot.rows if r.kind != Kind.THREAD and r.id in pids]
    sent = {r.id: r.counters[COUNTER_NAMES.index("udpsndpacks")] for r in rows if r.kind == kind}
    done = all(sent.get(c.pid) == c.datagrams for c in children)
    return snapshot if done and len(rows) == len(children) else None


def record(d: Daemon, into: dict[str, Any], snapshot: Snapshot) -> None:
    """What the table and query --by say at this moment."""
    into["table"] = snapshot
    for by in BY_KEYS:
        into[f"by {by}"] = netatop(d, "query", "--by", by, "--json")


def history_rows(d: Daemon, since: str, pids: set[int]) -> dict[int, dict[str, Any]] | None:
    rows = netatop(d, "exited", "--since", since, "--json", "--db", db(d))
    found = {row["pid"]: row for row in rows if row["pid"] in pids}
    return found if len(found) == len(pids) else None


def run(ns: Netns, d: Daemon, top: Path, bin_dir: Path) -> Scenario:
    """The scenario: start, send, record, exit, record."""
    total = sum(1 + i + m * 10 for i in range(len(layouts())) for m in range(PER_LAYOUT))
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=total, reply_bytes=-1)
    scenario = Scenario(d, [], time.time() - 1.0)
    children = scenario.children
    try:
        children.extend(start_children(ns, top, bin_dir, server.port))
        send_all(d, children)
        assert server.read()["received"] == total
        # query reads the shared table, published every 250 ms: wait for the publish
        # that holds every datagram.
        snapshot = wait_until(
            "the table to hold every child's datagrams",
            lambda: table_shows(d, children, Kind.PROCESS),
            timeout_s=WAIT_S,
        )
        scenario.running["query"] = netatop(d, "query", "--json")
        scenario.running["query csv"] = netatop(d, "query", "--csv")
        top = ("top", "--iterations", "1", "--interval", "0.3", "--json")
        scenario.running["top"] = netatop(d, *top)
        scenario.running["top by container"] = netatop(d, *top, "--by", "container")
        record(d, scenario.running, snapshot)
        exited_at = time.monotonic()
        exit_all(children)
        pids = {c.pid for c in children}
        scenario.finished["exited"] = wait_until(
            "every child in the exit list",
            lambda: (
                (rows := netatop(d, "exited", "--json"))
                and pids <= {r["pid"] for r in rows}
                and rows
            ),
            timeout_s=WAIT_S,
        )
        snapshot = wait_until(
            "the table to show every child finished",
            lambda: table_shows(d, children, Kind.EXITED),
            timeout_s=WAIT_S,
        )
        record(d, scenario.finished, snapshot)
        scenario.finished["exited csv"] = netatop(d, "exited", "--csv")
        # wait-exit takes the oldest entries: as many as the exit list held (it only
        # grows until the entries age out, EXIT_LIST_S after they came).
        count = len(scenario.finished["exited"])
        scenario.taken = netatop(d, "wait-exit", "--json", "--count", str(count))
        assert time.monotonic() - exited_at < EXIT_LIST_S, "too slow: left the exit list"
    finally:
        stop_children(children)
        server.finish()
    since = datetime.fromtimestamp(scenario.started).isoformat(timespec="seconds")  # local
    scenario.history = wait_until(
        "every child in the history",
        lambda: history_rows(d, since, {c.pid for c in children}),
        timeout_s=WAIT_S,
    )
    return scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """The scenario, run once for the module, in its own namespace and cgroups."""
    root_or_skip()
    root = find_cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy mounted: these tests need one"
    ns = Netns(NETNS_PREFIX)
    top = Path(root) / f"ntpG-{os.getpid()}.slice"
    # The members' python, under their command names, where the test users reach it.
    bin_dir = Path(tempfile.mkdtemp(prefix="ntpG-"))
    d: Daemon | None = None
    try:
        bin_dir.chmod(0o755)
        for command in MEMBER_COMMANDS:
            (bin_dir / command).symlink_to(os.path.realpath(sys.executable))
        top.mkdir()
        # Identity at exec comes from the proc connector, answered in the initial namespace.
        d = Daemon(
            ns,
            tmp_path_factory.mktemp("grouping") / "run",
            *FAST,
            "--process-events-netns",
            f"/proc/{os.getpid()}/ns/net",
        )
        yield run(ns, d, top, bin_dir)
    finally:
        code = d.stop() if d is not None else 0
        remove_cgroups(top)
        shutil.rmtree(bin_dir)
        ns.delete()
    assert code == 0, d.logs() if d is not None else ""


def remove_cgroups(top: Path) -> None:
    """The test's cgroup directory and everything made under it."""
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


def expected_groups(
    children: list[Child], by: str, report: bool = False
) -> dict[str | int, tuple[int, int]]:
    """group -> (processes, datagrams sent) over the children."""
    result: dict[str | int, tuple[int, int]] = {}
    for child in children:
        group = child.group(by, report)
        processes, datagrams = result.get(group, (0, 0))
        result[group] = (processes + 1, datagrams + child.datagrams)
    return result


def by_key(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    result = {row[key]: row for row in rows}
    assert len(result) == len(rows), f"a {key} twice: {rows}"
    return result


def by_pid(rows: list[dict[str, Any]], children: list[Child]) -> dict[int, dict[str, Any]]:
    """The process rows of the children, by pid (each exactly once)."""
    pids = {c.pid for c in children}
    found = [r for r in rows if r["pid"] in pids and r["kind"] != "thread"]
    result = {r["pid"]: r for r in found}
    assert len(result) == len(found) == len(children), (len(found), found)
    return result


def check_rows(
    where: str, kind: str, rows: dict[int, dict[str, Any]], children: list[Child]
) -> None:
    """Every child's row: its kind, identity and exact counters."""
    for child in children:
        row = rows[child.pid]
        assert row["kind"] == kind, (where, child.layout.name, row)
        got = {k: row[k] for k in child.identity()}
        assert got == child.identity(), (where, child.layout.name, row)
        got = {k: row[k] for k in COUNTER_NAMES}
        assert got == child.counters(), (where, child.layout.name, row)


def check_csv(where: str, kind: str, rows: list[dict[str, str]], children: list[Child]) -> None:
    """CSV rows: the same fields as text ("" for none)."""
    pids = {str(c.pid) for c in children}
    found = {r["pid"]: r for r in rows if r["pid"] in pids and r["kind"] != "thread"}
    assert len(found) == len(children), (where, rows)
    for child in children:
        row = found[str(child.pid)]
        want = {"kind": kind, **child.identity(), **child.counters()}
        assert {k: row[k] for k in want} == {
            k: "" if v is None else str(v) for k, v in want.items()
        }, (where, child.layout.name, row)


def check_table(where: str, snapshot: Snapshot, kind: Kind, children: list[Child]) -> None:
    """The table read directly: the same identity (unknown: -1 and ""), the same counters."""
    rows = {r.id: r for r in snapshot.rows if r.kind == kind}
    for child in children:
        row = rows[child.pid]
        want = child.identity()
        got = {
            "btime": row.btime,
            "command": row.command,
            "uid": row.uid,
            "user": user_name(row.uid),
            "cmdline": row.cmdline,
            "unit": row.unit or None,
            "container": row.container or None,
            "cgroup": row.cgroup,
        }
        assert got == want, (where, child.layout.name, row)
        assert row.tgid == child.pid, (where, row)
        assert dict(zip(COUNTER_NAMES, row.counters, strict=True)) == child.counters(), (
            where,
            child.layout.name,
            row,
        )


def check_groups(where: str, by: str, answer: list[dict[str, Any]], s: Scenario) -> None:
    """query --by: every group the children make, its processes and sums exact."""
    groups = by_key(answer, by)
    for group, (processes, datagrams) in expected_groups(s.children, by).items():
        assert group in groups, (where, by, group, answer)
        found = groups[group]
        # Only the children send (the server in the namespace only receives).
        assert found["udpsndpacks"] == datagrams, (where, by, group, found)
        assert found["udpsndbytes"] == datagrams * WIRE_BYTES, (where, by, group, found)
        if group in (NO_UNIT, NO_CONTAINER):
            continue  # the server may be counted there too
        running = processes if where == "running" else 0
        assert (found["processes"], found["running"]) == (processes, running), (
            where,
            by,
            group,
            found,
        )


def test_query_json_and_the_table_name_every_running_process(scenario: Scenario) -> None:
    """query --json and the table read directly, while the children run."""
    rows = by_pid(scenario.running["query"], scenario.children)
    check_rows("query --json", "process", rows, scenario.children)
    check_table("table", scenario.running["table"], Kind.PROCESS, scenario.children)
    check_csv("query --csv", "process", scenario.running["query csv"], scenario.children)


def test_top_json_names_every_running_process(scenario: Scenario) -> None:
    """netatop top --json (one frame): each child's identity, its lifetime bytes exact
    (it sends nothing more: its rates are 0); --by container: every group's processes."""
    (frame,) = scenario.running["top"]
    rows = by_pid(frame["rows"], scenario.children)
    for child in scenario.children:
        row = rows[child.pid]
        assert row["kind"] == "process", (child.layout.name, row)
        assert {k: row[k] for k in child.identity()} == child.identity(), (child.layout, row)
        assert row["total_bytes"] == child.datagrams * WIRE_BYTES, (child.layout.name, row)
        assert row["udpsndpacks"] == 0, (child.layout.name, row)
    (grouped,) = scenario.running["top by container"]
    groups = by_key(grouped["rows"], "container")
    for group, (processes, _) in expected_groups(scenario.children, "container").items():
        if group != NO_CONTAINER:  # the server may be counted there too
            assert (groups[group]["processes"], groups[group]["running"]) == (
                processes,
                processes,
            ), (group, groups[group])


def test_exit_list_names_every_finished_process(scenario: Scenario) -> None:
    """exited --json (the live exit list), the table's exit-list rows, wait-exit."""
    rows = by_pid(scenario.finished["exited"], scenario.children)
    check_rows("exited --json", "exited", rows, scenario.children)
    check_table("table (exited)", scenario.finished["table"], Kind.EXITED, scenario.children)
    check_csv("exited --csv", "exited", scenario.finished["exited csv"], scenario.children)
    taken = by_pid(scenario.taken, scenario.children)
    check_rows("wait-exit --json", "exited", taken, scenario.children)
    for child in scenario.children:
        assert taken[child.pid]["exit_time"] == rows[child.pid]["exit_time"], child.layout


@pytest.mark.parametrize("by", BY_KEYS)
@pytest.mark.parametrize("moment", ["running", "finished"])
def test_query_by_sums_running_and_finished_processes(
    scenario: Scenario, by: str, moment: str
) -> None:
    """query --by each key: the shared table's rows (finished: from its exit list)."""
    check_groups(moment, by, getattr(scenario, moment)[f"by {by}"], scenario)


def test_history_names_every_layout(scenario: Scenario) -> None:
    """exited --since (history): each process with its identity and exact counters."""
    check_rows("exited --since", "exited", scenario.history, scenario.children)


@pytest.mark.parametrize(
    ("report", "column"),
    [
        ("by-command", "command"),
        ("by-user", "uid"),
        ("by-unit", "unit"),
        ("by-container", "container"),
    ],
)
def test_reports_by_every_key_sum_exact(scenario: Scenario, report: str, column: str) -> None:
    """The reports by-command, by-user, by-unit and by-container (samples): exact sums
    for the groups only the children send in (the server in the namespace only receives)."""
    d = scenario.daemon
    since = datetime.fromtimestamp(scenario.started).isoformat(timespec="seconds")
    window = ("--since", since, "--db", db(d), "--format", "json")
    expected = expected_groups(scenario.children, report.removeprefix("by-"), report=True)
    found = wait_until(
        f"report {report} to hold every datagram",
        lambda: (
            (g := by_key(netatop(d, "report", report, *window), column))
            and all(k in g and g[k]["sndpacks"] == n for k, (_, n) in expected.items())
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


@pytest.mark.parametrize("by", BY_KEYS)
def test_top_exited_groups_by_every_key(scenario: Scenario, by: str) -> None:
    """top-exited-groups --by (final counters of the finished processes)."""
    d = scenario.daemon
    since = datetime.fromtimestamp(scenario.started).isoformat(timespec="seconds")
    window = ("--since", since, "--db", db(d), "--format", "json")
    groups = by_key(netatop(d, "report", "top-exited-groups", "--by", by, *window), "key")
    expected = expected_groups(scenario.children, by, report=True)
    for group, (processes, datagrams) in expected.items():
        assert groups[group]["sndpacks"] == datagrams, (by, group, groups[group])
        if group not in (NO_UNIT, NO_CONTAINER):
            assert groups[group]["processes"] == processes, (by, group, groups[group])
