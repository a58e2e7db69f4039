"""``netatop top``: a live view of the processes using the network.

Owns the rates between two table snapshots (rate_rows), the layout of one
frame (top_frame), the terminal (TopScreen: alternate screen, cbreak keys,
restored on exit, or plain frames to a pipe) and the loop that reads keys and
draws (show).  Reads the table through sources; called by commands.top.
"""

from __future__ import annotations

import io
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
from .format import (
    TERMINAL_FALLBACK,
    Column,
    format_bytes,
    format_clock,
    format_rate,
    render_table,
)
from .rows import COMMAND_COLUMN, PID_COLUMN, SortKey, TaskCounts
from .sources import NoPermission, Unavailable

TOP_INTERVAL_S_MIN = 0.1
TOP_HEADER_LINES = 5  # title, keys, totals, blank line, column header

# Keys of netatop top that switch its order.
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
TOP_QUIT_KEYS = frozenset("qQ")
# How the keys line names each order: the column it sorts by, where there is one.
TOP_KEY_LABELS: dict[SortKey, str] = {
    SortKey.SENT: "sent",
    SortKey.RECEIVED: "rcvd",
    SortKey.SENT_PACKETS: "sndpk",
    SortKey.RECEIVED_PACKETS: "rcvpk",
}


class OutputClosed(Exception):
    """Whoever read our standard output has gone (netatop top | head)."""


def rate_rows(previous: Snapshot, current: Snapshot) -> list[TaskCounts]:
    """Per-process rates (per second) of every counter between two snapshots.

    A process is (id, btime); one that is new in current started, or first
    used the network, after previous was published: all its counters are new.
    total_bytes is the process's lifetime bytes, sent and received.
    """
    elapsed_s = current.updated_s - previous.updated_s
    before = {(t.id, t.btime): t.counters for t in previous.rows if t.kind != Kind.THREAD}
    rates = []
    for task in current.rows:
        if task.kind != Kind.PROCESS:
            continue
        base = before.get((task.id, task.btime))
        row = rows.from_table(task)
        deltas = [
            max(value - (base[index] if base else 0), 0) / elapsed_s if elapsed_s > 0 else 0.0
            for index, value in enumerate(task.counters)
        ]
        rates.append(rows.with_counters(row, deltas, int(rows.byte_total(row))))
    return rates


TOP_COLUMNS: tuple[Column[TaskCounts], ...] = (
    PID_COLUMN,
    COMMAND_COLUMN,
    Column("SENT/s", lambda r: format_bytes(r.tcpsndbytes + r.udpsndbytes)),
    Column("RCVD/s", lambda r: format_bytes(r.tcprcvbytes + r.udprcvbytes)),
    Column("SNDPK/s", lambda r: format_rate(r.tcpsndpacks + r.udpsndpacks)),
    Column("RCVPK/s", lambda r: format_rate(r.tcprcvpacks + r.udprcvpacks)),
    Column("TCP/s", lambda r: format_bytes(r.tcpsndbytes + r.tcprcvbytes)),
    Column("UDP/s", lambda r: format_bytes(r.udpsndbytes + r.udprcvbytes)),
    Column("TOTAL", lambda r: format_bytes(r.total_bytes)),
)


def top_frame(
    rates: list[TaskCounts] | None,
    sort: SortKey,
    interval_s: float,
    updated_s: float,
    size: tuple[int, int] | None,
) -> list[str]:
    """The lines of one frame; rates None while the first interval is measured.

    size (columns, lines) cuts the frame to the screen; None prints every row
    at the fallback width (a pipe).
    """
    width, height = size if size is not None else (TERMINAL_FALLBACK[0], 0)
    sort_names = " ".join(f"{k}:{TOP_KEY_LABELS.get(v, v.value)}" for k, v in TOP_SORT_KEYS.items())
    lines = [
        f"netatop top  {format_clock(updated_s)}  every {interval_s:g} s  sorted by {sort.value}",
        f"keys: {sort_names} q:quit",
    ]
    if rates is None:
        lines += [f"measuring for {interval_s:g} s ..."]
        return [line[:width] for line in lines]
    ordered = rows.sort_rows(rates, sort)
    sent = sum(r.tcpsndbytes + r.udpsndbytes for r in rates)
    received = sum(r.tcprcvbytes + r.udprcvbytes for r in rates)
    sent_packets = sum(r.tcpsndpacks + r.udpsndpacks for r in rates)
    received_packets = sum(r.tcprcvpacks + r.udprcvpacks for r in rates)
    lines.append(
        f"total: sent {format_bytes(sent)}/s {format_rate(sent_packets)} pk/s, "
        f"received {format_bytes(received)}/s {format_rate(received_packets)} pk/s, "
        f"{len(rates)} processes"
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


def _run(
    screen: TopScreen, run_dir: str | None, interval_s: float, sort: SortKey, iterations: int
) -> None:
    reader = _open(run_dir)
    try:
        previous = sources.snapshot(reader)
        rates: list[TaskCounts] | None = None
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
                        top_frame(rates, sort, interval_s, previous.updated_s, screen.size())
                    )
            if reader.replaced():  # a restarted daemon made a new table: start over from it
                reader.close()
                replacement = sources.open_reader(run_dir)
                if replacement is None:
                    raise Unavailable("netatopd is not running (its table is gone)")
                reader = replacement
                previous = sources.snapshot(reader)
                rates = None
                continue
            current = sources.snapshot(reader)
            if current.generation == previous.generation:
                continue  # nothing published since the last frame
            rates = rate_rows(previous, current)
            screen.draw(top_frame(rates, sort, interval_s, current.updated_s, screen.size()))
            previous = current
            frames += 1
    finally:
        reader.close()


def show(run_dir: str | None, interval_s: float, sort: SortKey, iterations: int) -> None:
    """Run netatop top on this process's terminal until q, Ctrl-C or N frames.

    SIGTERM and SIGHUP restore the terminal on the way out; their handlers are
    put back afterwards.
    """
    screen = TopScreen(sys.stdin, sys.stdout)
    previous_handlers = {
        signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        with screen:
            _run(screen, run_dir, interval_s, sort, iterations)
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
