"""Cost of reading who a process is, and of the proc connector on a fork storm; not a test.

1. Identity: starts N idle processes (``sleep``, with a command line of a
   few arguments; all killed at the end), then times, per process and best
   of a few rounds over all N: ``procfs.read_identity`` (stat, cmdline,
   status head, cgroup through one /proc/PID descriptor), and as reference
   figures of the same run ``procfs.read_stat`` alone, a full
   ``/proc/PID/status`` read (``ProcFS.uid``) and ``cgroups.placement`` /
   ``UserNames.name`` on their cached path.
2. Connector (root, initial pid and user namespace): subscribes, starts
   STORM processes of ``/bin/true`` one after the other (posix_spawn +
   waitpid) without reading, then drains.  Prints the rate the storm
   produced events at, the time ``ProcessEvents.read`` takes per event, and
   the events of the storm seen, lost (sequence gaps) and overflows (ENOBUFS).
   Then the same storm with a reader thread draining meanwhile.

Usage: .venv/bin/python bench/bench_identity.py [N] [STORM]   (defaults 500, 2000)
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netatopd import procfs  # noqa: E402
from netatopd.cgroups import placement  # noqa: E402
from netatopd.netlink.connector import ProcessEvents, ProcEventKind  # noqa: E402
from netatopd.netlink.socket import NetlinkError  # noqa: E402
from netatopd.users import UserNames  # noqa: E402

ROUNDS = 5
WALL_LIMIT_S = 60.0


def best_per_item_us(
    function: Callable[[int], object], items: list[int], rounds: int = ROUNDS
) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def identity_section(count: int) -> None:
    children: list[int] = []
    # comm comes from the file run (sleep), the command line from argv: a
    # daemon-like one of about 60 bytes (sleep adds the durations up).
    argv = ["/usr/local/bin/example-worker", "600", "0", "0", "0", "0", "0", "0", "0", "0"]
    try:
        for _ in range(count):
            children.append(os.posix_spawn("/bin/sleep", argv, os.environ))
        time.sleep(0.2)  # every child has exec'ed
        proc = procfs.ProcFS()
        identities = [procfs.read_identity(pid) for pid in children]
        assert all(identity.comm == "sleep" for identity in identities)
        users = UserNames()
        cgroup = identities[0].cgroup
        print(f"identity of {count} idle processes (best of {ROUNDS} rounds), per process:")
        reference = best_per_item_us(procfs.read_stat, children)
        print(f"  read_stat (reference)            {reference:8.1f} us")
        identity_us = best_per_item_us(procfs.read_identity, children)
        print(f"  read_identity                    {identity_us:8.1f} us")
        print(f"  ProcFS.uid (whole status file)   {best_per_item_us(proc.uid, children):8.1f} us")
        print(
            f"  ProcFS.cmdline                   {best_per_item_us(proc.cmdline, children):8.1f} us"
        )
        uids = [identity.uid for identity in identities]
        print(f"  UserNames.name (cached)          {best_per_item_us(users.name, uids):8.2f} us")
        cached_us = best_per_item_us(lambda _: placement(cgroup), children)
        print(f"  placement, cached ({cgroup})".ljust(35) + f"{cached_us:8.2f} us")
        paths = [
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{index:08x}_1111_2222_3333_444444444444.slice/cri-containerd-{index:064x}.scope"
            for index in range(len(children))
        ]
        uncached = placement.__wrapped__
        indexes = list(range(len(paths)))
        uncached_us = best_per_item_us(lambda index: uncached(paths[index]), indexes)
        print(f"  placement, uncached (kubepods)   {uncached_us:8.1f} us")
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)


def storm(count: int) -> tuple[set[int], float]:
    pids: set[int] = set()
    started = time.perf_counter()
    for _ in range(count):
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
        pids.add(pid)
        if time.perf_counter() - started > WALL_LIMIT_S:
            break
    return pids, time.perf_counter() - started


def connector_section(count: int) -> None:
    try:
        events = ProcessEvents()
    except (NetlinkError, PermissionError) as err:
        print(f"connector: not measured ({err})")
        return
    try:
        pids, storm_s = storm(count)
        seen = 0
        read_s = 0.0
        total = 0
        for _ in range(1000):  # bounded drain
            started = time.perf_counter()
            batch = events.read()
            read_s += time.perf_counter() - started
            if not batch:
                break
            total += len(batch)
            seen += sum(1 for e in batch if e.tgid in pids)
        print(f"connector, {len(pids)} processes of /bin/true, nothing read during the storm:")
        processes_per_s = len(pids) / storm_s
        print(
            f"  storm: {processes_per_s:8.0f} processes/s, {3 * processes_per_s:8.0f} events/s made"
        )
        print(
            f"  read(): {total} events in {read_s * 1e3:.1f} ms"
            f" = {read_s / max(total, 1) * 1e6:.2f} us/event"
            f" ({total / max(read_s, 1e-9):,.0f} events/s)"
        )
        print(
            f"  storm events seen {seen} of {3 * len(pids)}, lost_events {events.lost_events},"
            f" overflows {events.overflows}"
        )
    finally:
        events.close()

    events = ProcessEvents()
    stop = threading.Event()
    kinds = {ProcEventKind.FORK: 0, ProcEventKind.EXEC: 0, ProcEventKind.EXIT: 0}

    def reader() -> None:
        while not stop.is_set():
            select.select([events.fileno()], [], [], 0.05)
            for event in events.read():
                if event.kind in kinds:
                    kinds[event.kind] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        pids, storm_s = storm(count)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
        events.close()
    print(f"connector, {len(pids)} processes, a reader thread draining meanwhile:")
    print(f"  storm: {3 * len(pids) / storm_s:8.0f} events/s made")
    print(
        f"  events read FORK {kinds[ProcEventKind.FORK]} EXEC {kinds[ProcEventKind.EXEC]}"
        f" EXIT {kinds[ProcEventKind.EXIT]} (all processes of the machine),"
        f" lost_events {events.lost_events}, overflows {events.overflows}"
    )


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    storm_count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    identity_section(count)
    connector_section(storm_count)


if __name__ == "__main__":
    main()
