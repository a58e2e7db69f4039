"""Issue 15 item 8: a report over a window that ends now counts the running processes
up to now, so `report top-processes --since 10m` and `query` agree.

Ground truth: the sample rows each test writes into a history database (the
deltas the daemon would have committed) and the cumulative counters it
publishes into a shared table (what `query` prints); a running process's
report row must equal its table counters, and a note on stderr says where
the figures come from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from netatopd.cli import commands, sources
from netatopd.history import add_live_tail, open_db
from netatopd.protocol import COUNTER_NAMES
from netatopd.table import TableError, TableWriter, table_path
from netatopd.tasks import Kind, TaskRow

SAMPLE_INSERT = (
    f"INSERT INTO samples (time, interval_s, tgid, btime, command, uid, {', '.join(COUNTER_NAMES)})"
    f" VALUES ({', '.join('?' * 14)})"
)
# iperf3 (pid 100): two samples, then 1000 more bytes sent in 2 packets since the last.
SAMPLED_1 = (1, 100, 2, 200, 0, 0, 0, 0)
SAMPLED_2 = (3, 300, 4, 400, 5, 50, 6, 60)
IPERF_NOW = (5, 1400, 6, 600, 5, 50, 6, 60)  # cumulative: the samples plus 2 packets, 1000 B
# curl (pid 200): started after the last sample, so no sample yet.
CURL_NOW = (0, 0, 0, 0, 1, 70, 1, 90)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(
        commands.app,
        list(args),
        prog_name="netatop",
        env={"COLUMNS": "200", "NETATOP_RUN_DIR": None, "NETATOP_DB": None},
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    conn = open_db(str(path))
    now = time.time()
    with conn:
        for when, counters in ((now - 120, SAMPLED_1), (now - 60, SAMPLED_2)):
            conn.execute(SAMPLE_INSERT, (when, 60.0, 100, 1000, "iperf3", 1000, *counters))
    conn.close()
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir()
    writer = TableWriter(table_path(str(directory)), 64, 250)
    writer.publish(
        [
            TaskRow(Kind.PROCESS, 100, 100, 1000, "iperf3", IPERF_NOW, 0.0),
            TaskRow(Kind.PROCESS, 200, 200, 2000, "curl", CURL_NOW, 0.0),
            # finished: its last interval reaches the history with its exit, not from here
            TaskRow(Kind.EXITED, 300, 300, 3000, "wget", (1,) * 8, 0.0),
        ],
        {},
    )
    try:
        yield directory
    finally:
        writer.close()


def totals(counters: tuple[int, ...]) -> dict[str, int]:
    tcp_sp, tcp_sb, tcp_rp, tcp_rb, udp_sp, udp_sb, udp_rp, udp_rb = counters
    return {
        "sndpacks": tcp_sp + udp_sp,
        "sndbytes": tcp_sb + udp_sb,
        "rcvpacks": tcp_rp + udp_rp,
        "rcvbytes": tcp_rb + udp_rb,
        "total_bytes": tcp_sb + udp_sb + tcp_rb + udp_rb,
    }


def top_processes(db: Path, run_dir: Path, *extra: str) -> tuple[list[dict[str, Any]], str]:
    result = invoke(
        "report", "top-processes", "--since", "10m", "--db", str(db), "--run-dir", str(run_dir),
        "--format", "json", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_a_window_that_ends_now_counts_running_processes_up_to_now(db: Path, run_dir: Path) -> None:
    rows, note = top_processes(db, run_dir)
    by_pid = {row["pid"]: {k: row[k] for k in totals(IPERF_NOW)} for row in rows}
    # What `query` prints for each running process, summed as the report sums it.
    assert by_pid == {100: totals(IPERF_NOW), 200: totals(CURL_NOW)}
    assert [row["pid"] for row in rows] == [100, 200]  # 1920 B before 160 B
    assert note.startswith("netatop: figures from the history's samples (the last at ")
    assert note.rstrip().endswith(
        "and for running processes their counts since, from netatopd's table at "
        + time.strftime("%H:%M:%S", time.localtime(_published(run_dir)))
    )


def _published(run_dir: Path) -> float:
    from netatopd.table import TableReader

    with TableReader(table_path(str(run_dir))) as reader:
        return reader.snapshot().updated_s


def test_the_running_processes_reach_every_report_on_the_samples(db: Path, run_dir: Path) -> None:
    result = invoke(
        "report", "by-command", "--since", "10m", "--db", str(db), "--run-dir", str(run_dir),
        "--format", "json",
    )  # fmt: skip
    rows = {row["command"]: row["total_bytes"] for row in json.loads(result.stdout)}
    assert rows == {"iperf3": totals(IPERF_NOW)["total_bytes"], "curl": 160}


def test_without_a_daemon_the_report_says_it_is_samples_only(db: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-daemon"
    empty.mkdir()
    rows, note = top_processes(db, empty)
    sampled = tuple(a + b for a, b in zip(SAMPLED_1, SAMPLED_2, strict=True))
    assert [(row["pid"], row["total_bytes"]) for row in rows] == [
        (100, totals(sampled)["total_bytes"])
    ]
    assert note.startswith("netatop: figures from the history's samples (the last at ")
    assert note.rstrip().endswith(
        f"only (no table of a running netatopd in {empty}): running processes lack their "
        "counts since their last sample"
    )


def test_a_table_that_is_not_readable_is_named(
    db: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user who may not read the table (mode 0600, not in --table-group) is told why."""
    denied = f"cannot open the table {run_dir}/table: Permission denied"

    def not_readable(directory: str | None) -> None:
        raise TableError(denied, f"{directory}/table")

    monkeypatch.setattr(sources, "table_snapshot", not_readable)
    rows, note = top_processes(db, run_dir)
    assert [row["pid"] for row in rows] == [100]  # the samples only
    assert f"only ({denied}): running processes lack their counts" in note


def test_a_window_that_ended_before_now_takes_nothing_from_the_table(
    db: Path, run_dir: Path
) -> None:
    rows, note = top_processes(db, run_dir, "--until", "30s ago")
    sampled = tuple(a + b for a, b in zip(SAMPLED_1, SAMPLED_2, strict=True))
    assert [(row["pid"], row["total_bytes"]) for row in rows] == [
        (100, totals(sampled)["total_bytes"])
    ]
    assert "from netatopd's table" not in note and "figures from the history's samples" in note


def test_reports_of_finished_processes_have_no_note(db: Path, run_dir: Path) -> None:
    result = invoke("report", "top-exited", "--db", str(db), "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_a_restarted_daemons_smaller_counters_add_nothing(db: Path) -> None:
    """After a restart the table counts from 0 again: the tail is never negative, and
    the samples are not counted twice."""
    conn = open_db(str(db), readonly=True)
    try:
        added = add_live_tail(conn, time.time(), [(100, 1000, "iperf3", (1,) * 8)])
        sums = conn.execute(
            "SELECT sum(tcpsndbytes), sum(udprcvbytes) FROM samples WHERE tgid = 100"
        ).fetchone()
    finally:
        conn.close()
    assert added == 0
    assert sums == (400, 60)
