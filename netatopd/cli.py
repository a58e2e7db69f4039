"""The ``netatop`` command: thin typer commands over the library's readers.

Stage: interfaces.  Owns nothing but formatting and the terminal of
``netatop top``.  Answers come from three places:

* the shared-memory table (table.py) for ``query`` and ``top``, and for the
  table fill of ``status``: read without asking the daemon;
* the control socket (client.py) for ``status``, ``exited``, ``sync``, ``gc``,
  ``wait-exit`` and ``wait-empty``, and for ``query`` when the table is missing
  (a daemon without one);
* the SQLite history (store.py, opened read-only) for ``report`` and
  ``exited --since/--until``.

One row model (a dict: pid, tgid, kind, btime, command and the eight counter
names, plus cmdline, uid and times for rows from SQLite) is rendered by one
table formatter (units, widths, fitted to the terminal), one JSON formatter
and one CSV formatter.

Exit status: 0 success, 1 a process asked for is not known, 2 the daemon is
not running or not reachable (or its table is stale), the database is missing,
or the command line is wrong.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any, NamedTuple, NoReturn, TextIO, TypeVar

import typer

from . import history
from . import status as status_registry
from .client import (
    ControlClient,
    DaemonNotRunning,
    ProtocolError,
    TaskCounters,
    run_dir_from_env,
)
from .protocol import COUNTER_NAMES
from .table import Snapshot, TableError, TableMissing, TableReader, TableStale, open_table
from .tasks import ExitedTask, Kind, TaskRow

log = logging.getLogger(__name__)

EXIT_UNKNOWN_PID = 1
EXIT_UNAVAILABLE = 2
EXIT_INTERRUPTED = 130

# A table counts as stale (daemon alive but stuck) when its last publish is older
# than this many publish intervals, and at least STALE_MIN_S.
STALE_PUBLISHES = 20
STALE_MIN_S = 5.0
TERMINAL_FALLBACK = (80, 24)  # columns, lines: pipes and terminals that do not say
MIN_FLEX_WIDTH = 7  # a shrunk COMMAND column keeps at least this many characters
TOP_INTERVAL_S_DEFAULT = 2.0
TOP_INTERVAL_S_MIN = 0.1
TOP_HEADER_LINES = 5  # title, keys, totals, blank line, column header

NO_THREAD_ROWS = (
    "no thread rows: netatopd publishes per-thread counters only while its eBPF "
    "ownership helper runs (see 'ownership' in netatop status)"
)

Row = dict[str, Any]
T = TypeVar("T")

# The fields of a row from the table or the control socket, in output order.
ROW_FIELDS: tuple[str, ...] = ("pid", "tgid", "kind", "btime", "command", *COUNTER_NAMES)
# A finished process read from SQLite: the same, then what the database adds.
EXITED_DB_FIELDS: tuple[str, ...] = (
    *ROW_FIELDS,
    "cmdline",
    "uid",
    "first_activity",
    "last_activity",
    "exit_time",
)
_BYTE_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("bytes"))
_PACKET_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("packs"))


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


class SortKey(StrEnum):
    """Orders of query and top; every one but pid puts the largest first."""

    BYTES = "bytes"
    PACKETS = "packets"
    TCP = "tcp"
    UDP = "udp"
    PID = "pid"


# Keys of netatop top that switch its order.
TOP_SORT_KEYS: dict[str, SortKey] = {
    "b": SortKey.BYTES,
    "p": SortKey.PACKETS,
    "t": SortKey.TCP,
    "u": SortKey.UDP,
    "n": SortKey.PID,
}
TOP_QUIT_KEYS = frozenset("qQ")


class Unavailable(Exception):
    """What the command needs is not there; the message is one sentence for stderr."""


class OutputClosed(Exception):
    """Whoever read our standard output has gone (netatop top | head)."""


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Ask netatopd which processes use the network.\n\n"
    "\b\nExamples:\n"
    "  netatop status\n"
    "  netatop query --top 10\n"
    "  netatop query --json 1234\n"
    "  netatop top\n"
    "  netatop exited --since 2h\n"
    "  netatop report top-processes --since 1d --limit 10\n"
    "  netatop wait-exit --json",
)

RunDir = Annotated[
    str | None,
    typer.Option(
        "--run-dir",
        envvar="NETATOP_RUN_DIR",
        metavar="DIR",
        help="netatopd's run directory (default: /run/netatop)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print one JSON array of objects")]
Csv = Annotated[bool, typer.Option("--csv", help="print CSV with a header line")]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="from this time: ISO 8601 (2026-11-27T02:00), a time of day (02:00), "
        "or an age (90s, 15m, 2h, 1d, 1w)",
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", metavar="TIME", help="up to this time (same forms as --since)"),
]
Limit = Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="at most N rows")]
DbPath = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="NETATOP_DB",
        metavar="PATH",
        help="history database, opened read-only",
    ),
]


# --------------------------------------------------------------------------- errors


def _fail(message: str, code: int = EXIT_UNAVAILABLE) -> NoReturn:
    typer.echo(f"netatop: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn every "cannot answer" error into one sentence on stderr and exit status 2."""
    try:
        yield
    except Unavailable as err:
        _fail(str(err))
    except DaemonNotRunning as err:
        _fail(str(err))
    except PermissionError as err:
        _fail(str(err.strerror or err))
    except ProtocolError as err:
        _fail(f"lost the daemon: {err}")
    except (ConnectionError, TimeoutError) as err:
        _fail(f"lost the daemon: {err.strerror or err}")
    except TableError as err:
        _fail(str(err))
    except history.StoreError as err:
        _fail(str(err))


