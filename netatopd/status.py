"""The STATUS registry: every figure the daemon reports, declared once.

Each ``Field`` names one STATUS figure and says where the daemon reads it
(``source``), its slot in the shared table's status array if it has one
(``slot``), the group it belongs to and its label on the ``netatop status``
screen.  A ``Family`` stands for figures whose names a source makes up itself
(the eBPF helper's program and map figures).  From ``REGISTRY``:

* the daemon's STATUS object (``collect``, called by the daemon's control
  answers) and the shared table's figures (``collect_table``, called by the
  daemon's engine at each publish);
* the table's status layout, ``TABLE_FIELDS`` (read by table.py: a slot is
  part of the file format, so slots are only ever appended);
* the groups and labels ``netatop status`` shows (cli.status.status_lines).

A source is an attribute path evaluated on an object the daemon hands in:
dots separate the steps, a step ending in ``()`` is called, a step into a
mapping is a key.  A step that meets None or a missing key makes the figure
absent (its stage is off: no history, no eBPF helper, no atop socket).  This
module imports none of the counting stages, so the command line loads it
cheaply.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

ABSENT = object()  # what a source yields when its stage is off


class Style(Enum):
    """How a group's line reads on the ``netatop status`` screen."""

    HEADER = "header"  # the opening line: its fields' texts joined by commas
    TABLE = "table"  # a table: each field's label is its row, its column its column
    LINE = "line"  # 'Heading  headline (label value, ...)' or 'Heading  label value, ...'
    SHARED_TABLE = "shared_table"  # a line, plus the fill read from the shared table itself


@dataclass(frozen=True, slots=True)
class Group:
    """A heading of the netatop status screen and how its figures read under it."""

    heading: str
    style: Style = Style.LINE
    headline_colon: bool = False  # 'headline: a, b' instead of 'headline (a, b)'
    when_empty: str = ""  # shown when the group has no figure; '' leaves the group out
    # Only with netatop status --verbose: figures that check the daemon itself, not
    # what an administrator acts on (issue 15: no wall of internal counters).
    verbose: bool = False
    always: bool = False  # shown with its fields' defaults even when it has no figure
    prefix: str = ""  # a family's figures: every name that starts with this


HEADER = Group("", Style.HEADER, always=True)
PACKETS = Group("Packets", Style.TABLE)
MALFORMED = Group("Malformed")
FLOWS = Group("Flows")
TASKS = Group("Tasks")
EXIT_LIST = Group("Exit list")
SWEEP = Group("Sweep", verbose=True)
CAPTURE = Group("Capture")
OWNERS = Group("Owners from")
RESOLVER = Group("Resolver", verbose=True)
TABLE = Group("Table", Style.SHARED_TABLE)
ATOP = Group("Atop socket", verbose=True)
HISTORY = Group("History", headline_colon=True, when_empty="off")
EBPF = Group("eBPF", verbose=True, prefix="ebpf_")
FORWARDED = Group("Forwarded", verbose=True)
BALANCE = Group("Balance", Style.TABLE, verbose=True)
NAMESPACES = Group("Namespaces")
NAMESPACE_INODES = Group("Namespace inodes", verbose=True)
KERNEL_PATH = Group("Kernel path")
KERNEL_PATH_IDS = Group("Kernel path objects", verbose=True)
PROCESS_EVENTS = Group("Process events", verbose=True)

# The order of the netatop status screen.
GROUPS: tuple[Group, ...] = (
    HEADER,
    PACKETS,
    FORWARDED,
    BALANCE,
    MALFORMED,
    FLOWS,
    TASKS,
    EXIT_LIST,
    SWEEP,
    CAPTURE,
    OWNERS,
    RESOLVER,
    TABLE,
    ATOP,
    HISTORY,
    EBPF,
    NAMESPACES,
    NAMESPACE_INODES,
    KERNEL_PATH,
    KERNEL_PATH_IDS,
    PROCESS_EVENTS,
)


def _getter(path: str) -> Callable[[object], object]:
    """The function that follows path (see the module docstring) from an object."""
    steps = tuple((step.removesuffix("()"), step.endswith("()")) for step in path.split("."))

    def get(root: object) -> object:
        value = root
        for name, call in steps:
            if value is None:
                return ABSENT
            if isinstance(value, Mapping):
                value = value.get(name, ABSENT)
                if value is ABSENT:
                    return ABSENT
            else:
                value = getattr(value, name)
            if call:
                value = value()
        return ABSENT if value is None else value

    return get


