"""netatop top's frames (cli/topframe.py) with a fake clock and sizes, and on a terminal.

The clock is the table's publish time handed to TopView.update; sizes are
arguments.  The terminal tests run the real command on a pty (run_top_in_pty)
against a table a thread publishes (Publisher).
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_cli import DIG, NGINX, ZERO, invoke, run_top_in_pty

from netatopd.cli.format import format_bits
from netatopd.cli.rows import SortKey, TaskCounts
from netatopd.cli.top import top_frame
from netatopd.cli.topframe import (
    SPARK_ASCII,
    SPARK_UNICODE,
    TOP_COLUMNS,
    TOP_FINISHED_KEEP_S,
    TopStyle,
    TopView,
    colour_wanted,
    keys_line,
    short_container,
    sparkline,
    utf8_locale,
)
from netatopd.table import TableWriter, table_path
from netatopd.tasks import Kind, TaskRow

NONE = (0.0, 0.0, 0.0, 0.0)


def process(
    pid: int, sent_per_s: float = 0.0, kind: Kind = Kind.PROCESS, **extra: Any
) -> TaskCounts:
    """A row of top: pid sends sent_per_s bytes per second in 1000-byte TCP segments."""
    return TaskCounts(
        kind, pid, pid, 1000 + pid, f"proc{pid}",
        sent_per_s / 1000, sent_per_s, *NONE[:2], *NONE,
        **extra,
    )  # fmt: skip


def pids(frame: list[str]) -> list[tuple[int, str]]:
    """(pid, state) of each row of a frame."""
    header = next(i for i, line in enumerate(frame) if line.lstrip().startswith("PID "))
    return [(int(line.split()[0]), line.split()[1]) for line in frame[header + 1 :]]


# --------------------------------------------------------------------------- finished rows


def test_a_finished_process_is_marked_then_leaves() -> None:
    view = TopView(SortKey.PID, 2.0)
    view.update([process(1, 1000), process(2, 500)], 100.0)
    assert pids(view.frame((80, 24))) == [(1, "R"), (2, "R")]
    # 2 finished during the next interval: its row is marked X, with what it sent before it ended
    view.update([process(1, 1000), process(2, 250, Kind.EXITED)], 102.0)
    frame = view.frame((100, 24))
    assert pids(frame) == [(1, "R"), (2, "X")]
    assert frame[1].endswith(", 2 processes, 1 finished")
    # in 80 columns the count of finished rows does not fit: left out whole
    assert view.frame((80, 24))[1].endswith(", 2 processes")
    assert frame[5].split()[4:6] == ["250", "B"]  # SENT/s
    # still there, at 0 B, until TOP_FINISHED_KEEP_S after top first saw it finished ...
    view.update([process(1, 1000), process(2, 0, Kind.EXITED)], 102.0 + TOP_FINISHED_KEEP_S - 0.1)
    assert pids(view.frame((80, 24))) == [(1, "R"), (2, "X")]
    # ... then it leaves, and does not come back while the table keeps it
    for now in (102.0 + TOP_FINISHED_KEEP_S, 110.0, 112.0):
        view.update([process(1, 1000), process(2, 0, Kind.EXITED)], now)
        assert pids(view.frame((80, 24))) == [(1, "R")]


def test_a_process_finished_before_top_saw_it_is_not_shown_unless_it_moved_bytes() -> None:
    view = TopView(SortKey.PID, 2.0)
    # 3 was in the exit list before top started; 4 started and finished within the interval
    view.update([process(1, 10), process(3, 0, Kind.EXITED), process(4, 700, Kind.EXITED)], 50.0)
    assert pids(view.frame(None)) == [(1, "R"), (4, "X")]
    view.update([process(1, 10), process(3, 0, Kind.EXITED), process(4, 0, Kind.EXITED)], 52.0)
    assert pids(view.frame(None)) == [(1, "R"), (4, "X")]
    view.update([process(1, 10), process(4, 0, Kind.EXITED)], 50.0 + TOP_FINISHED_KEEP_S)
    assert pids(view.frame(None)) == [(1, "R")]


def test_finished_rows_are_rated_from_the_table(tmp_path: Path) -> None:
    """rate_rows keeps the exit list's rows: what a process moved before it ended."""
    from test_cli import rates_snapshot

    from netatopd.cli.top import rate_rows

    writer = TableWriter(table_path(str(tmp_path)), 8, 250)
    try:
        writer.publish([NGINX, DIG], {})
        first = rates_snapshot(tmp_path)
        ended = DIG._replace(kind=Kind.EXITED, counters=(*ZERO, 50, 5000 + 600, 50, 15000))
        writer.publish([NGINX, ended], {})
        second = rates_snapshot(tmp_path)
    finally:
        writer.close()
    elapsed = second.updated_s - first.updated_s
    rows = {r.pid: r for r in rate_rows(first, second)}
    assert rows[200].kind is Kind.EXITED
    assert rows[200].udpsndbytes * elapsed == pytest.approx(600)


