"""The task registry: the one place a task (taskinfo) is made and finished.

Owns the ``TaskTable`` it is given (one ``TaskInfo`` per tgid, tasks.py) and
the memory of the tgids already finished, so that a late record of the
eBPF helper does not bring a finished process back.  A task is made from
/proc (``task``: stat for comm and start time, cmdline, uid) or, for a
process that finished before it was looked at, from what the kernel recorded
(``task_named_by_kernel``).  A task is finished in ``finish`` only: marked
exited, out of the table, onto the exit list and the atop socket's journal,
then every ``on_finish`` listener is told (``Resolver`` frees their flows).

Whether a task is still its process is ``procfs.same_process`` (pid plus
start time); here and in ``InodeIndex`` (a pid's socket holdings) the
ownership package applies it.  A task's (tgid, btime) is its key in the
history, so btime is never 0: where the start time cannot be read, the time
the kernel first named the process stands for it (``task_named_by_kernel``).

Also owns ``restored``: the counters of processes that were running when the
daemon last stopped, read back from the history at start; a task made for
one of them (same tgid and btime) continues from them instead of zero.

Called by ``Resolver`` (``task``, ``task_named_by_kernel``), ``Sweeper``
(``sweep``) and the daemon, which builds it with the exit list and journal,
calls ``reap`` between sweeps and ``sweep`` once more when it stops.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping

from ..exitlist import ExitJournal, ExitList
from ..procfs import ProcAccessDenied, ProcessGone, ProcFS, same_process
from ..tasks import COUNTER_COUNT, TaskInfo, TaskTable

REMEMBER_FINISHED_MAX = 65_536  # finished tgids remembered (kernel records arrive late)


class TaskRegistry:
    """Every process given packets: made from /proc, checked, finished."""

    def __init__(
        self,
        tasks: TaskTable,
        procfs: ProcFS,
        exit_list: ExitList,
        journal: ExitJournal | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tasks = tasks
        self.procfs = procfs
        self.exit_list = exit_list
        self.journal = journal  # None: no atop socket reads finished processes
        self.clock = clock  # epoch seconds: exit times
        self.finished: OrderedDict[int, None] = OrderedDict()  # tgids sent to the exit list
        # The counters of every process finished so far, summed (the balance's
        # finished processes, also those no longer on the exit list).
        self.finished_counters = [0] * COUNTER_COUNT
        # (tgid, btime) -> counters of a process running when the daemon last stopped.
        self.restored: dict[tuple[int, int], tuple[int, ...]] = {}
        self.restored_tasks = 0  # tasks that continued from restored counters
        self._reap_queue: deque[int] = deque()  # tgids reap() has still to look at
        # Told (finished tasks, now_s) after every finish.
        self.on_finish: list[Callable[[list[TaskInfo], float], None]] = []

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
        try:
            cmdline = self.procfs.cmdline(pid)
            uid = self.procfs.uid(pid)
        except (ProcessGone, ProcAccessDenied):
            cmdline, uid = "", -1
        task = TaskInfo(
            pid,
            stat.start_time_ticks,
            self.procfs.btime(stat.start_time_ticks),
            stat.comm,
            cmdline,
            uid,
        )
        if not self.tasks.admit(task):
            return None
        if self.restored:
            counters = self.restored.pop((task.tgid, task.btime), None)
            if counters is not None:
                task.counters[:] = counters
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
        again: None.
        """
        task = self.task(tgid)
        if task is not None:
            return task
        task = self.tasks.get(tgid)
        if task is not None:
            return task
        if tgid in self.finished:
            return None
        seen_ns = seen_monotonic_ns if seen_monotonic_ns > 0 else time.monotonic_ns()
        seen_ticks = seen_ns * self.procfs.clock_ticks_per_s // 1_000_000_000  # since boot
        task = TaskInfo(tgid, -1, self.procfs.btime(seen_ticks), comm)
        return task if self.tasks.admit(task) else None

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
            except ProcessGone:
                alive = False
            except ProcAccessDenied:
                alive = True
            if not alive:
                finished.append(task)
        self.finish(finished, now_s)
        return finished

    def finish(self, tasks: list[TaskInfo], now_s: float) -> None:
        """These processes finished: out of the table, onto the exit list and the journal."""
        if not tasks:
            return
        for task in tasks:
            task.exited = True
            self.finished[task.tgid] = None
            self.finished.move_to_end(task.tgid)
            self.tasks.remove(task)
            exited = task.finished(self.clock())
            for index, value in enumerate(exited.counters):
                self.finished_counters[index] += value
            self.exit_list.add(exited)
            if self.journal is not None:
                self.journal.append(exited)  # for the atop socket's once-more rule
        while len(self.finished) > REMEMBER_FINISHED_MAX:
            self.finished.popitem(last=False)
        for listener in self.on_finish:
            listener(tasks, now_s)
