"""The shared-memory table (netatopd/table.py): layout, round trip, seqlock, staleness.

Ground truth: the rows and status counters each test publishes itself, the
byte offsets printed in man/netatop-table.5, and C's natural alignment rules.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from netatopd import table
from netatopd.protocol import COUNTER_NAMES
from netatopd.table import (
    STATUS_FIELDS,
    TABLE_HEADER,
    TABLE_HEADER_MEMBERS,
    TABLE_ROW,
    TABLE_ROW_MEMBERS,
    Snapshot,
    TableError,
    TableMissing,
    TableReader,
    TableStale,
    TableWriter,
    open_table,
)
from netatopd.tasks import Kind, TaskRow

MAN_PAGE = Path(__file__).resolve().parents[2] / "man" / "netatop-table.5"

# Offsets and sizes as printed in man/netatop-table.5 (and as a C compiler lays
# out the structs given there).
HEADER_LAYOUT = {
    "magic": (0, 8),
    "layout_version": (8, 4),
    "header_size": (12, 4),
    "row_size": (16, 4),
    "capacity": (20, 4),
    "generation": (24, 8),
    "row_count": (32, 4),
    "status_count": (36, 4),
    "refused_rows": (40, 8),
    "daemon_pid": (48, 4),
    "publish_interval_ms": (52, 4),
    "daemon_start_ticks": (56, 8),
    "boot_id": (64, 16),
    "created_ns": (80, 8),
    "update_ns": (88, 8),
    "refused_last": (96, 4),
    "text_size": (100, 4),
    "text_used": (104, 4),
    "text_refused": (108, 4),
    "status": (128, 512),
}
ROW_LAYOUT = {
    "kind": (0, 1),
    "id": (4, 4),
    "tgid": (8, 4),
    "uid": (12, 4),
    "btime": (16, 8),
    "command": (24, 16),
    "counters": (40, 64),
    "last_activity_ns": (104, 8),
    "cmdline": (112, 4),
    "unit": (116, 4),
    "container": (120, 4),
    "cgroup": (124, 4),
}
HEADER_SIZE = 640
ROW_SIZE = 144
TEXT_PER_ROW = 128


def member_layout(fmt: str, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(offset, size) of each non-padding member of a '<' struct format, by name.

    A repeated code ("8Q", "64Q") is one array member; "16s" is one char array.
    """
    assert fmt[0] == "<"
    layout = {}
    offset = 0
    members = iter(names)
    for count_text, code in re.findall(r"(\d*)([a-zA-Z])", fmt[1:]):
        size = struct.calcsize("<" + count_text + code)
        if code != "x":
            layout[next(members)] = (offset, size)
        offset += size
    assert next(members, None) is None, "more names than members"
    return layout


def man_page_layout(struct_name: str) -> dict[str, tuple[int, int]]:
    """The offset table the man page prints after the line naming struct_name."""
    text = MAN_PAGE.read_text(encoding="utf-8")
    start = text.index(f".SS {struct_name} layout")
    block = text[start : text.index(".fi", start)]
    layout = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(\d+)\s+\S+\s+([a-z_]+)(?:\[\d+\])?\s", line + " ")
        if match and not match.group(3).startswith("pad") and match.group(3) != "reserved":
            layout[match.group(3)] = (int(match.group(1)), int(match.group(2)))
    return layout


def make_row(task_id: int, value: int, kind: Kind = Kind.PROCESS, command: str = "cmd") -> TaskRow:
    return TaskRow(kind, task_id, task_id, 1_700_000_000, command, (value,) * 8, 0.0)


KNOWN_ROWS = [
    TaskRow(
        Kind.PROCESS,
        4242,
        4242,
        1_700_000_123,
        "curl",
        (1, 2, 3, 4, 5, 6, 7, 2**64 - 1),
        1_700_000_200.25,
        1000,
        "curl -s http://192.0.2.1/",
        "user@1000.service",
        "",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
    ),
    TaskRow(
        Kind.THREAD,
        4243,
        4242,
        1_700_000_123,
        "worker thread",
        (10, 20, 0, 0, 0, 0, 0, 0),
        0.0,
        2**32 - 2,
        "w\u00e9rker --flag",
        "nginx.service",
        "docker:" + "ab" * 32,
        "/system.slice/docker-" + "ab" * 32 + ".scope",
    ),
    TaskRow(
        Kind.EXITED, 17, 17, 1_600_000_000, "fifteen-chars-x", (0, 0, 0, 0, 9, 900, 8, 800), 1.5
    ),
]
KNOWN_STATUS = {"tcp_sent": 11, "udp_received": 22, "capture_dropped": 33, "resolver_misses": 2**63}


