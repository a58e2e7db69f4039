"""The STATUS registry (netatopd/status.py): one declaration per figure.

Ground truth: the shared table's status[] layout of netatop-table(5), written
out below name by name (a slot is part of the file format), and the rule that
the command line may import the registry without the counting stages.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pytest import MonkeyPatch

from netatopd import status
from netatopd.table import STATUS_FIELDS, STATUS_SLOTS

TABLE_LAYOUT = (
    "tcp_sent",
    "tcp_received",
    "udp_sent",
    "udp_received",
    "tcp_sent_unidentified",
    "tcp_received_unidentified",
    "udp_sent_unidentified",
    "udp_received_unidentified",
    "icmp_sent",
    "icmp_received",
    "malformed",
    "flows",
    "flows_overflow",
    "tasks",
    "tasks_overflow",
    "exited",
    "capture_received",
    "capture_dropped",
    "resolver_misses",
    "flows_pending",
    "resolver_lookups",
    "exited_expired",
    "capture_interface_dropped",
    "history_persisted",
    "history_pending",
    "history_dropped",
)


def test_table_slots_keep_the_layout() -> None:
    assert status.TABLE_FIELDS == TABLE_LAYOUT
    assert STATUS_FIELDS == TABLE_LAYOUT and STATUS_SLOTS == 64


def test_every_figure_is_declared_once_in_a_shown_group() -> None:
    names = [entry.name for entry in status.REGISTRY if isinstance(entry, status.Field)]
    assert len(names) == len(set(names))
    groups = {entry.group for entry in status.REGISTRY}
    assert groups <= set(status.GROUPS)
    # The daemon's internals only with --verbose (issue 15 item 9).
    assert {group.heading for group in status.GROUPS if group.verbose} == {
        "eBPF",
        "Namespace inodes",
        "Kernel path objects",
        "Sweep",
        "Resolver",
        "Atop socket",
        "Forwarded",
        "Balance",
        "Process events",
    }
    families = [entry for entry in status.REGISTRY if isinstance(entry, status.Family)]
    assert [(f.prefix, f.group) for f in families] == [("ebpf_", status.EBPF)]
    # A declared ebpf_ figure is shown with the family, under the same heading.
    assert all(
        entry.group is status.EBPF
        for entry in status.FIELDS.values()
        if entry.name.startswith("ebpf_")
    )


def test_sources_are_followed_and_absent_ones_left_out() -> None:
    class Root:
        version = "9"
        history_stats = None  # history off
        atop_stats = {"atop_clients": 2}  # other atop figures missing
        kernel = None

    field = status.FIELDS["atop_clients"]
    assert field.value(Root()) == 2
    assert status.FIELDS["atop_requests"].value(Root()) is status.ABSENT
    assert status.FIELDS["history_pending"].value(Root()) is status.ABSENT
    assert status.FIELDS["resolver_kernel_finds"].value(Root()) is status.ABSENT  # when="kernel"


def test_the_registry_imports_none_of_the_counting_stages() -> None:
    code = (
        "import json, sys; import netatopd.status; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('netatopd'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == ["netatopd", "netatopd.status"]


def _slow_table(root: object) -> dict[str, object]:
    """The table's figures read step by step (Field.value): the reference."""
    figures = {}
    for name in status.TABLE_FIELDS:
        value = status.FIELDS[name].value(root)
        if value is not status.ABSENT:
            figures[name] = value
    return figures


def test_the_tables_figures_read_as_field_value_reads_them(monkeypatch: MonkeyPatch) -> None:
    """collect_table's attrgetter shortcut gives what the step-by-step reading gives:
    stages on and off (None), mappings on the path with and without the key, a
    value None at the end, in any order of calls (it remembers which paths fail)."""
    from types import SimpleNamespace as Obj

    def root(n: int, history: object, flows: object = None, stats: object = None) -> object:
        totals = Obj(**{name: n + i for i, name in enumerate(status.TABLE_FIELDS[:10])})
        return Obj(
            flows=flows if flows is not None else Obj(totals=totals, count=n, overflow=None),
            malformed=n,
            task_count=n + 1,
            tasks=Obj(overflow=n + 2),
            exit_count=n + 3,
            exit_list=Obj(expired=n + 4),
            capture_stats=stats or Obj(received=n + 5, dropped=n + 6, interface_dropped=0),
            resolver=Obj(misses=n + 7, lookups=n + 8, pending_count=lambda: n + 9),
            history_stats=history,
        )

    roots = [
        root(1, None),
        root(2, {"persisted_exited": 5, "pending": 6, "dropped": 7}),
        root(3, {"pending": 1}),  # the others missing: absent
        root(4, None, flows=Obj(totals=None, count=3, overflow=0)),  # totals off
        root(5, None, stats={"received": 8}),  # a mapping where an object was
        root(6, {"persisted_exited": 0, "pending": 0, "dropped": 0}),
        root(7, None),
    ]
    for each in roots + roots[::-1]:
        expected = _slow_table(each)
        assert status.collect_table(each) == expected
    assert status.collect_table(roots[1])["history_persisted"] == 5
    assert "flows_overflow" not in status.collect_table(roots[0])  # None: absent
    assert "tcp_sent" not in status.collect_table(roots[3])
    assert status.collect_table(roots[4])["capture_received"] == 8
    # The shortcut: on plain paths that never failed (a fresh start), no step-by-step
    # reading; a path that failed once is read step by step from then on.
    monkeypatch.setattr(status, "_TABLE_READ_STAGE", [0] * len(status.TABLE_FIELDS))
    stepped: list[str] = []
    value = status.Field.value
    monkeypatch.setattr(
        status.Field, "value", lambda self, on: stepped.append(self.name) or value(self, on)
    )
    status.collect_table(root(8, None))
    assert "tcp_sent" not in stepped and "tasks" not in stepped
    assert "flows_pending" in stepped  # a call on the path
    status.collect_table(root(9, {"pending": 1}))  # a mapping: read through its holder
    stepped.clear()
    status.collect_table(root(10, None))
    assert "history_pending" not in stepped and "tcp_sent" not in stepped
    # A mapping before the last step: step by step from then on, the same values.
    totals = Obj(**{name: 3 for name in status.TABLE_FIELDS[:10]})
    odd = root(11, None, flows={"totals": totals, "count": 4, "overflow": 0})
    assert status.collect_table(odd) == _slow_table(odd)
    assert status.collect_table(odd)["tcp_sent"] == 3 and "tcp_sent" in stepped
