"""The netatop command line (the netatopd.cli package) without root and without a daemon.

Ground truth: the rows each test publishes itself into a shared table with
table.TableWriter, the records a fake control server (below, speaking the
wire format of protocol.py) answers with, and the rows inserted by SQL into a
history database.  Expected outputs are written out by hand from those values
(the unit arithmetic is in the comments).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from netatopd.cli import commands, sources
from netatopd.cli.format import format_bytes, format_count, format_user
from netatopd.cli.rows import (
    EXITED_FIELDS,
    HEADERS,
    TASK_FIELDS,
    USER_NAMES,
    SortKey,
    TaskCounts,
    from_history,
    from_reply,
    from_table,
)
from netatopd.cli.status import status_lines
from netatopd.cli.top import rate_rows, top_frame
from netatopd.client import NetPerTask
from netatopd.history import open_db
from netatopd.protocol import (
    COUNTER_NAMES,
    REPLY,
    REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    Command,
    pack_netpertask,
)
from netatopd.table import TableReader, TableWriter, table_path
from netatopd.tasks import ExitedTask, Kind, TaskRow

# Rows with the columns of schema version 1 (the later ones stay NULL).
_V1_EXITED = "tgid, btime, command, cmdline, uid, first_activity, last_activity, exit_time"
EXITED_INSERT_V1 = (
    f"INSERT INTO exited ({_V1_EXITED}, {', '.join(COUNTER_NAMES)}) VALUES ({', '.join('?' * 16)})"
)
SAMPLES_INSERT_V1 = (
    f"INSERT INTO samples (time, interval_s, tgid, btime, command, uid, {', '.join(COUNTER_NAMES)})"
    f" VALUES ({', '.join('?' * 14)})"
)

REPO = Path(__file__).resolve().parents[2]
MAN_PAGE = REPO / "man" / "netatop.1"
ZERO = (0, 0, 0, 0)

# The processes of the shared table.  Sums used by the sort orders:
#   pid      bytes          packets    tcp bytes   udp bytes      sent       received
#   100      2_187_152      3_001_200  2_187_152   0              2_097_152  90_000
#   200      20_000         100        0           20_000         5000       15_000
#   300      4_600          9          4_300       300            400        4200
#   1234567  3_221_226_472  1_000_010  0           3_221_226_472  1000       3_221_225_472
# packets sent: 100 3_000_000, 200 50, 1234567 10, 300 4;
# packets received: 1234567 1_000_000, 100 1200, 200 50, 300 5
# Who they are: nginx is root's and its service's, dig a user's without a name (54321) in
# a container, curl and systemd-resolve unknown (uid -1, no command line).
DIG_CONTAINER = "docker:" + "d" * 64
NGINX = TaskRow(
    Kind.PROCESS,
    100,
    100,
    1000,
    "nginx",
    (3_000_000, 2_097_152, 1200, 90_000, *ZERO),
    0.0,
    0,
    "nginx: master process /usr/sbin/nginx -g daemon off;",
    "nginx.service",
    "",
    "/system.slice/nginx.service",
)
DIG = TaskRow(
    Kind.PROCESS,
    200,
    200,
    2000,
    "dig",
    (*ZERO, 50, 5000, 50, 15000),
    0.0,
    54321,
    "dig @192.0.2.53 example.org",
    f"docker-{'d' * 64}.scope",
    DIG_CONTAINER,
    f"/system.slice/docker-{'d' * 64}.scope",
)
CURL = TaskRow(Kind.PROCESS, 300, 300, 3000, "curl", (3, 300, 4, 4000, 1, 100, 1, 200), 0.0)
RESOLVED = TaskRow(
    Kind.PROCESS,
    1234567,
    1234567,
    4000,
    "systemd-resolve",
    (*ZERO, 10, 1000, 1_000_000, 3_221_225_472),
    0.0,
)
WGET_EXITED = TaskRow(Kind.EXITED, 400, 400, 5000, "wget", (1, 2, 3, 4, 5, 6, 7, 8), 0.0)
ROWS = [NGINX, DIG, CURL, RESOLVED, WGET_EXITED]
COUNTERS = (
    "tcpsndpacks",
    "tcpsndbytes",
    "tcprcvpacks",
    "tcprcvbytes",
    "udpsndpacks",
    "udpsndbytes",
    "udprcvpacks",
    "udprcvbytes",
)


USERS = {-1: None, 0: "root", 54321: "54321"}  # a uid without a name prints as its number


def as_json(row: TaskRow, kind: str = "process") -> dict[str, Any]:
    return {
        "pid": row.id,
        "tgid": row.tgid,
        "kind": kind,
        "btime": row.btime,
        "command": row.command,
        **dict(zip(COUNTERS, row.counters, strict=True)),
        "uid": None if row.uid < 0 else row.uid,
        "user": USERS[row.uid],
        "cmdline": row.cmdline or None,
        "unit": row.unit or None,
        "container": row.container or None,
        "cgroup": row.cgroup or None,
    }


# Every counter of every row, in bytes with units (binary, three digits):
#   2_097_152 = 2.00 MiB   90_000 = 87.89 KiB    5000 = 4.88 KiB   15000 = 14.65 KiB
#   4000 = 3.91 KiB        3_221_225_472 = 3.00 GiB;  packets 3_000_000 = 3.00M, 1_000_000 = 1.00M
# The natural width is 93 columns (USER: 5, for "54321"); with COMMAND cut to its least
# (7) it would still take 85, so UDPRCV (6 and a space) is left out (said on stderr);
# of the 86 left, COMMAND is cut from 15 to 9 ("systemd-" and the marker) to fit 80,
# and no room is left for CMDLINE.
QUERY_TABLE = [
    "    PID USER  COMMAND   TCPSND  TCPSNDB TCPRCV  TCPRCVB UDPSND  UDPSNDB  UDPRCVB",
    "1234567 -     systemd-\u2026      0      0 B      0      0 B     10   1000 B 3.00 GiB",
    "    100 root  nginx      3.00M 2.00 MiB   1200 87.9 KiB      0      0 B      0 B",
    "    200 54321 dig            0      0 B      0      0 B     50 4.88 KiB 14.6 KiB",
    "    300 -     curl           3    300 B      4 3.91 KiB      1    100 B    200 B",
]
QUERY_TABLE_NOTE = (
    "netatop: UDPRCV left out to fit 80 columns (a wider terminal, --json or --csv shows them)\n"
)


def invoke(*args: str, columns: int = 80, **env: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        commands.app,
        list(args),
        prog_name="netatop",
        env={"COLUMNS": str(columns), "NETATOP_RUN_DIR": None, "NETATOP_DB": None, **env},
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose table holds ROWS, published by this process (alive: fresh)."""
    directory = tmp_path / "run"
    directory.mkdir()
    writer = TableWriter(table_path(str(directory)), 64, 250)
    writer.publish(ROWS, {"tcp_sent": 11})
    try:
        yield directory
    finally:
        writer.close()


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1023.6, "1.00 KiB"),  # rounds to 1024 bytes: the next unit
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (10_188, "9.95 KiB"),
        (10_239, "10.0 KiB"),  # 9.999 KiB rounds to 10.0, one decimal
        (153_600, "150 KiB"),
        (1_048_063, "1023 KiB"),
        (1_048_575, "1.00 MiB"),  # 1023.999 KiB would print as 1024 KiB
        (5 * 2**40, "5.00 TiB"),
    ],
)
def test_format_bytes(count: float, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (999_999, "999999"),
        (1_000_000, "1.00M"),
        (12_345_678, "12.3M"),
        (4 * 10**9, "4.00G"),
    ],
)
def test_format_count(count: int, text: str) -> None:
    assert format_count(count) == text


# --------------------------------------------------------------------------- the row


def test_one_row_from_every_source() -> None:
    """The daemon's reply, the table row and the history row of one process print alike."""
    counters = (1, 2, 3, 4, 5, 6, 7, 8)
    from_socket = from_reply(NetPerTask(400, 5000, "wget", counters), Kind.EXITED)
    from_shared = from_table(TaskRow(Kind.EXITED, 400, 400, 5000, "wget", counters, 0.0))
    finished = ExitedTask(400, 5000, "wget", "", -1, 0.0, 0.0, T0 + 60.5, counters)
    from_sqlite = from_history(finished)
    expected = as_json(WGET_EXITED, "exited")
    assert from_socket.record() == from_shared.record() == from_sqlite.record() == expected
    assert list(from_socket.record()) == list(TASK_FIELDS)  # the order of JSON and CSV
    assert from_sqlite.record(EXITED_FIELDS) == {
        **expected,
        "cmdline": None,  # unknown: "" and -1 in SQLite, null in JSON, empty in CSV
        "uid": None,
        "first_activity": None,
        "last_activity": None,
        "exit_time": T0 + 60.5,
        "user": None,
        "unit": None,
        "container": None,
        "cgroup": None,
    }
    placed = from_history(
        finished._replace(uid=0, cgroup=f"/system.slice/docker-{'c' * 64}.scope")._replace(
            unit=f"docker-{'c' * 64}.scope", container=f"docker:{'c' * 64}"
        )
    ).record(EXITED_FIELDS)
    assert (placed["user"], placed["unit"], placed["container"]) == (
        "root",
        f"docker-{'c' * 64}.scope",
        f"docker:{'c' * 64}",
    )
    thread = from_table(TaskRow(Kind.THREAD, 101, 100, 1000, "nginx", counters, 0.0))
    assert (thread.pid, thread.tgid, thread.record()["kind"]) == (101, 100, "thread")


