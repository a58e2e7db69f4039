"""The three tracepoint programs and the layout of the maps they fill.

Part of the optional in-kernel ownership helper.  Pure: builds instruction lists
from the tracepoints' format files (parsed here, read at load time) and the
``struct sock`` offsets found in BTF; owns the C layouts shared with user
space (flow key, owner record, event counters).  Callers:
``helper.py`` (loads what is built here) and the unit tests.

What the programs record:

* Only sockets of one network namespace, given by its nsfs inode: each
  program first reads ``sk->__sk_common.skc_net.net`` and that
  ``net->ns.inum`` (offsets from BTF, two ``bpf_probe_read_kernel``) and
  leaves at once, counting OTHER_NETNS, when the inode differs.  The event
  counters (SEND/RECV/STATE_EVENTS) still count every run; the other
  counters only this namespace's sockets.  For the kernel counting path
  (``--capture kernel``) the check is left out (``EVERY_NAMESPACE``): its
  flows are sockets, named by cookie, so the same tuple in two namespaces
  does not mix there (two records of one key between drains: the later one
  stays, and the other socket's owner is found through sock_diag).
* ``sock:sock_send_length`` / ``sock:sock_recv_length`` run in the thread
  that called sendmsg/recvmsg, either as perf-event tracepoint programs
  (their inputs from the tracepoint's record), as raw tracepoint programs
  (``raw_length_context``: sk and ret from the call's arguments, the family
  and protocol read from sk) or as tp_btf programs (the same context, the
  program a BPF_PROG_TYPE_TRACING one on the raw tracepoint, so that ``sk``
  is a pointer typed by the kernel's BTF); all build the same records.  They read
  the flow tuple from the socket (``bpf_probe_read_kernel`` on
  ``struct sock_common``) and store, in the
  flows map under slot IO, the last (tid, tgid, comm, time, SEND/RECV) of the
  flow and the socket's cookie (``skc_cookie``, read: tracepoint programs
  may not call ``bpf_get_socket_cookie``; 0 until the kernel first gives
  the socket one, which the cgroup_skb programs do at its first packet).
  Nothing is kept per thread: the record names the thread, and the daemon
  counts a thread's packets from the captured traffic of its flows.
* ``sock:inet_sock_set_state`` (TCP) keeps only what a system call does in
  its owner's context: CLOSE->SYN_SENT inside connect() (the local port is
  still 0, so the owner is kept under the socket's address in the connect
  map and joined to the tuple at SYN_SENT->ESTABLISHED, slot OPEN, kind
  CONNECT), ->LISTEN (slot OPEN, kind LISTEN) and the owner's own close
  (ESTABLISHED->FIN_WAIT1, CLOSE_WAIT->LAST_ACK: slot CLOSE, kind CLOSE).
  Any ->CLOSE marks the flow's records closed; no owner is ever taken from a
  transition that an incoming packet causes.
* A send/recv record is written only when it tells something new: the seen
  map (LRU) keeps, per flow key, the thread last reported and when; the same
  thread on the same flow is reported again only after REPORT_INTERVAL_NS.
  In every namespace (the kernel path) the seen map is asked by socket
  cookie (key: the cookie, slot COOKIE) before the tuple is read, so a
  thread's repeated calls on one socket cost one read and one lookup.
* The per-socket fast path (tp_btf programs in every namespace,
  ``_seen_in_storage``): instead of the seen map by cookie and the clock,
  the socket's own storage (``BPF_MAP_TYPE_SK_STORAGE``, ``struct
  sock_seen``: the thread last reported and the generation it was reported
  in) and a generation counter (a one-slot array) that user space moves on
  every REPORT_INTERVAL_NS (``KernelOwnership.changes``/``drain``, which the
  daemon calls many times a second).  The rule then reads: the same thread on
  the same socket is reported again at its first call in a new generation,
  so about once a second while the daemon runs; another thread (or a forked
  child) at once.  The storage is written where the seen map was (on a
  socket with a cookie, before the record), so the same calls make the same
  records and counters; a socket without a cookie yet has no storage and
  goes on through the seen map by tuple, as before, until it has one.  If
  user space stops moving the generation, a busy socket's records stop
  repeating (its first record for each thread still comes); the daemon does
  not rely on repeats: a UDP record older than the packets waiting for an
  owner by KERNEL_RECORD_STALE_S is set aside for sock_diag
  (``ownership/resolver.py``), and records are kept KERNEL_OWNER_KEEP_S.
  The storage goes with its socket, and every socket's with the map.
  Every record written adds one to the changes counter (an array map user
  space reads through mmap), so user space walks the flows map only when the
  counter moved, not once a batch of packets.
* Records are never deleted by the programs: user space drains the flows map
  with a batch lookup-and-delete.  Local port 0 (seen after resets) is
  skipped; a failed map update (a full preallocated hash map answers E2BIG)
  is counted in the event counters.
"""

from __future__ import annotations

import logging
import re
import struct
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from ..netlink.sockdiag import TcpState
from .asm import (
    AluOp,
    Helper,
    Item,
    JmpOp,
    Label,
    Reg,
    Size,
    alu64_imm,
    alu64_reg,
    atomic_add,
    call,
    exit_insn,
    imm32,
    ja,
    jmp32_imm,
    jmp_imm,
    jmp_reg,
    ld_map_fd,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
    to_be,
)
from .btf import NetOffsets, SockOffsets

log = logging.getLogger(__name__)

LICENSE = "GPL"  # bpf_probe_read_kernel is a GPL-only helper
TRACEFS_ROOT = Path("/sys/kernel/tracing")
OBJECT_NAME_PREFIX = "ntp_"

AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

R0, R1, R2, R3, R4 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R4
R6, R7, R8, R9, FP = Reg.R6, Reg.R7, Reg.R8, Reg.R9, Reg.FP