# ---------------------------------------------------------------- layout


def test_struct_sizes_match_man_page() -> None:
    assert TABLE_HEADER.size == HEADER_SIZE
    assert TABLE_ROW.size == ROW_SIZE
    assert table.GENERATION_OFFSET == HEADER_LAYOUT["generation"][0]
    assert table.VARIABLE_PART_OFFSET == HEADER_LAYOUT["row_count"][0]
    assert table.ROW_ID_OFFSET == ROW_LAYOUT["id"][0]
    assert HEADER_LAYOUT["status"][1] == 8 * table.STATUS_SLOTS
    assert ROW_LAYOUT["counters"][1] == 8 * len(COUNTER_NAMES)


def test_struct_offsets_match_man_page() -> None:
    assert member_layout(TABLE_HEADER.format, TABLE_HEADER_MEMBERS) == HEADER_LAYOUT
    assert member_layout(TABLE_ROW.format, TABLE_ROW_MEMBERS) == ROW_LAYOUT
    # The page's own tables say the same as the numbers above.
    assert man_page_layout("Header") == HEADER_LAYOUT
    assert man_page_layout("Row") == ROW_LAYOUT


def test_members_are_naturally_aligned() -> None:
    """So the C declarations in the man page need no packing attribute."""
    element_size = {"magic": 1, "boot_id": 1, "command": 1, "status": 8, "counters": 8}
    for layout in (HEADER_LAYOUT, ROW_LAYOUT):
        for name, (offset, size) in layout.items():
            assert offset % element_size.get(name, size) == 0, name
    assert HEADER_SIZE % 8 == 0 and ROW_SIZE % 8 == 0


def test_man_page_lists_status_fields_in_order() -> None:
    text = MAN_PAGE.read_text(encoding="utf-8")
    listed = re.findall(r"^\.IP \"status\[(\d+)\]\"\n\\fB(\w+)\\fR", text, re.MULTILINE)
    assert [(int(index), name) for index, name in listed] == list(enumerate(STATUS_FIELDS))


def test_header_bytes_after_creation(tmp_path: Path) -> None:
    path = str(tmp_path / "table")
    writer = TableWriter(path, capacity_rows=3, publish_interval_ms=250)
    try:
        data = Path(path).read_bytes()
        assert len(data) == HEADER_SIZE + 3 * ROW_SIZE + 3 * TEXT_PER_ROW
        assert data[0:8] == b"NETATOPT"
        fields = struct.unpack_from("<IIIIQIIQiI", data, 8)
        # version, header size, row size, capacity, generation, rows, status count,
        # refused, pid, interval
        assert fields == (2, 640, 144, 3, 0, 0, len(STATUS_FIELDS), 0, os.getpid(), 250)
        # text size, text used (the empty string at offset 0), strings refused
        assert struct.unpack_from("<III", data, 100) == (3 * TEXT_PER_ROW, 1, 0)
        assert os.stat(path).st_mode & 0o777 == 0o600  # root's only by default
        assert [name for name in os.listdir(tmp_path)] == ["table"]
    finally:
        writer.close()
    assert not os.path.exists(path)


# ---------------------------------------------------------------- round trip


