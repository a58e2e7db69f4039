"""The identity book and the registry's use of process events (no kernel: fed by hand).

Ground truth: the identities a fake /proc gives while a process "runs", and
the events the test hands in; a process removed from the fake /proc is gone.
"""

from __future__ import annotations

import time

from netatopd.exitlist import ExitJournal, ExitList
from netatopd.netlink.connector import ProcessEvent, ProcEventKind
from netatopd.ownership.identities import IdentityBook
from netatopd.ownership.registry import TaskRegistry
from netatopd.procfs import Identity, ProcessGone, ProcStat
from netatopd.tasks import TaskTable

HZ = 100
BOOT_S = 1_700_000_000
DOCKER_ID = "ab" * 32
DOCKER_CGROUP = f"/system.slice/docker-{DOCKER_ID}.scope"


class FakeProc:
    """pid -> Identity while the process runs; removed when it is gone."""

    clock_ticks_per_s = HZ
    proc_root = "/fake"

    def __init__(self) -> None:
        self.running: dict[int, Identity] = {}
        self.reads = 0
        self.state = "S"  # of every process's stat

    def read_identity(self, pid: int, proc_root: str) -> Identity:
        self.reads += 1
        if pid not in self.running:
            raise ProcessGone(pid)
        return self.running[pid]

    def stat(self, pid: int) -> ProcStat:
        if pid not in self.running:
            raise ProcessGone(pid)
        who = self.running[pid]
        return ProcStat(pid, who.comm, self.state, who.ppid, 1, who.start_time_ticks)

    def btime(self, start_time_ticks: int) -> int:
        return BOOT_S + start_time_ticks // HZ

    def cmdline(self, pid: int) -> str:
        raise AssertionError("the identity book reads command lines")

    def uid(self, pid: int) -> int:
        raise AssertionError("the identity book reads uids")

    def thread_ids(self, pid: int) -> list[int]:
        return [pid]


def identity(pid: int, comm: str, start: int, cgroup: str = "/user.slice") -> Identity:
    return Identity(pid, 1, start, comm, f"/usr/bin/{comm} --tag {pid}", 1000, cgroup)


def event(kind: ProcEventKind, pid: int, timestamp_ns: int = 0) -> ProcessEvent:
    return ProcessEvent(kind, pid, pid, 1, 1, timestamp_ns or time.monotonic_ns(), 0, 0, 0, "", 0)


def setup() -> tuple[FakeProc, IdentityBook, TaskRegistry]:
    proc = FakeProc()
    book = IdentityBook(proc.proc_root, proc.btime, reader=proc.read_identity)
    registry = TaskRegistry(
        TaskTable(),
        proc,  # type: ignore[arg-type]
        ExitList(lifetime_s=60),
        ExitJournal(),
        identities=book,
    )
    return proc, book, registry


def test_a_process_gone_before_it_was_attributed_keeps_its_identity() -> None:
    proc, book, registry = setup()
    proc.running[10] = identity(10, "sh", 5000)
    registry.process_events([event(ProcEventKind.FORK, 10)])
    proc.running[10] = identity(10, "curl", 5000, DOCKER_CGROUP)
    registry.process_events([event(ProcEventKind.EXEC, 10)])
    exit_ns = time.monotonic_ns()
    del proc.running[10]
    registry.process_events([event(ProcEventKind.EXIT, 10, exit_ns)])
    # Its packet is attributed now, by the kernel's record (seen during its life).
    task = registry.task_named_by_kernel(10, "curl", exit_ns - 1000)
    assert task is not None
    assert (task.btime, task.command, task.cmdline, task.uid) == (
        BOOT_S + 50,
        "curl",
        "/usr/bin/curl --tag 10",
        1000,
    )
    assert (task.unit, task.container) == (f"docker-{DOCKER_ID}.scope", f"docker:{DOCKER_ID}")
    task.add(True, (1, 100, 0, 0), time.time())
    finished = registry.finish_ended(time.time())
    assert finished == [task]
    (exited,) = registry.exit_list.snapshot()
    assert exited.container == f"docker:{DOCKER_ID}" and exited.btime == BOOT_S + 50
    assert abs(exited.exit_time_s - time.time()) < 5  # the kernel's time, as wall time
    assert exited.last_activity_s <= exited.exit_time_s
    assert registry.identity_unknown == 0


