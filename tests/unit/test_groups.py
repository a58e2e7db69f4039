"""Grouping rows by command, user, unit and container (cli/groups.py, cgroups' group rules).

Ground truth: TaskCounts built here with known counters; each expected sum is
worked out by hand in the comments.  Also netatop query --by end to end on a
table this test publishes (finished processes of the exit list included).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netatopd.cgroups import (
    NO_CONTAINER,
    NO_UNIT,
    UNKNOWN_PLACE,
    container_group,
    placement_labels,
    unit_group,
)
from netatopd.cli import commands
from netatopd.cli.groups import Group, GroupBy, group_key, group_rows, sort_groups
from netatopd.cli.rows import SortKey, TaskCounts
from netatopd.protocol import COUNTER_NAMES
from netatopd.table import TableWriter, table_path
from netatopd.tasks import Kind, TaskRow

DOCKER = "ab" * 32
CRIO = "cd" * 32
POD = "0123abcd-0000-4000-8000-00000000beef"


def place(cgroup: str | None) -> dict[str, str | None]:
    """cgroup, unit and container of a row as the table and history give them."""
    if cgroup is None:
        return {"cgroup": None, "unit": None, "container": None}
    unit, container = placement_labels(cgroup)
    return {"cgroup": cgroup, "unit": unit or None, "container": container or None}


# cgroup path -> (unit group, container group)
PLACES: dict[str | None, tuple[str, str]] = {
    "/system.slice/nginx.service": ("nginx.service", NO_CONTAINER),
    "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope": (
        "user@1000.service",
        NO_CONTAINER,
    ),
    "/user.slice/user-1000.slice/session-3.scope": ("session-3.scope", NO_CONTAINER),
    "/init.scope": ("init.scope", NO_CONTAINER),
    f"/system.slice/docker-{DOCKER}.scope": (f"docker-{DOCKER}.scope", f"docker:{DOCKER}"),
    f"/docker/{DOCKER}": (NO_UNIT, f"docker:{DOCKER}"),  # cgroupfs driver: no unit
    f"/system.slice/crio-{CRIO}.scope": (f"crio-{CRIO}.scope", f"cri-o:{CRIO}"),
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}"
    ".slice": (NO_UNIT, f"pod:{POD}"),
    "/": (NO_UNIT, NO_CONTAINER),  # the root cgroup
    None: (UNKNOWN_PLACE, UNKNOWN_PLACE),  # not read
    "/lxc/box": ("/lxc/box", "/lxc/box"),  # nothing names it: the path, never a guess
    # A scope no rule names as a container: its unit, but its path for the container.
    "/machine.slice/machine-vm1.scope": ("machine-vm1.scope", "/machine.slice/machine-vm1.scope"),
}


@pytest.mark.parametrize("cgroup", list(PLACES))
def test_unit_and_container_groups_of_every_layout(cgroup: str | None) -> None:
    where = place(cgroup)
    assert (unit_group(**where), container_group(**where)) == PLACES[cgroup]


def test_an_empty_cgroup_is_unknown() -> None:
    assert unit_group("", None, None) == container_group("", None, None) == UNKNOWN_PLACE


NAMED = [path for path in PLACES if path and any(placement_labels(path))]


@pytest.mark.parametrize("cgroup", NAMED)
def test_unit_and_container_decide_without_the_path(cgroup: str) -> None:
    """A row with unit and container but no cgroup path is grouped alike when they name one."""
    where = place(cgroup)
    unit, container = PLACES[cgroup]
    without_path = {**where, "cgroup": ""}
    assert unit_group(**without_path) == unit
    if container != cgroup:  # a container group that is not the path itself
        assert container_group(**without_path) == container


def row(
    pid: int,
    command: str,
    counters: tuple[int, ...],
    *,
    kind: Kind = Kind.PROCESS,
    uid: int | None = None,
    user: str | None = None,
    cgroup: str | None = None,
) -> TaskCounts:
    return TaskCounts(
        kind,
        pid,
        pid,
        1000 + pid,
        command,
        *counters,
        uid=uid,
        user=user,
        **place(cgroup),
    )


NGINX_CG = "/system.slice/nginx.service"
DOCKER_CG = f"/system.slice/docker-{DOCKER}.scope"
# Counters in COUNTER_NAMES order (tcp snd packs/bytes, tcp rcv, udp snd, udp rcv).
ROWS = [
    row(1, "nginx", (1, 10, 2, 20, 0, 0, 0, 0), uid=33, user="www-data", cgroup=NGINX_CG),
    row(2, "nginx", (3, 30, 4, 40, 0, 0, 0, 0), uid=33, user="www-data", cgroup=NGINX_CG),
    row(3, "curl", (5, 50, 6, 60, 1, 7, 1, 9), uid=1000, user="ann", cgroup=DOCKER_CG),
    # finished, in the exit list: counted in its groups like the running ones
    row(4, "curl", (0, 0, 0, 0, 2, 200, 3, 300), kind=Kind.EXITED, uid=1000, cgroup=DOCKER_CG),
    row(5, "dig", (0, 0, 0, 0, 1, 1, 1, 1), cgroup="/"),
    row(6, "ssh", (7, 70, 8, 80, 0, 0, 0, 0)),  # nothing known but its command
]
# by command: nginx 1+2 = (4, 40, 6, 60, 0...); curl 3+4 = (5, 50, 6, 60, 3, 207, 4, 309);
# dig (0, 0, 0, 0, 1, 1, 1, 1); ssh (7, 70, 8, 80, 0...)
NGINX_SUM = (4, 40, 6, 60, 0, 0, 0, 0)
CURL_SUM = (5, 50, 6, 60, 3, 207, 4, 309)
DIG_SUM = (0, 0, 0, 0, 1, 1, 1, 1)
SSH_SUM = (7, 70, 8, 80, 0, 0, 0, 0)
# key -> (processes, running, sums), for each GroupBy
EXPECTED = {
    GroupBy.COMMAND: {
        "nginx": (2, 2, NGINX_SUM),
        "curl": (2, 1, CURL_SUM),
        "dig": (1, 1, DIG_SUM),
        "ssh": (1, 1, SSH_SUM),
    },
    # uid 1000 named "ann" on row 3, looked up (USER_NAMES) on row 4: same group
    GroupBy.USER: {
        "www-data": (2, 2, NGINX_SUM),
        "ann": (2, 1, CURL_SUM),
        UNKNOWN_PLACE: (2, 2, (7, 70, 8, 80, 1, 1, 1, 1)),  # dig + ssh
    },
    GroupBy.UNIT: {
        "nginx.service": (2, 2, NGINX_SUM),
        f"docker-{DOCKER}.scope": (2, 1, CURL_SUM),
        NO_UNIT: (1, 1, DIG_SUM),
        UNKNOWN_PLACE: (1, 1, SSH_SUM),
    },
    GroupBy.CONTAINER: {
        NO_CONTAINER: (3, 3, (4, 40, 6, 60, 1, 1, 1, 1)),  # nginx 1, 2 and dig
        f"docker:{DOCKER}": (2, 1, CURL_SUM),
        UNKNOWN_PLACE: (1, 1, SSH_SUM),
    },
}


@pytest.fixture(autouse=True)
def ann(monkeypatch: pytest.MonkeyPatch) -> None:
    """uid 1000 is ann for the CLI's user names."""
    from netatopd.cli import rows

    monkeypatch.setattr(rows.USER_NAMES, "name", lambda uid: {1000: "ann"}.get(uid, str(uid)))


