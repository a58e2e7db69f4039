"""Who each process is, learnt when it is born and kept a while after it has gone.

Owns ``IdentityBook``: pid -> ``Known`` (the identity read from /proc at
fork and again at exec, its btime, and the exit time once the process has
ended), bounded, oldest first out, and forgotten ``grace_s`` after the exit.
A process that lived a millisecond and whose packets are attributed later
(by the kernel's record of it) is still known: btime, command line, uid and
cgroup come from here instead of placeholders.

Fed by the daemon's engine with the proc connector's events
(netlink.connector.ProcessEvents) through ``TaskRegistry.process_events``;
read by ``TaskRegistry`` when it makes a task.

With the eBPF helper's exec program loaded (ebpf/execids.py), the engine
also hands over, before each batch of events, what the kernel recorded at
each exec (``take_execs``): the identity after an exec is then the kernel's
(tgid, parent, start time, command, uid, the first bytes of the command
line), taken while the program existed, so a program gone before /proc
could be read is still named; /proc adds the cgroup (else the one inherited
at the fork) and, when the kernel's copy of a long command line was cut,
the whole line.  ``source`` says which (STATUS identity_source),
``from_kernel`` counts them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..ebpf.execids import ExecRecord
from ..procfs import (
    CMDLINE_TRUNCATION_MARKER,
    Identity,
    ProcError,
    format_cmdline,
    read_identity,
)

IDENTITIES_MAX = 65_536  # processes remembered (an entry is a few hundred bytes)
EXITED_GRACE_S = 60.0  # how long a process is remembered after its exit
EXEC_PENDING_MAX = 8192  # kernel exec records waiting for their proc connector event
SOURCE_PROC = "/proc"
SOURCE_KERNEL = "kernel at exec (sched_process_exec), /proc for the cgroup"


@dataclass(slots=True)
class Known:
    """One process as read while it lived."""

    identity: Identity
    btime: int  # epoch seconds of its start (ProcFS.btime of the start time)
    exited_s: float = 0.0  # epoch seconds of its exit, 0.0 while it runs
    exited_monotonic_s: float = 0.0
    at_exec: bool = False  # taken from the kernel's record of its exec


def record_fits(record: ExecRecord, read: Identity, ticks_per_s: int) -> bool:
    """False when /proc's ``read`` is of a later process than the kernel's record (the pid
    was reused after a record that was never used)."""
    return read.start_time_ticks <= record.start_boottime_ns * ticks_per_s // 10**9


class IdentityBook:
    """Identities of processes by pid, read at fork and exec; bounded."""

    def __init__(
        self,
        proc_root: str,
        btime_of: Callable[[int], int],
        *,
        max_entries: int = IDENTITIES_MAX,
        grace_s: float = EXITED_GRACE_S,
        monotonic: Callable[[], float] = time.monotonic,
        reader: Callable[[int, str], Identity] = read_identity,
        ticks_per_s: int = 100,
    ) -> None:
        self.proc_root = proc_root
        self.btime_of = btime_of
        self.max_entries = max_entries
        self.grace_s = grace_s
        self.monotonic = monotonic
        self.reader = reader
        self.known: OrderedDict[int, Known] = OrderedDict()
        self.ticks_per_s = ticks_per_s
        # CLOCK_BOOTTIME (start times) minus CLOCK_MONOTONIC (event times): the time slept.
        # (Read one after the other, the two differ by microseconds on a machine that never
        # slept: then 0, so that the fork's time is never put before the start time.)
        slept_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()
        self.boottime_offset_ns = slept_ns if abs(slept_ns) > 1_000_000 else 0
        self.learnt = 0  # identities read
        self.unreadable = 0  # processes whose identity could not be read (gone, denied)
        self.dropped = 0  # entries pushed out by the cap before their grace ended
        # Processes that exec'd and ended before their command line was read.
        self.incomplete = 0
        # The kernel's exec records (take_execs) by tgid, the newest of each, until used.
        self.exec_records: OrderedDict[int, ExecRecord] = OrderedDict()
        self.source = SOURCE_PROC  # where identities after an exec come from (STATUS)
        self.from_kernel = 0  # identities after an exec taken from the kernel's record
        self.exec_records_dropped = 0  # records pushed out unused by EXEC_PENDING_MAX
        # Where take_execs' records come from (the engine: the eBPF helper), for fresh().
        self.exec_source: Callable[[], list[ExecRecord]] | None = None

    def take_execs(self, records: list[ExecRecord]) -> None:
        """Keep the kernel's exec records (oldest first) for ``learn(after_exec=True)``."""
        for record in records:
            self.exec_records[record.tgid] = record
            self.exec_records.move_to_end(record.tgid)
        while len(self.exec_records) > EXEC_PENDING_MAX:
            self.exec_records.popitem(last=False)
            self.exec_records_dropped += 1

    def _from_record(
        self, record: ExecRecord, read: Identity | None, before: Known | None
    ) -> Identity:
        """The identity the kernel recorded at the exec.  When ``read`` (/proc, read
        after the exec) is this process, its command name, uid and cgroup are the
        current ones: a program that renamed itself (PR_SET_NAME) or changed its uid
        since its exec is shown as it is now.  Else the cgroup is ``before``'s (the copy
        taken at the fork) or the parent's."""
        start_time_ticks = record.start_boottime_ns * self.ticks_per_s // 10**9
        cmdline = format_cmdline(record.args)
        if record.args_len > len(record.args):
            cmdline += CMDLINE_TRUNCATION_MARKER
        comm, uid = record.comm, record.uid
        if read is not None and read.start_time_ticks == start_time_ticks:
            comm, uid, cgroup = read.comm or comm, read.uid, read.cgroup
        elif before is not None and before.identity.start_time_ticks == start_time_ticks:
            cgroup = before.identity.cgroup
        else:
            parent = self.known.get(record.ppid)
            cgroup = parent.identity.cgroup if parent is not None else ""
        return Identity(
            pid=record.tgid,
            ppid=record.ppid,
            start_time_ticks=start_time_ticks,
            comm=comm,
            cmdline=cmdline,
            uid=uid,
            cgroup=cgroup,
        )

    def _learn_exec(self, pid: int, record: ExecRecord, read: Identity | None) -> Known:
        """Process ``pid`` after its exec, from the kernel's record (and /proc's ``read``)."""
        before = self.known.get(pid)
        identity = self._from_record(record, read, before)
        if (
            read is not None
            and identity.cmdline.endswith(CMDLINE_TRUNCATION_MARKER)
            and read.start_time_ticks == identity.start_time_ticks
            and read.comm == record.comm  # the same program, not a later exec
            and len(read.cmdline) > len(identity.cmdline)
        ):
            identity = identity._replace(cmdline=read.cmdline)  # the kernel's copy was cut
        self.from_kernel += 1
        known = Known(identity, self.btime_of(identity.start_time_ticks), at_exec=True)
        if before is not None and before.identity.start_time_ticks == identity.start_time_ticks:
            known.exited_s, known.exited_monotonic_s = before.exited_s, before.exited_monotonic_s
        self._store(pid, known)
        return known

    def _store(self, pid: int, known: Known) -> None:
        self.known[pid] = known
        self.known.move_to_end(pid)
        while len(self.known) > self.max_entries:
            _pid, old = self.known.popitem(last=False)
            if not old.exited_s:
                self.dropped += 1

    def __len__(self) -> int:
        return len(self.known)

    def learn(self, pid: int, *, after_exec: bool = False) -> Known | None:
        """Read process ``pid``'s identity now (fork, exec); None if it could not be read.

        At a fork the child is a copy of its parent (command, command line,
        uid): an unreadable identity leaves that copy in place.  After an exec
        (``after_exec``) the copy is the parent's, not the program's: if the
        process is gone before it was read, its command, command line and uid
        become unknown ("", "", -1; its start time stands) and ``incomplete``
        counts it; a zombie read then (it exited already) gives command, uid
        and cgroup but no command line, counted in ``incomplete`` as well.
        With the kernel's record of the exec (``take_execs``) none of this
        happens: the record names the program.
        """
        before = self.known.get(pid)
        record = self.exec_records.pop(pid, None) if after_exec else None
        if after_exec and record is None and before is not None and before.at_exec:
            after_exec = False  # this exec's record named it already (fresh())
        try:
            identity = self.reader(pid, self.proc_root)
        except ProcError:
            self.unreadable += 1
            if record is not None:
                return self._learn_exec(pid, record, None)
            if after_exec and before is not None and before.identity.cmdline:
                # What was read before the exec is another program's.
                before.identity = before.identity._replace(comm="", cmdline="", uid=-1)
                self.incomplete += 1
            return None
        self.learnt += 1
        if record is not None and record_fits(record, identity, self.ticks_per_s):
            return self._learn_exec(pid, record, identity)
        same = before is not None and before.identity.start_time_ticks == identity.start_time_ticks
        if not identity.cmdline and after_exec:
            self.incomplete += 1  # exited already: a zombie shows no command line
        elif not identity.cmdline and before is not None and same:
            # A zombie shows no command line: the one read while it ran stands, if it
            # was this program's (another command name: an exec came in between).
            if before.identity.comm == identity.comm:
                identity = identity._replace(cmdline=before.identity.cmdline)
            else:
                self.incomplete += 1
        known = Known(identity, self.btime_of(identity.start_time_ticks))
        if before is not None and same and before.exited_s:
            known.exited_s, known.exited_monotonic_s = before.exited_s, before.exited_monotonic_s
        self._store(pid, known)
        return known

    def born(self, pid: int, parent: int, timestamp_ns: int, *, exec_seen: bool) -> Known | None:
        """Process ``pid`` forked at ``timestamp_ns`` (the event's time) and is gone unread.

        Its start time is the fork's time (the kernel stamps both within
        microseconds, in the same clock when the machine never slept); a copy
        of the parent is a copy of its identity, unless it exec'd since
        (``exec_seen``): then command, command line and uid are unknown.
        ``incomplete`` counts it.  None when the parent is not known either.
        """
        mother = self.known.get(parent)
        if mother is None:
            return None
        start_time_ticks = (timestamp_ns + self.boottime_offset_ns) * self.ticks_per_s // 10**9
        identity = mother.identity._replace(pid=pid, ppid=parent, start_time_ticks=start_time_ticks)
        if exec_seen:
            identity = identity._replace(comm="", cmdline="", uid=-1)
        known = Known(identity, self.btime_of(start_time_ticks))
        self.known[pid] = known
        self.known.move_to_end(pid)
        self.incomplete += 1
        return known

    def get(self, pid: int) -> Known | None:
        return self.known.get(pid)

    def _take_pending_execs(self) -> None:
        """Take the kernel's exec records that wait in ``exec_source``, if there is one."""
        if self.exec_source is not None:
            self.take_execs(self.exec_source())

    def fresh(self, pid: int) -> Known | None:
        """As ``get``, once the kernel's pending exec records are taken (``exec_source``):
        a program whose exec event still waits in the proc connector's queue is named
        by the kernel's record of its exec, not by the copy of its parent."""
        self._take_pending_execs()
        if pid in self.exec_records:
            self.learn(pid, after_exec=True)
        return self.known.get(pid)

    def learn_now(self, pid: int) -> Known | None:
        """As ``learn``, once the kernel's pending exec records are taken: a program met
        before its fork and exec events were read, and gone before /proc could be read,
        is named by the kernel's record of its exec."""
        self._take_pending_execs()
        return self.learn(pid, after_exec=pid in self.exec_records)

    def exited(self, pid: int, exit_s: float) -> Known | None:
        """Process ``pid`` ended at ``exit_s`` (epoch seconds); its entry, if known."""
        known = self.known.get(pid)
        if known is not None and not known.exited_s:
            known.exited_s = exit_s
            known.exited_monotonic_s = self.monotonic()
        return known

    def forget(self, pid: int) -> None:
        self.known.pop(pid, None)

    def expire(self) -> int:
        """Forget the processes that ended more than grace_s ago; how many."""
        limit = self.monotonic() - self.grace_s
        gone = [
            pid
            for pid, known in self.known.items()
            if known.exited_s and known.exited_monotonic_s < limit
        ]
        for pid in gone:
            del self.known[pid]
        return len(gone)