# --------------------------------------------------------------------------- query


def test_query_human_table_sorted_by_bytes_fits_80_columns(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == QUERY_TABLE
    assert max(len(line) for line in result.stdout.splitlines()) == 80
    assert result.stderr == QUERY_TABLE_NOTE


def test_query_wide_terminal_keeps_the_whole_command(run_dir: Path) -> None:
    """86 columns without CMDLINE: 120 leaves 33 for it (20 needed); unknown: [command]."""
    result = invoke("query", "--run-dir", str(run_dir), "--top", "1", columns=120)
    assert result.stdout.splitlines() == [
        "    PID USER COMMAND         TCPSND TCPSNDB TCPRCV TCPRCVB UDPSND UDPSNDB UDPRCV  UDPRCVB"
        " CMDLINE",
        "1234567 -    systemd-resolve      0     0 B      0     0 B     10  1000 B  1.00M 3.00 GiB"
        " [systemd-resolve]",
    ]


QUERY_WIDE = [
    "    PID USER  COMMAND         TCPSND  TCPSNDB TCPRCV  TCPRCVB UDPSND  UDPSNDB UDPRCV  UDPRCVB"
    " CMDLINE",
    "1234567 -     systemd-resolve      0      0 B      0      0 B     10   1000 B  1.00M 3.00 GiB"
    " [systemd-resolve]",
    "    100 root  nginx            3.00M 2.00 MiB   1200 87.9 KiB      0      0 B      0      0 B"
    " nginx: master process /usr/sbin/nginx -g daemon off;",
    "    200 54321 dig                  0      0 B      0      0 B     50 4.88 KiB     50 14.6 KiB"
    " dig @192.0.2.53 example.org",
    "    300 -     curl                 3    300 B      4 3.91 KiB      1    100 B      1    200 B"
    " [curl]",
]


def test_query_shows_the_user_and_the_command_line_where_they_fit(run_dir: Path) -> None:
    """93 columns, then CMDLINE: 160 columns hold the longest command line (52) whole."""
    result = invoke("query", "--run-dir", str(run_dir), columns=160)
    assert result.stdout.splitlines() == QUERY_WIDE
    # 113: CMDLINE gets 19 characters, one short of the 20 it needs: left out
    narrow = invoke("query", "--run-dir", str(run_dir), columns=113)
    assert "CMDLINE" not in narrow.stdout
    assert "CMDLINE" in invoke("query", "--run-dir", str(run_dir), columns=114).stdout


def test_query_cmdline_forces_the_column_and_marks_what_is_cut(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--cmdline", columns=100)
    # 93 + 1 leaves 6 of 52: CMDLINE is cut to 7 (its least), then COMMAND from 15 to 14
    lines = result.stdout.splitlines()
    assert lines[0].endswith(" CMDLINE")
    assert lines[2].endswith(" nginx:\u2026")
    assert lines[3].endswith(" dig @1\u2026")
    assert lines[4].endswith(" [curl]")
    assert [line.split()[2] for line in lines[1:]] == [
        "systemd-resol\u2026",
        "nginx",
        "dig",
        "curl",
    ]
    assert max(len(line) for line in lines) == 100


def test_query_piped_cuts_nothing(run_dir: Path) -> None:
    """Not a terminal and no COLUMNS: whole lines, the command line included (like ps)."""
    result = CliRunner().invoke(
        commands.app,
        ["query", "--run-dir", str(run_dir)],
        prog_name="netatop",
        env={"COLUMNS": None, "NETATOP_RUN_DIR": None},
    )
    assert result.stdout.splitlines() == QUERY_WIDE


def test_query_json_has_exact_counters(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--json", "--sort", "pid")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [as_json(r) for r in (NGINX, DIG, CURL, RESOLVED)]


def test_query_csv_has_a_header_and_exact_counters(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--csv", "300", "200")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "pid,tgid,kind,btime,command,tcpsndpacks,tcpsndbytes,tcprcvpacks,tcprcvbytes,"
        "udpsndpacks,udpsndbytes,udprcvpacks,udprcvbytes,uid,user,cmdline,unit,container,cgroup",
        "300,300,process,3000,curl,3,300,4,4000,1,100,1,200,,,,,,",  # PIDs given: their order
        "200,200,process,2000,dig,0,0,0,0,50,5000,50,15000,54321,54321,"
        f"dig @192.0.2.53 example.org,docker-{'d' * 64}.scope,{DIG_CONTAINER},"
        f"/system.slice/docker-{'d' * 64}.scope",
    ]


@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("bytes", [1234567, 100, 200, 300]),
        ("packets", [100, 1234567, 200, 300]),
        ("tcp", [100, 300, 1234567, 200]),  # 200 and 1234567 tie at 0: more bytes first
        ("udp", [1234567, 200, 300, 100]),
        ("pid", [100, 200, 300, 1234567]),
        ("sent", [100, 200, 1234567, 300]),
        ("received", [1234567, 100, 200, 300]),
        ("sent-packets", [100, 200, 1234567, 300]),
        ("received-packets", [1234567, 100, 200, 300]),
    ],
)
def test_query_sort_orders(run_dir: Path, key: str, order: list[int]) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--json", "--sort", key)
    assert [row["pid"] for row in json.loads(result.stdout)] == order


# An iperf3-like pair: the receiver (lower pid) and the sender moved the same bytes in all.
RECEIVER = TaskRow(Kind.PROCESS, 500, 500, 9000, "iperf3", (100, 6000, 2000, 3_000_000, *ZERO), 0.0)
SENDER = TaskRow(Kind.PROCESS, 501, 501, 9001, "iperf3", (2000, 3_000_000, 100, 6000, *ZERO), 0.0)


@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("bytes", [501, 500]),  # a tie on bytes: more bytes sent first
        ("packets", [501, 500]),  # a tie on packets too
        ("sent", [501, 500]),
        ("received", [500, 501]),
        ("tcp", [501, 500]),
    ],
)
def test_query_ties_go_to_the_sender(tmp_path: Path, key: str, order: list[int]) -> None:
    writer = TableWriter(table_path(str(tmp_path)), 8, 250)
    writer.publish([RECEIVER, SENDER], {})
    try:
        result = invoke("query", "--run-dir", str(tmp_path), "--json", "--sort", key)
    finally:
        writer.close()
    assert [row["pid"] for row in json.loads(result.stdout)] == order


def test_sort_help_states_the_tie_break() -> None:
    for command in ("query", "top"):
        text = " ".join(invoke(command, "--help", columns=200).stdout.split())
        assert "ties go to more bytes sent and received, then to more bytes sent" in text
        assert "sent-packets" in text and "received-packets" in text
    page = " ".join(MAN_PAGE.read_text(encoding="utf-8").split())
    assert "Ties go to more bytes sent and received, then to more bytes sent" in page


