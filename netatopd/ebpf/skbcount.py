"""The kernel counting path: per-socket packets and bytes from cgroup_skb programs.

The kernel side of ``--capture kernel``.  Owns the two
``BPF_PROG_TYPE_CGROUP_SKB`` programs (ingress, egress), their maps, their
attachment at the root of the cgroup v2 hierarchy (and the private cgroup2
mount made when the host has none) and every file descriptor behind them.
Callers: the daemon's ``capture/kernel.py`` (``KernelCounter.open`` at start,
``drain`` on an interval, ``close`` at exit), the privileged tests
(tests/privileged/test_skbcount.py) and bench/bench_skbcount.py.

What the programs count.  The kernel runs a cgroup_skb program where a
packet is handed to a local socket (ingress: ``sk_filter`` in the TCP and UDP
receive paths) or leaves one (egress: ``ip_finish_output`` /
``ip6_finish_output``), in every network namespace, never for a forwarded
packet (it has no socket).  Both programs only observe: they always return 1
(allow).  Per socket cookie (``bpf_get_socket_cookie``) they add:

* packets: ``__sk_buff->gso_segs``, 0 meaning 1 -- the segments the wire
  carries for a GSO/GRO aggregate (TCP's ``tcpi_segs_out``/``tcpi_segs_in``
  count the same way);
* IP bytes: ``__sk_buff->len`` (the IP packet: the cgroup hook sees the skb
  from its network header), plus, for an aggregate of n > 1 segments,
  (n - 1) times one set of network and transport headers (IPv4 IHL or 40
  for IPv6; TCP data offset or 8 for UDP), read with ``bpf_skb_load_bytes``.
  IPv6 extension headers are not counted into that per-segment set.

The link header and CRC are not known to the program (they depend on the
interface); ``wire_bytes`` adds them per packet in user space, giving the
module's "real load on the wire": IP length + link header + 4 per segment.

On the first packet of a socket the entry also records the socket's
protocol and family (``bpf_sk_fullsock`` on ``__sk_buff->sk``, ``struct
bpf_sock``) and its network namespace cookie (``bpf_get_netns_cookie``), so
user space can tell namespaces apart and ignore protocols other than TCP
and UDP.

Exact draining.  The programs add into a hash map reached through a
one-slot ``ARRAY_OF_MAPS``.  ``drain`` puts the empty spare hash map into
that slot -- the kernel waits for an RCU grace period on such an update, so
when it returns no program still holds the old map -- and then reads and
deletes everything in the old one: no packet is lost between two drains and
none is counted twice.

Empty drains cost nothing, and busy ones wait.  The programs count into a
two-counter news array (one slot, mapped into the daemon's memory where the
kernel allows): ``entries``, one for each entry they make in the socket map
in use, and ``sockets``, one for each socket they meet for the first time
(its cookie is not yet in ``ntp_skb_seen``, an LRU hash the programs fill).
``changes`` reads both, without a system call: nothing to drain when
``entries`` has not moved since the last switch (the map in use is empty: the
switch, a system call and an RCU grace period, and the walk are skipped), a
new socket when ``sockets`` has.  A socket that goes on sending only makes a
new entry after each switch, never a new socket, so the caller (the daemon's
KernelCapture) drains at once for a new socket, whose owner must be looked
for while it is still there, and reads the sums of known sockets at a lower
rate.  A cookie the LRU forgot only counts as new once more: one early drain.

Woken, not polling.  For a new socket the programs also write its cookie
into ``ntp_skb_wake``, a small ring buffer (Linux 5.8+) whose fd the daemon's
event loop watches (``wake_fileno``): the kernel wakes the reader when a
record lands in an empty ring, so the daemon need not look every 10 ms.
``take_wake`` empties the ring (only the wake-up matters: what is new is
read from the counters).  Where the kernel refuses the ring, there is no fd
and the caller polls ``changes`` instead.

Attachment.  By default with ``BPF_LINK_CREATE`` (cgroup links are in
``BPF_F_ALLOW_MULTI`` mode): the kernel detaches a link when its last fd is
closed, so the programs go away even when the process is killed.  With
``attach=AttachMode.PROG_ATTACH``, ``BPF_PROG_ATTACH`` with
``BPF_F_ALLOW_MULTI``; such an attachment outlives the process, so
``close`` (also run by ``atexit`` through ``weakref.finalize``) detaches it
with ``BPF_PROG_DETACH``.  Objects are named ``ntp_skb_*``, so
``helper.loaded_object_ids()`` lists them with the helper's.

Every bpf(2), mount(2) and umount2(2) call goes through ``syscalls.py``.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import tempfile
import threading
import weakref
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from . import syscalls
from .asm import (
    AluOp,
    Insn,
    InsnClass,
    Item,
    JmpOp,
    Label,
    Reg,
    Size,
    alu64_imm,
    alu64_reg,
    assemble,
    atomic_add,
    exit_insn,
    instruction_count,
    ja,
    jmp32_imm,
    jmp_imm,
    ld_map_fd,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
)
from .syscalls import (
    AttachFlag,
    AttachType,
    BpfSyscallError,
    MapFlag,
    MapType,
    ProgType,
    UpdateFlag,
    link_create,
    prog_attach,
    prog_detach,
)

log = logging.getLogger(__name__)

LICENSE = "GPL"
MOUNTINFO_PATH = Path("/proc/self/mountinfo")
CGROUP2_FSTYPE = "cgroup2"

# Map sizes: sockets with traffic between two drains.
SOCKET_MAP_ENTRIES = 16384
# Sockets remembered as seen (LRU): one forgotten only makes one early drain.
SEEN_MAP_ENTRIES = 32768
BATCH_CHUNK_ENTRIES = 1024
VERIFIER_LOG_BYTES = 1 << 20

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_VERSION = 4
IPV6_VERSION = 6
IPV6_HEADER_BYTES = 40
UDP_HEADER_BYTES = 8
TCP_DATA_OFFSET_BYTE = 12  # the byte of the TCP header whose high nibble is the data offset
CRC_BYTES = 4  # the module's Ethernet frame check sequence, per packet


class AttachMode(IntEnum):
    """How the programs are attached to the cgroup."""

    LINK = 1  # BPF_LINK_CREATE: detached by the kernel when the last fd closes
    PROG_ATTACH = 2  # BPF_PROG_ATTACH + BPF_F_ALLOW_MULTI: detached by close()


class SkbHelper(IntEnum):
    """BPF helper function numbers (enum bpf_func_id, linux/bpf.h) the programs call."""

    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    SKB_LOAD_BYTES = 26
    GET_SOCKET_COOKIE = 46
    SK_FULLSOCK = 95
    GET_NETNS_COOKIE = 122
    RINGBUF_OUTPUT = 130


# struct __sk_buff (linux/bpf.h), the members read, at their UAPI offsets:
#   __u32 len @0; ... __u32 gso_segs @164; __bpf_md_ptr(struct bpf_sock *, sk) @168
SKB_LEN = 0
SKB_GSO_SEGS = 164
SKB_SK = 168

# struct bpf_sock (linux/bpf.h): __u32 bound_dev_if @0; __u32 family @4;
# __u32 type @8; __u32 protocol @12 (protocol needs a full socket).
BPF_SOCK_FAMILY = 4
BPF_SOCK_PROTOCOL = 12

# The socket map's key: the socket cookie, __u64.
SOCKET_KEY = struct.Struct("=Q")

# struct sock_counts, 48 bytes, the socket map's value:
#   __u64 sent_packets;   wire segments sent
#   __u64 sent_ip_bytes;  IP bytes of those segments
#   __u64 recv_packets;   wire segments received
#   __u64 recv_ip_bytes;  IP bytes of those segments
#   __u64 netns_cookie;   the socket's network namespace cookie (0 if unknown)
#   __u32 protocol;       struct bpf_sock protocol (IPPROTO_*), 0 if unknown
#   __u32 family;         struct bpf_sock family (AF_INET, AF_INET6), 0 if unknown
SOCK_COUNTS = struct.Struct("=QQQQQII")
SENT_PACKETS, SENT_IP_BYTES, RECV_PACKETS, RECV_IP_BYTES = 0, 8, 16, 24
NETNS_COOKIE, PROTOCOL, FAMILY = 32, 40, 44

# The stats array's one value: __u64 lost_skbs; __u64 lost_packets; (map full)
STATS = struct.Struct("=QQ")
# The news array's one value, since open: __u64 entries; entries made in the socket
# maps; __u64 sockets; sockets met for the first time (cookie put in ntp_skb_seen).
NEWS = struct.Struct("=QQ")
NEWS_ENTRIES, NEWS_SOCKETS = 0, 8
SEEN_VALUE = struct.Struct("=I")
WAKE_RING_BYTES = 4096  # the wake ring's data: 256 records of 8 bytes (+ 8 header)
RING_POSITION = struct.Struct("=Q")  # consumer_pos (page 0), producer_pos (page 1)
ARRAY_KEY = struct.Struct("=I")

# The programs' stack frame (offsets from the frame pointer R10).
STACK_KEY = -8  # __u64 socket cookie
STACK_VALUE = -56  # struct sock_counts (48 bytes)
STACK_ARRAY_KEY = -64  # __u32 0
STACK_SCRATCH = -80  # 16 bytes: the first 10 bytes of the IP header, a TCP byte

R0, R1, R2, R3, R4 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R4
R6, R7, R8, R9, FP = Reg.R6, Reg.R7, Reg.R8, Reg.R9, Reg.FP

OBJECT_NAMES = ("ntp_skb_in", "ntp_skb_out")


class KernelCounterError(Exception):
    """The kernel counting path cannot be used here; ``reason`` is a sentence for logs."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SocketCounts(NamedTuple):
    """What one socket sent and received since the previous drain."""

    cookie: int
    netns_cookie: int  # 0 if the kernel could not tell
    protocol: int  # IPPROTO_TCP, IPPROTO_UDP, other, or 0 if unknown
    family: int  # AF_INET, AF_INET6, or 0 if unknown
    sent_packets: int  # wire segments
    sent_ip_bytes: int
    recv_packets: int
    recv_ip_bytes: int