# Attribute names a mapping has: a source step so named is never read as an attribute.
_MAPPING_ATTRIBUTES = frozenset(dir(dict)) | frozenset(dir(Mapping))


def _attribute_getter(path: str) -> Callable[[object], object] | None:
    """operator.attrgetter(path) where it reads the same as _getter would, else None.

    It does for a path of plain steps (no call, no step a mapping has as an
    attribute) whenever it does not raise AttributeError: a step into None
    or a mapping raises it (the caller then follows the path with _getter,
    which makes the figure absent or steps into the mapping).  The shared
    table's figures are read this way at every publish: one call in C.
    """
    steps = path.split(".")
    if any(step.endswith("()") or step in _MAPPING_ATTRIBUTES for step in steps):
        return None
    return operator.attrgetter(path)


@dataclass(frozen=True, slots=True)
class Field:
    """One STATUS figure.

    label: its text on the status screen, '' for a group's headline (shown
    bare); fmt: a format for the value instead of 'label value' ('{}' is the
    value); unit: a word after the value; column: its column in a TABLE group;
    default: shown when absent (None: not shown); duration: seconds shown as
    days and h:mm:ss; when: a path whose value must be true for the figure
    to be reported at all; quiet_zero: left off the status screen without
    --verbose while it is 0 (a host that forwards nothing needs no such row).
    """

    name: str
    group: Group
    label: str
    source: str
    slot: int | None = None
    fmt: str = ""
    unit: str = ""
    column: str = ""
    default: object = None
    duration: bool = False
    when: str = ""
    quiet_zero: bool = False
    read: Callable[[object], object] = field(init=False, repr=False, compare=False)
    present: Callable[[object], object] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", _getter(self.source))
        object.__setattr__(self, "present", _getter(self.when) if self.when else None)

    @property
    def headline(self) -> bool:
        """Shown bare, first on its group's line."""
        return not self.label and not self.fmt

    def text(self, value: object) -> str:
        """'label value unit', or fmt with the value (a duration already formatted)."""
        if self.fmt:
            return self.fmt.format(value)
        shown = f"{self.label} {value}" if self.label else str(value)
        return f"{shown} {self.unit}" if self.unit else shown

    def value(self, root: object) -> object:
        """The figure read from root, or ABSENT."""
        if self.present is not None:
            shown = self.present(root)
            if shown is ABSENT or not shown:
                return ABSENT
        return self.read(root)


