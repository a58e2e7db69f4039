"""The frames of ``netatop top``: what one screen shows, built without a terminal.

Owns TopView (the state between frames: the order, bytes or bits, each row's
last minute for its sparkline, and when a finished process was first seen
finished, so that its row is marked and then leaves), the columns of top with
their order of importance (TOP_COLUMNS; those that do not fit the width are
dropped whole and the header says how many), the sparkline and the colours
(TopStyle: sent versus received, only on a terminal and never with NO_COLOR).
Pure: the time is the table's publish time handed in, sizes are arguments.
Called by top (the loop and the terminal) and by the tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ..tasks import Kind
from . import rows
from .format import format_bits, format_bytes, format_clock, format_rate
from .rows import SortKey, TaskCounts

# A finished process keeps its row, marked X, this long after top first saw it
# finished (then the row leaves); said in netatop(1).
TOP_FINISHED_KEEP_S = 5.0
# The sparkline: the last minute of a row's bytes per second (sent and
# received), in SPARK_CELLS cells of SPARK_WINDOW_S / SPARK_CELLS seconds each,
# each cell the time-weighted mean over its seconds, scaled to the row's own peak.
SPARK_WINDOW_S = 60.0
SPARK_CELLS = 12
SPARK_UNICODE = "▁▂▃▄▅▆▇█"
SPARK_ASCII = ".,:-=+*#"
# The command line is shown only when at least this much room is left for it;
# a cut one ends with the cut marker.
CMDLINE_MIN_WIDTH = 20
CUT_UNICODE = "…"
CUT_ASCII = "~"
# Marks of the state column S.
RUNNING_MARK = "R"
FINISHED_MARK = "X"

# SGR colours (ECMA-48): sent and received cells, finished rows.
SENT_COLOUR = "\x1b[33m"  # yellow
RECEIVED_COLOUR = "\x1b[36m"  # cyan
FINISHED_COLOUR = "\x1b[2m"  # faint
COLOUR_OFF = "\x1b[0m"


def colour_wanted(environ: Mapping[str, str], terminal: bool) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return terminal and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def utf8_locale(environ: Mapping[str, str]) -> bool:
    """True when the locale (LC_ALL, else LC_CTYPE, else LANG) names UTF-8."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = environ.get(name)
        if value:
            return ".utf8" in value.lower().replace("-", "")
    return False


class TopStyle(NamedTuple):
    """How frames are drawn: the terminal's abilities, decided once by top."""

    colour: bool = False
    unicode: bool = False
    keys: bool = False  # the key help line (only when keys can be typed and seen)


Key = tuple[int, int]  # (tgid, btime): one process, whatever its row's kind


def row_key(row: TaskCounts) -> Key:
    return (row.tgid, row.btime)


class _Cells(NamedTuple):
    """What a column's cell may need besides the row."""

    bits: bool
    spark: Callable[[TaskCounts], str]
    cut: str


class TopColumn(NamedTuple):
    """One column of top: its header, how a cell reads a row, and how it is kept and drawn."""

    header: str
    cell: Callable[[TaskCounts, _Cells], str]
    importance: float  # 0 is kept longest; the largest is dropped first
    right: bool = True
    colour: str = ""  # SGR sequence of its cells when colour is on
    flex: bool = False  # may be cut (with the cut marker) down to CMDLINE_MIN_WIDTH


def _rate(value: Callable[[TaskCounts], float]) -> Callable[[TaskCounts, _Cells], str]:
    """A bytes-per-second cell, in bits when asked."""

    def cell(row: TaskCounts, cells: _Cells) -> str:
        amount = value(row)
        return format_bits(amount * 8) if cells.bits else format_bytes(amount)

    return cell


def _state(row: TaskCounts, cells: _Cells) -> str:
    return FINISHED_MARK if row.kind is Kind.EXITED else RUNNING_MARK


CMDLINE_HEADER = "CMDLINE"
CONTAINER_HEADER = "CONTAINER"
CONTAINER_ID_SHOWN = 12  # hex digits of a container id shown (as ``docker ps`` does)


def short_container(container: str | None) -> str:
    """A container ("runtime:id", "pod:UID") with its id cut to CONTAINER_ID_SHOWN."""
    if not container:
        return "-"
    runtime, _, ident = container.partition(":")
    return f"{runtime}:{ident[:CONTAINER_ID_SHOWN]}" if ident else runtime


