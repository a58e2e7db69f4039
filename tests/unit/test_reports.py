"""SQL reports against a database filled with known rows, and parse_time.

Ground truth: the rows below, inserted by hand; every expected answer is worked
out by hand from them (comments show the sums).  Times are UTC (TZ=UTC for the
test) from T0 = 2026-11-27 00:00:00 UTC.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import apsw
import pytest

from netatopd.cgroups import container_group, unit_group
from netatopd.history import StoreError, list_reports, open_db, parse_time, run_report
from netatopd.history.reports import place_group
from netatopd.protocol import COUNTER_NAMES

T0 = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp())  # 1795737600
assert T0 == 1795737600

# samples: time, interval_s, tgid, btime, command, uid, 8 counter deltas
SAMPLES = [
    # nginx 100: 10/1000 sent, 20/2000 received at 00:30; 5/500, 5/500 at 01:10
    (T0 + 1800, 60.0, 100, 1000, "nginx", 33, 10, 1000, 20, 2000, 0, 0, 0, 0),
    (T0 + 4200, 60.0, 100, 1000, "nginx", 33, 5, 500, 5, 500, 0, 0, 0, 0),
    # nginx 101 at 00:30: 1/100, 1/100
    (T0 + 1800, 60.0, 101, 1001, "nginx", 33, 1, 100, 1, 100, 0, 0, 0, 0),
    # curl 200 at 01:20: TCP 3/300 4/4000, UDP 1/100 1/200
    (T0 + 4800, 60.0, 200, 2000, "curl", 1000, 3, 300, 4, 4000, 1, 100, 1, 200),
    # dig 300 at 02:01: UDP 2/150 2/350
    (T0 + 7260, 60.0, 300, 3000, "dig", 1000, 0, 0, 0, 0, 2, 150, 2, 350),
    # ssh 400, owner unknown, at 00:10: TCP 1/60 1/40
    (T0 + 600, 60.0, 400, 4000, "ssh", None, 1, 60, 1, 40, 0, 0, 0, 0),
]
# exited: tgid, btime, command, cmdline, uid, first, last, exit_time, 8 counters
EXITED = [
    (200, 2000, "curl", "curl https://example.org/", 1000, T0 + 4700.0, T0 + 4790.0)
    + (T0 + 4900.0, 3, 300, 4, 4000, 1, 100, 1, 200),
    (300, 3000, "dig", "dig example.org", 1000, T0 + 7250.0, T0 + 7255.0)
    + (T0 + 7300.0, 0, 0, 0, 0, 2, 150, 2, 350),
    (400, 4000, "ssh", None, None, T0 + 550.0, T0 + 600.0) + (T0 + 700.0, 1, 60, 1, 40, 0, 0, 0, 0),
]

# Per process in samples (sndpacks, sndbytes, rcvpacks, rcvbytes, total_bytes):
#   curl 200: 4, 400, 5, 4200, 4600     nginx 100: 15, 1500, 25, 2500, 4000
#   dig 300:  2, 150, 2, 350, 500        nginx 101: 1, 100, 1, 100, 200
#   ssh 400:  1, 60, 1, 40, 100
CURL = (200, 2000, "curl", 1000, 4, 400, 5, 4200, 4600)
NGINX = (100, 1000, "nginx", 33, 15, 1500, 25, 2500, 4000)
DIG = (300, 3000, "dig", 1000, 2, 150, 2, 350, 500)
NGINX2 = (101, 1001, "nginx", 33, 1, 100, 1, 100, 200)
SSH = (400, 4000, "ssh", None, 1, 60, 1, 40, 100)
WINDOW_COLUMNS = ["sndpacks", "sndbytes", "rcvpacks", "rcvbytes", "total_bytes"]
PROCESS_COLUMNS = ["pid", "btime", "command", "uid", *WINDOW_COLUMNS]
EXIT_COLUMNS = ["pid", "btime", "command", "uid", "exit_time", *WINDOW_COLUMNS, "cmdline"]
# exit_time in epoch seconds: 01:21:40, 02:01:40 and 00:11:40 UTC
EXIT_CURL = (200, 2000, "curl", 1000, T0 + 4900.0, 4, 400, 5, 4200, 4600) + (
    "curl https://example.org/",
)
EXIT_DIG = (300, 3000, "dig", 1000, T0 + 7300.0, 2, 150, 2, 350, 500, "dig example.org")
EXIT_SSH = (400, 4000, "ssh", None, T0 + 700.0, 1, 60, 1, 40, 100, None)
HOURLY_COLUMNS = ["hour_start", "processes", *WINDOW_COLUMNS]
# Per hour: 00:xx nginx 100 (10, 1000, 20, 2000), nginx 101 (1, 100, 1, 100), ssh (1, 60, 1, 40);
# 01:xx nginx 100 (5, 500, 5, 500), curl (4, 400, 5, 4200); 02:xx dig.
HOUR_0 = (T0, 3, 12, 1160, 22, 2140, 3300)
HOUR_1 = (T0 + 3600, 2, 9, 900, 10, 4700, 5600)
HOUR_2 = (T0 + 7200, 1, 2, 150, 2, 350, 500)

NO_FILTER: dict[str, object] = {
    "since": None,
    "until": None,
    "limit": None,
    "command": None,
    "pid": None,
    "order": None,
}

# Where each process ran (schema version 4), set on the rows above by tgid:
# (cgroup, unit, container) as the writer stores them (placement_labels; NULL for none).
DOCKER_ID = "d0" * 32
PLACES = {
    100: ("/system.slice/nginx.service", "nginx.service", None),
    101: ("/", None, None),  # the root cgroup: no unit, no container
    200: (f"/system.slice/docker-{DOCKER_ID}.scope", f"docker-{DOCKER_ID}.scope")
    + (f"docker:{DOCKER_ID}",),
    300: ("/lxc/dig-box", None, None),  # a layout no rule names: grouped by its path
    # 400 (ssh): NULL, the cgroup was not read
}
GROUP_COLUMNS = ["key", "processes", *WINDOW_COLUMNS]
# Per unit (samples): curl docker-<id>.scope, nginx 100 nginx.service, dig its path,
# nginx 101 (no unit), ssh (unknown).
BY_UNIT = [
    (f"docker-{DOCKER_ID}.scope", 1, 4, 400, 5, 4200, 4600),
    ("nginx.service", 1, 15, 1500, 25, 2500, 4000),
    ("/lxc/dig-box", 1, 2, 150, 2, 350, 500),
    ("(no unit)", 1, 1, 100, 1, 100, 200),
    ("(unknown)", 1, 1, 60, 1, 40, 100),
]
# Per container: curl its container, both nginx (no container), dig its path, ssh (unknown).
BY_CONTAINER = [
    (f"docker:{DOCKER_ID}", 1, 4, 400, 5, 4200, 4600),
    ("(no container)", 2, 16, 1600, 26, 2600, 4200),
    ("/lxc/dig-box", 1, 2, 150, 2, 350, 500),
    ("(unknown)", 1, 1, 60, 1, 40, 100),
]

# name -> (params, columns, rows): one entry per report file, all of them.
EXPECTED: dict[str, list[tuple[dict[str, object], list[str], list[tuple[object, ...]]]]] = {
    "top-processes": [
        (NO_FILTER, PROCESS_COLUMNS, [CURL, NGINX, DIG, NGINX2, SSH]),
        # 01:00 to 02:00: nginx 100's second sample and curl.
        (
            {"since": T0 + 3600, "until": T0 + 7200},
            PROCESS_COLUMNS,
            [CURL, (100, 1000, "nginx", 33, 5, 500, 5, 500, 1000)],
        ),
        ({"limit": 2}, PROCESS_COLUMNS, [CURL, NGINX]),
        ({"command": "nginx"}, PROCESS_COLUMNS, [NGINX, NGINX2]),
        ({"pid": 100}, PROCESS_COLUMNS, [NGINX]),
        # bytes sent: nginx 1500, curl 400, dig 150, nginx 101 100, ssh 60
        ({"order": "sent"}, PROCESS_COLUMNS, [NGINX, CURL, DIG, NGINX2, SSH]),
        # packets: nginx 40, curl 9, dig 4, then nginx 101 and ssh tie at 2: more bytes first
        ({"order": "packets"}, PROCESS_COLUMNS, [NGINX, CURL, DIG, NGINX2, SSH]),
        # packets received: nginx 25, curl 5; limit 1
        ({"order": "received-packets", "limit": 1}, PROCESS_COLUMNS, [NGINX]),
    ],
    "by-command": [
        (
            NO_FILTER,
            ["command", "processes", *WINDOW_COLUMNS],
            [
                ("curl", 1, 4, 400, 5, 4200, 4600),
                ("nginx", 2, 16, 1600, 26, 2600, 4200),  # 100 + 101
                ("dig", 1, 2, 150, 2, 350, 500),
                ("ssh", 1, 1, 60, 1, 40, 100),
            ],
        ),
        (
            {"until": T0 + 3600},  # 00:xx only: nginx 100 first sample, nginx 101, ssh
            ["command", "processes", *WINDOW_COLUMNS],
            [("nginx", 2, 11, 1100, 21, 2100, 3200), ("ssh", 1, 1, 60, 1, 40, 100)],
        ),
        (
            {"order": "sent", "pid": 101},
            ["command", "processes", *WINDOW_COLUMNS],
            [("nginx", 1, 1, 100, 1, 100, 200)],
        ),
        (
            {"order": "sent"},  # nginx 1600, curl 400, dig 150, ssh 60
            ["command", "processes", *WINDOW_COLUMNS],
            [
                ("nginx", 2, 16, 1600, 26, 2600, 4200),
                ("curl", 1, 4, 400, 5, 4200, 4600),
                ("dig", 1, 2, 150, 2, 350, 500),
                ("ssh", 1, 1, 60, 1, 40, 100),
            ],
        ),
    ],
    "by-user": [
        (
            NO_FILTER,
            ["uid", "processes", *WINDOW_COLUMNS],
            [
                (1000, 2, 6, 550, 7, 4550, 5100),  # curl + dig
                (33, 2, 16, 1600, 26, 2600, 4200),
                (None, 1, 1, 60, 1, 40, 100),
            ],
        ),
        (
            {"command": "dig"},
            ["uid", "processes", *WINDOW_COLUMNS],
            [(1000, 1, 2, 150, 2, 350, 500)],
        ),
    ],
    "hourly": [
        (NO_FILTER, HOURLY_COLUMNS, [HOUR_0, HOUR_1, HOUR_2]),
        ({"since": T0 + 3600, "limit": 1}, HOURLY_COLUMNS, [HOUR_1]),
        # bytes received: 01:xx 4700, 00:xx 2140, 02:xx 350
        ({"order": "received"}, HOURLY_COLUMNS, [HOUR_1, HOUR_0, HOUR_2]),
        ({"pid": 300}, HOURLY_COLUMNS, [HOUR_2]),
    ],
    "by-unit": [
        (NO_FILTER, ["unit", *GROUP_COLUMNS[1:]], BY_UNIT),
        # bytes sent: nginx.service 1500, docker 400, dig 150, (no unit) 100, (unknown) 60
        ({"order": "sent", "limit": 2}, ["unit", *GROUP_COLUMNS[1:]], [BY_UNIT[1], BY_UNIT[0]]),
        ({"command": "nginx"}, ["unit", *GROUP_COLUMNS[1:]], [BY_UNIT[1], BY_UNIT[3]]),
    ],
    "by-container": [
        (NO_FILTER, ["container", *GROUP_COLUMNS[1:]], BY_CONTAINER),
        (
            {"pid": 101},
            ["container", *GROUP_COLUMNS[1:]],
            [("(no container)", 1, 1, 100, 1, 100, 200)],
        ),
        # 00:xx only: nginx 100's first sample and nginx 101; ssh
        (
            {"until": T0 + 3600},
            ["container", *GROUP_COLUMNS[1:]],
            [("(no container)", 2, 11, 1100, 21, 2100, 3200), ("(unknown)", 1, 1, 60, 1, 40, 100)],
        ),
    ],
    "top-groups": [
        # by command (the default): as by-command
        (
            NO_FILTER,
            GROUP_COLUMNS,
            [
                ("curl", 1, 4, 400, 5, 4200, 4600),
                ("nginx", 2, 16, 1600, 26, 2600, 4200),
                ("dig", 1, 2, 150, 2, 350, 500),
                ("ssh", 1, 1, 60, 1, 40, 100),
            ],
        ),
        ({"by": "unit"}, GROUP_COLUMNS, BY_UNIT),
        ({"by": "container"}, GROUP_COLUMNS, BY_CONTAINER),
        (
            {"by": "user"},
            GROUP_COLUMNS,
            [
                (1000, 2, 6, 550, 7, 4550, 5100),
                (33, 2, 16, 1600, 26, 2600, 4200),
                (None, 1, 1, 60, 1, 40, 100),
            ],
        ),
        ({"by": "container", "order": "received", "limit": 1}, GROUP_COLUMNS, [BY_CONTAINER[0]]),
    ],
    "top-exited-groups": [
        # the final counters of curl, dig and ssh (exited)
        (
            NO_FILTER,
            GROUP_COLUMNS,
            [
                ("curl", 1, 4, 400, 5, 4200, 4600),
                ("dig", 1, 2, 150, 2, 350, 500),
                ("ssh", 1, 1, 60, 1, 40, 100),
            ],
        ),
        ({"by": "unit"}, GROUP_COLUMNS, [BY_UNIT[0], BY_UNIT[2], BY_UNIT[4]]),
        ({"by": "container"}, GROUP_COLUMNS, [BY_CONTAINER[0], BY_CONTAINER[2], BY_CONTAINER[3]]),
        (
            {"by": "user"},
            GROUP_COLUMNS,
            [(1000, 2, 6, 550, 7, 4550, 5100), (None, 1, 1, 60, 1, 40, 100)],
        ),
        # exit_time in [00:30, 02:00): curl only
        ({"by": "unit", "since": T0 + 1800, "until": T0 + 7200}, GROUP_COLUMNS, [BY_UNIT[0]]),
    ],
    "recent-exits": [
        (NO_FILTER, EXIT_COLUMNS, [EXIT_DIG, EXIT_CURL, EXIT_SSH]),
        ({"since": T0 + 700.0, "until": T0 + 7300.0}, EXIT_COLUMNS, [EXIT_CURL, EXIT_SSH]),
        ({"limit": 1}, EXIT_COLUMNS, [EXIT_DIG]),
        ({"pid": 200}, EXIT_COLUMNS, [EXIT_CURL]),
        ({"order": "bytes"}, EXIT_COLUMNS, [EXIT_CURL, EXIT_DIG, EXIT_SSH]),
    ],
    "top-exited": [
        (NO_FILTER, EXIT_COLUMNS, [EXIT_CURL, EXIT_DIG, EXIT_SSH]),
        ({"command": "ssh"}, EXIT_COLUMNS, [EXIT_SSH]),
        ({"pid": 400}, EXIT_COLUMNS, [EXIT_SSH]),
        ({"order": "sent-packets", "limit": 2}, EXIT_COLUMNS, [EXIT_CURL, EXIT_DIG]),
    ],
}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# The columns of schema version 1 (the known rows below fill those).
SAMPLES_INSERT = (
    f"INSERT INTO samples (time, interval_s, tgid, btime, command, uid, {', '.join(COUNTER_NAMES)})"
    f" VALUES ({', '.join('?' * 14)})"
)
EXITED_INSERT = (
    "INSERT INTO exited (tgid, btime, command, cmdline, uid, first_activity, last_activity,"
    f" exit_time, {', '.join(COUNTER_NAMES)}) VALUES ({', '.join('?' * 16)})"
)


@pytest.fixture
def history(tmp_path: Path) -> apsw.Connection:
    path = str(tmp_path / "known.db")
    conn = open_db(path)
    with conn:
        conn.executemany(SAMPLES_INSERT, SAMPLES)
        conn.executemany(EXITED_INSERT, EXITED)
        for table in ("samples", "exited"):
            conn.executemany(
                f"UPDATE {table} SET cgroup = ?, unit = ?, container = ? WHERE tgid = ?",
                [(*place, tgid) for tgid, place in PLACES.items()],
            )
    conn.close()
    return open_db(path, readonly=True)


def test_every_report_has_a_header_and_a_known_answer() -> None:
    reports = list_reports()
    assert sorted(r.name for r in reports) == sorted(EXPECTED)
    for report in reports:
        assert Path(report.path).stem == report.name
        assert report.description and "\n" not in report.description
        grouped = ("by",) if report.name.endswith("-groups") else ()
        assert report.params == ("since", "until", "limit", "command", "pid", "order", *grouped)


@pytest.mark.parametrize("name", ["top-processes", "by-unit", "recent-exits"])
def test_a_report_without_groups_refuses_by(history: apsw.Connection, name: str) -> None:
    with pytest.raises(ValueError, match=f"report {name} takes no parameter :by"):
        run_report(history, name, {"by": "unit"})


def test_a_group_nobody_knows_is_refused(history: apsw.Connection) -> None:
    with pytest.raises(ValueError, match="place_group groups by unit or container"):
        run_report(history, "top-groups", {"by": "cgroup"})


def test_place_group_in_sql_is_the_rule_of_the_live_rows() -> None:
    """The SQL function gives the group cgroups' rules give the live rows."""
    places = [*PLACES.values(), (None, None, None), ("/kubepods/x", None, "pod:1")]
    for cgroup, unit, container in places:
        assert place_group("unit", cgroup, unit, container) == unit_group(cgroup, unit, container)
        assert place_group("container", cgroup, unit, container) == container_group(
            cgroup, unit, container
        )


