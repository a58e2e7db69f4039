"""The screen of ``netatop status``: the daemon's STATUS figures grouped for a person.

Owns status_lines: the layout generated from the STATUS registry
(netatopd.status): one heading per group, items wrapped to the terminal, the
packet figures as a table.  Called by commands.status with the figures
sources.status_figures returned and a table snapshot for the table fill.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from .. import status as status_registry
from ..table import Snapshot
from ..tasks import Kind
from .format import Column, render_table
from .format import format_clock as _clock
from .format import format_duration as _duration
from .format import format_text as _text

Row = dict[str, Any]


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
    from_table: bool = False,
) -> list[str]:
    """The STATUS figures in the groups of the STATUS registry (netatopd.status).

    snapshot gives the table fill; without one, table_problem says why.  Groups
    marked verbose (the daemon's internals: resolver, sweep, balance, forwarded,
    atop socket, process events, the eBPF helper) only with verbose, else named
    in a last line 'More with --verbose:'; figures the
    registry does not know (from a newer daemon) only in --json.  from_table:
    the figures are the table's copy (snapshot's), for a user the control
    socket does not serve: the opening line says so instead of showing the
    figures only the socket gives (version, owner resolution, uptime).
    """
    lines: list[str] = []
    hidden: list[str] = []
    for group in status_registry.GROUPS:
        if group.verbose and not verbose:
            if status_registry.group_figures(group, figures):
                hidden.append(group.heading)
            continue
        found = status_registry.group_figures(group, figures)
        if group.style is status_registry.Style.HEADER and from_table and snapshot is not None:
            lines += _wrap(
                f"netatopd pid {snapshot.daemon_pid}:",
                [
                    f"figures from the shared table (updated {_clock(snapshot.updated_s)})",
                    "the rest needs root or netatopd's --control-group",
                ],
                width,
            )
            lines += _wrap("Run directory", [run_dir], width)
            lines.append("")
        elif group.style is status_registry.Style.HEADER:
            lines.append(", ".join(_figure_text(field, value) for field, value in found))
            lines += _wrap("Run directory", [run_dir], width)
            lines.append("")
        elif group.style is status_registry.Style.TABLE:
            if not verbose:
                found = [(f, value) for f, value in found if not (f.quiet_zero and value == 0)]
            lines += _figures_table(group.heading, found, width)
        elif group.style is status_registry.Style.SHARED_TABLE:
            items = _shared_table_items(found, snapshot, table_problem)
            lines += _wrap(group.heading, items, width)
        elif found:
            lines += _wrap(group.heading, _group_items(group, found), width)
        elif group.when_empty:
            lines += _wrap(group.heading, [group.when_empty], width)
    if hidden:
        lines += textwrap.wrap(
            f"More with --verbose: {', '.join(hidden)}",
            max(width, 40),
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
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
    table_columns: list[Column[Row]] = [Column(heading, lambda r: "  " + r["name"], right=False)]
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
