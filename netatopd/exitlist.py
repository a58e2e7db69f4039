"""The exit list and the exit journal: finished processes, kept for their readers.

Owns the exit list (``ExitList``: finished processes, oldest first, each
kept in memory for ``exit_lifetime_s`` unless read sooner; a reader takes
the oldest) and the exit journal (``ExitJournal``: the same processes
numbered, so that every atop client gets each once).  Both are filled by
``ownership.TaskRegistry.finish``; the control server takes entries with
``ExitList.pop_oldest``, the atop server reads ``ExitJournal.since``, the
history store is told of every entry as it is added (``ExitList.listeners``)
and the daemon calls ``ExitList.expire``.  Imports nothing of the counting
stages, so that the servers reach it without them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .defaults import EXIT_LIFETIME_S_DEFAULT
from .tasks import ExitedTask


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

    def discard(self, tgid: int, btime: int) -> None:
        """Drop the entry of process (tgid, btime) if it is here (a later one replaces it)."""
        kept = [entry for entry in self.entries if (entry[0].tgid, entry[0].btime) != (tgid, btime)]
        if len(kept) != len(self.entries):
            self.entries = deque(kept)

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