def wire_bytes(ip_bytes: int, packets: int, link_header_bytes: int) -> int:
    """The module's load on the wire: IP bytes + (link header + CRC) per segment."""
    return ip_bytes + packets * (link_header_bytes + CRC_BYTES)


# --- the programs ------------------------------------------------------------------


def _call(helper: SkbHelper) -> Insn:
    """r0 = helper(r1, ..., r5)."""
    return Insn(InsnClass.JMP | JmpOp.CALL, 0, 0, 0, int(helper))


def _load_bytes(offset_reg: Reg | None, offset: int, stack: int, size: int) -> list[Item]:
    """r0 = bpf_skb_load_bytes(skb (R6), offset_reg + offset, fp + stack, size)."""
    items: list[Item] = [mov64_reg(R1, R6)]
    if offset_reg is None:
        items.append(mov64_imm(R2, offset))
    else:
        items += [mov64_reg(R2, offset_reg), alu64_imm(AluOp.ADD, R2, offset)]
    items += [
        mov64_reg(R3, FP),
        alu64_imm(AluOp.ADD, R3, stack),
        mov64_imm(R4, size),
        _call(SkbHelper.SKB_LOAD_BYTES),
    ]
    return items


def _segments_and_bytes() -> list[Item]:
    """R7 = wire segments, R8 = their IP bytes (R6 = skb); clobbers R0-R4, R9."""
    return [
        ldx(Size.W, R7, R6, SKB_GSO_SEGS),
        jmp32_imm(JmpOp.JNE, R7, 0, "segs_known"),
        mov64_imm(R7, 1),
        Label("segs_known"),
        ldx(Size.W, R8, R6, SKB_LEN),
        jmp_imm(JmpOp.JLE, R7, 1, "counted"),
        # An aggregate: one set of network + transport headers per extra segment.
        *_load_bytes(None, 0, STACK_SCRATCH, 10),
        jmp_imm(JmpOp.JNE, R0, 0, "counted"),
        ldx(Size.B, R2, FP, STACK_SCRATCH),  # version << 4 | IHL
        mov64_reg(R1, R2),
        alu64_imm(AluOp.RSH, R1, 4),
        jmp_imm(JmpOp.JEQ, R1, IPV4_VERSION, "ipv4"),
        jmp_imm(JmpOp.JNE, R1, IPV6_VERSION, "counted"),
        mov64_imm(R9, IPV6_HEADER_BYTES),
        ldx(Size.B, R3, FP, STACK_SCRATCH + 6),  # IPv6 next header
        ja("transport"),
        Label("ipv4"),
        mov64_reg(R9, R2),
        alu64_imm(AluOp.AND, R9, 0x0F),
        alu64_imm(AluOp.LSH, R9, 2),
        ldx(Size.B, R3, FP, STACK_SCRATCH + 9),  # IPv4 protocol
        Label("transport"),
        jmp_imm(JmpOp.JEQ, R3, IPPROTO_UDP, "udp"),
        jmp_imm(JmpOp.JNE, R3, IPPROTO_TCP, "counted"),
        *_load_bytes(R9, TCP_DATA_OFFSET_BYTE, STACK_SCRATCH, 1),
        jmp_imm(JmpOp.JNE, R0, 0, "counted"),
        ldx(Size.B, R1, FP, STACK_SCRATCH),
        alu64_imm(AluOp.RSH, R1, 4),
        alu64_imm(AluOp.LSH, R1, 2),
        alu64_reg(AluOp.ADD, R9, R1),
        ja("extra"),
        Label("udp"),
        alu64_imm(AluOp.ADD, R9, UDP_HEADER_BYTES),
        Label("extra"),
        mov64_reg(R1, R7),
        alu64_imm(AluOp.SUB, R1, 1),
        alu64_reg(AluOp.MUL, R1, R9),
        alu64_reg(AluOp.ADD, R8, R1),
        Label("counted"),
    ]


