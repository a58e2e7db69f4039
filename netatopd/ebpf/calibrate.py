"""Struct offsets without BTF: found by looking at sockets whose contents we know.

Part of the optional in-kernel ownership helper.  Owns, only while ``calibrate``
runs, one tracepoint program (``ntp_calib``), its array map and perf event,
and a handful of loopback probe sockets; everything is closed before it
returns or raises.  Callers: ``helper.py`` (``KernelOwnership.load`` when the
kernel's BTF is missing or unusable) and the tests (the pure search
functions with synthetic struct images, ``calibrate`` on the real kernel).

How: ``ntp_calib`` runs on ``sock:sock_send_length`` and, only for the
calibrating thread (``bpf_get_current_pid_tgid()`` compared with our
tgid/tid), copies the first ``SOCK_IMAGE_BYTES`` of the ``struct sock`` into
the map value, plus ``TARGET_IMAGE_BYTES`` read at an address user space
writes into the same value.  User space opens IPv4 and IPv6 (native ``::1``
and IPv4-mapped) TCP and UDP sockets on loopback with distinctive addresses
and kernel-chosen ports, sends one byte on each, and searches the images for
each field's known value: family 2/10, local port in host order, remote port
in network order, the addresses and the protocol number.  A field is
accepted only when exactly one naturally aligned offset holds the expected
value in every probe.  The socket's ``struct net *`` is the one pointer that
is the same in every probe socket and, read through the program a second
time, holds our network namespace's nsfs inode (``net->ns.inum``) at exactly
one offset.

Sizes: ``SOCK_IMAGE_BYTES`` is 1024: ``struct sock_common`` is 136 bytes and
``sk_protocol`` lies at 532 on this kernel (x86-64, 6.18), later on kernels
with lock debugging; the smallest probed object, ``struct udp_sock``, is
1344 bytes here, so the copy stays inside the socket's own allocation.  The
members of ``sock_common`` are searched for only in the first
``SOCK_COMMON_SEARCH_BYTES`` (256): ``struct inet_sock``, which follows the
whole ``struct sock``, keeps copies of the local address and port
(``inet_saddr``, ``inet_sport``) that must not be taken for them.  The
``struct net`` image is ``TARGET_IMAGE_BYTES`` = 512: ``ns`` (a ``struct
ns_common``) is near its start in every version (``ns.inum`` at 176 here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from . import syscalls
from .asm import (
    AluOp,
    Helper,
    Item,
    JmpOp,
    Label,
    Reg,
    Size,
    alu64_imm,
    assemble,
    atomic_add,
    call,
    exit_insn,
    jmp_imm,
    jmp_reg,
    ld_imm64,
    ld_map_fd,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
)
from .btf import NetOffsets, SockOffsets
from .programs import (
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LICENSE,
    Field,
    TracepointFormat,
)
from .syscalls import BpfSyscallError, MapType, ProgType

log = logging.getLogger(__name__)

SOCK_IMAGE_BYTES = 1024
TARGET_IMAGE_BYTES = 512
SOCK_COMMON_SEARCH_BYTES = 256
MAX_NET_CANDIDATES = 8  # pointers shared by every probe socket: skc_net, and few else
KERNEL_ADDRESS_MIN = 0xFFFF800000000000  # x86-64: kernel addresses are in the upper half
PROGRAM_NAME = "ntp_calib"
MAP_NAME = "ntp_calib"
ATTACH_CPU = 0  # as for the helper: one perf event, the program runs on every CPU
PROBE_TIMEOUT_S = 2.0
VERIFIER_LOG_BYTES = 1 << 18
THREAD_NETNS_PATH = Path("/proc/thread-self/ns/net")

# Addresses of the probe sockets: all on loopback (127.0.0.0/8 is local on
# lo), each distinct, so every address field has its own value.
V4_TCP_SERVER = "127.12.34.56"
V4_TCP_CLIENT = "127.65.43.21"
V4_UDP_A = "127.23.45.67"
V4_UDP_B = "127.34.56.78"
V6_LOOPBACK = "::1"
V6_TCP_SERVER = "::ffff:127.45.67.89"
V6_TCP_CLIENT = "::ffff:127.54.76.98"
V6_UDP_A = "::ffff:127.67.89.12"
V6_UDP_B = "::ffff:127.78.91.23"

# struct calibration_record, the only value of the calibration map:
#   __u64 runs;        program runs for our thread (the program adds 1)
#   __u64 target;      written by user space: an address to copy from (0: none)
#   __s64 sock_ret;    bpf_probe_read_kernel's result for sock_image
#   __s64 target_ret;  bpf_probe_read_kernel's result for target_image
#   __u8  sock_image[SOCK_IMAGE_BYTES];     the first bytes of the struct sock
#   __u8  target_image[TARGET_IMAGE_BYTES]; the bytes at target
CALIBRATION_RECORD = struct.Struct(f"=QQqq{SOCK_IMAGE_BYTES}s{TARGET_IMAGE_BYTES}s")
RECORD_RUNS, RECORD_TARGET, RECORD_SOCK_RET, RECORD_TARGET_RET = 0, 8, 16, 24
RECORD_SOCK_IMAGE = 32
RECORD_TARGET_IMAGE = RECORD_SOCK_IMAGE + SOCK_IMAGE_BYTES
MAP_KEY = struct.Struct("=I")  # __u32 index 0 of the array map

# Field encodings: skc_num is in host order, skc_dport in network order.
U16_HOST = struct.Struct("=H")
U16_NET = struct.Struct("!H")
U32_HOST = struct.Struct("=I")
U64_HOST = struct.Struct("=Q")
SO_COOKIE = 57  # asm-generic/socket.h: the socket's cookie, a __u64

R0, R1, R2, R3, R6, R7, R8, FP = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R6, Reg.R7, Reg.R8, Reg.FP
STACK_KEY = -4  # __u32 map key


class CalibrationError(Exception):
    """The offsets could not be found with certainty; the message says which and why."""


class Probe(NamedTuple):
    """One probe socket: what we know it holds, and the bytes the program copied."""

    family: int  # AF_INET or AF_INET6
    protocol: int  # IPPROTO_TCP or IPPROTO_UDP
    local_addr: bytes  # 4 bytes (AF_INET) or 16 (AF_INET6, IPv4-mapped included)
    local_port: int
    remote_addr: bytes
    remote_port: int
    image: bytes  # the first bytes of its struct sock
    cookie: int = 0  # its socket cookie (SO_COOKIE, asked before the image); 0: not known


# --- the search (pure) -----------------------------------------------------------


def find_field(
    name: str,
    probes: Sequence[Probe],
    expected: Callable[[Probe], bytes | None],
    alignment: int,
    limit: int | None = None,
) -> int:
    """The one offset (aligned, below ``limit``) holding ``expected`` in every probe.

    ``expected`` gives the bytes a probe must hold there, or None for a probe
    that says nothing about this field (an IPv4 address in an IPv6 socket).
    CalibrationError when no offset or more than one fits.
    """
    candidates: set[int] | None = None
    used = 0
    for probe in probes:
        value = expected(probe)
        if value is None:
            continue
        used += 1
        end = len(probe.image) if limit is None else min(limit, len(probe.image))
        found = {
            offset
            for offset in range(0, end - len(value) + 1, alignment)
            if probe.image[offset : offset + len(value)] == value
        }
        candidates = found if candidates is None else candidates & found
    if candidates is None:
        raise CalibrationError(f"{name}: no probe socket tells where it is")
    if not candidates:
        raise CalibrationError(f"{name}: no offset holds the expected value in all {used} probes")
    if len(candidates) > 1:
        raise CalibrationError(
            f"{name}: ambiguous, offsets {sorted(candidates)} all fit the {used} probes"
        )
    return candidates.pop()


def _v4(address: Callable[[Probe], bytes]) -> Callable[[Probe], bytes | None]:
    return lambda probe: address(probe) if probe.family == AF_INET else None


def _v6(address: Callable[[Probe], bytes]) -> Callable[[Probe], bytes | None]:
    return lambda probe: address(probe) if probe.family == AF_INET6 else None


def find_sock_offsets(probes: Sequence[Probe]) -> SockOffsets:
    """Every SockOffsets member from the probes' images; CalibrationError if not certain.

    The members of ``sock_common`` are looked for in the first
    SOCK_COMMON_SEARCH_BYTES only; ``sk_protocol`` (a __u16 since Linux 5.6,
    so never a bitfield on the 6.3+ kernels whose tracepoints we use) in the
    whole image.
    """
    families = {probe.family for probe in probes}
    protocols = {probe.protocol for probe in probes}
    if families != {AF_INET, AF_INET6} or protocols != {IPPROTO_TCP, IPPROTO_UDP}:
        raise CalibrationError(
            "the probes must cover IPv4 and IPv6, TCP and UDP "
            f"(have families {sorted(families)}, protocols {sorted(protocols)})"
        )
    common = SOCK_COMMON_SEARCH_BYTES
    return SockOffsets(
        skc_family=find_field("skc_family", probes, lambda p: U16_HOST.pack(p.family), 2, common),
        skc_num=find_field("skc_num", probes, lambda p: U16_HOST.pack(p.local_port), 2, common),
        skc_dport=find_field("skc_dport", probes, lambda p: U16_NET.pack(p.remote_port), 2, common),
        skc_rcv_saddr=find_field("skc_rcv_saddr", probes, _v4(lambda p: p.local_addr), 4, common),
        skc_daddr=find_field("skc_daddr", probes, _v4(lambda p: p.remote_addr), 4, common),
        skc_v6_rcv_saddr=find_field(
            "skc_v6_rcv_saddr", probes, _v6(lambda p: p.local_addr), 4, common
        ),
        skc_v6_daddr=find_field("skc_v6_daddr", probes, _v6(lambda p: p.remote_addr), 4, common),
        sk_protocol=find_field("sk_protocol", probes, lambda p: U16_HOST.pack(p.protocol), 2),
        sk_protocol_is_bitfield=False,
        skc_cookie=find_cookie_offset(probes),
    )


def find_cookie_offset(probes: Sequence[Probe]) -> int:
    """``skc_cookie``'s offset, or -1 when the probes do not tell it with certainty.

    Optional: without it the helper's records carry cookie 0 and the kernel
    counting path finds owners through sock_diag alone.
    """
    if not probes or any(probe.cookie == 0 for probe in probes):
        return -1
    try:
        return find_field(
            "skc_cookie", probes, lambda p: U64_HOST.pack(p.cookie), 8, SOCK_COMMON_SEARCH_BYTES
        )
    except CalibrationError as err:
        log.info("socket cookie offset not calibrated: %s", err)
        return -1


def net_pointer_candidates(probes: Sequence[Probe]) -> dict[int, int]:
    """offset -> value of the kernel pointers every probe socket shares in sock_common.

    All sockets of one namespace point at the same ``struct net``; pointers
    to per-socket or per-protocol data differ between the probes.
    CalibrationError when there is none, or more than MAX_NET_CANDIDATES.
    """
    if not probes:
        raise CalibrationError("skc_net: no probe sockets")
    end = min(SOCK_COMMON_SEARCH_BYTES, *(len(p.image) for p in probes))
    shared: dict[int, int] = {}
    for offset in range(0, end - 7, 8):
        values = {U64_HOST.unpack_from(p.image, offset)[0] for p in probes}
        if len(values) == 1:
            (value,) = values
            if value >= KERNEL_ADDRESS_MIN:
                shared[offset] = value
    if not shared:
        raise CalibrationError("skc_net: no kernel pointer is shared by every probe socket")
    if len(shared) > MAX_NET_CANDIDATES:
        raise CalibrationError(
            f"skc_net: {len(shared)} shared kernel pointers, more than {MAX_NET_CANDIDATES}"
        )
    return shared


def find_net_offsets(targets: Mapping[int, bytes | None], netns_inode: int) -> NetOffsets:
    """(pointer offset, inode offset) from the memory each candidate pointer points at.

    ``targets`` maps a candidate offset in struct sock to the bytes read at
    the pointer stored there (None when the read failed).  Exactly one
    candidate must hold ``netns_inode`` as a 4-byte-aligned __u32, at exactly
    one offset; CalibrationError otherwise.
    """
    needle = U32_HOST.pack(netns_inode)
    found = [
        (sk_offset, offset)
        for sk_offset, image in sorted(targets.items())
        if image is not None
        for offset in range(0, len(image) - 3, 4)
        if image[offset : offset + 4] == needle
    ]
    if not found:
        raise CalibrationError(
            f"net.ns.inum: none of the {len(targets)} shared pointers leads to "
            f"our namespace inode {netns_inode}"
        )
    if len(found) > 1:
        raise CalibrationError(f"skc_net / net.ns.inum: ambiguous, (sock, net) offsets {found}")
    sk_net, inum = found[0]
    return NetOffsets(sk_net=sk_net, net_ns_inum=inum)


# --- the program ------------------------------------------------------------------


def _sk_field(fmt: TracepointFormat) -> Field:
    """The tracepoint's ``sk`` field (a pointer); CalibrationError if it has none."""
    field = fmt.fields.get("sk")
    if field is None or field.size != 8:
        raise CalibrationError(f"{fmt.category}:{fmt.name} has no 8-byte field sk")
    return field


