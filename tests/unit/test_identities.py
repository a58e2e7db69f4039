"""The identity book and the registry's use of process events (no kernel: fed by hand).

Ground truth: the identities a fake /proc gives while a process "runs", and
the events the test hands in; a process removed from the fake /proc is gone.
"""

from __future__ import annotations

import time

from netatopd.ebpf.execids import ARGS_BYTES, ExecRecord
from netatopd.exitlist import ExitJournal, ExitList
from netatopd.netlink.connector import ProcessEvent, ProcEventKind
from netatopd.ownership.identities import IdentityBook
from netatopd.ownership.registry import TaskRegistry
from netatopd.procfs import Identity, ProcessGone, ProcStat, format_cmdline
from netatopd.tasks import TaskInfo, TaskTable

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

    def read_identity(self, pid: int, proc_root: str) -> Identity:
        self.reads += 1
        if pid not in self.running:
            raise ProcessGone(pid)
        return self.running[pid]

    def stat(self, pid: int) -> ProcStat:
        if pid not in self.running:
            raise ProcessGone(pid)
        who = self.running[pid]
        return ProcStat(pid, who.comm, "S", who.ppid, 1, who.start_time_ticks)

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


def test_a_program_gone_before_its_exec_was_read_is_unknown_not_its_parents() -> None:
    proc, book, registry = setup()
    proc.running[50] = identity(50, "python", 6000)
    registry.process_events([event(ProcEventKind.FORK, 50)])  # read: the parent's copy
    del proc.running[50]  # exec'd and gone before the exec was read
    registry.process_events([event(ProcEventKind.EXEC, 50)])
    known = book.get(50)
    assert known is not None
    assert (known.identity.comm, known.identity.cmdline, known.identity.uid) == ("", "", -1)
    assert known.btime == BOOT_S + 60 and book.incomplete == 1
    task = registry.task_named_by_kernel(50, "bash", time.monotonic_ns())
    assert task is not None and (task.command, task.cmdline, task.uid) == ("bash", "", -1)
    # A zombie read after the exec: command and uid, no command line (not the parent's).
    proc.running[51] = identity(51, "python", 6100)
    book.learn(51)
    proc.running[51] = identity(51, "bash", 6100)._replace(cmdline="")
    known = book.learn(51, after_exec=True)
    assert known is not None and (known.identity.comm, known.identity.cmdline) == ("bash", "")
    assert book.incomplete == 2


def test_execs_are_read_before_forks_and_a_fork_gone_unread_copies_its_parent() -> None:
    proc, book, registry = setup()
    proc.running[1] = identity(1, "init", 1)
    book.learn(1)
    fork_ns = 3 * 10**9  # 3 s after boot: 300 ticks
    fork = ProcessEvent(ProcEventKind.FORK, 60, 60, 1, 1, fork_ns, 0, 0, 0, "", 0)
    registry.process_events([fork])  # gone before it was read
    known = book.get(60)
    assert known is not None and known.identity.start_time_ticks == 300
    assert (known.identity.comm, known.btime) == ("init", BOOT_S + 3)
    # Forked, exec'd and gone in one batch: the start time stands, the rest is unknown.
    fork = fork._replace(pid=61, tgid=61)
    registry.process_events([fork, event(ProcEventKind.EXEC, 61)])
    known = book.get(61)
    assert known is not None and (known.identity.comm, known.identity.uid) == ("", -1)
    assert known.identity.start_time_ticks == 300
    # One read a process a batch, the exec's first.
    proc.running[62] = identity(62, "ls", 7000)
    reads = proc.reads
    registry.process_events([event(ProcEventKind.FORK, 62), event(ProcEventKind.EXEC, 62)])
    assert proc.reads == reads + 1


def test_packets_seen_after_the_exit_go_to_the_finished_task_once() -> None:
    proc, book, registry = setup()
    proc.running[70] = identity(70, "curl", 8000)
    task = registry.task(70)
    assert task is not None
    task.add(True, (1, 100, 0, 0), time.time())
    exit_ns = time.monotonic_ns()
    registry.process_events([event(ProcEventKind.EXIT, 70, exit_ns)])  # a zombie now
    (first,) = registry.exit_list.snapshot()
    assert sum(first.counters) == 101
    # A packet it sent before its exit is seen now: the same task takes it.
    late = registry.task(70)
    assert late is task and not task.exited
    task.add(True, (1, 100, 0, 0), time.time())
    registry.finish_ended(time.time())
    (entry,) = registry.exit_list.snapshot()  # replaced, not added
    assert sum(entry.counters) == 202 and entry.exit_time_s == first.exit_time_s
    assert sum(registry.finished_counters) == 202 and registry.late_tasks == 1
    # Taken back without a packet: finished again silently.
    assert registry.task(70) is task
    registry.finish_ended(time.time())
    assert len(registry.exit_list.snapshot()) == 1 and registry.late_tasks == 1
    # Gone: a record of the kernel does not bring it back (it may be an old one).
    del proc.running[70]
    assert registry.task_named_by_kernel(70, "curl", exit_ns - 1000) is None
    # The resolver's last resort (its socket gone, held by nobody): a record from before
    # the exit is the process's own; one from after it is not.
    assert registry.late_task_named_by_kernel(70, exit_ns + 100_000_000) is None
    assert registry.late_task_named_by_kernel(70, exit_ns - 1000) is task


