"""``netatop top``: a live view of the processes using the network.

Owns the rates between two table snapshots (rate_rows), the terminal
(TopScreen: alternate screen, cbreak keys, restored on exit, or plain frames
to a pipe) and the loop that reads keys and
draws (show).  What a frame shows is topframe's (TopView; top_frame draws one
frame of one interval).  Reads the table through sources; called by
commands.top.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from types import FrameType
from typing import Any, TextIO

from ..client import run_dir_from_env
from ..table import Snapshot, TableReader
from ..tasks import Kind
from . import rows, sources
from .format import TERMINAL_FALLBACK, OutputFormat, Record, render_csv
from .groups import GroupBy, group_counts, group_fields, group_rows, sort_groups
from .rows import SortKey, TaskCounts
from .sources import NoPermission, Unavailable
from .topframe import (
    TOP_BITS_KEY,
    TOP_GROUP_KEY,
    TOP_QUIT_KEYS,
    TOP_SORT_KEYS,
    TopStyle,
    TopView,
    colour_wanted,
    utf8_locale,
)

TOP_INTERVAL_S_MIN = 0.1
# The fields of a row of --json and --csv (after "time" in CSV): a process's fields, its
# counters as rates (per second) over the interval, and its lifetime bytes.
TOP_ROW_FIELDS: tuple[str, ...] = (*rows.TASK_FIELDS, "total_bytes")
# The groupings the key g cycles through (None: one row per process).
TOP_GROUPINGS: tuple[GroupBy | None, ...] = (None, *GroupBy)


class OutputClosed(Exception):
    """Whoever read our standard output has gone (netatop top | head)."""


def rate_rows(previous: Snapshot, current: Snapshot) -> list[TaskCounts]:
    """Per-process rates (per second) of every counter between two snapshots.

    A process is (id, btime); one that is new in current started, or first
    used the network, after previous was published: all its counters are new.
    Rows of finished processes (the exit list, kind exited) are rated too: what
    they moved between previous and their end.  total_bytes is the process's
    lifetime bytes, sent and received.
    """
    elapsed_s = current.updated_s - previous.updated_s
    before = {(t.id, t.btime): t.counters for t in previous.rows if t.kind != Kind.THREAD}
    rates = []
    for task in current.rows:
        if task.kind == Kind.THREAD:
            continue
        base = before.get((task.id, task.btime))
        row = rows.from_table(task)
        deltas = [
            max(value - (base[index] if base else 0), 0) / elapsed_s if elapsed_s > 0 else 0.0
            for index, value in enumerate(task.counters)
        ]
        rates.append(rows.with_counters(row, deltas, int(rows.byte_total(row))))
    return rates


# The style of top_frame when none is given: a terminal without colour.
KEYS_ONLY = TopStyle(keys=True)


def top_frame(
    rates: list[TaskCounts] | None,
    sort: SortKey,
    interval_s: float,
    updated_s: float,
    size: tuple[int, int] | None,
    style: TopStyle = KEYS_ONLY,
    bits: bool = False,
) -> list[str]:
    """One frame of one interval's rates (None while it is measured), without history.

    size (columns, lines) fits the frame to a terminal; None (a pipe) prints
    every row and every column.
    """
    view = TopView(sort, interval_s, style, bits)
    view.updated_s = updated_s
    if rates is not None:
        view.update(rates, updated_s)
    return view.frame(size)


def grouping(view: TopView, by: GroupBy | None) -> None:
    """Group view's rows by by (None: one row per process)."""
    view.group = None if by is None else lambda shown: group_counts(shown, by)
    view.group_name = "" if by is None else by.value


def frame_records(view: TopView, by: GroupBy | None) -> list[Record]:
    """The last interval's rows as --json and --csv print them, in view's order:
    TOP_ROW_FIELDS a process, or with by one record a group (groups.group_fields)."""
    shown = view.shown or []
    if by is None:
        return [row.record(TOP_ROW_FIELDS) for row in rows.sort_rows(shown, view.sort)]
    return [group.record() for group in sort_groups(group_rows(shown, by), view.sort)]


def machine_frame(view: TopView, by: GroupBy | None, output: OutputFormat, first: bool) -> str:
    """One frame of --json (one object a line: time, interval_s, rows) or --csv (a
    line a row, its publish time first; the header line before the first frame)."""
    records = frame_records(view, by)
    if output is OutputFormat.JSON:
        frame = {"time": view.updated_s, "interval_s": view.interval_s, "rows": records}
        return json.dumps(frame)
    fields = ("time", *(TOP_ROW_FIELDS if by is None else group_fields(by)))
    text = render_csv([{"time": view.updated_s, **record} for record in records], fields)
    return text if first else text.partition("\n")[2]


