"""The one row netatop prints: a task's counters (TaskCounts), and how it is shown.

Owns TaskCounts, the row of query, exited, wait-exit and top and of their JSON
and CSV output, with one constructor per source: from_reply (a struct
netpertask record of the control socket), from_table (a row of the shared
table) and from_history (a finished process read from SQLite).  Also owns the
sort orders (SortKey, sort_rows), the fields of JSON and CSV (TASK_FIELDS,
EXITED_FIELDS) and the table columns of query and exited.  Called by sources
(which builds rows), top (rates) and commands (which prints them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..client import NetPerTask
from ..protocol import COUNTER_NAMES
from ..tasks import ExitedTask, Kind, TaskRow
from .format import Column, Record, format_bytes, format_count, format_text


@dataclasses.dataclass(frozen=True, slots=True)
class TaskCounts:
    """A task and the eight counters of struct taskcount.

    For top the counters are rates (per second) and total_bytes is the
    lifetime bytes; elsewhere they are totals and total_bytes is 0.  The fields
    after the counters are known only for a finished process read from SQLite.
    """

    kind: Kind
    pid: int  # the tid of a thread row, else the tgid
    tgid: int
    btime: int  # process start, seconds since the epoch
    command: str
    tcpsndpacks: float
    tcpsndbytes: float
    tcprcvpacks: float
    tcprcvbytes: float
    udpsndpacks: float
    udpsndbytes: float
    udprcvpacks: float
    udprcvbytes: float
    cmdline: str | None = None
    uid: int | None = None
    first_activity: float | None = None  # epoch seconds
    last_activity: float | None = None
    exit_time: float | None = None
    total_bytes: int = 0

    def record(self, fields: Sequence[str] | None = None) -> Record:
        """The fields (TASK_FIELDS unless given) by name, as JSON and CSV print them."""
        return {
            name: self.kind.name.lower() if name == "kind" else getattr(self, name)
            for name in (TASK_FIELDS if fields is None else fields)
        }


# The fields of a row in JSON and CSV, in output order.
TASK_FIELDS: tuple[str, ...] = ("pid", "tgid", "kind", "btime", "command", *COUNTER_NAMES)
# A finished process read from SQLite: the same, then what the database adds.
EXITED_FIELDS: tuple[str, ...] = (
    *TASK_FIELDS,
    "cmdline",
    "uid",
    "first_activity",
    "last_activity",
    "exit_time",
)
BYTE_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("bytes"))
PACKET_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("packs"))


def _counter_fields(counters: Iterable[float]) -> dict[str, Any]:
    """Keyword arguments of TaskCounts for the eight counters in COUNTER_NAMES order."""
    return dict(zip(COUNTER_NAMES, counters, strict=True))


def from_reply(record: NetPerTask, kind: Kind = Kind.PROCESS) -> TaskCounts:
    """A record of the control socket; its id is the tgid, kind says which list it is from."""
    return TaskCounts(
        kind, record.id, record.id, record.btime, record.command, **_counter_fields(record.counters)
    )


def from_table(row: TaskRow) -> TaskCounts:
    """A row of the shared table."""
    return TaskCounts(
        row.kind, row.id, row.tgid, row.btime, row.command, **_counter_fields(row.counters)
    )


def from_history(task: ExitedTask) -> TaskCounts:
    """A finished process from SQLite; unknown uid, command line and times are None."""
    return TaskCounts(
        Kind.EXITED,
        task.tgid,
        task.tgid,
        task.btime,
        task.command,
        **_counter_fields(task.counters),
        cmdline=task.cmdline or None,
        uid=task.uid if task.uid >= 0 else None,
        first_activity=task.first_activity_s or None,
        last_activity=task.last_activity_s or None,
        exit_time=task.exit_time_s,
    )


def byte_total(row: TaskCounts) -> float:
    return sum(getattr(row, name) for name in BYTE_COUNTERS)


def with_counters(row: TaskCounts, counters: Iterable[float], total_bytes: int) -> TaskCounts:
    """The same task with other counter values (top's rates)."""
    return dataclasses.replace(row, total_bytes=total_bytes, **_counter_fields(counters))


# --------------------------------------------------------------------------- orders


class SortKey(StrEnum):
    """Orders of query and top; every one but pid puts the largest first."""

    BYTES = "bytes"
    PACKETS = "packets"
    TCP = "tcp"
    UDP = "udp"
    PID = "pid"


def _sort_value(row: TaskCounts, key: SortKey) -> float:
    if key is SortKey.BYTES:
        return byte_total(row)
    if key is SortKey.PACKETS:
        return sum(getattr(row, name) for name in PACKET_COUNTERS)
    if key is SortKey.TCP:
        return float(row.tcpsndbytes + row.tcprcvbytes)
    if key is SortKey.UDP:
        return float(row.udpsndbytes + row.udprcvbytes)
    return 0.0


def sort_rows(rows: Iterable[TaskCounts], key: SortKey) -> list[TaskCounts]:
    """Largest first by key (pid: ascending); ties by lifetime bytes, then pid."""
    if key is SortKey.PID:
        return sorted(rows, key=lambda r: (r.pid, r.kind.name))
    return sorted(rows, key=lambda r: (-_sort_value(r, key), -r.total_bytes, r.pid, r.kind.name))


# --------------------------------------------------------------------------- columns


def _counter_column(header: str, name: str) -> Column[TaskCounts]:
    if name.endswith("bytes"):
        return Column(header, lambda r: format_bytes(getattr(r, name)))
    return Column(header, lambda r: format_count(getattr(r, name)))


PID_COLUMN: Column[TaskCounts] = Column("PID", lambda r: str(r.pid))
COMMAND_COLUMN: Column[TaskCounts] = Column("COMMAND", lambda r: r.command, right=False, flex=True)
COUNTER_HEADERS = (
    "TCPSND",
    "TCPSNDB",
    "TCPRCV",
    "TCPRCVB",
    "UDPSND",
    "UDPSNDB",
    "UDPRCV",
    "UDPRCVB",
)
TASK_COLUMNS: tuple[Column[TaskCounts], ...] = (
    PID_COLUMN,
    COMMAND_COLUMN,
    *(
        _counter_column(header, name)
        for header, name in zip(COUNTER_HEADERS, COUNTER_NAMES, strict=True)
    ),
)
THREAD_COLUMNS: tuple[Column[TaskCounts], ...] = (
    Column("TID", lambda r: str(r.pid)),
    Column("TGID", lambda r: str(r.tgid)),
    *TASK_COLUMNS[1:],
)


def _exit_clock(row: TaskCounts) -> str:
    if row.exit_time is None:
        return "-"
    return datetime.fromtimestamp(row.exit_time).strftime("%m-%d %H:%M:%S")


EXITED_COLUMNS: tuple[Column[TaskCounts], ...] = (
    PID_COLUMN,
    Column("UID", lambda r: format_text(r.uid)),
    Column("EXITED", _exit_clock, right=False),
    Column("SNDPK", lambda r: format_count(r.tcpsndpacks + r.udpsndpacks)),
    Column("SENT", lambda r: format_bytes(r.tcpsndbytes + r.udpsndbytes)),
    Column("RCVPK", lambda r: format_count(r.tcprcvpacks + r.udprcvpacks)),
    Column("RECEIVED", lambda r: format_bytes(r.tcprcvbytes + r.udprcvbytes)),
    Column("COMMAND LINE", lambda r: r.cmdline or f"[{r.command}]", right=False, flex=True),
)
