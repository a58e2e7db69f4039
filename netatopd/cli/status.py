"""The screen of ``netatop status``: the daemon's STATUS figures grouped for a person.

Owns status_lines (the layout: one heading per group, items wrapped to the
terminal) and its two helpers.  Called by commands.status with the figures
sources.status_figures returned and a table snapshot for the table fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
) -> list[str]:
    """The STATUS figures grouped for a person; figures nobody groups go under Other.

    snapshot gives the table fill; without one, table_problem says why.
    """
    used: set[str] = set()

    def take(name: str, default: Any = 0) -> Any:
        used.add(name)
        return figures.get(name, default)

    lines = [
        f"netatopd {take('version', '?')}, up {_duration(float(take('uptime_s', 0)))}, "
        f"owner resolution: {take('ownership', '?')}",
        *_wrap("Run directory", [run_dir], width),
        "",
    ]
    packet_rows: list[Row] = []
    for protocol in ("tcp", "udp"):
        packet_rows.append(
            {
                "name": protocol.upper(),
                "sent": take(f"{protocol}_sent"),
                "received": take(f"{protocol}_received"),
                "sent_unidentified": take(f"{protocol}_sent_unidentified"),
                "received_unidentified": take(f"{protocol}_received_unidentified"),
            }
        )
    packet_rows.append(
        {
            "name": "ICMP",
            "sent": take("icmp_sent"),
            "received": take("icmp_received"),
            "sent_unidentified": None,
            "received_unidentified": None,
        }
    )
    packet_columns: tuple[Column[Row], ...] = (
        Column("Packets", lambda r: "  " + r["name"], right=False),
        Column("SENT", lambda r: _text(r["sent"])),
        Column("RECEIVED", lambda r: _text(r["received"])),
        Column("UNIDENTIFIED SENT", lambda r: _text(r["sent_unidentified"])),
        Column("UNIDENTIFIED RECEIVED", lambda r: _text(r["received_unidentified"])),
    )
    packet_lines = render_table(packet_rows, packet_columns, width)
    lines += packet_lines
    rejected = take("rejected", {})
    reasons = [f"{name} {count}" for name, count in rejected.items() if count]
    lines += _wrap(
        "Malformed", [f"{take('malformed')} (rejected: {', '.join(reasons) or 'none'})"], width
    )
    lines += _wrap(
        "Flows",
        [
            f"{take('flows')} (overflow {take('flows_overflow')}",
            f"pending owner {take('flows_pending')}",
            f"written off {take('flows_written_off')})",
        ],
        width,
    )
    lines += _wrap("Tasks", [f"{take('tasks')} (overflow {take('tasks_overflow')})"], width)
    lines += _wrap(
        "Exit list", [f"{take('exited')} (expired unread {take('exited_expired')})"], width
    )
    lines += _wrap(
        "Capture",
        [
            f"received {take('capture_received')}",
            f"dropped {take('capture_dropped')}",
            f"dropped by the interface {take('capture_interface_dropped')}",
            f"packets counted {take('packets_counted')}",
        ],
        width,
    )
    lines += _wrap(
        "Resolver",
        [
            f"lookups {take('resolver_lookups')}",
            f"misses {take('resolver_misses')}",
            f"not found {take('resolver_not_found')}",
            f"endpoint finds {take('resolver_endpoint_finds')}",
            f"full inode scans {take('inode_full_scans')}",
            f"/proc denied {take('proc_denied')}",
            *_owner_latency_items(
                take("owner_latency_samples"),
                take("owner_latency_ms_p50", None),
                take("owner_latency_ms_p99", None),
                take("owner_latency_ms_max", None),
            ),
        ],
        width,
    )
    capacity = take("table_capacity", None)
    if snapshot is None:
        lines += _wrap("Table", [f"capacity {capacity}", f"not readable: {table_problem}"], width)
    else:
        kinds = {kind: 0 for kind in Kind}
        for task in snapshot.rows:
            kinds[task.kind] += 1
        fill = 100.0 * len(snapshot.rows) / snapshot.capacity if snapshot.capacity else 0.0
        lines += _wrap(
            "Table",
            [
                f"{len(snapshot.rows)} rows of {snapshot.capacity} ({fill:.1f}%)",
                f"processes {kinds[Kind.PROCESS]}",
                f"threads {kinds[Kind.THREAD]}",
                f"exited {kinds[Kind.EXITED]}",
                f"refused {snapshot.refused}",
                f"updated {_clock(snapshot.updated_s)}",
            ],
            width,
        )
    history = take("history", None)
    if "history_persisted" in figures or history is not None:
        lines += _wrap(
            "History",
            [
                f"{history or 'on'}: persisted {take('history_persisted')}",
                f"samples {take('history_samples')}",
                f"pending {take('history_pending')}",
                f"dropped {take('history_dropped')}",
                f"disk-full skips {take('history_disk_full_skips')}",
                f"write errors {take('history_write_errors')}",
            ],
            width,
        )
    else:
        lines += _wrap("History", ["off"], width)
    other = [f"{name} {figures[name]}" for name in figures if name not in used]
    if other:
        lines += _wrap("Other", other, width)
    return lines


def _owner_latency_items(samples: int, p50: Any, p99: Any, largest: Any) -> list[str]:
    """The resolver's first packet read -> owner known delay over the latest new flows."""
    if not samples or p50 is None:
        return ["owner known after: no new flow yet"]
    return [
        f"owner known after {float(p50):.1f} ms (p50)",
        f"{float(p99):.1f} ms (p99)",
        f"{float(largest):.1f} ms (max) over the last {samples} new flows",
    ]
