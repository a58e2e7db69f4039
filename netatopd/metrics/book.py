"""The metrics book: per-group totals kept by the counting loop, published as snapshots.

Owns, in the counting loop's thread, everything that makes the exported
counters monotonic and bounded:

* the final counters of finished processes, added into their group when the
  exit list is told of them (``process_finished``, an ``ExitList`` listener),
  so a group's total is its finished processes plus its running ones, each
  process counted once: running until it finishes, finished after;
* which groups have series of their own and which went to the ``other``
  group past ``--metrics-max-series`` (a group keeps its place while it lives,
  so no series jumps from one to the other);
* when each group last grew, and the drop of groups with no running process
  that have not grown for ``--metrics-idle-drop-s`` (a group that comes back
  starts again from zero: an ordinary counter reset for Prometheus).

``publish`` (engine.Engine.publish, at most once per ``PUBLISH_INTERVAL_S``)
folds the task table in and swaps in a new immutable ``MetricsSnapshot``;
the HTTP server's threads only read ``snapshot`` (families.SnapshotCollector).
Nothing here blocks or takes a lock.
"""

from __future__ import annotations

import heapq
import pwd
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from ..defaults import METRICS_IDLE_DROP_S_DEFAULT, METRICS_MAX_SERIES_DEFAULT
from ..tasks import COUNTER_COUNT, ExitedTask

PUBLISH_INTERVAL_S = 1.0  # a snapshot is at most this old (plus one table publish)
OTHER = "other"  # the label value of the group that takes the groups past the cap
UNKNOWN_USER = "unknown"  # the user of a process whose uid was not read
KEY_CACHE_MAX = 65_536

Key = tuple[str, ...]
Counters = tuple[int, ...]


class Counted(Protocol):
    """What the book reads of a running process (tasks.TaskInfo)."""

    tgid: int
    command: str
    uid: int
    counters: list[int]


class UserNames:
    """uid -> user name (the passwd database, each uid looked up once; a uid with no
    name is shown as its number, an unknown uid (-1) as 'unknown')."""

    def __init__(self, lookup: Callable[[int], str] | None = None) -> None:
        self.lookup = lookup or (lambda uid: pwd.getpwuid(uid).pw_name)
        self.names: dict[int, str] = {}

    def __call__(self, uid: int) -> str:
        name = self.names.get(uid)
        if name is None:
            if uid < 0:
                name = UNKNOWN_USER
            else:
                try:
                    name = self.lookup(uid)
                except (KeyError, OSError):
                    name = str(uid)
            if len(self.names) >= KEY_CACHE_MAX:
                self.names.clear()
            self.names[uid] = name
        return name


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What one scrape shows; made by MetricsBook.publish and never changed after."""

    labels: tuple[str, ...]  # the group label names, --metrics-group-by order
    groups: tuple[tuple[Key, Counters], ...]  # label values, counters (COUNTER_NAMES order)
    processes: tuple[tuple[int, str, Counters], ...]  # the busiest: tgid, command, counters
    figures: Mapping[str, object]  # STATUS figures (catalogue.health_figures)
    caps: Mapping[str, int]  # max_flows, max_tasks
    series_overflow: int  # groups sent to 'other' by the series cap, ever
    started_s: float  # epoch seconds the daemon started
    published_s: float  # epoch seconds of this snapshot
    own_groups: int = 0  # groups with series of their own
    other_groups: int = 0  # groups in 'other' now


EMPTY_FIGURES: Mapping[str, object] = MappingProxyType({})


@dataclass(slots=True)
class _Group:
    """The book's record of one group."""

    finished: list[int] = field(default_factory=lambda: [0] * COUNTER_COUNT)
    total: Counters = (0,) * COUNTER_COUNT  # at the last publish
    changed_s: float = 0.0  # monotonic seconds its total last grew
    in_other: bool = False