def as_table(groups: list[Group]) -> dict[str, tuple[int, int, tuple[float, ...]]]:
    return {
        g.key: (g.processes, g.running, tuple(getattr(g.counts, n) for n in COUNTER_NAMES))
        for g in groups
    }


@pytest.mark.parametrize("by", list(GroupBy))
def test_groups_sum_exactly(by: GroupBy) -> None:
    groups = group_rows(ROWS, by)
    assert as_table(groups) == EXPECTED[by]
    assert [g.key for g in groups] == list(EXPECTED[by])  # in the order first met
    assert all(g.by is by for g in groups)
    # Nothing lost, nothing counted twice: the groups add up to the rows.
    for index, name in enumerate(COUNTER_NAMES):
        assert sum(getattr(g.counts, name) for g in groups) == sum(
            r[index + 5] for r in ROWS_TUPLES
        )
    assert sum(g.processes for g in groups) == len(ROWS)


ROWS_TUPLES = [
    (r.kind, r.pid, r.tgid, r.btime, r.command, *(getattr(r, n) for n in COUNTER_NAMES))
    for r in ROWS
]


@pytest.mark.parametrize("by", list(GroupBy))
def test_groups_do_not_depend_on_the_order_of_rows(by: GroupBy) -> None:
    for order in itertools.permutations(ROWS):
        assert as_table(group_rows(order, by)) == EXPECTED[by]


def test_every_row_is_its_own_key(by: GroupBy = GroupBy.UNIT) -> None:
    assert [group_key(r, GroupBy.COMMAND) for r in ROWS] == [r.command for r in ROWS]
    assert [group_key(r, by) for r in ROWS] == [
        "nginx.service",
        "nginx.service",
        f"docker-{DOCKER}.scope",
        f"docker-{DOCKER}.scope",
        NO_UNIT,
        UNKNOWN_PLACE,
    ]


def test_no_rows_no_groups() -> None:
    assert group_rows([], GroupBy.CONTAINER) == []


def test_a_thread_row_is_refused() -> None:
    thread = row(7, "worker", (1, 1, 1, 1, 0, 0, 0, 0), kind=Kind.THREAD)
    with pytest.raises(ValueError, match="thread 7"):
        group_rows([*ROWS, thread], GroupBy.COMMAND)