# --------------------------------------------------------------------------- bits


def test_format_bits() -> None:
    assert [format_bits(n) for n in (0, 999, 999.4, 1000, 8192, 47_700_000, 10**9, 1.5e13)] == [
        "0 bit", "999 bit", "999 bit", "1.00 kbit", "8.19 kbit", "47.7 Mbit", "1.00 Gbit",
        "15.0 Tbit",
    ]  # fmt: skip


def test_bits_turn_every_rate_into_bits_per_second() -> None:
    rows = [process(1, 1024), process(2, 6_000_000)]
    frame = top_frame(rows, SortKey.PID, 2.0, 100.0, (80, 24), bits=True)
    assert frame[0].endswith("rates in bits")
    assert frame[1].split()[-2:] == ["m:bytes", "q:quit"]
    assert frame[2].startswith("total: sent 48.0 Mbit/s 6001 pk/s, received 0 bit/s 0.0 pk/s")
    assert frame[5].split()[4:6] == ["8.19", "kbit"]
    assert frame[6].split()[4:6] == ["48.0", "Mbit"]
    assert frame[5].split()[6:8] == ["0", "bit"]
    as_bytes = top_frame(rows, SortKey.PID, 2.0, 100.0, (80, 24))
    assert as_bytes[0].endswith("rates in bytes") and as_bytes[5].split()[4:6] == ["1.00", "KiB"]
    assert as_bytes[1].split()[-2:] == ["m:bits", "q:quit"]


# --------------------------------------------------------------------------- sparkline


def test_sparkline_cells_are_the_last_minute_scaled_to_the_peak() -> None:
    view = TopView(SortKey.PID, 5.0, TopStyle(unicode=True))
    for step in range(1, 13):  # one interval per 5 s cell: 100, 200, ... 1200 bytes/s
        view.update([process(1, 100.0 * step)], 5.0 * step)
    assert view.table(view.shown or [], None)[1].split()[-1] == "▁▂▂▃▄▄▅▆▆▇██"
    for step in range(13, 19):  # 30 s of silence: the first half leaves the minute
        view.update([process(1, 0.0)], 5.0 * step)
    assert sparkline(view._history[(1, 1001)], 90.0, SPARK_UNICODE) == "▅▆▆▇██      "
    assert len(view._history[(1, 1001)]) == 12  # what is older than a minute is let go


def test_sparkline_weights_partial_cells_and_falls_back_to_ascii() -> None:
    # 2 s samples: 1000 bytes/s for the first 3 s of a 5 s cell, 0 after; 500 in the last cell
    samples = [(0.0, 3.0, 1000.0), (3.0, 5.0, 0.0), (55.0, 60.0, 500.0)]
    assert sparkline(samples, 60.0, SPARK_UNICODE) == "█" + " " * 10 + "▇"
    assert sparkline(samples, 60.0, SPARK_ASCII) == "#" + " " * 10 + "*"
    assert sparkline([], 60.0, SPARK_ASCII) == " " * 12
    assert sparkline([(0.0, 60.0, 0.0)], 60.0, SPARK_UNICODE) == " " * 12
    assert sparkline([(-100.0, -1.0, 9.0)], 60.0, SPARK_UNICODE) == " " * 12  # older than a minute


