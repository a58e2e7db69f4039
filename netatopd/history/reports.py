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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import apsw
import apsw.ext

from ..cgroups import container_group, unit_group
from ..tasks import ExitedTask
from .rows import EXITED_SELECT, exited_task
from .schema import StoreError, sql_dir

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
