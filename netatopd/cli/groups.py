"""Rows summed per group: ``--by command|user|unit|container`` (pure: rows in, groups out).

Owns GroupBy (the keys), the key of a row under each (group_key: the unit and
container rules are cgroups.unit_group and cgroups.container_group, so the
SQL reports and the live rows group alike), Group (one group: its key, how
many processes, the summed counters of struct taskcount), group_rows, the
order of groups (sort_groups, the same SortKey as the rows) and their fields
and table columns.  Called by commands (netatop query --by) and top (--by, the
key g: group_counts, the groups as rows of its frame, and its --json/--csv).

A group counts processes, not threads: give it process rows (running and
finished alike; a pid reused is two processes).  Sums are exact: the
counters of the rows added as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from ..cgroups import UNKNOWN_PLACE, container_group, unit_group
from ..protocol import COUNTER_NAMES
from ..tasks import Kind
from .format import Column, Record, format_bytes, format_count, format_text
from .rows import (
    USER_NAMES,
    SortKey,
    TaskCounts,
    byte_total,
    header,
    sent_bytes,
    sort_value,
)


class GroupBy(StrEnum):
    """What the rows are summed by; the value is also the key's field name in JSON and CSV."""

    COMMAND = "command"  # the 15-character command name
    USER = "user"  # the uid (shown as its user name), UNKNOWN_PLACE if unknown
    UNIT = "unit"  # cgroups.unit_group
    CONTAINER = "container"  # cgroups.container_group


def user_group(row: TaskCounts) -> str:
    """The user name of the row's uid; UNKNOWN_PLACE when the uid is not known."""
    if row.uid is None:
        return UNKNOWN_PLACE
    return row.user or USER_NAMES.name(row.uid)


def group_key(row: TaskCounts, by: GroupBy) -> str:
    """The group a row belongs to under by."""
    if by is GroupBy.COMMAND:
        return row.command
    if by is GroupBy.USER:
        return user_group(row)
    if by is GroupBy.UNIT:
        return unit_group(row.cgroup, row.unit, row.container)
    return container_group(row.cgroup, row.unit, row.container)


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """One group: its key, how many processes it holds, and their counters summed.

    counts is a TaskCounts of the sums (command: the key), so that the rows'
    orders apply to groups as they are.
    """

    by: GroupBy
    key: str
    processes: int
    running: int  # of processes, those still running (the others: from the exit list)
    counts: TaskCounts

    def record(self) -> Record:
        """The fields of GROUP_FIELDS (by's key name first), as JSON and CSV print them."""
        result: dict[str, object] = {self.by.value: self.key, "processes": self.processes}
        result["running"] = self.running
        for name in COUNTER_NAMES:
            result[name] = getattr(self.counts, name)
        return result


def group_fields(by: GroupBy) -> tuple[str, ...]:
    """The fields of a group in JSON and CSV, in output order."""
    return (by.value, "processes", "running", *COUNTER_NAMES)


def _counters(totals: Sequence[float]) -> dict[str, Any]:
    """Keyword arguments of TaskCounts for counters in COUNTER_NAMES order."""
    return dict(zip(COUNTER_NAMES, totals, strict=True))


def group_rows(rows: Iterable[TaskCounts], by: GroupBy) -> list[Group]:
    """The rows summed per group_key, in the order groups are first met.

    A thread row is refused (ValueError): its counters are also in its process's.
    """
    sums: dict[str, list[float]] = {}
    processes: dict[str, int] = {}
    running: dict[str, int] = {}
    for row in rows:
        if row.kind is Kind.THREAD:
            raise ValueError(f"thread {row.pid}: groups are made of process rows")
        key = group_key(row, by)
        totals = sums.setdefault(key, [0] * len(COUNTER_NAMES))
        for index, name in enumerate(COUNTER_NAMES):
            totals[index] += getattr(row, name)
        processes[key] = processes.get(key, 0) + 1
        running[key] = running.get(key, 0) + (row.kind is Kind.PROCESS)
    return [
        Group(
            by,
            key,
            processes[key],
            running[key],
            TaskCounts(Kind.PROCESS, 0, 0, 0, key, **_counters(totals)),
        )
        for key, totals in sums.items()
    ]


def group_counts(rows: Iterable[TaskCounts], by: GroupBy) -> list[TaskCounts]:
    """The groups as rows of netatop top: pid is how many processes, command the key,
    the counters (rates) and total_bytes summed."""
    rows = list(rows)
    lifetime: dict[str, int] = {}
    for row in rows:
        key = group_key(row, by)
        lifetime[key] = lifetime.get(key, 0) + row.total_bytes
    return [
        dataclasses.replace(g.counts, pid=g.processes, total_bytes=lifetime[g.key])
        for g in group_rows(rows, by)
    ]


def sort_groups(groups: Iterable[Group], key: SortKey) -> list[Group]:
    """Largest first by key (pid: by the group's key, ascending, as text).

    Ties: more bytes sent and received, then more bytes sent, then the key.
    """
    if key is SortKey.PID:
        return sorted(groups, key=lambda g: g.key)
    value = sort_value(key)
    return sorted(
        groups,
        key=lambda g: (-value(g.counts), -byte_total(g.counts), -sent_bytes(g.counts), g.key),
    )


def _counter_column(name: str) -> Column[Group]:
    if name.endswith("bytes"):
        return Column(header(name), lambda g: format_bytes(getattr(g.counts, name)))
    return Column(header(name), lambda g: format_count(getattr(g.counts, name)))


def group_columns(by: GroupBy) -> Sequence[Column[Group]]:
    """The table columns: the key, the processes (running of them), the counters."""
    return (
        Column(header(by.value), lambda g: format_text(g.key), right=False, flex=True),
        Column(header("processes"), lambda g: str(g.processes)),
        Column(header("running"), lambda g: str(g.running)),
        *(_counter_column(name) for name in COUNTER_NAMES),
    )