def _call(
    run_dir: str | None, action: Callable[[ControlClient], T], timeout_s: float | None = 30.0
) -> T:
    """Run action on a fresh control connection (errors reach _errors)."""
    with ControlClient(run_dir, timeout_s=timeout_s) as client:
        return action(client)


def _output_format(as_json: bool, as_csv: bool) -> OutputFormat:
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv exclude each other")
    return OutputFormat.JSON if as_json else OutputFormat.CSV if as_csv else OutputFormat.TABLE


def _parse_time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return history.parse_time(text)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=option) from None


# --------------------------------------------------------------------------- units


def _three_digits(value: float) -> str:
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(count: float) -> str:
    """Bytes with a binary unit, three significant digits: 0 B, 1023 B, 1.50 KiB, 150 MiB."""
    if round(count) < 1024:
        return f"{round(count):d} B"
    value = float(count)
    for unit in _BYTE_UNITS:
        value /= 1024
        text = _three_digits(value)
        if float(text) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")


_COUNT_UNITS = ("M", "G", "T", "P", "E")


def format_count(count: float) -> str:
    """A packet count: exact below one million, then '1.23M', '45.6G' ..."""
    if round(count) < 1_000_000:
        return f"{round(count):d}"
    value = float(count) / 1000
    for unit in _COUNT_UNITS:
        value /= 1000
        text = _three_digits(value)
        if float(text) < 1000 or unit == _COUNT_UNITS[-1]:
            return f"{text}{unit}"
    raise AssertionError("unreachable")


def format_rate(per_s: float) -> str:
    """Packets per second: one decimal below 1000."""
    if per_s < 999.95:
        return f"{per_s:.1f}"
    return format_count(per_s)


def _clock(epoch_s: float, now_s: float | None = None) -> str:
    """HH:MM:SS for today (local time), else YYYY-MM-DD HH:MM:SS."""
    moment = datetime.fromtimestamp(epoch_s)
    today = datetime.fromtimestamp(time.time() if now_s is None else now_s).date()
    if moment.date() == today:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


# --------------------------------------------------------------------------- row model


def row_from_task(row: TaskRow) -> Row:
    """A row of the shared table."""
    result: Row = {
        "pid": row.id,
        "tgid": row.tgid,
        "kind": row.kind.name.lower(),
        "btime": row.btime,
        "command": row.command,
    }
    result.update(zip(COUNTER_NAMES, row.counters, strict=True))
    return result


def task_row(record: TaskCounters, kind: str = "process") -> Row:
    """A netpertask record of the control socket (its id is the tgid)."""
    result: Row = {
        "pid": record.id,
        "tgid": record.id,
        "kind": kind,
        "btime": record.btime,
        "command": record.command,
    }
    result.update(zip(COUNTER_NAMES, record.counters, strict=True))
    return result


def row_from_exited(task: ExitedTask) -> Row:
    """A finished process from SQLite; unknown uid, command line and times are None."""
    result: Row = {
        "pid": task.tgid,
        "tgid": task.tgid,
        "kind": Kind.EXITED.name.lower(),
        "btime": task.btime,
        "command": task.command,
    }
    result.update(zip(COUNTER_NAMES, task.counters, strict=True))
    result.update(
        cmdline=task.cmdline or None,
        uid=task.uid if task.uid >= 0 else None,
        first_activity=task.first_activity_s or None,
        last_activity=task.last_activity_s or None,
        exit_time=task.exit_time_s,
    )
    return result


def _sum(row: Row, names: Iterable[str]) -> float:
    return sum(row[name] for name in names)


def _sort_value(row: Row, key: SortKey) -> float:
    if key is SortKey.BYTES:
        return _sum(row, _BYTE_COUNTERS)
    if key is SortKey.PACKETS:
        return _sum(row, _PACKET_COUNTERS)
    if key is SortKey.TCP:
        return float(row["tcpsndbytes"] + row["tcprcvbytes"])
    if key is SortKey.UDP:
        return float(row["udpsndbytes"] + row["udprcvbytes"])
    return 0.0


def sort_rows(rows: Iterable[Row], key: SortKey) -> list[Row]:
    """Largest first by key (pid: ascending); ties by lifetime bytes, then pid."""
    if key is SortKey.PID:
        return sorted(rows, key=lambda r: (r["pid"], r["kind"]))
    return sorted(
        rows,
        key=lambda r: (-_sort_value(r, key), -r.get("total_bytes", 0), r["pid"], r["kind"]),
    )


# --------------------------------------------------------------------------- formatters


