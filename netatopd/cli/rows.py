"""The one row netatop prints: a task's counters (TaskCounts), and how it is shown.

Owns TaskCounts, the row of query, exited, wait-exit and top and of their JSON
and CSV output, with one constructor per source: from_reply (a struct
netpertask record of the control socket), from_detail (an object of its
*_DETAIL answers), from_table (a row of the shared table) and from_history (a
finished process read from SQLite); all but from_reply carry who the process
is (uid and user, command line, unit, container, cgroup).  Also owns the
sort orders (SortKey, ReportOrder, sort_rows, TIE_BREAK), the vocabulary
(the fields of JSON and CSV, TASK_FIELDS and EXITED_FIELDS, and each field's
table header and cell text: HEADERS, header, cell_text) and the table columns
of query (query_columns: USER, and CMDLINE where it fits; packet counts left
out of a terminal too narrow) and exited.  Called by sources (which builds
rows), top (rates) and commands (which prints them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any

from ..client import NetPerTask
from ..protocol import COUNTER_NAMES
from ..tasks import ExitedTask, Kind, TaskRow
from ..users import UserNames
from .format import (
    Column,
    Record,
    format_bytes,
    format_count,
    format_text,
    format_time,
    least_width,
    table_width,
)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskCounts:
    """A task and the eight counters of struct taskcount.

    For top the counters are rates (per second) and total_bytes is the
    lifetime bytes; elsewhere they are totals and total_bytes is 0.  Of the
    fields after the counters, the activity times are known for the exit list
    and the history, the exit time for finished processes; None is unknown.
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
    user: str | None = None  # the user name of uid (users.UserNames), None if uid unknown
    unit: str | None = None  # systemd unit (cgroups.placement_labels), None if none or unknown
    container: str | None = None  # "runtime:id" or "pod:UID", None if none or unknown
    cgroup: str | None = None  # cgroup v2 path, None if unknown

    def record(self, fields: Sequence[str] | None = None) -> Record:
        """The fields (TASK_FIELDS unless given) by name, as JSON and CSV print them."""
        return {
            name: self.kind.name.lower() if name == "kind" else getattr(self, name)
            for name in (TASK_FIELDS if fields is None else fields)
        }


# Who a process is, on every row of JSON and CSV (null / empty when unknown).
IDENTITY_FIELDS: tuple[str, ...] = ("uid", "user", "cmdline", "unit", "container", "cgroup")
# The fields of a row in JSON and CSV, in output order.
TASK_FIELDS: tuple[str, ...] = (
    "pid",
    "tgid",
    "kind",
    "btime",
    "command",
    *COUNTER_NAMES,
    *IDENTITY_FIELDS,
)
# A finished process (the exit list, the history): the same, then its times.
EXITED_FIELDS: tuple[str, ...] = (
    *TASK_FIELDS,
    "first_activity",
    "last_activity",
    "exit_time",
)
BYTE_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("bytes"))
PACKET_COUNTERS = tuple(name for name in COUNTER_NAMES if name.endswith("packs"))


def _counter_fields(counters: Iterable[float]) -> dict[str, Any]:
    """Keyword arguments of TaskCounts for the eight counters in COUNTER_NAMES order."""
    return dict(zip(COUNTER_NAMES, counters, strict=True))


# uid -> user name, cached for the life of the command (top asks again and again).
USER_NAMES = UserNames()


def from_reply(record: NetPerTask, kind: Kind = Kind.PROCESS) -> TaskCounts:
    """A record of the control socket; its id is the tgid, kind says which list it is from."""
    return TaskCounts(
        kind, record.id, record.id, record.btime, record.command, **_counter_fields(record.counters)
    )


def _identity(uid: int, cmdline: str, unit: str, container: str, cgroup: str) -> dict[str, Any]:
    """Keyword arguments of TaskCounts for who a process is; unknown ones None."""
    return {
        "uid": uid if uid >= 0 else None,
        "user": USER_NAMES.name(uid) if uid >= 0 else None,
        "cmdline": cmdline or None,
        "unit": unit or None,
        "container": container or None,
        "cgroup": cgroup or None,
    }


def from_table(row: TaskRow) -> TaskCounts:
    """A row of the shared table."""
    return TaskCounts(
        row.kind,
        row.id,
        row.tgid,
        row.btime,
        row.command,
        **_counter_fields(row.counters),
        **_identity(row.uid, row.cmdline, row.unit, row.container, row.cgroup),
    )


