"""The task table (the kernel module's "taskinfo") and the records read from it.

Owns one TaskInfo per process (tgid) that has been seen on the network, with
the eight counters of ``struct taskcount`` (and per thread where the kernel
named the thread), and the TaskTable that holds them with its cap.  Data
only: ``ownership.TaskRegistry`` makes and finishes tasks, ``Resolver``
settles a flow's counters into its owner (``add``); the table, the history,
the servers and the CLI read snapshots as TaskRow / ExitedTask records, and
so depend on this module without importing the ownership package.  A task
whose row changes is touched (``TaskInfo.touch``) into its table's change
log, which the shared table's writer takes at each publish
(``TaskTable.take_changed``): it packs those rows only.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import NamedTuple

from .cgroups import placement_labels
from .defaults import MAX_TASKS_DEFAULT
from .protocol import COUNTER_NAMES

log = logging.getLogger(__name__)

# Index of each counter in TaskInfo.counters (the order of struct taskcount).
TCPSNDPACKS, TCPSNDBYTES, TCPRCVPACKS, TCPRCVBYTES = 0, 1, 2, 3
UDPSNDPACKS, UDPSNDBYTES, UDPRCVPACKS, UDPRCVBYTES = 4, 5, 6, 7
COUNTER_COUNT = len(COUNTER_NAMES)


class Kind(IntEnum):
    """What a row describes; the shared table stores the value."""

    PROCESS = 1
    THREAD = 2
    EXITED = 3


class TaskRow(NamedTuple):
    """A snapshot of one task, as readers (table, server, CLI) see it."""

    kind: Kind
    id: int  # tgid for a process, tid for a thread
    tgid: int
    btime: int  # process start, seconds since the epoch (as atop computes it)
    command: str  # comm, at most 15 characters
    counters: tuple[int, ...]  # COUNTER_NAMES order
    last_activity_s: float  # epoch seconds of the last packet counted, 0.0 if none
    uid: int = -1  # -1 if unknown
    cmdline: str = ""  # as read while the process lived, "" if unknown
    unit: str = ""  # systemd unit, "" if none
    container: str = ""  # "runtime:id", "pod:UID", or ""
    cgroup: str = ""  # cgroup v2 path, "" if unknown


class ExitedTask(NamedTuple):
    """A finished process: what the exit list holds and SQLite keeps."""

    tgid: int
    btime: int
    command: str
    cmdline: str  # full command line as read while the process lived, "" if unknown
    uid: int  # -1 if unknown
    first_activity_s: float  # epoch seconds of the first packet counted
    last_activity_s: float
    exit_time_s: float  # epoch seconds when the process exited (or was seen gone)
    counters: tuple[int, ...]
    cgroup: str = ""  # cgroup v2 path as read while the process lived, "" if unknown
    unit: str = ""  # systemd unit the cgroup path names, "" if none
    container: str = ""  # "runtime:id", "pod:UID", or "" (cgroups.placement_labels)

    def row(self) -> TaskRow:
        """The exit list's row of the shared table (kind exited), identity included."""
        return TaskRow(
            Kind.EXITED,
            self.tgid,
            self.tgid,
            self.btime,
            self.command,
            self.counters,
            self.last_activity_s,
            self.uid,
            self.cmdline,
            self.unit,
            self.container,
            self.cgroup,
        )


