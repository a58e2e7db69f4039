"""The shared table published from the task table (TableWriter.publish_tasks).

Ground truth: the same rows published the plain way (``TableWriter.publish``
with every process, thread and exit-list row built anew, as the engine did
before) into a second table; and, for "only what changed is written", bytes
the test plants in the mapping of a row no task changed, which a publish that
rewrote every row would wipe.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.table import TABLE_HEADER, TABLE_ROW, TableReader, TableWriter
from netatopd.tasks import ExitedTask, Kind, TaskInfo, TaskTable

ROW_SIZE = TABLE_ROW.size
ROWS_START = TABLE_HEADER.size


class Pair:
    """Two writers: publish_tasks (under test) and publish (the reference)."""

    def __init__(self, tmp_path: Path, capacity: int = 64, text_bytes: int | None = None) -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        self.fast = TableWriter(
            str(tmp_path / "a" / "table"), capacity, 250, text_size_bytes=text_bytes
        )
        self.plain = TableWriter(
            str(tmp_path / "b" / "table"), capacity, 250, text_size_bytes=text_bytes
        )
        self.fast_reader = TableReader(self.fast.path)
        self.plain_reader = TableReader(self.plain.path)

    def publish(
        self, tasks: TaskTable, exited: list[ExitedTask], status: dict[str, int] | None = None
    ) -> None:
        rows = tasks.rows(threads=True)
        rows.extend(entry.row() for entry in exited)
        count = self.fast.publish_tasks(tasks, list(exited), status or {})
        assert count == self.plain.publish(rows, status or {})

    def check(self) -> None:
        """Both tables show the same rows, in the same order, and the same figures."""
        fast, plain = self.fast_reader.snapshot(), self.plain_reader.snapshot()
        assert fast.rows == plain.rows
        assert fast.status == plain.status
        assert (fast.refused, fast.refused_last, fast.text_refused) == (
            plain.refused,
            plain.refused_last,
            plain.text_refused,
        )

    def close(self) -> None:
        for reader in (self.fast_reader, self.plain_reader):
            reader.close()
        for writer in (self.fast, self.plain):
            writer.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path)
    try:
        yield made
    finally:
        made.close()


def new_task(tgid: int, cmdline: str = "") -> TaskInfo:
    return TaskInfo(
        tgid,
        1000 + tgid,
        1_700_000_000 + tgid,
        f"cmd{tgid}",
        cmdline or f"/bin/cmd{tgid} --flag",
        uid=1000,
        cgroup=f"/system.slice/unit{tgid % 3}.service",
    )


def plant(writer: TableWriter, index: int) -> bytes:
    """Garbage over row index of the mapping (what a rewrite of that row would wipe)."""
    start = ROWS_START + index * ROW_SIZE
    garbage = bytes([0xEE]) * 40  # kind 0xEE and id, tgid, uid ... command: not a row
    writer._map[start : start + len(garbage)] = garbage
    return garbage


def mapped(writer: TableWriter, index: int, size: int) -> bytes:
    start = ROWS_START + index * ROW_SIZE
    return writer._map[start : start + size]


def test_a_changed_row_is_written_and_an_unchanged_one_is_not(pair: Pair) -> None:
    tasks = TaskTable()
    first, second, third = new_task(101), new_task(102), new_task(103)
    for task in (first, second, third):
        tasks.admit(task)
    pair.publish(tasks, [])
    pair.check()
    garbage = plant(pair.fast, 0)  # first's row: no change to it follows
    second.add(True, (1, 100, 2, 200), 1_700_000_500.25)
    pair.publish(tasks, [])
    assert mapped(pair.fast, 0, len(garbage)) == garbage  # not written again
    written = pair.fast_reader.lookup(102)  # parses that row only
    assert written == second.row()  # the changed one is written
    assert written is not None and written.counters == (0, 0, 0, 0, 1, 100, 2, 200)
    assert pair.fast_reader.lookup(103) == third.row()


def test_only_the_touched_tasks_are_packed(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """With many tasks and few active ones a publish packs the active ones only."""
    tasks = TaskTable()
    many = [new_task(tgid) for tgid in range(1000, 1040)]
    for task in many:
        tasks.admit(task)
    pair.publish(tasks, [])
    packed: list[int] = []
    pack_row = pair.fast._pack_row
    monkeypatch.setattr(pair.fast, "_pack_row", lambda row: packed.append(row.id) or pack_row(row))
    many[5].add(False, (3, 300, 0, 0), 1_700_000_600.0)
    many[30].add(True, (0, 0, 4, 400), 1_700_000_600.0)
    pair.publish(tasks, [])
    assert sorted(packed) == [1005, 1030]
    pair.check()
    packed.clear()
    pair.publish(tasks, [])  # nothing changed: nothing packed
    assert packed == []
    pair.check()


def test_an_identity_change_needs_touch_and_is_then_written(pair: Pair) -> None:
    tasks = TaskTable()
    task = new_task(7)
    tasks.admit(task)
    pair.publish(tasks, [])
    task.cmdline, task.command, task.uid = "/usr/bin/renamed --now", "renamed", 0
    task.touch()
    pair.publish(tasks, [])
    pair.check()
    assert pair.fast_reader.snapshot().rows[0].cmdline == "/usr/bin/renamed --now"


def test_a_finished_task_leaves_its_process_row_for_an_exited_one(pair: Pair) -> None:
    tasks = TaskTable()
    staying, leaving = new_task(11), new_task(12)
    tasks.admit(staying)
    tasks.admit(leaving)
    leaving.add(True, (1, 50, 0, 0), 1_700_000_700.0)
    pair.publish(tasks, [])
    leaving.add(True, (2, 60, 0, 0), 1_700_000_701.0)  # its last packets, then it ends
    tasks.remove(leaving)
    exited = [leaving.finished(1_700_000_702.0)]
    pair.publish(tasks, exited)
    pair.check()
    rows = pair.fast_reader.snapshot().rows
    assert [(row.kind, row.id) for row in rows] == [(Kind.PROCESS, 11), (Kind.EXITED, 12)]
    assert rows[1].counters[4:6] == (3, 110)
    leaving.add(True, (5, 5, 0, 0), 1_700_000_703.0)  # touched outside the table: not shown
    pair.publish(tasks, exited)
    pair.check()
    pair.publish(tasks, [])  # the exit list's entry read
    pair.check()
    assert [row.id for row in pair.fast_reader.snapshot().rows] == [11]


def test_an_exit_list_that_changed_rewrites_its_rows_only(pair: Pair) -> None:
    """The exit list's rows come last: when it changes and no task came or went,
    they are written again and the tasks' rows stay as they are."""
    tasks = TaskTable()
    staying = new_task(41)
    tasks.admit(staying)
    ended = [new_task(tgid).finished(1_700_000_950.0 + tgid) for tgid in (42, 43, 44)]
    pair.publish(tasks, ended)
    garbage = plant(pair.fast, 0)  # the live task's row
    pair.publish(tasks, ended[1:])  # the oldest entry read
    assert mapped(pair.fast, 0, len(garbage)) == garbage
    assert pair.fast_reader.lookup(42) is None
    assert [pair.fast_reader.lookup(tgid) for tgid in (43, 44)] == [e.row() for e in ended[1:]]
    more = [*ended[1:], new_task(45).finished(1_700_000_999.0)]
    pair.publish(tasks, more)
    assert mapped(pair.fast, 0, len(garbage)) == garbage
    assert pair.fast_reader.lookup(45) == more[-1].row()
    staying.add(True, (1, 1, 0, 0), 1_700_001_000.0)
    pair.publish(tasks, more)
    pair.check()  # the live task's row written again: both tables the same