def test_round_trip(tmp_path: Path) -> None:
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=10, publish_interval_ms=100)
    try:
        assert writer.publish(KNOWN_ROWS, KNOWN_STATUS) == 3
        with open_table(str(tmp_path)) as reader:
            snap = reader.snapshot()
            assert snap.rows == KNOWN_ROWS
            assert [type(row.kind) for row in snap.rows] == [Kind, Kind, Kind]
            expected_status = dict.fromkeys(STATUS_FIELDS, 0) | KNOWN_STATUS
            assert snap.status == expected_status
            assert list(snap.status) == list(STATUS_FIELDS)
            assert snap.daemon_pid == os.getpid()
            assert snap.generation == 2
            assert snap.capacity == 10
            assert snap.refused == 0 and snap.refused_last == 0
            assert reader.publish_interval_ms == 100
            assert abs(snap.updated_s - time.time()) < 60

            assert writer.publish(KNOWN_ROWS[:1], {}) == 1
            snap = reader.snapshot()
            assert snap.rows == KNOWN_ROWS[:1]
            assert snap.status == dict.fromkeys(STATUS_FIELDS, 0)
            assert snap.generation == 4
    finally:
        writer.close()


def test_last_activity_float_round_trip(tmp_path: Path) -> None:
    """Epoch floats survive the trip through nanoseconds unchanged."""
    times = [1_712_345_678.123456, 1_700_000_000.999999, 1_234_567_890.0000002, 0.5, 1e-9]
    rows = [
        TaskRow(Kind.PROCESS, index + 1, index + 1, 1, "t", (0,) * 8, value)
        for index, value in enumerate(times)
    ]
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=8, publish_interval_ms=100)
    try:
        writer.publish(rows, {})
        raw = Path(tmp_path / "table").read_bytes()
        # the double nearest 1712345678.123456 is 1712345678.12345600128...: 001 ns
        assert struct.unpack_from("<Q", raw, HEADER_SIZE + 104) == (1_712_345_678_123_456_001,)
        with open_table(str(tmp_path)) as reader:
            assert [row.last_activity_s for row in reader.snapshot().rows] == times
    finally:
        writer.close()


def test_command_is_cut_to_15_bytes(tmp_path: Path) -> None:
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=1, publish_interval_ms=100)
    try:
        writer.publish([make_row(5, 1, command="a-very-long-command-name")], {})
        raw = Path(tmp_path / "table").read_bytes()[HEADER_SIZE + 24 : HEADER_SIZE + 40]
        assert raw == b"a-very-long-com\0"
        with open_table(str(tmp_path)) as reader:
            assert reader.snapshot().rows[0].command == "a-very-long-com"
    finally:
        writer.close()


def test_row_bytes(tmp_path: Path) -> None:
    """One row, byte for byte, against the man page offsets."""
    writer = TableWriter(
        str(tmp_path / "table"), capacity_rows=1, publish_interval_ms=100, text_size_bytes=512
    )
    try:
        writer.publish(KNOWN_ROWS[1:2], {})
        row = Path(tmp_path / "table").read_bytes()[HEADER_SIZE : HEADER_SIZE + ROW_SIZE]
        assert row[0] == 2  # Kind.THREAD
        assert row[1:4] == bytes(3)
        assert struct.unpack_from("<iiI", row, 4) == (4243, 4242, 2**32 - 2)
        assert struct.unpack_from("<Q", row, 16) == (1_700_000_123,)
        assert row[24:40] == b"worker thread\0\0\0"
        assert struct.unpack_from("<8Q", row, 40) == (10, 20, 0, 0, 0, 0, 0, 0)
        assert struct.unpack_from("<Q", row, 104) == (0,)
        offsets = struct.unpack_from("<4I", row, 112)
        assert row[128:144] == bytes(16)
        data = Path(tmp_path / "table").read_bytes()
        text = data[HEADER_SIZE + ROW_SIZE :]
        assert struct.unpack_from("<II", data, 100) == (
            512,
            1 + sum(len(value.encode()) + 1 for value in KNOWN_ROWS[1][8:]),
        )
        assert text[0] == 0  # offset 0: the empty string
        strings = [text[offset : text.index(b"\0", offset)].decode() for offset in offsets]
        assert strings == list(KNOWN_ROWS[1][8:])
    finally:
        writer.close()


def test_lookup(tmp_path: Path) -> None:
    rows = [
        make_row(300, 3, Kind.EXITED),
        make_row(100, 1, Kind.THREAD),
        make_row(100, 2, Kind.PROCESS),
        make_row(200, 4, Kind.THREAD),
    ]
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=8, publish_interval_ms=100)
    try:
        writer.publish(rows, {})
        with open_table(str(tmp_path)) as reader:
            assert reader.lookup(100) == rows[2]  # the process wins over its main thread
            assert reader.lookup(100, Kind.THREAD) == rows[1]
            assert reader.lookup(200) == rows[3]
            assert reader.lookup(300) == rows[0]
            assert reader.lookup(300, Kind.PROCESS) is None
            assert reader.lookup(999) is None
    finally:
        writer.close()


