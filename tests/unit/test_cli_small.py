"""Issue 15 item 9, the small ones, on the netatop command's real output: --version,
status --help, a PID that is not a number, and an empty query that says why.

Ground truth: the texts written out below, the rows (none) each test publishes
into a shared table, and the start time of a real process in /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from netatopd import __version__
from netatopd.cli import commands, sources
from netatopd.procfs import ProcFS
from netatopd.table import Snapshot, TableWriter, table_path
from netatopd.tasks import Kind, TaskRow

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(
        commands.app,
        list(args),
        prog_name="netatop",
        env={"COLUMNS": "80", "NETATOP_RUN_DIR": None, "NETATOP_DB": None},
    )


def test_version_of_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "netatopd.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"netatop {__version__}\n", "")


def test_status_help_says_json_is_one_object() -> None:
    text = " ".join(invoke("status", "--help").stdout.split())
    assert "--json print one JSON object: the daemon's STATUS figures" in text
    assert "array" not in text


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (
            ("query", "nginx"),
            "netatop: 'nginx' is not a process id: give the number ps shows under PID "
            "(pgrep nginx finds those of the command nginx)\n",
        ),
        (
            ("query", "12", "12x"),
            "netatop: '12x' is not a process id: give the number ps shows under PID\n",
        ),
        (
            ("exited", "--pid", "-3"),
            "netatop: '-3' is not a process id: give the number ps shows under PID\n",
        ),
        (
            ("report", "top-exited", "--pid", "1.5"),
            "netatop: '1.5' is not a process id: give the number ps shows under PID\n",
        ),
    ],
)
def test_a_pid_that_is_not_a_number_gets_one_sentence(
    argv: tuple[str, ...], sentence: str, tmp_path: Path
) -> None:
    result = invoke(*argv, "--run-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == sentence
    assert result.stdout == ""


@pytest.fixture
def empty_table(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose table (published by this process) has no running process."""
    directory = tmp_path / "run"
    directory.mkdir()
    writer = TableWriter(table_path(str(directory)), 64, 250)
    writer.publish([TaskRow(Kind.EXITED, 400, 400, 5000, "wget", (1,) * 8, 0.0)], {})
    try:
        yield directory
    finally:
        writer.close()


def test_the_uptime_of_a_daemon_whose_socket_is_not_ours_comes_from_proc() -> None:
    """The table names the daemon's pid; its start in /proc gives the uptime (pid 1 here)."""
    proc = ProcFS()
    started_s = proc.btime(proc.stat(1).start_time_ticks)
    taken = Snapshot([], {}, 1, time.time(), 2, 64, 0)
    uptime_s = sources.daemon_uptime_s("/nonexistent", taken)
    assert uptime_s is not None
    assert abs(uptime_s - (time.time() - started_s)) < 2.0


@pytest.mark.parametrize(
    ("uptime_s", "why"),
    [
        (3.2, "netatopd started only 3 s ago; a process appears once it sends or receives"),
        (3723.0, "none has sent or received TCP or UDP since netatopd started at"),
    ],
)
def test_an_empty_query_says_there_is_nothing_yet_and_why(
    empty_table: Path, monkeypatch: pytest.MonkeyPatch, uptime_s: float, why: str
) -> None:
    monkeypatch.setattr(sources, "daemon_uptime_s", lambda run_dir, taken: uptime_s)
    result = invoke("query", "--run-dir", str(empty_table))
    assert result.exit_code == 0
    assert result.stdout.split() == [
        "PID", "USER", "COMMAND", "TCPSND", "TCPSNDB", "TCPRCV", "TCPRCVB",
        "UDPSND", "UDPSNDB", "UDPRCV", "UDPRCVB",
    ]  # fmt: skip
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netatop: no process yet: "), lines
    assert why in lines[0]
    assert "1 finished ones are in the exit list (netatop exited)" in lines[0]
    if uptime_s > 3600:
        assert "(01:02:03 ago)" in lines[0]


def test_an_empty_query_of_a_table_from_this_process_reads_its_start(
    empty_table: Path,
) -> None:
    """No control socket: the uptime is this test process's own (from /proc)."""
    proc = ProcFS()
    own_s = time.time() - proc.btime(proc.stat(os.getpid()).start_time_ticks)
    result = invoke("query", "--json", "--run-dir", str(empty_table))
    assert result.stdout.strip() == "[]"
    if own_s < sources.JUST_STARTED_S - 1:
        assert "netatopd started only" in result.stderr
    elif own_s > sources.JUST_STARTED_S + 1:
        assert "since netatopd started at" in result.stderr
    assert result.stderr.startswith("netatop: no process yet: ")


def test_a_query_with_rows_has_no_such_note(empty_table: Path, tmp_path: Path) -> None:
    run = tmp_path / "busy"
    run.mkdir()
    writer = TableWriter(table_path(str(run)), 64, 250)
    writer.publish([TaskRow(Kind.PROCESS, 100, 100, 1000, "nginx", (1,) * 8, 0.0)], {})
    try:
        result = invoke("query", "--run-dir", str(run))
    finally:
        writer.close()
    assert result.exit_code == 0 and result.stderr == ""