def test_a_task_taken_back_and_a_pid_reused(pair: Pair) -> None:
    """A finished task admitted again (late packets) and a new process on an old pid."""
    tasks = TaskTable()
    old, other = new_task(21), new_task(22)
    tasks.admit(old)
    tasks.admit(other)
    pair.publish(tasks, [])
    tasks.remove(old)
    pair.publish(tasks, [])
    tasks.admit(old)  # taken back: at the end now
    old.add(False, (1, 1, 1, 1), 1_700_000_800.0)
    pair.publish(tasks, [])
    pair.check()
    assert [row.id for row in pair.fast_reader.snapshot().rows] == [22, 21]
    reused = new_task(22, cmdline="/bin/another")
    tasks.admit(reused)  # the same pid, another process: replaces the task in place
    other.add(False, (9, 9, 9, 9), 1_700_000_801.0)  # the old one: gone from the table
    pair.publish(tasks, [])
    pair.check()
    assert pair.fast_reader.snapshot().rows[0].cmdline == "/bin/another"


def test_threads_coming_and_going(pair: Pair) -> None:
    tasks = TaskTable()
    first, second = new_task(31), new_task(32)
    tasks.admit(first)
    tasks.admit(second)
    first.add(False, (1, 10, 0, 0), 1_700_000_900.0, tid=3101)
    pair.publish(tasks, [])
    second.add(False, (2, 20, 0, 0), 1_700_000_901.0, tid=3201)
    first.add(False, (1, 10, 0, 0), 1_700_000_901.0, tid=3101)
    pair.publish(tasks, [])
    pair.check()
    first.add(False, (1, 10, 0, 0), 1_700_000_902.0, tid=3102)  # a second thread
    pair.publish(tasks, [])
    pair.check()
    del first.threads[3101]  # ended (the registry's sweep)
    first.touch()
    pair.publish(tasks, [])
    pair.check()
    kinds = [(row.kind, row.id) for row in pair.fast_reader.snapshot().rows]
    assert kinds == [
        (Kind.PROCESS, 31),
        (Kind.PROCESS, 32),
        (Kind.THREAD, 3102),
        (Kind.THREAD, 3201),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_random_lives_show_what_the_plain_publish_shows(tmp_path: Path, seed: int) -> None:
    """Tasks come, send, change identity, gain and lose threads, finish, come back; a
    small table and text area make the capacity and full-text cases happen too."""
    chooser = random.Random(seed)
    pair = Pair(
        tmp_path, capacity=24 if seed % 3 == 0 else 200, text_bytes=700 if seed % 2 else None
    )
    tasks = TaskTable()
    exited: list[ExitedTask] = []
    gone: list[TaskInfo] = []
    next_tgid = 500
    now_s = 1_700_001_000.0
    try:
        for _ in range(300):
            now_s += 0.25
            live = list(tasks.by_tgid.values())
            action = chooser.random()
            if action < 0.15 or not live:
                next_tgid += 1
                tasks.admit(new_task(next_tgid, f"/bin/w{chooser.randrange(40)} {next_tgid}"))
            elif action < 0.55:
                for task in chooser.sample(live, min(len(live), chooser.randrange(1, 4))):
                    tid = chooser.choice((0, 0, task.tgid * 10 + chooser.randrange(3)))
                    task.add(chooser.random() < 0.5, (1, 80, 2, 160), now_s, tid)
            elif action < 0.65:
                task = chooser.choice(live)
                task.cmdline = f"/bin/renamed{chooser.randrange(60)}"
                task.uid = chooser.randrange(5)
                task.touch()
            elif action < 0.72:
                task = chooser.choice(live)
                if task.threads:
                    del task.threads[next(iter(task.threads))]
                    task.touch()
            elif action < 0.85:
                task = chooser.choice(live)
                tasks.remove(task)
                gone.append(task)
                exited.append(task.finished(now_s))
            elif action < 0.92 and exited:
                exited.pop(0)  # read or expired
            elif gone:
                task = gone.pop(chooser.randrange(len(gone)))
                if task.tgid not in tasks.by_tgid:
                    tasks.admit(task)  # late packets: taken back
                    task.add(True, (1, 1, 0, 0), now_s)
            pair.publish(tasks, exited, {"tasks": len(tasks), "exited": len(exited)})
            pair.check()
    finally:
        pair.close()


def test_an_exec_the_registry_reads_is_written_to_the_table(tmp_path: Path) -> None:
    """The registry touches a task whose identity an exec changed (and the sweep one
    whose thread ended): the next publish writes its row."""
    from test_identities import event, identity, setup

    from netatopd.netlink.connector import ProcEventKind

    proc, _book, registry = setup()
    proc.running[50] = identity(50, "sh", 5000)
    registry.process_events([event(ProcEventKind.FORK, 50)])
    task = registry.task(50)
    assert task is not None
    task.add(True, (1, 10, 0, 0), 1_700_002_000.0, tid=50)
    task.add(True, (1, 10, 0, 0), 1_700_002_000.0, tid=51)
    writer = TableWriter(str(tmp_path / "table"), 8, 250)
    try:
        with TableReader(writer.path) as reader:
            writer.publish_tasks(registry.tasks, [], {})
            assert reader.lookup(50, Kind.PROCESS) == task.row()
            proc.running[50] = identity(50, "python3", 5000, cgroup="/system.slice/app.service")
            registry.process_events([event(ProcEventKind.EXEC, 50)])
            writer.publish_tasks(registry.tasks, [], {})
            row = reader.lookup(50, Kind.PROCESS)
            assert row is not None
            assert (row.command, row.cmdline, row.unit) == (
                "python3",
                "/usr/bin/python3 --tag 50",
                "app.service",
            )
            registry.sweep(1_700_002_001.0)  # thread 51 ended (the fake /proc lists 50)
            writer.publish_tasks(registry.tasks, [], {})
            assert [r.id for r in reader.snapshot().rows] == [50, 50]
            assert reader.lookup(51) is None
    finally:
        writer.close()