def _new_entry() -> list[Item]:
    """struct sock_counts on the stack: zero counts, the socket's protocol, family, netns."""
    items: list[Item] = [
        st_imm(Size.DW, FP, STACK_VALUE + offset, 0) for offset in range(0, SOCK_COUNTS.size, 8)
    ]
    items += [
        ldx(Size.DW, R1, R6, SKB_SK),
        jmp_imm(JmpOp.JEQ, R1, 0, "no_fullsock"),
        _call(SkbHelper.SK_FULLSOCK),
        jmp_imm(JmpOp.JEQ, R0, 0, "no_fullsock"),
        ldx(Size.W, R1, R0, BPF_SOCK_PROTOCOL),
        stx(Size.W, FP, STACK_VALUE + PROTOCOL, R1),
        ldx(Size.W, R1, R0, BPF_SOCK_FAMILY),
        stx(Size.W, FP, STACK_VALUE + FAMILY, R1),
        Label("no_fullsock"),
        mov64_reg(R1, R6),
        _call(SkbHelper.GET_NETNS_COOKIE),
        stx(Size.DW, FP, STACK_VALUE + NETNS_COOKIE, R0),
    ]
    return items


def _lookup(map_reg: Reg) -> list[Item]:
    """r0 = bpf_map_lookup_elem(map_reg, &cookie)."""
    return [
        mov64_reg(R1, map_reg),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        _call(SkbHelper.MAP_LOOKUP_ELEM),
    ]