def test_a_late_packet_never_replaces_the_task_of_the_pids_later_process() -> None:
    """A (pid 90) ended; B got pid 90 and has a task with counters.  A record of A from
    before its exit must not take A back into the table in B's place: B's counters
    would be lost from every sum (the balance found 12 to 30 TCP packets missing)."""
    proc, book, registry = setup()
    proc.running[90] = identity(90, "first", 9000)
    a = registry.task(90)
    assert a is not None
    a_exit_ns = time.monotonic_ns() - 1_000_000_000
    registry.process_events([event(ProcEventKind.EXIT, 90, a_exit_ns)])
    del proc.running[90]
    proc.running[90] = identity(90, "second", 9090)
    b = registry.task(90)
    assert b is not None and b is not a
    b.add(False, (3, 300, 0, 0), time.time())
    assert registry.late_task_named_by_kernel(90, a_exit_ns - 1000) is None
    assert registry.tasks.get(90) is b and sum(b.counters) == 303


def test_a_record_of_the_pids_next_process_is_not_given_to_the_earlier_one_taken_back() -> None:
    """Pid reuse within the late-packet window: process A (pid 80) ended and was taken
    back for a late packet; process B got pid 80 and ended too before its record was
    read.  B's record (made after A's exit) names B, with B's identity; A keeps its own."""
    proc, book, registry = setup()
    proc.running[80] = identity(80, "first", 9000)
    a = registry.task(80)
    assert a is not None
    a.add(True, (1, 110, 0, 0), time.time())
    a_exit_ns = time.monotonic_ns() - 2_000_000_000  # two seconds ago
    registry.process_events([event(ProcEventKind.EXIT, 80, a_exit_ns)])
    del proc.running[80]
    # A record made before A's exit: A's late packet takes A back (unfinished again).
    assert registry.late_task_named_by_kernel(80, a_exit_ns - 1000) is a and not a.exited
    # B: born after A's exit under the same pid, known from its fork and exec, gone already.
    proc.running[80] = identity(80, "second", 9150)
    registry.process_events([event(ProcEventKind.FORK, 80), event(ProcEventKind.EXEC, 80)])
    b_exit_ns = time.monotonic_ns()
    registry.process_events([event(ProcEventKind.EXIT, 80, b_exit_ns)])
    del proc.running[80]
    b = registry.task_named_by_kernel(80, "second", b_exit_ns - 1000)
    assert b is not None and b is not a
    assert (b.command, b.start_time_ticks) == ("second", 9150)
    assert a.exited and sum(a.counters) == 111  # finished with its own packet only
    # Without an identity for the later process, its record names no one (never A).
    proc, book, registry = setup()
    proc.running[80] = identity(80, "first", 9000)
    a = registry.task(80)
    assert a is not None
    registry.process_events([event(ProcEventKind.EXIT, 80, a_exit_ns)])
    del proc.running[80]
    assert registry.late_task_named_by_kernel(80, a_exit_ns - 1000) is a
    book.known.pop(80, None)
    assert registry.task_named_by_kernel(80, "third", time.monotonic_ns()) is None
    assert registry.tasks.get(80) is a and not a.exited  # still there for its late packets


