"""The history database file: opening it, its pragmas, its schema and migrations.

Owns :func:`open_db`, the one place the connection pragmas are set, and the
schema runner: ``sql/schema.sql`` is version 1, each ``sql/migrations/NNNN_name.sql``
is version NNNN, and ``PRAGMA user_version`` records how far a database has
come.  Each step runs in its own transaction; a database newer than this code
is refused.  Also owns :class:`StoreError`, the one exception the history
package raises, and :func:`sql_dir`, which finds the SQL files.

Also owns the daemon's open (:func:`open_checked`: ``PRAGMA quick_check``, a
damaged file moved aside as ``NAME.corrupt-TIME`` and a fresh one started)
and the read-back of running processes' counters (:func:`running_sums`).

Callers: ``HistoryWriter`` (writer.py) opens the database for writing
(``open_checked``), which creates and migrates it; cli.commands (``netatop
report``, ``netatop exited``) opens it read-only; daemon.check opens it once
for ``netatopd --check``; reports.py finds its report files through
:func:`sql_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import apsw

from ..protocol import COUNTER_NAMES

log = logging.getLogger(__name__)

DB_DIRECTORY_MODE = 0o750
DB_FILE_MODE = 0o600  # the database, its -wal and -shm: root's only (command lines, uids)
BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # WAL file truncated to this after a checkpoint

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # netatopd/
# Installed package data first (netatopd/sql), then the repository layout (sql/ beside
# the package), which is what an editable install sees.
SQL_DIR_CANDIDATES: tuple[Path, ...] = (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql")

_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")


class StoreError(Exception):
    """The history database cannot be opened, migrated or queried as asked."""

    def __init__(self, message: str, path: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.code = code  # SQLite extended result code when SQLite said no


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


def _private_files(path: str) -> None:
    """A missing database is made empty with DB_FILE_MODE before SQLite opens it (the
    umask would give 0644); SQLite gives the -wal and -shm files the database's mode.
    Others' access to an existing database and its -wal and -shm is taken away."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, DB_FILE_MODE
        )
    except FileExistsError:
        for name in (path, path + "-wal", path + "-shm"):
            try:
                st = os.lstat(name)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o007:
                    os.chmod(name, stat.S_IMODE(st.st_mode) & ~0o007)
                    log.warning("%s was readable by every user: access for others removed", name)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("%s: cannot remove others' access: %s", name, err.strerror)
        return
    except OSError as err:
        message = f"{path}: cannot create the history database: {err.strerror}"
        raise StoreError(message, path) from err
    os.fchmod(fd, DB_FILE_MODE)
    os.close(fd)


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
        _private_files(path)
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


QUICK_CHECK_LINES = 3  # problems quoted in the log line when quick_check fails


def _is_corrupt(code: int | None) -> bool:
    """SQLITE_CORRUPT and its extended codes (not SQLITE_NOTADB: not a database at all)."""
    return code is not None and code & 0xFF == apsw.SQLITE_CORRUPT


def quick_check(conn: apsw.Connection) -> str:
    """'' when PRAGMA quick_check finds the database sound, else what it found."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except apsw.Error as err:
        return str(err)
    if rows == [("ok",)]:
        return ""
    found = [str(row[0]) for row in rows]
    more = len(found) - QUICK_CHECK_LINES
    return "; ".join(found[:QUICK_CHECK_LINES]) + (f" (and {more} more)" if more > 0 else "")


def move_aside(path: str, problem: str) -> str:
    """Rename a damaged database (and its WAL) to PATH.corrupt-TIME; the new name.

    The WAL goes with it (a stale WAL must never meet a new database file);
    the shared-memory index is only a cache and is removed.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    target = f"{path}.corrupt-{stamp}"
    number = 1
    while os.path.lexists(target):
        number += 1
        target = f"{path}.corrupt-{stamp}.{number}"
    try:
        os.rename(path, target)
        for suffix in ("-wal", "-journal"):
            if os.path.lexists(path + suffix):
                os.rename(path + suffix, target + suffix)
        if os.path.lexists(path + "-shm"):
            os.unlink(path + "-shm")
    except OSError as err:
        raise StoreError(
            f"{path}: history database damaged ({problem}) and it cannot be moved aside:"
            f" {err.strerror}",
            path,
        ) from err
    log.error(
        "%s: history database damaged (%s): moved aside to %s; starting a fresh one",
        path,
        problem,
        target,
    )
    return target


def open_checked(path: str, check: bool = True) -> tuple[apsw.Connection, str]:
    """open_db for writing, with ``PRAGMA quick_check`` when check; (connection, moved to).

    A database SQLite reports damaged (SQLITE_CORRUPT while opening, or a
    failed quick check) is moved aside (``move_aside``) and a fresh one is
    created; ``moved to`` names where it went ('' when it was sound).  A file
    that is no database at all is refused (StoreError), never moved.
    """
    try:
        conn = open_db(path)
    except StoreError as err:
        if not _is_corrupt(err.code):
            raise
        problem = str(err)
    else:
        problem = quick_check(conn) if check else ""
        if not problem:
            return conn, ""
        conn.close()
    moved_to = move_aside(path, problem)
    return open_db(path), moved_to


_COUNTER_SUMS = ", ".join(f"sum(s.{name})" for name in COUNTER_NAMES)
_RUNNING_SUMS = (
    f"SELECT s.tgid, s.btime, {_COUNTER_SUMS} FROM json_each(?) AS wanted"
    " JOIN samples AS s ON s.tgid = wanted.value ->> 0 AND s.btime = wanted.value ->> 1"
    " WHERE NOT EXISTS (SELECT 1 FROM exited AS e WHERE e.tgid = s.tgid AND e.btime = s.btime)"
    " GROUP BY s.tgid, s.btime"
)


def running_sums(
    conn: apsw.Connection, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], tuple[int, ...]]:
    """What the samples of each process (tgid, btime) add up to, unless it has an exited row.

    Samples hold deltas, so their sum is the process's cumulative counters at
    its last sample.  Uses the index samples_process (migration 0003).
    """
    if not keys:
        return {}
    rows = conn.execute(_RUNNING_SUMS, (json.dumps([list(k) for k in keys]),)).fetchall()
    return {
        (int(row[0]), int(row[1])): tuple(int(v) for v in row[2:])  # type: ignore[arg-type]
        for row in rows
    }
