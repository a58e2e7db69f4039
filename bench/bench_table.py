"""Benchmark of the shared table (netatopd/table.py); not a test.

Prints, for 10,000 and 50,000 process rows (each with its own command line of
about 60 bytes, a uid, and one of 20 units and containers, as a container host
might show), the median over several publishes of the CPU time (process time, so that
other load on the machine counts less) of:
  * the daemon's time in TableWriter.publish (packing rows and strings, then the
    copy into the mapping under the seqlock);
  * the time the generation stays odd (the copy alone, measured by timing the
    same memory copies the writer does);
  * a reader's snapshot (every row parsed, strings included) and a lookup of one pid;
and the file size.  The same rows without identity (empty strings) are timed
beside them as the reference: what the identity costs.

First, the daemon's publish from its task table (TableWriter.publish_tasks)
for 1,000 and 20,000 tasks with identity, 20 of them active between two
publishes: every row rebuilt and packed (TaskTable.rows, then publish, as
the engine did before session 5), publish_tasks (only the touched tasks'
rows packed and written), and publish_tasks when a task also left and
came back (the rows move: every row laid out again from the packed ones).

Usage: .venv/bin/python bench/bench_table.py [--repeat 7] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's netatopd

from netatopd.table import TableReader, TableWriter  # noqa: E402
from netatopd.tasks import ExitedTask, Kind, TaskInfo, TaskRow, TaskTable  # noqa: E402

SIZES = (10_000, 50_000)
GROUPS = 20


def make_rows(count: int, identity: bool) -> list[TaskRow]:
    rows = []
    for index in range(count):
        tgid = 1000 + index
        counters = (index, index * 100, index, index * 90, 0, 0, 0, 0)
        if identity:
            group = index % GROUPS
            scope = f"docker-{group:064x}.scope"
            rows.append(
                TaskRow(
                    Kind.PROCESS,
                    tgid,
                    tgid,
                    1_700_000_000 + index,
                    "worker",
                    counters,
                    1_700_000_100.5,
                    1000 + group,
                    f"/usr/bin/python3 /srv/app/worker.py --shard {index} --queue q{group}",
                    scope,
                    f"docker:{group:064x}",
                    f"/system.slice/{scope}",
                )
            )
        else:
            rows.append(
                TaskRow(Kind.PROCESS, tgid, tgid, 1_700_000_000 + index, "worker", counters, 1.5)
            )
    return rows


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()  # CPU time: the machine may be shared
        action()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def measure(count: int, identity: bool, repeat: int, where: str | None) -> tuple[float, ...]:
    """(publish ms, copy ms, snapshot ms, lookup ms, file MB) for count rows."""
    rows = make_rows(count, identity)
    with tempfile.TemporaryDirectory(dir=where) as directory:
        path = os.path.join(directory, "table")
        writer = TableWriter(path, count + 100, 250)
        try:
            publish = median_ms(lambda: writer.publish(rows, {}), repeat)
            # the copies made while the generation is odd
            size = count * 144
            rows_view = memoryview(writer._rows_buffer)[:size]
            text_view = memoryview(writer._text_buffer)
            table_map = writer._map
            start_text = writer._text_start

            def copy() -> None:
                table_map[640 : 640 + size] = rows_view
                text_used = int.from_bytes(table_map[104:108], "little")
                table_map[start_text : start_text + text_used] = text_view[:text_used]

            copy_ms = median_ms(copy, repeat)
            writer.publish(rows, {})
            with TableReader(path) as reader:
                snapshot = median_ms(reader.snapshot, repeat)
                lookup = median_ms(lambda: reader.lookup(1000 + count // 2), repeat)
            file_mb = os.path.getsize(path) / 1e6
        finally:
            writer.close()
    return publish, copy_ms, snapshot, lookup, file_mb


TASK_COUNTS = (1_000, 20_000)
ACTIVE_TASKS = 20  # tasks that send between two publishes


def make_tasks(count: int) -> TaskTable:
    tasks = TaskTable(max_tasks=count + 10)
    for row in make_rows(count, identity=True):
        task = TaskInfo(row.tgid, row.btime * 100, row.btime, row.command, row.cmdline, row.uid)
        task.cgroup, task.unit, task.container = row.cgroup, row.unit, row.container
        task.counters[:] = row.counters
        tasks.admit(task)
    return tasks


def measure_tasks(count: int, repeat: int, where: str | None) -> tuple[float, ...]:
    """(every row rebuilt and packed, as before; publish_tasks with ACTIVE_TASKS
    touched; the same with one task gone and one come) in ms, for count tasks."""
    tasks = make_tasks(count)
    live = list(tasks.by_tgid.values())
    exited: list[ExitedTask] = []
    step = [0]

    def touch_active() -> None:
        step[0] += 1
        for index in range(ACTIVE_TASKS):
            task = live[(step[0] * 7919 + index * 104_729) % len(live)]
            task.add(True, (1, 100, 1, 100), 1_700_000_200.0 + step[0])

    with tempfile.TemporaryDirectory(dir=where) as directory:
        writer = TableWriter(os.path.join(directory, "table"), count + 100, 250)
        try:

            def plain() -> None:
                touch_active()
                rows = tasks.rows(threads=True)
                rows.extend(entry.row() for entry in exited)
                writer.publish(rows, {})

            def changed_only() -> None:
                touch_active()
                writer.publish_tasks(tasks, exited, {})

            def one_gone_one_come() -> None:
                touch_active()
                gone = live.pop(step[0] % len(live))
                tasks.remove(gone)
                exited[:] = [gone.finished(1_700_000_300.0)]
                tasks.admit(gone)  # back, at the end: the rows move
                live.append(gone)
                writer.publish_tasks(tasks, exited, {})

            plain_ms = median_ms(plain, repeat)
            writer.publish_tasks(tasks, exited, {})
            changed_ms = median_ms(changed_only, repeat)
            moved_ms = median_ms(one_gone_one_come, repeat)
        finally:
            writer.close()
    return plain_ms, changed_ms, moved_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    print(f"publish from the task table, {ACTIVE_TASKS} tasks active a publish (CPU ms):")
    print(f"{'tasks':>7} {'rows rebuilt':>12} {'publish_tasks':>13} {'one gone, one come':>18}")
    for count in TASK_COUNTS:
        plain_ms, changed_ms, moved_ms = measure_tasks(count, args.repeat, args.dir)
        print(f"{count:>7} {plain_ms:>12.2f} {changed_ms:>13.2f} {moved_ms:>18.2f}")
    print()
    print(f"{'rows':>7} {'identity':>8} {'publish ms':>10} {'copy ms':>8} "
          f"{'snapshot ms':>11} {'lookup ms':>9} {'file MB':>8}")  # fmt: skip
    for count in SIZES:
        for identity in (False, True):
            publish, copy_ms, snapshot, lookup, file_mb = measure(
                count, identity, args.repeat, args.dir
            )
            print(
                f"{count:>7} {'yes' if identity else 'no':>8} {publish:>10.1f} {copy_ms:>8.2f} "
                f"{snapshot:>11.1f} {lookup:>9.2f} {file_mb:>8.1f}"
            )


if __name__ == "__main__":
    main()