class Column(NamedTuple):
    """One column of the table formatter."""

    header: str
    cell: Callable[[Row], str]
    right: bool = True  # numbers right-aligned, text left-aligned
    flex: bool = False  # cut to make the table fit the terminal


def _counter_column(header: str, name: str) -> Column:
    if name.endswith("bytes"):
        return Column(header, lambda r: format_bytes(r[name]))
    return Column(header, lambda r: format_count(r[name]))


def _text(value: object) -> str:
    return "-" if value is None else str(value)


PID_COLUMN = Column("PID", lambda r: str(r["pid"]))
COMMAND_COLUMN = Column("COMMAND", lambda r: str(r["command"]), right=False, flex=True)
COUNTER_HEADERS = (
    "TCPSND",
    "TCPSNDB",
    "TCPRCV",
    "TCPRCVB",
    "UDPSND",
    "UDPSNDB",
    "UDPRCV",
    "UDPRCVB",
)
TASK_COLUMNS: tuple[Column, ...] = (
    PID_COLUMN,
    COMMAND_COLUMN,
    *(
        _counter_column(header, name)
        for header, name in zip(COUNTER_HEADERS, COUNTER_NAMES, strict=True)
    ),
)
THREAD_COLUMNS: tuple[Column, ...] = (
    Column("TID", lambda r: str(r["pid"])),
    Column("TGID", lambda r: str(r["tgid"])),
    *TASK_COLUMNS[1:],
)
EXITED_DB_COLUMNS: tuple[Column, ...] = (
    PID_COLUMN,
    Column("UID", lambda r: _text(r["uid"])),
    Column(
        "EXITED",
        lambda r: datetime.fromtimestamp(r["exit_time"]).strftime("%m-%d %H:%M:%S"),
        right=False,
    ),
    Column("SNDPK", lambda r: format_count(r["tcpsndpacks"] + r["udpsndpacks"])),
    Column("SENT", lambda r: format_bytes(r["tcpsndbytes"] + r["udpsndbytes"])),
    Column("RCVPK", lambda r: format_count(r["tcprcvpacks"] + r["udprcvpacks"])),
    Column("RECEIVED", lambda r: format_bytes(r["tcprcvbytes"] + r["udprcvbytes"])),
    Column("COMMAND LINE", lambda r: r["cmdline"] or f"[{r['command']}]", right=False, flex=True),
)


def terminal_width() -> int:
    return shutil.get_terminal_size(TERMINAL_FALLBACK).columns


def render_table(rows: Sequence[Row], columns: Sequence[Column], width: int) -> list[str]:
    """Header and one line per row; flex columns are cut so a line fits width if it can."""
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = [
        max([len(column.header), *(len(line[index]) for line in cells)])
        for index, column in enumerate(columns)
    ]
    excess = sum(widths) + len(widths) - 1 - width
    for index, column in enumerate(columns):
        if excess > 0 and column.flex:
            cut = min(excess, widths[index] - MIN_FLEX_WIDTH)
            if cut > 0:
                widths[index] -= cut
                excess -= cut
    lines = []
    for line in [[column.header for column in columns], *cells]:
        parts = [
            text[:size].rjust(size) if column.right else text[:size].ljust(size)
            for text, size, column in zip(line, widths, columns, strict=True)
        ]
        lines.append(" ".join(parts).rstrip())
    return lines


def render_json(rows: Sequence[Row]) -> str:
    return json.dumps(list(rows), indent=1)


def render_csv(rows: Sequence[Row], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row[name] for name in fields])
    return buffer.getvalue().rstrip("\n")


def emit(
    rows: Sequence[Row],
    output: OutputFormat,
    columns: Sequence[Column],
    fields: Sequence[str],
) -> None:
    """Print rows in the format asked for: the one place rows become text."""
    if output is OutputFormat.JSON:
        typer.echo(render_json(rows))
    elif output is OutputFormat.CSV:
        typer.echo(render_csv(rows, fields))
    else:
        typer.echo("\n".join(render_table(rows, columns, terminal_width())))


# --------------------------------------------------------------------------- table access


def _stale_after_s(reader: TableReader) -> float:
    return max(STALE_MIN_S, STALE_PUBLISHES * reader.publish_interval_ms / 1000.0)


def _open_reader(run_dir: str | None) -> TableReader | None:
    """The daemon's table, or None when there is none (a daemon without one, or no daemon)."""
    try:
        return open_table(run_dir_from_env(run_dir))
    except TableMissing:
        return None


def _snapshot(reader: TableReader) -> Snapshot:
    """A fresh snapshot; Unavailable when the daemon is gone or has stopped publishing."""
    try:
        snapshot = reader.snapshot()
    except TableStale as err:
        age_s = max(0.0, time.time() - err.updated_s)
        raise Unavailable(
            f"netatopd is not running (table last updated {_clock(err.updated_s)}, "
            f"{age_s:.0f} s ago)"
        ) from None
    age_s = time.time() - snapshot.updated_s
    if age_s > _stale_after_s(reader):
        raise Unavailable(
            f"netatopd (pid {snapshot.daemon_pid}) has not updated its table for "
            f"{age_s:.0f} s (last update {_clock(snapshot.updated_s)}); it may be stuck"
        )
    return snapshot