# With --cmdline the command line is kept right after COMMAND (still cut to fit).
CMDLINE_FORCED_IMPORTANCE = 2.5
# In display order; importance says which are dropped first when the width is short
# (as netatop(1) lists them): CMDLINE, UDP/s, TCP/s, RCVPK/s, SNDPK/s, CONTAINER,
# USER, LAST MINUTE, TOTAL, RCVD/s, SENT/s, COMMAND, S; PID stays.  CMDLINE and
# CONTAINER are there only when some row has one (CMDLINE also with --cmdline).
TOP_COLUMNS: tuple[TopColumn, ...] = (
    TopColumn("PID", lambda r, c: str(r.pid), 0),
    TopColumn("S", _state, 1, right=False),
    TopColumn("USER", lambda r, c: r.user or "-", 8, right=False),
    TopColumn("COMMAND", lambda r, c: r.command, 2, right=False),
    TopColumn(CONTAINER_HEADER, lambda r, c: short_container(r.container), 8.5, right=False),
    TopColumn("SENT/s", _rate(rows.sent_bytes), 3, colour=SENT_COLOUR),
    TopColumn("RCVD/s", _rate(rows.received_bytes), 4, colour=RECEIVED_COLOUR),
    TopColumn("SNDPK/s", lambda r, c: format_rate(rows.sent_packets(r)), 9, colour=SENT_COLOUR),
    TopColumn(
        "RCVPK/s", lambda r, c: format_rate(rows.received_packets(r)), 10, colour=RECEIVED_COLOUR
    ),
    TopColumn("TCP/s", _rate(lambda r: r.tcpsndbytes + r.tcprcvbytes), 11),
    TopColumn("UDP/s", _rate(lambda r: r.udpsndbytes + r.udprcvbytes), 12),
    TopColumn("TOTAL", lambda r, c: format_bytes(r.total_bytes), 5),
    TopColumn("LAST MINUTE", lambda r, c: c.spark(r), 6, right=False),
    TopColumn(CMDLINE_HEADER, lambda r, c: r.cmdline or "-", 13, right=False, flex=True),
)


def fit_columns(
    natural: Sequence[int], columns: Sequence[TopColumn], width: int | None
) -> tuple[list[int], list[int]]:
    """(indexes of the columns kept, their widths); the rest are dropped whole.

    Least important first, columns are dropped until the kept ones, a space
    between each and the marker ' +N' (N dropped) fit width; a flex column is
    first cut down to CMDLINE_MIN_WIDTH.  width None keeps every column uncut.
    """
    kept = list(range(len(columns)))
    if width is None:
        return kept, list(natural)

    def least(index: int) -> int:
        return natural[index] if not columns[index].flex else min(natural[index], CMDLINE_MIN_WIDTH)

    def needed(indexes: list[int]) -> int:
        dropped = len(columns) - len(indexes)
        marker = len(f" +{dropped}") if dropped else 0
        return sum(least(i) for i in indexes) + len(indexes) - 1 + marker

    by_importance = sorted(kept, key=lambda i: columns[i].importance, reverse=True)
    while len(kept) > 1 and needed(kept) > width:
        kept.remove(by_importance.pop(0))
    widths = [least(i) for i in kept]
    spare = width - needed(kept)
    for position, index in enumerate(kept):
        if columns[index].flex and spare > 0:
            grow = min(spare, natural[index] - widths[position])
            widths[position] += grow
            spare -= grow
    return kept, widths


def sparkline(samples: Sequence[tuple[float, float, float]], now_s: float, glyphs: str) -> str:
    """SPARK_CELLS characters for the minute before now_s; samples are (start_s, end_s, rate).

    A cell with no traffic (or no sample) is a space; the others are scaled to
    the largest cell: the lowest glyph is a trickle, the highest the peak.
    """
    cell_s = SPARK_WINDOW_S / SPARK_CELLS
    start = now_s - SPARK_WINDOW_S
    means: list[float] = []
    for index in range(SPARK_CELLS):
        low, high = start + index * cell_s, start + (index + 1) * cell_s
        weighted = covered = 0.0
        for begin, end, rate in samples:
            overlap = min(end, high) - max(begin, low)
            if overlap > 0:
                weighted += rate * overlap
                covered += overlap
        means.append(weighted / covered if covered > 0 else 0.0)
    peak = max(means)
    if peak <= 0:
        return " " * SPARK_CELLS
    levels = len(glyphs)
    return "".join(
        " " if mean <= 0 else glyphs[min(max(math.ceil(mean / peak * levels), 1), levels) - 1]
        for mean in means
    )