class TopScreen:
    """The terminal of netatop top: alternate screen, cbreak keys, restored on exit.

    When stdout is not a terminal (a pipe, a script) frames are printed one
    after the other with a blank line between them and no escape sequences;
    when stdin is not a terminal no key is read.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, machine: bool = False) -> None:
        self.out = stdout
        # machine: --json or --csv, printed as they are, on a terminal too
        self.machine = machine
        self.interactive = _isatty(stdout) and not machine
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
        elif self.machine:
            text = "".join(f"{line}\n" for line in lines)
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


def _open(run_dir: str | None) -> TableReader:
    reader = sources.open_reader(run_dir)
    if reader is None:
        try:
            sources.call(run_dir, lambda c: c.probe())  # not running: say so, and where
        except NoPermission:
            raise Unavailable(sources.not_running(run_dir, "table")) from None
        raise Unavailable(
            f"netatopd answers on its control socket but there is no table in "
            f"{run_dir_from_env(run_dir)}; netatop top needs it"
        )
    return reader


class TopOutput:
    """Where frames go: the screen's frame, or --json / --csv records."""

    def __init__(self, screen: TopScreen, output: OutputFormat, by: GroupBy | None) -> None:
        self.screen = screen
        self.output = output
        self.by = by  # the grouping (the key g changes it)
        self.frames = 0

    def draw(self, view: TopView) -> None:
        if self.output is OutputFormat.TABLE:
            self.screen.draw(view.frame(self.screen.size()))
        elif view.shown is not None:
            text = machine_frame(view, self.by, self.output, first=self.frames == 0)
            self.screen.draw([text] if text else [])
        self.frames += 1


def _run(out: TopOutput, run_dir: str | None, view: TopView, iterations: int) -> None:
    screen = out.screen
    reader = _open(run_dir)
    try:
        previous = sources.snapshot(reader)
        view.updated_s = previous.updated_s
        frames = 0
        if screen.interactive:
            out.draw(view)
        while iterations == 0 or frames < iterations:
            deadline = time.monotonic() + view.interval_s
            while (remaining := deadline - time.monotonic()) > 0:
                keys = screen.read_keys(remaining)
                if any(key in TOP_QUIT_KEYS for key in keys):
                    return
                if _apply_keys(view, keys, out):
                    out.draw(view)
            if reader.replaced():  # a restarted daemon made a new table: start over from it
                reader.close()
                replacement = sources.open_reader(run_dir)
                if replacement is None:
                    raise Unavailable("netatopd is not running (its table is gone)")
                reader = replacement
                previous = sources.snapshot(reader)
                view = TopView(
                    view.sort,
                    view.interval_s,
                    view.style,
                    view.bits,
                    view.cmdline,
                    view.group,
                    view.group_name,
                )
                view.updated_s = previous.updated_s
                continue
            current = sources.snapshot(reader)
            if current.generation == previous.generation:
                continue  # nothing published since the last frame
            view.update(rate_rows(previous, current), current.updated_s)
            out.draw(view)
            previous = current
            frames += 1
    finally:
        reader.close()


def _apply_keys(view: TopView, keys: str, out: TopOutput | None = None) -> bool:
    """Switch the order, the unit or the grouping as typed; True when the frame should
    be drawn again."""
    changed = False
    for key in keys:
        if key == TOP_GROUP_KEY and out is not None:
            out.by = TOP_GROUPINGS[(TOP_GROUPINGS.index(out.by) + 1) % len(TOP_GROUPINGS)]
            grouping(view, out.by)
            changed = True
        if key in TOP_SORT_KEYS:
            view.sort = TOP_SORT_KEYS[key]
            changed = True
        elif key == TOP_BITS_KEY:
            view.bits = not view.bits
            changed = True
    return changed


def show(
    run_dir: str | None,
    interval_s: float,
    sort: SortKey,
    iterations: int,
    bits: bool = False,
    cmdline: bool = False,
    output: OutputFormat = OutputFormat.TABLE,
    by: GroupBy | None = None,
) -> None:
    """Run netatop top on this process's terminal until q, Ctrl-C or N frames.

    output JSON or CSV prints records (machine_frame) instead of frames; by
    groups the rows (the key g cycles through TOP_GROUPINGS).

    Colour, the key help and unicode sparklines are decided here, once (see
    topframe.TopStyle).  SIGTERM and SIGHUP restore the terminal on the way
    out; their handlers are put back afterwards.
    """
    screen = TopScreen(sys.stdin, sys.stdout, machine=output is not OutputFormat.TABLE)
    style = TopStyle(
        colour=colour_wanted(os.environ, screen.interactive),
        unicode=utf8_locale(os.environ),
        keys=screen.interactive and screen.in_fd is not None,
    )
    view = TopView(sort, interval_s, style, bits, cmdline)
    grouping(view, by)
    previous_handlers = {
        signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        with screen:
            _run(TopOutput(screen, output, by), run_dir, view, iterations)
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