def test_utf8_locale() -> None:
    assert utf8_locale({"LANG": "en_US.UTF-8"}) and utf8_locale({"LANG": "C.utf8"})
    assert utf8_locale({"LC_ALL": "de_DE.UTF-8@euro", "LANG": "C"})
    assert not utf8_locale({"LC_ALL": "C", "LANG": "en_US.UTF-8"})  # LC_ALL wins
    assert not utf8_locale({"LC_CTYPE": "POSIX", "LANG": "en_US.UTF-8"})
    assert not utf8_locale({"LANG": "en_US.ISO-8859-1"}) and not utf8_locale({})


# --------------------------------------------------------------------------- columns


ALICE = process(
    4242, 1_500_000, user="alice", cmdline="curl -o /dev/null http://192.0.2.1/big.iso",
    total_bytes=52_000_000, container="docker:" + "0123456789abcdef" * 4,
)  # fmt: skip
NOBODY_KNOWN = process(1, 0)  # no user, no command line known (yet)
HEADERS = [c.header for c in TOP_COLUMNS]
# Most important first (the reverse of the order they are dropped in).
IMPORTANCE = [c.header for c in sorted(TOP_COLUMNS, key=lambda c: c.importance)]


def table(width: int | None, rows: list[TaskCounts] | None = None) -> list[str]:
    view = TopView(SortKey.PID, 2.0)
    view.update(rows or [ALICE, NOBODY_KNOWN], 100.0)
    return view.table(view.shown or [], width)


def headers_of(line: str) -> tuple[list[str], int]:
    """(the column headers of a header line, the N of its +N marker or 0)."""
    words = line.replace("LAST MINUTE", "LAST_MINUTE").split()
    dropped = int(words.pop()[1:]) if words[-1].startswith("+") else 0
    return [w.replace("_", " ") for w in words], dropped


def test_user_and_command_line_columns() -> None:
    wide = table(None)
    assert wide[0].split() == [*HEADERS[:12], "LAST", "MINUTE", "CMDLINE"]
    assert wide[2].split()[:4] == ["1", "R", "-", "proc1"] and wide[2].endswith(" -")
    assert wide[1].split()[:4] == ["4242", "R", "alice", "proc4242"]
    assert wide[1].endswith(" curl -o /dev/null http://192.0.2.1/big.iso")
    # no row with a command line (the table does not carry them yet): no such column
    assert table(None, [NOBODY_KNOWN])[0].split()[-1] == "MINUTE"


@pytest.mark.parametrize("width", range(12, 200))
def test_columns_that_do_not_fit_are_dropped_whole_least_important_first(width: int) -> None:
    lines = table(width)
    assert max(len(line) for line in lines) <= width
    kept, dropped = headers_of(lines[0])
    assert kept == [h for h in HEADERS if h in kept]  # whole headers, in display order
    assert len(kept) + dropped == len(HEADERS)
    assert set(kept) == set(IMPORTANCE[: len(kept)])  # the least important went first
    # cells are whole: checked where a text cannot be mistaken for another column's
    row = lines[1]
    for header, text in (("SENT/s", "1.43 MiB"), ("TOTAL", "49.6 MiB"), ("USER", "alice")):
        assert (header in kept) == (f" {text}" in row), (header, row)
    if "CMDLINE" in kept:
        shown = row[row.index(" curl") + 1 :]
        whole = "curl -o /dev/null http://192.0.2.1/big.iso"
        assert shown == whole or (whole.startswith(shown[:-1]) and shown.endswith("~")), shown
        assert len(shown) >= 20


def test_a_frame_fits_any_terminal_height() -> None:
    rows = [process(pid, pid * 10.0) for pid in range(1, 50)]
    for height in (3, 6, 10, 24):
        frame = top_frame(rows, SortKey.BYTES, 2.0, 100.0, (80, height))
        assert len(frame) <= max(height - 1, 6), height
    assert len(top_frame(rows, SortKey.BYTES, 2.0, 100.0, None, TopStyle())) == 3 + 1 + 49


