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

Usage: .venv/bin/python bench/bench_table.py [--repeat 7] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from netatopd.table import TableReader, TableWriter
from netatopd.tasks import Kind, TaskRow

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
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