class OwnerKind(IntEnum):
    """What the owning task was doing when it was recorded."""

    SEND = 1
    RECV = 2
    CONNECT = 3
    LISTEN = 4
    CLOSE = 5


class Slot(IntEnum):
    """Which record of a flow a key names: one per source, so none hides another."""

    IO = 0  # last sender or receiver (SEND, RECV)
    OPEN = 1  # who opened it (CONNECT, LISTEN)
    CLOSE = 2  # who closed it (CLOSE)
    COOKIE = 3  # only in the seen map: the thread last reported for a socket cookie


class Counter(IntEnum):
    """Slots of the per-CPU event counter record the programs increment."""

    SEND_EVENTS = 0
    RECV_EVENTS = 1
    STATE_EVENTS = 2  # TCP transitions seen
    ERROR_RETURNS = 3  # send/recv that failed (ret < 0): not recorded
    LOCAL_PORT_ZERO = 4  # skipped: local port 0
    READ_FAILED = 5  # bpf_probe_read_kernel failed
    FLOW_UPDATE_FAILED = 6  # flows map refused a new entry (E2BIG when full)
    CONNECT_UPDATE_FAILED = 7  # connect map refused an entry
    CONNECT_JOINED = 8  # SYN_SENT->ESTABLISHED found its connect() record
    CONNECT_NOT_FOUND = 9  # ... and did not (state event lost, or LRU eviction)
    OTHER_PROTOCOL = 10  # send/recv on a socket that is not TCP or UDP over IP
    OTHER_NETNS = 11  # skipped: the socket belongs to another network namespace
    EXEC_EVENTS = 12  # execs seen by ntp_exec (execids.py)
    EXEC_LOST = 13  # ... whose record found the exec ring full
    EXEC_READ_FAILED = 14  # ... whose record was discarded after a failed read


COUNTER_SLOTS = len(Counter)

# netns_inode for the programs of the kernel counting path: sockets of every network
# namespace are recorded (their records carry the socket cookie, which tells them apart).
EVERY_NAMESPACE = 0

# The same thread on the same flow is recorded again after this long (the daemon
# keeps what it learnt much longer, ownership.kernel.KERNEL_OWNER_KEEP_S).
REPORT_INTERVAL_NS = 1_000_000_000

# struct seen, 16 bytes, the seen map's value (key: struct flow_key):
#   __u64 pid_tgid;  the thread last reported for the flow (tid low, tgid high)
#   __u64 time_ns;   when it was reported (bpf_ktime_get_ns)
SEEN = struct.Struct("=QQ")

# The changes map: one __u64 under key 0, how many records the programs wrote.
CHANGES = struct.Struct("=Q")

# struct flow_key, 40 bytes, the flows map's key:
#   __u8  laddr[16];  local address (IPv4: first 4 bytes, rest 0)
#   __u8  raddr[16];  remote address (0 for unconnected UDP and listeners)
#   __u16 lport;      local port, host order
#   __u16 rport;      remote port, host order
#   __u8  family;     AF_INET or AF_INET6 (the socket's)
#   __u8  slot;       Slot
#   __u16 protocol;   IPPROTO_TCP or IPPROTO_UDP
FLOW_KEY = struct.Struct("=16s16sHHBBH")
FLOW_KEY_LPORT, FLOW_KEY_RPORT, FLOW_KEY_FAMILY, FLOW_KEY_SLOT, FLOW_KEY_PROTOCOL = (
    32,
    34,
    36,
    37,
    38,
)

# struct owner, 48 bytes, the value of the flows and connect maps:
#   __u64 time_ns;   bpf_ktime_get_ns (CLOCK_MONOTONIC) when recorded
#   __u32 tid;       low half of bpf_get_current_pid_tgid (initial pid namespace)
#   __u32 tgid;      high half
#   char  comm[16];  bpf_get_current_comm
#   __u32 kind;      OwnerKind
#   __u32 closed;    1 once the socket reached TCP_CLOSE
#   __u64 cookie;    sk->__sk_common.skc_cookie (SEND/RECV records; 0: none yet or unknown)
OWNER = struct.Struct("=QII16sIIQ")
OWNER_TIME, OWNER_PID_TGID, OWNER_COMM, OWNER_KIND, OWNER_CLOSED, OWNER_COOKIE = (
    0,
    8,
    16,
    32,
    36,
    40,
)

# The connect map's key: the struct sock pointer (__u64).
CONNECT_KEY = struct.Struct("=Q")

# struct counters, COUNTER_SLOTS x __u64, one per CPU (Counter order).
COUNTERS = struct.Struct(f"={COUNTER_SLOTS}Q")

# The programs' stack frame (offsets from the frame pointer R10).
STACK_KEY = -40  # struct flow_key
STACK_VALUE = -88  # struct owner
STACK_SEEN = -104  # struct seen, the seen map's new value
STACK_SCRATCH = -112  # __u32 counter index / netns inode, __u64 socket or net address
STACK_CHANGES_KEY = -120  # __u32 0, the changes map's key (and the generation map's)
STACK_GENERATION = -128  # __u64 the current generation (the per-socket fast path)

# The generation map (the per-socket fast path): one __u64 under key 0 that user
# space advances every REPORT_INTERVAL_NS.
GENERATION = struct.Struct("=Q")

# struct sock_seen, 16 bytes, the value of the per-socket storage (SK_STORAGE, key int):
#   __u64 pid_tgid;    the thread last reported for the socket (tid low, tgid high)
#   __u64 generation;  the generation it was reported in
SOCK_SEEN = struct.Struct("=QQ")
SOCK_SEEN_NAME = "ntp_sock_seen"  # the value's BTF struct name
SOCK_SEEN_MEMBERS = ["pid_tgid", "generation"]
SK_STORAGE_GET_F_CREATE = 1  # bpf_sk_storage_get: create the socket's value when absent

_ACCESS = {1: Size.B, 2: Size.H, 4: Size.W, 8: Size.DW}