class MetricsBook:
    """Per-group totals, monotonic while the daemon runs; see the module docstring."""

    def __init__(
        self,
        group_by: tuple[str, ...],
        *,
        max_series: int = METRICS_MAX_SERIES_DEFAULT,
        idle_drop_s: float = METRICS_IDLE_DROP_S_DEFAULT,
        top_processes: int = 0,
        caps: Mapping[str, int] | None = None,
        started_s: float = 0.0,
        user_name: Callable[[int], str] | None = None,
        publish_interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self.group_by = group_by
        self.max_series = max_series
        self.idle_drop_s = idle_drop_s
        self.top_processes = top_processes
        self.caps = MappingProxyType(dict(caps or {}))
        self.started_s = started_s
        self.user_name = user_name or UserNames()
        self.publish_interval_s = publish_interval_s
        self.other_key: Key = (OTHER,) * len(group_by)
        self.groups: dict[Key, _Group] = {}
        self.own_count = 0  # groups with series of their own
        self.other_base = [0] * COUNTER_COUNT  # groups dropped from 'other' leave theirs here
        self.series_overflow = 0
        self.last_publish_s: float | None = None  # monotonic
        self._keys: dict[tuple[str, int, str, str], Key] = {}
        self.snapshot = MetricsSnapshot(
            group_by, (), (), EMPTY_FIGURES, self.caps, 0, started_s, started_s
        )

    # -- groups --------------------------------------------------------------------------

    def key_of(self, command: str, uid: int, unit: str = "", container: str = "") -> Key:
        """A process's group: its label values in --metrics-group-by order.

        unit and container are "" for a process whose cgroup names none.
        """
        cache_key = (command, uid, unit, container)
        key = self._keys.get(cache_key)
        if key is None:
            values = {"command": command, "unit": unit, "container": container}
            if "user" in self.group_by:
                values["user"] = self.user_name(uid)
            key = tuple(values[name] for name in self.group_by)
            if len(self._keys) >= KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _group(self, key: Key, now_s: float) -> _Group:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(changed_s=now_s)
            # A group keeps the place it gets now while it lives. A real group whose
            # labels are those of 'other' always counts in 'other' (no duplicate series).
            if key != self.other_key and self.own_count < self.max_series:
                self.own_count += 1
            else:
                group.in_other = True
                if key != self.other_key:
                    self.series_overflow += 1
        return group

    def process_finished(self, exited: ExitedTask) -> None:
        """A process finished (an ExitList listener): its final counters join its group."""
        key = self.key_of(exited.command, exited.uid, exited.unit, exited.container)
        group = self._group(key, self._now_hint())
        finished = group.finished
        for index, value in enumerate(exited.counters):
            finished[index] += value

    def _now_hint(self) -> float:
        # A group made between publishes counts as changed at the last publish: it
        # is then kept at least idle_drop_s after it first shows.
        return self.last_publish_s or 0.0

    # -- publishing ----------------------------------------------------------------------

    def due(self, now_s: float) -> bool:
        """True when the last snapshot is PUBLISH_INTERVAL_S old (monotonic seconds)."""
        last = self.last_publish_s
        return last is None or now_s - last >= self.publish_interval_s

    def publish(
        self,
        tasks: Iterable[Counted],
        figures: Mapping[str, object],
        now_s: float,
        now_wall_s: float,
    ) -> MetricsSnapshot:
        """Fold the running processes in and swap in a new snapshot (now_s: monotonic)."""
        self.last_publish_s = now_s
        tasks = list(tasks)
        live: dict[Key, list[int]] = {}
        key_of = self.key_of
        for task in tasks:
            key = key_of(
                task.command, task.uid, getattr(task, "unit", ""), getattr(task, "container", "")
            )
            sums = live.get(key)
            counters = task.counters
            if sums is None:
                live[key] = list(counters)
            else:
                for index in range(COUNTER_COUNT):
                    sums[index] += counters[index]
        # Groups first brought up to date, the idle ones dropped (freeing their places) ...
        for key, group in list(self.groups.items()):
            sums = live.get(key)
            if sums is None:
                total = tuple(group.finished)
            else:
                total = tuple(a + b for a, b in zip(group.finished, sums, strict=True))
            if total != group.total:
                group.total = total
                group.changed_s = now_s
            elif sums is None and now_s - group.changed_s >= self.idle_drop_s:
                self._drop(key, group)
        # ... then the new groups placed.
        for key, sums in live.items():
            if key not in self.groups:
                self._group(key, now_s).total = tuple(sums)

        rows: list[tuple[Key, Counters]] = []
        other = list(self.other_base)
        other_groups = 0
        for key, group in self.groups.items():
            if group.in_other:
                other_groups += 1
                total = group.total
                for index in range(COUNTER_COUNT):
                    other[index] += total[index]
            else:
                rows.append((key, group.total))
        if other_groups or any(self.other_base):
            rows.append((self.other_key, tuple(other)))

        processes: tuple[tuple[int, str, Counters], ...] = ()
        if self.top_processes:
            busiest = heapq.nlargest(self.top_processes, tasks, key=_bytes_of)
            processes = tuple((t.tgid, t.command, tuple(t.counters)) for t in busiest)
        self.snapshot = MetricsSnapshot(
            self.group_by,
            tuple(rows),
            processes,
            MappingProxyType(dict(figures)),
            self.caps,
            self.series_overflow,
            self.started_s,
            now_wall_s,
            self.own_count,
            other_groups,
        )
        return self.snapshot

    def _drop(self, key: Key, group: _Group) -> None:
        """Forget an idle group; what it gave 'other' stays there."""
        del self.groups[key]
        if group.in_other:
            for index in range(COUNTER_COUNT):
                self.other_base[index] += group.total[index]
        else:
            self.own_count -= 1


def _bytes_of(task: Counted) -> int:
    c = task.counters
    return c[1] + c[3] + c[5] + c[7]