def from_detail(detail: dict[str, Any], kind: Kind = Kind.PROCESS) -> TaskCounts:
    """An object of the control socket's *_DETAIL answers (protocol.DETAIL_FIELDS)."""
    return TaskCounts(
        kind,
        int(detail["tgid"]),
        int(detail["tgid"]),
        int(detail["btime"]),
        str(detail["command"]),
        **_counter_fields(int(detail[name]) for name in COUNTER_NAMES),
        **_identity(
            int(detail["uid"]),
            str(detail["cmdline"]),
            str(detail["unit"]),
            str(detail["container"]),
            str(detail["cgroup"]),
        ),
        first_activity=detail["first_activity"] or None,
        last_activity=detail["last_activity"] or None,
        exit_time=detail["exit_time"],
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
        **_identity(task.uid, task.cmdline, task.unit, task.container, task.cgroup),
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

    BYTES = "bytes"  # sent and received
    PACKETS = "packets"
    SENT = "sent"  # bytes sent
    RECEIVED = "received"  # bytes received
    SENT_PACKETS = "sent-packets"
    RECEIVED_PACKETS = "received-packets"
    TCP = "tcp"  # TCP bytes, both ways
    UDP = "udp"
    PID = "pid"


class ReportOrder(StrEnum):
    """Orders a report can be asked for (its :order parameter), largest first."""

    BYTES = "bytes"
    PACKETS = "packets"
    SENT = "sent"
    RECEIVED = "received"
    SENT_PACKETS = "sent-packets"
    RECEIVED_PACKETS = "received-packets"


# Said in --help and netatop(1): how rows equal in the order asked for are ordered.
TIE_BREAK = (
    "ties go to more bytes sent and received, then to more bytes sent, then to the lower pid"
)


def sent_bytes(row: TaskCounts) -> float:
    return row.tcpsndbytes + row.udpsndbytes


def received_bytes(row: TaskCounts) -> float:
    return row.tcprcvbytes + row.udprcvbytes


def sent_packets(row: TaskCounts) -> float:
    return row.tcpsndpacks + row.udpsndpacks


def received_packets(row: TaskCounts) -> float:
    return row.tcprcvpacks + row.udprcvpacks


def packet_total(row: TaskCounts) -> float:
    return sum(getattr(row, name) for name in PACKET_COUNTERS)


_SORT_VALUE: dict[SortKey, Callable[[TaskCounts], float]] = {
    SortKey.BYTES: byte_total,
    SortKey.PACKETS: packet_total,
    SortKey.SENT: sent_bytes,
    SortKey.RECEIVED: received_bytes,
    SortKey.SENT_PACKETS: sent_packets,
    SortKey.RECEIVED_PACKETS: received_packets,
    SortKey.TCP: lambda r: float(r.tcpsndbytes + r.tcprcvbytes),
    SortKey.UDP: lambda r: float(r.udpsndbytes + r.udprcvbytes),
}


def sort_value(key: SortKey) -> Callable[[TaskCounts], float]:
    """The value key orders by, largest first (not for SortKey.PID)."""
    return _SORT_VALUE[key]


def sort_rows(rows: Iterable[TaskCounts], key: SortKey) -> list[TaskCounts]:
    """Largest first by key (pid: ascending); ties as TIE_BREAK says.

    Between the bytes sent and the pid, top's rows (rates) also compare the
    bytes since the process started (total_bytes; 0 elsewhere).
    """
    if key is SortKey.PID:
        return sorted(rows, key=lambda r: (r.pid, r.kind.name))
    value = _SORT_VALUE[key]
    return sorted(
        rows,
        key=lambda r: (
            -value(r),
            -byte_total(r),
            -sent_bytes(r),
            -r.total_bytes,
            r.pid,
            r.kind.name,
        ),
    )


# --------------------------------------------------------------------------- vocabulary

# One name per field: JSON keys, CSV headers and the columns of the SQL reports
# use the field name; tables use its header.  Sums over TCP and UDP are named
# like the counters without the protocol (sndbytes = tcpsndbytes + udpsndbytes).
HEADERS: dict[str, str] = {
    "pid": "PID",
    "tgid": "TGID",
    "kind": "KIND",
    "btime": "STARTED",
    "command": "COMMAND",
    "tcpsndpacks": "TCPSND",
    "tcpsndbytes": "TCPSNDB",
    "tcprcvpacks": "TCPRCV",
    "tcprcvbytes": "TCPRCVB",
    "udpsndpacks": "UDPSND",
    "udpsndbytes": "UDPSNDB",
    "udprcvpacks": "UDPRCV",
    "udprcvbytes": "UDPRCVB",
    "sndpacks": "SNDPK",
    "sndbytes": "SENT",
    "rcvpacks": "RCVPK",
    "rcvbytes": "RCVD",
    "total_bytes": "TOTAL",
    "uid": "USER",
    "user": "USER",
    "unit": "UNIT",
    "container": "CONTAINER",
    "cgroup": "CGROUP",
    "cmdline": "CMDLINE",
    "first_activity": "FIRST",
    "last_activity": "LAST",
    "exit_time": "EXITED",
    "processes": "PROCS",
    "running": "RUN",
    "key": "GROUP",
    "hour_start": "HOUR",
}
# Fields holding a moment (epoch seconds in JSON and CSV, local ISO 8601 in tables).
TIME_FIELDS = frozenset({"btime", "first_activity", "last_activity", "exit_time", "hour_start"})
TEXT_FIELDS = frozenset({"command", "cmdline", "kind", "user", "unit", "container", "cgroup"})


def header(field: str) -> str:
    """The table header of a field (a report's own column: its name in capitals)."""
    return HEADERS.get(field, field.upper())


def cell_text(field: str, value: object) -> str:
    """How a table shows a field's value: units, local times, user names; '-' if unknown."""
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if field in TIME_FIELDS:
            return format_time(value)
        if field == "uid":
            return USER_NAMES.name(int(value))
        if field.endswith("bytes"):
            return format_bytes(value)
        if field.endswith("packs"):
            return format_count(value)
    return format_text(value)


# --------------------------------------------------------------------------- columns


def _counter_column(name: str) -> Column[TaskCounts]:
    if name.endswith("bytes"):
        return Column(header(name), lambda r: format_bytes(getattr(r, name)))
    return Column(header(name), lambda r: format_count(getattr(r, name)))


def _command_cell(row: TaskCounts) -> str:
    return f"{row.command} <exited>" if row.kind is Kind.EXITED else row.command


def _cmdline_cell(row: TaskCounts) -> str:
    """The command line; the command name in brackets when it is not known (like ps)."""
    return row.cmdline or f"[{row.command}]"


PID_COLUMN: Column[TaskCounts] = Column(header("pid"), lambda r: str(r.pid))
USER_COLUMN: Column[TaskCounts] = Column(
    header("user"), lambda r: cell_text("user", r.user), right=False
)
COMMAND_COLUMN: Column[TaskCounts] = Column(
    header("command"), _command_cell, right=False, flex=True
)
CMDLINE_COLUMN: Column[TaskCounts] = Column(
    header("cmdline"), _cmdline_cell, right=False, flex=True
)
TASK_COLUMNS: tuple[Column[TaskCounts], ...] = (
    PID_COLUMN,
    USER_COLUMN,
    COMMAND_COLUMN,
    *(_counter_column(name) for name in COUNTER_NAMES),
)
THREAD_COLUMNS: tuple[Column[TaskCounts], ...] = (
    Column("TID", lambda r: str(r.pid)),
    Column(header("tgid"), lambda r: str(r.tgid)),
    *TASK_COLUMNS[1:],
)
# query adds CMDLINE when at least this many characters of it fit beside the rest.
CMDLINE_MIN_WIDTH = 20
# Columns query leaves out, in this order, when the table cannot fit otherwise.
DROPPABLE_FIELDS = ("udprcvpacks", "udpsndpacks", "tcprcvpacks", "tcpsndpacks")


def query_columns(
    found: Sequence[TaskCounts], threads: bool, width: int | None, cmdline: bool
) -> tuple[tuple[Column[TaskCounts], ...], list[str]]:
    """The columns of query, and the headers of those left out.

    Packet counts are left out (DROPPABLE_FIELDS order) while the table does not
    fit width with its flex columns cut; CMDLINE comes last when asked for
    (cmdline), when nothing is cut (width None), or when CMDLINE_MIN_WIDTH
    characters of it fit in width.
    """
    columns = list(THREAD_COLUMNS if threads else TASK_COLUMNS)
    dropped: list[str] = []
    droppable = [header(name) for name in DROPPABLE_FIELDS]
    while width is not None and droppable and least_width(found, columns) > width:
        name = droppable.pop(0)
        columns = [column for column in columns if column.header != name]
        dropped.append(name)
    if cmdline or width is None or width - table_width(found, columns) - 1 >= CMDLINE_MIN_WIDTH:
        columns.append(CMDLINE_COLUMN)
    return tuple(columns), dropped


# Finished processes (the exit list and the history): no need to mark them; the
# command line takes the command's place.
EXITED_COLUMNS: tuple[Column[TaskCounts], ...] = (
    PID_COLUMN,
    USER_COLUMN,
    Column(header("exit_time"), lambda r: cell_text("exit_time", r.exit_time), right=False),
    Column(header("sndpacks"), lambda r: format_count(sent_packets(r))),
    Column(header("sndbytes"), lambda r: format_bytes(sent_bytes(r))),
    Column(header("rcvpacks"), lambda r: format_count(received_packets(r))),
    Column(header("rcvbytes"), lambda r: format_bytes(received_bytes(r))),
    CMDLINE_COLUMN,
)
EXIT_LIST_COLUMNS = EXITED_COLUMNS