def test_bad_values_leave_table_untouched(tmp_path: Path) -> None:
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=4, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS, {})
        with pytest.raises(ValueError, match="unknown status counter 'nope'"):
            writer.publish(KNOWN_ROWS, {"nope": 1})
        with pytest.raises(ValueError, match="task 7"):
            writer.publish([make_row(7, -1)], {})
        with open_table(str(tmp_path)) as reader:
            snap = reader.snapshot()
            assert snap.rows == KNOWN_ROWS
            assert snap.generation == 2
    finally:
        writer.close()


# ---------------------------------------------------------------- capacity


def test_capacity_refuses_and_counts(tmp_path: Path) -> None:
    rows = [make_row(1000 + index, index) for index in range(7)]
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=5, publish_interval_ms=100)
    try:
        assert writer.publish(rows, {}) == 5
        with open_table(str(tmp_path)) as reader:
            snap = reader.snapshot()
            assert snap.rows == rows[:5]
            assert (snap.refused, snap.refused_last) == (2, 2)
            assert writer.publish(rows[:6], {}) == 5
            snap = reader.snapshot()
            assert (len(snap.rows), snap.refused, snap.refused_last) == (5, 3, 1)
            assert writer.publish(rows[:2], {}) == 2
            snap = reader.snapshot()
            assert (snap.rows, snap.refused, snap.refused_last) == (rows[:2], 3, 0)
        assert os.path.getsize(tmp_path / "table") == HEADER_SIZE + 5 * ROW_SIZE + 5 * TEXT_PER_ROW
    finally:
        writer.close()


# ---------------------------------------------------------------- seqlock

SEQLOCK_ROWS = 300
SEQLOCK_PUBLISHES = 3000
SEQLOCK_MAX_SNAPSHOTS = 20_000


def _hammer(path: str, ready: multiprocessing.synchronize.Barrier) -> None:
    writer = TableWriter(path, capacity_rows=SEQLOCK_ROWS, publish_interval_ms=1)
    try:
        writer.publish([make_row(index + 1, 0) for index in range(SEQLOCK_ROWS)], {"tasks": 0})
        ready.wait(timeout=30)
        for value in range(1, SEQLOCK_PUBLISHES + 1):
            rows = [make_row(index + 1, value) for index in range(SEQLOCK_ROWS)]
            writer.publish(rows, {"tasks": value, "flows": value})
    finally:
        writer.close(unlink=False)


def _watch(
    path: str,
    ready: multiprocessing.synchronize.Barrier,
    writer_done: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[tuple[int, int, int, int]],
) -> None:
    """Snapshot until the writer is done; report (snapshots, torn rows, torn snapshots, gens)."""
    ready.wait(timeout=30)
    reader = TableReader(path, retry_s=10.0)
    generations = set()
    torn_rows = torn_snapshots = snapshots = 0
    try:
        while snapshots < SEQLOCK_MAX_SNAPSHOTS and not writer_done.is_set():
            try:
                snap = reader.snapshot()
            except TableStale:
                break  # the writer finished between the check and the copy
            snapshots += 1
            generations.add(snap.generation)
            values = set()
            for row in snap.rows:
                if len(set(row.counters)) != 1:
                    torn_rows += 1
                values.add(row.counters[0])
            values.add(snap.status["tasks"])
            values.add(snap.status["flows"])
            if len(values) != 1 or len(snap.rows) != SEQLOCK_ROWS:
                torn_snapshots += 1
    finally:
        reader.close()
    results.put((snapshots, torn_rows, torn_snapshots, len(generations)))