@dataclass(frozen=True, slots=True)
class Family:
    """Figures a source names itself: a mapping of name -> value.

    Each name is reported with prefix put in front unless it has it already;
    names in exclude are left out (the source reports them elsewhere).
    """

    prefix: str
    group: Group
    source: str
    exclude: tuple[str, ...] = ()
    read: Callable[[object], object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", _getter(self.source))

    def items(self, root: object) -> Iterable[tuple[str, object]]:
        figures = self.read(root)
        if not isinstance(figures, Mapping):
            return ()
        prefix = self.prefix
        return (
            (name if name.startswith(prefix) else prefix + name, value)
            for name, value in figures.items()
            if name not in self.exclude
        )


def _totals(slot: int, name: str, label: str, column: str) -> Field:
    return Field(name, PACKETS, label, f"flows.totals.{name}", slot=slot, column=column)


def _forwarded(name: str, label: str, column: str) -> tuple[Field, Field]:
    """A forwarded figure's packets (in the Packets table) and bytes (on the Forwarded line)."""
    source = f"locality_figures.forwarded_{name}"
    return (
        Field(
            f"forwarded_{name}",
            PACKETS,
            f"{label.split()[0]} forwarded",
            source,
            column=column,
            quiet_zero=True,
        ),
        Field(f"forwarded_{name}_bytes", FORWARDED, label, f"{source}_bytes", unit="bytes"),
    )


def _balance(name: str, label: str) -> tuple[Field, ...]:
    """One row of the balance: counted, processes, pending and the difference (0 when even)."""
    return (
        *(
            Field(
                f"balance_{name}_{term}",
                BALANCE,
                label,
                f"balance.balance_{name}_{term}",
                column=term.upper(),
            )
            for term in ("counted", "processes", "pending")
        ),
        Field(f"balance_{name}", BALANCE, label, f"balance.balance_{name}", column="DIFFERENCE"),
    )


# In the order of the STATUS object (a JSON object: the order its readers see).
REGISTRY: tuple[Field | Family, ...] = (
    Field("version", HEADER, "", "version", fmt="netatopd {}", default="?"),
    # The kernel module's /proc/netatop figures: packets, and those no process was found for.
    _totals(0, "tcp_sent", "TCP", "SENT"),
    _totals(1, "tcp_received", "TCP", "RECEIVED"),
    _totals(2, "udp_sent", "UDP", "SENT"),
    _totals(3, "udp_received", "UDP", "RECEIVED"),
    _totals(4, "tcp_sent_unidentified", "TCP", "UNIDENTIFIED SENT"),
    _totals(5, "tcp_received_unidentified", "TCP", "UNIDENTIFIED RECEIVED"),
    _totals(6, "udp_sent_unidentified", "UDP", "UNIDENTIFIED SENT"),
    _totals(7, "udp_received_unidentified", "UDP", "UNIDENTIFIED RECEIVED"),
    _totals(8, "icmp_sent", "ICMP", "SENT"),
    _totals(9, "icmp_received", "ICMP", "RECEIVED"),
    Field("malformed", MALFORMED, "", "malformed", slot=10),
    Field("rejected", MALFORMED, "rejected", "rejected"),
    Field("flows", FLOWS, "", "flows.count", slot=11),
    Field("flows_overflow", FLOWS, "overflow", "flows.overflow", slot=12),
    Field("flows_pending", FLOWS, "pending owner", "resolver.pending_count()", slot=19),
    Field("flows_written_off", FLOWS, "written off", "resolver.unowned_written_off"),
    Field("tasks", TASKS, "", "task_count", slot=13),
    Field("tasks_overflow", TASKS, "overflow", "tasks.overflow", slot=14),
    Field("exited", EXIT_LIST, "", "exit_count", slot=15),
    Field("exited_expired", EXIT_LIST, "expired unread", "exit_list.expired", slot=21),
    Field("capture_received", CAPTURE, "received", "capture_stats.received", slot=16),
    Field("capture_dropped", CAPTURE, "dropped", "capture_stats.dropped", slot=17),
    Field(
        "capture_interface_dropped",
        CAPTURE,
        "dropped by the interface",
        "capture_stats.interface_dropped",
        slot=22,
    ),
    Field("packets_counted", CAPTURE, "packets counted", "packets"),
    Field("capture_lanes", CAPTURE, "lanes", "lane_count"),
    Field("capture_holds", CAPTURE, "holds", "hold.holds"),
    Field("capture_hold_ms", CAPTURE, "hold", "hold.hold_ms", unit="ms"),
    Field("resolver_lookups", RESOLVER, "lookups", "resolver.lookups", slot=20),
    Field("resolver_misses", RESOLVER, "misses", "resolver.misses", slot=18),
    Field("resolver_not_found", RESOLVER, "not found", "resolver.not_found"),
    Field("resolver_endpoint_finds", RESOLVER, "endpoint finds", "resolver.endpoint_finds"),
    Field("resolver_udp_rechecks", RESOLVER, "UDP rechecks", "resolver.udp_rechecks"),
    # First packet read -> owner known, over the latest new flows; the three
    # figures are there once one new flow has been timed.
    Field(
        "owner_latency_samples",
        RESOLVER,
        "",
        "owner_latency.owner_latency_samples",
        fmt="new flows timed {}",
    ),
    Field(
        "owner_latency_ms_p50",
        RESOLVER,
        "",
        "owner_latency.owner_latency_ms_p50",
        fmt="owner known after {:.1f} ms (p50)",
    ),
    Field(
        "owner_latency_ms_p99",
        RESOLVER,
        "",
        "owner_latency.owner_latency_ms_p99",
        fmt="{:.1f} ms (p99)",
    ),
    Field(
        "owner_latency_ms_max",
        RESOLVER,
        "",
        "owner_latency.owner_latency_ms_max",
        fmt="{:.1f} ms (max)",
    ),
    Field("inode_full_scans", RESOLVER, "full inode scans", "resolver.inodes.full_scans"),
    Field("proc_denied", RESOLVER, "/proc denied", "resolver.inodes.denied"),
    Field("gc_runs", SWEEP, "runs", "sweeper.runs"),
    Field("table_capacity", TABLE, "capacity", "table.capacity"),
    # Strings (command lines, units ...) the last publish had no room for in the
    # table's text area; reported only when some were.
    Field(
        "table_text_refused",
        TABLE,
        "strings left out",
        "table.text_refused_last",
        when="table.text_refused_last",
    ),
    Field("history", HISTORY, "", "history_note", default="on"),
    Field("ownership", HEADER, "", "ownership", fmt="owner resolution: {}", default="?"),
    Field("ownership_note", OWNERS, "", "ownership_note"),
    Field("uptime_s", HEADER, "", "uptime_s", fmt="up {}", default=0, duration=True),
    Field(
        "capture_lanes_fallback", CAPTURE, "fallback", "capture.fallback", when="capture.fallback"
    ),
    # With the eBPF helper: its programs' and maps' figures, and what the daemon drained.
    Family("ebpf_", EBPF, "kernel_status", exclude=("ownership",)),
    Field("ebpf_records", EBPF, "records", "resolver.kernel.records"),
    Field("ebpf_drains", EBPF, "drains", "resolver.kernel.drains"),
    Field("ebpf_drains_skipped", EBPF, "drains skipped", "resolver.kernel.drains_skipped"),
    # How the helper's send/recv programs are attached (ebpf/helper.py AttachKind):
    # raw_tracepoint (with BTF) or perf_tracepoint; btf_tracepoint (tp_btf, with BTF,
    # tried first; on the kernel path with the per-socket fast path).
    Field("ebpf_attach", EBPF, "send/recv programs on", "kernel_status.ebpf_attach"),
    Field(
        "resolver_kernel_finds", RESOLVER, "kernel finds", "resolver.kernel_finds", when="kernel"
    ),
    Field("atop_clients", ATOP, "clients", "atop_stats.atop_clients"),
    Field("atop_requests", ATOP, "requests", "atop_stats.atop_requests"),
    Field("atop_answers", ATOP, "answers", "atop_stats.atop_answers"),
    Field("atop_abandoned", ATOP, "abandoned", "atop_stats.atop_abandoned"),
    Field("atop_garbage", ATOP, "garbage", "atop_stats.atop_garbage"),
    Field("atop_journal", ATOP, "journal", "atop_stats.atop_journal"),
    Field("atop_journal_dropped", ATOP, "journal dropped", "atop_stats.atop_journal_dropped"),
    Field("history_persisted", HISTORY, "persisted", "history_stats.persisted_exited", slot=23),
    Field("history_samples", HISTORY, "samples", "history_stats.persisted_samples"),
    Field("history_pending", HISTORY, "pending", "history_stats.pending", slot=24),
    Field("history_dropped", HISTORY, "dropped", "history_stats.dropped", slot=25),
    Field("history_disk_full_skips", HISTORY, "disk-full skips", "history_stats.disk_full_skips"),
    Field("history_write_errors", HISTORY, "write errors", "history_stats.write_errors"),
    # Forwarded packets (the libpcap path): counted for no process (locality.py), and
    # how locality is decided.
    *_forwarded("tcp_sent", "TCP sent", "SENT"),
    *_forwarded("tcp_received", "TCP received", "RECEIVED"),
    *_forwarded("udp_sent", "UDP sent", "SENT"),
    *_forwarded("udp_received", "UDP received", "RECEIVED"),
    *_forwarded("icmp_sent", "ICMP sent", "SENT"),
    *_forwarded("icmp_received", "ICMP received", "RECEIVED"),
    Field("local_addresses", FORWARDED, "local addresses", "locality.note"),
    Field("conntrack", FORWARDED, "conntrack", "locality.conntrack_note"),
    Field("nat_rewrites", FORWARDED, "NAT rewrites", "locality.nat_rewrites"),
    # counted = processes (running and finished) + unidentified + pending + forwarded,
    # for each protocol and direction; balance_* is the difference, 0 when nothing is lost.
    *_balance("tcp_sent", "TCP sent"),
    *_balance("tcp_received", "TCP received"),
    *_balance("udp_sent", "UDP sent"),
    *_balance("udp_received", "UDP received"),
    # Network namespaces (issue 12): the capture path in use; with --capture kernel the
    # namespaces whose sockets were looked up, with --capture pcap the namespaces
    # holding TCP/UDP sockets that it does not count (looked at every few seconds).
    Field("capture_path", HEADER, "", "capture_path", fmt="capture: {}"),
    Field("namespaces_seen", NAMESPACES, "seen", "namespaces.count"),
    Field(
        "namespaces_uncovered",
        NAMESPACES,
        "",
        "namespaces_uncovered_count",
        fmt="{} other namespaces hold sockets not counted (--capture kernel counts them)",
    ),
    Field("namespaces_seen_inodes", NAMESPACE_INODES, "seen", "namespaces.inodes"),
    Field("namespaces_uncovered_inodes", NAMESPACE_INODES, "not counted", "namespaces_uncovered"),
    # --capture kernel: drains, and its own terms of the balance (packets counted =
    # processes + unidentified + pending + these): packets still on socket flows whose
    # owner is not known yet, and packets of sockets of no counted protocol.
    Field("kernel_drains", KERNEL_PATH, "drains", "kernel_capture.drains"),
    Field(
        "kernel_other_protocol_packets",
        KERNEL_PATH,
        "other protocols",
        "flows.other_protocol_packets",
        when="kernel_capture",
    ),
    Field("kernel_pending_tcp_sent", KERNEL_PATH, "pending TCP sent", "kernel_pending.tcp_sent"),
    Field(
        "kernel_pending_tcp_received",
        KERNEL_PATH,
        "pending TCP received",
        "kernel_pending.tcp_received",
    ),
    Field("kernel_pending_udp_sent", KERNEL_PATH, "pending UDP sent", "kernel_pending.udp_sent"),
    Field(
        "kernel_pending_udp_received",
        KERNEL_PATH,
        "pending UDP received",
        "kernel_pending.udp_received",
    ),
    Field("kernel_cgroup", KERNEL_PATH, "attached at", "kernel_capture.counter.cgroup_path"),
    Field("kernel_object_ids", KERNEL_PATH_IDS, "ids", "kernel_object_ids"),
    Field(
        "resolver_cookie_finds",
        RESOLVER,
        "socket cookie finds",
        "resolver.cookie_finds",
        when="kernel_capture",
    ),
    Field("namespaces_dumps", NAMESPACES, "sock_diag dumps", "namespaces.dumps"),
    # Issue 13: the database file deleted or replaced under the daemon (opened anew), damaged
    # files moved aside (NAME.corrupt-TIME), processes that continued from their last sample.
    Field("history_reopened", HISTORY, "reopened", "history_stats.reopened"),
    Field("history_corrupt_moved", HISTORY, "damaged moved aside", "history_stats.corrupt_moved"),
    Field("tasks_restored", TASKS, "restored", "registry.restored_tasks", when="history"),
    # Fork, exec and exit: the proc connector, or polling /proc (and why).
    Field("process_events", PROCESS_EVENTS, "", "process_events_source"),
    Field("process_events_received", PROCESS_EVENTS, "received", "process_events.events"),
    Field("process_events_lost", PROCESS_EVENTS, "lost", "process_events.lost_events"),
    Field("process_events_overflows", PROCESS_EVENTS, "overflows", "process_events.overflows"),
    Field("process_events_resyncs", PROCESS_EVENTS, "resyncs", "process_events_resyncs"),
    Field("identities_read", PROCESS_EVENTS, "identities read", "identities.learnt"),
    Field("identities_known", PROCESS_EVENTS, "identities kept", "identities.__len__()"),
    Field("identity_unreadable", PROCESS_EVENTS, "unreadable", "identities.unreadable"),
    Field("identity_unknown", PROCESS_EVENTS, "unknown", "registry.identity_unknown"),
    # Programs gone (or zombies) before their identity was read after their exec.
    Field("identity_incomplete", PROCESS_EVENTS, "incomplete", "identities.incomplete"),
    # Finished tasks that took packets seen after their exit (finished again, same exit).
    Field("tasks_late", PROCESS_EVENTS, "late packets after exit", "registry.late_tasks"),
    # Exits of a leader thread that ended alone while other threads ran on.
    Field(
        "leader_exits_deferred",
        PROCESS_EVENTS,
        "leader exits, process running on",
        "registry.leader_exits_deferred",
    ),
    # Issue 14: identity at exec from the eBPF helper's exec program, else /proc.
    Field("identity_source", PROCESS_EVENTS, "identities from", "identities.source"),
    Field("identities_from_kernel", PROCESS_EVENTS, "from the kernel", "identities.from_kernel"),
)

FIELDS: dict[str, Field] = {f.name: f for f in REGISTRY if isinstance(f, Field)}
TABLE_SLOTS = 64  # room in the table's header: adding a slotted field keeps the layout


def _table_fields() -> tuple[Field, ...]:
    slotted = sorted((f for f in FIELDS.values() if f.slot is not None), key=lambda f: f.slot or 0)
    if [f.slot for f in slotted] != list(range(len(slotted))) or len(slotted) > TABLE_SLOTS:
        raise AssertionError("table slots must run 0, 1, 2 ... without a gap")
    return tuple(slotted)


_TABLE = _table_fields()
# The shared table's status[] array, in slot order (netatop-table(5)).
TABLE_FIELDS: tuple[str, ...] = tuple(f.name for f in _TABLE)


def collect(root: object) -> dict[str, object]:
    """The STATUS object: every figure root has, in REGISTRY order."""
    status: dict[str, object] = {}
    for entry in REGISTRY:
        if isinstance(entry, Family):
            status.update(entry.items(root))
            continue
        value = entry.value(root)
        if value is not ABSENT:
            status[entry.name] = value
    return status


# The table's figures in slot order.  Each plain path is read by one attrgetter call;
# a path on which that raised (a stage off, a mapping: sticky, see _TABLE_READ_STAGE)
# by an attrgetter of all but its last step and the last step taken by hand (None:
# absent, a mapping: its key, else the attribute); where that raised too, and for a
# path with a call or a condition, by Field.value.  Only shortcuts: every way reads
# the same value.
_TABLE_READS: tuple[
    tuple[Field, Callable[[object], object] | None, Callable[[object], object] | None, str],
    ...,
] = tuple(
    (
        entry,
        getter := (None if entry.present is not None else _attribute_getter(entry.source)),
        None
        if getter is None or "." not in entry.source
        else operator.attrgetter(entry.source.rsplit(".", 1)[0]),
        entry.source.rsplit(".", 1)[-1],
    )
    for entry in _TABLE
)
_TABLE_READ_STAGE = [0] * len(_TABLE_READS)  # 0: whole path, 1: the holder, 2: Field.value


def collect_table(root: object) -> dict[str, int]:
    """The figures of root that have a table slot (only those: cheaper than collect).

    Called at every publish of the shared table: a plain path is read with
    one attrgetter call, and followed step by step only where that meets
    None or a mapping; the values are the same either way.
    """
    figures: dict[str, int] = {}
    stages = _TABLE_READ_STAGE
    for index, (entry, path, holder, last) in enumerate(_TABLE_READS):
        stage = stages[index]
        value: object = ABSENT
        if path is not None and stage == 0:
            try:
                value = path(root)
            except AttributeError:
                stages[index] = stage = 1 if holder is not None else 2
            else:
                if value is None:
                    continue
        if stage == 1 and holder is not None:  # (stage 1 only where there is a holder)
            try:
                held = holder(root)
            except AttributeError:
                stages[index] = stage = 2
            else:
                if held is None:
                    continue
                value = held.get(last) if isinstance(held, Mapping) else getattr(held, last)
                if value is None:
                    continue
        if stage == 2 or path is None:
            value = entry.value(root)
        if value is not ABSENT:
            assert isinstance(value, int)
            figures[entry.name] = value
    return figures


def group_figures(group: Group, figures: Mapping[str, object]) -> list[tuple[Field, object]]:
    """The figures of one group that figures has, in REGISTRY order.

    A family's figures that no Field declares get a Field made from their
    name (label: the name without the prefix, underscores as spaces).
    """
    found: list[tuple[Field, object]] = []
    if group.prefix:
        # A family: every figure under the prefix, declared or not.
        for name, value in figures.items():
            if name.startswith(group.prefix):
                declared = FIELDS.get(name)
                if declared is None:
                    label = name.removeprefix(group.prefix).replace("_", " ")
                    declared = Field(name, group, label, name)
                found.append((declared, value))
        return found
    members = [entry for entry in FIELDS.values() if entry.group is group]
    if not group.always and not any(entry.name in figures for entry in members):
        return found
    for entry in members:
        if entry.name in figures:
            found.append((entry, figures[entry.name]))
        elif entry.default is not None:
            found.append((entry, entry.default))
    return found
