"""Text for a person or a program: units, the table formatter, JSON and CSV.

Owns the number formats (bytes with binary units, packet counts, rates, clock
times, moments in local ISO 8601, user names, durations), the Column model
and the three renderers that turn rows into text: render_table (widths
fitted to the terminal), render_json and render_csv, and emit, the one place
a command's rows are printed.  Knows no row type: a Column reads a cell from
any row, and JSON and CSV take records (name -> value).  Called by rows (the
task columns and the vocabulary), status, top and commands.
"""

from __future__ import annotations

import csv
import io
import json
import pwd
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar

import typer

TERMINAL_FALLBACK = (80, 24)  # columns, lines: pipes and terminals that do not say
MIN_FLEX_WIDTH = 7  # a shrunk flex column keeps at least this many characters

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


_BIT_UNITS = ("kbit", "Mbit", "Gbit", "Tbit", "Pbit", "Ebit")


def format_bits(count: float) -> str:
    """Bits with a decimal unit, as iperf3 and link speeds: 0 bit, 1.50 kbit, 47.7 Mbit."""
    if round(count) < 1000:
        return f"{round(count):d} bit"
    value = float(count)
    for unit in _BIT_UNITS:
        value /= 1000
        text = _three_digits(value)
        if float(text) < 1000 or unit == _BIT_UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")


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


def render_table(rows: Sequence[R], columns: Sequence[Column[R]], width: int) -> list[str]:
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
        typer.echo("\n".join(render_table(rows, columns, terminal_width())))