def _table_snapshot(run_dir: str | None) -> Snapshot | None:
    reader = _open_reader(run_dir)
    if reader is None:
        return None
    with reader:
        return _snapshot(reader)


# --------------------------------------------------------------------------- status


def _wrap(label: str, items: Sequence[str], width: int) -> list[str]:
    """'Label         a, b, c' with line breaks only between items."""
    lines: list[str] = []
    line = f"{label:<13}"
    for index, item in enumerate(items):
        text = item + ("," if index < len(items) - 1 else "")
        if len(line) > 14 and len(line) + 1 + len(text) > width:
            lines.append(line)
            line = " " * 13
        line += " " + text
    lines.append(line)
    return lines


def status_lines(
    figures: dict[str, Any],
    snapshot: Snapshot | None,
    run_dir: str,
    width: int,
    table_problem: str = "no table file in the run directory",
    verbose: bool = False,
) -> list[str]:
    """The STATUS figures in the groups of the STATUS registry (netatopd.status).

    snapshot gives the table fill; without one, table_problem says why.  Groups
    marked verbose (the eBPF helper's internals) only with verbose; figures the
    registry does not know (from a newer daemon) only in --json.
    """
    lines: list[str] = []
    for group in status_registry.GROUPS:
        if group.verbose and not verbose:
            continue
        found = status_registry.group_figures(group, figures)
        if group.style is status_registry.Style.HEADER:
            lines.append(", ".join(_figure_text(field, value) for field, value in found))
            lines += _wrap("Run directory", [run_dir], width)
            lines.append("")
        elif group.style is status_registry.Style.TABLE:
            lines += _figures_table(group.heading, found, width)
        elif group.style is status_registry.Style.SHARED_TABLE:
            items = _shared_table_items(found, snapshot, table_problem)
            lines += _wrap(group.heading, items, width)
        elif found:
            lines += _wrap(group.heading, _group_items(group, found), width)
        elif group.when_empty:
            lines += _wrap(group.heading, [group.when_empty], width)
    return lines


def _figure_text(field: status_registry.Field, value: Any) -> str:
    """One figure as its group shows it: 'label value', a duration, or a reason list."""
    if field.duration:
        return field.text(_duration(float(value)))
    if isinstance(value, dict):
        reasons = [f"{name} {count}" for name, count in value.items() if count]
        return f"{field.label}: {', '.join(reasons) or 'none'}"
    return field.text(value)


def _group_items(
    group: status_registry.Group, found: list[tuple[status_registry.Field, Any]]
) -> list[str]:
    """'headline (a, b)' or 'headline: a, b' (group.headline_colon) or 'a, b', as items."""
    headline = next((str(value) for field, value in found if field.headline), None)
    items = [_figure_text(field, value) for field, value in found if not field.headline]
    if headline is None:
        return items
    if not items:
        return [headline]
    if group.headline_colon:
        return [f"{headline}: {items[0]}", *items[1:]]
    items[0] = f"{headline} ({items[0]}"
    items[-1] += ")"
    return items


def _figures_table(
    heading: str, found: list[tuple[status_registry.Field, Any]], width: int
) -> list[str]:
    """A group of figures as a table: a figure's label is its row, its column its column."""
    if not found:
        return []
    cells: dict[str, Row] = {}
    columns: list[str] = []
    for field, value in found:
        cells.setdefault(field.label, {})[field.column] = value
        if field.column not in columns:
            columns.append(field.column)
    rows = [{"name": label, **values} for label, values in cells.items()]
    table_columns = [Column(heading, lambda r: "  " + r["name"], right=False)]
    table_columns += [Column(column, _cell(column)) for column in columns]
    return render_table(rows, table_columns, width)


def _cell(column: str) -> Callable[[Row], str]:
    return lambda row: _text(row.get(column))


def _shared_table_items(
    found: list[tuple[status_registry.Field, Any]],
    snapshot: Snapshot | None,
    table_problem: str,
) -> list[str]:
    """The shared table's fill from a snapshot; else its figures and why it is not readable."""
    if snapshot is None:
        return [
            *(_figure_text(field, value) for field, value in found),
            f"not readable: {table_problem}",
        ]
    kinds = {kind: 0 for kind in Kind}
    for task in snapshot.rows:
        kinds[task.kind] += 1
    fill = 100.0 * len(snapshot.rows) / snapshot.capacity if snapshot.capacity else 0.0
    return [
        f"{len(snapshot.rows)} rows of {snapshot.capacity} ({fill:.1f}%)",
        f"processes {kinds[Kind.PROCESS]}",
        f"threads {kinds[Kind.THREAD]}",
        f"exited {kinds[Kind.EXITED]}",
        f"refused {snapshot.refused}",
        f"updated {_clock(snapshot.updated_s)}",
    ]


def _status_figures(run_dir: str | None) -> tuple[dict[str, Any], bool]:
    """STATUS from the control socket; from the table when the socket is not ours to use.

    Returns (figures, from_table).
    """
    try:
        return _call(run_dir, lambda c: c.status()), False
    except PermissionError as err:
        snapshot = _table_snapshot(run_dir)
        if snapshot is None:
            raise
        typer.echo(f"netatop: {err.strerror}; figures from the shared table instead", err=True)
        return dict(snapshot.status), True


