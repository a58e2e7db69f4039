"""Reading the history back: the SQL report files and the finished processes.

Owns :class:`Report` (one ``sql/reports/NAME.sql`` file, described by its
``-- NAME: description`` and ``-- params: :a :b`` header comment), finding
and checking reports (:func:`list_reports`, :func:`run_report`, which refuses
a report that would write, holds two statements or whose header disagrees
with its SQL), the SQL function reports may call (place_group: the
groups of ``--by unit|container``, the rule of cgroups) and
:func:`query_exited`, the finished processes of a time window.

Callers: cli.commands, on a connection from ``open_db(path, readonly=True)``:
``netatop report`` (list_reports, run_report) and ``netatop exited
--since/--until`` (query_exited).

Also owns :func:`add_live_tail`: for a report over a window that ends now,
the counts of running processes since their last committed sample (the
shared table's cumulative counters minus what their samples add up to),
shown to the reports through TEMP views named ``samples`` and
``sample_totals`` (SQLite looks in temp before main, so every report that
reads the samples sees them, unchanged).  Called by ``netatop report``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import apsw
import apsw.ext

from ..cgroups import container_group, unit_group
from ..protocol import COUNTER_NAMES
from ..tasks import ExitedTask
from .rows import EXITED_SELECT, exited_task
from .schema import StoreError, running_sums, sql_dir

log = logging.getLogger(__name__)


def query_exited(
    conn: apsw.Connection,
    since_s: float | None = None,
    until_s: float | None = None,
    limit: int | None = None,
    pid: int | None = None,
) -> list[ExitedTask]:
    """Finished processes with exit_time in [since_s, until_s), oldest first.

    pid narrows to the processes with that id (more than one if it was reused).
    """
    sql = (
        EXITED_SELECT + " WHERE (:since IS NULL OR exit_time >= :since)"
        " AND (:until IS NULL OR exit_time < :until)"
        " AND (:pid IS NULL OR tgid = :pid)"
        " ORDER BY exit_time, tgid, btime LIMIT coalesce(:limit, -1)"
    )
    bindings = {"since": since_s, "until": until_s, "limit": limit, "pid": pid}
    try:
        rows = conn.execute(sql, bindings).fetchall()
    except apsw.Error as err:
        raise StoreError(f"reading finished processes failed: {err}") from err
    return [exited_task(row) for row in rows]


# The groups of --by unit and --by container, as the CLI makes them of live rows.
_PLACE_GROUPS = {"unit": unit_group, "container": container_group}


def place_group(*values: apsw.SQLiteValue) -> str:
    """SQL ``place_group(by, cgroup, unit, container)``: cgroups.unit_group or container_group."""
    by, cgroup, unit, container = (None if v is None else str(v) for v in values)
    rule = _PLACE_GROUPS.get(by or "")
    if rule is None:
        raise ValueError(f"place_group groups by {' or '.join(_PLACE_GROUPS)}, not {by!r}")
    return rule(cgroup, unit, container)


def add_functions(conn: apsw.Connection) -> None:
    """The SQL functions reports may call: place_group (one rule with the live rows')."""
    conn.create_scalar_function("place_group", place_group, 4, deterministic=True)


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
    add_functions(conn)
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


# ---------------------------------------------------------------------- the live tail

# (tgid, btime, command, cumulative counters in COUNTER_NAMES order) of a running process.
RunningProcess = tuple[int, int, str, tuple[int, ...]]

_TAIL_COLUMNS = (
    "time",
    "interval_s",
    "tgid",
    "btime",
    "command",
    "uid",
    *COUNTER_NAMES,
    "cgroup",
    "unit",
    "container",
)
# Where the process ran, from its latest sample (None for one not sampled yet).
_LATEST_PLACE = (
    "SELECT wanted.value ->> 0, wanted.value ->> 1, s.time, s.uid, s.cgroup, s.unit, s.container"
    " FROM json_each(?) AS wanted JOIN main.samples AS s"
    " ON s.tgid = wanted.value ->> 0 AND s.btime = wanted.value ->> 1"
    " WHERE s.time = (SELECT max(time) FROM main.samples AS m"
    " WHERE m.tgid = s.tgid AND m.btime = s.btime)"
)
_TOTALS = (
    "tcpsndpacks + udpsndpacks AS sndpacks, tcpsndbytes + udpsndbytes AS sndbytes,"
    " tcprcvpacks + udprcvpacks AS rcvpacks, tcprcvbytes + udprcvbytes AS rcvbytes,"
    " tcpsndbytes + udpsndbytes + tcprcvbytes + udprcvbytes AS total_bytes"
)


def add_live_tail(
    conn: apsw.Connection,
    now_s: float,
    running: Iterable[RunningProcess],
    uid_of: Mapping[int, int] | None = None,
) -> int:
    """Show the reports each running process's counts since its last committed sample.

    For each process: its cumulative counters (the shared table's) minus what
    its samples add up to (``running_sums``), each counter at least 0 (after a
    daemon restart the table counts from 0 again: the tail is then too small,
    never counted twice), as one more sample row at now_s whose interval runs
    from the process's last sample.  uid, cgroup, unit and container come from
    that sample (uid_of[tgid] for a process not sampled yet).  The rows go to
    a TEMP table; TEMP views ``samples`` and ``sample_totals`` add them to the
    database's own (a read-only connection may make TEMP objects).  Returns
    the number of processes with a non-zero tail.
    """
    processes = {(tgid, btime): (command, counters) for tgid, btime, command, counters in running}
    keys = [list(key) for key in processes]
    try:
        sums = running_sums(conn, list(processes))
        places = {
            (int(row[0]), int(row[1])): row[2:]
            for row in conn.execute(_LATEST_PLACE, (json.dumps(keys),))
        }
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS live_tail AS SELECT {', '.join(_TAIL_COLUMNS)}"
            " FROM main.samples WHERE 0"
        )
        conn.execute("DELETE FROM temp.live_tail")
        added = 0
        uids = uid_of or {}
        for key, (command, counters) in processes.items():
            base = sums.get(key, (0,) * len(COUNTER_NAMES))
            tail = tuple(max(0, now - then) for now, then in zip(counters, base, strict=True))
            if not any(tail):
                continue
            last_s, uid, cgroup, unit, container = places.get(
                key, (None, uids.get(key[0]), None, None, None)
            )
            interval_s = max(0.0, now_s - float(last_s)) if last_s is not None else 0.0
            conn.execute(
                f"INSERT INTO temp.live_tail VALUES ({', '.join('?' * len(_TAIL_COLUMNS))})",
                (now_s, interval_s, *key, command, uid, *tail, cgroup, unit, container),
            )
            added += 1
        columns = ", ".join(_TAIL_COLUMNS)
        conn.execute(
            "CREATE TEMP VIEW IF NOT EXISTS samples AS"
            f" SELECT {columns} FROM main.samples UNION ALL SELECT {columns} FROM temp.live_tail"
        )
        conn.execute(
            "CREATE TEMP VIEW IF NOT EXISTS sample_totals AS"
            f" SELECT {columns}, {_TOTALS} FROM temp.samples"
        )
    except apsw.Error as err:
        raise StoreError(f"adding the running processes to the report failed: {err}") from err
    return added


def reads_samples(name: str, directory: Path | str | None = None) -> bool:
    """Whether report NAME's SQL reads the samples (its figures are sums of samples)."""
    for report in list_reports(directory):
        if report.name == name:
            lines = Path(report.path).read_text(encoding="utf-8").splitlines()
            sql = " ".join(line for line in lines if not line.lstrip().startswith("--"))
            return re.search(r"\b(samples|sample_totals)\b", sql) is not None
    return False


def last_sample_s(conn: apsw.Connection) -> float | None:
    """Epoch seconds of the newest committed sample (None: no sample yet)."""
    try:
        row = conn.execute("SELECT max(time) FROM main.samples").fetchone()
    except apsw.Error as err:
        raise StoreError(f"reading the samples failed: {err}") from err
    return None if row is None or row[0] is None else float(row[0])
