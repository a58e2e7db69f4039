"""Stage 7: durable history in SQLite (apsw).

Owns the history database: the one place its connection pragmas are set
(:func:`open_db`), the schema runner (``sql/schema.sql`` plus the numbered
files in ``sql/migrations/``, tracked with ``PRAGMA user_version``), the
background writer that persists finished processes and samples of running
processes (:class:`HistoryWriter`), and the SQL reports in ``sql/reports/``
(:func:`list_reports`, :func:`run_report`, :func:`query_exited`).

Callers: daemon.py creates one HistoryWriter and feeds it from the capture
loop (``add_exited`` from the exit-list sweep, ``add_samples`` on the sample
timer; neither waits for the disk); cli.py opens the database read-only for
``netatop report`` and ``netatop exited``.

Only the writer thread touches the writer's connection.  Records wait in
memory (bounded by ``max_pending``) until a batch commits; a failed or skipped
write keeps them for the next interval.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from datetime import time as dt_time
from pathlib import Path
from typing import NamedTuple

import apsw
import apsw.ext

from .protocol import COUNTER_NAMES
from .tasks import ExitedTask, Kind, TaskRow

log = logging.getLogger(__name__)

DEFAULT_DB_PATH = "/var/lib/netatop/netatop.db"
DB_DIRECTORY_MODE = 0o750
BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # WAL file truncated to this after a checkpoint
ROWS_PER_TRANSACTION = 10_000  # a catch-up after a long outage commits in slices
# Rows per INSERT statement: json.dumps holds the GIL (the capture thread waits) for
# about 1 ms per 500 rows; SQLite then runs the statement with the GIL released.
ROWS_PER_STATEMENT = 500
PRUNE_ROWS_PER_TRANSACTION = 1000  # retention deletes hold the write lock this long only
PRUNE_MAX_TRANSACTIONS = 200  # per writer cycle; the rest waits for the next cycle
PRUNE_INTERVAL_S = 600.0
PREVIOUS_SAMPLE_GRACE = 3  # samples a process may be missing before its base is forgotten
ERROR_LOG_INTERVAL_S = 300.0  # the same write error is logged again after this long
SECONDS_PER_DAY = 86400.0
INT64_MAX = (1 << 63) - 1  # SQLite INTEGER; counters are u64 but never get near this

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed package data first (netatopd/sql), then the repository layout (sql/ beside
# the package), which is what an editable install sees.
SQL_DIR_CANDIDATES: tuple[Path, ...] = (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql")

_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")
_RELATIVE_TIME = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_TIME_OF_DAY = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_RELATIVE_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_COUNTER_COLUMNS = ", ".join(COUNTER_NAMES)
_EXITED_COLUMNS = (
    "tgid",
    "btime",
    "command",
    "cmdline",
    "uid",
    "first_activity",
    "last_activity",
    "exit_time",
    *COUNTER_NAMES,
)
_SAMPLES_COLUMNS = ("time", "interval_s", "tgid", "btime", "command", "uid", *COUNTER_NAMES)


def _json_upsert(table: str, columns: tuple[str, ...], key: str, updates: list[str]) -> str:
    """INSERT of every row of a JSON array of arrays (one parameter), with ON CONFLICT.

    One statement for a whole batch instead of executemany: SQLite then runs in one
    call that drops the GIL once, so a busy capture thread cannot slow the writer
    down by taking the GIL back between rows (measured in bench/bench_store.py).
    """
    values = ", ".join(f"value ->> {index}" for index in range(len(columns)))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM json_each(?)"
        f" WHERE true ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"
    )


# Later records win: counters never decrease while a process lives, and a retried
# write carries the same or later values; what the later record does not know is kept.
_EXITED_INSERT = _json_upsert(
    "exited",
    _EXITED_COLUMNS,
    "tgid, btime",
    [
        "command = excluded.command",
        "cmdline = coalesce(excluded.cmdline, cmdline)",
        "uid = coalesce(excluded.uid, uid)",
        "first_activity = coalesce(excluded.first_activity, first_activity)",
        "last_activity = coalesce(excluded.last_activity, last_activity)",
        "exit_time = excluded.exit_time",
        *(f"{name} = excluded.{name}" for name in COUNTER_NAMES),
    ],
)
_SAMPLES_INSERT = _json_upsert(
    "samples",
    _SAMPLES_COLUMNS,
    "time, tgid, btime",
    [
        "interval_s = excluded.interval_s",
        "command = excluded.command",
        "uid = excluded.uid",
        *(f"{name} = excluded.{name}" for name in COUNTER_NAMES),
    ],
)
_EXITED_SELECT = (
    "SELECT tgid, btime, command, cmdline, uid, first_activity, last_activity, exit_time,"
    f" {_COUNTER_COLUMNS} FROM exited"
)

# A row as bound to _EXITED_INSERT / _SAMPLES_INSERT.
# ExitedRow: tgid, btime, command, cmdline, uid, first_activity, last_activity, exit_time,
# then the counters.  SampleRow: time, interval_s, tgid, btime, command, uid, the deltas.
ExitedRow = tuple[object, ...]
SampleRow = tuple[object, ...]


class StoreError(Exception):
    """The history database cannot be opened, migrated or queried as asked."""

    def __init__(self, message: str, path: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.code = code  # SQLite extended result code when SQLite said no


# --------------------------------------------------------------------------- schema


def sql_dir() -> Path:
    """The directory holding schema.sql, migrations/ and reports/."""
    for candidate in SQL_DIR_CANDIDATES:
        if (candidate / "schema.sql").is_file():
            return candidate
    raise StoreError(
        "SQL files not found: looked for schema.sql in "
        + " and ".join(str(c) for c in SQL_DIR_CANDIDATES)
    )


def schema_steps(directory: Path | None = None) -> list[tuple[int, Path]]:
    """(version, file) in order: schema.sql is version 1, then each migration.

    Raises StoreError when migration numbers repeat or leave a gap.
    """
    base = directory if directory is not None else sql_dir()
    steps: list[tuple[int, Path]] = [(1, base / "schema.sql")]
    migrations = base / "migrations"
    numbered: list[tuple[int, Path]] = []
    if migrations.is_dir():
        for entry in sorted(migrations.iterdir()):
            if entry.suffix != ".sql":
                continue
            match = _MIGRATION_NAME.match(entry.name)
            if match is None:
                raise StoreError(f"migration file name not NNNN_name.sql: {entry}", str(entry))
            numbered.append((int(match.group(1)), entry))
    numbered.sort()
    for expected, (number, entry) in enumerate(numbered, start=2):
        if number != expected:
            raise StoreError(
                f"migrations must be numbered 0002, 0003 ... without gaps or repeats:"
                f" found {entry.name} where {expected:04d} was expected",
                str(entry),
            )
    return steps + numbered


def latest_schema_version() -> int:
    """The schema version this code writes and reads."""
    return schema_steps()[-1][0]


def _scalar_int(conn: apsw.Connection, sql: str) -> int:
    value = conn.execute(sql).fetchall()[0][0]
    if not isinstance(value, int):
        raise StoreError(f"{sql!r} answered {value!r}, not an integer")
    return value


def _user_version(conn: apsw.Connection) -> int:
    return _scalar_int(conn, "PRAGMA user_version")


def _table_count(conn: apsw.Connection) -> int:
    return _scalar_int(conn, "SELECT count(*) FROM sqlite_schema")


def _migrate(conn: apsw.Connection, path: str) -> None:
    """Bring the database to the latest version, one transaction per step."""
    steps = schema_steps()
    latest = steps[-1][0]
    version = _user_version(conn)
    if version > latest:
        raise StoreError(
            f"{path}: database schema version {version} is newer than this netatop"
            f" (version {latest}); use a newer netatop or another --db",
            path,
        )
    for number, file in steps:
        if number <= version:
            continue
        script = file.read_text(encoding="utf-8")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = _user_version(conn)  # another process may have migrated meanwhile
                if current >= number:
                    conn.execute("ROLLBACK")
                    version = current
                    continue
                if current == 0 and _table_count(conn) > 0:
                    raise StoreError(
                        f"{path}: not a netatop database (user_version 0 but it has tables)",
                        path,
                    )
                conn.execute(script).fetchall()  # a cursor runs later statements lazily
                conn.execute(f"PRAGMA user_version = {number:d}")
                conn.execute("COMMIT")
            except BaseException:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                raise
        except apsw.Error as err:
            raise StoreError(
                f"{path}: applying {file.name} (schema version {number}) failed: {err}",
                path,
                getattr(err, "extendedresult", None),
            ) from err
        log.info("%s: schema version %d applied (%s)", path, number, file.name)
        version = number


def open_db(path: str, readonly: bool = False) -> apsw.Connection:
    """Open the history database with the project's pragmas.

    Writing: creates the parent directory (mode 0750) and the database, turns on
    WAL, and applies schema.sql and pending migrations.  Read-only: the database
    must exist at the latest schema version; works while the daemon writes.
    Raises StoreError with a sentence a person can act on.
    """
    if readonly:
        if not os.path.exists(path):
            raise StoreError(
                f"{path}: no history database here (has netatopd run with --db?)", path
            )
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=DB_DIRECTORY_MODE)
                os.chmod(parent, DB_DIRECTORY_MODE)  # makedirs' mode is filtered by the umask
            except OSError as err:
                raise StoreError(
                    f"{parent}: cannot create the database directory: {err.strerror}",
                    path,
                ) from err
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(path, flags=flags)
    except apsw.Error as err:
        raise StoreError(f"{path}: cannot open the history database: {err}", path) from err
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            version = _user_version(conn)  # also proves the file is a database
            latest = latest_schema_version()
            if version != latest:
                raise StoreError(
                    f"{path}: database schema version {version}, this netatop reads version"
                    f" {latest}"
                    + (
                        "; use a newer netatop"
                        if version > latest
                        else "; start netatopd once to migrate it"
                    ),
                    path,
                )
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                log.warning(
                    "%s: journal_mode is %s, not wal: readers may block the writer", path, mode
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES:d}")
            _migrate(conn, path)
    except StoreError:
        conn.close()
        raise
    except apsw.Error as err:
        conn.close()
        raise StoreError(
            f"{path}: cannot use the history database: {err}",
            path,
            getattr(err, "extendedresult", None),
        ) from err
    return conn


# --------------------------------------------------------------------------- rows


def _clamp(value: int) -> int:
    value = int(value)
    if value < 0:
        return 0
    return INT64_MAX if value > INT64_MAX else value


def _text(value: object) -> str:
    """A str SQLite can store: undecodable bytes (surrogate escapes) become U+FFFD."""
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _seconds(value: float) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"time {value!r} is not a finite number")
    return result


def _counters(values: Iterable[int]) -> tuple[int, ...]:
    result = tuple(_clamp(v) for v in values)
    if len(result) != len(COUNTER_NAMES):
        raise ValueError(f"{len(result)} counters, expected {len(COUNTER_NAMES)}")
    return result


def _exited_row(task: ExitedTask) -> ExitedRow:
    return (
        int(task.tgid),
        int(task.btime),
        _text(task.command),
        _text(task.cmdline) if task.cmdline else None,
        int(task.uid) if task.uid >= 0 else None,
        _seconds(task.first_activity_s) if task.first_activity_s > 0 else None,
        _seconds(task.last_activity_s) if task.last_activity_s > 0 else None,
        _seconds(task.exit_time_s),
        *_counters(task.counters),
    )


def _exited_task(row: Iterable[object]) -> ExitedTask:
    values = list(row)
    tgid, btime, command, cmdline, uid, first, last, exit_time = values[:8]
    return ExitedTask(
        tgid=int(tgid),  # type: ignore[call-overload]
        btime=int(btime),  # type: ignore[call-overload]
        command=str(command),
        cmdline=str(cmdline) if cmdline is not None else "",
        uid=int(uid) if uid is not None else -1,  # type: ignore[call-overload]
        first_activity_s=float(first) if first is not None else 0.0,  # type: ignore[arg-type]
        last_activity_s=float(last) if last is not None else 0.0,  # type: ignore[arg-type]
        exit_time_s=float(exit_time),  # type: ignore[arg-type]
        counters=tuple(int(v) for v in values[8:]),  # type: ignore[call-overload]
    )


def query_exited(
    conn: apsw.Connection,
    since_s: float | None = None,
    until_s: float | None = None,
    limit: int | None = None,
) -> list[ExitedTask]:
    """Finished processes with exit_time in [since_s, until_s), oldest first."""
    sql = (
        _EXITED_SELECT + " WHERE (:since IS NULL OR exit_time >= :since)"
        " AND (:until IS NULL OR exit_time < :until)"
        " ORDER BY exit_time, tgid, btime LIMIT coalesce(:limit, -1)"
    )
    try:
        rows = conn.execute(sql, {"since": since_s, "until": until_s, "limit": limit}).fetchall()
    except apsw.Error as err:
        raise StoreError(f"reading finished processes failed: {err}") from err
    return [_exited_task(row) for row in rows]


# --------------------------------------------------------------------------- writer


class _SampleBatch(NamedTuple):
    time_s: float
    interval_s: float
    rows: list[tuple[TaskRow, int]]


class _Previous(NamedTuple):
    counters: tuple[int, ...]
    sample_number: int


def _default_free_fraction(path: str) -> float:
    """Free fraction of the filesystem holding path (blocks available to the caller)."""
    stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    if stat.f_blocks == 0:
        return 1.0
    return stat.f_bavail / stat.f_blocks


class HistoryWriter:
    """Persists finished processes and samples from a background thread.

    ``add_exited`` and ``add_samples`` only append to a list under a lock held for
    microseconds; the writer thread turns what arrived into rows every
    ``flush_interval_s`` and commits them.  Records that could not be written
    (disk nearly full, any SQLite error) stay in memory and are retried; past
    ``max_pending`` records new ones are dropped and counted.

    ``free_fraction`` (path -> free fraction of its filesystem) replaces os.statvfs
    in tests; ``on_persist`` is called from the writer thread with the (tgid, btime)
    keys of finished processes right after the transaction holding them committed.
    """

    def __init__(
        self,
        path: str,
        flush_interval_s: float = 5.0,
        sample_interval_s: float | None = 60.0,
        retention_days: float = 30.0,
        max_pending: int = 100_000,
        min_free_fraction: float = 0.05,
        *,
        free_fraction: Callable[[str], float] | None = None,
        on_persist: Callable[[list[tuple[int, int]]], None] | None = None,
    ) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.sample_interval_s = sample_interval_s
        self.retention_days = retention_days
        self.max_pending = max_pending
        self.min_free_fraction = min_free_fraction
        self._free_fraction = free_fraction or _default_free_fraction
        self._on_persist = on_persist
        self._conn: apsw.Connection | None = open_db(path)  # start-up errors reach the caller

        # Shared with the callers, under _lock (never held during I/O).
        self._lock = threading.Lock()
        self._incoming: list[ExitedTask | _SampleBatch] = []
        self._incoming_records = 0
        self._backlog_records = 0  # published copy of the writer's backlog size
        self._closed = False

        # Writer-owned (writer thread, or the caller of flush() before start()).
        self._exit_rows: dict[tuple[int, int], ExitedRow] = {}
        self._sample_rows: dict[tuple[float, int, int], SampleRow] = {}
        self._previous: dict[tuple[int, int], _Previous] = {}
        self._sample_number = 0
        self._last_sample_time_s: float | None = None
        self._last_sample_added_s: float | None = None
        self._disk_low = False
        self._next_prune_s = 0.0
        self._last_error_logged: tuple[int, float] = (0, 0.0)

        # Flush hand-shake with the writer thread.
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._flush_requested = 0
        self._flush_done = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

        self._stats: dict[str, int] = {
            "persisted_exited": 0,
            "persisted_samples": 0,
            "dropped": 0,
            "rejected": 0,
            "disk_full_skips": 0,
            "write_errors": 0,
            # SQLite extended result code and OS errno of the last failed write; 0 after a success
            "last_error": 0,
            "last_errno": 0,
            "pruned": 0,
            "last_commit_time": 0,  # epoch seconds
        }

    # ---- producer side (capture thread) -------------------------------------------

    def _admit(self, items: list[ExitedTask] | list[_SampleBatch], records: int) -> int:
        """Queue items unless past max_pending; returns how many records were dropped."""
        with self._lock:
            room = self.max_pending - self._incoming_records - self._backlog_records
            if self._closed or room < records:
                self._stats["dropped"] += records
                return records
            self._incoming.extend(items)
            self._incoming_records += records
            return 0

    def add_exited(self, records: Iterable[ExitedTask]) -> None:
        """Queue finished processes; never waits for the disk."""
        batch = list(records)
        if not batch:
            return
        with self._lock:
            room = self.max_pending - self._incoming_records - self._backlog_records
            if self._closed:
                room = 0
            accepted = batch if room >= len(batch) else batch[: max(room, 0)]
            self._incoming.extend(accepted)
            self._incoming_records += len(accepted)
            self._stats["dropped"] += len(batch) - len(accepted)

    def add_samples(
        self, time_s: float, interval_s: float, rows: Iterable[tuple[TaskRow, int]]
    ) -> None:
        """Queue one sample of running processes: (row, uid) with cumulative counters.

        Ignored when sampling is disabled.  Threads (Kind.THREAD) are left out.
        """
        if self.sample_interval_s is None:
            return
        batch = [(row, uid) for row, uid in rows if row.kind == Kind.PROCESS]
        self._last_sample_added_s = time_s
        self._admit([_SampleBatch(float(time_s), float(interval_s), batch)], len(batch))

    def sample_due(self, now_s: float) -> bool:
        """Whether the daemon should take a sample now (sampling on, interval elapsed)."""
        if self.sample_interval_s is None:
            return False
        last = self._last_sample_added_s
        return last is None or now_s - last >= self.sample_interval_s

    def stats(self) -> dict[str, int]:
        """Counters for `netatop status`: persisted, dropped, pending, errors ..."""
        with self._lock:
            result = dict(self._stats)
            result["pending"] = self._incoming_records + self._backlog_records
        return result

    # ---- control ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="netatop-history", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float | None = None) -> int:
        """Write what is pending now; returns the rows committed while it waited.

        With the writer thread running, asks it for a cycle and waits (at most
        timeout_s); otherwise runs the cycle in the calling thread.
        """
        if self._closed:
            return 0
        if self._thread is None or not self._thread.is_alive():
            return self._cycle()
        with self._cond:
            before = self._stats["persisted_exited"] + self._stats["persisted_samples"]
            self._flush_requested += 1
            ticket = self._flush_requested
            self._wake.set()
            self._cond.wait_for(lambda: self._flush_done >= ticket, timeout_s)
            return self._stats["persisted_exited"] + self._stats["persisted_samples"] - before

    def stop(self) -> None:
        """Final flush, stop the thread, close the database.

        Records handed over after stop() began are dropped (and counted).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            with self._cond:
                self._stopping = True
                self._wake.set()
            thread.join()
        else:
            self._cycle()
        with self._lock:
            lost = self._incoming_records + self._backlog_records
        if lost:
            log.warning("%s: %d records could not be written before shutdown", self.path, lost)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            with self._cond:
                ticket = self._flush_requested
                stopping = self._stopping
            try:
                self._cycle()
            except Exception:  # the writer must outlive any bug in one cycle
                log.exception("%s: history writer cycle failed", self.path)
            with self._cond:
                self._flush_done = ticket
                self._cond.notify_all()
            if stopping:
                return

    def _cycle(self) -> int:
        """Take what arrived, write the backlog, prune when due; rows committed."""
        self._take_incoming()
        written = self._write_backlog()
        now = time.time()
        if self.retention_days > 0 and now >= self._next_prune_s and not self._disk_low:
            self._next_prune_s = now + PRUNE_INTERVAL_S
            self.prune(now)
        return written

    def _take_incoming(self) -> None:
        with self._lock:
            items = self._incoming
            taken = self._incoming_records
            self._incoming = []
        rejected = 0
        for item in items:
            try:
                if isinstance(item, _SampleBatch):
                    rejected += self._add_sample_rows(item)
                else:
                    self._add_exit_row(item)
            except (TypeError, ValueError, OverflowError) as err:
                rejected += 1
                log.warning("%s: record refused: %s (%r)", self.path, err, item)
        dropped = self._enforce_bound()
        with self._lock:
            self._incoming_records -= taken
            self._backlog_records = len(self._exit_rows) + len(self._sample_rows)
            self._stats["rejected"] += rejected
            self._stats["dropped"] += dropped

    def _add_exit_row(self, task: ExitedTask) -> None:
        row = _exited_row(task)
        key = (int(task.tgid), int(task.btime))
        self._exit_rows[key] = row
        previous = self._previous.pop(key, None)
        if self.sample_interval_s is None:
            return
        # The process's last interval: from its last sample to its exit.
        delta = _delta(_counters(task.counters), previous.counters if previous else None)
        if not any(delta):
            return
        exit_time_s = _seconds(task.exit_time_s)
        if self._last_sample_time_s is not None:
            interval_s = exit_time_s - self._last_sample_time_s
        elif task.first_activity_s > 0:
            interval_s = exit_time_s - _seconds(task.first_activity_s)
        else:
            interval_s = 0.0
        self._sample_rows[(exit_time_s, key[0], key[1])] = (
            exit_time_s,
            max(0.0, interval_s),
            key[0],
            key[1],
            _text(task.command),
            int(task.uid) if task.uid >= 0 else None,
            *delta,
        )

    def _add_sample_rows(self, batch: _SampleBatch) -> int:
        """Deltas of one sample into the backlog; returns the rows refused."""
        time_s = _seconds(batch.time_s)
        interval_s = _seconds(batch.interval_s)
        self._sample_number += 1
        number = self._sample_number
        rejected = 0
        for task, uid in batch.rows:
            try:
                key = (int(task.tgid), int(task.btime))
                counters = _counters(task.counters)
                row_tail = (_text(task.command), int(uid) if uid >= 0 else None)
            except (TypeError, ValueError, OverflowError) as err:
                rejected += 1
                log.warning("%s: sample row refused: %s (%r)", self.path, err, task)
                continue
            previous = self._previous.get(key)
            delta = _delta(counters, previous.counters if previous is not None else None)
            self._previous[key] = _Previous(counters, number)
            if any(delta):
                self._sample_rows[(time_s, key[0], key[1])] = (
                    time_s,
                    interval_s,
                    key[0],
                    key[1],
                    *row_tail,
                    *delta,
                )
        self._last_sample_time_s = time_s
        # Forget bases of processes missing from several samples (their exit never came).
        stale = [
            k
            for k, p in self._previous.items()
            if number - p.sample_number >= PREVIOUS_SAMPLE_GRACE
        ]
        for key in stale:
            del self._previous[key]
        return rejected

    def _enforce_bound(self) -> int:
        """Drop the oldest samples, then the newest exits, past max_pending."""
        excess = len(self._exit_rows) + len(self._sample_rows) - self.max_pending
        dropped = 0
        while excess > 0 and self._sample_rows:
            del self._sample_rows[next(iter(self._sample_rows))]
            excess -= 1
            dropped += 1
        while excess > 0 and self._exit_rows:
            self._exit_rows.popitem()
            excess -= 1
            dropped += 1
        return dropped

    def _disk_has_room(self) -> bool:
        try:
            free = self._free_fraction(self.path)
        except OSError as err:
            log.debug("%s: statvfs failed: %s", self.path, err.strerror)
            return True
        if free < self.min_free_fraction:
            if not self._disk_low:
                log.warning(
                    "%s: filesystem %.1f%% free (below %.1f%%): history writes paused,"
                    " records kept in memory (at most %d)",
                    self.path,
                    free * 100.0,
                    self.min_free_fraction * 100.0,
                    self.max_pending,
                )
            self._disk_low = True
            with self._lock:
                self._stats["disk_full_skips"] += 1
            return False
        if self._disk_low:
            log.warning(
                "%s: filesystem %.1f%% free again: writing %d waiting records",
                self.path,
                free * 100.0,
                len(self._exit_rows) + len(self._sample_rows),
            )
            self._disk_low = False
        return True

    def _write_backlog(self) -> int:
        if not self._exit_rows and not self._sample_rows:
            return 0
        if not self._disk_has_room():
            return 0
        written = 0
        while self._exit_rows or self._sample_rows:
            exit_keys = list(self._exit_rows)[:ROWS_PER_TRANSACTION]
            sample_keys = list(self._sample_rows)[: ROWS_PER_TRANSACTION - len(exit_keys)]
            if not self._commit(exit_keys, sample_keys):
                break
            written += len(exit_keys) + len(sample_keys)
        return written

    def _commit(
        self, exit_keys: list[tuple[int, int]], sample_keys: list[tuple[float, int, int]]
    ) -> bool:
        """One transaction; on success the rows leave the backlog."""
        try:
            if self._conn is None:
                self._conn = open_db(self.path)
            exit_rows = [self._exit_rows[k] for k in exit_keys]
            sample_rows = [self._sample_rows[k] for k in sample_keys]

            def write(conn: apsw.Connection) -> int:
                for statement, rows in (
                    (_EXITED_INSERT, exit_rows),
                    (_SAMPLES_INSERT, sample_rows),
                ):
                    for start in range(0, len(rows), ROWS_PER_STATEMENT):
                        chunk = rows[start : start + ROWS_PER_STATEMENT]
                        conn.execute(statement, (json.dumps(chunk, ensure_ascii=False),))
                return len(exit_rows) + len(sample_rows)

            _in_transaction(self._conn, write)
        except (apsw.Error, StoreError) as err:
            self._write_failed(err)
            return False
        self._last_error_logged = (0, 0.0)  # the next failure is news again
        for exit_key in exit_keys:
            del self._exit_rows[exit_key]
        for sample_key in sample_keys:
            del self._sample_rows[sample_key]
        with self._lock:
            self._stats["persisted_exited"] += len(exit_keys)
            self._stats["persisted_samples"] += len(sample_keys)
            self._stats["last_error"] = 0
            self._stats["last_errno"] = 0
            self._stats["last_commit_time"] = int(time.time())
            self._backlog_records = len(self._exit_rows) + len(self._sample_rows)
        if exit_keys and self._on_persist is not None:
            try:
                self._on_persist(exit_keys)
            except Exception:
                log.exception("%s: on_persist callback failed", self.path)
        return True

    def _write_failed(self, err: apsw.Error | StoreError) -> None:
        """Log (not too often), count, and drop the connection so the next try reopens."""
        if isinstance(err, StoreError):
            code = err.code or 0
            cause = err.__cause__
        else:
            code = int(getattr(err, "extendedresult", 0) or 0)
            cause = err
        os_errno = 0
        if self._conn is not None:
            try:
                os_errno = int(self._conn.system_errno)
            except apsw.Error:
                os_errno = 0
        os_error = (
            f", errno {os_errno} {errno.errorcode.get(os_errno, '?')}: {os.strerror(os_errno)}"
            if os_errno
            else ""
        )
        now = time.monotonic()
        last_code, last_time = self._last_error_logged
        if code != last_code or now - last_time >= ERROR_LOG_INTERVAL_S:
            log.error(
                "%s: history write failed, %d records kept for the next try: %s (SQLite code %d%s)",
                self.path,
                len(self._exit_rows) + len(self._sample_rows),
                err,
                code,
                os_error,
            )
            self._last_error_logged = (code, now)
        else:
            log.debug("%s: history write failed again: %s", self.path, cause)
        with self._lock:
            self._stats["write_errors"] += 1
            self._stats["last_error"] = code
            self._stats["last_errno"] = os_errno
        if not isinstance(err, apsw.BusyError) and self._conn is not None:
            try:
                self._conn.close()
            except apsw.Error:
                pass
            self._conn = None

    def prune(self, now_s: float | None = None) -> int:
        """Delete rows older than retention_days, in small transactions; rows deleted.

        Runs in the writer thread; call it directly only before start().
        """
        if self.retention_days <= 0:
            return 0
        now = time.time() if now_s is None else now_s
        cutoff = now - self.retention_days * SECONDS_PER_DAY
        deleted = 0
        statements = (
            "DELETE FROM exited WHERE rowid IN"
            " (SELECT rowid FROM exited WHERE exit_time < ? LIMIT ?)",
            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE time < ? LIMIT ?)",
        )
        transactions = 0
        try:
            if self._conn is None:
                self._conn = open_db(self.path)
            conn = self._conn
            for statement in statements:
                while transactions < PRUNE_MAX_TRANSACTIONS:

                    def delete(conn: apsw.Connection, statement: str = statement) -> int:
                        conn.execute(statement, (cutoff, PRUNE_ROWS_PER_TRANSACTION))
                        return conn.changes()

                    changed = _in_transaction(conn, delete)
                    transactions += 1
                    deleted += changed
                    if changed < PRUNE_ROWS_PER_TRANSACTION:
                        break
        except (apsw.Error, StoreError) as err:
            self._write_failed(err)
        if transactions >= PRUNE_MAX_TRANSACTIONS:
            self._next_prune_s = 0.0  # more to delete: again next cycle
        with self._lock:
            self._stats["pruned"] += deleted
        if deleted:
            log.info(
                "%s: %d rows older than %g days pruned", self.path, deleted, self.retention_days
            )
        return deleted


