"""History database: schema and migrations, the writer, crash safety, disk full.

Ground truth is what each test hands to the writer (or writes by hand as an
older schema); the database is read back with plain SQL.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import apsw
import pytest

import netatopd
from netatopd import history
from netatopd.history import writer as history_writer
from netatopd.protocol import COUNTER_NAMES
from netatopd.tasks import ExitedTask, Kind, TaskRow

REPO = Path(__file__).resolve().parents[2]

EXITED_COLUMNS = [
    "tgid",
    "btime",
    "command",
    "cmdline",
    "uid",
    "first_activity",
    "last_activity",
    "exit_time",
    *COUNTER_NAMES,
]
SAMPLES_COLUMNS = ["time", "interval_s", "tgid", "btime", "command", "uid", *COUNTER_NAMES]

# Schema version 1 as released, written out here (not read from sql/schema.sql) so the
# migration test keeps testing the old layout even if someone edits the baseline file.
SCHEMA_V1 = """
CREATE TABLE exited (
    tgid INTEGER NOT NULL, btime INTEGER NOT NULL, command TEXT NOT NULL, cmdline TEXT,
    uid INTEGER, first_activity REAL, last_activity REAL, exit_time REAL NOT NULL,
    tcpsndpacks INTEGER NOT NULL DEFAULT 0, tcpsndbytes INTEGER NOT NULL DEFAULT 0,
    tcprcvpacks INTEGER NOT NULL DEFAULT 0, tcprcvbytes INTEGER NOT NULL DEFAULT 0,
    udpsndpacks INTEGER NOT NULL DEFAULT 0, udpsndbytes INTEGER NOT NULL DEFAULT 0,
    udprcvpacks INTEGER NOT NULL DEFAULT 0, udprcvbytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tgid, btime)
) STRICT;
CREATE TABLE samples (
    time REAL NOT NULL, interval_s REAL NOT NULL, tgid INTEGER NOT NULL,
    btime INTEGER NOT NULL, command TEXT NOT NULL, uid INTEGER,
    tcpsndpacks INTEGER NOT NULL DEFAULT 0, tcpsndbytes INTEGER NOT NULL DEFAULT 0,
    tcprcvpacks INTEGER NOT NULL DEFAULT 0, tcprcvbytes INTEGER NOT NULL DEFAULT 0,
    udpsndpacks INTEGER NOT NULL DEFAULT 0, udpsndbytes INTEGER NOT NULL DEFAULT 0,
    udprcvpacks INTEGER NOT NULL DEFAULT 0, udprcvbytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (time, tgid, btime)
) STRICT;
PRAGMA user_version = 1;
"""


def exited(tgid: int, counters: tuple[int, ...], **fields: object) -> ExitedTask:
    values: dict[str, object] = {
        "tgid": tgid,
        "btime": 1_700_000_000 + tgid,
        "command": f"cmd{tgid}",
        "cmdline": f"/usr/bin/cmd{tgid} --flag",
        "uid": 1000,
        "first_activity_s": 1_800_000_000.5,
        "last_activity_s": 1_800_000_010.25,
        "exit_time_s": 1_800_000_020.125,
        "counters": counters,
    }
    values.update(fields)
    return ExitedTask(**values)  # type: ignore[arg-type]


def table(conn: apsw.Connection, name: str) -> list[tuple[object, ...]]:
    """The rows of exited or samples: the columns of versions 1-3 (PLACE_COLUMNS apart)."""
    columns = {"exited": EXITED_COLUMNS, "samples": SAMPLES_COLUMNS}.get(name)
    selected = ", ".join(columns) if columns else "*"
    return [tuple(r) for r in conn.execute(f"SELECT {selected} FROM {name} ORDER BY 1, 2, 3")]


def writer(path: Path, **options: object) -> history.HistoryWriter:
    options.setdefault("sample_interval_s", None)
    options.setdefault("retention_days", 0)
    return history.HistoryWriter(str(path), **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------- schema and migrations


def test_fresh_database_gets_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "netatop.db"
    conn = history.open_db(str(path))
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == 4
    assert history.latest_schema_version() == 4
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchall()[0][0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchall()[0][0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchall()[0][0] == 1  # NORMAL
    place = ["cgroup", "unit", "container"]  # version 4
    assert [r[1] for r in conn.execute("PRAGMA table_info(exited)")] == [*EXITED_COLUMNS, *place]
    assert [r[1] for r in conn.execute("PRAGMA table_info(samples)")] == [*SAMPLES_COLUMNS, *place]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE sql IS NOT NULL")}
    assert {"exited", "samples", "exited_exit_time", "exited_totals", "sample_totals"} <= names
    assert "samples_process" in names  # version 3
    pk = [r[1] for r in conn.execute("PRAGMA table_info(exited)") if r[5]]
    assert pk == ["tgid", "btime"]
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750
    conn.close()


def test_migration_numbers_unique_and_contiguous() -> None:
    files = sorted(p.name for p in (REPO / "sql" / "migrations").iterdir())
    numbers = [int(re.match(r"(\d{4})_", name).group(1)) for name in files]  # type: ignore[union-attr]
    assert numbers == list(range(2, 2 + len(numbers)))
    assert [n for n, _ in history.schema_steps()] == list(range(1, 2 + len(numbers)))


def test_sql_files_found_beside_the_package_and_shipped_as_package_data() -> None:
    package = Path(netatopd.__file__).resolve().parent
    # netatopd/sql (the installed package data; a symlink to ../sql in this tree) comes
    # first, so an installed netatopd reads its own copy wherever the history code lives.
    assert history.schema.SQL_DIR_CANDIDATES == (package / "sql", package.parent / "sql")
    assert history.sql_dir() == package / "sql"
    assert history.reports_dir() == package / "sql" / "reports"
    assert [p for _, p in history.schema_steps()][0] == package / "sql" / "schema.sql"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["netatopd"]
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assert shipped == set((package / "sql").rglob("*.sql"))
    assert {p for _, p in history.schema_steps()} <= shipped


@pytest.mark.parametrize(
    "names",
    [["0002_a.sql", "0004_b.sql"], ["0002_a.sql", "0002_b.sql"], ["0003_a.sql"], ["2_a.sql"]],
)
def test_schema_steps_refuse_gaps_and_repeats(tmp_path: Path, names: list[str]) -> None:
    (tmp_path / "schema.sql").write_text("CREATE TABLE t (a);\n")
    (tmp_path / "migrations").mkdir()
    for name in names:
        (tmp_path / "migrations" / name).write_text("SELECT 1;\n")
    with pytest.raises(history.StoreError):
        history.schema_steps(tmp_path)


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    old = apsw.Connection(str(path))
    old.execute(SCHEMA_V1)
    old.execute(
        "INSERT INTO exited VALUES (42, 1700000000, 'wget', 'wget x', 0, 1.5, 2.5, 3.5,"
        " 1, 2, 3, 4, 5, 6, 7, 8)"
    )
    old.execute(
        "INSERT INTO samples VALUES (60.0, 60.0, 42, 1700000000, 'wget', 0, 1, 2, 3, 4, 5, 6, 7, 8)"
    )
    old.close()

    conn = history.open_db(str(path))
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == 4
    assert table(conn, "exited") == [
        (42, 1700000000, "wget", "wget x", 0, 1.5, 2.5, 3.5, 1, 2, 3, 4, 5, 6, 7, 8)
    ]
    assert table(conn, "samples") == [
        (60.0, 60.0, 42, 1700000000, "wget", 0, 1, 2, 3, 4, 5, 6, 7, 8)
    ]
    # What version 2 added works on the old rows.
    totals = conn.execute(
        "SELECT sndpacks, sndbytes, rcvpacks, rcvbytes, total_bytes FROM exited_totals"
    )
    assert [tuple(r) for r in totals] == [(6, 8, 10, 12, 20)]
    indexes = [r[1] for r in conn.execute("PRAGMA index_list(exited)")]
    assert "exited_exit_time" in indexes
    conn.close()
    # Opening again changes nothing.
    conn = history.open_db(str(path))
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == 4
    conn.close()


def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    history.open_db(str(path)).close()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA user_version = 5")
    conn.close()
    with pytest.raises(history.StoreError, match="newer than this netatop"):
        history.open_db(str(path))
    with pytest.raises(history.StoreError, match="use a newer netatop"):
        history.open_db(str(path), readonly=True)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE something (a)")
    conn.close()
    with pytest.raises(history.StoreError, match="not a netatop database"):
        history.open_db(str(path))
    conn = apsw.Connection(str(path))
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")] == ["something"]


def test_readonly_needs_existing_current_database(tmp_path: Path) -> None:
    with pytest.raises(history.StoreError, match="no history database"):
        history.open_db(str(tmp_path / "missing.db"), readonly=True)
    assert not (tmp_path / "missing.db").exists()
    old = apsw.Connection(str(tmp_path / "v1.db"))
    old.execute(SCHEMA_V1)
    old.close()
    with pytest.raises(history.StoreError, match="start netatopd once"):
        history.open_db(str(tmp_path / "v1.db"), readonly=True)


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    history.open_db(str(path)).close()
    conn = history.open_db(str(path), readonly=True)
    with pytest.raises(apsw.ReadOnlyError):
        conn.execute("DELETE FROM exited")


# ------------------------------------------------------------------- finished processes


def test_exited_records_land_with_exact_counters(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    records = [
        exited(1, (1, 2, 3, 4, 5, 6, 7, 8)),
        exited(2, (10, 20, 30, 40, 50, 60, 70, 80), uid=-1, cmdline="", first_activity_s=0.0),
        exited(3, (2**64 - 1, 0, 0, 0, 0, 0, 0, 0), last_activity_s=0.0),
    ]
    w = writer(path)
    w.add_exited(records)
    assert w.stats()["pending"] == 3
    assert w.flush() == 3
    assert w.stats()["persisted_exited"] == 3
    assert w.stats()["pending"] == 0
    w.stop()

    conn = history.open_db(str(path), readonly=True)
    assert table(conn, "exited") == [
        (1, 1700000001, "cmd1", "/usr/bin/cmd1 --flag", 1000, 1_800_000_000.5, 1_800_000_010.25)
        + (1_800_000_020.125, 1, 2, 3, 4, 5, 6, 7, 8),
        (2, 1700000002, "cmd2", None, None, None, 1_800_000_010.25)
        + (1_800_000_020.125, 10, 20, 30, 40, 50, 60, 70, 80),
        (3, 1700000003, "cmd3", "/usr/bin/cmd3 --flag", 1000, 1_800_000_000.5, None)
        + (1_800_000_020.125, 2**63 - 1, 0, 0, 0, 0, 0, 0, 0),
    ]
    # query_exited gives the records back (unknowns as ExitedTask spells them, u64 clamped).
    back = history.query_exited(conn)
    assert back[:2] == records[:2]
    assert back[2] == records[2]._replace(counters=(2**63 - 1, 0, 0, 0, 0, 0, 0, 0))
    assert history.query_exited(conn, limit=1) == records[:1]


def test_query_exited_window(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path)
    w.add_exited([exited(t, (t, 0, 0, 0, 0, 0, 0, 0), exit_time_s=100.0 * t) for t in range(1, 6)])
    w.flush()
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert [r.tgid for r in history.query_exited(conn, since_s=200.0, until_s=500.0)] == [2, 3, 4]
    assert [r.tgid for r in history.query_exited(conn, since_s=200.0, limit=2)] == [2, 3]
    assert [r.tgid for r in history.query_exited(conn, until_s=200.0)] == [1]


def test_same_key_twice_keeps_one_row_with_later_counters(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path)
    w.add_exited([exited(7, (1, 100, 1, 100, 0, 0, 0, 0))])
    w.flush()
    # A retried write: same (tgid, btime), later counters, command line no longer known.
    w.add_exited([exited(7, (5, 500, 6, 600, 0, 0, 0, 0), cmdline="", exit_time_s=1_800_000_030.0)])
    w.add_exited([exited(7, (9, 900, 9, 900, 1, 1, 1, 1), cmdline="", exit_time_s=1_800_000_040.0)])
    w.flush()
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert table(conn, "exited") == [
        (7, 1700000007, "cmd7", "/usr/bin/cmd7 --flag", 1000, 1_800_000_000.5, 1_800_000_010.25)
        + (1_800_000_040.0, 9, 900, 9, 900, 1, 1, 1, 1)
    ]


def test_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    first = [exited(t, (t, t, t, t, t, t, t, t)) for t in range(1, 101)]
    w = writer(path)
    w.start()
    w.add_exited(first)
    w.stop()  # final flush at shutdown

    w = writer(path)
    w.start()
    w.add_exited(first[90:])  # the restarted daemon sends some again
    w.add_exited([exited(t, (t, t, t, t, t, t, t, t)) for t in range(101, 111)])
    w.stop()

    conn = history.open_db(str(path), readonly=True)
    rows = table(conn, "exited")
    assert [r[0] for r in rows] == list(range(1, 111))
    assert all(r[8:] == (r[0],) * 8 for r in rows)


def test_pending_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    w = writer(tmp_path / "n.db", max_pending=10)
    w.add_exited([exited(t, (0,) * 8) for t in range(15)])
    assert w.stats()["pending"] == 10
    assert w.stats()["dropped"] == 5
    assert w.flush() == 10
    w.add_exited([exited(t, (0,) * 8) for t in range(100, 104)])
    assert w.stats()["dropped"] == 5
    assert w.flush() == 4
    w.stop()


def test_records_after_stop_are_dropped_and_counted(tmp_path: Path) -> None:
    w = writer(tmp_path / "n.db")
    w.start()
    w.add_exited([exited(1, (1,) * 8)])
    w.stop()
    w.add_exited([exited(2, (1,) * 8), exited(3, (1,) * 8)])
    assert w.flush() == 0
    w.stop()  # twice is harmless
    stats = w.stats()
    assert (stats["persisted_exited"], stats["dropped"], stats["pending"]) == (1, 2, 0)


def test_bad_record_is_rejected_not_retried_forever(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path)
    w.add_exited([exited(1, (1,) * 8), exited(2, (1,) * 7), exited(3, (3,) * 8)])
    assert w.flush() == 2
    assert w.stats()["rejected"] == 1
    assert w.stats()["pending"] == 0
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert [r[0] for r in table(conn, "exited")] == [1, 3]


def test_text_and_times_are_made_storable(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path)
    w.add_exited(
        [
            # /proc/PID/cmdline bytes that are not UTF-8 arrive as surrogate escapes.
            exited(1, (1,) * 8, cmdline="tar -cf caf\udce9.tar \U0001f600", command="tar"),
            exited(2, (1,) * 8, exit_time_s=float("nan")),  # refused, not retried forever
            exited(3, (1,) * 8, command='q"uote\\\n'),
        ]
    )
    assert w.flush() == 2
    assert w.stats()["rejected"] == 1
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert [r[:4] for r in table(conn, "exited")] == [
        (1, 1700000001, "tar", "tar -cf caf\ufffd.tar \U0001f600"),
        (3, 1700000003, 'q"uote\\\n', "/usr/bin/cmd3 --flag"),
    ]


def test_on_persist_reports_committed_keys(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    w = writer(tmp_path / "n.db", on_persist=seen.extend)
    w.add_exited([exited(t, (0,) * 8) for t in (5, 6)])
    assert seen == []
    w.flush()
    assert seen == [(5, 1_700_000_005), (6, 1_700_000_006)]
    w.stop()


# ------------------------------------------------------------------- samples


def task_row(tgid: int, counters: tuple[int, ...], kind: Kind = Kind.PROCESS) -> TaskRow:
    return TaskRow(kind, tgid, tgid, 500 + tgid, f"p{tgid}", counters, 0.0)


def test_samples_store_nonzero_deltas_and_exit_closes_the_series(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path, sample_interval_s=60.0)
    z = (0,) * 8
    w.add_samples(
        60.0,
        60.0,
        [
            (task_row(1, (1, 100, 0, 0, 0, 0, 0, 0)), 0),
            (task_row(2, z), 33),
            (task_row(1, (9, 9, 9, 9, 9, 9, 9, 9), Kind.THREAD), 0),  # threads are left out
        ],
    )
    w.add_samples(
        120.0,
        60.0,
        [
            (task_row(1, (3, 300, 1, 50, 0, 0, 0, 0)), 0),
            (task_row(2, (0, 0, 0, 0, 1, 80, 0, 0)), 33),
        ],
    )
    w.add_samples(
        180.0,
        60.0,
        [
            (task_row(1, (3, 300, 1, 50, 0, 0, 0, 0)), 0),
            (task_row(2, (0, 0, 0, 0, 1, 80, 2, 300)), 33),
        ],
    )
    final_1 = (4, 400, 1, 50, 0, 0, 0, 0)
    w.add_exited(
        [
            ExitedTask(1, 501, "p1", "p1 -x", 0, 10.0, 199.0, 200.0, final_1),
            # Never sampled: lived and died between two samples.
            ExitedTask(3, 503, "p3", "", 7, 205.0, 206.0, 210.0, (0, 0, 0, 0, 0, 0, 1, 90)),
        ]
    )
    assert w.flush() == 2 + 6
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert table(conn, "samples") == [
        (60.0, 60.0, 1, 501, "p1", 0, 1, 100, 0, 0, 0, 0, 0, 0),
        (120.0, 60.0, 1, 501, "p1", 0, 2, 200, 1, 50, 0, 0, 0, 0),
        (120.0, 60.0, 2, 502, "p2", 33, 0, 0, 0, 0, 1, 80, 0, 0),
        (180.0, 60.0, 2, 502, "p2", 33, 0, 0, 0, 0, 0, 0, 2, 300),
        (200.0, 20.0, 1, 501, "p1", 0, 1, 100, 0, 0, 0, 0, 0, 0),
        (210.0, 30.0, 3, 503, "p3", 7, 0, 0, 0, 0, 0, 0, 1, 90),
    ]
    sums = conn.execute(
        "SELECT " + ", ".join(f"sum({n})" for n in COUNTER_NAMES) + " FROM samples WHERE tgid = 1"
    ).fetchall()
    assert tuple(sums[0]) == final_1


def test_exit_after_process_left_the_samples_is_not_counted_twice(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path, sample_interval_s=60.0)
    w.add_samples(60.0, 60.0, [(task_row(1, (1, 100, 0, 0, 0, 0, 0, 0)), 0)])
    w.add_samples(120.0, 60.0, [])  # swept from the task table before its exit was handed over
    w.add_exited([ExitedTask(1, 501, "p1", "", 0, 1.0, 2.0, 125.0, (2, 200, 0, 0, 0, 0, 0, 0))])
    w.flush()
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert [r[0:3] + r[6:8] for r in table(conn, "samples")] == [
        (60.0, 60.0, 1, 1, 100),
        (125.0, 5.0, 1, 1, 100),
    ]


def test_sampling_disabled_stores_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path, sample_interval_s=None)
    assert not w.sample_due(1000.0)
    w.add_samples(60.0, 60.0, [(task_row(1, (1,) * 8), 0)])
    w.add_exited([exited(1, (2,) * 8)])
    assert w.flush() == 1
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert table(conn, "samples") == []


def test_sample_due_follows_the_interval(tmp_path: Path) -> None:
    w = writer(tmp_path / "n.db", sample_interval_s=60.0)
    assert w.sample_due(1000.0)
    w.add_samples(1000.0, 60.0, [])
    assert not w.sample_due(1059.0)
    assert w.sample_due(1060.0)
    w.stop()


# ------------------------------------------------------------------- retention


def test_retention_prunes_in_small_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_writer, "PRUNE_ROWS_PER_TRANSACTION", 100)
    monkeypatch.setattr(history_writer, "PRUNE_MAX_TRANSACTIONS", 4)
    path = tmp_path / "n.db"
    now = 1_900_000_000.0
    w = writer(path, retention_days=1.0)
    old = [exited(t, (1,) * 8, exit_time_s=now - 2 * 86400.0) for t in range(1, 651)]
    young = [exited(t, (1,) * 8, exit_time_s=now - 0.5 * 86400.0) for t in range(1001, 1004)]
    w.add_exited(old + young)
    w.flush()  # the first cycle prunes against the real clock: these times are in the future

    counts: list[int] = []
    statements: list[str] = []

    def trace(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        statements.append(sql)
        return True

    assert w._conn is not None
    w._conn.exec_trace = trace
    for _ in range(3):
        counts.append(w.prune(now))
    # At most 4 transactions of 100 rows per call: 400, then 250 (and 0 samples), then 0.
    assert counts == [400, 250, 0]
    assert [s.split()[2] for s in statements if s.startswith("DELETE")] == (
        ["exited"] * 4 + ["exited"] * 3 + ["samples"] + ["exited", "samples"]
    )
    assert statements[:3] == ["BEGIN IMMEDIATE", statements[1], "COMMIT"]
    assert w.stats()["pruned"] == 650
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert [r[0] for r in table(conn, "exited")] == [1001, 1002, 1003]


# ------------------------------------------------------------------- concurrency and crashes


def test_long_read_transaction_does_not_stop_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    w = writer(path, flush_interval_s=0.05)
    w.start()
    w.add_exited([exited(t, (t,) * 8) for t in range(1, 11)])
    assert w.flush(timeout_s=60.0) == 10

    reader = history.open_db(str(path), readonly=True)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM exited").fetchall()[0][0] == 10
    w.add_exited([exited(t, (t,) * 8) for t in range(11, 1011)])
    assert w.flush(timeout_s=60.0) == 1000
    stats = w.stats()
    assert (stats["write_errors"], stats["dropped"], stats["pending"]) == (0, 0, 0)
    # The reader still sees its snapshot; after it ends it sees everything.
    assert reader.execute("SELECT count(*) FROM exited").fetchall()[0][0] == 10
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM exited").fetchall()[0][0] == 1010
    w.stop()


CHILD = textwrap.dedent(
    """
    import os, sys
    from netatopd.history import HistoryWriter
    from netatopd.tasks import ExitedTask

    db, report_fd, go_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    report = os.fdopen(report_fd, "w", buffering=1)
    go = os.fdopen(go_fd, "rb", buffering=0)

    def persisted(keys):
        report.write("".join(f"{tgid} {btime}\\n" for tgid, btime in keys))
        report.flush()

    w = HistoryWriter(db, flush_interval_s=0.02, sample_interval_s=None, retention_days=0,
                      on_persist=persisted)
    w.start()
    for batch in range(100):  # 2,000 exits in batches of 20
        if go.read(1) != b"g":
            break
        w.add_exited([
            ExitedTask(10000 + 20 * batch + i, 1700000000, "burst", "x" * 3000, 1000,
                       1.0, 2.0, 3.0 + batch, (batch, i, 1, 2, 3, 4, 5, 6))
            for i in range(20)
        ])
        if batch % 3 == 0:
            w.flush()
    w.stop()
    """
)


@pytest.mark.parametrize(("extra_batches", "kill_delay_s"), [(3, 0.0), (17, 0.001), (40, 0.003)])
def test_sigkill_mid_burst_keeps_every_reported_record(
    tmp_path: Path, extra_batches: int, kill_delay_s: float
) -> None:
    path = tmp_path / "crash.db"
    report_read, report_write = os.pipe()
    go_read, go_write = os.pipe()
    child = subprocess.Popen(
        # -c puts the working directory (this tree) first on sys.path, so the child
        # imports the netatopd under test rather than an installed one.
        [sys.executable, "-c", CHILD, str(path), str(report_write), str(go_read)],
        pass_fds=(report_write, go_read),
        cwd=REPO,
    )
    os.close(report_write)
    os.close(go_read)
    reported: set[tuple[int, int]] = set()
    try:
        # 50 batches to reach 1,000 reported, then a few more that are under way at the
        # kill; the child never gets the 100 go bytes it needs to finish the burst.
        os.write(go_write, b"g" * (50 + extra_batches))
        with os.fdopen(report_read, "r") as lines:
            for line in lines:
                tgid_text, btime_text = line.split()
                reported.add((int(tgid_text), int(btime_text)))
                if len(reported) >= 1000:
                    time.sleep(kill_delay_s)  # vary where in the next writes the kill lands
                    child.send_signal(signal.SIGKILL)
                    break
            rest = lines.read()  # reported before the kill landed
        for line in rest.splitlines():
            tgid_text, btime_text = line.split()
            reported.add((int(tgid_text), int(btime_text)))
    finally:
        child.kill()
        child.wait(timeout=60)
        os.close(go_write)
    assert child.returncode == -signal.SIGKILL
    assert 1000 <= len(reported) < 2000

    conn = history.open_db(str(path))  # as the restarted daemon would
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = {(r[0], r[1]): r for r in table(conn, "exited")}
    assert reported <= set(rows)
    for key in reported:
        batch, i = divmod(key[0] - 10000, 20)
        row = rows[key]
        assert row[2:5] == ("burst", "x" * 3000, 1000)
        assert row[7:] == (3.0 + batch, batch, i, 1, 2, 3, 4, 5, 6)
    assert len(rows) < 2000


# ------------------------------------------------------------------- disk full and errors


def test_disk_nearly_full_pauses_keeps_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="netatopd.history")
    path = tmp_path / "n.db"
    free = [0.50]
    w = writer(path, max_pending=100, free_fraction=lambda p: free[0])
    w.add_exited([exited(t, (t,) * 8) for t in range(0, 10)])
    assert w.flush() == 10

    free[0] = 0.04  # below 5 %
    w.add_exited([exited(t, (t,) * 8) for t in range(10, 40)])
    assert [w.flush() for _ in range(3)] == [0, 0, 0]
    paused = [r for r in caplog.records if "writes paused" in r.getMessage()]
    assert len(paused) == 1
    assert paused[0].levelno == logging.WARNING
    stats = w.stats()
    assert (stats["pending"], stats["disk_full_skips"], stats["dropped"]) == (30, 3, 0)

    w.add_exited([exited(t, (t,) * 8) for t in range(40, 120)])  # 70 fit, 10 dropped
    stats = w.stats()
    assert (stats["pending"], stats["dropped"]) == (100, 10)

    free[0] = 0.06
    assert w.flush() == 100
    assert len([r for r in caplog.records if "free again" in r.getMessage()]) == 1
    stats = w.stats()
    assert (stats["pending"], stats["persisted_exited"], stats["dropped"]) == (0, 110, 10)

    free[0] = 0.01  # a new shortage warns again
    w.add_exited([exited(500, (1,) * 8)])
    w.flush()
    assert len([r for r in caplog.records if "writes paused" in r.getMessage()]) == 2
    w.stop()  # final flush fails too: the record is reported lost
    assert any("could not be written before shutdown" in r.getMessage() for r in caplog.records)

    conn = history.open_db(str(path), readonly=True)
    assert [r[0] for r in table(conn, "exited")] == list(range(0, 110))


def test_sqlite_full_error_keeps_records_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="netatopd.history")
    path = tmp_path / "n.db"
    w = writer(path)
    w.add_exited([exited(1, (1,) * 8)])
    assert w.flush() == 1
    # Cap the database at its current size: the next big batch fails with SQLITE_FULL.
    pages = w._conn.execute("PRAGMA page_count").fetchall()[0][0]  # type: ignore[union-attr]
    w._conn.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
    big = [exited(t, (t,) * 8, cmdline="y" * 4000) for t in range(2, 202)]
    w.add_exited(big)
    assert w.flush() == 0
    stats = w.stats()
    assert (stats["write_errors"], stats["last_error"], stats["pending"]) == (
        1,
        apsw.SQLITE_FULL,
        200,
    )
    errors = [r for r in caplog.records if "history write failed" in r.getMessage()]
    assert len(errors) == 1 and "SQLite code 13" in errors[0].getMessage()
    # The next try reopens the database (without the cap) and writes everything.
    assert w.flush() == 200
    stats = w.stats()
    assert (stats["write_errors"], stats["last_error"], stats["pending"]) == (1, 0, 0)
    w.stop()
    conn = history.open_db(str(path), readonly=True)
    assert conn.execute("SELECT count(*), sum(tgid) FROM exited").fetchall() == [(201, 20301)]


# ------------------------------------------------------------------- issue 13: faults


def test_finished_processes_are_committed_within_a_second(tmp_path: Path) -> None:
    # flush_interval_s 60: samples and retries wait for it, finished processes do not
    # (they are committed at most exited_flush_s, 1 s, after they came).  Generous
    # bound: 10 s, far below the 60 s the old writer took.
    w = writer(tmp_path / "h.db", flush_interval_s=60.0)
    w.start()
    try:
        w.add_exited([exited(1, tuple(range(8)))])
        deadline = time.monotonic() + 10.0
        while w.stats()["persisted_exited"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.stats()["persisted_exited"] == 1
        assert w.exited_flush_s == history_writer.EXITED_FLUSH_S == 1.0
    finally:
        w.stop()


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        target = Path(str(path) + suffix)
        if target.exists():
            target.unlink()


def test_deleted_database_is_created_anew_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "lib"
    path = directory / "h.db"
    w = writer(path)
    w.add_exited([exited(1, (1,) * 8)])
    assert w.flush() == 1
    _remove_database(path)
    directory.rmdir()  # the whole directory, as an administrator's rm -r would
    w.add_exited([exited(2, (2,) * 8)])
    with caplog.at_level(logging.ERROR):
        assert w.flush() == 1
    assert path.exists()
    conn = apsw.Connection(str(path))
    assert [r[0] for r in conn.execute("SELECT tgid FROM exited")] == [2]
    conn.close()
    stats = w.stats()
    assert (stats["reopened"], stats["write_errors"], stats["persisted_exited"]) == (1, 0, 2)
    assert "history database deleted while in use" in caplog.text
    # Unchanged afterwards: no second reopen.
    w.add_exited([exited(3, (3,) * 8)])
    assert w.flush() == 1 and w.stats()["reopened"] == 1
    w.stop()


def test_replaced_database_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    w = writer(path)
    w.add_exited([exited(1, (1,) * 8)])
    assert w.flush() == 1
    other = tmp_path / "other.db"
    history.open_db(str(other)).close()
    _remove_database(path)
    os.rename(other, path)  # another file at the same path
    w.add_exited([exited(2, (2,) * 8)])
    assert w.flush() == 1
    conn = apsw.Connection(str(path))
    assert [r[0] for r in conn.execute("SELECT tgid FROM exited")] == [2]
    conn.close()
    assert w.stats()["reopened"] == 1
    w.stop()


def _corrupt_pages(path: Path) -> None:
    """Overwrite bytes in the middle of the file: pages after the first (the header) damaged."""
    size = path.stat().st_size
    assert size >= 8 * 4096, size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(bytes(range(256)) * 32)


def _filled_database(path: Path, rows: int = 3000) -> None:
    w = writer(path)
    w.add_exited([exited(tgid, (tgid,) * 8) for tgid in range(1, rows + 1)])
    assert w.flush() == rows
    w.stop()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_damaged_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h.db"
    _filled_database(path)
    _corrupt_pages(path)
    damaged = path.read_bytes()
    with caplog.at_level(logging.ERROR):
        w = writer(path)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("h.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for inspection
    assert w.stats()["corrupt_moved"] == 1
    assert "history database damaged" in caplog.text and str(aside[0]) in caplog.text
    w.add_exited([exited(7, (7,) * 8)])
    assert w.flush() == 1
    w.stop()
    conn = apsw.Connection(str(path))
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    assert [r[0] for r in conn.execute("SELECT tgid FROM exited")] == [7]
    conn.close()


def test_not_a_database_is_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"not sqlite at all" * 1000)
    with pytest.raises(history.StoreError, match="not a database"):
        writer(path)
    assert [p.name for p in tmp_path.iterdir()] == ["h.db"]


def test_running_processes_continue_from_their_samples(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    w = writer(path, sample_interval_s=60.0)
    w.add_samples(60.0, 60.0, [(task_row(5, (1, 10, 0, 0, 0, 0, 0, 0)), 0)])
    w.add_samples(120.0, 60.0, [(task_row(5, (3, 30, 0, 0, 0, 0, 0, 0)), 0)])
    w.add_samples(120.0, 60.0, [(task_row(6, (9,) * 8), 0)])
    w.add_exited([exited(6, (9,) * 8, btime=506)])  # finished: not restored
    w.flush()
    w.stop()
    again = writer(path, sample_interval_s=60.0)
    keys = [(5, 505), (6, 506), (7, 507), (5, 999)]  # (5, 999): another process on pid 5
    assert again.running_counters(keys) == {(5, 505): (3, 30, 0, 0, 0, 0, 0, 0)}
    # The next sample's delta starts from the restored counters, not from zero.
    again.add_samples(180.0, 60.0, [(task_row(5, (4, 40, 0, 0, 0, 0, 0, 0)), 0)])
    again.flush()
    again.stop()
    conn = apsw.Connection(str(path))
    sums = conn.execute(
        "SELECT sum(tcpsndpacks), sum(tcpsndbytes) FROM samples WHERE tgid = 5"
    ).fetchall()
    conn.close()
    assert sums == [(4, 40)]