def test_exit_of_a_task_finishes_it_at_once_with_the_kernels_time() -> None:
    proc, book, registry = setup()
    proc.running[20] = identity(20, "wget", 7000)
    task = registry.task(20)
    assert task is not None and task.cmdline == "/usr/bin/wget --tag 20"
    del proc.running[20]
    past_ns = time.monotonic_ns() - 2_000_000_000  # it exited two seconds ago
    finished = registry.process_events([event(ProcEventKind.EXIT, 20, past_ns)])
    assert finished == [task] and task.exited
    (exited,) = registry.exit_list.snapshot()
    assert 1.9 < time.time() - exited.exit_time_s < 2.1
    # A thread's exit (pid != tgid) finishes nothing.
    proc.running[21] = identity(21, "w", 7100)
    assert registry.task(21) is not None
    thread_exit = event(ProcEventKind.EXIT, 22)._replace(tgid=21)
    assert registry.process_events([thread_exit]) == []


def test_a_zombie_keeps_the_command_line_read_while_it_ran() -> None:
    proc, book, registry = setup()
    proc.running[30] = identity(30, "dig", 9000)
    book.learn(30)
    proc.running[30] = proc.running[30]._replace(cmdline="")  # exited, not yet reaped
    task = registry.task(30)
    assert task is not None and task.cmdline == "/usr/bin/dig --tag 30"


def test_unreadable_and_unknown_are_counted_not_guessed() -> None:
    proc, book, registry = setup()
    assert book.learn(40) is None and book.unreadable == 1
    task = registry.task_named_by_kernel(40, "ghost", time.monotonic_ns())
    assert task is not None and task.uid == -1 and task.cmdline == "" and task.btime > 0
    assert registry.identity_unknown == 1


def test_the_book_is_bounded_and_forgets_ended_processes_after_the_grace() -> None:
    now = [100.0]
    proc = FakeProc()
    book = IdentityBook(
        proc.proc_root,
        proc.btime,
        max_entries=3,
        grace_s=10,
        monotonic=lambda: now[0],
        reader=proc.read_identity,
    )
    for pid in range(1, 6):
        proc.running[pid] = identity(pid, "p", pid)
        book.learn(pid)
    assert sorted(book.known) == [3, 4, 5] and book.dropped == 2
    book.exited(4, 1.0)
    now[0] += 10.5
    assert book.expire() == 1 and sorted(book.known) == [3, 5]


def test_a_finished_zombie_is_not_brought_back_with_zero_counters() -> None:
    """Exit event, then a late lookup while the process is a zombie (not reaped yet):
    no second task; else its second finish would give the exit list a second entry
    and overwrite its history row (same tgid, btime) with zero counters."""
    proc, book, registry = setup()
    proc.running[40] = identity(40, "curl", 11000)
    task = registry.task(40)
    assert task is not None
    task.add(True, (3, 300, 0, 0), time.time())
    assert registry.process_events([event(ProcEventKind.EXIT, 40)]) == [task]
    zombie = proc.running[40]
    proc.running[40] = zombie._replace(cmdline="")  # exited, not yet reaped
    proc.state = "Z"
    assert registry.task(40) is None
    assert registry.task_named_by_kernel(40, "curl", time.monotonic_ns()) is None
    del proc.running[40]  # reaped
    assert registry.reap(time.time(), 100) == [] and registry.sweep(time.time()) == []
    (exited,) = registry.exit_list.snapshot()
    assert exited.tgid == 40 and sum(exited.counters) == 303
    # The pid's next process (another start time) gets a task of its own.
    proc.state = "S"
    proc.running[40] = identity(40, "wget", 12000)
    again = registry.task(40)
    assert again is not None and again.command == "wget" and again is not task
