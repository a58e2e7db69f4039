"""The inode index: socket inode -> the processes holding it, read from /proc.

Owns, per process it has looked at, the socket inodes it holds, its
descriptor count and its start time, and the index's counters (full scans,
descriptors read, processes whose descriptors could not be read).  Kept
current by cheap incremental scans: only new processes and those whose
descriptor count changed (``stat`` of ``/proc/PID/fd`` gives the count) are
read again, newest first.  Called by ``Resolver`` (``holder`` on a lookup,
``refresh`` and ``full_scan_step`` on a miss, ``pid_inodes`` and
``pid_start_ticks`` when it searches sockets by name).
"""

from __future__ import annotations

import time

from ..procfs import ProcAccessDenied, ProcessGone, ProcFS, same_process


class InodeIndex:
    """Socket inode -> pids holding it, kept current with cheap incremental scans."""

    def __init__(self, procfs: ProcFS) -> None:
        self.procfs = procfs
        self.holders: dict[int, set[int]] = {}
        self.pid_inodes: dict[int, set[int]] = {}
        self.pid_fd_count: dict[int, int] = {}
        self.pid_start_ticks: dict[int, int] = {}
        self.scanned_descriptors = 0
        self.full_scans = 0
        self.denied = 0  # processes whose fds could not be read (permission)
        self.last_full_scan_s = 0.0
        self.full_scan_queue: list[int] = []  # pids the full scan in progress has still to read
        self.refresh_queue: list[int] = []  # pids a budgeted refresh has still to look at

    def holder(self, inode: int) -> int | None:
        """The newest process holding the inode, or None if none is known."""
        pids = self.holders.get(inode)
        if not pids:
            return None
        start = self.pid_start_ticks
        return max(pids, key=lambda pid: (start.get(pid, 0), pid))

    def _forget(self, pid: int) -> None:
        for inode in self.pid_inodes.pop(pid, ()):
            pids = self.holders.get(inode)
            if pids is not None:
                pids.discard(pid)
                if not pids:
                    del self.holders[inode]
        self.pid_fd_count.pop(pid, None)
        self.pid_start_ticks.pop(pid, None)

    def _scan(self, pid: int) -> list[int]:
        """Rescan one process; returns the inodes it holds that it did not hold before."""
        try:
            stat = self.procfs.stat(pid)
            known = self.pid_start_ticks.get(pid)
            if known is not None and not same_process(stat, known):
                self._forget(pid)  # the pid was reused
            inodes = set(self.procfs.socket_inodes(pid))
        except ProcessGone:
            self._forget(pid)
            return []
        except ProcAccessDenied:
            self.denied += 1
            return []
        self.scanned_descriptors += len(inodes)
        self.pid_start_ticks[pid] = stat.start_time_ticks
        old = self.pid_inodes.get(pid, set())
        for inode in old - inodes:
            pids = self.holders.get(inode)
            if pids is not None:
                pids.discard(pid)
                if not pids:
                    del self.holders[inode]
        added = [inode for inode in inodes if inode not in old]
        for inode in added:
            self.holders.setdefault(inode, set()).add(pid)
        self.pid_inodes[pid] = inodes
        return added

    def refresh(self, full: bool = False, budget_s: float | None = None) -> list[tuple[int, int]]:
        """Rescan new processes and those whose descriptor count changed (all if full).

        Without ``budget_s`` one whole pass over every process, newest first.
        With it, processes not seen before come first (newest first: a new
        flow's owner most likely just started), then a pass over the others
        goes on where the previous budgeted call stopped; the call returns after
        about ``budget_s`` (one process at least), so a host where a thousand
        processes just started never holds up the capture loop for a whole pass.
        Returns the (pid, inode) holdings found that were not known before.
        """
        found: list[tuple[int, int]] = []
        pids = self.procfs.pids()
        alive = set(pids)
        for pid in [pid for pid in self.pid_inodes if pid not in alive]:
            self._forget(pid)
        if budget_s is None or full:
            self.refresh_queue = []
            for pid in sorted(pids, reverse=True):
                self._look(pid, full, found)
            if full:
                self.full_scans += 1
                self.last_full_scan_s = time.monotonic()
            return found
        deadline = time.monotonic() + budget_s
        known = self.pid_fd_count
        for pid in sorted((pid for pid in pids if pid not in known), reverse=True):
            self._look(pid, False, found)
            if time.monotonic() >= deadline:
                return found
        if not self.refresh_queue:
            self.refresh_queue = sorted(pids)  # popped from the end: newest first
        queue = self.refresh_queue
        while queue:
            self._look(queue.pop(), False, found)
            if time.monotonic() >= deadline:
                break
        return found

    def _look(self, pid: int, full: bool, found: list[tuple[int, int]]) -> None:
        """Rescan pid if it is new, its descriptor count changed (or is 0), or full."""
        try:
            count = self.procfs.fd_count(pid)
        except ProcessGone:
            self._forget(pid)
            return
        except ProcAccessDenied:
            return
        known = self.pid_fd_count.get(pid)
        if full or known is None or count != known or count == 0:
            self.pid_fd_count[pid] = count
            found.extend((pid, inode) for inode in self._scan(pid))

    def scan_pids(self, pids: list[int]) -> list[tuple[int, int]]:
        """Rescan these processes now, whatever their descriptor count (an equal count
        may hide a closed descriptor and a new socket).

        For a caller that knows where an owner must be (the processes of one
        network namespace) and need not wait for a budgeted refresh to get there.
        """
        found: list[tuple[int, int]] = []
        for pid in sorted(pids, reverse=True):
            self._look(pid, True, found)
        return found

    def full_scan_step(self, budget_s: float) -> list[tuple[int, int]]:
        """Part of a full rescan of every process, newest first, for at most budget_s.

        A full scan of thousands of descriptors takes a tenth of a second or more;
        done in steps, it never holds up the capture loop.  The next step resumes
        where this one stopped; a pass that reaches the end counts as a full scan.
        """
        if not self.full_scan_queue:
            self.full_scan_queue = sorted(self.procfs.pids())  # popped from the end: newest first
        deadline = time.monotonic() + budget_s
        found: list[tuple[int, int]] = []
        queue = self.full_scan_queue
        while queue and time.monotonic() < deadline:
            pid = queue.pop()
            try:
                self.pid_fd_count[pid] = self.procfs.fd_count(pid)
            except ProcessGone:
                self._forget(pid)
                continue
            except ProcAccessDenied:
                continue
            found.extend((pid, inode) for inode in self._scan(pid))
        if not queue:
            self.full_scans += 1
            self.last_full_scan_s = time.monotonic()
        return found