class TracepointError(Exception):
    """A tracepoint's format file is missing or lacks a field the programs need."""


class Field(NamedTuple):
    """One field of a tracepoint record."""

    offset: int
    size: int
    signed: bool


class TracepointFormat(NamedTuple):
    """The id and fields of one tracepoint, from its ``format`` file."""

    category: str
    name: str
    id: int
    fields: dict[str, Field]


_FIELD_LINE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)
_FIELD_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(\[[^\]]*\])?\s*$")


def parse_format(category: str, name: str, text: str) -> TracepointFormat:
    """Parse the text of ``events/<category>/<name>/format``."""
    tracepoint_id = None
    fields: dict[str, Field] = {}
    for line in text.splitlines():
        if line.startswith("ID:"):
            tracepoint_id = int(line.split(":", 1)[1])
            continue
        match = _FIELD_LINE.match(line)
        if not match:
            continue
        name_match = _FIELD_NAME.search(match["decl"])
        if not name_match:
            continue
        fields[name_match[1]] = Field(
            int(match["offset"]), int(match["size"]), match["signed"] == "1"
        )
    if tracepoint_id is None:
        raise TracepointError(f"{category}:{name}: no ID line in the format file")
    return TracepointFormat(category, name, tracepoint_id, fields)


def read_format(category: str, name: str, tracefs_root: Path = TRACEFS_ROOT) -> TracepointFormat:
    """Read and parse one tracepoint's format file."""
    path = tracefs_root / "events" / category / name / "format"
    try:
        text = path.read_text()
    except OSError as err:
        raise TracepointError(f"cannot read {path}: {err.strerror}") from err
    return parse_format(category, name, text)


def _require(fmt: TracepointFormat, sizes: dict[str, int]) -> dict[str, Field]:
    """The named fields, checked for the sizes the programs load."""
    found = {}
    for field_name, size in sizes.items():
        field = fmt.fields.get(field_name)
        if field is None:
            raise TracepointError(f"{fmt.category}:{fmt.name} has no field {field_name}")
        if field.size != size:
            raise TracepointError(
                f"{fmt.category}:{fmt.name} field {field_name} is {field.size} bytes, "
                f"expected {size}"
            )
        found[field_name] = field
    return found


LENGTH_FIELDS = {"sk": 8, "family": 2, "protocol": 2, "ret": 4}
STATE_FIELDS = {
    "skaddr": 8,
    "oldstate": 4,
    "newstate": 4,
    "sport": 2,
    "dport": 2,
    "family": 2,
    "protocol": 2,
    "saddr": 4,
    "daddr": 4,
    "saddr_v6": 16,
    "daddr_v6": 16,
}


class MapFds(NamedTuple):
    """File descriptors of the maps the programs refer to."""

    flows: int
    connect: int
    counters: int
    seen: int
    changes: int


class FastPathFds(NamedTuple):
    """The maps of the per-socket fast path (tp_btf send/recv programs, every namespace)."""

    storage: int  # SK_STORAGE of struct sock_seen
    generation: int  # ARRAY, one __u64


# --- building blocks -----------------------------------------------------------


def _count(counter: Counter) -> list[Item]:
    """counters[counter] += 1 (R9 points at this CPU's counter record)."""
    offset = counter * 8
    return [ldx(Size.DW, R1, R9, offset), alu64_imm(AluOp.ADD, R1, 1), stx(Size.DW, R9, offset, R1)]


def _counters_pointer(counters_fd: int) -> list[Item]:
    """R9 = this CPU's counter record; exits if the lookup fails (it cannot)."""
    return [
        st_imm(Size.W, FP, STACK_SCRATCH, 0),
        ld_map_fd(R1, counters_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_SCRATCH),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_reg(R9, R0),
    ]


def _zero_key() -> list[Item]:
    """flow_key = {0}: the verifier wants every key byte written."""
    return [st_imm(Size.DW, FP, STACK_KEY + offset, 0) for offset in range(0, FLOW_KEY.size, 8)]


def _probe_read(stack_offset: int, size: int, sk_offset: int, failed: str) -> list[Item]:
    """bpf_probe_read_kernel(fp + stack_offset, size, sk + sk_offset) (R8 = sk)."""
    return [
        mov64_reg(R1, FP),
        alu64_imm(AluOp.ADD, R1, stack_offset),
        mov64_imm(R2, size),
        mov64_reg(R3, R8),
        alu64_imm(AluOp.ADD, R3, sk_offset),
        call(Helper.PROBE_READ_KERNEL),
        jmp_imm(JmpOp.JNE, R0, 0, failed),
    ]


def _copy_ctx(field: Field, stack_offset: int) -> list[Item]:
    """Copy a tracepoint field (R6 = record) to the stack in naturally aligned pieces."""
    items: list[Item] = []
    done = 0
    while done < field.size:
        piece = 8
        while piece > 1 and (
            (field.offset + done) % piece
            or (stack_offset + done) % piece
            or field.size - done < piece
        ):
            piece //= 2
        items += [
            ldx(_ACCESS[piece], R2, R6, field.offset + done),
            stx(_ACCESS[piece], FP, stack_offset + done, R2),
        ]
        done += piece
    return items