# --------------------------------------------------------------------------- commands


@app.command()
def status(
    run_dir: RunDir = None,
    as_json: Json = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="also the eBPF helper's internal figures")
    ] = False,
) -> None:
    """The daemon's figures: packets, flows, tasks, exit list, capture, resolver, table, history.

    The figures of the kernel module's /proc/netatop and what a user-space
    reader must add: packets dropped by the capture ring, resolver misses,
    table fill, history.  --verbose adds the eBPF helper's internal figures;
    --json prints the daemon's STATUS object as it is.

    \b
    Examples:
      netatop status
      netatop status --verbose
      netatop status --json | jq .capture_dropped
    """
    with _errors():
        figures, _from_table = _status_figures(run_dir)
        if as_json:
            typer.echo(json.dumps(figures, indent=1))
            return
        problem = "no table file in the run directory"
        try:
            snapshot = _table_snapshot(run_dir)
        except (Unavailable, TableError) as err:
            snapshot, problem = None, str(err)
    width = terminal_width()
    run_dir_shown = run_dir_from_env(run_dir)
    for line in status_lines(figures, snapshot, run_dir_shown, width, problem, verbose):
        typer.echo(line)


def _query_table(
    snapshot: Snapshot, pids: Sequence[int], threads: bool
) -> tuple[list[Row], list[str]]:
    """(rows, complaints about pids) from one table snapshot."""
    kind = Kind.THREAD if threads else Kind.PROCESS
    candidates = [task for task in snapshot.rows if task.kind == kind]
    if not pids:
        return [row_from_task(task) for task in candidates], []
    rows: list[Row] = []
    seen: set[tuple[int, int]] = set()
    complaints = []
    for pid in pids:
        if threads:
            matches = [task for task in candidates if pid in (task.id, task.tgid)]
        else:
            matches = [task for task in candidates if task.id == pid]
        for task in matches:
            if (task.id, task.tgid) not in seen:
                seen.add((task.id, task.tgid))
                rows.append(row_from_task(task))
        if matches:
            continue
        if threads:
            complaints.append(f"no thread rows for {pid}")
        elif any(task.kind == Kind.EXITED and task.id == pid for task in snapshot.rows):
            complaints.append(f"process {pid} has finished (see netatop exited)")
        else:
            complaints.append(f"process {pid} is not known to netatopd")
    return rows, complaints


def _query_socket(run_dir: str | None, pids: Sequence[int]) -> tuple[list[Row], list[str]]:
    """The same from the control socket, for a daemon that publishes no table."""

    def ask(client: ControlClient) -> tuple[list[Row], list[str]]:
        if not pids:
            return [task_row(record) for record in client.list_tasks()], []
        rows, complaints = [], []
        for pid in pids:
            try:
                rows.append(task_row(client.getcnt_tgid(pid)))
            except ProcessLookupError:
                complaints.append(f"process {pid} is not known to netatopd")
        return rows, complaints

    return _call(run_dir, ask)


@app.command()
def query(
    pids: Annotated[
        list[int] | None,
        typer.Argument(metavar="PID", help="process ids (default: every process)"),
    ] = None,
    threads: Annotated[
        bool, typer.Option("--threads", help="thread rows (tid) instead of process rows")
    ] = False,
    sort: Annotated[
        SortKey | None,
        typer.Option(
            "--sort",
            help="largest first by bytes, packets, tcp bytes or udp bytes, or by pid "
            "(default: bytes; the order given when PIDs are given)",
        ),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, metavar="N", help="only the first N rows")
    ] = None,
    as_json: Json = False,
    as_csv: Csv = False,
    run_dir: RunDir = None,
) -> None:
    """Counters of running processes (all of them, or the PIDs given).

    Read from the shared table the daemon publishes every 250 ms, without
    asking the daemon; run 'netatop sync' first for counters that include
    every packet sent so far.  A PID that is not known is reported on stderr
    and the exit status is 1 (the others are still printed).

    \b
    Examples:
      netatop query
      netatop query --sort udp --top 5
      netatop query --json 1234 5678
      netatop query --csv > counters.csv
      netatop query --threads 1234
    """
    output = _output_format(as_json, as_csv)
    wanted = list(pids or [])
    with _errors():
        snapshot = _table_snapshot(run_dir)
        if snapshot is not None:
            rows, complaints = _query_table(snapshot, wanted, threads)
            no_threads = threads and not any(t.kind == Kind.THREAD for t in snapshot.rows)
        elif threads:
            _call(run_dir, lambda c: c.probe())  # not running: say that, not "no threads"
            rows, complaints, no_threads = [], [f"no thread rows for {p}" for p in wanted], True
        else:
            rows, complaints = _query_socket(run_dir, wanted)
            no_threads = False
    if sort is not None or not wanted:
        rows = sort_rows(rows, sort or SortKey.BYTES)
    if top is not None:
        rows = rows[:top]
    emit(rows, output, THREAD_COLUMNS if threads else TASK_COLUMNS, ROW_FIELDS)
    if no_threads:
        typer.echo(f"netatop: {NO_THREAD_ROWS}", err=True)
    for complaint in complaints:
        typer.echo(f"netatop: {complaint}", err=True)
    if complaints:
        raise typer.Exit(EXIT_UNKNOWN_PID)


