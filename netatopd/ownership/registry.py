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
ownership package applies it.

Called by ``Resolver`` (``task``, ``task_named_by_kernel``), ``Sweeper``
(``sweep``) and the daemon, which builds it with the exit list and journal.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

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
        return task

    def task_named_by_kernel(self, tgid: int, comm: str) -> TaskInfo | None:
        """The TaskInfo of a process the kernel named; from its record if it is gone already.

        A process that finished before it was looked at keeps the name the
        kernel recorded; its start time is unknown (btime 0), and the next
        sweep finishes it with the packets it was given.  One already
        finished is not made again: None.
        """
        task = self.task(tgid)
        if task is not None:
            return task
        task = self.tasks.get(tgid)
        if task is not None:
            return task
        if tgid in self.finished:
            return None
        task = TaskInfo(tgid, -1, 0, comm)
        return task if self.tasks.admit(task) else None

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