def test_query_top_keeps_the_first_rows_of_the_order(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--json", "--sort", "udp", "--top", "2")
    assert [row["pid"] for row in json.loads(result.stdout)] == [1234567, 200]


UNKNOWN_999 = (
    "netatop: process 999 is not known to netatopd (no traffic seen, or it finished and left "
    "the exit list: netatop exited --pid 999 --since 1d looks in the history)"
)


def test_query_unknown_and_finished_pids_exit_1_and_print_the_rest(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--json", "100", "999", "400")
    assert result.exit_code == 1
    # 400 has finished and is in the exit list: its final counters, marked exited
    assert json.loads(result.stdout) == [as_json(NGINX), as_json(WGET_EXITED, "exited")]
    assert result.stderr.splitlines() == [
        "netatop: process 400 has finished: its final counters, from the exit list (kind exited)",
        UNKNOWN_999,
    ]
    finished = invoke("query", "--run-dir", str(run_dir), "400", columns=100)
    assert finished.exit_code == 0
    assert finished.stdout.splitlines() == [
        "PID USER COMMAND       TCPSND TCPSNDB TCPRCV TCPRCVB UDPSND UDPSNDB UDPRCV UDPRCVB",
        "400 -    wget <exited>      1     2 B      3     4 B      5     6 B      7     8 B",
    ]


def test_query_threads_says_there_are_none(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--threads", columns=100)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "TID TGID USER COMMAND TCPSND TCPSNDB TCPRCV TCPRCVB UDPSND UDPSNDB UDPRCV UDPRCVB"
    ]
    assert result.stderr == f"netatop: {commands.NO_THREAD_ROWS}\n"
    asked = invoke("query", "--run-dir", str(run_dir), "--threads", "100")
    assert asked.exit_code == 1
    assert "netatop: no thread rows for 100" in asked.stderr.splitlines()


def test_query_threads_lists_thread_rows(tmp_path: Path) -> None:
    threads = [
        TaskRow(Kind.THREAD, 501, 500, 7000, "worker", (2, 300, 0, 0, *ZERO), 0.0),
        TaskRow(Kind.THREAD, 500, 500, 7000, "main", (1, 100, 1, 100, *ZERO), 0.0),
        TaskRow(Kind.THREAD, 601, 600, 8000, "other", (*ZERO, 1, 60, 1, 60), 0.0),
    ]
    writer = TableWriter(table_path(str(tmp_path)), 8, 250)
    writer.publish([NGINX, *threads], {})
    try:
        result = invoke(
            "query", "--run-dir", str(tmp_path), "--threads", "--sort", "pid", "500", columns=100
        )
        assert result.exit_code == 0
        assert result.stdout.splitlines() == [
            "TID TGID USER COMMAND TCPSND TCPSNDB TCPRCV TCPRCVB UDPSND UDPSNDB UDPRCV UDPRCVB",
            "500  500 -    main         1   100 B      1   100 B      0     0 B      0     0 B",
            "501  500 -    worker       2   300 B      0     0 B      0     0 B      0     0 B",
        ]
        # by bytes: worker 300, main 200, other 120
        as_rows = json.loads(
            invoke("query", "--run-dir", str(tmp_path), "--threads", "--json").stdout
        )
        assert [(r["pid"], r["tgid"], r["kind"]) for r in as_rows] == [
            (501, 500, "thread"),
            (500, 500, "thread"),
            (601, 600, "thread"),
        ]
    finally:
        writer.close()


def test_json_and_csv_together_are_refused(run_dir: Path) -> None:
    result = invoke("query", "--run-dir", str(run_dir), "--json", "--csv")
    assert result.exit_code == 2
    assert "--json and --csv exclude each other" in result.stderr


# --------------------------------------------------------------------------- not running


def test_every_command_without_a_daemon_says_so_and_exits_2(tmp_path: Path) -> None:
    sentence = (
        f"netatop: netatopd is not running (no control socket at {tmp_path}/control; "
        f"run directory {tmp_path} from --run-dir; the default is /run/netatop; "
        "give another with --run-dir or NETATOP_RUN_DIR)\n"
    )
    for command in (
        ["query"],
        ["query", "--threads"],
        ["status"],
        ["exited"],
        ["sync"],
        ["gc"],
        ["wait-exit"],
        ["wait-empty"],
        ["top", "--iterations", "1"],
    ):
        result = invoke(*command, "--run-dir", str(tmp_path))
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", sentence), command


def test_a_wrong_run_directory_names_the_option_the_variable_and_the_default(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere"
    for command in (["status"], ["query"], ["top", "--iterations", "1"], ["sync"]):
        given = invoke(*command, "--run-dir", str(missing))
        assert (given.exit_code, given.stdout) == (2, ""), command
        assert given.stderr == (
            f"netatop: netatopd is not running, or not with this run directory: {missing} "
            "(from --run-dir) does not exist; the default is /run/netatop; give another with "
            "--run-dir or NETATOP_RUN_DIR\n"
        ), command
    from_env = invoke("query", NETATOP_RUN_DIR=str(missing))
    assert f"{missing} (from NETATOP_RUN_DIR) does not exist" in from_env.stderr
    # A leftover socket nobody listens on: not running, said the same way.
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(tmp_path / "control"))
    leftover.close()
    for command in (["top", "--iterations", "1"], ["gc"]):
        stale = invoke(*command, "--run-dir", str(tmp_path))
        assert stale.exit_code == 2 and stale.stderr.startswith(
            f"netatop: netatopd is not running (nobody answers on {tmp_path}/control; "
        ), command


def test_run_dir_from_the_environment(run_dir: Path) -> None:
    result = invoke("query", "--json", "100", NETATOP_RUN_DIR=str(run_dir))
    assert json.loads(result.stdout) == [as_json(NGINX)]


DEAD_WRITER = """
import sys
from netatopd.table import TableReader, TableWriter
from netatopd.tasks import Kind, TaskRow
writer = TableWriter(sys.argv[1], 4, 250)
writer.publish([TaskRow(Kind.PROCESS, 9, 9, 1, "gone", (0,) * 8, 0.0)], {})
with TableReader(sys.argv[1]) as reader:
    print(reader.snapshot().updated_s)
writer.close(unlink=False)
"""


def test_table_of_a_dead_daemon_is_stale_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", DEAD_WRITER, table_path(str(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    updated_s = float(done.stdout)
    before_s = time.time()
    for command in (["query"], ["top", "--iterations", "1"]):
        result = invoke(*command, "--run-dir", str(tmp_path))
        assert result.exit_code == 2 and result.stdout == ""
        clock = datetime.fromtimestamp(updated_s).strftime("%H:%M:%S")
        match = re.fullmatch(
            rf"netatop: netatopd is not running \(table last updated {clock}, (\d+) s ago\)\n",
            result.stderr,
        )
        assert match is not None, result.stderr
        assert 0 <= int(match.group(1)) <= time.time() - updated_s + 1
    assert time.time() - before_s < 60


def test_table_not_updated_for_long_is_reported_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_ns = time.time_ns() - 60 * 10**9  # a publish 60 s ago, by a live writer (this process)
    writer = TableWriter(table_path(str(tmp_path)), 4, 250)
    monkeypatch.setattr(time, "time_ns", lambda: old_ns)
    writer.publish([NGINX], {})
    monkeypatch.undo()
    try:
        result = invoke("query", "--run-dir", str(tmp_path))
        clock = datetime.fromtimestamp(old_ns / 1e9).strftime("%H:%M:%S")
        assert result.exit_code == 2
        assert re.fullmatch(
            rf"netatop: netatopd \(pid {os.getpid()}\) has not updated its table for "
            rf"(60|61) s \(last update {clock}\); it may be stuck\n",
            result.stderr,
        ), result.stderr
    finally:
        writer.close()


# --------------------------------------------------------------------------- control socket


# The fake exit list's first and last activity and exit time (epoch seconds), by pid.
EXIT_TIMES: dict[int, tuple[float, float, float | None]] = {}


def as_exited_json(row: TaskRow) -> dict[str, Any]:
    """A row of the exit list in JSON: as_json, then its times (EXIT_TIMES)."""
    first, last, exit_time = EXIT_TIMES[row.id]
    return {
        **as_json(row, "exited"),
        "first_activity": first,
        "last_activity": last,
        "exit_time": exit_time,
    }


class FakeDaemon:
    """A control socket answering from fixed records (the wire format of protocol.py)."""

    def __init__(self, run_dir: Path, status: dict[str, Any]) -> None:
        self.status = status
        self.tasks = [NGINX, CURL]
        self.exited = [WGET_EXITED, DIG]
        self.gc_runs = 0
        self.syncs = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(run_dir / "control"))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @staticmethod
    def record(row: TaskRow) -> bytes:
        return pack_netpertask(row.id, row.btime, row.command, row.counters)

    @staticmethod
    def detail(row: TaskRow) -> dict[str, Any]:
        """The object the *_DETAIL commands answer for row (protocol.DETAIL_FIELDS)."""
        first, last, exit_time = EXIT_TIMES.get(row.id, (0.0, 0.0, None))
        return {
            "tgid": row.tgid,
            "btime": row.btime,
            "command": row.command,
            "cmdline": row.cmdline,
            "uid": row.uid,
            "unit": row.unit,
            "container": row.container,
            "cgroup": row.cgroup,
            "first_activity": first,
            "last_activity": last,
            "exit_time": exit_time,
            **dict(zip(COUNTERS, row.counters, strict=True)),
        }

    def answer(self, command: int, task_id: int) -> tuple[int, bytes]:
        if command == Command.LIST_TASKS_DETAIL:
            return 0, json.dumps([self.detail(r) for r in self.tasks]).encode()
        if command == Command.LIST_EXIT_DETAIL:
            return 0, json.dumps([self.detail(r) for r in self.exited]).encode()
        if command == Command.GETCNT_EXIT_DETAIL:
            return 0, json.dumps(self.detail(self.exited.pop(0))).encode()
        if command == Command.PROBE:
            return 0, b"netatopd fake"
        if command == Command.STATUS:
            return 0, json.dumps(self.status).encode()
        if command == Command.LIST_TASKS:
            return 0, b"".join(self.record(r) for r in self.tasks)
        if command == Command.LIST_EXIT:
            return 0, b"".join(self.record(r) for r in self.exited)
        if command == Command.GETCNT_TGID:
            for row in self.tasks:
                if row.id == task_id:
                    return 0, self.record(row)
            return 3, b""  # ESRCH
        if command == Command.GETCNT_EXIT:
            return 0, self.record(self.exited.pop(0))
        if command == Command.FORCE_GC:
            self.gc_runs += 1
            return 0, b""
        if command in (Command.SYNC, Command.EMPTY_EXIT):
            self.syncs += 1
            return 0, b""
        return 22, b""

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                while True:
                    request = conn.recv(REQUEST.size, socket.MSG_WAITALL)
                    if len(request) < REQUEST.size:
                        break
                    magic, command, task_id, _ = REQUEST.unpack(request)
                    assert magic == REQUEST_MAGIC
                    error, payload = self.answer(command, task_id)
                    conn.sendall(REPLY.pack(REPLY_MAGIC, command, error, len(payload)) + payload)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


STATUS = {
    "version": "0.1.0",
    "tcp_sent": 10,
    "tcp_received": 12,
    "udp_sent": 80,
    "udp_received": 81,
    "tcp_sent_unidentified": 1,
    "tcp_received_unidentified": 2,
    "udp_sent_unidentified": 3,
    "udp_received_unidentified": 4,
    "icmp_sent": 5,
    "icmp_received": 6,
    "malformed": 7,
    "rejected": {"truncated": 7, "not_ip": 0},
    "flows": 13,
    "flows_overflow": 14,
    "flows_pending": 15,
    "flows_written_off": 16,
    "tasks": 17,
    "tasks_overflow": 18,
    "exited": 19,
    "exited_expired": 20,
    "capture_received": 21,
    "capture_dropped": 22,
    "capture_interface_dropped": 23,
    "packets_counted": 24,
    "resolver_lookups": 25,
    "resolver_misses": 26,
    "resolver_not_found": 27,
    "resolver_endpoint_finds": 28,
    "inode_full_scans": 29,
    "proc_denied": 30,
    "owner_latency_samples": 100,
    "owner_latency_ms_p50": 1.5,
    "owner_latency_ms_p99": 4.25,
    "owner_latency_ms_max": 9.0,
    "table_capacity": 64,
    "history": "/var/lib/netatop/netatop.db",
    "history_persisted": 31,
    "history_samples": 32,
    "history_pending": 33,
    "history_dropped": 34,
    "history_disk_full_skips": 35,
    "history_write_errors": 36,
    "ownership": "proc",
    "uptime_s": 90061.5,  # 1 day, 01:01:01
    "gc_runs": 37,
    "something_new": 38,
}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(tmp_path, STATUS)
    try:
        yield daemon
    finally:
        daemon.close()


def test_status_json_is_the_raw_status_object(fake: FakeDaemon, tmp_path: Path) -> None:
    result = invoke("status", "--json", "--run-dir", str(tmp_path))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == STATUS


def test_status_human_groups_every_figure(fake: FakeDaemon, tmp_path: Path) -> None:
    writer = TableWriter(table_path(str(tmp_path)), 64, 250)
    writer.publish(ROWS, {})
    try:
        with TableReader(table_path(str(tmp_path))) as reader:
            clock = datetime.fromtimestamp(reader.snapshot().updated_s).strftime("%H:%M:%S")
        result = invoke("status", "--run-dir", str(tmp_path))
    finally:
        writer.close()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "netatopd 0.1.0, owner resolution: proc, up 1 d 01:01:01",
        f"Run directory {tmp_path}",
        "",
        "Packets SENT RECEIVED UNIDENTIFIED SENT UNIDENTIFIED RECEIVED",
        "  TCP     10       12                 1                     2",
        "  UDP     80       81                 3                     4",
        "  ICMP     5        6                 -                     -",
        "Malformed     7 (rejected: truncated 7)",
        "Flows         13 (overflow 14, pending owner 15, written off 16)",
        "Tasks         17 (overflow 18)",
        "Exit list     19 (expired unread 20)",
        "Capture       received 21, dropped 22, dropped by the interface 23,",
        "              packets counted 24",
        "Table         5 rows of 64 (7.8%), processes 4, threads 0, exited 1, refused 0,",
        f"              updated {clock}",
        "History       /var/lib/netatop/netatop.db: persisted 31, samples 32, pending 33,",
        "              dropped 34, disk-full skips 35, write errors 36",
        "More with --verbose: Sweep, Resolver",
    ]
    assert "something_new" not in result.stdout  # not in the registry: --json only
    # The daemon's internals only with --verbose (issue 15: no wall of internal counters).
    verbose = status_lines(dict(STATUS), None, str(tmp_path), 80, verbose=True)
    assert "Sweep         runs 37" in verbose
    assert verbose[
        verbose.index("Sweep         runs 37") + 3 : verbose.index("Sweep         runs 37") + 6
    ] == [
        "Resolver      lookups 25, misses 26, not found 27, endpoint finds 28,",
        "              new flows timed 100, owner known after 1.5 ms (p50), 4.2 ms (p99),",
        "              9.0 ms (max), full inode scans 29, /proc denied 30",
    ]
    assert not any(line.startswith("More with --verbose") for line in verbose)