def _netns_check(sk: Reg, net: NetOffsets, netns_inode: int) -> list[Item]:
    """Go to other_netns unless ``sk`` (a struct sock *) is in namespace ``netns_inode``.

    Two reads: ``sk->__sk_common.skc_net.net`` then that ``net->ns.inum``;
    a fault goes to read_failed.  The inode is compared as 32 bits (JMP32),
    since namespace inodes are above 2**31 and a 64-bit compare would
    sign-extend the immediate.  Clobbers R0-R5 and the scratch slot.
    """
    if not 0 < netns_inode <= 0xFFFFFFFF:
        raise ValueError(f"network namespace inode {netns_inode} is not a 32-bit inode number")
    return [
        # scratch = sk->__sk_common.skc_net.net
        mov64_reg(R1, FP),
        alu64_imm(AluOp.ADD, R1, STACK_SCRATCH),
        mov64_imm(R2, 8),
        mov64_reg(R3, sk),
        alu64_imm(AluOp.ADD, R3, net.sk_net),
        call(Helper.PROBE_READ_KERNEL),
        jmp_imm(JmpOp.JNE, R0, 0, "read_failed"),
        # scratch = net->ns.inum
        ldx(Size.DW, R3, FP, STACK_SCRATCH),
        alu64_imm(AluOp.ADD, R3, net.net_ns_inum),
        mov64_reg(R1, FP),
        alu64_imm(AluOp.ADD, R1, STACK_SCRATCH),
        mov64_imm(R2, 4),
        call(Helper.PROBE_READ_KERNEL),
        jmp_imm(JmpOp.JNE, R0, 0, "read_failed"),
        ldx(Size.W, R1, FP, STACK_SCRATCH),
        jmp32_imm(JmpOp.JNE, R1, imm32(netns_inode), "other_netns"),
    ]


def _netns_filter(sk: Reg, net: NetOffsets, netns_inode: int) -> list[Item]:
    """The namespace check, or nothing when ``netns_inode`` is EVERY_NAMESPACE."""
    if netns_inode == EVERY_NAMESPACE:
        return []
    return _netns_check(sk, net, netns_inode)


def _other_netns_tail(netns_inode: int) -> list[Item]:
    """Where _netns_check leaves to (absent without the check: the verifier refuses
    unreachable instructions)."""
    if netns_inode == EVERY_NAMESPACE:
        return []
    return [Label("other_netns"), *_count(Counter.OTHER_NETNS), ja("out")]


def _current_owner(kind: OwnerKind) -> list[Item]:
    """struct owner at STACK_VALUE = the current task, now, ``kind``, not closed."""
    return [
        # time_ns = bpf_ktime_get_ns()
        call(Helper.KTIME_GET_NS),
        stx(Size.DW, FP, STACK_VALUE + OWNER_TIME, R0),
        # tid (low half), tgid (high half) = bpf_get_current_pid_tgid()
        call(Helper.GET_CURRENT_PID_TGID),
        stx(Size.DW, FP, STACK_VALUE + OWNER_PID_TGID, R0),
        # comm = bpf_get_current_comm()
        mov64_reg(R1, FP),
        alu64_imm(AluOp.ADD, R1, STACK_VALUE + OWNER_COMM),
        mov64_imm(R2, 16),
        call(Helper.GET_CURRENT_COMM),
        # kind, closed = 0, cookie = 0 (length_program reads the socket's)
        st_imm(Size.W, FP, STACK_VALUE + OWNER_KIND, kind),
        st_imm(Size.W, FP, STACK_VALUE + OWNER_CLOSED, 0),
        st_imm(Size.DW, FP, STACK_VALUE + OWNER_COOKIE, 0),
    ]


def _socket_cookie(sock: SockOffsets) -> list[Item]:
    """owner.cookie = sk->__sk_common.skc_cookie (R8 = sk), when its offset is known.

    ``bpf_get_socket_cookie`` is not offered to tracepoint programs; the
    field is read instead.  The kernel sets it on first use (the cgroup_skb
    programs' ``bpf_get_socket_cookie``, SO_COOKIE, sock_diag); until then it
    is 0 and the record names no socket by cookie.  A failed read leaves 0.
    """
    if sock.skc_cookie < 0:
        return []
    return [
        mov64_reg(R1, FP),
        alu64_imm(AluOp.ADD, R1, STACK_VALUE + OWNER_COOKIE),
        mov64_imm(R2, 8),
        mov64_reg(R3, R8),
        alu64_imm(AluOp.ADD, R3, sock.skc_cookie),
        call(Helper.PROBE_READ_KERNEL),
    ]


def _update_flows(fds: MapFds, value_reg: Reg | None, done: str) -> list[Item]:
    """flows[key] = value (the stack owner, or the one ``value_reg`` points at), then
    changes += 1; count a refusal.  Clobbers R0-R5."""
    value = (
        [mov64_reg(R3, value_reg)]
        if value_reg is not None
        else [
            mov64_reg(R3, FP),
            alu64_imm(AluOp.ADD, R3, STACK_VALUE),
        ]
    )
    return [
        ld_map_fd(R1, fds.flows),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        *value,
        mov64_imm(R4, 0),  # BPF_ANY
        call(Helper.MAP_UPDATE_ELEM),
        jmp_imm(JmpOp.JNE, R0, 0, f"{done}_refused"),
        # changes[0] += 1, after the record is in place (user space reads the
        # counter first, then drains: a record it misses moves the counter again)
        st_imm(Size.W, FP, STACK_CHANGES_KEY, 0),
        ld_map_fd(R1, fds.changes),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_CHANGES_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, done),
        mov64_imm(R1, 1),
        atomic_add(Size.DW, R0, 0, R1),
        ja(done),
        Label(f"{done}_refused"),
        *_count(Counter.FLOW_UPDATE_FAILED),
        Label(done),
    ]


