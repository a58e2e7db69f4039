"""Text for a person or a program: units, the table formatter, JSON and CSV.

Owns the number formats (bytes with binary units, packet counts, rates, clock
times, moments in local ISO 8601, user names, durations), the Column model
and the three renderers that turn rows into text: render_table (widths
fitted to output_width: the terminal's, or no limit for a pipe unless
COLUMNS is set; a cut cell ends with cut_marker; control characters shown as
'?'), render_json and render_csv, and emit, the one place a command's rows
are printed.  Knows no row type: a Column reads a cell from
any row, and JSON and CSV take records (name -> value).  Called by rows (the
task columns and the vocabulary), status, top and commands.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar

import typer

TERMINAL_FALLBACK = (80, 24)  # columns, lines: pipes and terminals that do not say
MIN_FLEX_WIDTH = 7  # a shrunk flex column keeps at least this many characters
CUT_MARKER = "\u2026"  # "…" ends a cell that was cut to fit
CUT_MARKER_ASCII = "~"  # the same where the output cannot carry "…"
# Control characters (a newline in a command line, an escape sequence) are shown as
# "?" in tables, as ps does: a cell is one line and never drives the terminal.
_CONTROLS = {code: "?" for code in (*range(0x20), *range(0x7F, 0xA0))}

R = TypeVar("R")
Record = Mapping[str, Any]  # a row as JSON and CSV see it: field name -> value


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


# --------------------------------------------------------------------------- units


def _three_digits(value: float) -> str:
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _scaled(value: float, base: int, units: tuple[str, ...], separator: str) -> str:
    """value divided by base until three significant digits stay under base, with its unit
    (the last unit takes whatever is left)."""
    for unit in units:
        value /= base
        text = _three_digits(value)
        if float(text) < base or unit == units[-1]:
            return f"{text}{separator}{unit}"
    raise AssertionError("unreachable")


_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(count: float) -> str:
    """Bytes with a binary unit, three significant digits: 0 B, 1023 B, 1.50 KiB, 150 MiB."""
    if round(count) < 1024:
        return f"{round(count):d} B"
    return _scaled(float(count), 1024, _BYTE_UNITS, " ")


_COUNT_UNITS = ("M", "G", "T", "P", "E")


def format_count(count: float) -> str:
    """A packet count: exact below one million, then '1.23M', '45.6G' ..."""
    if round(count) < 1_000_000:
        return f"{round(count):d}"
    return _scaled(float(count) / 1000, 1000, _COUNT_UNITS, "")


def format_rate(per_s: float) -> str:
    """Packets per second: one decimal below 1000."""
    if per_s < 999.95:
        return f"{per_s:.1f}"
    return format_count(per_s)


_BIT_UNITS = ("kbit", "Mbit", "Gbit", "Tbit", "Pbit", "Ebit")


def format_bits(count: float) -> str:
    """Bits with a decimal unit, as iperf3 and link speeds: 0 bit, 1.50 kbit, 47.7 Mbit."""
    if round(count) < 1000:
        return f"{round(count):d} bit"
    return _scaled(float(count), 1000, _BIT_UNITS, " ")


def format_clock(epoch_s: float, now_s: float | None = None) -> str:
    """HH:MM:SS for today (local time), else YYYY-MM-DD HH:MM:SS."""
    moment = datetime.fromtimestamp(epoch_s)
    today = datetime.fromtimestamp(time.time() if now_s is None else now_s).date()
    if moment.date() == today:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_time(epoch_s: float) -> str:
    """A moment in local time, ISO 8601 with a space: 2026-12-03 08:13:14."""
    return datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


def format_user(uid: int) -> str:
    """The user name of uid, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, ValueError):
        return str(uid)