@app.command()
def exited(
    as_json: Json = False,
    as_csv: Csv = False,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    db: DbPath = history.DEFAULT_DB_PATH,
    run_dir: RunDir = None,
) -> None:
    """Finished processes, oldest first.

    Without --since and --until: the daemon's exit list (read, not consumed;
    an entry stays there for 15 s).  With either: the history database
    (read-only), with the command line, uid and exit time of each process.

    \b
    Examples:
      netatop exited
      netatop exited --since 2h
      netatop exited --since 2026-11-27T02:00 --until 2026-11-27T03:00 --csv
      netatop exited --since 1d --limit 20 --db /srv/netatop.db
    """
    output = _output_format(as_json, as_csv)
    since_s = _parse_time(since, "--since")
    until_s = _parse_time(until, "--until")
    with _errors():
        if since_s is None and until_s is None:
            records = _call(run_dir, lambda c: c.list_exited())
            rows = [task_row(record, Kind.EXITED.name.lower()) for record in records]
            emit(rows[:limit] if limit else rows, output, TASK_COLUMNS, ROW_FIELDS)
            return
        conn = history.open_db(db, readonly=True)
        try:
            tasks = history.query_exited(conn, since_s, until_s, limit)
        finally:
            conn.close()
    emit([row_from_exited(t) for t in tasks], output, EXITED_DB_COLUMNS, EXITED_DB_FIELDS)


def _report_cell(column: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row[column]
        if column.endswith("bytes") and isinstance(value, int | float):
            return format_bytes(value)
        return _text(value)

    return cell


@app.command()
def report(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="report to run (see --list)")
    ] = None,
    list_reports: Annotated[
        bool, typer.Option("--list", help="list the reports with a one-line description")
    ] = False,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    command: Annotated[
        str | None,
        typer.Option("--command", metavar="COMM", help="only processes with this command name"),
    ] = None,
    db: DbPath = history.DEFAULT_DB_PATH,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table (with units), csv or json")
    ] = OutputFormat.TABLE,
) -> None:
    """Run one of the SQL reports (sql/reports/NAME.sql) on the history database.

    The database is opened read-only and works while netatopd writes.  In
    table format byte columns get units; csv and json give the raw numbers.

    \b
    Examples:
      netatop report --list
      netatop report top-processes --since 1d --limit 10
      netatop report by-command --since 02:00 --until 03:00
      netatop report hourly --since 1w --format csv
      netatop report recent-exits --command curl --format json
    """
    with _errors():
        if list_reports:
            reports = history.list_reports()
            rows: list[Row] = [
                {"name": r.name, "description": r.description, "params": list(r.params)}
                for r in reports
            ]
            if output is OutputFormat.TABLE:
                width = max((len(r.name) for r in reports), default=0)
                for item in reports:
                    typer.echo(f"{item.name:<{width}}  {item.description}")
            elif output is OutputFormat.CSV:
                flat = [{**row, "params": " ".join(row["params"])} for row in rows]
                typer.echo(render_csv(flat, ("name", "description", "params")))
            else:
                typer.echo(render_json(rows))
            return
        if name is None:
            raise typer.BadParameter("give a report NAME, or --list to see them", param_hint="NAME")
        params = {
            "since": _parse_time(since, "--since"),
            "until": _parse_time(until, "--until"),
            "limit": limit,
            "command": command,
        }
        conn = history.open_db(db, readonly=True)
        try:
            try:
                columns, values = history.run_report(conn, name, params)
            except ValueError as err:
                raise Unavailable(str(err)) from None
        finally:
            conn.close()
    rows = [dict(zip(columns, row, strict=True)) for row in values]
    numeric = {
        column: any(isinstance(r[column], int | float) for r in rows)
        and all(isinstance(r[column], int | float) or r[column] is None for r in rows)
        for column in columns
    }
    flex = "cmdline" if "cmdline" in columns else "command"
    table_columns = [
        Column(column, _report_cell(column), right=numeric[column], flex=column == flex)
        for column in columns
    ]
    emit(rows, output, table_columns, columns)


@app.command()
def sync(run_dir: RunDir = None) -> None:
    """Return once every packet captured before this command has been counted.

    \b
    Examples:
      netatop sync && netatop query 1234
    """
    with _errors():
        _call(run_dir, lambda c: c.sync())


@app.command()
def gc(run_dir: RunDir = None) -> None:
    """Run the garbage collector now (finished processes go to the exit list).

    \b
    Examples:
      netatop gc && netatop exited
    """
    with _errors():
        _call(run_dir, lambda c: c.force_gc())