@dataclasses.dataclass
class TopView:
    """What top shows, frame after frame; update with each interval's rates, then frame().

    group is the hook for grouping rows (--by, and a key to cycle it, which
    top._apply_keys would set): when set it turns the rows of an interval into
    the rows shown, before they are sorted.
    """

    sort: SortKey
    interval_s: float
    style: TopStyle = TopStyle()
    bits: bool = False
    cmdline: bool = False  # --cmdline: the command line column before all but PID S COMMAND
    group: Callable[[list[TaskCounts]], list[TaskCounts]] | None = None
    group_name: str = ""  # what group's rows are (--by): their key column's header
    updated_s: float = 0.0
    shown: list[TaskCounts] | None = None  # None until the first interval is measured
    _finished_at: dict[Key, float] = dataclasses.field(default_factory=dict)
    _running: set[Key] = dataclasses.field(default_factory=set)
    _history: dict[Key, list[tuple[float, float, float]]] = dataclasses.field(default_factory=dict)

    def update(self, rates: list[TaskCounts], updated_s: float) -> None:
        """Take one interval's rates (top.rate_rows), published at updated_s.

        A finished process (kind exited) is shown, marked, when top saw it
        running or it moved bytes in this interval, until TOP_FINISHED_KEEP_S
        after top first saw it finished; others finished earlier are not shown.
        """
        previous_s = self.updated_s if self.shown is not None else updated_s - self.interval_s
        shown = []
        running = set()
        for row in rates:
            key = row_key(row)
            if row.kind is Kind.EXITED:
                if key not in self._finished_at:
                    if key not in self._running and rows.byte_total(row) <= 0:
                        continue  # finished before top saw it: not news
                    self._finished_at[key] = updated_s
                if updated_s - self._finished_at[key] >= TOP_FINISHED_KEEP_S:
                    continue
            else:
                running.add(key)
            shown.append(row)
            samples = self._history.setdefault(key, [])
            samples.append((previous_s, updated_s, rows.byte_total(row)))
            while samples and samples[0][1] <= updated_s - SPARK_WINDOW_S:
                samples.pop(0)
        keys = {row_key(row) for row in shown}
        self._history = {key: value for key, value in self._history.items() if key in keys}
        # Remembered while the table has the finished row, so that it does not come back.
        finished = {row_key(row) for row in rates if row.kind is Kind.EXITED}
        self._finished_at = {k: at for k, at in self._finished_at.items() if k in finished}
        self._running = running
        self.shown = shown
        self.updated_s = updated_s

    def frame(self, size: tuple[int, int] | None) -> list[str]:
        """The lines of one frame; size (columns, lines) fits it to a terminal.

        Without a size (a pipe) every row and every column is printed uncut.
        """
        width, height = size if size is not None else (None, 0)
        unit = "bits" if self.bits else "bytes"
        title = ["netatop top", format_clock(self.updated_s), f"every {self.interval_s:g} s"]
        title += [f"sorted by {self.sort.value}", f"rates in {unit}"]
        if self.group is not None and self.group_name:
            title.append(f"by {self.group_name}")
        lines = [fit_pieces(title, "  ", width)]
        if self.style.keys:
            lines.append(keys_line(self.bits, width))
        if self.shown is None:
            lines.append(f"measuring for {self.interval_s:g} s ...")
            return [line[:width] for line in lines]
        processes = self.shown
        shown = self.group(processes) if self.group is not None else processes
        ordered = rows.sort_rows(shown, self.sort)
        finished = sum(1 for row in processes if row.kind is Kind.EXITED)
        totals = [
            f"total: sent {self._rate_text(sum(map(rows.sent_bytes, shown)))}/s "
            f"{format_rate(sum(map(rows.sent_packets, shown)))} pk/s",
            f"received {self._rate_text(sum(map(rows.received_bytes, shown)))}/s "
            f"{format_rate(sum(map(rows.received_packets, shown)))} pk/s",
            f"{len(processes)} processes",
        ]
        if self.group is not None:
            totals.append(f"{len(shown)} groups")
        if finished:
            totals.append(f"{finished} finished")
        lines.append(fit_pieces(totals, ", ", width))
        lines.append("")
        if size is not None:
            room = max(height - len(lines) - 2, 0)  # the header, and the last line stays free
            ordered = ordered[:room]
        return lines + self.table(ordered, width)

    def _rate_text(self, bytes_per_s: float) -> str:
        return format_bits(bytes_per_s * 8) if self.bits else format_bytes(bytes_per_s)

    def table(self, ordered: Sequence[TaskCounts], width: int | None) -> list[str]:
        """The column header and one line per row, fitted to width (None: uncut)."""
        glyphs = SPARK_UNICODE if self.style.unicode else SPARK_ASCII
        cells = _Cells(
            self.bits,
            lambda row: sparkline(self._history.get(row_key(row), ()), self.updated_s, glyphs),
            CUT_UNICODE if self.style.unicode else CUT_ASCII,
        )
        columns = [
            column._replace(importance=CMDLINE_FORCED_IMPORTANCE)
            if column.header == CMDLINE_HEADER and self.cmdline
            else column
            for column in TOP_COLUMNS
            if (
                column.header != CMDLINE_HEADER
                or self.cmdline
                or any(row.cmdline for row in ordered)
            )
            and (column.header != CONTAINER_HEADER or any(row.container for row in ordered))
        ]
        if self.group is not None:
            columns = group_columns(columns, self.group_name)
        texts = [[column.cell(row, cells) for column in columns] for row in ordered]
        natural = [
            max([len(column.header), *(len(line[index]) for line in texts)])
            for index, column in enumerate(columns)
        ]
        kept, widths = fit_columns(natural, columns, width)
        dropped = len(columns) - len(kept)
        header = " ".join(
            _pad(columns[i].header, size, columns[i].right, cells.cut)
            for i, size in zip(kept, widths, strict=True)
        ).rstrip()
        lines = [header + (f" +{dropped}" if dropped else "")]
        for row, line in zip(ordered, texts, strict=True):
            parts = []
            for index, size in zip(kept, widths, strict=True):
                text = _pad(line[index], size, columns[index].right, cells.cut)
                colour = columns[index].colour
                if self.style.colour and colour and text.strip():
                    text = f"{colour}{text}{COLOUR_OFF}"
                parts.append(text)
            text = " ".join(parts).rstrip()
            if self.style.colour and row.kind is Kind.EXITED:
                text = FINISHED_COLOUR + text.replace(COLOUR_OFF, COLOUR_OFF + FINISHED_COLOUR)
                text += COLOUR_OFF
            lines.append(text)
        return lines