def test_seqlock_readers_never_see_torn_rows(tmp_path: Path) -> None:
    """A writer hammers publishes (all counters equal to one rising value) while
    two reader processes snapshot: no reader may see a row or a snapshot mixed
    from two publishes, and the readers must have seen many generations."""
    context = multiprocessing.get_context("fork")
    path = str(tmp_path / "table")
    ready = context.Barrier(3)
    writer_done = context.Event()
    results: multiprocessing.Queue[tuple[int, int, int, int]] = context.Queue()
    readers = [
        context.Process(target=_watch, args=(path, ready, writer_done, results)) for _ in range(2)
    ]
    writer = context.Process(target=_hammer, args=(path, ready))
    writer.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    for reader in readers:
        reader.start()
    try:
        writer.join(timeout=120)
        writer_done.set()
        assert writer.exitcode == 0
        reports = [results.get(timeout=60) for _ in readers]
    finally:
        for process in (writer, *readers):
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    for snapshots, torn_rows, torn_snapshots, generations in reports:
        assert (torn_rows, torn_snapshots) == (0, 0)
        assert snapshots >= 20
        assert generations >= 20


def test_reader_gives_up_on_a_stuck_writer(tmp_path: Path) -> None:
    """Generation left odd by a live writer: TableError after retry_s, not a hang."""
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=2, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS[:2], {})
        with open(path, "r+b") as raw:
            raw.seek(24)
            raw.write(struct.pack("<Q", 5))
        with TableReader(str(path), retry_s=0.2) as reader:
            with pytest.raises(TableError, match="kept changing") as caught:
                reader.snapshot()
            assert not isinstance(caught.value, TableStale)
    finally:
        writer.close()


# ---------------------------------------------------------------- staleness and errors


def _publish_and_exit(path: str) -> None:
    writer = TableWriter(path, capacity_rows=4, publish_interval_ms=100)
    writer.publish(KNOWN_ROWS, KNOWN_STATUS)
    writer.close(unlink=False)


def _dead_writer_table(path: Path) -> int:
    """A table left by a writer process that has exited; returns its pid."""
    context = multiprocessing.get_context("fork")
    process = context.Process(target=_publish_and_exit, args=(str(path),))
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0 and process.pid is not None
    return process.pid


def test_stale_when_daemon_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "table"
    pid = _dead_writer_table(path)
    with TableReader(str(path)) as reader:
        assert reader.daemon_pid == pid
        with pytest.raises(
            TableStale, match=rf"pid {pid}\) is no longer running; last update "
        ) as caught:
            reader.snapshot()
        assert caught.value.daemon_pid == pid
        assert abs(caught.value.updated_s - time.time()) < 60
        with pytest.raises(TableStale):
            reader.lookup(4242)


def test_stale_when_dead_writer_left_generation_odd(tmp_path: Path) -> None:
    path = tmp_path / "table"
    _dead_writer_table(path)
    with open(path, "r+b") as raw:
        raw.seek(24)
        raw.write(struct.pack("<Q", 3))
    with TableReader(str(path), retry_s=0.1) as reader, pytest.raises(TableStale):
        reader.snapshot()


def test_stale_when_pid_is_reused(tmp_path: Path) -> None:
    """Same pid, other start time (field 22 of /proc/PID/stat): another process."""
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100)
    try:
        with TableReader(str(path)) as reader:
            reader.snapshot()  # our own process: live
        with open(path, "r+b") as raw:
            raw.seek(56)
            (ticks,) = struct.unpack("<Q", raw.read(8))
            assert ticks > 0
            raw.seek(56)
            raw.write(struct.pack("<Q", ticks + 1))
        with TableReader(str(path)) as reader, pytest.raises(TableStale, match="no longer running"):
            reader.snapshot()
    finally:
        writer.close()