class TaskInfo:
    """One taskinfo: a process (tgid) with the counters of all its threads."""

    __slots__ = (
        "tgid",
        "start_time_ticks",
        "btime",
        "command",
        "cmdline",
        "uid",
        "cgroup",
        "unit",
        "container",
        "counters",
        "first_activity_s",
        "last_activity_s",
        "exited",
        "threads",
        "changed",
        "change_log",
    )

    def __init__(
        self,
        tgid: int,
        start_time_ticks: int,
        btime: int,
        command: str,
        cmdline: str = "",
        uid: int = -1,
        cgroup: str = "",
    ) -> None:
        self.tgid = tgid
        self.start_time_ticks = start_time_ticks
        self.btime = btime
        self.command = command
        self.cmdline = cmdline
        self.uid = uid
        self.cgroup = cgroup
        self.unit, self.container = placement_labels(cgroup)
        self.counters = [0] * COUNTER_COUNT
        self.first_activity_s = 0.0
        self.last_activity_s = 0.0
        self.exited = False
        # Per-thread counters, only where the kernel told which thread owns a flow
        # (the eBPF helper); never derived from the process's.
        self.threads: dict[int, list[int]] = {}
        # Whether what its rows show changed since the shared table last packed them,
        # and the change log of the TaskTable it is in (TaskTable.take_changed).
        self.changed = False
        self.change_log: list[TaskInfo] | None = None

    def touch(self) -> None:
        """What its rows show changed (counters, identity, threads): the shared
        table packs them again at its next publish.  Whoever changes a field of
        ``row`` or ``thread_rows`` calls this (``add`` does)."""
        if not self.changed:
            self.changed = True
            if self.change_log is not None:
                self.change_log.append(self)

    def add(
        self, udp: bool, pending: tuple[int, int, int, int], now_s: float, tid: int = 0
    ) -> None:
        """Add a flow's settled counters (sent packets/bytes, received packets/bytes).

        With a tid (known from the kernel), the thread's counters grow too.
        """
        base = UDPSNDPACKS if udp else TCPSNDPACKS
        counters = self.counters
        counters[base] += pending[0]
        counters[base + 1] += pending[1]
        counters[base + 2] += pending[2]
        counters[base + 3] += pending[3]
        if tid:
            thread = self.threads.get(tid)
            if thread is None:
                thread = self.threads[tid] = [0] * COUNTER_COUNT
            thread[base] += pending[0]
            thread[base + 1] += pending[1]
            thread[base + 2] += pending[2]
            thread[base + 3] += pending[3]
        if not self.first_activity_s:
            self.first_activity_s = now_s
        self.last_activity_s = now_s
        if not self.changed:
            self.touch()

    def row(self, kind: Kind = Kind.PROCESS, task_id: int | None = None) -> TaskRow:
        return TaskRow(
            kind,
            self.tgid if task_id is None else task_id,
            self.tgid,
            self.btime,
            self.command,
            tuple(self.counters),
            self.last_activity_s,
            self.uid,
            self.cmdline,
            self.unit,
            self.container,
            self.cgroup,
        )

    def thread_rows(self) -> list[TaskRow]:
        return [
            TaskRow(
                Kind.THREAD,
                tid,
                self.tgid,
                self.btime,
                self.command,
                tuple(c),
                self.last_activity_s,
                self.uid,
                self.cmdline,
                self.unit,
                self.container,
                self.cgroup,
            )
            for tid, c in self.threads.items()
        ]

    def finished(self, exit_time_s: float) -> ExitedTask:
        """This task's exit-list record (a snapshot; ``TaskRegistry.finish`` finishes it).

        Packets counted after the exit (the kernel told it first) were its
        before it ended: the activity times are at most the exit time.
        """
        return ExitedTask(
            self.tgid,
            self.btime,
            self.command,
            self.cmdline,
            self.uid,
            min(self.first_activity_s, exit_time_s),
            min(self.last_activity_s, exit_time_s),
            exit_time_s,
            tuple(self.counters),
            self.cgroup,
            self.unit,
            self.container,
        )


class TaskTable:
    """Every live process that has been given packets, by tgid."""

    def __init__(self, max_tasks: int = MAX_TASKS_DEFAULT) -> None:
        self.max_tasks = max_tasks
        self.by_tgid: dict[int, TaskInfo] = {}
        self.overflow = 0  # tasks refused at the cap
        # For the shared table (TableWriter.publish_tasks): the tasks touched since the
        # last take_changed, and a number that moves whenever a task comes or goes.
        self.changed: list[TaskInfo] = []
        self.layout_version = 0

    def __len__(self) -> int:
        return len(self.by_tgid)

    def get(self, tgid: int) -> TaskInfo | None:
        return self.by_tgid.get(tgid)

    def admit(self, task: TaskInfo) -> bool:
        """Add a new task; False (and the overflow counter grows) past the cap."""
        if len(self.by_tgid) >= self.max_tasks and task.tgid not in self.by_tgid:
            self.overflow += 1
            return False
        old = self.by_tgid.get(task.tgid)
        if old is not task:
            self.layout_version += 1
            if old is not None:
                old.change_log = None
        self.by_tgid[task.tgid] = task
        task.change_log = self.changed
        task.changed = False
        task.touch()
        return True

    def remove(self, task: TaskInfo) -> None:
        if self.by_tgid.get(task.tgid) is task:
            del self.by_tgid[task.tgid]
            self.layout_version += 1
            task.change_log = None

    def take_changed(self) -> list[TaskInfo]:
        """The tasks touched since the last call (some may have left the table since)."""
        changed = self.changed[:]
        self.changed.clear()  # in place: the tasks hold this list
        for task in changed:
            task.changed = False
        return changed

    def rows(self, threads: bool = False) -> list[TaskRow]:
        rows = [task.row() for task in self.by_tgid.values()]
        if threads:
            for task in self.by_tgid.values():
                if task.threads:
                    rows.extend(task.thread_rows())
        return rows