@pytest.mark.parametrize(
    ("name", "case"), [(name, i) for name, cases in EXPECTED.items() for i in range(len(cases))]
)
def test_report_returns_the_known_answer(
    utc: None, history: apsw.Connection, name: str, case: int
) -> None:
    params, columns, rows = EXPECTED[name][case]
    assert run_report(history, name, params) == (columns, rows)


def test_report_with_no_rows_still_names_its_columns(utc: None, history: apsw.Connection) -> None:
    columns, rows = run_report(history, "hourly", {"since": T0 + 86400})
    assert rows == []
    assert columns == HOURLY_COLUMNS


def test_report_times_are_epoch_seconds_in_any_zone(
    monkeypatch: pytest.MonkeyPatch, history: apsw.Connection
) -> None:
    """The SQL gives numbers; only the CLI's table format shows local time."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        _, hours = run_report(history, "hourly", {"limit": 1})
        _, exits = run_report(history, "recent-exits", {"limit": 1})
    finally:
        monkeypatch.undo()
        time.tzset()
    assert hours[0][0] == T0  # hours are cut in UTC
    assert exits[0][:5] == EXIT_DIG[:5]


# An iperf3-like pair: the receiver (lower pid) and the sender moved the same bytes in all.
IPERF_SAMPLES = [
    (T0 + 60, 60.0, 500, 5000, "iperf3", 0, 100, 6000, 2000, 3_000_000, 0, 0, 0, 0),
    (T0 + 60, 60.0, 501, 5001, "iperf3", 0, 2000, 3_000_000, 100, 6000, 0, 0, 0, 0),
]


@pytest.mark.parametrize(
    ("order", "pid"),
    [(None, 501), ("bytes", 501), ("sent", 501), ("received", 500), ("sent-packets", 501)],
)
def test_top_processes_tie_goes_to_the_sender(tmp_path: Path, order: str | None, pid: int) -> None:
    """Equal totals: more bytes sent wins, whatever the pids (the receiver's is lower)."""
    conn = open_db(str(tmp_path / "iperf.db"))
    with conn:
        conn.executemany(SAMPLES_INSERT, IPERF_SAMPLES)
    columns, rows = run_report(conn, "top-processes", {"limit": 1, "order": order})
    assert (columns[0], [row[0] for row in rows]) == ("pid", [pid])
    conn.close()


def test_run_report_refusals(tmp_path: Path, history: apsw.Connection) -> None:
    with pytest.raises(StoreError, match="no report named 'nope'"):
        run_report(history, "nope", {})
    with pytest.raises(ValueError, match=":user"):
        run_report(history, "hourly", {"user": 5})
    # A parameter the report does not take is fine when it is NULL, with or without colon.
    assert run_report(history, "hourly", {":user": None, ":limit": 0})[1] == []

    own = tmp_path / "reports"
    own.mkdir()
    (own / "wipe.sql").write_text("-- wipe: delete everything\n-- params:\nDELETE FROM exited;\n")
    (own / "two.sql").write_text("-- two: two statements\n-- params:\nSELECT 1; SELECT 2;\n")
    (own / "liar.sql").write_text(
        "-- liar: header and SQL disagree\n-- params: :since\nSELECT :until AS u;\n"
    )
    (own / "noheader.sql").write_text("SELECT 1;\n")
    (own / "mine.sql").write_text(
        "-- mine: processes per command\n-- params: :command\n"
        "SELECT command, count(*) AS n FROM exited WHERE :command IS NULL OR command = :command"
        " GROUP BY command ORDER BY command;\n"
    )
    assert [r.name for r in list_reports(own)] == ["liar", "mine", "two", "wipe"]
    with pytest.raises(StoreError, match="would change the database"):
        run_report(history, "wipe", {}, own)
    with pytest.raises(StoreError, match="one SQL statement"):
        run_report(history, "two", {}, own)
    with pytest.raises(StoreError, match="header declares :since but the SQL uses :until"):
        run_report(history, "liar", {}, own)
    assert run_report(history, "mine", {}, own) == (
        ["command", "n"],
        [("curl", 1), ("dig", 1), ("ssh", 1)],
    )
    assert run_report(history, "mine", {"command": "dig"}, own) == (
        ["command", "n"],
        [("dig", 1)],
    )


# ------------------------------------------------------------------- parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("1w", NOW - 604800),
        ("1.5h", NOW - 5400),
        (" 2H ", NOW - 7200),
        ("now", NOW),
        # journalctl's forms: longer unit names, "ago", a minus, several terms, day names
        ("10min", NOW - 600),
        ("10 min", NOW - 600),
        ("2h ago", NOW - 7200),
        ("2 hours ago", NOW - 7200),
        ("-2h", NOW - 7200),
        ("1h 30min", NOW - 5400),
        ("3 days", NOW - 3 * 86400),
        ("1week", NOW - 604800),
        ("45sec ago", NOW - 45),
        # NOW is 2027-01-15 08:00 UTC: today starts 8 h before it, yesterday 32 h before
        ("today", NOW - 8 * 3600),
        ("Yesterday", NOW - 32 * 3600),
        ("tomorrow", NOW + 16 * 3600),
        ("@1795737600", 1795737600.0),
        ("2026-11-27T02:00", T0 + 7200.0),
        ("2026-11-27 02:00:30", T0 + 7230.0),
        ("2026-11-27", float(T0)),
        ("2026-11-27T02:00Z", T0 + 7200.0),
        ("2026-11-27T03:00+01:00", T0 + 7200.0),
        # A time of day is today's (the day of NOW: 2027-01-15 08:00 UTC).
        ("02:00", NOW - 6 * 3600),
        ("23:59:59", NOW + 15 * 3600 + 59 * 60 + 59),
    ],
)
def test_parse_time(utc: None, text: str, expected: float) -> None:
    assert parse_time(text, now_s=NOW) == expected


def test_parse_time_naive_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert parse_time("2026-11-27T05:30") == float(T0)
        assert parse_time("2026-11-27T05:30Z") == float(T0) + 5.5 * 3600
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5",
        "2026-13-01",
        "@x",
        "1y",
        "25:00",
        "2:00",
        "@nan",
        "ago",
        "2h ago ago",
        "-2h ago",
        "2 fortnights",
        "yesterday-ish",
        "h",
    ],
)
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time(text, now_s=NOW)
