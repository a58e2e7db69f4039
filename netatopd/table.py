"""The shared-memory counter table: every task's counters and STATUS, for any reader.

The daemon, the only writer, publishes every task's counters, who it is (uid,
and its command line, unit, container and cgroup as offsets into a text area
after the rows) and the STATUS counters into one file in the run directory
(tmpfs), memory-mapped; any number of readers map the same file read-only and
never ask the daemon.  The layout (version 2) is C-compatible and documented
byte for byte in netatop-table(5); a reader refuses another version
(TableLayoutMismatch).

Consistency is a seqlock: the writer makes the header's generation odd, writes
the rows and the header's variable part, and makes the generation even again.
A reader copies what it needs and keeps the copy only when the generation was
even and unchanged around the copy.  The writer never waits for readers.

State owned: the writer's mapping, its packing buffers and the strings of its
text area with their offsets (kept from publish to publish), and for
``publish_tasks`` each task's packed rows until the task is touched (a
publish packs and writes only what changed); each reader's read-only
mapping.  Callers: the daemon's engine (TableWriter.publish_tasks, once per
publish interval), the netatop command (cli.sources, cli.top: TableReader,
open_table) and any other reader.  Whether the writer still runs is
procfs.same_process.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import struct
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

from .defaults import PROC_ROOT_DEFAULT, TABLE_FILE_NAME
from .procfs import ProcError, read_stat, same_process
from .protocol import COUNTER_NAMES
from .rundir import RunDirError, SafeDirectory
from .status import TABLE_FIELDS, TABLE_SLOTS
from .tasks import ExitedTask, Kind, TaskInfo, TaskRow, TaskTable

log = logging.getLogger(__name__)

TABLE_MODE = 0o600  # root's only by default; --table-group adds a group that may read
TABLE_MAGIC = b"NETATOPT"
TABLE_LAYOUT_VERSION = 2  # 2: uid and the text area (command line, unit, container, cgroup)

# Names of the STATUS counters, in the order of the header's status[] array: the
# fields of the STATUS registry that have a table slot (a slot is part of the layout).
STATUS_FIELDS: tuple[str, ...] = TABLE_FIELDS
STATUS_SLOTS = TABLE_SLOTS  # room reserved in the header, so adding a name keeps the layout
_STATUS_INDEX = {name: index for index, name in enumerate(STATUS_FIELDS)}

# struct netatop_table_header, little endian, 640 bytes, every member at its
# natural alignment:
#   char     magic[8];             "NETATOPT", no NUL
#   uint32_t layout_version;       TABLE_LAYOUT_VERSION
#   uint32_t header_size;          640: the rows start here
#   uint32_t row_size;             144
#   uint32_t capacity;             rows the file has room for
#   uint64_t generation;           seqlock: odd while the writer writes
#   uint32_t row_count;            rows in use
#   uint32_t status_count;         entries of status[] in use
#   uint64_t refused_rows;         rows left out past capacity, summed over publishes
#   int32_t  daemon_pid;           the writer
#   uint32_t publish_interval_ms;  the writer's publish interval
#   uint64_t daemon_start_ticks;   the writer's start, field 22 of /proc/PID/stat
#   uint8_t  boot_id[16];          /proc/sys/kernel/random/boot_id, raw bytes
#   uint64_t created_ns;           epoch ns when the writer created the file
#   uint64_t update_ns;            epoch ns of the last publish
#   uint32_t refused_last;         rows left out by the last publish
#   uint32_t text_size;            bytes of the text area, after the last row
#   uint32_t text_used;            bytes of the text area in use
#   uint32_t text_refused;         strings left out by the last publish (text area full)
#   uint8_t  reserved[16];         zero
#   uint64_t status[64];           STATUS_FIELDS order, unused entries zero
TABLE_HEADER = struct.Struct("<8sIIIIQIIQiIQ16sQQIIII16x64Q")
TABLE_HEADER_MEMBERS: tuple[str, ...] = (
    "magic",
    "layout_version",
    "header_size",
    "row_size",
    "capacity",
    "generation",
    "row_count",
    "status_count",
    "refused_rows",
    "daemon_pid",
    "publish_interval_ms",
    "daemon_start_ticks",
    "boot_id",
    "created_ns",
    "update_ns",
    "refused_last",
    "text_size",
    "text_used",
    "text_refused",
    "status",
)
# Offsets the code touches directly (checked against the struct by the tests).
GENERATION_OFFSET = 24
VARIABLE_PART_OFFSET = 32  # row_count .. status[63]: written as one slice under the seqlock
ROW_COUNT_OFFSET = 32
UPDATE_NS_OFFSET = 88
TEXT_USED_OFFSET = 104

# struct netatop_table_row, little endian, 144 bytes:
#   uint8_t  kind;                 Kind: 1 process, 2 thread, 3 exited process
#   uint8_t  pad1[3];
#   int32_t  id;                   tgid for a process, tid for a thread
#   int32_t  tgid;                 the process the task belongs to
#   uint32_t uid;                  real uid, UID_UNKNOWN if it could not be read
#   uint64_t btime;                process start, seconds since the epoch
#   char     command[16];          comm, NUL padded, at most 15 bytes
#   uint64_t counters[8];          struct taskcount order (COUNTER_NAMES)
#   uint64_t last_activity_ns;     epoch ns of the last packet counted, 0 if none
#   uint32_t cmdline;              offsets into the text area of NUL-terminated
#   uint32_t unit;                 UTF-8 strings; 0 (an empty string) when
#   uint32_t container;            unknown or none
#   uint32_t cgroup;
#   uint8_t  reserved[16];         zero
TABLE_ROW = struct.Struct("<B3xiiIQ16s8QQIIII16x")
TABLE_ROW_MEMBERS: tuple[str, ...] = (
    "kind",
    "id",
    "tgid",
    "uid",
    "btime",
    "command",
    "counters",
    "last_activity_ns",
    "cmdline",
    "unit",
    "container",
    "cgroup",
)
UID_UNKNOWN = 0xFFFFFFFF  # (uid_t)-1: never a user's uid
# The text area: capacity x TEXT_BYTES_PER_ROW bytes unless the writer is told
# otherwise.  Byte 0 is a NUL, so offset 0 is the empty string; equal strings of
# one publish are stored once (threads, a unit's processes).
TEXT_BYTES_PER_ROW = 128
TEXT_MAX_BYTES = 4104  # one string at most (a command line is cut at 4096 bytes and marked)
TEXT_CUT_MARKER = "\u2026"  # ends a string the table had to cut
ROW_ID_OFFSET = 4

SNAPSHOT_RETRY_S = 1.0  # how long a reader retries a copy the writer keeps changing
_COUNTER_COUNT = len(COUNTER_NAMES)  # counters[] in a row
NS_PER_S = 1_000_000_000  # int: int / int is rounded once, exactly
_KINDS = {int(kind): kind for kind in Kind}
_COMMAND_CACHE_MAX = 65536
_STATUS_MEMBER = TABLE_HEADER_MEMBERS.index("status")  # status[0] among the unpacked fields


class TableError(Exception):
    """The table cannot be used: unreadable, not a table, or never consistent."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class TableLayoutMismatch(TableError):
    """The file is a table of another layout version (another release's daemon)."""

    def __init__(self, message: str, path: str, version: int) -> None:
        super().__init__(message, path)
        self.version = version