# Grouped (--by), a row is a group: PROCS (how many processes: the row's pid), the key
# (its command), and the rates summed; these columns of a process are left out.
GROUP_LEFT_OUT = frozenset({"S", "USER", "LAST MINUTE", CMDLINE_HEADER, CONTAINER_HEADER})
GROUP_COUNT_HEADER = "PROCS"


def group_columns(columns: Sequence[TopColumn], name: str) -> list[TopColumn]:
    """The columns of grouped rows: PID counts processes, COMMAND holds the group's key."""
    result = []
    for column in columns:
        if column.header in GROUP_LEFT_OUT:
            continue
        if column.header == "PID":
            column = column._replace(header=GROUP_COUNT_HEADER)
        elif column.header == "COMMAND":
            column = column._replace(header=(name or "group").upper())
        result.append(column)
    return result


def _pad(text: str, size: int, right: bool, cut: str) -> str:
    if len(text) > size:
        text = text[: size - len(cut)] + cut
    return text.rjust(size) if right else text.ljust(size)


# Keys of netatop top that switch its order; TOP_KEY_LABELS name them on the keys line.
TOP_SORT_KEYS: dict[str, SortKey] = {
    "b": SortKey.BYTES,
    "p": SortKey.PACKETS,
    "s": SortKey.SENT,
    "r": SortKey.RECEIVED,
    "S": SortKey.SENT_PACKETS,
    "R": SortKey.RECEIVED_PACKETS,
    "t": SortKey.TCP,
    "u": SortKey.UDP,
    "n": SortKey.PID,
}
TOP_KEY_LABELS: dict[SortKey, str] = {
    SortKey.PACKETS: "pkts",
    SortKey.SENT: "sent",
    SortKey.RECEIVED: "rcvd",
    SortKey.SENT_PACKETS: "sndpk",
    SortKey.RECEIVED_PACKETS: "rcvpk",
}
TOP_BITS_KEY = "m"  # bytes or bits per second (nethogs's m cycles its units)
TOP_GROUP_KEY = "g"  # cycles the grouping: none, command, user, unit, container
TOP_QUIT_KEYS = frozenset("qQ")


def keys_line(bits: bool, width: int | None) -> str:
    """The key help; keys that do not fit width are left out whole, q:quit stays."""
    items = [
        f"{key}:{TOP_KEY_LABELS.get(order, order.value)}" for key, order in TOP_SORT_KEYS.items()
    ]
    items.append(f"{TOP_BITS_KEY}:{'bytes' if bits else 'bits'}")
    items.append(f"{TOP_GROUP_KEY}:group")
    return fit_pieces(items, " ", width, last="q:quit")


def fit_pieces(pieces: Sequence[str], separator: str, width: int | None, last: str = "") -> str:
    """pieces joined by separator, then last, in width: pieces that do not fit are
    left out whole from the end (only a first piece wider than width alone is cut)."""
    kept = list(pieces)
    tail = [last] if last else []
    while len(kept) > 1 and width is not None and len(separator.join(kept + tail)) > width:
        kept.pop()
    return separator.join(kept + tail)[:width]