@pytest.mark.parametrize(
    ("key", "order"),
    [
        # bytes: curl 50+60+207+309 = 626, ssh 150, nginx 100, dig 2
        (SortKey.BYTES, ["curl", "ssh", "nginx", "dig"]),
        # packets: curl 18, ssh 15, nginx 10, dig 2
        (SortKey.PACKETS, ["curl", "ssh", "nginx", "dig"]),
        # sent bytes: curl 257, ssh 70, nginx 40, dig 1
        (SortKey.SENT, ["curl", "ssh", "nginx", "dig"]),
        # received packets: curl 10, ssh 8, nginx 6, dig 1
        (SortKey.RECEIVED_PACKETS, ["curl", "ssh", "nginx", "dig"]),
        # udp bytes: curl 516, dig 2, then nginx and ssh 0: more bytes in all first
        (SortKey.UDP, ["curl", "dig", "ssh", "nginx"]),
        # tcp bytes: ssh 150, curl 110, nginx 100, dig 0
        (SortKey.TCP, ["ssh", "curl", "nginx", "dig"]),
        (SortKey.PID, ["curl", "dig", "nginx", "ssh"]),  # by the key
    ],
)
def test_group_orders(key: SortKey, order: list[str]) -> None:
    assert [g.key for g in sort_groups(group_rows(ROWS, GroupBy.COMMAND), key)] == order


def test_equal_groups_go_by_their_key() -> None:
    same = (1, 100, 1, 100, 0, 0, 0, 0)
    groups = group_rows([row(1, "b", same), row(2, "a", same)], GroupBy.COMMAND)
    assert [g.key for g in sort_groups(groups, SortKey.BYTES)] == ["a", "b"]


def test_a_group_record_is_its_key_its_processes_and_its_sums() -> None:
    (curl,) = [g for g in group_rows(ROWS, GroupBy.CONTAINER) if g.key.startswith("docker")]
    assert curl.record() == {
        "container": f"docker:{DOCKER}",
        "processes": 2,
        "running": 1,
        **dict(zip(COUNTER_NAMES, CURL_SUM, strict=True)),
    }


# --------------------------------------------------------------------------- query --by

ZERO = (0, 0, 0, 0)
TABLE_ROWS = [
    TaskRow(Kind.PROCESS, 100, 100, 1000, "nginx", (10, 1000, 20, 2000, *ZERO), 0.0),
    TaskRow(Kind.PROCESS, 101, 101, 1001, "nginx", (1, 100, 2, 200, *ZERO), 0.0),
    TaskRow(Kind.PROCESS, 200, 200, 2000, "dig", (*ZERO, 1, 50, 1, 150), 0.0),
    TaskRow(Kind.THREAD, 102, 101, 1001, "nginx", (1, 100, 2, 200, *ZERO), 0.0),
    # finished, in the exit list: counted while it is there
    TaskRow(Kind.EXITED, 300, 300, 3000, "dig", (*ZERO, 2, 100, 2, 300), 0.0),
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir()
    writer = TableWriter(table_path(str(directory)), 64, 250)
    writer.publish(TABLE_ROWS, {})
    try:
        yield directory
    finally:
        writer.close()


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        commands.app, list(args), prog_name="netatop", env={"COLUMNS": "100"}
    )
    return result.exit_code, result.stdout, result.stderr


def counters(*values: int) -> dict[str, int]:
    return dict(zip(COUNTER_NAMES, values, strict=True))


def test_query_by_command_sums_running_and_finished(run_dir: Path) -> None:
    code, out, _ = invoke("query", "--run-dir", str(run_dir), "--by", "command", "--json")
    assert code == 0
    # nginx 100 + 101 (the thread row is in 101's counters already): 3030 bytes;
    # dig 200 + finished 300: (0, 0, 0, 0, 3, 150, 3, 450), 600 bytes
    assert json.loads(out) == [
        {"command": "nginx", "processes": 2, "running": 2, **counters(11, 1100, 22, 2200, *ZERO)},
        {"command": "dig", "processes": 2, "running": 1, **counters(*ZERO, 3, 150, 3, 450)},
    ]


def test_query_by_csv_and_table(run_dir: Path) -> None:
    code, out, _ = invoke("query", "--run-dir", str(run_dir), "--by", "command", "--csv")
    assert code == 0
    assert out.splitlines() == [
        "command,processes,running," + ",".join(COUNTER_NAMES),
        "nginx,2,2,11,1100,22,2200,0,0,0,0",
        "dig,2,1,0,0,0,0,3,150,3,450",
    ]
    code, out, _ = invoke(
        "query", "--run-dir", str(run_dir), "--by", "command", "--sort", "udp", "--top", "1"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["COMMAND", "PROCS", "RUN"]
    assert [line.split()[:3] for line in lines[1:]] == [["dig", "2", "1"]]


def test_query_by_container_without_identity_is_one_unknown_group(run_dir: Path) -> None:
    """Rows that carry no cgroup (this table) are '(unknown)', not a guessed container."""
    code, out, _ = invoke("query", "--run-dir", str(run_dir), "--by", "container", "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "container": UNKNOWN_PLACE,
            "processes": 4,
            "running": 3,
            **counters(11, 1100, 22, 2200, 3, 150, 3, 450),
        }
    ]


def test_query_by_refuses_threads(run_dir: Path) -> None:
    code, _, err = invoke("query", "--run-dir", str(run_dir), "--by", "unit", "--threads")
    assert code == 2
    assert "groups are made of processes, not threads" in err