class TableMissing(TableError):
    """No table file: the daemon is not running (or uses another run directory)."""


class TableStale(TableError):
    """The table's writer is gone or has not published for too long."""

    def __init__(self, message: str, path: str, daemon_pid: int, updated_s: float) -> None:
        super().__init__(message, path)
        self.daemon_pid = daemon_pid
        self.updated_s = updated_s


class Snapshot(NamedTuple):
    """One consistent copy of the table."""

    rows: list[TaskRow]
    status: dict[str, int]  # STATUS_FIELDS names
    daemon_pid: int
    updated_s: float  # epoch seconds of the publish this copy comes from
    generation: int  # even
    capacity: int
    refused: int  # rows left out past capacity, summed over every publish
    refused_last: int = 0  # rows the last publish left out
    text_refused: int = 0  # strings the last publish left out (text area full)


def table_path(run_dir: str) -> str:
    """Where the table lives in a run directory."""
    return os.path.join(run_dir, TABLE_FILE_NAME)


def _open_parent(path: str) -> SafeDirectory:
    """The directory path is in, held open as it is (no ownership check: tests, tools)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise TableError(f"cannot create the table {path}: {err.strerror}", path) from err
    return SafeDirectory(directory, fd, "table's directory")


def _read_boot_id(proc_root: str = PROC_ROOT_DEFAULT) -> bytes:
    """The 16 raw bytes of this boot's id, or 16 zero bytes if unknown."""
    try:
        with open(f"{proc_root}/sys/kernel/random/boot_id", encoding="ascii") as boot_file:
            return uuid.UUID(boot_file.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


def _same(before: list[ExitedTask], now: list[ExitedTask]) -> bool:
    """The same exit-list entries (the very objects) in the same order."""
    return len(before) == len(now) and all(a is b for a, b in zip(before, now, strict=True))


def _format_time(epoch_s: float) -> str:
    if epoch_s <= 0:
        return "never"
    return datetime.fromtimestamp(epoch_s).astimezone().isoformat(timespec="seconds")


class TableWriter:
    """The daemon's side: creates the file and publishes snapshots into it."""

    def __init__(
        self,
        path: str,
        capacity_rows: int,
        publish_interval_ms: int,
        directory: SafeDirectory | None = None,
        mode: int = TABLE_MODE,
        group: int | None = None,
        text_size_bytes: int | None = None,
    ) -> None:
        """path: where the table appears; directory: the checked run directory it is
        in (the daemon's), else its directory is opened here, unchecked (tests, tools).
        group: a gid given the table, to be read by (mode 0640 then, unless mode says).
        text_size_bytes: room for the rows' strings (capacity x TEXT_BYTES_PER_ROW).
        """
        if capacity_rows < 1:
            raise ValueError(f"capacity_rows must be at least 1, not {capacity_rows}")
        if not 0 < publish_interval_ms < 2**32:
            raise ValueError(f"publish_interval_ms out of range: {publish_interval_ms}")
        self.path = path
        self.name = os.path.basename(path)
        self.mode = mode | (0o040 if group is not None else 0)
        self.group = group
        self._own_directory = directory is None
        self._directory = directory if directory is not None else _open_parent(path)
        self.capacity = capacity_rows
        self.publish_interval_ms = publish_interval_ms
        if text_size_bytes is None:
            text_size_bytes = capacity_rows * TEXT_BYTES_PER_ROW
        if not 1 <= text_size_bytes < 2**32:
            raise ValueError(f"text_size_bytes out of range: {text_size_bytes}")
        self.text_size = text_size_bytes
        self._text_start = TABLE_HEADER.size + capacity_rows * TABLE_ROW.size
        self._size = self._text_start + text_size_bytes
        self._pid = os.getpid()
        try:
            self._start_ticks = read_stat(os.getpid()).start_time_ticks
        except ProcError:
            self._start_ticks = 0  # readers then rely on kill(pid, 0) alone
        self._boot_id = _read_boot_id()
        self._created_ns = time.time_ns()
        self._generation = 0
        self._refused_total = 0
        self._rows_buffer = bytearray(capacity_rows * TABLE_ROW.size)
        self._text_buffer = bytearray(text_size_bytes)  # byte 0 stays NUL: the empty string
        self._command_cache: dict[str, bytes] = {}
        # The strings in the text buffer and their offsets, kept from publish to publish
        # (a string is encoded and copied once); rebuilt when the buffer is full.
        self._offsets: dict[str, int] = {"": 0}
        self._text_used = 1
        self.text_refused_last = 0  # strings the last publish had no room for
        self._strings_refused = 0  # in the packing under way
        self._row_scratch = bytearray(TABLE_ROW.size)  # one row packed alone
        self._text_written = 0  # text bytes copied into the mapping by the last write
        # publish_tasks: each task's rows packed (process row, thread rows) until it is
        # touched; the exit list's rows by entry; where each task's process row is, and
        # its first thread row and thread count (tasks with threads); and the layout
        # these are for (the task table's layout version, the exit list, its first row,
        # the row count), None: the next publish_tasks lays every row out again.
        self._task_rows: dict[TaskInfo, tuple[bytes, list[bytes]]] = {}
        self._exited_rows: dict[int, tuple[ExitedTask, bytes]] = {}
        self._process_index: dict[TaskInfo, int] = {}
        self._thread_index: dict[TaskInfo, tuple[int, int]] = {}
        self._layout: tuple[int, list[ExitedTask], int, int] | None = None
        self._first_exited = 0  # the exit list's first row (after every task's rows)
        self._map, self._made = self._create()
        self._generation_view = memoryview(self._map)[
            GENERATION_OFFSET : GENERATION_OFFSET + 8
        ].cast("Q")
        log.info(
            "table %s: %d rows of %d bytes, %d bytes mapped",
            path,
            capacity_rows,
            TABLE_ROW.size,
            self._size,
        )

    def _header(
        self,
        row_count: int,
        refused_last: int,
        status: list[int],
        now_ns: int,
        text_used: int = 1,
        text_refused: int = 0,
    ) -> bytes:
        return TABLE_HEADER.pack(
            TABLE_MAGIC,
            TABLE_LAYOUT_VERSION,
            TABLE_HEADER.size,
            TABLE_ROW.size,
            self.capacity,
            self._generation,
            row_count,
            len(STATUS_FIELDS),
            self._refused_total,
            self._pid,
            self.publish_interval_ms,
            self._start_ticks,
            self._boot_id,
            self._created_ns,
            now_ns,
            refused_last,
            self.text_size,
            text_used,
            text_refused,
            *status,
        )

    def _create(self) -> tuple[mmap.mmap, os.stat_result]:
        """Build the file under a temporary name, then rename it over the path.

        The file is made through the run directory's descriptor (O_CREAT | O_EXCL |
        O_NOFOLLOW: a name planted there is never followed) and its space is
        allocated at once, so a full filesystem fails here and not with SIGBUS
        when a publish writes into a page that has no room.  A reader that still
        maps a previous daemon's file keeps that (now unlinked) file, sees its
        dead writer and reports the table stale; it is never cut short by a
        truncate under its mapping (which would be SIGBUS).
        """
        directory = self._directory
        temporary = f".{self.name}.{self._pid}.new"
        try:
            fd = directory.create_file(temporary, 0o600, size_bytes=self._size)
        except RunDirError as err:
            self._close_directory()
            raise TableError(str(err), self.path) from err
        made = os.fstat(fd)
        table_map: mmap.mmap | None = None
        try:
            if self.group is not None:
                os.fchown(fd, -1, self.group)
            os.fchmod(fd, self.mode)  # after the group: never readable by the old one
            table_map = mmap.mmap(fd, self._size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            header = self._header(0, 0, [0] * STATUS_SLOTS, self._created_ns)
            table_map[: len(header)] = header
            directory.rename(temporary, self.name)
        except (OSError, RunDirError) as err:
            if table_map is not None:
                table_map.close()
            try:
                directory.remove(temporary, same_as=made)
            except RunDirError:
                pass
            self._close_directory()
            reason = err.strerror if isinstance(err, OSError) else str(err)
            raise TableError(f"cannot set up the table {self.path}: {reason}", self.path) from err
        finally:
            os.close(fd)
        assert table_map is not None
        return table_map, made

    def _close_directory(self) -> None:
        if self._own_directory:
            self._directory.close()

    def _pack_status(self, status: Mapping[str, int]) -> list[int]:
        values = [0] * STATUS_SLOTS
        for name, value in status.items():
            index = _STATUS_INDEX.get(name)
            if index is None:
                raise ValueError(f"unknown status counter {name!r}: give it a slot in status.py")
            if not 0 <= value < 2**64:
                raise ValueError(f"status counter {name} out of range: {value}")
            values[index] = value
        return values

    @staticmethod
    def _text_bytes(text: str) -> bytes:
        """text as the text area holds it: UTF-8, no NUL inside, cut and marked, NUL after."""
        encoded = text.encode("utf-8", "replace").replace(b"\0", b" ")
        if len(encoded) > TEXT_MAX_BYTES:
            marker = TEXT_CUT_MARKER.encode()
            cut = encoded[: TEXT_MAX_BYTES - len(marker)].decode("utf-8", "ignore")
            encoded = cut.encode() + marker
        return encoded + b"\0"

    def _pack_rows(self, rows: Iterable[TaskRow]) -> tuple[int, int, int, int]:
        """Pack rows and their strings into the buffers.

        (rows packed, rows past capacity, text bytes used, strings left out).
        Strings placed by earlier publishes keep their offsets; when the text
        buffer is full, it is rebuilt with this publish's strings only, once.
        """
        rows = rows if isinstance(rows, list) else list(rows)
        fresh = self._text_used == 1
        packed = self._pack_pass(rows)
        if packed[3] and not fresh:
            self._reset_text()
            packed = self._pack_pass(rows)
        return packed

    def _reset_text(self) -> None:
        """Start the text area again: every row packed before holds stale offsets."""
        self._offsets = {"": 0}
        self._text_used = 1
        self._reset_cache()
        self._layout = None

    def _place(self, value: str) -> int:
        """The offset of a string the text buffer lacks, once put there (0: no room)."""
        encoded = self._text_bytes(value)
        start = self._text_used
        end = start + len(encoded)
        if end > self.text_size:
            self._strings_refused += 1
            return 0
        self._text_buffer[start:end] = encoded
        self._offsets[value] = start
        self._text_used = end
        return start

    def _pack_row(self, row: TaskRow) -> bytes:
        """One row as the table holds it, its strings placed (publish_tasks keeps it)."""
        scratch = self._row_scratch
        self._pack_into(scratch, [row], 1, stop_on_refused=False)
        return bytes(scratch)

    def _pack_pass(self, rows: list[TaskRow]) -> tuple[int, int, int, int]:
        self._strings_refused = 0
        fresh = self._text_used == 1  # nothing to gain from a rebuild
        count, refused = self._pack_into(self._rows_buffer, rows, self.capacity, not fresh)
        return count, refused, self._text_used, self._strings_refused

    def _pack_into(
        self, buffer: bytearray, rows: list[TaskRow], capacity: int, stop_on_refused: bool
    ) -> tuple[int, int]:
        """Pack rows one after the other into buffer, their strings placed; (rows packed,
        rows past capacity).  ``_strings_refused`` counts the strings that found no
        room; with stop_on_refused the packing stops at the first (the caller rebuilds
        the text and packs again)."""
        cache = self._command_cache
        pack_into = TABLE_ROW.pack_into
        row_size = TABLE_ROW.size
        known = self._offsets.get
        place = self._place
        count = 0
        refused = 0
        for row in rows:
            if count == capacity:
                refused += 1
                continue
            command = cache.get(row.command)
            if command is None:
                if len(cache) >= _COMMAND_CACHE_MAX:
                    cache.clear()
                command = row.command.encode("utf-8", "replace")[:15]
                cache[row.command] = command
            last_s = row.last_activity_s
            if last_s > 0:
                # Whole seconds and the fraction apart, so ns / 10**9 gives back the same float.
                whole_s = math.floor(last_s)
                last_ns = whole_s * NS_PER_S + round((last_s - whole_s) * 1e9)
            else:
                last_ns = 0
            cmdline = known(row.cmdline)
            if cmdline is None:
                cmdline = place(row.cmdline)
            unit = known(row.unit)
            if unit is None:
                unit = place(row.unit)
            container = known(row.container)
            if container is None:
                container = place(row.container)
            cgroup = known(row.cgroup)
            if cgroup is None:
                cgroup = place(row.cgroup)
            try:
                pack_into(
                    buffer,
                    count * row_size,
                    row.kind,
                    row.id,
                    row.tgid,
                    UID_UNKNOWN if row.uid < 0 else row.uid,
                    row.btime,
                    command,
                    *row.counters,
                    last_ns,
                    cmdline,
                    unit,
                    container,
                    cgroup,
                )
            except struct.error as err:
                raise ValueError(f"task {row.id} does not fit a table row: {err}") from err
            count += 1
            if stop_on_refused and self._strings_refused:
                break
        return count, refused

    def publish(self, rows: Iterable[TaskRow], status: Mapping[str, int]) -> int:
        """Publish one consistent snapshot; returns the number of rows written.

        Everything is packed before the generation turns odd, so a bad value
        raises ValueError with the table untouched and even.
        """
        status_values = self._pack_status(status)
        self._layout = None  # rows not from publish_tasks: its next call packs everything
        count, refused, text_used, text_refused = self._pack_rows(rows)
        self._write(count, refused, status_values, text_refused)
        return count

    def _write(
        self,
        count: int,
        refused: int,
        status_values: list[int],
        text_refused: int,
        rows_written: list[int] | None = None,
    ) -> None:
        """The packed buffers into the mapping under the seqlock, with a new header.

        rows_written: the indexes of the only rows that changed since the last
        write, and only the text placed since is copied; None: every row and
        all the text in use.
        """
        self._refused_total += refused
        self.text_refused_last = text_refused
        text_used = self._text_used
        now_ns = time.time_ns()
        row_size = TABLE_ROW.size
        used = count * row_size
        header = self._header(count, refused, status_values, now_ns, text_used, text_refused)
        table_map = self._map
        rows_buffer = memoryview(self._rows_buffer)
        rows_start = TABLE_HEADER.size
        text_start = self._text_start
        text_from = 0 if rows_written is None else self._text_written
        # Seqlock write.  The generation is one aligned 8-byte store; x86-64
        # keeps stores in program order, so a reader that sees the even value
        # again has seen every byte written before it.
        self._generation += 1
        self._generation_view[0] = self._generation
        if rows_written is None:
            table_map[rows_start : rows_start + used] = rows_buffer[:used]
        else:
            for index in rows_written:
                start = index * row_size
                table_map[rows_start + start : rows_start + start + row_size] = rows_buffer[
                    start : start + row_size
                ]
        table_map[text_start + text_from : text_start + text_used] = memoryview(self._text_buffer)[
            text_from:text_used
        ]
        table_map[VARIABLE_PART_OFFSET : TABLE_HEADER.size] = header[VARIABLE_PART_OFFSET:]
        self._generation += 1
        self._generation_view[0] = self._generation
        self._text_written = text_used
        if refused:
            log.debug("table full: %d rows past capacity %d", refused, self.capacity)

    # -- publishing the task table: a task's rows are packed again only when it changed --

    def publish_tasks(
        self, tasks: TaskTable, exited: list[ExitedTask], status: Mapping[str, int]
    ) -> int:
        """Publish the task table and the exit list; returns the number of rows written.

        The same rows in the same order as ``publish`` given every process
        (``tasks.by_tgid`` order), then every thread row, then ``exited`` (the
        engine's rows); but each task's rows are kept packed from publish to
        publish and packed again only when the task was touched since
        (``TaskInfo.touch``, ``TaskTable.take_changed``); an exit-list entry
        is packed once.  While no task came or went, only the touched tasks'
        rows, the exit list's rows if it changed (they come last) and the new
        strings are written: a publish costs in proportion to the active
        tasks.  Otherwise every row is laid out again from the packed ones.
        A table that could not hold every row or string is packed by
        ``publish`` as before, from scratch.
        """
        status_values = self._pack_status(status)
        changed = tasks.take_changed()
        task_rows = self._task_rows
        for task in changed:
            task_rows.pop(task, None)
        layout, self._layout = self._layout, None  # kept only when this publish succeeds
        if layout is not None and layout[0] == tasks.layout_version:
            count = self._patch(changed, exited, layout, status_values)
            if count is not None:
                return count
        count = self._lay_out_tasks(tasks, exited)
        if count is None:  # rows past capacity or strings without room: as publish does
            self._reset_cache()
            rows = tasks.rows(threads=True)
            rows.extend(entry.row() for entry in exited)
            count, refused, _, text_refused = self._pack_rows(rows)
            self._write(count, refused, status_values, text_refused)
            return count
        self._write(count, 0, status_values, 0)
        self._layout = (tasks.layout_version, exited, self._first_exited, count)
        return count

    def _patch(
        self,
        changed: list[TaskInfo],
        exited: list[ExitedTask],
        layout: tuple[int, list[ExitedTask], int, int],
        status_values: list[int],
    ) -> int | None:
        """No task came or went: the touched tasks' rows where they are, and the exit
        list's rows again if it changed (they come last); written, the row count.
        None: the rows move (a thread came or went, the table is full, a string found
        no room), and every row must be laid out again."""
        written = self._patch_tasks(changed)
        if written is None:
            return None
        version, before, first_exited, count = layout
        if not _same(before, exited):
            exited_rows = self._packed_exited(exited)
            if exited_rows is None or first_exited + len(exited_rows) > self.capacity:
                return None
            count = first_exited + len(exited_rows)
            row_size = TABLE_ROW.size
            self._rows_buffer[first_exited * row_size : count * row_size] = b"".join(exited_rows)
            written.extend(range(first_exited, count))
        self._write(count, 0, status_values, 0, written)
        self._layout = (version, exited, first_exited, count)
        return count

    def _reset_cache(self) -> None:
        """Forget every packed row kept for publish_tasks (and where it was)."""
        self._task_rows.clear()
        self._exited_rows.clear()
        self._process_index.clear()
        self._thread_index.clear()

    def _packed_task(self, task: TaskInfo) -> tuple[bytes, list[bytes]]:
        """A task's process row and thread rows, packed and kept until it is touched."""
        packed = self._task_rows.get(task)
        if packed is None:
            refused = self._strings_refused
            pack_row = self._pack_row
            threads = [pack_row(row) for row in task.thread_rows()] if task.threads else []
            packed = (pack_row(task.row()), threads)
            if self._strings_refused == refused:  # a string without room is tried again
                self._task_rows[task] = packed
        return packed

    def _lay_out_tasks(self, tasks: TaskTable, exited: list[ExitedTask]) -> int | None:
        """Every row into the rows buffer, in order, from the packed ones; the row count,
        or None when a row is past capacity or a string found no room."""
        self._strings_refused = 0
        by_tgid = tasks.by_tgid
        if len(by_tgid) + len(exited) > self.capacity:
            return None
        packed_rows = self._task_rows.get
        packed_task = self._packed_task
        rows: list[bytes] = []
        add = rows.append
        threaded: list[tuple[TaskInfo, list[bytes]]] = []
        for task in by_tgid.values():
            packed = packed_rows(task)
            if packed is None:
                packed = packed_task(task)
                if self._strings_refused:
                    return None
            add(packed[0])
            if packed[1]:
                threaded.append((task, packed[1]))
        process_index = dict(zip(by_tgid.values(), range(len(rows)), strict=True))
        thread_index: dict[TaskInfo, tuple[int, int]] = {}
        for task, thread_rows in threaded:
            thread_index[task] = (len(rows), len(thread_rows))
            rows.extend(thread_rows)
        first_exited = len(rows)
        exited_rows = self._packed_exited(exited)
        if exited_rows is None:
            return None
        rows.extend(exited_rows)
        count = len(rows)
        if count > self.capacity:
            return None
        self._rows_buffer[: count * TABLE_ROW.size] = b"".join(rows)
        self._first_exited = first_exited
        self._process_index = process_index
        self._thread_index = thread_index
        return count

    def _packed_exited(self, exited: list[ExitedTask]) -> list[bytes] | None:
        """The exit list's rows, each packed once (entries never change); None when a
        string found no room."""
        exited_rows = self._exited_rows
        kept: dict[int, tuple[ExitedTask, bytes]] = {}
        rows: list[bytes] = []
        for entry in exited:
            known = exited_rows.get(id(entry))
            if known is None or known[0] is not entry:
                known = (entry, self._pack_row(entry.row()))
                if self._strings_refused:
                    return None
            kept[id(entry)] = known
            rows.append(known[1])
        self._exited_rows = kept
        return rows

    def _patch_tasks(self, changed: list[TaskInfo]) -> list[int] | None:
        """The touched tasks' rows packed again where they are; the indexes of the rows
        written, or None when a task's thread rows came or went (the layout moves) or
        a string found no room."""
        self._strings_refused = 0
        buffer = self._rows_buffer
        row_size = TABLE_ROW.size
        process_index = self._process_index
        thread_index = self._thread_index
        written: list[int] = []
        for task in changed:
            index = process_index.get(task)
            if index is None:
                continue  # not in the table (it left; a task that came moved the layout)
            first_thread, thread_count = thread_index.get(task, (0, 0))
            if len(task.threads) != thread_count:
                return None
            process_row, thread_rows = self._packed_task(task)
            if self._strings_refused:
                return None
            buffer[index * row_size : (index + 1) * row_size] = process_row
            written.append(index)
            for row in thread_rows:
                buffer[first_thread * row_size : (first_thread + 1) * row_size] = row
                written.append(first_thread)
                first_thread += 1
        return written

    def close(self, unlink: bool = True) -> None:
        """Unmap; with unlink, remove the file if it is still this writer's."""
        if self._map.closed:
            return
        self._generation_view.release()
        self._map.close()
        try:
            if unlink:
                self._directory.remove(self.name, same_as=self._made)
        except RunDirError as err:
            raise TableError(f"cannot remove the table: {err}", self.path) from err
        finally:
            self._close_directory()


class TableReader:
    """A reader's side: maps the table read-only; never writes, never blocks the daemon."""

    def __init__(self, path: str, retry_s: float = SNAPSHOT_RETRY_S) -> None:
        self.path = path
        self.retry_s = retry_s
        self._current_boot_id = _read_boot_id()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise TableMissing(
                f"no table at {path}: is netatopd running with this run directory?", path
            ) from err
        except PermissionError as err:
            raise TableError(
                f"cannot open the table {path}: {err.strerror} (it is root's; netatopd "
                "--table-group GROUP lets that group read it)",
                path,
            ) from err
        except OSError as err:
            raise TableError(f"cannot open the table {path}: {err.strerror}", path) from err
        try:
            file_status = os.fstat(fd)
            self._inode = file_status.st_ino
            if file_status.st_size < TABLE_HEADER.size:
                raise TableError(
                    f"{path} is not a netatop table: {file_status.st_size} bytes, "
                    f"shorter than the {TABLE_HEADER.size}-byte header",
                    path,
                )
            self._map = mmap.mmap(fd, file_status.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as err:
            raise TableError(f"cannot map the table {path}: {err.strerror}", path) from err
        finally:
            os.close(fd)
        try:
            self._check_header(file_status.st_size)
        except TableError:
            self._map.close()
            raise
        self._generation_view = memoryview(self._map)[
            GENERATION_OFFSET : GENERATION_OFFSET + 8
        ].cast("Q")

    def _check_header(self, file_size: int) -> None:
        fields = TABLE_HEADER.unpack_from(self._map, 0)
        magic, version, header_size, row_size, capacity = fields[:5]
        if magic != TABLE_MAGIC:
            raise TableError(f"{self.path} is not a netatop table (magic {magic!r})", self.path)
        if version != TABLE_LAYOUT_VERSION:
            raise TableLayoutMismatch(
                f"{self.path} has table layout version {version}, and this reader reads "
                f"version {TABLE_LAYOUT_VERSION} only: netatopd and this reader come from "
                f"different releases; restart netatopd from the same release as this "
                f"reader (or use the reader of netatopd's release)",
                self.path,
                version,
            )
        if header_size != TABLE_HEADER.size or row_size != TABLE_ROW.size:
            raise TableError(
                f"{self.path}: header of {header_size} bytes and rows of {row_size} bytes, "
                f"expected {TABLE_HEADER.size} and {TABLE_ROW.size}",
                self.path,
            )
        text_size = fields[16]
        if file_size < header_size + capacity * row_size + text_size:
            raise TableError(
                f"{self.path} is cut short: {file_size} bytes for {capacity} rows "
                f"and {text_size} bytes of text",
                self.path,
            )
        # Members the writer sets once, before the file appears under its name.
        self.capacity: int = capacity
        self.daemon_pid: int = fields[9]
        self.publish_interval_ms: int = fields[10]
        self.daemon_start_ticks: int = fields[11]
        self.boot_id: bytes = fields[12]
        self.created_s: float = fields[13] / NS_PER_S
        self.text_size: int = text_size
        self._text_start = header_size + capacity * row_size

    def _copy(self) -> tuple[tuple[int | bytes, ...], bytes, bytes]:
        """Seqlock read: (header fields, raw rows, used text) from one publish."""
        table_map = self._map
        generation_view = self._generation_view
        header_size = TABLE_HEADER.size
        deadline = time.monotonic() + self.retry_s
        attempts = 0
        while True:
            attempts += 1
            before = generation_view[0]
            if not before & 1:
                header = table_map[:header_size]
                row_count = int.from_bytes(
                    header[ROW_COUNT_OFFSET : ROW_COUNT_OFFSET + 4], "little"
                )
                text_used = int.from_bytes(
                    header[TEXT_USED_OFFSET : TEXT_USED_OFFSET + 4], "little"
                )
                if row_count <= self.capacity and text_used <= self.text_size:
                    rows = table_map[header_size : header_size + row_count * TABLE_ROW.size]
                    text = table_map[self._text_start : self._text_start + text_used]
                    if generation_view[0] == before:
                        return TABLE_HEADER.unpack(header), rows, text
            if attempts % 64 == 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
            else:
                os.sched_yield()
        update_ns = table_map[UPDATE_NS_OFFSET : UPDATE_NS_OFFSET + 8]
        self._check_alive(int.from_bytes(update_ns, "little") / NS_PER_S)
        raise TableError(
            f"the table {self.path} kept changing for {self.retry_s:g} s "
            f"({attempts} attempts); the writer may be stuck",
            self.path,
        )

    def _check_alive(self, updated_s: float) -> None:
        """TableStale if the writer is gone (pid gone or reused, or another boot)."""
        pid = self.daemon_pid
        since = f"last update {_format_time(updated_s)}"
        current_boot = self._current_boot_id
        if any(self.boot_id) and any(current_boot) and current_boot != self.boot_id:
            raise TableStale(
                f"the table {self.path} is from an earlier boot ({since})",
                self.path,
                pid,
                updated_s,
            )
        gone = False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone = True
        except PermissionError:
            pass  # exists, owned by someone else
        except OSError as err:
            if err.errno != errno.EPERM:
                gone = True
        if not gone and self.daemon_start_ticks:
            try:
                gone = not same_process(read_stat(pid), self.daemon_start_ticks)
            except ProcError:
                pass  # unreadable: kill(0) found it, so count it as running
        if gone:
            raise TableStale(
                f"the table {self.path} is stale: its daemon (pid {pid}) is no longer "
                f"running; {since}",
                self.path,
                pid,
                updated_s,
            )

    def _fresh(self, header: tuple[int | bytes, ...], max_age_s: float | None) -> float:
        updated_s = int(header[14]) / NS_PER_S
        self._check_alive(updated_s)
        if max_age_s is not None:
            age_s = time.time() - updated_s
            if age_s > max_age_s:
                raise TableStale(
                    f"the table {self.path} is stale: last update {_format_time(updated_s)}, "
                    f"{age_s:.1f} s ago (more than {max_age_s:g} s)",
                    self.path,
                    self.daemon_pid,
                    updated_s,
                )
        return updated_s

    def snapshot(self, max_age_s: float | None = None) -> Snapshot:
        """One consistent copy of every row and the status counters.

        Raises TableStale when the daemon is gone, or when max_age_s is given
        and the last publish is older than that; TableError when no consistent
        copy could be taken within retry_s.
        """
        header, raw_rows, text = self._copy()
        updated_s = self._fresh(header, max_age_s)
        status_count = min(int(header[7]), len(STATUS_FIELDS))
        status_values = header[_STATUS_MEMBER : _STATUS_MEMBER + status_count]
        status = {
            name: int(value)
            for name, value in zip(STATUS_FIELDS[:status_count], status_values, strict=True)
        }
        return Snapshot(
            rows=self._parse_rows(raw_rows, text),
            status=status,
            daemon_pid=self.daemon_pid,
            updated_s=updated_s,
            generation=int(header[5]),
            capacity=self.capacity,
            refused=int(header[8]),
            refused_last=int(header[15]),
            text_refused=int(header[18]),
        )

    def _parse_rows(self, raw_rows: bytes, text: bytes) -> list[TaskRow]:
        commands: dict[bytes, str] = {}
        strings: dict[int, str] = {0: ""}

        def string_at(offset: int) -> str:
            value = strings.get(offset)
            if value is None:
                end = text.find(b"\0", offset)
                if offset >= len(text) or end < 0:
                    raise TableError(
                        f"{self.path}: a string at offset {offset} lies outside the "
                        f"{len(text)} bytes of text in use",
                        self.path,
                    )
                value = strings[offset] = text[offset:end].decode("utf-8", "replace")
            return value

        rows = []
        for kind, task_id, tgid, uid, btime, raw_command, *rest in TABLE_ROW.iter_unpack(raw_rows):
            command = commands.get(raw_command)
            if command is None:
                command = raw_command.split(b"\0", 1)[0].decode("utf-8", "replace")
                commands[raw_command] = command
            row_kind = _KINDS.get(kind)
            if row_kind is None:
                raise TableError(f"{self.path}: row {task_id} has unknown kind {kind}", self.path)
            cmdline, unit, container, cgroup = rest[_COUNTER_COUNT + 1 :]
            rows.append(
                TaskRow(
                    row_kind,
                    task_id,
                    tgid,
                    btime,
                    command,
                    tuple(rest[:_COUNTER_COUNT]),
                    rest[_COUNTER_COUNT] / NS_PER_S,
                    -1 if uid == UID_UNKNOWN else uid,
                    string_at(cmdline),
                    string_at(unit),
                    string_at(container),
                    string_at(cgroup),
                )
            )
        return rows

    def lookup(
        self, pid: int, kind: Kind | None = None, max_age_s: float | None = None
    ) -> TaskRow | None:
        """The row whose id is pid (a process's tgid or a thread's tid), or None.

        Without kind, a live process wins over a thread of the same id (a
        process's main thread has tid == tgid), and either over an exited process.
        """
        header, raw_rows, text = self._copy()
        self._fresh(header, max_age_s)
        row_size = TABLE_ROW.size
        ids = memoryview(raw_rows).cast("i")[ROW_ID_OFFSET // 4 :: row_size // 4].tolist()
        best: TaskRow | None = None
        for index, task_id in enumerate(ids):
            if task_id != pid:
                continue
            row = self._parse_rows(raw_rows[index * row_size : (index + 1) * row_size], text)[0]
            if kind is not None:
                if row.kind == kind:
                    return row
            elif best is None or row.kind < best.kind:
                best = row
        return best

    def replaced(self) -> bool:
        """True when the path now names another file (a restarted daemon): reopen."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def close(self) -> None:
        if self._map.closed:
            return
        self._generation_view.release()
        self._map.close()

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_table(run_dir: str, retry_s: float = SNAPSHOT_RETRY_S) -> TableReader:
    """Open the table of the daemon that uses run_dir."""
    return TableReader(table_path(run_dir), retry_s)
