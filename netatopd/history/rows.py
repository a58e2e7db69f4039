"""How a process becomes a row of the history tables, and back.

Owns the column order of ``exited`` and ``samples`` as this code binds them,
the batch upsert statements, the SELECT of finished processes, and the
conversions: an ``ExitedTask`` to an ``exited`` row (:func:`exited_row`) and
back (:func:`exited_task`), with the clamping and text cleaning SQLite needs.

Callers: ``HistoryWriter`` (writer.py) builds rows and binds the upserts;
``query_exited`` (reports.py) turns rows back into ``ExitedTask``;
bench/bench_store.py builds its reference rows with :func:`exited_row`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol import COUNTER_NAMES
from ..tasks import ExitedTask
from .timeparse import finite_seconds

INT64_MAX = (1 << 63) - 1  # SQLite INTEGER; counters are u64 but never get near this
# Where a process ran (schema version 4), after the counters; NULL when unknown.
PLACE_COLUMNS = ("cgroup", "unit", "container")

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
    *PLACE_COLUMNS,
)
_SAMPLES_COLUMNS = (
    "time",
    "interval_s",
    "tgid",
    "btime",
    "command",
    "uid",
    *COUNTER_NAMES,
    *PLACE_COLUMNS,
)

# A row as bound to EXITED_INSERT / SAMPLES_INSERT, in the column order above.
# ExitedRow: tgid, btime, command, cmdline, uid, first_activity, last_activity, exit_time,
# then the counters, cgroup, unit, container.  SampleRow: time, interval_s, tgid, btime,
# command, uid, the deltas, cgroup, unit, container.
ExitedRow = tuple[object, ...]
SampleRow = tuple[object, ...]


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
EXITED_INSERT = _json_upsert(
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
        *(f"{name} = coalesce(excluded.{name}, {name})" for name in PLACE_COLUMNS),
    ],
)
SAMPLES_INSERT = _json_upsert(
    "samples",
    _SAMPLES_COLUMNS,
    "time, tgid, btime",
    [
        "interval_s = excluded.interval_s",
        "command = excluded.command",
        "uid = excluded.uid",
        *(f"{name} = excluded.{name}" for name in COUNTER_NAMES),
        *(f"{name} = excluded.{name}" for name in PLACE_COLUMNS),
    ],
)
EXITED_SELECT = (
    "SELECT tgid, btime, command, cmdline, uid, first_activity, last_activity, exit_time,"
    f" {_COUNTER_COLUMNS}, {', '.join(PLACE_COLUMNS)} FROM exited"
)


def _clamp(value: int) -> int:
    value = int(value)
    if value < 0:
        return 0
    return INT64_MAX if value > INT64_MAX else value


def clean_text(value: object) -> str:
    """A str SQLite can store: undecodable bytes (surrogate escapes) become U+FFFD."""
    result = str(value)
    try:
        result.encode("utf-8")
        return result
    except UnicodeEncodeError:
        pass
    try:
        return result.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return result.encode("utf-8", "replace").decode("utf-8")


def clamp_counters(values: Iterable[int]) -> tuple[int, ...]:
    """The eight counters, clamped to what SQLite stores; ValueError for another count."""
    result = tuple(_clamp(v) for v in values)
    if len(result) != len(COUNTER_NAMES):
        raise ValueError(f"{len(result)} counters, expected {len(COUNTER_NAMES)}")
    return result


def exited_row(task: ExitedTask) -> ExitedRow:
    """The ``exited`` row of a finished process; unknown fields become NULL."""
    return (
        int(task.tgid),
        int(task.btime),
        clean_text(task.command),
        clean_text(task.cmdline) if task.cmdline else None,
        int(task.uid) if task.uid >= 0 else None,
        finite_seconds(task.first_activity_s) if task.first_activity_s > 0 else None,
        finite_seconds(task.last_activity_s) if task.last_activity_s > 0 else None,
        finite_seconds(task.exit_time_s),
        *clamp_counters(task.counters),
        *place_values(task.cgroup, task.unit, task.container),
    )


def place_values(cgroup: str, unit: str, container: str) -> tuple[str | None, ...]:
    """cgroup, unit, container as stored: "" (unknown, or none) becomes NULL."""
    return tuple(clean_text(v) if v else None for v in (cgroup, unit, container))


def exited_task(row: Iterable[object]) -> ExitedTask:
    """A row of EXITED_SELECT as an ExitedTask; NULLs become the task's 'unknown' values."""
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
        counters=tuple(int(v) for v in values[8:16]),  # type: ignore[call-overload]
        cgroup=str(values[16] or "") if len(values) > 16 else "",
        unit=str(values[17] or "") if len(values) > 17 else "",
        container=str(values[18] or "") if len(values) > 18 else "",
    )