# --------------------------------------------------------------------------- colour


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert colour_wanted({}, terminal=True)
    assert colour_wanted({"NO_COLOR": ""}, terminal=True)  # set but empty: no-color.org
    assert not colour_wanted({"NO_COLOR": "1"}, terminal=True)
    assert not colour_wanted({}, terminal=False)
    assert not colour_wanted({"TERM": "dumb"}, terminal=True)


def test_sent_and_received_cells_are_coloured_and_finished_rows_faint() -> None:
    rows = [process(1, 1024), process(2, 0, Kind.EXITED, total_bytes=5)]
    view = TopView(SortKey.PID, 2.0, TopStyle(colour=True))
    view.update([process(1, 1024), process(2, 0)], 98.0)  # 2 seen running, then finished
    view.update(rows, 100.0)
    lines = view.table(view.shown or [], 80)
    assert lines[0].startswith("PID S USER COMMAND")  # headers are never coloured
    assert "\x1b[33m1.00 KiB\x1b[0m \x1b[36m   0 B\x1b[0m" in lines[1]
    assert lines[2].startswith("\x1b[2m  2 X -") and lines[2].endswith("\x1b[0m")
    assert "\x1b[0m\x1b[2m \x1b[36m" in lines[2]  # faint again after each coloured cell
    plain = TopView(SortKey.PID, 2.0)
    plain.update([process(1, 1024), process(2, 0)], 98.0)
    plain.update(rows, 100.0)
    assert not any("\x1b" in line for line in plain.frame((80, 24)))
    stripped = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    assert stripped[1] == plain.table(plain.shown or [], 80)[1]


# --------------------------------------------------------------------------- on a terminal


class Finishing:
    """A table where nginx sends 10 kB every 100 ms and curl (pid 300) sends, then finishes."""

    def __init__(self, run_dir: Path, finish_step: int = 8) -> None:
        self.writer = TableWriter(table_path(str(run_dir)), 8, 100)
        self.finish_step = finish_step
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.publish(0)
        self.thread.start()

    def publish(self, step: int) -> None:
        nginx = NGINX._replace(counters=(10 * step, 10_000 * step, 0, 0, *ZERO))
        sent = min(step, self.finish_step) * 1000
        kind = Kind.EXITED if step >= self.finish_step else Kind.PROCESS
        curl = TaskRow(kind, 300, 300, 3000, "curl", (1, sent, 0, 0, *ZERO), 0.0)
        self.writer.publish([nginx, curl], {})

    def run(self) -> None:
        step = 0
        while not self.stop.wait(0.1) and step < 1000:
            step += 1
            self.publish(step)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.writer.close()


SGR_COLOUR = re.compile(rb"\x1b\[(33|36|2|0)m")


def test_on_a_terminal_keys_colour_bits_and_a_finished_row_that_leaves(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path, finish_step=30)  # curl finishes after 3 s
    try:
        code, seen, _, _ = run_top_in_pty(
            tmp_path,
            [
                (b"300 R -    curl", b""),
                (b"300 X -    curl", b"m"),
                (b"kbit/s", b""),
                (TOP_FINISHED_KEEP_S + 1.5, b"q"),
            ],
        )
    finally:
        publisher.close()
    assert code == 0
    assert b"m:bits q:quit\x1b[K" in seen and b"m:bytes q:quit\x1b[K" in seen  # the key help
    assert SGR_COLOUR.search(seen) and b"\x1b[2m300 X -    curl" in seen  # finished: faint
    assert re.search(rb"\x1b\[33m *[0-9.]+ [kM]bit\x1b\[0m", seen)  # nginx's 800 kbit/s
    assert "▁▂▃▄▅▆▇█"[-1].encode() in seen  # unicode sparkline (LANG=C.UTF-8)
    frames = seen.split(b"\x1b[Hnetatop top ")
    marked = [index for index, frame in enumerate(frames) if b"300 X" in frame]
    assert marked and marked[-1] < len(frames) - 3
    assert all(b"curl" not in frame for frame in frames[marked[-1] + 1 :])
    assert re.search(rb"\r\n100 R root +nginx ", frames[-1])


