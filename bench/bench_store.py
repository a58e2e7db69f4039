"""Benchmark of the history writer (netatopd/history/writer.py); not a test.

Prints:
  * finished-process inserts per second, committed in batches of 1, 100 and 1000
    (one transaction per batch, WAL, synchronous=NORMAL, a file in a temporary
    directory), beside a reference: plain executemany of the same rows into an
    in-memory database, and the ratio;
  * the capture loop's longest stall while the writer thread persists 20,000
    finished processes handed over in bursts: the longest add_exited() call and
    the longest gap between two iterations of a busy loop standing in for packet
    capture, beside the same loop with no writer work (reference) and the loop
    writing each burst itself (what the thread saves).

Usage: .venv/bin/python bench/bench_store.py [--records 20000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import apsw

from netatopd import history
from netatopd.history.rows import exited_row
from netatopd.tasks import ExitedTask

BATCH_SIZES = (1, 100, 1000)
BURST_RECORDS = 500  # exits handed over at once, as after a sweep finds many gone
LOOP_WORK = 200  # iterations of dummy work per capture-loop pass
TIME_LIMIT_S = 120.0


def make_records(count: int, first_tgid: int = 1) -> list[ExitedTask]:
    now = time.time()
    return [
        ExitedTask(
            tgid=first_tgid + n,
            btime=1_700_000_000,
            command="bench",
            cmdline=f"/usr/bin/bench --job {n} --output /var/tmp/bench.out",
            uid=1000,
            first_activity_s=now - 10.0,
            last_activity_s=now - 1.0,
            exit_time_s=now,
            counters=(n, 100 * n, n, 100 * n, 0, 0, 1, 60),
        )
        for n in range(count)
    ]


def inserts_per_second(directory: Path, batch: int, count: int) -> float:
    path = directory / f"rate{batch}.db"
    writer = history.HistoryWriter(str(path), sample_interval_s=None, retention_days=0)
    records = make_records(count)
    start = time.perf_counter()
    for offset in range(0, count, batch):
        writer.add_exited(records[offset : offset + batch])
        writer.flush()
    elapsed = time.perf_counter() - start
    writer.stop()
    assert writer.stats()["persisted_exited"] == count
    return count / elapsed


def reference_per_second(batch: int, count: int) -> float:
    conn = apsw.Connection(":memory:")
    conn.execute((history.sql_dir() / "schema.sql").read_text())
    rows = [exited_row(r)[:16] for r in make_records(count)]  # version 1's columns
    insert = f"INSERT INTO exited VALUES ({', '.join('?' * 16)})"
    start = time.perf_counter()
    for offset in range(0, count, batch):
        with conn:
            conn.executemany(insert, rows[offset : offset + batch])
    return count / (time.perf_counter() - start)


class LoopRun(NamedTuple):
    longest_call_s: float  # longest hand_over() call
    gaps_s: list[float]  # time between two consecutive passes, sorted
    elapsed_s: float

    def gap(self, quantile: float) -> float:
        return self.gaps_s[min(len(self.gaps_s) - 1, int(quantile * len(self.gaps_s)))]

    def line(self, label: str) -> str:
        return (
            f"  {label:34s} longest gap {self.gaps_s[-1] * 1e3:7.3f} ms,"
            f" 99.9th percentile {self.gap(0.999) * 1e3:7.3f} ms,"
            f" longest call {self.longest_call_s * 1e3:7.3f} ms"
        )


def capture_loop(
    total: int, hand_over: Callable[[list[ExitedTask]], None] | None, done: Callable[[], bool]
) -> LoopRun:
    """Busy loop standing in for packet capture; every 20th pass hands a burst over."""
    records = make_records(total, first_tgid=1_000_000)
    longest_call = 0.0
    gaps: list[float] = []
    handed = 0
    passes = 0
    start = last = time.perf_counter()
    while time.perf_counter() - start < TIME_LIMIT_S:
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        passes += 1
        if hand_over is not None and handed < total and passes % 20 == 0:
            begin = time.perf_counter()
            hand_over(records[handed : handed + BURST_RECORDS])
            longest_call = max(longest_call, time.perf_counter() - begin)
            handed += BURST_RECORDS
        sum(range(LOOP_WORK))  # stands in for a batch of packets
        if (hand_over is None or handed >= total) and done():
            break
    gaps.sort()
    return LoopRun(longest_call, gaps, time.perf_counter() - start)


def stall(directory: Path, total: int, round_number: int) -> None:
    # With the writer thread: the loop only appends.
    writer = history.HistoryWriter(
        str(directory / f"stall{round_number}.db"),
        flush_interval_s=0.05,
        sample_interval_s=None,
        retention_days=0,
    )
    writer.start()
    threaded = capture_loop(
        total, writer.add_exited, lambda: writer.stats()["persisted_exited"] >= total
    )
    persisted = writer.stats()["persisted_exited"]
    writer.stop()

    # Reference: the same loop for as long, nothing written.
    deadline = time.perf_counter() + threaded.elapsed_s
    idle = capture_loop(0, None, lambda: time.perf_counter() >= deadline)

    # The loop writing each burst itself (no thread).
    inline = history.HistoryWriter(
        str(directory / f"inline{round_number}.db"), sample_interval_s=None, retention_days=0
    )

    def write_now(burst: list[ExitedTask]) -> None:
        inline.add_exited(burst)
        inline.flush()

    written_inline = capture_loop(
        total, write_now, lambda: inline.stats()["persisted_exited"] >= total
    )
    inline.stop()

    print(
        f"round {round_number}: writer thread persisted {persisted} exits handed over in bursts"
        f" of {BURST_RECORDS} in {threaded.elapsed_s:.2f} s"
    )
    print(threaded.line("capture loop, writer thread busy:"))
    print(idle.line("reference, no writing:"))
    print(written_inline.line("loop writing each burst itself:"))
    print(
        f"  ratio of longest gaps, writer thread / reference: "
        f"{threaded.gaps_s[-1] / idle.gaps_s[-1]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="stall measurements (noisy)")
    parser.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (CPython's default is 5 ms)",
    )
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        directory = Path(name)
        print(
            f"SQLite {apsw.sqlite_lib_version()}, apsw {apsw.apsw_version()}, in {directory},"
            f" GIL switch interval {sys.getswitchinterval() * 1e3:g} ms"
        )
        print("finished-process inserts per second (one transaction per batch):")
        for batch in BATCH_SIZES:
            count = min(args.records, 2000 * batch)
            rate = inserts_per_second(directory, batch, count)
            reference = reference_per_second(batch, count)
            print(
                f"  batch {batch:5d}: {rate:10.0f}/s   reference (in-memory executemany)"
                f" {reference:10.0f}/s   ratio {reference / rate:5.1f}"
            )
        for round_number in range(1, args.rounds + 1):
            stall(directory, args.records, round_number)


if __name__ == "__main__":
    main()
