"""Stage 6: the garbage collector (the sweep) and the exit list.

Owns the exit list (finished processes, oldest first, each kept in memory for
``exit_lifetime_s`` unless read sooner) and the sweep's schedule.  The daemon
loop calls ``Sweeper.run`` every ``gc_interval_s`` and on FORCE_GC; the control
server takes entries with ``ExitList.pop_oldest``; the history store (when one
is configured) is told of every entry as it is added.

The sweep keeps the kernel module's rules: TCP flows whose connection is no
longer ESTABLISHED or LISTEN are dropped, owned TCP flows idle for
``tcp_idle_s`` and UDP flows on ports above 1024 idle for ``udp_idle_s`` are
dropped, and a task whose process is gone (pid gone, or reused: the start time
differs) moves to the exit list.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from socket import AF_INET, AF_INET6

from .attribution import Resolver
from .flows import Flow, FlowTable
from .netlink.sockdiag import SockDiag, TcpState
from .parse import PROTO_TCP
from .procfs import ProcAccessDenied, ProcessGone, ProcFS
from .tasks import ExitedTask, TaskInfo, TaskTable

log = logging.getLogger(__name__)

GC_INTERVAL_S_DEFAULT = 15.0
FORCED_GC_MIN_INTERVAL_S = 0.5  # FORCE_GC runs at most twice a second
EXIT_LIFETIME_S_DEFAULT = 15.0
TCP_IDLE_S_DEFAULT = 1800.0
UDP_IDLE_S_DEFAULT = 16.0
UDP_IDLE_PORT_ABOVE = 1024
TCP_YOUNG_S = 2.0  # a TCP flow this young is kept whatever its state (handshake in progress)
TCP_KEPT_STATES = (TcpState.ESTABLISHED, TcpState.LISTEN)
IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


class ExitList:
    """Finished processes, oldest first; unread entries expire after a while."""

    def __init__(self, lifetime_s: float = EXIT_LIFETIME_S_DEFAULT) -> None:
        self.lifetime_s = lifetime_s
        self.entries: deque[tuple[ExitedTask, float]] = deque()  # (entry, monotonic time added)
        self.expired = 0  # entries discarded unread
        self.listeners: list[Callable[[ExitedTask], None]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, exited: ExitedTask) -> None:
        self.entries.append((exited, time.monotonic()))
        for listener in self.listeners:
            listener(exited)

    def pop_oldest(self) -> ExitedTask | None:
        if not self.entries:
            return None
        return self.entries.popleft()[0]

    def snapshot(self) -> list[ExitedTask]:
        return [entry for entry, _ in self.entries]

    def expire(self, now_monotonic_s: float | None = None) -> int:
        now = time.monotonic() if now_monotonic_s is None else now_monotonic_s
        limit = now - self.lifetime_s
        dropped = 0
        while self.entries and self.entries[0][1] <= limit:
            self.entries.popleft()
            dropped += 1
        self.expired += dropped
        return dropped


def _normal_address(addr: bytes) -> bytes:
    """An IPv4-mapped IPv6 address as the IPv4 address its packets carry."""
    if len(addr) == 16 and addr.startswith(IPV4_MAPPED_PREFIX):
        return addr[12:]
    return addr


class Sweeper:
    """The garbage collector: old flows out, finished processes to the exit list."""

    def __init__(
        self,
        flows: FlowTable,
        tasks: TaskTable,
        resolver: Resolver,
        exit_list: ExitList,
        procfs: ProcFS,
        sockdiag: SockDiag,
        gc_interval_s: float = GC_INTERVAL_S_DEFAULT,
        tcp_idle_s: float = TCP_IDLE_S_DEFAULT,
        udp_idle_s: float = UDP_IDLE_S_DEFAULT,
    ) -> None:
        self.flows = flows
        self.tasks = tasks
        self.resolver = resolver
        self.exit_list = exit_list
        self.procfs = procfs
        self.sockdiag = sockdiag
        self.gc_interval_s = gc_interval_s
        self.tcp_idle_s = tcp_idle_s
        self.udp_idle_s = udp_idle_s
        self.last_run_monotonic_s = time.monotonic()
        self.runs = 0

    def due(self) -> bool:
        return time.monotonic() - self.last_run_monotonic_s >= self.gc_interval_s

    def seconds_until_due(self) -> float:
        return max(0.0, self.gc_interval_s - (time.monotonic() - self.last_run_monotonic_s))

    def force(self, now_s: float) -> bool:
        """FORCE_GC: run now unless a sweep ran less than half a second ago."""
        if self.seconds_until_forcible() > 0:
            return False
        self.run(now_s)
        return True

    def seconds_until_forcible(self) -> float:
        """How long a forced sweep must wait (sweeps run at most twice a second)."""
        return max(0.0, self.last_run_monotonic_s + FORCED_GC_MIN_INTERVAL_S - time.monotonic())

    def run(self, now_s: float) -> None:
        self.last_run_monotonic_s = time.monotonic()
        self.runs += 1
        self._sweep_flows(now_s)
        self._sweep_tasks(now_s)
        self.exit_list.expire()

    def _tcp_alive(self) -> set[tuple[bytes, int, bytes, int]]:
        alive: set[tuple[bytes, int, bytes, int]] = set()
        for family in (AF_INET, AF_INET6):
            for sock in self.sockdiag.dump(PROTO_TCP, family):
                if sock.state in TCP_KEPT_STATES:
                    alive.add(
                        (
                            _normal_address(sock.local_addr),
                            sock.local_port,
                            _normal_address(sock.remote_addr),
                            sock.remote_port,
                        )
                    )
        return alive

    def _sweep_flows(self, now_s: float) -> None:
        flows = self.flows.all_flows()
        tcp_alive = self._tcp_alive() if any(f.proto == PROTO_TCP for f in flows) else set()
        gone: list[Flow] = []
        for flow in flows:
            idle_s = now_s - flow.last_seen_s
            if flow.proto == PROTO_TCP:
                if now_s - flow.first_seen_s < TCP_YOUNG_S:
                    continue
                tuple_ = (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port)
                if tuple_ not in tcp_alive or (
                    flow.owner is not None and idle_s >= self.tcp_idle_s
                ):
                    gone.append(flow)
            elif flow.local_port > UDP_IDLE_PORT_ABOVE and idle_s >= self.udp_idle_s:
                gone.append(flow)
        for flow in gone:
            self.resolver.forget_flow(flow)
        if gone:
            log.debug("sweep: %d flows dropped, %d left", len(gone), self.flows.count)

    def _sweep_tasks(self, now_s: float) -> None:
        finished: list[TaskInfo] = []
        for task in list(self.tasks.by_tgid.values()):
            try:
                alive = self.procfs.stat(task.tgid).start_time_ticks == task.start_time_ticks
                if alive and task.threads:
                    # Threads that ended are dropped (the process keeps their counts).
                    running = set(self.procfs.thread_ids(task.tgid))
                    for tid in [tid for tid in task.threads if tid not in running]:
                        del task.threads[tid]
            except ProcessGone:
                alive = False
            except ProcAccessDenied:
                alive = True
            if not alive:
                finished.append(task)
        self.resolver.tasks_gone(finished, now_s)
        if self.resolver.kernel is not None:
            self.resolver.kernel.expire()


JOURNAL_MAX_ENTRIES_DEFAULT = 100_000
JOURNAL_MAX_AGE_S_DEFAULT = 600.0


class ExitJournal:
    """Finished processes for the atop socket, numbered so each client takes its own share.

    Unlike the exit list nothing is consumed: every entry gets the next sequence
    number (1, 2, ...) and each atop client remembers the last number it was
    served, so one finished process reaches every client exactly once.  Bounded
    by count and by age; an entry dropped before a client asked is lost to that
    client only (counted in ``dropped``).  The daemon appends, the atop server reads.
    """

    def __init__(
        self,
        max_entries: int = JOURNAL_MAX_ENTRIES_DEFAULT,
        max_age_s: float = JOURNAL_MAX_AGE_S_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.clock = clock
        # (sequence, clock time appended, entry), sequences contiguous and increasing
        self.entries: deque[tuple[int, float, ExitedTask]] = deque()
        self.last_sequence = 0  # of the newest entry ever appended; 0 before the first
        self.dropped = 0  # entries that left by count or age

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, exited: ExitedTask) -> int:
        """Record a finished process; returns its sequence number."""
        self.last_sequence += 1
        self.entries.append((self.last_sequence, self.clock(), exited))
        while len(self.entries) > self.max_entries:
            self.entries.popleft()
            self.dropped += 1
        self.expire()
        return self.last_sequence

    def expire(self) -> int:
        """Drop entries older than max_age_s; returns how many left."""
        limit = self.clock() - self.max_age_s
        dropped = 0
        while self.entries and self.entries[0][1] <= limit:
            self.entries.popleft()
            dropped += 1
        self.dropped += dropped
        return dropped

    def since(self, sequence: int) -> list[tuple[int, ExitedTask]]:
        """(sequence, entry) of every entry newer than sequence, oldest first."""
        self.expire()
        newer: list[tuple[int, ExitedTask]] = []
        for entry_sequence, _, exited in reversed(self.entries):
            if entry_sequence <= sequence:
                break
            newer.append((entry_sequence, exited))
        newer.reverse()
        return newer
