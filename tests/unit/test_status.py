"""The STATUS registry (netatopd/status.py): one declaration per figure.

Ground truth: the shared table's status[] layout of netatop-table(5), written
out below name by name (a slot is part of the file format), and the rule that
the command line may import the registry without the counting stages.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