def calibration_program(fmt: TracepointFormat, map_fd: int, marker: int) -> list[Item]:
    """ntp_calib for sock:sock_send_length: copy the socket (and a target) for one thread.

    ``marker`` is the calibrating thread's ``tgid << 32 | tid`` as
    ``bpf_get_current_pid_tgid`` returns it (initial pid namespace).
    """
    sk = _sk_field(fmt)
    return [
        # R6 = the tracepoint record
        mov64_reg(R6, R1),
        # only the calibrating thread: pid_tgid == marker (a 64-bit compare)
        call(Helper.GET_CURRENT_PID_TGID),
        ld_imm64(R1, marker),
        jmp_reg(JmpOp.JNE, R0, R1, "out"),
        # R8 = struct sock *
        ldx(Size.DW, R8, R6, sk.offset),
        jmp_imm(JmpOp.JEQ, R8, 0, "out"),
        # R7 = the map's only record
        st_imm(Size.W, FP, STACK_KEY, 0),
        ld_map_fd(R1, map_fd),
        mov64_reg(R2, FP),
        alu64_imm(AluOp.ADD, R2, STACK_KEY),
        call(Helper.MAP_LOOKUP_ELEM),
        jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        mov64_reg(R7, R0),
        # record.sock_ret = bpf_probe_read_kernel(record.sock_image, SOCK_IMAGE_BYTES, sk)
        mov64_reg(R1, R7),
        alu64_imm(AluOp.ADD, R1, RECORD_SOCK_IMAGE),
        mov64_imm(R2, SOCK_IMAGE_BYTES),
        mov64_reg(R3, R8),
        call(Helper.PROBE_READ_KERNEL),
        stx(Size.DW, R7, RECORD_SOCK_RET, R0),
        # if record.target: record.target_ret = bpf_probe_read_kernel(
        #     record.target_image, TARGET_IMAGE_BYTES, record.target)
        ldx(Size.DW, R3, R7, RECORD_TARGET),
        jmp_imm(JmpOp.JEQ, R3, 0, "count"),
        mov64_reg(R1, R7),
        alu64_imm(AluOp.ADD, R1, RECORD_TARGET_IMAGE),
        mov64_imm(R2, TARGET_IMAGE_BYTES),
        call(Helper.PROBE_READ_KERNEL),
        stx(Size.DW, R7, RECORD_TARGET_RET, R0),
        # record.runs += 1
        Label("count"),
        mov64_imm(R1, 1),
        atomic_add(Size.DW, R7, RECORD_RUNS, R1),
        Label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


# --- the probe sockets ------------------------------------------------------------


class _ProbeSocket(NamedTuple):
    sock: socket.socket
    family: int
    protocol: int


def _addr(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text)


def _tcp_pair(
    stack: contextlib.ExitStack, family: int, server: str, client: str
) -> list[_ProbeSocket]:
    """A connected TCP pair: the client end and the accepted end."""
    listener = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.settimeout(PROBE_TIMEOUT_S)
    listener.bind((server, 0))
    listener.listen(1)
    near = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    if family == socket.AF_INET6:
        near.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    near.settimeout(PROBE_TIMEOUT_S)
    near.bind((client, 0))
    near.connect(listener.getsockname()[:2])
    far, _peer = listener.accept()
    stack.enter_context(far)
    far.settimeout(PROBE_TIMEOUT_S)
    return [_ProbeSocket(near, family, IPPROTO_TCP), _ProbeSocket(far, family, IPPROTO_TCP)]


def _udp_pair(
    stack: contextlib.ExitStack, family: int, first: str, second: str
) -> list[_ProbeSocket]:
    """Two UDP sockets connected to each other."""
    ends = []
    for address in (first, second):
        end = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        if family == socket.AF_INET6:
            end.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        end.settimeout(PROBE_TIMEOUT_S)
        end.bind((address, 0))
        ends.append(end)
    ends[0].connect(ends[1].getsockname()[:2])
    ends[1].connect(ends[0].getsockname()[:2])
    return [_ProbeSocket(end, family, IPPROTO_UDP) for end in ends]


def open_probe_sockets(stack: contextlib.ExitStack) -> list[_ProbeSocket]:
    """The probe sockets, closed with ``stack``: 12 sockets, every kind with two value sets."""
    v4, v6 = socket.AF_INET, socket.AF_INET6
    try:
        return [
            *_tcp_pair(stack, v4, V4_TCP_SERVER, V4_TCP_CLIENT),
            *_udp_pair(stack, v4, V4_UDP_A, V4_UDP_B),
            *_tcp_pair(stack, v6, V6_TCP_SERVER, V6_TCP_CLIENT),
            *_tcp_pair(stack, v6, V6_LOOPBACK, V6_LOOPBACK),
            *_udp_pair(stack, v6, V6_UDP_A, V6_UDP_B),
            *_udp_pair(stack, v6, V6_LOOPBACK, V6_LOOPBACK),
        ]
    except OSError as err:
        raise CalibrationError(
            f"cannot open the loopback probe sockets ({err.strerror or err}): "
            "calibration needs lo up with IPv4 and IPv6"
        ) from err


def _known(probe: _ProbeSocket, image: bytes) -> Probe:
    local = probe.sock.getsockname()
    remote = probe.sock.getpeername()
    return Probe(
        family=probe.family,
        protocol=probe.protocol,
        local_addr=_addr(probe.family, local[0]),
        local_port=local[1],
        remote_addr=_addr(probe.family, remote[0]),
        remote_port=remote[1],
        image=image,
        cookie=_cookie(probe.sock),
    )


def _cookie(sock: socket.socket) -> int:
    """The socket's cookie (SO_COOKIE gives it one if it had none); 0 if refused."""
    try:
        return U64_HOST.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, U64_HOST.size))[0]
    except OSError:
        return 0