def test_no_color_and_a_c_locale_on_a_terminal(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path)
    try:
        code, seen, _, _ = run_top_in_pty(
            tmp_path, [(b" nginx ", b""), (1.0, b"q")], NO_COLOR="1", LC_ALL="C"
        )
    finally:
        publisher.close()
    assert code == 0
    assert not SGR_COLOUR.search(seen)  # the screen's own sequences only
    assert seen.startswith(b"\x1b[?1049h") and b"q:quit" in seen
    assert not re.search(rb"[\x80-\xff]", seen)  # ASCII sparkline
    assert re.search(rb"\r\n100 R root +nginx .* [.,:=+*#-]+\x1b\[K", seen)


def test_a_wide_terminal_drops_no_column_and_a_narrow_one_says_how_many(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path)
    try:
        _, wide, _, _ = run_top_in_pty(tmp_path, [(b"100 R", b"q")], columns=160)
        _, narrow, _, _ = run_top_in_pty(tmp_path, [(b"100 R", b"q")], columns=50)
    finally:
        publisher.close()
    assert re.search(
        rb"\r\nPID S USER COMMAND .* TCP/s +UDP/s +TOTAL LAST MINUTE +CMDLINE\x1b\[K", wide
    )
    assert re.search(rb"\r\nPID S COMMAND +SENT/s +RCVD/s +TOTAL \+7\x1b\[K", narrow)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", narrow)
    assert max(len(line) for line in text.split(b"\r\n")) <= 50


def test_piped_top_has_no_colour_no_key_help_and_bits_on_request(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path)
    try:
        result = invoke(
            "top", "--run-dir", str(tmp_path), "--iterations", "2", "--interval", "0.3", "--bits",
            NO_COLOR="",
        )  # fmt: skip
    finally:
        publisher.close()
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "q:quit" not in result.stdout
    frames = re.split(r"\n\n(?=netatop top )", result.stdout.rstrip("\n"))
    assert len(frames) == 2 and all("rates in bits" in frame for frame in frames)
    assert re.search(r"\n100 R root +nginx +[0-9.]+ [kM]bit ", result.stdout)


def test_the_manual_page_names_the_order_columns_are_left_out_in() -> None:
    from test_cli import MAN_PAGE

    page = " ".join(MAN_PAGE.read_text(encoding="utf-8").replace("\\-", "-").split())
    order = ", ".join(reversed(IMPORTANCE[1:]))
    assert f"left out whole, never cut, in this order: {order} (PID is always shown)" in page


def test_key_help_leaves_out_whole_keys_and_keeps_quit() -> None:
    assert keys_line(False, None).endswith("u:udp n:pid m:bits g:group q:quit")
    assert keys_line(False, 30) == "b:bytes p:pkts s:sent q:quit"
    assert keys_line(True, 12) == "b:bytes q:quit"[:12]
    title = top_frame(None, SortKey.SENT, 2.0, time.time(), (40, 24))[0]
    assert title.endswith("every 2 s") and len(title) <= 40


def test_help_and_manual_give_the_time_a_finished_row_stays() -> None:
    from test_cli import MAN_PAGE

    page = " ".join(MAN_PAGE.read_text(encoding="utf-8").split())
    assert f"and then 0, for {TOP_FINISHED_KEEP_S:g} seconds after top first saw it" in page
    help_text = " ".join(invoke("top", "--help").stdout.split())
    assert f"X finished: the row leaves {TOP_FINISHED_KEEP_S:g} s later" in help_text