def format_duration(seconds: float) -> str:
    """HH:MM:SS, with 'N d ' in front from one day on."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


def format_text(value: object) -> str:
    """A cell of any value; '-' for an unknown one (None)."""
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- renderers


class Column(NamedTuple, Generic[R]):
    """One column of the table formatter."""

    header: str
    cell: Callable[[R], str]
    right: bool = True  # numbers right-aligned, text left-aligned
    flex: bool = False  # cut to make the table fit the terminal


def terminal_width() -> int:
    return shutil.get_terminal_size(TERMINAL_FALLBACK).columns


def output_width() -> int | None:
    """Columns a table may use: the terminal's; None (no limit) when standard output
    is not a terminal, unless COLUMNS says a width (like ps, a pipe gets whole lines)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit():
        return terminal_width()
    return None


def cut_marker() -> str:
    """'…' where standard output can carry it, else '~'."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        CUT_MARKER.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return CUT_MARKER_ASCII
    return CUT_MARKER


def cut(text: str, size: int, marker: str) -> str:
    """text in at most size characters; a cut one ends with marker."""
    if len(text) <= size:
        return text
    return text[: max(0, size - len(marker))] + marker if size > len(marker) else text[:size]


def printable(text: str) -> str:
    """text with its control characters shown as '?'."""
    return text.translate(_CONTROLS)


def _widths(rows: Sequence[R], columns: Sequence[Column[R]]) -> list[int]:
    return [
        max([len(column.header), *(len(column.cell(row)) for row in rows)]) for column in columns
    ]


def table_width(rows: Sequence[R], columns: Sequence[Column[R]]) -> int:
    """Characters a line of the table takes with nothing cut."""
    widths = _widths(rows, columns)
    return sum(widths) + len(widths) - 1


def least_width(rows: Sequence[R], columns: Sequence[Column[R]]) -> int:
    """Characters a line takes with every flex column cut as far as render_table cuts."""
    widths = [
        min(size, MIN_FLEX_WIDTH) if column.flex else size
        for size, column in zip(_widths(rows, columns), columns, strict=True)
    ]
    return sum(widths) + len(widths) - 1


def render_table(rows: Sequence[R], columns: Sequence[Column[R]], width: int | None) -> list[str]:
    """Header and one line per row; flex columns are cut (the rightmost first, each
    to MIN_FLEX_WIDTH at most, ending with a marker) so a line fits width if it can.
    width None: nothing is cut."""
    cells = [[printable(column.cell(row)) for column in columns] for row in rows]
    widths = [
        max([len(column.header), *(len(line[index]) for line in cells)])
        for index, column in enumerate(columns)
    ]
    excess = 0 if width is None else sum(widths) + len(widths) - 1 - width
    for index in reversed(range(len(columns))):
        if excess > 0 and columns[index].flex:
            shrink = min(excess, widths[index] - MIN_FLEX_WIDTH)
            if shrink > 0:
                widths[index] -= shrink
                excess -= shrink
    marker = cut_marker()
    lines = []
    for line in [[column.header for column in columns], *cells]:
        parts = [
            cut(text, size, marker).rjust(size)
            if column.right
            else cut(text, size, marker).ljust(size)
            for text, size, column in zip(line, widths, columns, strict=True)
        ]
        lines.append(" ".join(parts).rstrip())
    return lines


def render_json(records: Sequence[Record]) -> str:
    return json.dumps(list(records), indent=1)


def render_csv(records: Sequence[Record], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for record in records:
        writer.writerow(["" if record.get(name) is None else record[name] for name in fields])
    return buffer.getvalue().rstrip("\n")


def emit(
    rows: Sequence[R],
    output: OutputFormat,
    columns: Sequence[Column[R]],
    fields: Sequence[str],
    record: Callable[[R], Record],
) -> None:
    """Print rows in the format asked for: the one place rows become text.

    record gives a row's fields for JSON and CSV (in the order of fields).
    """
    if output is OutputFormat.JSON:
        typer.echo(render_json([record(row) for row in rows]))
    elif output is OutputFormat.CSV:
        typer.echo(render_csv([record(row) for row in rows], fields))
    else:
        typer.echo("\n".join(render_table(rows, columns, output_width())))