# --- running it --------------------------------------------------------------------


class _Loaded:
    """The calibration map, program and perf event; closed in reverse order."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.perf_fd = -1
        self.map_fd = -1

    def close(self) -> None:
        if self.perf_fd >= 0:
            with contextlib.suppress(BpfSyscallError):
                syscalls.perf_event_disable(self.perf_fd)
            self.fds.insert(0, self.perf_fd)
            self.perf_fd = -1
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError as err:
                log.debug("close(%d): %s", fd, err.strerror)
        self.fds.clear()


@contextlib.contextmanager
def _loaded(fmt: TracepointFormat, marker: int) -> Iterator[_Loaded]:
    loaded = _Loaded()
    try:
        try:
            loaded.map_fd = syscalls.map_create(
                MapType.ARRAY, MAP_KEY.size, CALIBRATION_RECORD.size, 1, MAP_NAME
            )
        except BpfSyscallError as err:
            raise CalibrationError(f"creating the calibration map failed: {err}") from err
        loaded.fds.append(loaded.map_fd)
        code = assemble(calibration_program(fmt, loaded.map_fd, marker))
        try:
            prog_fd = syscalls.prog_load(
                ProgType.TRACEPOINT, code, LICENSE, PROGRAM_NAME, VERIFIER_LOG_BYTES
            )
        except BpfSyscallError as err:
            last = err.log.strip().splitlines()[-1] if err.log.strip() else ""
            raise CalibrationError(f"loading {PROGRAM_NAME} failed: {err} {last}".strip()) from err
        loaded.fds.append(prog_fd)
        try:
            loaded.perf_fd = syscalls.perf_event_open_tracepoint(fmt.id, ATTACH_CPU)
            syscalls.perf_event_attach(loaded.perf_fd, prog_fd)
        except BpfSyscallError as err:
            raise CalibrationError(f"attaching {PROGRAM_NAME} failed: {err}") from err
        yield loaded
    finally:
        loaded.close()


def _sample(loaded: _Loaded, probe: _ProbeSocket, target: int) -> tuple[bytes, bytes | None]:
    """Send one byte on ``probe`` and return (sock image, target image or None)."""
    key = MAP_KEY.pack(0)
    empty = CALIBRATION_RECORD.pack(0, target, 0, 0, b"", b"")
    try:
        syscalls.map_update(loaded.map_fd, key, empty)
        probe.sock.send(b"c")
        raw = syscalls.map_lookup(loaded.map_fd, key, CALIBRATION_RECORD.size)
    except BpfSyscallError as err:
        raise CalibrationError(f"the calibration map cannot be used: {err}") from err
    except OSError as err:
        raise CalibrationError(f"sending on a probe socket failed ({err.strerror})") from err
    if raw is None:
        raise CalibrationError("the calibration map lost its record")
    runs, _target, sock_ret, target_ret, sock_image, target_image = CALIBRATION_RECORD.unpack(raw)
    if runs != 1:
        raise CalibrationError(
            f"{PROGRAM_NAME} ran {runs} times for one send (1 expected); "
            "it matches our tgid/tid as the initial pid namespace numbers them, "
            "so a daemon inside a pid namespace cannot calibrate"
        )
    if sock_ret != 0:
        raise CalibrationError(f"reading a probe socket failed in the kernel ({sock_ret})")
    if target and target_ret != 0:
        return sock_image, None
    return sock_image, (target_image if target else None)


def calibrate(
    fmt: TracepointFormat, netns_path: Path = THREAD_NETNS_PATH
) -> tuple[SockOffsets, NetOffsets]:
    """Find SockOffsets and NetOffsets on the running kernel (root); CalibrationError if unsure.

    ``fmt`` is the format of ``sock:sock_send_length``.  Runs in the calling
    thread; the namespace whose inode is looked for is that thread's own
    (the probe sockets are opened there).  Nothing stays loaded or open.
    """
    try:
        netns_inode = os.stat(netns_path).st_ino
    except OSError as err:
        raise CalibrationError(f"cannot stat {netns_path} ({err.strerror})") from err
    _sk_field(fmt)
    marker = (os.getpid() << 32) | threading.get_native_id()
    with contextlib.ExitStack() as stack:
        sockets = open_probe_sockets(stack)
        for probe in sockets:
            _cookie(probe.sock)  # given before the images are taken, so they hold it
        loaded = stack.enter_context(_loaded(fmt, marker))
        probes = [_known(probe, _sample(loaded, probe, 0)[0]) for probe in sockets]
        sock = find_sock_offsets(probes)
        candidates = net_pointer_candidates(probes)
        targets = {
            offset: _sample(loaded, sockets[0], value)[1] for offset, value in candidates.items()
        }
        net = find_net_offsets(targets, netns_inode)
    log.info("calibrated struct offsets from %d probe sockets: %s, %s", len(probes), sock, net)
    return sock, net