def test_cmdline_forces_the_command_line_column_after_command() -> None:
    view = TopView(SortKey.PID, 2.0, cmdline=True)
    view.update([ALICE, NOBODY_KNOWN], 100.0)
    narrow = view.table(view.shown or [], 45)
    kept, dropped = headers_of(narrow[0])
    assert kept == ["PID", "S", "COMMAND", "CMDLINE"] and dropped == 10
    assert narrow[1] == "4242 R proc4242 curl -o /dev/null http:/~"  # cut to 25, marked
    assert headers_of(view.table(view.shown or [], 60)[0])[0] == [
        "PID", "S", "COMMAND", "SENT/s", "RCVD/s", "CMDLINE",
    ]  # fmt: skip
    # shown even when no row has a command line yet
    view.update([NOBODY_KNOWN], 102.0)
    lines = view.table(view.shown or [], 200)
    assert lines[0].split()[-1] == "CMDLINE" and lines[1].endswith(" -")
    unforced = TopView(SortKey.PID, 2.0)
    unforced.update([ALICE, NOBODY_KNOWN], 100.0)
    assert "CMDLINE" not in headers_of(unforced.table(unforced.shown or [], 60)[0])[0]


def test_cmdline_on_a_terminal(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path, finish_step=100)  # curl still runs in the first frame
    try:
        code, seen, _, _ = run_top_in_pty(tmp_path, [(b"100 R", b"q")], "--cmdline", columns=60)
    finally:
        publisher.close()
    assert code == 0
    # the column is kept before the rates; curl has no command line in the table: '-'
    assert re.search(rb"\r\nPID S COMMAND +SENT/s +RCVD/s +(TOTAL +)?CMDLINE +\+\d+\x1b\[K", seen)
    assert re.search(rb"\r\n100 R nginx .* nginx: master process", seen)
    assert re.search(rb"\r\n300 R curl .* -\x1b\[K", seen)


# --------------------------------------------------------------------------- --by, --json, --csv


def placed(pid: int, sent_per_s: float, unit: str, container: str, **extra: Any) -> TaskCounts:
    cgroup = f"/system.slice/{unit}"
    return process(pid, sent_per_s, unit=unit, container=container or None, cgroup=cgroup, **extra)


def test_grouped_frame_sums_the_processes_of_each_group() -> None:
    from netatopd.cli.groups import GroupBy
    from netatopd.cli.top import grouping

    view = TopView(SortKey.BYTES, 2.0)
    box = "docker:" + "b" * 64
    shown = [
        placed(1, 1000, "a.service", "", total_bytes=5000),
        placed(2, 3000, "a.service", "", total_bytes=7000),
        placed(3, 500, "docker-b.scope", box, kind=Kind.EXITED, total_bytes=900),
    ]
    view.update(shown, 100.0)
    grouping(view, GroupBy.CONTAINER)
    frame = view.frame(None)
    assert frame[0].endswith("  by container")
    assert frame[1].endswith(", 3 processes, 2 groups, 1 finished")
    header, *lines = frame[3:]
    assert header.split()[:4] == ["PROCS", "CONTAINER", "SENT/s", "RCVD/s"]
    assert not {"S", "USER", "LAST", "CMDLINE"} & set(header.split())
    cells = [line.split() for line in lines]
    assert [c[:2] for c in cells] == [["2", "(no"], ["1", box]]  # 4000 B/s first, then 500 B/s
    assert cells[0][3:5] == ["3.91", "KiB"] and cells[0][-2:] == ["11.7", "KiB"]  # TOTAL summed
    grouping(view, None)
    assert view.frame(None)[3].split()[:4] == ["PID", "S", "USER", "COMMAND"]


def test_the_key_g_cycles_the_groupings() -> None:
    from netatopd.cli.format import OutputFormat
    from netatopd.cli.top import TopOutput, TopScreen, _apply_keys

    view = TopView(SortKey.BYTES, 2.0)
    out = TopOutput(TopScreen(io.StringIO(), io.StringIO()), OutputFormat.TABLE, None)
    seen = []
    for _ in range(5):
        assert _apply_keys(view, "g", out)
        seen.append((out.by and out.by.value, view.group_name, view.group is not None))
    assert seen == [
        ("command", "command", True),
        ("user", "user", True),
        ("unit", "unit", True),
        ("container", "container", True),
        (None, "", False),
    ]