def exec_record(pid: int, comm: str, start: int, args: bytes, uid: int = 65534) -> ExecRecord:
    """What the kernel's exec program records (execids.py): start time in boot ns."""
    return ExecRecord(pid, 1, uid, start * 10**9 // HZ, comm, args[:ARGS_BYTES], len(args))


def queue_execs(book: IdentityBook, *records: ExecRecord) -> None:
    """The records wait in the kernel's ring until the book takes them (exec_source)."""
    pending = list(records)
    book.exec_source = lambda: [pending.pop(0)] if pending else []


def who(task: TaskInfo | None) -> tuple[str, str, int, int]:
    assert task is not None
    return (task.command, task.cmdline, task.uid, task.start_time_ticks)


def test_the_kernels_exec_record_names_a_program_gone_before_it_was_read() -> None:
    proc, book, registry = setup()
    proc.running[80] = identity(80, "python", 9000, DOCKER_CGROUP)
    registry.process_events([event(ProcEventKind.FORK, 80)])  # the parent's copy
    del proc.running[80]  # exec'd and gone before the exec was read
    book.take_execs([exec_record(80, "bash", 9000, b"bash\0-c\0exit 0\0tag-80\0")])
    registry.process_events([event(ProcEventKind.EXEC, 80)])
    known = book.get(80)
    assert known is not None
    who = known.identity
    assert (who.comm, who.cmdline, who.uid) == ("bash", "bash -c exit 0 tag-80", 65534)
    assert (who.start_time_ticks, who.cgroup, known.btime) == (9000, DOCKER_CGROUP, BOOT_S + 90)
    assert (book.from_kernel, book.incomplete, book.exec_records) == (1, 0, {})
    # A zombie read after the exec: the record gives the command line /proc no longer has.
    proc.running[81] = identity(81, "bash", 9100)._replace(cmdline="", uid=65534)
    book.take_execs([exec_record(81, "bash", 9100, b"bash\0x\0")])
    known = book.learn(81, after_exec=True)
    assert known is not None and known.identity.cmdline == "bash x"
    assert (book.from_kernel, book.incomplete) == (2, 0)


def test_a_cut_record_takes_the_whole_line_from_proc_and_a_stale_one_is_not_used() -> None:
    proc, book, _registry = setup()
    long_args = b"curl\0" + b"x" * 400 + b"\0"
    proc.running[90] = identity(90, "curl", 9500)._replace(cmdline="curl " + "x" * 400)
    book.take_execs([exec_record(90, "curl", 9500, long_args)])
    known = book.learn(90, after_exec=True)
    assert known is not None and known.identity.cmdline == "curl " + "x" * 400
    assert known.identity.uid == 1000  # /proc, read after the exec, is current
    # Gone: the kernel's first ARGS_BYTES, marked as cut.
    book.take_execs([exec_record(91, "curl", 9600, long_args)])
    known = book.learn(91, after_exec=True)
    assert known is not None
    assert known.identity.cmdline == format_cmdline(long_args[:ARGS_BYTES]) + "\u2026"
    # A record of an earlier holder of the pid (never used) does not name a later process.
    book.take_execs([exec_record(92, "old", 9700, b"old\0")])
    proc.running[92] = identity(92, "new", 9800)
    known = book.learn(92, after_exec=True)
    assert known is not None and known.identity.comm == "new"
    assert book.from_kernel == 2


def test_a_task_made_before_its_exec_event_is_named_by_the_kernels_record() -> None:
    proc, book, registry = setup()
    proc.running[95] = identity(95, "python", 9900)
    registry.process_events([event(ProcEventKind.FORK, 95)])  # the parent's copy
    del proc.running[95]  # exec'd, sent, gone; its exec event still queued
    queue_execs(book, exec_record(95, "bash", 9900, b"bash\0tag-95\0"))
    task = registry.task_named_by_kernel(95, "bash", 99 * 10**9)
    assert who(task) == ("bash", "bash tag-95", 65534, 9900)
    # The exec event, read later, leaves the kernel's identity in place.
    registry.process_events([event(ProcEventKind.EXEC, 95)])
    known = book.get(95)
    assert known is not None and known.identity.cmdline == "bash tag-95"
    assert (book.from_kernel, book.incomplete) == (1, 0)


def test_a_task_made_as_its_process_ends_is_named_by_the_kernels_pending_record() -> None:
    """Seen under load: a program's packet is attributed before its fork and exec events
    are read; /proc/PID/stat still answers, but the program ends before its identity is
    read.  Ground truth: the kernel's exec record, still waiting to be taken; without it
    the task had the command of stat and an unknown command line and uid."""
    proc, book, registry = setup()
    proc.running[97] = identity(97, "bash", 9950)
    reads_fail = {97}  # stat answers; the identity read finds the process gone

    def read_identity(pid: int, proc_root: str) -> Identity:
        if pid in reads_fail:
            raise ProcessGone(pid)
        return proc.read_identity(pid, proc_root)

    book.reader = read_identity
    queue_execs(book, exec_record(97, "bash", 9950, b"bash\0-c\0tag-97\0", uid=4321))
    assert who(registry.task(97)) == ("bash", "bash -c tag-97", 4321, 9950)
    # Its fork and exec events, read later, leave the kernel's identity in place.
    del proc.running[97]
    registry.process_events([event(ProcEventKind.FORK, 97), event(ProcEventKind.EXEC, 97)])
    known = book.get(97)
    assert known is not None and (known.identity.cmdline, known.identity.uid) == (
        "bash -c tag-97",
        4321,
    )
    assert (book.from_kernel, book.incomplete) == (1, 0)


def test_a_program_that_renamed_itself_and_changed_uid_after_its_exec_shows_it() -> None:
    """Seen under load: exec, PR_SET_NAME and setuid() came in one batch of events; the
    kernel's record (python3, uid 0 at the exec) named the process after it had become
    mxbeta, uid 65534, and the UID event of the same batch read nothing more.  Ground
    truth: what /proc shows of the running process."""
    proc, book, registry = setup()
    proc.running[98] = identity(98, "python3", 9990)._replace(uid=0)
    registry.process_events([event(ProcEventKind.FORK, 98)])
    task = registry.task(98)
    assert task is not None and (task.command, task.uid) == ("python3", 0)
    proc.running[98] = identity(98, "mxbeta", 9990)._replace(uid=65534)  # renamed, setuid
    book.take_execs([exec_record(98, "python3", 9990, b"python3\0-c\0actor\0", uid=0)])
    events = [event(kind, 98) for kind in (ProcEventKind.EXEC, ProcEventKind.COMM)]
    registry.process_events([*events, event(ProcEventKind.UID, 98)])
    assert (task.command, task.cmdline, task.uid) == ("mxbeta", "python3 -c actor", 65534)
    assert book.from_kernel == 1