KERNEL_STATUS = {
    **STATUS,
    "ownership": "kernel",
    "ownership_note": "eBPF helper (sock_send_length, sock_recv_length, inet_sock_set_state)",
    "capture_lanes": 3,
    "capture_holds": 41,
    "capture_hold_ms": 50,
    "capture_lanes_fallback": "one handle: filter refused",
    "resolver_udp_rechecks": 42,
    "ebpf_load_ms": 43,
    "ebpf_sock_send_length_run_cnt": 44,
    "ebpf_flow_update_failed": 45,
    "ebpf_drains": 46,
    "resolver_kernel_finds": 47,
    "atop_clients": 1,
    "atop_requests": 48,
    "atop_answers": 49,
    "atop_abandoned": 0,
    "atop_garbage": 0,
    "atop_journal": 2,
    "atop_journal_dropped": 0,
    "history_persisted": 0,  # a group whose figures are 0 still shows
}


def test_status_verbose_adds_the_ebpf_internals_under_their_heading() -> None:
    plain = status_lines(dict(KERNEL_STATUS), None, "/run/netatop", 80)
    verbose = status_lines(dict(KERNEL_STATUS), None, "/run/netatop", 80, verbose=True)
    assert plain[0] == "netatopd 0.1.0, owner resolution: kernel, up 1 d 01:01:01"
    start = plain.index("Exit list     19 (expired unread 20)")
    assert plain[start:] == [
        "Exit list     19 (expired unread 20)",
        "Capture       received 21, dropped 22, dropped by the interface 23,",
        "              packets counted 24, lanes 3, holds 41, hold 50 ms,",
        "              fallback one handle: filter refused",
        "Owners from   eBPF helper (sock_send_length, sock_recv_length, inet_sock_set_state)",
        "Table         capacity 64, not readable: no table file in the run directory",
        "History       /var/lib/netatop/netatop.db: persisted 0, samples 32, pending 33,",
        "              dropped 34, disk-full skips 35, write errors 36",
        "More with --verbose: Sweep, Resolver, Atop socket, eBPF",
    ]
    assert not any(line.startswith("eBPF") or "run cnt" in line for line in plain)
    start = verbose.index("Exit list     19 (expired unread 20)")
    assert verbose[:start] == plain[:start]
    assert verbose[start:] == [
        "Exit list     19 (expired unread 20)",
        "Sweep         runs 37",
        "Capture       received 21, dropped 22, dropped by the interface 23,",
        "              packets counted 24, lanes 3, holds 41, hold 50 ms,",
        "              fallback one handle: filter refused",
        "Owners from   eBPF helper (sock_send_length, sock_recv_length, inet_sock_set_state)",
        "Resolver      lookups 25, misses 26, not found 27, endpoint finds 28,",
        "              UDP rechecks 42, new flows timed 100,",
        "              owner known after 1.5 ms (p50), 4.2 ms (p99), 9.0 ms (max),",
        "              full inode scans 29, /proc denied 30, kernel finds 47",
        "Table         capacity 64, not readable: no table file in the run directory",
        "Atop socket   clients 1, requests 48, answers 49, abandoned 0, garbage 0,",
        "              journal 2, journal dropped 0",
        "History       /var/lib/netatop/netatop.db: persisted 0, samples 32, pending 33,",
        "              dropped 34, disk-full skips 35, write errors 36",
        "eBPF          load ms 43, sock send length run cnt 44, flow update failed 45,",
        "              drains 46",
    ]