def test_json_and_csv_frames_carry_each_rows_identity() -> None:
    from netatopd.cli.format import OutputFormat
    from netatopd.cli.groups import GroupBy
    from netatopd.cli.top import TOP_ROW_FIELDS, machine_frame

    view = TopView(SortKey.BYTES, 2.0)
    box = "docker:" + "b" * 64
    view.update(
        [
            placed(1, 1000, "a.service", "", uid=0, user="root", cmdline="a --x"),
            placed(2, 3000, "docker-b.scope", box, total_bytes=6000),
        ],
        100.0,
    )
    frame = json.loads(machine_frame(view, None, OutputFormat.JSON, first=True))
    assert (frame["time"], frame["interval_s"]) == (100.0, 2.0)
    assert [r["pid"] for r in frame["rows"]] == [2, 1]  # largest first
    assert set(frame["rows"][0]) == set(TOP_ROW_FIELDS)
    assert {k: frame["rows"][1][k] for k in ("uid", "user", "cmdline", "unit", "container")} == {
        "uid": 0, "user": "root", "cmdline": "a --x", "unit": "a.service", "container": None,
    }  # fmt: skip
    assert (frame["rows"][0]["container"], frame["rows"][0]["tcpsndbytes"]) == (box, 3000)
    grouped = json.loads(machine_frame(view, GroupBy.UNIT, OutputFormat.JSON, first=True))
    assert [(g["unit"], g["processes"], g["tcpsndbytes"]) for g in grouped["rows"]] == [
        ("docker-b.scope", 1, 3000),
        ("a.service", 1, 1000),
    ]
    first = machine_frame(view, None, OutputFormat.CSV, first=True).splitlines()
    later = machine_frame(view, None, OutputFormat.CSV, first=False).splitlines()
    assert first[0].split(",") == ["time", *TOP_ROW_FIELDS] and first[1:] == later
    rows = list(csv.DictReader(io.StringIO("\n".join(first))))
    assert [(r["time"], r["pid"], r["unit"], r["container"]) for r in rows] == [
        ("100.0", "2", "docker-b.scope", box),
        ("100.0", "1", "a.service", ""),
    ]


def test_piped_top_json_prints_a_line_a_frame(tmp_path: Path) -> None:
    publisher = Finishing(tmp_path)
    try:
        result = invoke(
            "top", "--run-dir", str(tmp_path), "--iterations", "2", "--interval", "0.3", "--json"
        )
        grouped = invoke(
            "top", "--run-dir", str(tmp_path), "--iterations", "1", "--interval", "0.3",
            "--csv", "--by", "unit",
        )  # fmt: skip
    finally:
        publisher.close()
    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(frames) == 2 and frames[0]["time"] < frames[1]["time"]
    nginx = next(r for r in frames[1]["rows"] if r["pid"] == 100)
    assert (nginx["unit"], nginx["user"], nginx["kind"]) == ("nginx.service", "root", "process")
    assert nginx["tcpsndbytes"] > 0
    assert grouped.exit_code == 0, grouped.output
    header, *lines = grouped.stdout.splitlines()
    assert header.startswith("time,unit,processes,running,")
    assert any(line.split(",")[1] == "nginx.service" for line in lines)


def test_the_container_column_is_there_only_when_a_row_runs_in_a_container() -> None:
    """The id cut to 12 hex digits as docker ps shows it; "-" for a process in none."""
    lines = table(None)
    header = lines[0].split()
    assert header[header.index("COMMAND") + 1] == "CONTAINER"
    assert lines[1].split()[4] == "docker:0123456789ab"
    assert lines[2].split()[4] == "-"
    assert "CONTAINER" not in table(None, [NOBODY_KNOWN])[0].split()
    assert short_container("pod:" + "1" * 36) == "pod:111111111111"
    assert short_container(None) == "-"