@app.command("wait-exit")
def wait_exit(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    count: Annotated[
        int, typer.Option("--count", min=0, metavar="N", help="stop after N (0: until interrupted)")
    ] = 0,
    run_dir: RunDir = None,
) -> None:
    """Print finished processes as they arrive, taking them from the exit list (GETCNT_EXIT).

    Each process is taken from the exit list (consumed, as atop's netatopd
    did) and printed at once: one line of name=value pairs, or one JSON
    object a line.  Runs until interrupted, or until N processes.

    \b
    Examples:
      netatop wait-exit
      netatop wait-exit --json --count 1
    """

    def loop(client: ControlClient) -> None:
        seen = 0
        while count == 0 or seen < count:
            row = task_row(client.getcnt_exit(), Kind.EXITED.name.lower())
            if as_json:
                typer.echo(json.dumps(row))
            else:
                typer.echo(" ".join(f"{k}={v}" for k, v in row.items()))
            sys.stdout.flush()
            seen += 1

    try:
        with _errors():
            _call(run_dir, loop, timeout_s=None)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command("wait-empty")
def wait_empty(run_dir: RunDir = None) -> None:
    """Return once the exit list is empty (EMPTY_EXIT).

    \b
    Examples:
      netatop wait-empty; echo every finished process has been read
    """
    try:
        with _errors():
            _call(run_dir, lambda c: c.empty_exit(), timeout_s=None)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


# --------------------------------------------------------------------------- top


def rate_rows(previous: Snapshot, current: Snapshot) -> list[Row]:
    """Per-process rates (per second) of every counter between two snapshots.

    A process is (id, btime); one that is new in current started, or first
    used the network, after previous was published: all its counters are new.
    ``total_bytes`` is the process's lifetime bytes, sent and received.
    """
    elapsed_s = current.updated_s - previous.updated_s
    before = {(t.id, t.btime): t.counters for t in previous.rows if t.kind != Kind.THREAD}
    rows = []
    for task in current.rows:
        if task.kind != Kind.PROCESS:
            continue
        base = before.get((task.id, task.btime))
        row = row_from_task(task)
        row["total_bytes"] = _sum(row, _BYTE_COUNTERS)
        for index, name in enumerate(COUNTER_NAMES):
            delta = task.counters[index] - (base[index] if base else 0)
            row[name] = max(delta, 0) / elapsed_s if elapsed_s > 0 else 0.0
        rows.append(row)
    return rows


TOP_COLUMNS: tuple[Column, ...] = (
    PID_COLUMN,
    COMMAND_COLUMN,
    Column("SENT/s", lambda r: format_bytes(r["tcpsndbytes"] + r["udpsndbytes"])),
    Column("RCVD/s", lambda r: format_bytes(r["tcprcvbytes"] + r["udprcvbytes"])),
    Column("SNDPK/s", lambda r: format_rate(r["tcpsndpacks"] + r["udpsndpacks"])),
    Column("RCVPK/s", lambda r: format_rate(r["tcprcvpacks"] + r["udprcvpacks"])),
    Column("TCP/s", lambda r: format_bytes(r["tcpsndbytes"] + r["tcprcvbytes"])),
    Column("UDP/s", lambda r: format_bytes(r["udpsndbytes"] + r["udprcvbytes"])),
    Column("TOTAL", lambda r: format_bytes(r["total_bytes"])),
)


def top_frame(
    rows: list[Row] | None,
    sort: SortKey,
    interval_s: float,
    updated_s: float,
    size: tuple[int, int] | None,
) -> list[str]:
    """The lines of one frame; rows None while the first interval is measured.

    size (columns, lines) cuts the frame to the screen; None prints every row
    at the fallback width (a pipe).
    """
    width, height = size if size is not None else (TERMINAL_FALLBACK[0], 0)
    sort_names = "  ".join(f"{k}:{v.value}" for k, v in TOP_SORT_KEYS.items())
    lines = [
        f"netatop top  {_clock(updated_s)}  every {interval_s:g} s  sorted by {sort.value}",
        f"keys: {sort_names}  q:quit",
    ]
    if rows is None:
        lines += [f"measuring for {interval_s:g} s ..."]
        return [line[:width] for line in lines]
    ordered = sort_rows(rows, sort)
    sent = sum(r["tcpsndbytes"] + r["udpsndbytes"] for r in rows)
    received = sum(r["tcprcvbytes"] + r["udprcvbytes"] for r in rows)
    sent_packets = sum(r["tcpsndpacks"] + r["udpsndpacks"] for r in rows)
    received_packets = sum(r["tcprcvpacks"] + r["udprcvpacks"] for r in rows)
    lines.append(
        f"total: sent {format_bytes(sent)}/s {format_rate(sent_packets)} pk/s, "
        f"received {format_bytes(received)}/s {format_rate(received_packets)} pk/s, "
        f"{len(rows)} processes"
    )
    lines.append("")
    if size is not None:
        room = max(height - TOP_HEADER_LINES - 1, 0)  # the last line stays free: no scrolling
        ordered = ordered[:room]
    lines += render_table(ordered, TOP_COLUMNS, width)
    return [line[:width] for line in lines]