def _in_transaction(conn: apsw.Connection, work: Callable[[apsw.Connection], int]) -> int:
    """Run work inside BEGIN IMMEDIATE ... COMMIT; roll back if it raises.

    Not ``with conn``: SQLite rolls a transaction back by itself on SQLITE_FULL and
    some I/O errors, and the savepoint release would then hide the real error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            try:
                conn.execute("ROLLBACK")
            except apsw.Error as err:
                log.debug("rollback after a failed write: %s", err)
        raise
    return result


def _delta(counters: tuple[int, ...], base: tuple[int, ...] | None) -> tuple[int, ...]:
    """counters - base; the full counters when there is no base or a counter went down."""
    if base is None or any(c < b for c, b in zip(counters, base, strict=True)):
        return counters
    return tuple(c - b for c, b in zip(counters, base, strict=True))


# --------------------------------------------------------------------------- reports


class Report(NamedTuple):
    """One sql/reports/NAME.sql file, described by its header comment."""

    name: str
    description: str
    params: tuple[str, ...]  # without the colon: ("since", "until", ...)
    path: str


def _parse_report(path: Path) -> Report | None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("--") or ":" not in lines[0]:
        return None
    name, _, description = lines[0][2:].partition(":")
    params: list[str] = []
    for line in lines[1:]:
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if text.lower().startswith("params:"):
            for word in text[len("params:") :].split():
                if not word.startswith(":") or len(word) < 2:
                    return None
                params.append(word[1:])
    return Report(name.strip(), description.strip(), tuple(params), str(path))


def reports_dir() -> Path:
    return sql_dir() / "reports"


def list_reports(directory: Path | str | None = None) -> list[Report]:
    """Every report in sql/reports (or directory), sorted by name.

    A file without a ``-- NAME: description`` first line is skipped with a warning.
    """
    base = Path(directory) if directory is not None else reports_dir()
    result: list[Report] = []
    for path in sorted(base.glob("*.sql")):
        report = _parse_report(path)
        if report is None:
            log.warning("%s: no '-- NAME: description' header, report skipped", path)
            continue
        result.append(report)
    return result


def run_report(
    conn: apsw.Connection,
    name: str,
    params: Mapping[str, object],
    directory: Path | str | None = None,
) -> tuple[list[str], list[tuple[object, ...]]]:
    """Run report NAME; returns (column names, rows).

    params maps parameter names (with or without the colon) to values; a declared
    parameter left out is NULL.  A non-NULL value for a parameter the report does
    not declare is a ValueError (the filter would be silently ignored).  A report
    that would write to the database, holds more than one statement, or whose
    header does not list exactly the parameters its SQL uses, is refused with
    StoreError.
    """
    reports = {r.name: r for r in list_reports(directory)}
    report = reports.get(name)
    if report is None:
        raise StoreError(f"no report named {name!r}; known: {', '.join(sorted(reports)) or 'none'}")
    values = {key.lstrip(":"): value for key, value in params.items()}
    unknown = sorted(k for k, v in values.items() if v is not None and k not in report.params)
    if unknown:
        raise ValueError(f"report {name} takes no parameter {', '.join(':' + k for k in unknown)}")
    bindings = {p: values.get(p) for p in report.params}
    sql = Path(report.path).read_text(encoding="utf-8")
    try:
        info = apsw.ext.query_info(conn, sql)  # prepares only
    except apsw.Error as err:
        raise StoreError(f"report {name} ({report.path}): {err}") from err
    if info.query_remaining and info.query_remaining.strip():
        raise StoreError(f"report {name} ({report.path}): one SQL statement per report")
    if not info.is_readonly:
        raise StoreError(f"report {name} ({report.path}) would change the database; refused")
    used = {b.lstrip(":") for b in info.bindings_names if b}
    if used != set(report.params):
        raise StoreError(
            f"report {name} ({report.path}): header declares"
            f" {' '.join(':' + p for p in report.params) or 'no parameters'} but the SQL uses"
            f" {' '.join(':' + p for p in sorted(used)) or 'none'}"
        )
    columns = [column for column, _ in (info.description or ())]
    try:
        rows = [tuple(row) for row in conn.execute(sql, bindings)]
    except apsw.Error as err:
        raise StoreError(f"report {name} failed: {err}") from err
    return columns, rows


# --------------------------------------------------------------------------- times


def parse_time(text: str, now_s: float | None = None) -> float:
    """Epoch seconds from ISO 8601, a time of day, or a relative age.

    Accepts "2026-11-27T02:00", "2026-11-27 02:00:30", "2026-11-27" (local time
    unless an offset or Z is given), "02:00" (today, local time), "90s" "15m" "2h"
    "1d" "1w" (now minus that), "now" and "@EPOCH".  Anything else is a ValueError.
    """
    value = text.strip()
    now = time.time() if now_s is None else now_s
    if value.lower() == "now":
        return now
    match = _RELATIVE_TIME.match(value.lower())
    if match is not None:
        return now - float(match.group(1)) * _RELATIVE_UNIT_S[match.group(2)]
    if value.startswith("@"):
        try:
            return _seconds(float(value[1:]))
        except ValueError:
            pass
    elif _TIME_OF_DAY.match(value):
        try:
            of_day = dt_time.fromisoformat(value)
            return datetime.combine(datetime.fromtimestamp(now).date(), of_day).timestamp()
        except ValueError:
            pass
    else:
        try:
            return datetime.fromisoformat(value).timestamp()  # naive: local time
        except ValueError:
            pass
    raise ValueError(
        f"cannot read time {text!r}: use ISO 8601 (2026-11-27T02:00 or 2026-11-27),"
        " a time of day today (02:00), a relative age (90s, 15m, 2h, 1d, 1w), now, or @EPOCH"
    )