def test_stale_when_update_is_too_old(tmp_path: Path) -> None:
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=4, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS, {})
        with TableReader(str(path)) as reader:
            assert reader.snapshot(max_age_s=60).rows == KNOWN_ROWS
            ten_minutes_ago_ns = time.time_ns() - 600 * 10**9
            with open(path, "r+b") as raw:
                raw.seek(88)
                raw.write(struct.pack("<Q", ten_minutes_ago_ns))
            assert reader.snapshot().updated_s == ten_minutes_ago_ns / 10**9  # no limit asked
            with pytest.raises(
                TableStale, match=r"last update .*, 60\d\.\d s ago \(more than 60 s\)"
            ) as caught:
                reader.snapshot(max_age_s=60)
            assert caught.value.updated_s == ten_minutes_ago_ns / 10**9
            with pytest.raises(TableStale):
                reader.lookup(4242, max_age_s=60)
    finally:
        writer.close()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TableMissing, match="no table at .*is netatopd running"):
        open_table(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "shorter than the 640-byte header"),
        (b"NETATOPT" + bytes(100), "shorter than the 640-byte header"),
        (b"garbage!" * 200, "not a netatop table"),
        (b"NETATOPT" + struct.pack("<IIII", 3, 640, 144, 0) + bytes(640), "layout version 3"),
        (b"NETATOPT" + struct.pack("<IIII", 2, 640, 96, 0) + bytes(640), "rows of 96 bytes"),
        (b"NETATOPT" + struct.pack("<IIII", 2, 640, 144, 50) + bytes(640), "cut short"),
    ],
)
def test_garbage_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "table"
    path.write_bytes(content)
    with pytest.raises(TableError, match=message) as caught:
        TableReader(str(path))
    assert not isinstance(caught.value, TableMissing)
    assert caught.value.path == str(path)


def _version_one_file(path: Path, capacity: int = 2) -> None:
    """A table as netatopd wrote it before identity: layout version 1, 128-byte rows."""
    header = struct.pack("<8sIIIIQII", b"NETATOPT", 1, 640, 128, capacity, 2, 0, 0)
    path.write_bytes(header + bytes(640 - len(header)) + bytes(128 * capacity))


def test_a_table_of_the_previous_layout_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "table"
    _version_one_file(path)
    with pytest.raises(table.TableLayoutMismatch) as caught:
        TableReader(str(path))
    message = str(caught.value)
    assert caught.value.version == 1
    assert "layout version 1" in message and "reads version 2 only" in message
    assert "restart netatopd from the same release" in message


