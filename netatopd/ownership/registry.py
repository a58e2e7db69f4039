"""The task registry: the one place a task (taskinfo) is made and finished.

Owns the ``TaskTable`` it is given (one ``TaskInfo`` per tgid, tasks.py) and
the memory of the tgids already finished, so that a late record of the
eBPF helper does not bring a finished process back.  A task is made from
/proc (``task``: stat for comm and start time, cmdline, uid) or, for a
process that finished before it was looked at, from what the kernel recorded
(``task_named_by_kernel``).  A task is finished in ``finish`` only: marked
exited, out of the table, onto the exit list and the atop socket's journal,
then every ``on_finish`` listener is told (``Resolver`` frees their flows);
every ``before_finish`` hook is told first (the daemon reads the kernel
path's sums there, after the processes were seen gone).

Whether a task is still its process is ``procfs.same_process`` (pid plus
start time); here and in ``InodeIndex`` (a pid's socket holdings) the
ownership package applies it.  A task's (tgid, btime) is its key in the
history, so btime is never 0: where the start time cannot be read, the time
the kernel first named the process stands for it (``task_named_by_kernel``).

Also owns ``restored``: the counters of processes that were running when the
daemon last stopped, read back from the history at start; a task made for
one of them (same tgid and btime) continues from them instead of zero.

With an ``IdentityBook`` (identities.py) a task takes the identity read at
the process's fork or exec (command line, uid, cgroup, and so unit and
container), also for a process already gone when its packets are attributed;
``read_execs`` reads the identities of a batch of the proc connector's
events first (execs, then forks), ``process_events`` applies the events
(a task finished at its exit with the kernel's exit time) and
``finish_ended`` finishes tasks made for processes that had already ended.
A task finished at its exit is kept a while (``_recent``, LATE_PACKETS_S):
packets it sent before its exit and seen after (the capture hands them over
in blocks) are given to it when its zombie is found holding the flow, or, as
the resolver's last resort, when the kernel named it before its exit
(``late_task_named_by_kernel``); it is then finished again with the same exit
time, its exit-list entry replaced and only the new counts summed.

Called by ``Resolver`` (``task``, ``task_named_by_kernel``), ``Sweeper``
(``sweep``) and the daemon, which builds it with the exit list and journal,
calls ``reap`` between sweeps, ``process_events`` as events come,
``finish_ended`` at each housekeeping and ``sweep`` once more when it stops.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping

from ..cgroups import placement_labels
from ..exitlist import ExitJournal, ExitList
from ..netlink.connector import ProcessEvent, ProcEventKind, wall_time_s
from ..procfs import ProcAccessDenied, ProcessGone, ProcFS, same_process
from ..tasks import COUNTER_COUNT, TaskInfo, TaskTable
from .identities import IdentityBook, Known

REMEMBER_FINISHED_MAX = 65_536  # finished tgids remembered (kernel records arrive late)
EXIT_SLACK_S = 0.01  # clock conversions (monotonic -> wall) differ by this much at most
# A process finished at its exit event may still have packets on their way (the capture
# hands them over in blocks): for this long its task can take them (``_late_task``).
LATE_PACKETS_S = 10.0
LATE_TASKS_MAX = 16_384  # finished tasks kept for late packets


def started_after(start_time_ticks: int, seen_monotonic_ns: int, procfs: ProcFS) -> bool:
    """Whether a process that started at ``start_time_ticks`` (clock ticks after boot,
    /proc/PID/stat) started after the kernel's record at ``seen_monotonic_ns``.

    Start times count from boot including time suspended (CLOCK_BOOTTIME), the
    records' times not (CLOCK_MONOTONIC): the record's time is moved to boot
    time before the two are compared.  A process that started in the record's
    clock tick did not start after it (ticks are 10 ms: the one the kernel saw
    can have started in that tick).
    """
    suspended_ns = max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns())
    seen_ticks = (seen_monotonic_ns + suspended_ns) * procfs.clock_ticks_per_s // 1_000_000_000
    return start_time_ticks > seen_ticks


class TaskRegistry:
    """Every process given packets: made from /proc, checked, finished."""

    def __init__(
        self,
        tasks: TaskTable,
        procfs: ProcFS,
        exit_list: ExitList,
        journal: ExitJournal | None = None,
        clock: Callable[[], float] = time.time,
        identities: IdentityBook | None = None,
    ) -> None:
        self.tasks = tasks
        self.procfs = procfs
        self.exit_list = exit_list
        self.journal = journal  # None: no atop socket reads finished processes
        self.clock = clock  # epoch seconds: exit times
        # Identities read at fork and exec (the proc connector); None: polling only.
        self.identities = identities
        self.identity_unknown = 0  # tasks made with no identity known (btime stands in)
        # tgid -> exit time of tasks made for processes that had already ended.
        self._ended: dict[int, float] = {}
        # tgids sent to the exit list -> the start time of the process last finished
        self.finished: OrderedDict[int, int] = OrderedDict()
        # The counters of every process finished so far, summed (the balance's
        # finished processes, also those no longer on the exit list).
        self.finished_counters = [0] * COUNTER_COUNT
        # (tgid, btime) -> counters of a process running when the daemon last stopped.
        self.restored: dict[tuple[int, int], tuple[int, ...]] = {}
        self.restored_tasks = 0  # tasks that continued from restored counters
        self._reap_queue: deque[int] = deque()  # tgids reap() has still to look at
        # tgid -> (task, exit time, monotonic time finished, counters already summed in
        # finished_counters): finished tasks that late packets may still reach.
        self._recent: OrderedDict[int, tuple[TaskInfo, float, float, tuple[int, ...]]] = (
            OrderedDict()
        )
        self.late_tasks = 0  # finished tasks that took packets seen after their exit
        # tgids whose leader thread exited while other threads ran on: finished at the
        # exit event after which none runs (or by the sweep once /proc has no process).
        self._leader_gone: set[int] = set()
        self.leader_exits_deferred = 0  # leader exits that did not end their process
        # Told (finished tasks, now_s) after every finish.
        self.on_finish: list[Callable[[list[TaskInfo], float], None]] = []
        # Told (tasks about to finish) first, once their processes are known to be
        # gone: the kernel path reads the sums still in the kernel then (every packet
        # of a gone process is there), so a task is never finished before its last
        # packets are counted.
        self.before_finish: list[Callable[[list[TaskInfo]], None]] = []

    def task(self, pid: int) -> TaskInfo | None:
        """The TaskInfo of live process ``pid``, made on first sight; None if it is gone.

        A task whose pid now names another process (another start time) is
        finished, and the new process gets a task of its own, starting at zero.
        None too when the table is full (``TaskTable.overflow`` counts it).
        """
        try:
            stat = self.procfs.stat(pid)
        except (ProcessGone, ProcAccessDenied):
            return None
        task = self.tasks.get(pid)
        if task is not None:
            if same_process(stat, task.start_time_ticks):
                return task
            self.finish([task], self.clock())
        late = self._late_task(pid, stat.start_time_ticks)
        if late is not None:
            return late  # finished already (a zombie now): its late packets are its
        known = self._known(pid, stat.start_time_ticks)
        if known is not None:
            identity = known.identity
            cmdline, uid, cgroup = identity.cmdline, identity.uid, identity.cgroup
        else:
            try:
                cmdline = self.procfs.cmdline(pid)
                uid = self.procfs.uid(pid)
            except (ProcessGone, ProcAccessDenied):
                cmdline, uid = "", -1
            cgroup = ""
        task = TaskInfo(
            pid,
            stat.start_time_ticks,
            self.procfs.btime(stat.start_time_ticks),
            stat.comm,
            cmdline,
            uid,
            cgroup,
        )
        if not self.tasks.admit(task):
            return None
        if self.restored:
            counters = self.restored.pop((task.tgid, task.btime), None)
            if counters is not None:
                task.counters[:] = counters
                task.touch()
                self.restored_tasks += 1
        return task

    def restore(self, counters: Mapping[tuple[int, int], tuple[int, ...]]) -> None:
        """Counters (by tgid, btime) that tasks made later start from (see ``restored``)."""
        self.restored.update(counters)

    def task_named_by_kernel(
        self, tgid: int, comm: str, seen_monotonic_ns: int = 0
    ) -> TaskInfo | None:
        """The TaskInfo of a process the kernel named; from its record if it is gone already.

        A process that finished before it was looked at keeps the name the
        kernel recorded; its start time is unknown, so the time the kernel
        saw it (``seen_monotonic_ns``, CLOCK_MONOTONIC, else now) stands for
        it in btime: between the process's start and its exit, it cannot be
        another process's with the same pid (btime 0 would be every such
        process's, and merge them in the history).  The next sweep finishes
        it with the packets it was given.  One already finished is not made
        again: None.  The process at ``/proc/tgid`` is the one named only if it
        started before the record; else the pid has come round to another
        process, which is never given the record's packets.  Nor is the pid's
        earlier process, taken back for its late packets, given the record of
        a later one: a task whose process ended before the record (its exit
        known) gives way to the process the identity book knows, else to none.
        """
        seen_ns = seen_monotonic_ns if seen_monotonic_ns > 0 else time.monotonic_ns()
        seen_ticks = seen_ns * self.procfs.clock_ticks_per_s // 1_000_000_000  # since boot
        try:
            stat = self.procfs.stat(tgid)
        except (ProcessGone, ProcAccessDenied):
            stat = None
        # The pid alone does not name the process the kernel saw: a process that
        # started after the record holds the pid of one that has ended since (a busy
        # host or a small pid_max reuses pids within a second).  Its packets stay the
        # ended process's (its task, finished by the next reap after the capture is
        # read), never the newcomer's.
        if stat is not None and not started_after(stat.start_time_ticks, seen_ns, self.procfs):
            return self.task(tgid)
        task = self.tasks.get(tgid)
        if task is not None:
            if task.start_time_ticks >= 0 and started_after(
                task.start_time_ticks, seen_ns, self.procfs
            ):
                return None  # the pid's later process has the task: the ended one is not known
            if not self._ended_before(task, seen_ns):
                return task
            # The table's task is an earlier holder of the pid (taken back for its late
            # packets), ended before the record: the record names a later process.
        known = self.identities.fresh(tgid) if self.identities is not None else None
        if known is not None and (
            known.identity.start_time_ticks > seen_ticks + 1  # born after: another process
            or (known.exited_s and known.exited_s < wall_time_s(seen_ns) - EXIT_SLACK_S)
            or (task is not None and known.identity.start_time_ticks == task.start_time_ticks)
            # the process finished already under this pid: not made twice
            or self.finished.get(tgid) == known.identity.start_time_ticks
        ):
            known = None  # the pid's earlier or later holder, not the one the kernel saw
        if known is None and (task is not None or tgid in self.finished):
            return None
        if task is not None:
            self.finish([task], self.clock())  # its pid is the named process's now
        if known is not None:
            # Born (and maybe ended) before we looked: who it was, read at fork and exec.
            identity = known.identity
            task = TaskInfo(
                tgid,
                identity.start_time_ticks,
                known.btime,
                identity.comm or comm,
                identity.cmdline,
                identity.uid,
                identity.cgroup,
            )
            if not self.tasks.admit(task):
                return None
            if known.exited_s:
                self._ended[tgid] = known.exited_s  # finished once its packets are in
            return task
        self.identity_unknown += 1
        task = TaskInfo(tgid, -1, self.procfs.btime(seen_ticks), comm)
        return task if self.tasks.admit(task) else None

    def _ended_before(self, task: TaskInfo, seen_monotonic_ns: int) -> bool:
        """Whether task's process is known to have ended before the kernel's record at
        ``seen_monotonic_ns`` (a task taken back for late packets, or one whose exit
        the identity book holds): then the record is not its."""
        exit_s = self._ended.get(task.tgid)
        if exit_s is None and self.identities is not None:
            known = self.identities.get(task.tgid)
            if known is not None and known.identity.start_time_ticks == task.start_time_ticks:
                exit_s = known.exited_s or None
        return exit_s is not None and exit_s < wall_time_s(seen_monotonic_ns) - EXIT_SLACK_S

    def late_task_named_by_kernel(self, tgid: int, seen_monotonic_ns: int) -> TaskInfo | None:
        """The task of finished process tgid, if the kernel saw it before its exit.

        For a flow whose socket is gone and held by nobody (the resolver's last
        resort): the kernel's record is the process's own then, not one left
        behind for a newer holder of the flow.
        """
        recent = self._recent.get(tgid)
        if recent is None or wall_time_s(seen_monotonic_ns) > recent[1] + EXIT_SLACK_S:
            return None
        return self._late_task(tgid, recent[0].start_time_ticks)

    def _late_task(self, tgid: int, start_time_ticks: int) -> TaskInfo | None:
        """A task finished within LATE_PACKETS_S, taken back for packets seen late.

        Its counters go on from where they were; it is finished again at the
        next housekeeping (``finish_ended``) with the same exit time, so the
        exit list and the history get its final counters (the history row of
        (tgid, btime) is updated, the earlier exit-list entry replaced).
        """
        recent = self._recent.get(tgid)
        if recent is None or recent[0].start_time_ticks != start_time_ticks:
            return None
        task, exit_s, finished_s, _summed = recent
        current = self.tasks.get(tgid)
        if current is not None and current is not task:
            return None  # the pid's later process has the table's task: never replaced
        if time.monotonic() - finished_s > LATE_PACKETS_S or not self.tasks.admit(task):
            return None
        task.exited = False
        self._ended[tgid] = exit_s
        return task

    def _known(self, pid: int, start_time_ticks: int) -> Known | None:
        """Process (pid, start time) read now (it may have changed cgroup), else as known;
        named by the kernel's record of its exec when one waits (``learn_now``)."""
        book = self.identities
        if book is None:
            return None
        for known in (book.learn_now(pid), book.get(pid)):
            if known is not None and known.identity.start_time_ticks == start_time_ticks:
                return known
        return None

    def read_execs(self, events: list[ProcessEvent]) -> set[int]:
        """Read the identities of the processes that exec'd or forked in ``events``.

        Called first for a batch of events (before its packets are attributed,
        before anything slower): execs first, as a program may end within a
        millisecond of its exec and what was read at its fork is its parent's;
        then the forks not read already.  Returns the tgids read.
        """
        read_now: set[int] = set()
        book = self.identities
        if book is None:
            return read_now
        unread_execs: set[int] = set()  # exec'd, gone before the read
        for event in events:
            if event.kind == ProcEventKind.EXEC and event.tgid not in read_now:
                if book.learn(event.tgid, after_exec=True) is None:
                    unread_execs.add(event.tgid)
                read_now.add(event.tgid)
        for event in events:
            if event.kind != ProcEventKind.FORK or not event.is_process:
                continue
            tgid = event.tgid
            if tgid in read_now and tgid not in unread_execs:
                continue
            if tgid not in read_now and book.learn(tgid) is not None:
                read_now.add(tgid)
                continue
            read_now.add(tgid)
            earlier = book.get(tgid)  # None, the pid's earlier holder, or the unread exec
            exec_seen = tgid in unread_execs
            if earlier is None or earlier.exited_s or exec_seen:
                book.born(tgid, event.parent_tgid, event.timestamp_ns, exec_seen=exec_seen)
            unread_execs.discard(tgid)
        return read_now

    def process_events(
        self, events: list[ProcessEvent], read_now: set[int] | None = None
    ) -> list[TaskInfo]:
        """Fork, exec and exit as the proc connector told them; returns the tasks finished.

        A fork or exec of a process reads its identity (it may live a
        millisecond), once a process a batch (``read_now``: the tgids
        ``read_execs`` read already); an exit of a process (pid == tgid)
        finishes its task at once, with the exit time the kernel gave, unless
        other threads of it run on (its leader thread ended alone): it is then
        finished at the exit event of a thread after which none runs.
        """
        book = self.identities
        if book is None:
            return []
        if read_now is None:
            read_now = self.read_execs(events)
        ended: list[TaskInfo] = []
        exit_times: dict[int, float] = {}
        for event in events:
            kind = event.kind
            if kind == ProcEventKind.EXIT:
                if not event.is_process and event.tgid not in self._leader_gone:
                    continue
                task = self.tasks.get(event.tgid)
                if event.tgid not in exit_times and self._other_threads_run(event.tgid, task):
                    if event.is_process and event.tgid not in self._leader_gone:
                        self._leader_gone.add(event.tgid)
                        self.leader_exits_deferred += 1
                    continue
                self._leader_gone.discard(event.tgid)
                exit_s = wall_time_s(event.timestamp_ns)
                known = book.exited(event.tgid, exit_s)
                if task is None or task.tgid in exit_times:
                    continue
                if known is None or task.start_time_ticks in (
                    -1,
                    known.identity.start_time_ticks,
                ):
                    ended.append(task)
                    exit_times[task.tgid] = exit_s
            elif kind == ProcEventKind.FORK:
                if event.is_process and event.tgid not in read_now:
                    book.learn(event.tgid)
                    read_now.add(event.tgid)
            elif kind in (ProcEventKind.EXEC, ProcEventKind.COMM, ProcEventKind.UID):
                if event.tgid not in read_now:
                    book.learn(event.tgid)
                    read_now.add(event.tgid)
                task = self.tasks.get(event.tgid)
                known = book.get(event.tgid)
                if (
                    task is not None
                    and known is not None
                    and known.identity.start_time_ticks == task.start_time_ticks
                ):
                    identity = known.identity
                    task.command = identity.comm or task.command
                    task.cmdline, task.uid = identity.cmdline, identity.uid
                    if identity.cgroup != task.cgroup:
                        task.cgroup = identity.cgroup
                        task.unit, task.container = placement_labels(identity.cgroup)
                    task.touch()
        self.finish(ended, self.clock(), exit_times)
        return ended

    def _other_threads_run(self, tgid: int, task: TaskInfo | None) -> bool:
        """Whether a thread of process tgid (task's, or the one the identity book knows)
        other than its leader still runs, read now.

        One read of /proc/PID/stat for a process of one thread; its threads' stat
        files only when it had more.
        """
        procfs = self.procfs
        start_ticks: int | None = None
        if task is not None:
            start_ticks = task.start_time_ticks
        elif self.identities is not None and (known := self.identities.get(tgid)) is not None:
            start_ticks = known.identity.start_time_ticks
        try:
            stat = procfs.stat(tgid)
            if stat.num_threads <= 1 or (
                start_ticks is not None and not same_process(stat, start_ticks)
            ):
                return False
            for tid in procfs.thread_ids(tgid):
                if tid != tgid and procfs.stat(tid).state not in ("Z", "X"):
                    return True
        except (ProcessGone, ProcAccessDenied):
            return False
        return False

    def has_ended(self) -> bool:
        """True when tasks of processes that had already ended wait for finish_ended."""
        return bool(self._ended)

    def finish_ended(self, now_s: float) -> list[TaskInfo]:
        """Finish the tasks made for processes that had already ended (their packets are in)."""
        if not self._ended:
            return []
        exit_times, self._ended = self._ended, {}
        tasks = [task for tgid in exit_times if (task := self.tasks.get(tgid)) is not None]
        self.finish(tasks, now_s, exit_times)
        return tasks

    def reap(self, now_s: float, limit: int) -> list[TaskInfo]:
        """Finish the processes that are gone, looking at most limit tasks (round robin).

        A cheap part of the sweep, run often between sweeps so that a finished
        process reaches the exit list and the history within about a second;
        only ``ProcessGone`` (or another process on the pid) finishes a task.
        Returns the tasks finished.
        """
        queue = self._reap_queue
        if not queue:
            queue.extend(self.tasks.by_tgid)
        finished: list[TaskInfo] = []
        procfs = self.procfs
        for _ in range(min(limit, len(queue))):
            task = self.tasks.get(queue.popleft())
            if task is None:
                continue
            try:
                alive = same_process(procfs.stat(task.tgid), task.start_time_ticks)
            except ProcessGone:
                alive = False
            except ProcAccessDenied:
                alive = True
            if not alive:
                finished.append(task)
        self.finish(finished, now_s)
        return finished

    def sweep(self, now_s: float) -> list[TaskInfo]:
        """Finish every task whose process is gone; drop the threads that ended of the others.

        A process /proc will not show us (permission) is taken to be alive.
        Returns the tasks finished.
        """
        finished: list[TaskInfo] = []
        procfs = self.procfs
        for task in list(self.tasks.by_tgid.values()):
            try:
                alive = same_process(procfs.stat(task.tgid), task.start_time_ticks)
                if alive and task.threads:
                    # Threads that ended are dropped (the process keeps their counts).
                    running = set(procfs.thread_ids(task.tgid))
                    for tid in [tid for tid in task.threads if tid not in running]:
                        del task.threads[tid]
                        task.touch()
            except ProcessGone:
                alive = False
            except ProcAccessDenied:
                alive = True
            if not alive:
                finished.append(task)
        self.finish(finished, now_s)
        return finished

    def finish(
        self, tasks: list[TaskInfo], now_s: float, exit_times: Mapping[int, float] | None = None
    ) -> None:
        """These processes finished: out of the table, onto the exit list and the journal.

        exit_times: tgid -> exit time (epoch seconds) where the kernel told it;
        else the identity book's, else now.
        """
        if not tasks:
            return
        for hook in self.before_finish:
            hook(tasks)
        tasks = [task for task in tasks if not task.exited]  # finished by the hook's pass
        if not tasks:
            return
        book = self.identities
        for task in tasks:
            task.exited = True
            self.finished[task.tgid] = task.start_time_ticks
            self.finished.move_to_end(task.tgid)
            self.tasks.remove(task)
            exit_s = exit_times.get(task.tgid) if exit_times else None
            recent = self._recent.pop(task.tgid, None)
            if recent is not None and recent[0] is not task:
                recent = None
            if recent is not None:  # finished before, took late packets: same exit time
                exit_s = recent[1]
            if exit_s is None and book is not None:
                known = book.get(task.tgid)
                if (
                    known is not None
                    and known.exited_s
                    and known.identity.start_time_ticks == task.start_time_ticks
                ):
                    exit_s = known.exited_s
            exited = task.finished(exit_s if exit_s is not None else self.clock())
            summed: tuple[int, ...] = (0,) * COUNTER_COUNT
            if recent is not None:
                if exited.counters == recent[3]:  # taken back, but no late packet came
                    self._recent[task.tgid] = recent
                    continue
                summed = recent[3]
                self.late_tasks += 1
                self.exit_list.discard(exited.tgid, exited.btime)
            for index, value in enumerate(exited.counters):
                self.finished_counters[index] += value - summed[index]
            self._recent[task.tgid] = (task, exited.exit_time_s, time.monotonic(), exited.counters)
            self.exit_list.add(exited)
            if self.journal is not None:
                self.journal.append(exited)  # for the atop socket's once-more rule
        while len(self.finished) > REMEMBER_FINISHED_MAX:
            self.finished.popitem(last=False)
        recent_limit = time.monotonic() - LATE_PACKETS_S
        late = self._recent
        while late and (len(late) > LATE_TASKS_MAX or next(iter(late.values()))[2] < recent_limit):
            late.popitem(last=False)
        for listener in self.on_finish:
            listener(tasks, now_s)