def test_query_falls_back_to_the_control_socket_without_a_table(
    fake: FakeDaemon, tmp_path: Path
) -> None:
    result = invoke("query", "--run-dir", str(tmp_path), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [as_json(NGINX), as_json(CURL)]
    missing = invoke("query", "--run-dir", str(tmp_path), "--json", "300", "200", "999")
    assert missing.exit_code == 1
    # 200 is in the exit list: its final counters
    assert json.loads(missing.stdout) == [as_json(CURL), as_json(DIG, "exited")]
    assert missing.stderr.splitlines() == [
        "netatop: process 200 has finished: its final counters, from the exit list (kind exited)",
        UNKNOWN_999,
    ]


def test_exited_lists_the_exit_list(fake: FakeDaemon, tmp_path: Path) -> None:
    """With who each process is and its exit time, as the history gives them."""
    result = invoke("exited", "--run-dir", str(tmp_path), "--json")
    assert json.loads(result.stdout) == [as_exited_json(WGET_EXITED), as_exited_json(DIG)]
    assert list(json.loads(result.stdout)[1]) == list(EXITED_FIELDS)
    limited = invoke("exited", "--run-dir", str(tmp_path), "--csv", "--limit", "1")
    assert limited.stdout.splitlines() == [
        ",".join(EXITED_FIELDS),
        f"400,400,exited,5000,wget,1,2,3,4,5,6,7,8,,,,,,,{T0 + 10.0},{T0 + 20.0},{T0 + 30.5}",
    ]
    dig = invoke("exited", "--run-dir", str(tmp_path), "--csv", "--pid", "200")
    assert dig.stdout.splitlines()[1] == (
        "200,200,exited,2000,dig,0,0,0,0,50,5000,50,15000,54321,54321,"
        f"dig @192.0.2.53 example.org,docker-{'d' * 64}.scope,{DIG_CONTAINER},"
        f"/system.slice/docker-{'d' * 64}.scope,{T0 + 40.0},{T0 + 50.0},{T0 + 61.25}"
    )
    assert fake.exited == [WGET_EXITED, DIG]  # read, not consumed


def test_exited_from_the_exit_list_piped_cuts_no_command_line(
    fake: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_cmdline = "python3 -m http.server --bind 192.0.2.1 8080 " + "--directory /srv/x " * 6
    fake.exited = [DIG._replace(cmdline=long_cmdline)]
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        piped = CliRunner().invoke(
            commands.app,
            ["exited", "--run-dir", str(tmp_path)],
            prog_name="netatop",
            env={"COLUMNS": None, "NETATOP_RUN_DIR": None},
        )
        narrow = invoke("exited", "--run-dir", str(tmp_path), columns=80)
    finally:
        monkeypatch.undo()
        time.tzset()
    # 4.88 KiB sent, 14.6 KiB received in 50 and 50 datagrams; exit 2026-11-27 00:01:01
    row = "200 54321 2026-11-27 00:01:01    50 4.88 KiB    50 14.6 KiB "
    assert piped.stdout.splitlines() == [
        "PID USER  EXITED              SNDPK     SENT RCVPK     RCVD CMDLINE",
        row + long_cmdline.rstrip(),
    ]
    assert len(piped.stdout.splitlines()[1]) > 160
    # a terminal of 80 columns: 80 characters, the last one the marker
    cut_line = narrow.stdout.splitlines()[1]
    assert len(cut_line) == 80 and cut_line.endswith("\u2026")
    assert cut_line == row + long_cmdline[: 80 - len(row) - 1] + "\u2026"


def test_wait_exit_consumes_and_prints_one_object_a_line(fake: FakeDaemon, tmp_path: Path) -> None:
    result = invoke("wait-exit", "--run-dir", str(tmp_path), "--json", "--count", "2")
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        as_exited_json(WGET_EXITED),
        as_exited_json(DIG),
    ]
    assert fake.exited == []


def test_wait_exit_human_lines(fake: FakeDaemon, tmp_path: Path) -> None:
    result = invoke("wait-exit", "--run-dir", str(tmp_path), "--count", "2")
    assert result.stdout.splitlines() == [
        "pid=400 tgid=400 kind=exited btime=5000 command=wget tcpsndpacks=1 tcpsndbytes=2 "
        "tcprcvpacks=3 tcprcvbytes=4 udpsndpacks=5 udpsndbytes=6 udprcvpacks=7 udprcvbytes=8 "
        "uid=- user=- cmdline=- unit=- container=- cgroup=- "
        f"first_activity={T0 + 10.0} last_activity={T0 + 20.0} exit_time={T0 + 30.5}",
        "pid=200 tgid=200 kind=exited btime=2000 command=dig tcpsndpacks=0 tcpsndbytes=0 "
        "tcprcvpacks=0 tcprcvbytes=0 udpsndpacks=50 udpsndbytes=5000 udprcvpacks=50 "
        'udprcvbytes=15000 uid=54321 user=54321 cmdline="dig @192.0.2.53 example.org" '
        f"unit=docker-{'d' * 64}.scope container={DIG_CONTAINER} "
        f"cgroup=/system.slice/docker-{'d' * 64}.scope "
        f"first_activity={T0 + 40.0} last_activity={T0 + 50.0} exit_time={T0 + 61.25}",
    ]


def test_sync_gc_wait_empty(fake: FakeDaemon, tmp_path: Path) -> None:
    for command in ("sync", "gc", "wait-empty"):
        result = invoke(command, "--run-dir", str(tmp_path))
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", ""), command
    assert (fake.gc_runs, fake.syncs) == (1, 2)


# --------------------------------------------------------------------------- SQLite

T0 = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp())  # 2026-11-27 00:00:00 UTC
# exited: tgid, btime, command, cmdline, uid, first, last, exit_time, 8 counters
EXITED_ROWS = [
    (200, 2000, "curl", "curl https://example.org/", 1000, T0 + 4700.0, T0 + 4790.0, T0 + 4900.0)
    + (3, 300, 4, 4000, 1, 100, 1, 200),
    (300, 3000, "dig", "dig example.org", 1000, T0 + 7250.0, T0 + 7255.0, T0 + 7300.5)
    + (0, 0, 0, 0, 2, 150, 2, 350),
    (400, 4000, "ssh", None, None, T0 + 550.0, T0 + 600.0, T0 + 700.0) + (1, 60, 1, 40, 0, 0, 0, 0),
    (500, 5000, "scp", "scp big host:", 0, T0 + 100.0, T0 + 200.0, T0 + 9000.0)
    + (10, 5_000_000, 20, 1000, 0, 0, 0, 0),
]
EXIT_TIMES.update({400: (T0 + 10.0, T0 + 20.0, T0 + 30.5), 200: (T0 + 40.0, T0 + 50.0, T0 + 61.25)})


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    path = tmp_path / "history.db"
    conn = open_db(str(path))
    with conn:
        conn.executemany(EXITED_INSERT_V1, EXITED_ROWS)
    conn.close()
    try:
        yield path
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.fixture
def users(monkeypatch: pytest.MonkeyPatch) -> None:
    """User names that do not depend on this machine: 0 is root, 1000 alice, others none."""
    names = {0: "root", 1000: "alice"}

    def getpwuid(uid: int) -> pwd.struct_passwd:
        if uid not in names:
            raise KeyError(uid)
        return pwd.struct_passwd((names[uid], "x", uid, uid, "", "/", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)


def exited_json(row: tuple[Any, ...]) -> dict[str, Any]:
    tgid, btime, command, cmdline, uid, first, last, exit_time = row[:8]
    return {
        "pid": tgid,
        "tgid": tgid,
        "kind": "exited",
        "btime": btime,
        "command": command,
        **dict(zip(COUNTERS, row[8:], strict=True)),
        "cmdline": cmdline,
        "uid": uid,
        "first_activity": first,
        "last_activity": last,
        "exit_time": exit_time,
        "user": format_user(uid) if uid is not None else None,
        "unit": None,  # rows of schema version 1: where the process ran is unknown
        "container": None,
        "cgroup": None,
    }


@pytest.fixture(autouse=True)
def _fresh_user_names() -> None:
    """Each test looks its user names up afresh (some replace the passwd database)."""
    USER_NAMES.clear()


def test_exited_since_reads_sqlite(history: Path) -> None:
    # [01:00, 02:30): curl (exit 01:21:40) and dig (02:01:40.5); ssh (00:11:40) before, scp (02:30) at the end: excluded
    result = invoke(
        "exited", "--db", str(history), "--json", "--since", "2026-11-27T01:00Z",
        "--until", "2026-11-27T02:30Z",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [exited_json(EXITED_ROWS[0]), exited_json(EXITED_ROWS[1])]
    everything = invoke("exited", "--db", str(history), "--json", "--since", f"@{T0}")
    assert [r["pid"] for r in json.loads(everything.stdout)] == [400, 200, 300, 500]  # by exit time
    limited = invoke("exited", "--db", str(history), "--json", "--since", f"@{T0}", "--limit", "1")
    assert json.loads(limited.stdout) == [exited_json(EXITED_ROWS[2])]


def test_exited_since_human_and_csv(history: Path, users: None) -> None:
    result = invoke("exited", "--db", str(history), "--since", f"@{T0}", columns=100)
    # scp: sent 5_000_000 = 4.77 MiB; curl received 4200 = 4.10 KiB; ssh has no uid or cmdline;
    # times in local time (TZ=UTC here) with the year, users by name
    lines = result.stdout.splitlines()
    assert lines == [
        "PID USER  EXITED              SNDPK     SENT RCVPK     RCVD CMDLINE",
        "400 -     2026-11-27 00:11:40     1     60 B     1     40 B [ssh]",
        "200 alice 2026-11-27 01:21:40     4    400 B     5 4.10 KiB curl https://example.org/",
        "300 alice 2026-11-27 02:01:40     2    150 B     2    350 B dig example.org",
        "500 root  2026-11-27 02:30:00    10 4.77 MiB    20   1000 B scp big host:",
    ]
    as_csv = invoke("exited", "--db", str(history), "--csv", "--since", f"@{T0}", "--limit", "1")
    assert as_csv.stdout.splitlines() == [
        "pid,tgid,kind,btime,command,tcpsndpacks,tcpsndbytes,tcprcvpacks,tcprcvbytes,"
        "udpsndpacks,udpsndbytes,udprcvpacks,udprcvbytes,uid,user,cmdline,unit,container,"
        "cgroup,first_activity,last_activity,exit_time",
        f"400,400,exited,4000,ssh,1,60,1,40,0,0,0,0,,,,,,,{T0 + 550.0},{T0 + 600.0},{T0 + 700.0}",
    ]


def test_exited_since_without_a_database_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = invoke("exited", "--db", str(missing), "--since", "2h")
    assert result.exit_code == 2
    assert result.stderr == (
        f"netatop: {missing}: no history database here (has netatopd run with --db?)\n"
    )


def test_bad_time_is_a_usage_error(history: Path) -> None:
    result = invoke("exited", "--db", str(history), "--since", "yesterday-ish")
    assert result.exit_code == 2
    assert "cannot read time 'yesterday-ish'" in result.stderr


def read_report_headers() -> dict[str, str]:
    """name -> description from the first line of each sql/reports file ('-- name: text')."""
    headers = {}
    for path in sorted((REPO / "sql" / "reports").glob("*.sql")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        name, _, description = first.removeprefix("--").partition(":")
        headers[name.strip()] = description.strip()
    return headers


def test_report_list_names_and_descriptions() -> None:
    headers = read_report_headers()
    assert {"top-processes", "by-command", "by-user", "hourly", "recent-exits"} <= set(headers)
    result = invoke("report", "--list")
    assert result.exit_code == 0
    width = max(len(name) for name in headers)
    assert result.stdout.splitlines() == [
        f"{name:<{width}}  {text}" for name, text in headers.items()
    ]
    as_json_list = json.loads(invoke("report", "--list", "--format", "json").stdout)
    assert [(r["name"], r["description"]) for r in as_json_list] == list(headers.items())


def test_report_top_exited_json_table_csv(history: Path, users: None) -> None:
    # total_bytes: scp 5_001_000, curl 4600, dig 500, ssh 100 -> largest first.
    result = invoke(
        "report", "top-exited", "--db", str(history), "--format", "json", "--limit", "2"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "pid": 500, "btime": 5000, "command": "scp", "uid": 0,
            "exit_time": T0 + 9000.0, "sndpacks": 10, "sndbytes": 5_000_000,
            "rcvpacks": 20, "rcvbytes": 1000, "total_bytes": 5_001_000, "cmdline": "scp big host:",
        },
        {
            "pid": 200, "btime": 2000, "command": "curl", "uid": 1000,
            "exit_time": T0 + 4900.0, "sndpacks": 4, "sndbytes": 400,
            "rcvpacks": 5, "rcvbytes": 4200, "total_bytes": 4600,
            "cmdline": "curl https://example.org/",
        },
    ]  # fmt: skip
    table = invoke("report", "top-exited", "--db", str(history), columns=200)
    # The headers of exited; times local (TZ=UTC) with the year; NULL uid and cmdline: "-".
    assert table.stdout.splitlines() == [
        "PID STARTED             COMMAND USER  EXITED              SNDPK     SENT RCVPK     RCVD"
        "    TOTAL CMDLINE",
        "500 1970-01-01 01:23:20 scp     root  2026-11-27 02:30:00    10 4.77 MiB    20   1000 B"
        " 4.77 MiB scp big host:",
        "200 1970-01-01 00:33:20 curl    alice 2026-11-27 01:21:40     4    400 B     5 4.10 KiB"
        " 4.49 KiB curl https://example.org/",
        "300 1970-01-01 00:50:00 dig     alice 2026-11-27 02:01:40     2    150 B     2    350 B"
        "    500 B dig example.org",
        "400 1970-01-01 01:06:40 ssh     -     2026-11-27 00:11:40     1     60 B     1     40 B"
        "    100 B -",
    ]
    # The same words in the exited table, the report table and the JSON fields.
    exited_header = invoke("exited", "--db", str(history), "--since", f"@{T0}").stdout
    assert set(exited_header.splitlines()[0].split()) <= set(table.stdout.splitlines()[0].split())
    as_csv = invoke(
        "report",
        "top-exited",
        "--db",
        str(history),
        "--format",
        "csv",
        "--since",
        "2026-11-27T02:00Z",
    )
    assert as_csv.stdout.splitlines() == [
        "pid,btime,command,uid,exit_time,sndpacks,sndbytes,rcvpacks,rcvbytes,total_bytes,cmdline",
        f"500,5000,scp,0,{T0 + 9000.0},10,5000000,20,1000,5001000,scp big host:",
        f"300,3000,dig,1000,{T0 + 7300.5},2,150,2,350,500,dig example.org",
    ]


def test_report_errors_exit_2(history: Path, tmp_path: Path) -> None:
    unknown = invoke("report", "no-such-report", "--db", str(history))
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("netatop: no report named 'no-such-report'; known: ")
    missing = invoke("report", "hourly", "--db", str(tmp_path / "absent.db"))
    assert missing.exit_code == 2
    assert missing.stderr == (
        f"netatop: {tmp_path / 'absent.db'}: no history database here "
        "(has netatopd run with --db?)\n"
    )
    nothing = invoke("report")
    assert nothing.exit_code == 2 and "give a report NAME, or --list" in nothing.stderr


def test_report_grouped_by_user_names_the_users_in_tables(history: Path, users: None) -> None:
    # exited by uid: scp (0) 5_001_000 bytes; curl + dig (1000) 4600 + 500; ssh (NULL) 100
    as_json_rows = invoke(
        "report", "top-exited-groups", "--by", "user", "--db", str(history), "--format", "json"
    )
    assert as_json_rows.exit_code == 0, as_json_rows.output
    assert [
        (r["key"], r["processes"], r["total_bytes"]) for r in json.loads(as_json_rows.stdout)
    ] == [
        (0, 1, 5_001_000),
        (1000, 2, 5100),
        (None, 1, 100),
    ]
    table = invoke("report", "top-exited-groups", "--by", "user", "--db", str(history))
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["GROUP", "PROCS"]
    assert [line.split()[:2] for line in lines[1:]] == [["root", "1"], ["alice", "2"], ["-", "1"]]


def test_report_by_on_a_report_without_groups_exits_2(history: Path) -> None:
    result = invoke("report", "top-exited", "--by", "unit", "--db", str(history))
    assert result.exit_code == 2
    assert result.stderr == "netatop: report top-exited takes no parameter :by\n"


# --------------------------------------------------------------------------- top


def rates_snapshot(run_dir: Path) -> Any:
    with TableReader(table_path(str(run_dir))) as reader:
        return reader.snapshot()


def test_rate_rows_are_deltas_over_the_publish_interval(tmp_path: Path) -> None:
    writer = TableWriter(table_path(str(tmp_path)), 8, 250)
    try:
        writer.publish([NGINX, DIG], {})
        first = rates_snapshot(tmp_path)
        grown = TaskRow(
            Kind.PROCESS,
            100,
            100,
            1000,
            "nginx",
            (3_000_010, 2_097_152 + 4000, 1201, 90_100, *ZERO),
            0.0,
        )
        reused = TaskRow(
            Kind.PROCESS, 200, 200, 2999, "dig", (*ZERO, 2, 100, 0, 0), 0.0
        )  # pid reused
        writer.publish([grown, reused], {})
        second = rates_snapshot(tmp_path)
    finally:
        writer.close()
    elapsed = second.updated_s - first.updated_s
    rows = {r.pid: r for r in rate_rows(first, second)}
    assert rows[100].tcpsndpacks * elapsed == pytest.approx(10)
    assert rows[100].tcpsndbytes * elapsed == pytest.approx(4000)
    assert rows[100].tcprcvbytes * elapsed == pytest.approx(100)
    assert rows[100].total_bytes == 2_097_152 + 4000 + 90_100
    # (200, 2999) is another process than (200, 2000): all its counters are new.
    assert rows[200].udpsndbytes * elapsed == pytest.approx(100)


def test_top_frame_fits_80x24_and_sorts() -> None:
    rows = []
    for pid in range(1, 41):  # 40 processes, pid n sends n KiB/s
        rates = {
            **dict.fromkeys(COUNTERS, 0.0), "tcpsndbytes": pid * 1024.0, "tcpsndpacks": 1.0,
            "udprcvpacks": 41.0 - pid,
        }  # fmt: skip
        rows.append(TaskCounts(Kind.PROCESS, pid, pid, 1, f"proc{pid}", **rates, total_bytes=0))
    frame = top_frame(rows, SortKey.BYTES, 2.0, time.time(), (80, 24))
    assert len(frame) == 23 and max(len(line) for line in frame) <= 80
    # total sent: 1 + 2 + ... + 40 KiB = 820 KiB; packets 40 sent, 1 + ... + 40 = 820 received
    assert frame[2] == "total: sent 820 KiB/s 40.0 pk/s, received 0 B/s 820.0 pk/s, 40 processes"
    # TCP/s and UDP/s do not fit 80 columns: left out whole, the header says +2
    assert frame[4].split() == [
        "PID",
        "S",
        "USER",
        "COMMAND",
        "SENT/s",
        "RCVD/s",
        "SNDPK/s",
        "RCVPK/s",
        "TOTAL",
        "LAST",
        "MINUTE",
        "+2",
    ]
    assert [int(line.split()[0]) for line in frame[5:]] == list(range(40, 22, -1))
    by_packets = top_frame(rows, SortKey.PACKETS, 2.0, time.time(), (80, 24))
    assert [int(line.split()[0]) for line in by_packets[5:]] == list(range(1, 19))


class Publisher:
    """A writer thread that grows nginx by 10 packets of 1000 bytes every 100 ms."""

    def __init__(self, run_dir: Path) -> None:
        self.writer = TableWriter(table_path(str(run_dir)), 8, 100)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.publish(0)
        self.thread.start()

    def publish(self, step: int) -> None:
        nginx = NGINX._replace(counters=(10 * step, 10_000 * step, 0, 0, *ZERO))
        self.writer.publish([nginx, DIG], {})

    def run(self) -> None:
        step = 0
        while not self.stop.wait(0.1) and step < 1000:
            step += 1
            self.publish(step)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.writer.close()


def test_top_prints_frames_to_a_pipe(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    try:
        result = invoke("top", "--run-dir", str(tmp_path), "--iterations", "2", "--interval", "0.3")
    finally:
        publisher.close()
    assert result.exit_code == 0, result.output
    frames = re.split(r"\n\n(?=netatop top )", result.stdout.rstrip("\n"))
    assert len(frames) == 2
    for frame in frames:
        lines = frame.splitlines()
        assert lines[0].startswith("netatop top ") and "sorted by bytes" in lines[0]
        assert lines[1].startswith("total: ")  # no key help: nobody can type keys
        assert lines[2] == ""
        # every column, none left out (no +N)
        assert lines[3].split() == [
            "PID", "S", "USER", "COMMAND", "CONTAINER", "SENT/s", "RCVD/s", "SNDPK/s",
            "RCVPK/s", "TCP/s", "UDP/s", "TOTAL", "LAST", "MINUTE", "CMDLINE",
        ]  # fmt: skip
        assert lines[4].split()[:4] == ["100", "R", "root", "nginx"]  # the only one with traffic
        assert lines[5].split()[:2] == ["200", "R"] and lines[5].split()[3] == "dig"
        assert lines[5].split()[4:11] == ["docker:dddddddddddd", "0", "B", "0", "B", "0.0", "0.0"]
        assert "\x1b" not in frame and "q:quit" not in frame


def read_until(fd: int, pattern: bytes, timeout_s: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while pattern not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{pattern!r} not seen in {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def read_for(fd: int, seconds: float) -> bytes:
    """Everything written within seconds (the terminal is read, so that it never fills)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], remaining)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


# The child makes the terminal its controlling terminal (as a login shell would),
# so that Ctrl-C typed on it sends SIGINT; then runs netatop.
IN_TERMINAL = (
    "import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "sys.argv = ['netatop', *sys.argv[1:]]; runpy.run_module('netatopd.cli', run_name='__main__')"
)


def run_top_in_pty(
    run_dir: Path,
    steps: list[tuple[bytes | float, bytes]],
    *options: str,
    columns: int = 80,
    **env: str,
) -> tuple[int, bytes, list[Any], list[Any]]:
    """Start netatop top on a new 80x24 terminal; for each step wait for text, then type keys.

    A step waiting for a number of seconds instead of a text reads for that long.
    env is added to the environment (LANG=C.UTF-8 and no NO_COLOR unless given).
    Returns (exit status, everything written, terminal modes before, after).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    before = termios.tcgetattr(slave)
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in ("NO_COLOR", "LC_ALL", "LC_CTYPE", "LANG")
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-c", IN_TERMINAL, "top", "--run-dir", str(run_dir),
            "--interval", "0.3", *options,
        ],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
        env={
            **environ, "TERM": "xterm", "COLUMNS": "", "LINES": "", "LANG": "C.UTF-8", **env,
        },
    )  # fmt: skip
    seen = b""
    try:
        for expect, keys in steps:
            if isinstance(expect, bytes):
                seen += read_until(master, expect)
            else:
                seen += read_for(master, expect)
            os.write(master, keys)
        proc.wait(timeout=20)
        after = termios.tcgetattr(slave)
        seen += read_until(master, b"\x1b[?1049l", timeout_s=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return proc.returncode, seen, before, after


def test_top_in_a_terminal_shows_the_process_switches_sort_and_quits_on_q(
    tmp_path: Path,
) -> None:
    publisher = Publisher(tmp_path)
    try:
        code, seen, before, after = run_top_in_pty(
            tmp_path, [(b" nginx ", b"p"), (b"sorted by packets", b"q")]
        )
    finally:
        publisher.close()
    assert code == 0
    assert seen.startswith(b"\x1b[?1049h")  # alternate screen ...
    assert seen.endswith(b"\x1b[?25h\x1b[?1049l")  # ... left, cursor shown again
    # nginx runs in no container ("-"), dig in one (the CONTAINER column is there)
    assert re.search(rb"\r\n100 R root +nginx +- +\x1b\[33m *[0-9.]+ KiB\x1b\[0m ", seen)
    assert before == after  # terminal modes restored (echo, canonical input)
    assert (
        max(len(line) for line in re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).split(b"\r\n"))
        <= 80
    )


def test_top_in_a_terminal_quits_on_ctrl_c(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    try:
        code, seen, before, after = run_top_in_pty(tmp_path, [(b" nginx ", b"\x03")])
    finally:
        publisher.close()
    assert code == 0
    assert seen.endswith(b"\x1b[?25h\x1b[?1049l") and before == after


# --------------------------------------------------------------------------- help and manual


COMMANDS = ("status", "query", "top", "exited", "report", "sync", "gc", "wait-exit", "wait-empty")


def test_every_command_has_help_with_examples() -> None:
    registered = {
        c.name or (c.callback.__name__ if c.callback else "")
        for c in commands.app.registered_commands
    }
    assert registered == set(COMMANDS)
    for command in COMMANDS:
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Examples:" in result.stdout and f"netatop {command}" in result.stdout, command


def test_manual_page_lists_every_command_and_option() -> None:
    """Each command has a .SS section naming each of its options (the shared ones under OPTIONS)."""
    page = MAN_PAGE.read_text(encoding="utf-8")
    shared = page[page.index(".SH OPTIONS") : page.index(".SH TIMES")]
    assert "\\-\\-run\\-dir" in shared and "\\-\\-help" in shared
    options_seen = 0
    for command in COMMANDS:
        help_text = invoke(command, "--help").stdout
        start = page.index(f".SS {command.replace('-', chr(92) + '-')}\n")
        end = page.index("\n.S", start + 1)
        section = page[start:end]
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text)) - {
            "--help",
            "--run-dir",
        }:
            assert option.replace("-", "\\-") in section, (command, option)
            options_seen += 1
    # status 2, query 8 (--by, --cmdline, --db) + --pid --since (its pointer to the
    # history), top 8 (--by, --json, --csv), exited 7 + --control-group (who may read the
    # exit list), report 10, wait-exit 2
    assert options_seen == 40


def test_manual_page_renders_without_warnings() -> None:
    groff = "/usr/bin/groff"
    if not os.path.exists(groff):
        pytest.skip("groff is not installed (Debian package groff-base)")
    done = subprocess.run(
        [groff, "-man", "-ww", "-z", str(MAN_PAGE)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_sigterm_handler_is_restored_after_top(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    publisher = Publisher(tmp_path)
    try:
        result = invoke("top", "--run-dir", str(tmp_path), "--iterations", "1", "--interval", "0.2")
    finally:
        publisher.close()
    assert result.exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_status_without_a_table_says_why(fake: FakeDaemon, tmp_path: Path) -> None:
    result = invoke("status", "--run-dir", str(tmp_path))
    assert result.exit_code == 0
    table_lines = [line for line in result.stdout.splitlines() if line.startswith("Table ")]
    assert table_lines == [
        "Table         capacity 64, not readable: no table file in the run directory"
    ]


# --------------------------------------------------------------------------- issue 15


def test_exited_pid_from_the_exit_list(
    fake: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = invoke("exited", "--run-dir", str(tmp_path), "--pid", "200", "--json")
    assert (found.exit_code, json.loads(found.stdout)) == (0, [as_exited_json(DIG)])
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        table = invoke("exited", "--run-dir", str(tmp_path), "--pid", "400")
    finally:
        monkeypatch.undo()
        time.tzset()
    # sent 1 + 5 packets, 2 + 6 bytes; received 3 + 7, 4 + 8; exit at T0 + 30.5
    assert table.stdout.splitlines() == [
        "PID USER EXITED              SNDPK SENT RCVPK RCVD CMDLINE",
        "400 -    2026-11-27 00:00:30     6  8 B    10 12 B [wget]",
    ]  # the columns of exited --since: no <exited> mark, every row has finished
    gone = invoke("exited", "--run-dir", str(tmp_path), "--pid", "999", "--json")
    assert (gone.exit_code, json.loads(gone.stdout)) == (1, [])
    assert gone.stderr == (
        "netatop: process 999 is not in the exit list (it keeps a finished process for 15 s); "
        "netatop exited --pid 999 --since 1d looks in the history\n"
    )


def test_exited_pid_from_the_history(history: Path) -> None:
    found = invoke("exited", "--db", str(history), "--since", f"@{T0}", "--pid", "300", "--json")
    assert (found.exit_code, json.loads(found.stdout)) == (0, [exited_json(EXITED_ROWS[1])])
    gone = invoke("exited", "--db", str(history), "--since", f"@{T0}", "--pid", "999")
    assert gone.exit_code == 1
    assert gone.stderr == "netatop: no exit of process 999 in the history in that window\n"


def test_journalctl_times_and_a_reversed_window(history: Path) -> None:
    # The rows exited on 2026-11-27; "yesterday" and "2h ago" are long after that.
    for since in ("yesterday", "today", "2h ago", "10min", "now"):
        result = invoke("exited", "--db", str(history), "--json", "--since", since)
        assert (result.exit_code, json.loads(result.stdout)) == (0, []), since
    everything = invoke("exited", "--db", str(history), "--json", "--since", "1000 days ago")
    assert len(json.loads(everything.stdout)) == len(EXITED_ROWS)
    for command in (["exited"], ["report", "top-exited"]):
        reversed_window = invoke(*command, "--db", str(history), "--since", "5m", "--until", "10m")
        assert reversed_window.exit_code == 2 and reversed_window.stdout == ""
        assert "the window is empty: --since 5m (" in reversed_window.stderr
        assert ") is not before --until 10m (" in reversed_window.stderr


# An iperf3-like pair in the samples: the receiver (pid 500) and the sender (pid 501)
# moved 3_006_000 bytes each in the same minute.
IPERF_SAMPLES = [
    (T0 + 60, 60.0, 500, 5000, "iperf3", 0, 100, 6000, 2000, 3_000_000, 0, 0, 0, 0),
    (T0 + 60, 60.0, 501, 5001, "iperf3", 0, 2000, 3_000_000, 100, 6000, 0, 0, 0, 0),
    (T0 + 60, 60.0, 502, 5002, "curl", 1000, 10, 1000, 10, 2000, 0, 0, 0, 0),
]


def test_report_order_and_pid_name_the_sender(history: Path) -> None:
    conn = open_db(str(history))
    with conn:
        conn.executemany(SAMPLES_INSERT_V1, IPERF_SAMPLES)
    conn.close()

    def first(*options: str) -> list[int]:
        result = invoke("report", "top-processes", "--db", str(history), *options, "--format",
                        "json")  # fmt: skip
        assert result.exit_code == 0, result.output
        return [row["pid"] for row in json.loads(result.stdout)]

    assert first("--order", "sent", "--limit", "1") == [501]
    assert first("--limit", "1") == [501]  # a tie on bytes: the sender first
    assert first("--order", "received", "--limit", "1") == [500]
    assert first("--order", "sent-packets") == [501, 500, 502]
    assert first("--order", "received-packets") == [500, 501, 502]
    assert first("--pid", "502") == [502]
    table = invoke("report", "top-processes", "--db", str(history), "--order", "sent",
                   "--limit", "1", columns=200)  # fmt: skip
    assert table.stdout.splitlines() == [
        "PID STARTED             COMMAND USER SNDPK     SENT RCVPK     RCVD    TOTAL",
        "501 1970-01-01 01:23:21 iperf3  root  2000 2.86 MiB   100 5.86 KiB 2.87 MiB",
    ]
    refused = invoke("report", "top-processes", "--db", str(history), "--order", "pid")
    assert refused.exit_code == 2 and "'pid' is not one of" in refused.stderr


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control socket refuses us, as it refuses a user outside root and its group."""

    def refuse(run_dir: str | None = None, timeout_s: float | None = 30.0) -> None:
        path = os.path.join(run_dir or "/run/netatop", "control")
        raise PermissionError(13, f"no permission to use {path} (run as root)")

    monkeypatch.setattr(sources, "ControlClient", refuse)


def test_control_commands_as_another_user_name_the_group_and_the_history(
    tmp_path: Path, not_root: None
) -> None:
    sentence = (
        f"netatop: no permission to use {tmp_path}/control: run as root, or ask to be in the "
        "group netatopd gives its control socket (netatopd --control-group); netatop exited "
        "--since TIME works without it (it reads the history database, if that is readable)\n"
    )
    for command in (["sync"], ["gc"], ["exited"], ["wait-exit"], ["wait-empty"], ["status"]):
        result = invoke(*command, "--run-dir", str(tmp_path))
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", sentence), command


def test_status_as_another_user_shows_the_table(run_dir: Path, not_root: None) -> None:
    with TableReader(table_path(str(run_dir))) as reader:
        clock = datetime.fromtimestamp(reader.snapshot().updated_s).strftime("%H:%M:%S")
    result = invoke("status", "--run-dir", str(run_dir), columns=100)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"netatopd pid {os.getpid()}: figures from the shared table (updated {clock}),",
        "              the rest needs root or netatopd's --control-group",
        f"Run directory {run_dir}",
    ]
    assert "netatopd ?" not in result.stdout
    assert "  TCP     11        0                 0                     0" in lines
    assert any(line.startswith("Table         5 rows of 64") for line in lines)
    as_json_figures = invoke("status", "--run-dir", str(run_dir), "--json")
    assert json.loads(as_json_figures.stdout)["tcp_sent"] == 11
    assert as_json_figures.stderr.endswith("; figures from the shared table\n")


def test_top_sorts_by_sent_and_received() -> None:
    rows = [
        TaskCounts(Kind.PROCESS, 500, 500, 1, "receiver", 1.0, 100.0, 50.0, 9000.0, *ZERO),
        TaskCounts(Kind.PROCESS, 501, 501, 1, "sender", 50.0, 9000.0, 1.0, 100.0, *ZERO),
        TaskCounts(Kind.PROCESS, 502, 502, 1, "idle", *ZERO, *ZERO),
    ]
    for sort, order in (
        (SortKey.SENT, [501, 500, 502]),
        (SortKey.RECEIVED, [500, 501, 502]),
        (SortKey.SENT_PACKETS, [501, 500, 502]),
        (SortKey.RECEIVED_PACKETS, [500, 501, 502]),
        (SortKey.BYTES, [501, 500, 502]),  # a tie: the sender first
    ):
        frame = top_frame(rows, sort, 2.0, time.time(), (80, 24))
        assert f"sorted by {sort.value}" in frame[0]
        assert [int(line.split()[0]) for line in frame[5:]] == order, sort
    assert (
        frame[1] == "b:bytes p:pkts s:sent r:rcvd S:sndpk R:rcvpk t:tcp u:udp n:pid m:bits q:quit"
    )


def test_manual_page_lists_the_vocabulary() -> None:
    """Every field name with its table header, as rows.HEADERS has them."""
    page = MAN_PAGE.read_text(encoding="utf-8").replace("\\-", "-")
    for field, header in HEADERS.items():
        assert re.search(rf"^{field} +{re.escape(header)} +\S", page, re.M), field
    lines = page[page.index("FIELD ") :].splitlines()
    assert max(len(line) for line in lines[: len(HEADERS) + 1]) <= 66  # fits 80 once indented


def test_control_characters_in_a_command_line_never_reach_the_terminal(tmp_path: Path) -> None:
    """A newline or an escape sequence in a command line is shown as '?', like ps does."""
    hostile = DIG._replace(cmdline="sh -c 'echo\n\x1b[2Jgone'\x9b")
    writer = TableWriter(table_path(str(tmp_path)), 8, 250)
    writer.publish([hostile], {})
    try:
        result = invoke("query", "--run-dir", str(tmp_path), columns=200)
        as_json_rows = json.loads(invoke("query", "--run-dir", str(tmp_path), "--json").stdout)
    finally:
        writer.close()
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].endswith(" sh -c 'echo??[2Jgone'?")
    assert as_json_rows[0]["cmdline"] == hostile.cmdline  # JSON keeps it as it is


def test_query_finds_a_pid_that_left_the_exit_list_in_the_history(
    run_dir: Path, history: Path
) -> None:
    """Ground truth: the table (ROWS) has no pid 500; the history has its one exit (scp,
    exited 02:30:00 UTC on 2026-11-27, EXITED_ROWS[3]); 999 is in neither."""
    result = invoke(
        "query", "--run-dir", str(run_dir), "--db", str(history), "--json", "500", "999"
    )
    assert result.exit_code == 1  # 999 is still unknown
    (row,) = json.loads(result.stdout)
    scp = exited_json(EXITED_ROWS[3])
    assert row == {name: scp[name] for name in row}
    assert (row["pid"], row["kind"], row["command"], row["udprcvbytes"]) == (
        500,
        "exited",
        "scp",
        0,
    )
    assert result.stderr.splitlines() == [
        "netatop: process 500 has finished at 2026-11-27 02:30:00 and left the exit list: its final "
        "counters, from the history (kind exited)",
        UNKNOWN_999,
    ]
    alone = invoke("query", "--run-dir", str(run_dir), "--db", str(history), "500", columns=120)
    assert alone.exit_code == 0
    assert "scp <exited>" in alone.stdout
    # Without a readable history the message points there, as before.
    missing = invoke("query", "--run-dir", str(run_dir), "--db", str(history) + ".none", "500")
    assert missing.exit_code == 1
    assert "netatop exited --pid 500 --since 1d looks in the history" in missing.stderr


def test_status_verbose_says_how_the_helper_s_send_and_receive_programs_are_attached() -> None:
    figures = {**KERNEL_STATUS, "ebpf_attach": "raw_tracepoint"}
    verbose = status_lines(figures, None, "/run/netatop", 200, verbose=True)
    ebpf = [line for line in verbose if line.startswith("eBPF")]
    assert len(ebpf) == 1 and "send/recv programs on raw_tracepoint" in ebpf[0], verbose
    plain = status_lines(figures, None, "/run/netatop", 200)
    assert not any("raw_tracepoint" in line for line in plain)