def test_a_reader_of_the_previous_layout_refuses_this_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other direction: the file says version 2, a version 1 reader says so and stops."""
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=2, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS[:1], {})
        assert struct.unpack_from("<I", (tmp_path / "table").read_bytes(), 8) == (2,)
        monkeypatch.setattr(table, "TABLE_LAYOUT_VERSION", 1)
        with pytest.raises(
            table.TableLayoutMismatch,
            match="has table layout version 2, and this reader reads version 1 only",
        ):
            open_table(str(tmp_path))
    finally:
        writer.close()


def test_strings_are_stored_once_a_publish(tmp_path: Path) -> None:
    """Threads and processes of one unit share their strings; the text area holds each once."""
    unit, cmdline = "web.service", "/usr/sbin/web --workers 4"
    rows = [
        TaskRow(Kind.PROCESS, 10, 10, 1, "web", (0,) * 8, 0.0, 33, cmdline, unit),
        TaskRow(Kind.THREAD, 11, 10, 1, "web", (0,) * 8, 0.0, 33, cmdline, unit),
        TaskRow(Kind.PROCESS, 20, 20, 1, "web", (0,) * 8, 0.0, 33, "/usr/sbin/web -x", unit),
    ]
    writer = TableWriter(str(tmp_path / "table"), capacity_rows=4, publish_interval_ms=100)
    try:
        writer.publish(rows, {})
        data = (tmp_path / "table").read_bytes()
        expected_used = 1 + len(cmdline) + 1 + len(unit) + 1 + len("/usr/sbin/web -x") + 1
        assert struct.unpack_from("<II", data, 104) == (expected_used, 0)
        with open_table(str(tmp_path)) as reader:
            assert reader.snapshot().rows == rows
            assert reader.lookup(11, Kind.THREAD) == rows[1]
    finally:
        writer.close()


def test_a_full_text_area_leaves_strings_out_and_counts_them(tmp_path: Path) -> None:
    rows = [
        TaskRow(Kind.PROCESS, n, n, 1, "p", (0,) * 8, 0.0, 0, f"command-{n:04d}")
        for n in range(1, 6)
    ]
    # 1 + 3 strings of 13 bytes (12 and a NUL): the fourth and fifth do not fit
    writer = TableWriter(
        str(tmp_path / "table"), capacity_rows=8, publish_interval_ms=100, text_size_bytes=40
    )
    try:
        writer.publish(rows, {})
        with open_table(str(tmp_path)) as reader:
            snap = reader.snapshot()
            assert [row.cmdline for row in snap.rows] == [
                "command-0001",
                "command-0002",
                "command-0003",
                "",
                "",
            ]
            assert snap.text_refused == 2
            assert writer.text_refused_last == 2
            assert [row.uid for row in snap.rows] == [0] * 5
    finally:
        writer.close()


def test_a_very_long_string_is_cut_with_a_marker(tmp_path: Path) -> None:
    long_cmdline = "x" * 5000
    writer = TableWriter(
        str(tmp_path / "table"), capacity_rows=1, publish_interval_ms=100, text_size_bytes=8192
    )
    try:
        writer.publish([TaskRow(Kind.PROCESS, 1, 1, 1, "x", (0,) * 8, 0.0, 0, long_cmdline)], {})
        with open_table(str(tmp_path)) as reader:
            cmdline = reader.snapshot().rows[0].cmdline
        assert cmdline.endswith(table.TEXT_CUT_MARKER)
        assert len(cmdline.encode()) == table.TEXT_MAX_BYTES
        assert cmdline[:-1] == "x" * (len(cmdline) - 1)
    finally:
        writer.close()


def test_a_string_offset_outside_the_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS[:1], {})
        with open(path, "r+b") as raw:
            raw.seek(HEADER_SIZE + 116)  # unit
            raw.write(struct.pack("<I", 100_000))
        with TableReader(str(path)) as reader, pytest.raises(TableError, match="offset 100000"):
            reader.snapshot()
    finally:
        writer.close()


def test_unknown_kind_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100)
    try:
        writer.publish(KNOWN_ROWS[:1], {})
        with open(path, "r+b") as raw:
            raw.seek(HEADER_SIZE)
            raw.write(b"\x09")
        with TableReader(str(path)) as reader, pytest.raises(TableError, match="unknown kind 9"):
            reader.snapshot()
    finally:
        writer.close()


# ---------------------------------------------------------------- file life cycle


def test_restart_replaces_file_and_old_reader_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "table"
    _dead_writer_table(path)
    old_reader = TableReader(str(path))
    try:
        writer = TableWriter(str(path), capacity_rows=2, publish_interval_ms=100)
        try:
            writer.publish(KNOWN_ROWS[:1], {})
            assert old_reader.replaced()
            with pytest.raises(TableStale):
                old_reader.snapshot()  # still the old file, not a SIGBUS
            with TableReader(str(path)) as new_reader:
                assert not new_reader.replaced()
                snap: Snapshot = new_reader.snapshot()
                assert snap.rows == KNOWN_ROWS[:1]
        finally:
            writer.close()
    finally:
        old_reader.close()
    assert not path.exists()


def test_close_keeps_a_newer_writers_file(tmp_path: Path) -> None:
    path = tmp_path / "table"
    first = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100)
    second = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100)
    first.close()
    assert path.exists()
    second.close()
    assert not path.exists()


def test_writer_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="cannot create the table"):
        TableWriter(str(tmp_path / "absent" / "table"), capacity_rows=1, publish_interval_ms=100)


def test_a_group_may_read_the_table(tmp_path: Path) -> None:
    gid = 65534 if os.geteuid() == 0 else os.getgid()
    path = tmp_path / "table"
    writer = TableWriter(str(path), capacity_rows=1, publish_interval_ms=100, group=gid)
    try:
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_gid) == (0o640, gid)
    finally:
        writer.close()


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.chmod(victim, 0o600)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    planted = run_dir / f".table.{os.getpid()}.new"
    planted.symlink_to(victim)
    # The symlink is ours (same uid), so it is taken for a leftover and removed, never
    # followed: the victim keeps its bytes and mode.
    writer = TableWriter(str(run_dir / "table"), capacity_rows=4, publish_interval_ms=100)
    try:
        assert victim.read_bytes() == b"keep me"
        assert os.stat(victim).st_mode & 0o777 == 0o600
        assert sorted(os.listdir(run_dir)) == ["table"]
    finally:
        writer.close()


def test_the_writer_works_through_a_checked_directory(tmp_path: Path) -> None:
    from netatopd.rundir import open_directory

    with open_directory(str(tmp_path / "run")) as run_dir:
        writer = TableWriter(
            run_dir.join("table"), capacity_rows=2, publish_interval_ms=100, directory=run_dir
        )
        renamed = tmp_path / "run" / "moved"
        os.rename(tmp_path / "run" / "table", renamed)
        (tmp_path / "run" / "table").write_bytes(b"someone else's")
        writer.close()  # removes only its own file, never the one now under the name
        assert (tmp_path / "run" / "table").read_bytes() == b"someone else's"
        assert run_dir.fd >= 0  # the directory is the caller's to close


def test_strings_keep_their_place_and_a_full_text_area_is_rebuilt(tmp_path: Path) -> None:
    """Strings of an earlier publish stay where they were; when new ones no longer fit,
    the text is rebuilt with the strings of the publish that needs them."""
    first = [TaskRow(Kind.PROCESS, 1, 1, 1, "p", (0,) * 8, 0.0, 0, "aaaaaaaaaa")]
    second = [
        TaskRow(Kind.PROCESS, 2, 2, 1, "p", (0,) * 8, 0.0, 0, "bbbbbbbbbb"),
        TaskRow(Kind.PROCESS, 3, 3, 1, "p", (0,) * 8, 0.0, 0, "cccccccccc"),
    ]
    # 1 + 11 + 11 + 11 = 34 bytes would be needed; 30 hold the empty string and two
    writer = TableWriter(
        str(tmp_path / "table"), capacity_rows=4, publish_interval_ms=100, text_size_bytes=30
    )
    try:
        writer.publish(first, {})
        writer.publish(first + second[:1], {})  # a appended: a stays at 1, b at 12
        data = (tmp_path / "table").read_bytes()
        row_offsets = [
            struct.unpack_from("<I", data, HEADER_SIZE + index * ROW_SIZE + 112)[0]
            for index in range(2)
        ]
        assert row_offsets == [1, 12]
        assert struct.unpack_from("<II", data, 104) == (23, 0)
        writer.publish(second, {})  # c does not fit beside a and b: rebuilt with b and c
        with open_table(str(tmp_path)) as reader:
            snap = reader.snapshot()
        assert snap.rows == second and snap.text_refused == 0
        data = (tmp_path / "table").read_bytes()
        assert struct.unpack_from("<II", data, 104) == (23, 0)
    finally:
        writer.close()


def test_the_c_declarations_of_the_man_page_compile_to_the_layout(tmp_path: Path) -> None:
    """The page's C structs, compiled, have the sizes and offsets of the code's structs."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to check the man page's declarations with")
    text = MAN_PAGE.read_text(encoding="utf-8")
    start = text.index(".SS C declarations")
    block = text[text.index(".ft CR\n", start) + 7 : text.index(".ft\n", start)]
    declarations = block.replace("\\-", "-").replace("\\e", "\\")
    members = [("netatop_table_header", name) for name in HEADER_LAYOUT] + [
        ("netatop_table_row", name) for name in ROW_LAYOUT
    ]
    prints = "\n".join(
        f'    printf("%s %s %zu %zu\\n", "{struct_name}", "{name}", '
        f"offsetof(struct {struct_name}, {name}), "
        f"sizeof(((struct {struct_name} *)0)->{name}));"
        for struct_name, name in members
    )
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n"
        + declarations
        + "\nint main(void)\n{\n"
        + '    printf("sizes %zu %zu\\n", sizeof(struct netatop_table_header), '
        "sizeof(struct netatop_table_row));\n"
        + prints
        + '\n    printf("version %d\\n", NETATOP_TABLE_VERSION);\n    return 0;\n}\n'
    )
    program = tmp_path / "layout"
    subprocess.run([compiler, "-Wall", "-Werror", "-o", str(program), str(source)], check=True)
    lines = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    got = lines.splitlines()
    assert got[0] == f"sizes {HEADER_SIZE} {ROW_SIZE}"
    assert got[-1] == f"version {table.TABLE_LAYOUT_VERSION}"
    layouts = {"netatop_table_header": HEADER_LAYOUT, "netatop_table_row": ROW_LAYOUT}
    for line in got[1:-1]:
        struct_name, name, offset, size = line.split()
        assert (int(offset), int(size)) == layouts[struct_name][name], line