def _seen_before(
    seen_fd: int, pid_tgid: Reg, reported: str, update: str = "seen_update"
) -> list[Item]:
    """Go to ``reported`` after a record was written, unless seen[key] names this thread
    (``pid_tgid``) and is younger than REPORT_INTERVAL_NS; then seen[key] = (thread, now).

    Falls through (to the record) when the flow is new, the thread changed or the
    last report is old.  Uses the owner's time_ns at STACK_VALUE as now and
    STACK_SEEN for the new seen value.  Clobbers R0-R5.
    """
    return [
        ld_map_fd(R1, seen_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, update),
        ldx(Size.DW, R1, R0, 0),
        jmp_reg(JmpOp.JNE, R1, pid_tgid, update),
        # now - seen.time_ns < REPORT_INTERVAL_NS: nothing new to say
        ldx(Size.DW, R2, FP, STACK_VALUE + OWNER_TIME),
        ldx(Size.DW, R1, R0, 8),
        alu64_reg(AluOp.SUB, R2, R1),
        jmp_imm(JmpOp.JLT, R2, REPORT_INTERVAL_NS, reported),
        Label(update),
        stx(Size.DW, FP, STACK_SEEN, pid_tgid),
        ldx(Size.DW, R1, FP, STACK_VALUE + OWNER_TIME),
        stx(Size.DW, FP, STACK_SEEN + 8, R1),
        ld_map_fd(R1, seen_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        mov64_reg(R3, FP),
        alu64_imm(AluOp.ADD, R3, STACK_SEEN),
        mov64_imm(R4, 0),  # BPF_ANY; an LRU map makes room itself
        call(Helper.MAP_UPDATE_ELEM),
    ]


def _seen_by_cookie(sock: SockOffsets, fds: MapFds) -> list[Item]:
    """Leave at once when the calling thread was reported for this socket just now.

    The kernel path's cheap common case (R8 = sk): one read (the cookie), the
    clock, the thread and one lookup in the seen map under the key (cookie,
    Slot.COOKIE), instead of the tuple's five reads first.  A socket without a
    cookie yet (0), or a failed read, goes on to the tuple's own check.
    Clobbers R0-R5 and R7, the key and the owner's time.
    """
    return [
        *_zero_key(),
        *_probe_read(STACK_KEY, 8, sock.skc_cookie, "cookie_unknown"),
        ldx(Size.DW, R1, FP, STACK_KEY),
        jmp_imm(JmpOp.JEQ, R1, 0, "cookie_unknown"),
        st_imm(Size.B, FP, STACK_KEY + FLOW_KEY_SLOT, Slot.COOKIE),
        call(Helper.KTIME_GET_NS),
        stx(Size.DW, FP, STACK_VALUE + OWNER_TIME, R0),
        call(Helper.GET_CURRENT_PID_TGID),
        mov64_reg(R7, R0),
        *_seen_before(fds.seen, R7, "out", update="cookie_seen_update"),
        Label("cookie_unknown"),
    ]


def _sk_storage_get(storage_fd: int, flags: int) -> list[Item]:
    """R0 = bpf_sk_storage_get(storage, sk, NULL, flags) (R8 = sk, a BTF pointer)."""
    return [
        ld_map_fd(R1, storage_fd),
        mov64_reg(R2, R8),
        mov64_imm(R3, 0),
        mov64_imm(R4, flags),
        call(Helper.SK_STORAGE_GET),
    ]


def _seen_in_storage(sock: SockOffsets, fast: FastPathFds) -> list[Item]:
    """Leave at once when the socket's storage names the calling thread in the
    current generation; else, when the socket has a cookie, put (thread, current
    generation) in its storage (made if absent) and go on, the socket named by
    cookie (the seen map is not asked).

    The fast path of the tp_btf programs (R8 = sk, a BTF pointer, which
    ``bpf_sk_storage_get`` takes): the generation (an inlined array lookup),
    the socket's storage (its own cache, no hash) and the thread; no read of
    the socket, no clock.  The storage is written where ``_seen_by_cookie``
    writes the seen map, so the same calls go on to the same records and
    counters.  The cookie is read with a direct load (the verifier makes it a
    fault-safe BPF_PROBE_MEM load from the BTF pointer).  Clobbers R0-R5 and
    R7; keeps the generation at STACK_GENERATION.
    """
    return [
        # generation = generation_map[0] (0 if the lookup failed: it cannot)
        st_imm(Size.W, FP, STACK_CHANGES_KEY, 0),
        ld_map_fd(R1, fast.generation),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_CHANGES_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        mov64_imm(R1, 0),
        jmp_imm(JmpOp.JEQ, R0, 0, "generation_read"),
        ldx(Size.DW, R1, R0, 0),
        Label("generation_read"),
        stx(Size.DW, FP, STACK_GENERATION, R1),
        # seen = the socket's storage, if it has one
        *_sk_storage_get(fast.storage, 0),
        jmp_imm(JmpOp.JEQ, R0, 0, "storage_miss"),
        mov64_reg(R7, R0),
        call(Helper.GET_CURRENT_PID_TGID),
        ldx(Size.DW, R1, R7, 0),
        jmp_reg(JmpOp.JNE, R1, R0, "storage_miss"),
        ldx(Size.DW, R1, R7, 8),
        ldx(Size.DW, R2, FP, STACK_GENERATION),
        jmp_reg(JmpOp.JEQ, R1, R2, "out"),
        Label("storage_miss"),
        # a socket with a cookie: its storage = (this thread, this generation)
        # cookie = sk->__sk_common.skc_cookie, a direct load from the BTF pointer
        ldx(Size.DW, R1, R8, sock.skc_cookie),
        jmp_imm(JmpOp.JEQ, R1, 0, "cookie_unknown"),
        *_sk_storage_get(fast.storage, SK_STORAGE_GET_F_CREATE),
        jmp_imm(JmpOp.JEQ, R0, 0, "cookie_unknown"),
        mov64_reg(R7, R0),
        call(Helper.GET_CURRENT_PID_TGID),
        stx(Size.DW, R7, 0, R0),
        ldx(Size.DW, R1, FP, STACK_GENERATION),
        stx(Size.DW, R7, 8, R1),
        Label("cookie_unknown"),
    ]


def _epilogue(extra: list[Item]) -> list[Item]:
    """The shared exit: return 0."""
    return [*extra, Label("out"), mov64_imm(R0, 0), exit_insn()]


# --- sock_send_length / sock_recv_length -----------------------------------------


class LengthContext(NamedTuple):
    """How a length program finds its inputs: each a list of instructions.

    ``sk`` leaves the struct sock * in R8 and ``ret`` the call's result in R7
    (R6 = the program's context); ``protocol`` and ``family`` leave the
    socket's protocol and family in R1 (R8 = sk).  Built by
    ``perf_length_context`` (from the tracepoint's record) or
    ``raw_length_context`` (from the raw tracepoint's arguments and ``sk``).
    """

    sk: list[Item]
    ret: list[Item]
    protocol: list[Item]
    family: list[Item]


def perf_length_context(fmt: TracepointFormat) -> LengthContext:
    """The record's fields (BPF_PROG_TYPE_TRACEPOINT: the kernel has filled the record)."""
    f = _require(fmt, LENGTH_FIELDS)
    return LengthContext(
        sk=[ldx(Size.DW, R8, R6, f["sk"].offset)],
        ret=[ldx(Size.W, R7, R6, f["ret"].offset)],
        protocol=[ldx(Size.H, R1, R6, f["protocol"].offset)],
        family=[ldx(Size.H, R1, R6, f["family"].offset)],
    )


# The raw tracepoint's arguments, u64 each: TP_PROTO(struct sock *sk, int ret, int flags)
# of sock_send_length / sock_recv_length (include/trace/events/sock.h, Linux 6.3+).
RAW_ARG_SK = 0
RAW_ARG_RET = 8


def raw_length_context(sock: SockOffsets) -> LengthContext:
    """The raw tracepoint's arguments (BPF_PROG_TYPE_RAW_TRACEPOINT: no record is
    built): sk and ret from ``u64 args[]``, the family and protocol read from
    ``sk`` as the tracepoint's record would hold them (``sk->sk_family``,
    ``sk->sk_protocol``); ``sock.sk_protocol`` must be a whole u16 (Linux 5.6+).

    ``ret`` is an int widened to u64: its low 32 bits (little-endian) are read.
    """
    if sock.sk_protocol_is_bitfield or sock.sk_protocol < 0 or sock.skc_family < 0:
        raise ValueError("raw tracepoint programs need sk_protocol as a u16 and skc_family")
    return LengthContext(
        sk=[ldx(Size.DW, R8, R6, RAW_ARG_SK)],
        ret=[ldx(Size.W, R7, R6, RAW_ARG_RET)],
        protocol=[
            *_probe_read(STACK_SCRATCH, 2, sock.sk_protocol, "read_failed"),
            ldx(Size.H, R1, FP, STACK_SCRATCH),
        ],
        family=[
            *_probe_read(STACK_SCRATCH, 2, sock.skc_family, "read_failed"),
            ldx(Size.H, R1, FP, STACK_SCRATCH),
        ],
    )


def btf_length_context(sock: SockOffsets) -> LengthContext:
    """The tp_btf program's inputs (BPF_PROG_TYPE_TRACING on the raw tracepoint): sk
    and ret from ``u64 args[]`` as for ``raw_length_context``, but ``sk`` is a
    pointer typed by the kernel's BTF, so the family and protocol are direct
    loads from it (BPF_PROBE_MEM: no helper call; the verifier checks each
    against the member's BTF offset and size) instead of bpf_probe_read_kernel.
    """
    raw = raw_length_context(sock)
    return raw._replace(
        protocol=[ldx(Size.H, R1, R8, sock.sk_protocol)],
        family=[ldx(Size.H, R1, R8, sock.skc_family)],
    )


def length_program(
    kind: OwnerKind,
    fmt: TracepointFormat | LengthContext,
    sock: SockOffsets,
    fds: MapFds,
    net: NetOffsets,
    netns_inode: int,
    fast: FastPathFds | None = None,
) -> list[Item]:
    """The program for sock:sock_send_length (kind SEND) or sock:sock_recv_length (RECV).

    ``fmt`` is the tracepoint's format (a BPF_PROG_TYPE_TRACEPOINT program,
    reading the record) or a ``LengthContext`` (``raw_length_context``: a
    BPF_PROG_TYPE_RAW_TRACEPOINT program, or a BPF_PROG_TYPE_TRACING one on
    the raw tracepoint); all record the same.  Only sockets of network
    namespace ``netns_inode`` are recorded, or of every namespace with
    EVERY_NAMESPACE (the kernel counting path).

    ``fast`` (every namespace, a TRACING program, whose ``sk`` is a BTF
    pointer): "reported just now?" is asked of the socket's storage and the
    generation (``_seen_in_storage``) instead of the seen map by cookie and
    the clock.
    """
    ctx = fmt if isinstance(fmt, LengthContext) else perf_length_context(fmt)
    events = Counter.SEND_EVENTS if kind == OwnerKind.SEND else Counter.RECV_EVENTS
    # Every namespace (the kernel path): "reported just now?" is asked by cookie first,
    # before the tuple is read.
    by_cookie = netns_inode == EVERY_NAMESPACE and sock.skc_cookie >= 0
    if fast is not None and not by_cookie:
        raise ValueError("the per-socket fast path needs every namespace and skc_cookie")
    early_check = (
        _seen_in_storage(sock, fast)
        if fast is not None
        else _seen_by_cookie(sock, fds)
        if by_cookie
        else []
    )
    items: list[Item] = [
        # R6 = the tracepoint record, or the raw tracepoint's arguments
        mov64_reg(R6, R1),
        # R9 = this CPU's counters; count the event
        *_counters_pointer(fds.counters),
        *_count(events),
        # R8 = struct sock *; leave at once unless it is in our namespace
        *ctx.sk,
        jmp_imm(JmpOp.JEQ, R8, 0, "out"),
        *_netns_filter(R8, net, netns_inode),
        # R7 = ret (bytes moved, or -errno); a failed call is not recorded
        *ctx.ret,
        jmp32_imm(JmpOp.JSLT, R7, 0, "error_return"),
        *early_check,
        *_zero_key(),
        # key.protocol: TCP or UDP only
        *ctx.protocol,
        jmp_imm(JmpOp.JEQ, R1, IPPROTO_TCP, "protocol_ok"),
        jmp_imm(JmpOp.JEQ, R1, IPPROTO_UDP, "protocol_ok"),
        ja("other_protocol"),
        Label("protocol_ok"),
        stx(Size.H, FP, STACK_KEY + FLOW_KEY_PROTOCOL, R1),
        # key.family; the addresses come from sock_common by family
        *ctx.family,
        stx(Size.B, FP, STACK_KEY + FLOW_KEY_FAMILY, R1),
        jmp_imm(JmpOp.JEQ, R1, AF_INET6, "ipv6"),
        jmp_imm(JmpOp.JNE, R1, AF_INET, "other_protocol"),
        # IPv4: key.laddr = skc_rcv_saddr, key.raddr = skc_daddr (4 bytes each)
        *_probe_read(STACK_KEY, 4, sock.skc_rcv_saddr, "read_failed"),
        *_probe_read(STACK_KEY + 16, 4, sock.skc_daddr, "read_failed"),
        ja("ports"),
        Label("ipv6"),
        # IPv6: key.laddr = skc_v6_rcv_saddr, key.raddr = skc_v6_daddr (16 bytes each)
        *_probe_read(STACK_KEY, 16, sock.skc_v6_rcv_saddr, "read_failed"),
        *_probe_read(STACK_KEY + 16, 16, sock.skc_v6_daddr, "read_failed"),
        Label("ports"),
        # key.lport = skc_num (host order); key.rport = ntohs(skc_dport)
        *_probe_read(STACK_KEY + FLOW_KEY_LPORT, 2, sock.skc_num, "read_failed"),
        *_probe_read(STACK_KEY + FLOW_KEY_RPORT, 2, sock.skc_dport, "read_failed"),
        ldx(Size.H, R1, FP, STACK_KEY + FLOW_KEY_RPORT),
        to_be(R1, 16),
        stx(Size.H, FP, STACK_KEY + FLOW_KEY_RPORT, R1),
        # skip local port 0 (a socket after a reset)
        ldx(Size.H, R1, FP, STACK_KEY + FLOW_KEY_LPORT),
        jmp_imm(JmpOp.JEQ, R1, 0, "port_zero"),
        # key.slot = IO (already 0); value = the calling thread and the socket's cookie
        *_current_owner(kind),
        *_socket_cookie(sock),
        # R6 = pid_tgid, the thread to compare (the record is no longer needed)
        ldx(Size.DW, R6, FP, STACK_VALUE + OWNER_PID_TGID),
        # flows[key] = value, unless this thread was reported for the flow just now
        # (asked by cookie already, when the socket has one: then recorded now)
        *(
            [
                ldx(Size.DW, R1, FP, STACK_VALUE + OWNER_COOKIE),
                jmp_imm(JmpOp.JNE, R1, 0, "record"),
            ]
            if by_cookie
            else []
        ),
        *_seen_before(fds.seen, R6, "flow_done"),
        *([Label("record")] if by_cookie else []),
        *_update_flows(fds, None, "flow_done"),
        ja("out"),
    ]
    tails: list[Item] = [
        *_other_netns_tail(netns_inode),
        Label("error_return"),
        *_count(Counter.ERROR_RETURNS),
        ja("out"),
        Label("other_protocol"),
        *_count(Counter.OTHER_PROTOCOL),
        ja("out"),
        Label("read_failed"),
        *_count(Counter.READ_FAILED),
        ja("out"),
        Label("port_zero"),
        *_count(Counter.LOCAL_PORT_ZERO),
    ]
    return items + _epilogue(tails)


# --- inet_sock_set_state -------------------------------------------------------------


def _state_key(f: dict[str, Field], slot: Slot, prefix: str) -> list[Item]:
    """flow_key at STACK_KEY from the tracepoint record (R6); port 0 goes to port_zero."""
    return [
        *_zero_key(),
        # key.family
        ldx(Size.H, R1, R6, f["family"].offset),
        stx(Size.B, FP, STACK_KEY + FLOW_KEY_FAMILY, R1),
        # key.lport = sport, key.rport = dport (the record has them in host order)
        ldx(Size.H, R2, R6, f["sport"].offset),
        jmp_imm(JmpOp.JEQ, R2, 0, "port_zero"),
        stx(Size.H, FP, STACK_KEY + FLOW_KEY_LPORT, R2),
        ldx(Size.H, R2, R6, f["dport"].offset),
        stx(Size.H, FP, STACK_KEY + FLOW_KEY_RPORT, R2),
        # key.slot, key.protocol = TCP
        st_imm(Size.B, FP, STACK_KEY + FLOW_KEY_SLOT, slot),
        st_imm(Size.H, FP, STACK_KEY + FLOW_KEY_PROTOCOL, IPPROTO_TCP),
        # addresses: saddr/daddr for IPv4, saddr_v6/daddr_v6 for IPv6
        jmp_imm(JmpOp.JEQ, R1, AF_INET6, f"{prefix}_ipv6"),
        jmp_imm(JmpOp.JNE, R1, AF_INET, "out"),
        *_copy_ctx(f["saddr"], STACK_KEY),
        *_copy_ctx(f["daddr"], STACK_KEY + 16),
        ja(f"{prefix}_key_done"),
        Label(f"{prefix}_ipv6"),
        *_copy_ctx(f["saddr_v6"], STACK_KEY),
        *_copy_ctx(f["daddr_v6"], STACK_KEY + 16),
        Label(f"{prefix}_key_done"),
    ]


def _socket_address_to_scratch(f: dict[str, Field]) -> list[Item]:
    """*(u64 *)(fp + STACK_SCRATCH) = skaddr, the connect map's key."""
    return [ldx(Size.DW, R1, R6, f["skaddr"].offset), stx(Size.DW, FP, STACK_SCRATCH, R1)]


def _connect_map_call(connect_fd: int, helper: Helper) -> list[Item]:
    """R0 = helper(connect map, &scratch) for lookup or delete."""
    return [
        ld_map_fd(R1, connect_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_SCRATCH),
        call(helper),
    ]


def _mark_closed(flows_fd: int, slot: Slot) -> list[Item]:
    """flows[key with slot].closed = 1 when that record exists."""
    done = f"closed_{slot.name.lower()}"
    return [
        st_imm(Size.B, FP, STACK_KEY + FLOW_KEY_SLOT, slot),
        ld_map_fd(R1, flows_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, done),
        st_imm(Size.W, R0, OWNER_CLOSED, 1),
        Label(done),
    ]


def state_program(
    fmt: TracepointFormat, fds: MapFds, net: NetOffsets, netns_inode: int
) -> list[Item]:
    """The program for sock:inet_sock_set_state.

    Only sockets of network namespace ``netns_inode`` are recorded, or of
    every namespace with EVERY_NAMESPACE.
    """
    f = _require(fmt, STATE_FIELDS)
    items: list[Item] = [
        # R6 = the tracepoint record; TCP only
        mov64_reg(R6, R1),
        ldx(Size.H, R1, R6, f["protocol"].offset),
        jmp_imm(JmpOp.JNE, R1, IPPROTO_TCP, "out"),
        # R9 = this CPU's counters; count the event
        *_counters_pointer(fds.counters),
        *_count(Counter.STATE_EVENTS),
        # leave at once unless the socket (skaddr, in R8 for the check) is in our namespace
        ldx(Size.DW, R8, R6, f["skaddr"].offset),
        jmp_imm(JmpOp.JEQ, R8, 0, "out"),
        *_netns_filter(R8, net, netns_inode),
        # R7 = oldstate, R8 = newstate
        ldx(Size.W, R7, R6, f["oldstate"].offset),
        ldx(Size.W, R8, R6, f["newstate"].offset),
        # --- CLOSE -> SYN_SENT: inside connect(), the current task owns the socket.
        # The local port is still 0: keep the owner under the socket's address.
        jmp_imm(JmpOp.JNE, R8, TcpState.SYN_SENT, "not_syn_sent"),
        jmp_imm(JmpOp.JNE, R7, TcpState.CLOSE, "out"),
        *_current_owner(OwnerKind.CONNECT),
        *_socket_address_to_scratch(f),
        ld_map_fd(R1, fds.connect),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_SCRATCH),
        mov64_reg(R3, FP),
        alu64_imm(AluOp.ADD, R3, STACK_VALUE),
        mov64_imm(R4, 0),  # BPF_ANY
        call(Helper.MAP_UPDATE_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        *_count(Counter.CONNECT_UPDATE_FAILED),
        ja("out"),
        Label("not_syn_sent"),
        # --- SYN_SENT -> ESTABLISHED: any task (often softirq); the owner is the
        # connect() record, now joined to the complete tuple (slot OPEN).
        jmp_imm(JmpOp.JNE, R8, TcpState.ESTABLISHED, "not_established"),
        jmp_imm(JmpOp.JNE, R7, TcpState.SYN_SENT, "out"),
        *_socket_address_to_scratch(f),
        *_connect_map_call(fds.connect, Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "connect_not_found"),
        mov64_reg(R7, R0),  # R7 = the connect record (oldstate no longer needed)
        *_state_key(f, Slot.OPEN, "joined"),
        *_update_flows(fds, R7, "joined_stored"),
        *_count(Counter.CONNECT_JOINED),
        *_connect_map_call(fds.connect, Helper.MAP_DELETE_ELEM),
        ja("out"),
        Label("not_established"),
        # --- -> LISTEN: inside listen(), the current task owns the socket (slot OPEN).
        jmp_imm(JmpOp.JNE, R8, TcpState.LISTEN, "not_listen"),
        *_state_key(f, Slot.OPEN, "listen"),
        *_current_owner(OwnerKind.LISTEN),
        *_update_flows(fds, None, "listen_stored"),
        ja("out"),
        Label("not_listen"),
        # --- -> CLOSE: any task; forget a pending connect, mark every record closed.
        jmp_imm(JmpOp.JNE, R8, TcpState.CLOSE, "not_close"),
        *_socket_address_to_scratch(f),
        *_connect_map_call(fds.connect, Helper.MAP_DELETE_ELEM),
        *_state_key(f, Slot.IO, "close"),
        *_mark_closed(fds.flows, Slot.IO),
        *_mark_closed(fds.flows, Slot.OPEN),
        *_mark_closed(fds.flows, Slot.CLOSE),
        ja("out"),
        Label("not_close"),
        # --- the owner's own close(): ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT -> LAST_ACK
        # run in the closing task (slot CLOSE).  Other transitions carry no owner.
        jmp_imm(JmpOp.JNE, R8, TcpState.FIN_WAIT1, "not_fin_wait1"),
        jmp_imm(JmpOp.JEQ, R7, TcpState.ESTABLISHED, "owner_close"),
        ja("out"),
        Label("not_fin_wait1"),
        jmp_imm(JmpOp.JNE, R8, TcpState.LAST_ACK, "out"),
        jmp_imm(JmpOp.JNE, R7, TcpState.CLOSE_WAIT, "out"),
        Label("owner_close"),
        *_state_key(f, Slot.CLOSE, "owner_close"),
        *_current_owner(OwnerKind.CLOSE),
        *_update_flows(fds, None, "close_stored"),
        ja("out"),
    ]
    tails: list[Item] = [
        *_other_netns_tail(netns_inode),
        # only the namespace check reads memory here
        *(
            []
            if netns_inode == EVERY_NAMESPACE
            else [Label("read_failed"), *_count(Counter.READ_FAILED), ja("out")]
        ),
        Label("connect_not_found"),
        *_count(Counter.CONNECT_NOT_FOUND),
        ja("out"),
        Label("port_zero"),
        *_count(Counter.LOCAL_PORT_ZERO),
    ]
    return items + _epilogue(tails)