def _bump_news(news_fd: int, at: int, done: str) -> list[Item]:
    """news[0].<at> += 1 (atomic), then on to label ``done``."""
    return [
        ld_map_fd(R1, news_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_ARRAY_KEY),
        _call(SkbHelper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, done),
        mov64_imm(R1, 1),
        atomic_add(Size.DW, R0, at, R1),
        Label(done),
    ]


def _lookup_in(map_fd: int) -> list[Item]:
    """r0 = bpf_map_lookup_elem(map_fd, &cookie)."""
    return [
        ld_map_fd(R1, map_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        _call(SkbHelper.MAP_LOOKUP_ELEM),
    ]


def _wake(wake_fd: int) -> list[Item]:
    """bpf_ringbuf_output(wake ring, &cookie, 8, 0): the kernel wakes the reader of an
    empty ring.  Nothing when there is no ring (wake_fd < 0)."""
    if wake_fd < 0:
        return []
    return [
        ld_map_fd(R1, wake_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        mov64_imm(R3, SOCKET_KEY.size),
        mov64_imm(R4, 0),
        _call(SkbHelper.RINGBUF_OUTPUT),
    ]


def count_program(
    attach_type: AttachType,
    current_fd: int,
    stats_fd: int,
    news_fd: int,
    seen_fd: int,
    wake_fd: int = -1,
) -> list[Item]:
    """The ingress or egress program: add this skb to its socket's entry, return 1.

    ``current_fd`` is the one-slot ARRAY_OF_MAPS holding the socket map in
    use; ``stats_fd`` the array whose one STATS value counts what could not
    be recorded because the socket map was full; ``news_fd`` the array whose
    one NEWS value counts the entries made and the sockets met for the first
    time (each after its entry is made); ``seen_fd`` the LRU hash of the
    cookies met (cookie -> 0); ``wake_fd`` the ring buffer a new socket's
    cookie is written to (after news counts it), or -1 for none.
    """
    if attach_type == AttachType.CGROUP_INET_EGRESS:
        packets_at, bytes_at = SENT_PACKETS, SENT_IP_BYTES
    else:
        packets_at, bytes_at = RECV_PACKETS, RECV_IP_BYTES
    return [
        mov64_reg(R6, R1),
        *_segments_and_bytes(),
        mov64_reg(R1, R6),
        _call(SkbHelper.GET_SOCKET_COOKIE),
        stx(Size.DW, FP, STACK_KEY, R0),
        st_imm(Size.W, FP, STACK_ARRAY_KEY, 0),
        ld_map_fd(R1, current_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_ARRAY_KEY),
        _call(SkbHelper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_reg(R9, R0),  # the socket map in use
        *_lookup(R9),
        jmp_imm(JmpOp.JNE, R0, 0, "add"),
        *_new_entry(),
        mov64_reg(R1, R9),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        mov64_reg(R3, FP),
        alu64_imm(AluOp.ADD, R3, STACK_VALUE),
        mov64_imm(R4, UpdateFlag.NOEXIST),  # another CPU may have made it meanwhile: fine
        _call(SkbHelper.MAP_UPDATE_ELEM),
        # news.entries += 1: the map in use is not empty (counted after the entry is in).
        *_bump_news(news_fd, NEWS_ENTRIES, "entries_counted"),
        # A cookie not in the seen map yet: a new socket (news.sockets += 1).
        *_lookup_in(seen_fd),
        jmp_imm(JmpOp.JNE, R0, 0, "seen_before"),
        ld_map_fd(R1, seen_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        mov64_reg(R3, FP),
        alu64_imm(AluOp.ADD, R3, STACK_ARRAY_KEY),  # the value: __u32 0
        mov64_imm(R4, UpdateFlag.ANY),
        _call(SkbHelper.MAP_UPDATE_ELEM),
        *_bump_news(news_fd, NEWS_SOCKETS, "sockets_counted"),
        *_wake(wake_fd),
        Label("seen_before"),
        *_lookup(R9),
        jmp_imm(JmpOp.JEQ, R0, 0, "lost"),
        Label("add"),
        atomic_add(Size.DW, R0, packets_at, R7),
        atomic_add(Size.DW, R0, bytes_at, R8),
        ja("out"),
        Label("lost"),
        ld_map_fd(R1, stats_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_ARRAY_KEY),
        _call(SkbHelper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_imm(R1, 1),
        atomic_add(Size.DW, R0, 0, R1),
        atomic_add(Size.DW, R0, 8, R7),
        Label("out"),
        mov64_imm(R0, 1),  # allow: the programs only observe
        exit_insn(),
    ]


# --- the cgroup v2 root --------------------------------------------------------------


def _unescape(field: str) -> str:
    """A mountinfo path field: octal escapes (\\040 for a space) decoded."""
    out, index = [], 0
    while index < len(field):
        escape = field[index + 1 : index + 4]
        if field[index] == "\\" and len(escape) == 3 and escape.isdigit():
            out.append(chr(int(escape, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def cgroup2_mounts(mountinfo: str) -> list[str]:
    """Mount points of cgroup2 file systems whose root is the hierarchy's root."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) <= separator + 1 or len(fields) < 5:
            continue
        if fields[separator + 1] == CGROUP2_FSTYPE and fields[3] == "/":
            found.append(_unescape(fields[4]))
    return found


def find_cgroup2_root(mountinfo_path: Path = MOUNTINFO_PATH) -> str | None:
    """The cgroup v2 root's mount point (/sys/fs/cgroup, /sys/fs/cgroup/unified), or None."""
    try:
        mounts = cgroup2_mounts(mountinfo_path.read_text())
    except OSError as err:
        raise KernelCounterError(f"cannot read {mountinfo_path}: {err.strerror}") from err
    return mounts[0] if mounts else None


# --- the counter ---------------------------------------------------------------------


class _Resources:
    """Every fd, attachment and mount of one KernelCounter, released once, in order."""

    def __init__(self) -> None:
        self.fds: list[int] = []  # maps and programs: closed last
        self.links: list[int] = []  # link fds: closed first (detaches)
        self.attached: list[tuple[int, AttachType]] = []  # (prog fd, type) to PROG_DETACH
        self.cgroup_fd = -1
        self.private_mount: str | None = None
        self.views: list[mmap.mmap] = []  # mappings of maps: unmapped first (they hold the map)
        self.lock = threading.Lock()

    def release(self, detach: bool = True) -> None:
        with self.lock:
            if detach and self.cgroup_fd >= 0:
                for prog_fd, attach_type in self.attached:
                    try:
                        prog_detach(self.cgroup_fd, prog_fd, attach_type)
                    except BpfSyscallError as err:
                        log.warning("detaching program fd %d: %s", prog_fd, err)
            self.attached.clear()
            for view in self.views:
                view.close()
            self.views.clear()
            fds = [*self.links, *self.fds]
            if self.cgroup_fd >= 0:
                fds.append(self.cgroup_fd)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError as err:
                    log.debug("close(%d): %s", fd, err.strerror)
            self.links.clear()
            self.fds.clear()
            self.cgroup_fd = -1
            mount, self.private_mount = self.private_mount, None
            if mount is not None and detach:
                try:
                    syscalls.umount_lazy(mount)
                    os.rmdir(mount)
                except (BpfSyscallError, OSError) as err:
                    log.warning("removing the private cgroup2 mount %s: %s", mount, err)


_live: weakref.WeakSet[KernelCounter] = weakref.WeakSet()


def _forget_in_child() -> None:
    """After fork(): the child drops its copies of the fds without detaching anything."""
    for instance in list(_live):
        instance._resources.release(detach=False)
        instance._closed = True


os.register_at_fork(after_in_child=_forget_in_child)


class KernelCounter:
    """The two cgroup_skb programs attached at the cgroup v2 root, and their maps."""

    def __init__(self) -> None:
        # Use open(); the constructor only prepares empty state.
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._closed = False
        self._prog_fds: dict[str, int] = {}
        self._current_fd = -1  # the ARRAY_OF_MAPS
        self._socket_fds: list[int] = []  # [in use, spare]
        self._stats_fd = -1
        self._news_fd = -1
        self._news_view: mmap.mmap | None = None  # None: read with bpf()
        self._seen_fd = -1
        self._wake_fd = -1
        self._wake_consumer: mmap.mmap | None = None  # the ring's consumer_pos page (rw)
        self._wake_producer: mmap.mmap | None = None  # its producer_pos page (read only)
        self._news_at_switch = (0, 0)  # (entries, sockets) read before the latest switch
        self.skipped_drains = 0  # drains that found the map in use empty (no switch)
        self._cgroup_path = ""
        self._attach = AttachMode.LINK
        self._run_stats = False
        self._drain_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        *,
        cgroup_root: str | None = None,
        attach: AttachMode = AttachMode.LINK,
        socket_entries: int = SOCKET_MAP_ENTRIES,
        run_stats: bool = False,
        mountinfo_path: Path = MOUNTINFO_PATH,
        wake: bool = True,
    ) -> KernelCounter:
        """Create the maps, load both programs and attach them at the cgroup v2 root.

        ``cgroup_root`` None means the mount point found in ``mountinfo_path``,
        or a private cgroup2 mount in a temporary directory when there is none
        (removed by ``close``).  ``run_stats`` keeps the kernel's run
        time/count statistics on while the counter is open.  ``wake``: a wake
        ring for new sockets (``wake_fileno``) where the kernel allows.
        KernelCounterError says why it cannot be done.
        """
        self = cls()
        self._attach = attach
        try:
            self._open(cgroup_root, socket_entries, run_stats, mountinfo_path, wake)
        except BaseException:
            self.close()
            raise
        _live.add(self)
        return self

    def _keep(self, fd: int) -> int:
        self._resources.fds.append(fd)
        return fd

    def _open(
        self,
        cgroup_root: str | None,
        entries: int,
        run_stats: bool,
        mountinfo_path: Path,
        wake: bool,
    ) -> None:
        resources = self._resources
        if cgroup_root is None:
            cgroup_root = find_cgroup2_root(mountinfo_path)
        if cgroup_root is None:
            cgroup_root = tempfile.mkdtemp(prefix="netatopd-cgroup2-")
            try:
                syscalls.mount_filesystem(CGROUP2_FSTYPE, cgroup_root)
            except BpfSyscallError as err:
                os.rmdir(cgroup_root)
                raise KernelCounterError(_reason("mounting a private cgroup2", err)) from err
            resources.private_mount = cgroup_root
            log.info("no cgroup2 mount: mounted a private one at %s", cgroup_root)
        self._cgroup_path = cgroup_root
        try:
            resources.cgroup_fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise KernelCounterError(f"cannot open {cgroup_root}: {err.strerror}") from err
        try:
            for _ in range(2):
                self._socket_fds.append(
                    self._keep(
                        syscalls.map_create(
                            MapType.HASH,
                            SOCKET_KEY.size,
                            SOCK_COUNTS.size,
                            entries,
                            "ntp_skb_socks",
                        )
                    )
                )
            self._current_fd = self._keep(
                syscalls.map_create(
                    MapType.ARRAY_OF_MAPS,
                    4,
                    4,
                    1,
                    "ntp_skb_current",
                    inner_map_fd=self._socket_fds[0],
                )
            )
            syscalls.map_update(
                self._current_fd, ARRAY_KEY.pack(0), ARRAY_KEY.pack(self._socket_fds[0])
            )
            self._stats_fd = self._keep(
                syscalls.map_create(MapType.ARRAY, 4, STATS.size, 1, "ntp_skb_stats")
            )
            self._news_fd = self._keep(self._news_map())
            self._seen_fd = self._keep(
                syscalls.map_create(
                    MapType.LRU_HASH,
                    SOCKET_KEY.size,
                    SEEN_VALUE.size,
                    SEEN_MAP_ENTRIES,
                    "ntp_skb_seen",
                )
            )
        except BpfSyscallError as err:
            raise KernelCounterError(_reason("creating the BPF maps", err)) from err
        if wake:
            self._open_wake_ring()
        if run_stats:
            try:
                self._keep(syscalls.enable_run_stats())
                self._run_stats = True
            except BpfSyscallError as err:
                log.warning("BPF run statistics not available: %s", err)
        for name, attach_type in zip(
            OBJECT_NAMES,
            (AttachType.CGROUP_INET_INGRESS, AttachType.CGROUP_INET_EGRESS),
            strict=True,
        ):
            items = count_program(
                attach_type,
                self._current_fd,
                self._stats_fd,
                self._news_fd,
                self._seen_fd,
                self._wake_fd,
            )
            fd = self._keep(_load(name, attach_type, items))
            self._prog_fds[name] = fd
            log.debug("%s: %d instructions", name, instruction_count(items))
            try:
                if self._attach == AttachMode.LINK:
                    resources.links.append(link_create(fd, resources.cgroup_fd, attach_type))
                else:
                    prog_attach(resources.cgroup_fd, fd, attach_type, AttachFlag.ALLOW_MULTI)
                    resources.attached.append((fd, attach_type))
            except BpfSyscallError as err:
                raise KernelCounterError(
                    _reason(f"attaching {name} at {cgroup_root}", err)
                ) from err
        log.info("cgroup_skb counting programs attached at %s", cgroup_root)

    def _open_wake_ring(self) -> None:
        """The wake ring and its two position pages mapped, or none (logged)."""
        try:
            fd = self._keep(
                syscalls.map_create(MapType.RINGBUF, 0, 0, WAKE_RING_BYTES, "ntp_skb_wake")
            )
        except BpfSyscallError as err:
            log.info("no ring buffer for wake-ups (%s): polling for new sockets", err)
            return
        try:
            consumer = mmap.mmap(
                fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._resources.views.append(consumer)
            producer = mmap.mmap(
                fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=mmap.PAGESIZE
            )
            self._resources.views.append(producer)
        except OSError as err:
            log.info("ring buffer not mapped (%s): polling for new sockets", err.strerror)
            return
        self._wake_fd = fd
        self._wake_consumer, self._wake_producer = consumer, producer

    def _news_map(self) -> int:
        """The news counter's array map, mapped into memory where the kernel allows."""
        try:
            fd = syscalls.map_create(
                MapType.ARRAY, 4, NEWS.size, 1, "ntp_skb_news", MapFlag.MMAPABLE
            )
        except BpfSyscallError as err:
            log.debug("mmapable ntp_skb_news refused (%s); read with bpf() instead", err)
            return syscalls.map_create(MapType.ARRAY, 4, NEWS.size, 1, "ntp_skb_news")
        try:
            view = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as err:
            log.debug("mmap of ntp_skb_news failed (%s); read with bpf() instead", err.strerror)
            return fd
        self._resources.views.append(view)
        self._news_view = view
        return fd

    # --- reading ---------------------------------------------------------------------

    def news(self) -> tuple[int, int]:
        """(entries made in the socket maps, sockets met for the first time) since open.

        A memory read where the news map is mapped, else one bpf() call.
        """
        self._require_open()
        view = self._news_view
        if view is not None:
            entries, sockets = NEWS.unpack_from(view)
            return int(entries), int(sockets)
        try:
            raw = syscalls.map_lookup(self._news_fd, ARRAY_KEY.pack(0), NEWS.size)
        except BpfSyscallError as err:
            raise KernelCounterError(f"reading ntp_skb_news failed: {err}") from err
        if raw is None:
            return 0, 0
        entries, sockets = NEWS.unpack(raw)
        return int(entries), int(sockets)

    def wake_fileno(self) -> int | None:
        """The fd that turns readable when the programs met a new socket (None: poll)."""
        return self._wake_fd if self._wake_fd >= 0 else None

    def take_wake(self) -> bool:
        """Empty the wake ring; True when it held something (a new socket was met)."""
        consumer, producer = self._wake_consumer, self._wake_producer
        if consumer is None or producer is None or self._closed:
            return False
        (produced,) = RING_POSITION.unpack_from(producer)
        (consumed,) = RING_POSITION.unpack_from(consumer)
        if produced == consumed:
            return False
        RING_POSITION.pack_into(consumer, 0, produced)
        return True

    def changes(self) -> tuple[bool, bool]:
        """(anything to drain, a new socket among it) since the last switch of maps.

        Nothing to drain: no entry was made in the map in use (``drain`` would
        do nothing).  A new socket: the programs met a socket whose cookie they
        had not met before (or one the LRU forgot).
        """
        entries, sockets = self.news()
        at_entries, at_sockets = self._news_at_switch
        return entries != at_entries, sockets != at_sockets

    def _require_open(self) -> None:
        if self._closed:
            raise KernelCounterError("the kernel counter is closed")

    def drain(self) -> dict[int, SocketCounts]:
        """cookie -> what the socket sent and received since the previous drain.

        Exact: the programs are switched to the empty spare map first (the
        kernel waits until no program runs on the old one), then the old map
        is read and emptied.  Nothing is done when the news entries counter
        has not moved since the last switch: no entry was made, the map is
        empty.  (An entry made in the old map during the switch moves the
        counter too: the next drain switches once more and finds the new map
        empty.)
        """
        self._require_open()
        with self._drain_lock:
            news = self.news()
            if news[0] == self._news_at_switch[0]:
                self.skipped_drains += 1
                return {}
            self._news_at_switch = news
            full, spare = self._socket_fds
            try:
                syscalls.map_update(self._current_fd, ARRAY_KEY.pack(0), ARRAY_KEY.pack(spare))
                self._socket_fds = [spare, full]
                pairs = syscalls.map_lookup_batch(
                    full,
                    SOCKET_KEY.size,
                    SOCK_COUNTS.size,
                    delete=True,
                    chunk_count=BATCH_CHUNK_ENTRIES,
                )
            except BpfSyscallError as err:
                raise KernelCounterError(f"draining ntp_skb_socks failed: {err}") from err
        result: dict[int, SocketCounts] = {}
        for key, value in pairs:
            (cookie,) = SOCKET_KEY.unpack(key)
            sent_p, sent_b, recv_p, recv_b, netns, protocol, family = SOCK_COUNTS.unpack(value)
            result[cookie] = SocketCounts(
                cookie, netns, protocol, family, sent_p, sent_b, recv_p, recv_b
            )
        return result

    def seen_cookies(self) -> set[int]:
        """The cookies in ``ntp_skb_seen``: sockets the programs met (the LRU's recent ones)."""
        self._require_open()
        try:
            pairs = syscalls.map_lookup_batch(
                self._seen_fd,
                SOCKET_KEY.size,
                SEEN_VALUE.size,
                delete=False,
                chunk_count=BATCH_CHUNK_ENTRIES,
            )
        except BpfSyscallError as err:
            raise KernelCounterError(f"reading ntp_skb_seen failed: {err}") from err
        return {SOCKET_KEY.unpack(key)[0] for key, _ in pairs}

    def lost(self) -> tuple[int, int]:
        """(skbs, packets) not recorded because the socket map was full, since open."""
        self._require_open()
        try:
            raw = syscalls.map_lookup(self._stats_fd, ARRAY_KEY.pack(0), STATS.size)
        except BpfSyscallError as err:
            raise KernelCounterError(f"reading ntp_skb_stats failed: {err}") from err
        if raw is None:
            return 0, 0
        skbs, packets = STATS.unpack(raw)
        return skbs, packets

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """Program name -> (run count, run time ns), from the kernel's statistics."""
        self._require_open()
        result = {}
        for name, fd in self._prog_fds.items():
            try:
                stats = syscalls.prog_run_stats(fd)
            except BpfSyscallError as err:
                raise KernelCounterError(f"reading {name} info failed: {err}") from err
            result[name] = (stats.run_cnt, stats.run_time_ns)
        return result

    def object_ids(self) -> tuple[list[int], list[int]]:
        """Kernel ids of the two programs and of the six maps (seven with the wake ring)."""
        self._require_open()
        maps = [*self._socket_fds, self._current_fd, self._stats_fd, self._news_fd, self._seen_fd]
        if self._wake_fd >= 0:
            maps.append(self._wake_fd)
        return [syscalls.object_id(fd) for fd in self._prog_fds.values()], [
            syscalls.object_id(fd) for fd in maps
        ]

    @property
    def cgroup_path(self) -> str:
        """Where the programs are attached (the cgroup v2 root's mount point)."""
        return self._cgroup_path

    @property
    def closed(self) -> bool:
        """True once close() ran (or in a child after fork)."""
        return self._closed

    # --- unloading -------------------------------------------------------------------

    def close(self) -> None:
        """Detach both programs, close every fd, remove a private mount; safe twice."""
        self._closed = True
        self._finalizer()
        _live.discard(self)

    def __enter__(self) -> KernelCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reason(what: str, err: BpfSyscallError) -> str:
    if err.errno in (errno.EPERM, errno.EACCES):
        return f"{what} was refused ({os.strerror(err.errno)}): needs root (CAP_BPF, CAP_NET_ADMIN)"
    return f"{what} failed: {err}"


def _load(name: str, attach_type: AttachType, items: list[Item]) -> int:
    code = assemble(items)
    try:
        return syscalls.prog_load(
            ProgType.CGROUP_SKB, code, LICENSE, name, expected_attach_type=attach_type
        )
    except BpfSyscallError as err:
        if err.errno in (errno.EPERM, errno.EACCES):
            raise KernelCounterError(_reason(f"loading {name}", err)) from err
        try:
            return syscalls.prog_load(
                ProgType.CGROUP_SKB,
                code,
                LICENSE,
                name,
                VERIFIER_LOG_BYTES,
                expected_attach_type=attach_type,
            )
        except BpfSyscallError as logged:
            tail = "\n".join(logged.log.strip().splitlines()[-12:])
            log.error("verifier rejected %s:\n%s", name, tail)
            raise KernelCounterError(
                f"the kernel's verifier rejected {name} ({os.strerror(logged.errno)}): {tail}"
            ) from logged