class TopScreen:
    """The terminal of netatop top: alternate screen, cbreak keys, restored on exit.

    When stdout is not a terminal (a pipe, a script) frames are printed one
    after the other with a blank line between them and no escape sequences;
    when stdin is not a terminal no key is read.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.out = stdout
        self.interactive = _isatty(stdout)
        self.in_fd: int | None = stdin.fileno() if _isatty(stdin) else None
        self._saved: list[Any] | None = None

    def __enter__(self) -> TopScreen:
        if self.in_fd is not None:
            self._saved = termios.tcgetattr(self.in_fd)
            tty.setcbreak(self.in_fd)  # no echo, no line buffering; Ctrl-C still signals
        if self.interactive:
            self.out.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")  # alternate screen, no cursor
            self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            self.out.write("\x1b[?25h\x1b[?1049l")
            self.out.flush()
        if self._saved is not None and self.in_fd is not None:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def size(self) -> tuple[int, int] | None:
        if not self.interactive:
            return None
        columns, lines = shutil.get_terminal_size(TERMINAL_FALLBACK)
        return columns, lines

    def draw(self, lines: list[str]) -> None:
        if self.interactive:
            # cbreak keeps output processing: the terminal turns each newline into CR LF
            text = "\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J"
        else:
            text = "\n".join(lines) + "\n\n"
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError as err:
            raise OutputClosed from err

    def read_keys(self, timeout_s: float) -> str:
        """Keys typed within timeout_s ('' if none); sleeps when there is no keyboard."""
        if self.in_fd is None:
            time.sleep(max(timeout_s, 0.0))
            return ""
        ready, _, _ = select.select([self.in_fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return ""
        data = os.read(self.in_fd, 64)
        if not data:  # the terminal went away: stop reading it
            self.in_fd = None
        return data.decode("utf-8", "replace")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and stream.fileno() >= 0
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through TopScreen.__exit__


def _run_top(
    screen: TopScreen, run_dir: str | None, interval_s: float, sort: SortKey, iterations: int
) -> None:
    reader = _open_reader(run_dir)
    if reader is None:
        _call(run_dir, lambda c: c.probe())  # not running: the control socket's sentence
        raise Unavailable(
            f"netatopd publishes no table in {run_dir_from_env(run_dir)}; "
            "netatop top needs one (use netatop query)"
        )
    try:
        previous = _snapshot(reader)
        rows: list[Row] | None = None
        frames = 0
        if screen.interactive:
            screen.draw(top_frame(None, sort, interval_s, previous.updated_s, screen.size()))
        while iterations == 0 or frames < iterations:
            deadline = time.monotonic() + interval_s
            while (remaining := deadline - time.monotonic()) > 0:
                keys = screen.read_keys(remaining)
                if any(key in TOP_QUIT_KEYS for key in keys):
                    return
                chosen = [TOP_SORT_KEYS[key] for key in keys if key in TOP_SORT_KEYS]
                if chosen:
                    sort = chosen[-1]
                    screen.draw(
                        top_frame(rows, sort, interval_s, previous.updated_s, screen.size())
                    )
            if reader.replaced():  # a restarted daemon made a new table: start over from it
                reader.close()
                replacement = _open_reader(run_dir)
                if replacement is None:
                    raise Unavailable("netatopd is not running (its table is gone)")
                reader = replacement
                previous = _snapshot(reader)
                rows = None
                continue
            current = _snapshot(reader)
            if current.generation == previous.generation:
                continue  # nothing published since the last frame
            rows = rate_rows(previous, current)
            screen.draw(top_frame(rows, sort, interval_s, current.updated_s, screen.size()))
            previous = current
            frames += 1
    finally:
        reader.close()


@app.command()
def top(
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=TOP_INTERVAL_S_MIN,
            metavar="SECONDS",
            help="refresh interval; rates are averages over it",
        ),
    ] = TOP_INTERVAL_S_DEFAULT,
    sort: Annotated[
        SortKey, typer.Option("--sort", help="first order (keys b p t u n switch it)")
    ] = SortKey.BYTES,
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations", min=0, metavar="N", help="draw N frames, then exit (0: until q)"
        ),
    ] = 0,
    run_dir: RunDir = None,
) -> None:
    """A live view of the processes using the network, like top or nethogs.

    Per process: bytes and packets per second sent and received, TCP and
    UDP bytes per second (from two snapshots of the shared table one interval
    apart) and its lifetime bytes; a totals line above.  Keys: b p t u n sort
    by bytes, packets, tcp, udp or pid; q or Ctrl-C quits and restores the
    terminal.  Piped, it prints one frame after the other.

    \b
    Examples:
      netatop top
      netatop top --interval 5 --sort udp
      netatop top --iterations 3 > frames.txt
    """
    with _errors():
        screen = TopScreen(sys.stdin, sys.stdout)
        previous_handlers = {
            signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGHUP)
        }
        try:
            with screen:
                _run_top(screen, run_dir, interval, sort, iterations)
        except KeyboardInterrupt:
            pass  # Ctrl-C quits like q
        except OutputClosed:
            # Nobody reads any more: stop quietly, and let the interpreter's final
            # flush of stdout go nowhere instead of failing again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)


def main() -> None:
    app(prog_name="netatop")


if __name__ == "__main__":
    main()
