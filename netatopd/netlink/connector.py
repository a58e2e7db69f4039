"""The proc connector (NETLINK_CONNECTOR, CN_IDX_PROC): fork, exec and exit as they happen.

Owns one non-blocking NETLINK_CONNECTOR socket bound to the multicast group
CN_IDX_PROC, its subscription (PROC_CN_MCAST_LISTEN on open, IGNORE on
close) and the per-CPU sequence numbers it has seen.  ``ProcessEvents.read``
drains what is queued and gives ``ProcessEvent`` records of kind FORK, EXEC,
EXIT (and COMM, UID); it never blocks.  Meant for the task registry (through
the daemon loop, which polls ``fileno()``); imports only ``netlink.socket``.

Facts the code relies on (drivers/connector/cn_proc.c, include/uapi/linux/
cn_proc.h; measured on Linux 6.18 by tests/privileged/test_connector_kernel.py):

* One event is one datagram: an nlmsghdr of type NLMSG_DONE, a struct cn_msg
  (id = CN_IDX_PROC/CN_VAL_PROC) and a struct proc_event (40 bytes).
* ``timestamp_ns`` is ktime_get_ns(): CLOCK_MONOTONIC, the clock of
  ``time.monotonic_ns()`` (``wall_time_s`` converts it).
* Every event carries a sequence number counted per CPU (``cn_msg.seq``, the
  ``cpu`` member says which), incremented for each event sent to the group,
  the answer to a subscription included.  A gap in one CPU's numbers is the
  exact number of events this socket did not get; ``lost_events`` sums them
  when the next event of that CPU arrives (``_prime_cpus`` makes sure each
  CPU's count is known from the start, and after an overflow asks every CPU
  for such a next event at once).
* When the socket's receive queue is full the kernel drops events and the
  next recv fails once with ENOBUFS (``overflows``).  Either way the caller
  must re-read /proc: ``take_resync()`` says so once.
* Events are per thread: FORK of a thread has pid != tgid, EXIT comes for
  every thread.  A process has ended when the EXIT with pid == tgid arrives
  (``ProcessEvent.is_process``); a main thread that ends with pthread_exit()
  while other threads run sends its EXIT early (rare; the sweep still sees
  the process in /proc).
* ``exit_code`` is the wait status (task->exit_code: exit status << 8, or the
  signal number, 0x80 for a core dump); ``exit_status`` decodes it.
* The kernel answers only in the initial network namespace (elsewhere the
  subscription fails with ECONNREFUSED: no connector there), and ignores
  subscribers outside the initial pid and user namespaces (no answer at
  all: ``open`` times out).  ``netns_path`` creates the socket in another
  network namespace (e.g. the initial one) from a daemon that runs inside a
  test namespace.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from enum import IntEnum
from typing import NamedTuple, Protocol

from ..libc import libc
from .socket import NLMSGHDR, NetlinkError, NlmsgType, iter_messages, nlmsg_length

log = logging.getLogger(__name__)

# Netlink protocol number of the connector (linux/netlink.h).
NETLINK_CONNECTOR = 11

# Connector address of the process events (linux/connector.h); the index is
# also the multicast group the events are sent to.
CN_IDX_PROC = 1
CN_VAL_PROC = 1

# struct cn_msg (linux/connector.h), 20 bytes, host byte order; data follows:
#   struct cb_id id    __u32 idx (CN_IDX_PROC), __u32 val (CN_VAL_PROC)
#   __u32 seq          events: per-CPU sequence number; requests: ours
#   __u32 ack          answers: the request's ack + 1; events: 0
#   __u16 len          bytes of data that follow
#   __u16 flags        unused (0)
CN_MSG = struct.Struct("=IIIIHH")

# The request: enum proc_cn_mcast_op as a 4-byte int (every kernel accepts
# this form; Linux 6.6 also takes struct proc_input with an event filter,
# which would leave gaps in the sequence numbers, so it is not used).
PROC_CN_MCAST_OP = struct.Struct("=I")

# struct proc_event (linux/cn_proc.h), 40 bytes: this header, then a union
# of the structs below (the largest, exit and comm, 24 bytes):
#   enum proc_cn_event what    ProcEventKind
#   __u32 cpu                  CPU that sent it (its sequence-number counter)
#   __u64 timestamp_ns         ktime_get_ns(), CLOCK_MONOTONIC, 8-byte aligned
PROC_EVENT_HEADER = struct.Struct("=IIQ")
PROC_EVENT_UNION_BYTES = 24
PROC_EVENT_BYTES = PROC_EVENT_HEADER.size + PROC_EVENT_UNION_BYTES

# union member ack:
#   __u32 err                 0, or the (positive) errno of a refused request
PROC_EVENT_ACK = struct.Struct("=I")

# struct fork_proc_event, 16 bytes:
#   __kernel_pid_t parent_pid, parent_tgid   the parent (real_parent) thread and process
#   __kernel_pid_t child_pid, child_tgid     the new thread and its process
FORK_PROC_EVENT = struct.Struct("=iiii")

# struct exec_proc_event, 8 bytes:
#   __kernel_pid_t process_pid, process_tgid
EXEC_PROC_EVENT = struct.Struct("=ii")

# struct id_proc_event, 16 bytes (PROC_EVENT_UID; GID has the same layout):
#   __kernel_pid_t process_pid, process_tgid
#   __u32 ruid                 real uid (rgid), in the initial user namespace
#   __u32 euid                 effective uid (egid)
ID_PROC_EVENT = struct.Struct("=iiII")

# struct comm_proc_event, 24 bytes:
#   __kernel_pid_t process_pid, process_tgid
#   char comm[16]              new command name, NUL-padded
COMM_PROC_EVENT = struct.Struct("=ii16s")

# struct exit_proc_event, 24 bytes:
#   __kernel_pid_t process_pid, process_tgid
#   __u32 exit_code            wait status (task->exit_code)
#   __u32 exit_signal          signal sent to the parent (SIGCHLD, or 0 for threads)
#   __kernel_pid_t parent_pid, parent_tgid   0 when the parent is already gone
EXIT_PROC_EVENT = struct.Struct("=iiIIii")

# Bytes of one event message: nlmsghdr + cn_msg + proc_event (76).
EVENT_MESSAGE_BYTES = NLMSGHDR.size + CN_MSG.size + PROC_EVENT_BYTES

# cpu value of an answer on kernels before 6.6 (sent outside the sequence).
CPU_NONE = 0xFFFFFFFF
SEQ_MODULO = 1 << 32

# Receive buffer asked for (SO_RCVBUFFORCE as root, else capped by
# net.core.rmem_max): one event takes about 1 KiB of it (skb overhead),
# so 8 MiB holds some 8,000 events of a burst.
RECEIVE_BUFFER_BYTES = 8 << 20
DATAGRAM_BYTES = 4096
# Datagrams read by one read() call; more stay queued for the next.
DATAGRAMS_PER_READ = 4096
# How long open() waits for the kernel's answer to the subscription.
SUBSCRIBE_TIMEOUT_S = 2.0

# setns(2) namespace type (linux/sched.h).
CLONE_NEWNET = 0x40000000
# asm-generic/socket.h: SO_RCVBUF beyond net.core.rmem_max (CAP_NET_ADMIN);
# the socket module of Python 3.11 does not name it.
SO_RCVBUFFORCE = 33


class ProcCnMcastOp(IntEnum):
    """Subscription requests (enum proc_cn_mcast_op, linux/cn_proc.h)."""

    LISTEN = 1
    IGNORE = 2


class ProcEventKind(IntEnum):
    """What happened (enum proc_cn_event, linux/cn_proc.h); one bit each."""

    NONE = 0x00000000  # the answer (ack) to a subscription request
    FORK = 0x00000001
    EXEC = 0x00000002
    UID = 0x00000004
    GID = 0x00000040
    SID = 0x00000080
    PTRACE = 0x00000100
    COMM = 0x00000200
    NONZERO_EXIT = 0x20000000  # a filter bit only, never an event's kind
    COREDUMP = 0x40000000
    EXIT = 0x80000000


# The kinds read() returns; the others are counted in ``ignored_events``.
REPORTED_KINDS = frozenset(
    {
        ProcEventKind.FORK,
        ProcEventKind.EXEC,
        ProcEventKind.EXIT,
        ProcEventKind.COMM,
        ProcEventKind.UID,
    }
)


class ProcessEvent(NamedTuple):
    """One fork, exec, exit, comm or uid change, as the kernel told it.

    FORK: ``pid``/``tgid`` are the new thread and its process, ``parent_*``
    the parent.  EXEC, COMM, UID: the thread and process concerned.  EXIT:
    the thread that ended, ``exit_code`` (wait status), ``exit_signal`` and
    the parent (0 when already gone).  Fields a kind does not carry are 0
    (``comm`` "").
    """

    kind: ProcEventKind
    pid: int  # thread id (the kernel's pid)
    tgid: int  # process id
    parent_pid: int
    parent_tgid: int
    timestamp_ns: int  # CLOCK_MONOTONIC
    exit_code: int  # wait status (EXIT)
    exit_signal: int  # EXIT
    uid: int  # real uid (UID)
    comm: str  # new command name (COMM)
    cpu: int

    @property
    def is_process(self) -> bool:
        """True for the main thread: a process forked, a process exited."""
        return self.pid == self.tgid


def exit_status(exit_code: int) -> int:
    """The exit status of a wait status, or minus the signal number that ended it."""
    signal_number = exit_code & 0x7F
    if signal_number:
        return -signal_number
    return (exit_code >> 8) & 0xFF


def wall_time_s(timestamp_ns: int) -> float:
    """Epoch seconds of a CLOCK_MONOTONIC ``timestamp_ns`` (an event's time)."""
    return time.time() - (time.monotonic_ns() - timestamp_ns) / 1e9


def pack_mcast_request(op: ProcCnMcastOp, *, seq: int = 0, ack: int = 0) -> bytes:
    """The netlink message that subscribes (LISTEN) or unsubscribes (IGNORE)."""
    payload = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, PROC_CN_MCAST_OP.size, 0)
    payload += PROC_CN_MCAST_OP.pack(int(op))
    return NLMSGHDR.pack(nlmsg_length(len(payload)), NlmsgType.DONE, 0, seq, 0) + payload


class ConnectorMessage(NamedTuple):
    """One cn_msg + proc_event: its sequence numbers, and the event or the answer."""

    what: int  # ProcEventKind value (kinds this module does not know stay ints)
    cpu: int
    seq: int  # per-CPU sequence number
    ack: int  # an answer: the request's ack + 1; events: 0
    error: int  # an answer (kind NONE): 0 or the errno of the refusal
    event: ProcessEvent | None  # for the kinds in REPORTED_KINDS


def unpack_message(
    buffer: bytes | bytearray | memoryview, start: int, end: int
) -> ConnectorMessage:
    """The cn_msg + proc_event held in ``buffer[start:end]`` (an nlmsghdr's payload).

    Raises NetlinkError(EBADMSG) for a message too short or not of CN_IDX_PROC.
    """
    if end - start < CN_MSG.size + PROC_EVENT_HEADER.size:
        raise NetlinkError(errno.EBADMSG, f"{end - start}-byte connector message")
    idx, val, seq, ack, data_bytes, _flags = CN_MSG.unpack_from(buffer, start)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        raise NetlinkError(errno.EBADMSG, f"connector message of id {idx}.{val}")
    start += CN_MSG.size
    if data_bytes < PROC_EVENT_HEADER.size or start + data_bytes > end:
        raise NetlinkError(errno.EBADMSG, f"proc_event of {data_bytes} bytes")
    what, cpu, timestamp_ns = PROC_EVENT_HEADER.unpack_from(buffer, start)
    body = start + PROC_EVENT_HEADER.size
    body_bytes = data_bytes - PROC_EVENT_HEADER.size
    error = 0
    event: ProcessEvent | None = None
    if what == ProcEventKind.FORK:
        _need(body_bytes, FORK_PROC_EVENT)
        parent_pid, parent_tgid, pid, tgid = FORK_PROC_EVENT.unpack_from(buffer, body)
        event = ProcessEvent(
            ProcEventKind.FORK, pid, tgid, parent_pid, parent_tgid, timestamp_ns, 0, 0, 0, "", cpu
        )
    elif what == ProcEventKind.EXEC:
        _need(body_bytes, EXEC_PROC_EVENT)
        pid, tgid = EXEC_PROC_EVENT.unpack_from(buffer, body)
        event = ProcessEvent(ProcEventKind.EXEC, pid, tgid, 0, 0, timestamp_ns, 0, 0, 0, "", cpu)
    elif what == ProcEventKind.EXIT:
        _need(body_bytes, EXIT_PROC_EVENT)
        pid, tgid, code, signal_number, parent_pid, parent_tgid = EXIT_PROC_EVENT.unpack_from(
            buffer, body
        )
        event = ProcessEvent(
            ProcEventKind.EXIT,
            pid,
            tgid,
            parent_pid,
            parent_tgid,
            timestamp_ns,
            code,
            signal_number,
            0,
            "",
            cpu,
        )
    elif what == ProcEventKind.COMM:
        _need(body_bytes, COMM_PROC_EVENT)
        pid, tgid, raw = COMM_PROC_EVENT.unpack_from(buffer, body)
        comm = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        event = ProcessEvent(ProcEventKind.COMM, pid, tgid, 0, 0, timestamp_ns, 0, 0, 0, comm, cpu)
    elif what == ProcEventKind.UID:
        _need(body_bytes, ID_PROC_EVENT)
        pid, tgid, ruid, _euid = ID_PROC_EVENT.unpack_from(buffer, body)
        event = ProcessEvent(ProcEventKind.UID, pid, tgid, 0, 0, timestamp_ns, 0, 0, ruid, "", cpu)
    elif what == ProcEventKind.NONE:
        _need(body_bytes, PROC_EVENT_ACK)
        (error,) = PROC_EVENT_ACK.unpack_from(buffer, body)
    return ConnectorMessage(what, cpu, seq, ack, error, event)


def _need(body_bytes: int, layout: struct.Struct) -> None:
    if body_bytes < layout.size:
        raise NetlinkError(errno.EBADMSG, f"proc_event body of {body_bytes} bytes")


class EventSocket(Protocol):
    """What ProcessEvents needs of its socket (a real one, or a fake in tests)."""

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int: ...

    def recvfrom_into(
        self, buffer: bytearray, nbytes: int, flags: int, /
    ) -> tuple[int, object]: ...

    def getsockname(self) -> object: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def _setns(fd: int, namespace_type: int) -> None:
    if libc().setns(fd, namespace_type) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_connector_socket(
    *, netns_path: str | None = None, receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES
) -> socket.socket:
    """A non-blocking NETLINK_CONNECTOR socket bound to CN_IDX_PROC.

    ``netns_path`` (a network namespace file such as /proc/1/ns/net or
    /run/netns/NAME): the socket is created in that namespace, in a short-lived
    thread that enters it, so the caller's own threads never change namespace.
    """
    if netns_path is None:
        sock = _new_socket()
    else:
        sock = _new_socket_in(netns_path)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer_bytes)
        except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        sock.bind((0, CN_IDX_PROC))
    except OSError as err:
        sock.close()
        raise NetlinkError(err.errno or errno.EIO, "proc connector bind") from err
    return sock


def _new_socket() -> socket.socket:
    try:
        return socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
            NETLINK_CONNECTOR,
        )
    except OSError as err:
        raise NetlinkError(err.errno or errno.EIO, "proc connector socket") from err


def _new_socket_in(netns_path: str) -> socket.socket:
    """A connector socket created by a thread that entered ``netns_path`` and then ends.

    A thread of its own: setns() changes the calling thread only, and the
    thread ends without going back, so no thread of the caller is ever left
    in the wrong namespace even when something fails half way.
    """
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def create() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            failure.append(NetlinkError(err.errno or errno.EIO, f"open {netns_path}"))
            return
        try:
            _setns(fd, CLONE_NEWNET)
            result.append(_new_socket())
        except OSError as err:
            failure.append(NetlinkError(err.errno or errno.EIO, f"setns {netns_path}"))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            failure.append(err)
        finally:
            os.close(fd)

    thread = threading.Thread(target=create, name="netns-connector")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class ProcessEvents:
    """A subscription to the proc connector; ``read()`` gives what happened since.

    ``sock`` replaces the OS socket (tests feed hand-built datagrams through
    it); ``netns_path`` creates the socket in that network namespace;
    ``receive_buffer_bytes`` sizes its queue (a small one overflows sooner);
    ``prime_cpus`` learns each CPU's sequence number at once and again after
    an overflow (``_prime_cpus``, ``_drain``), so that ``lost_events`` is
    exact from the start and counts a loss in the read that meets it; it
    moves the calling thread to each CPU for a moment each time.  The
    constructor subscribes and waits (at most ``subscribe_timeout_s``) for
    the kernel's answer: NetlinkError with the kernel's errno, ECONNREFUSED
    outside the initial network namespace, ETIMEDOUT when the kernel stays
    silent (outside the initial pid or user namespace).  Not thread-safe.
    """

    def __init__(
        self,
        *,
        sock: EventSocket | None = None,
        netns_path: str | None = None,
        receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES,
        subscribe_timeout_s: float = SUBSCRIBE_TIMEOUT_S,
        prime_cpus: bool = True,
    ) -> None:
        if sock is None:
            sock = open_connector_socket(
                netns_path=netns_path, receive_buffer_bytes=receive_buffer_bytes
            )
        self._sock: EventSocket | None = sock
        self._buffer = bytearray(DATAGRAM_BYTES)
        self._next_seq: dict[int, int] = {}  # cpu -> the sequence number expected next
        self._pending: list[ProcessEvent] = []
        self._resync = False
        self._ack_wanted: int | None = None
        self._ack_error = 0
        self.events = 0  # events returned by read()
        self.ignored_events = 0  # events of kinds read() does not return (GID, SID, ...)
        self.lost_events = 0  # gaps in the per-CPU sequence numbers
        self.overflows = 0  # ENOBUFS: the receive queue was full
        self.bad_messages = 0  # malformed datagrams, skipped
        self.foreign_datagrams = 0  # not from the kernel, skipped
        self.primed_cpus = 0  # CPUs whose sequence number was learnt at subscription
        try:
            self._subscribe(subscribe_timeout_s)
            if prime_cpus:
                self.primed_cpus = self._prime_cpus()
        except BaseException:
            self._close_socket()
            raise

    # --- subscription ----------------------------------------------------------

    def _send(self, op: ProcCnMcastOp) -> int:
        """Send a LISTEN or IGNORE request; the ack value its answer will carry."""
        sock = self._socket()
        name = sock.getsockname()
        port_id = name[0] if isinstance(name, tuple) and name else 0
        ack = int(port_id) & 0xFFFFFFFF  # unique per socket: tells our answer from others'
        message = pack_mcast_request(op, ack=ack)
        while True:
            try:
                sock.sendto(message, (0, 0))
                return (ack + 1) % SEQ_MODULO
            except InterruptedError:
                continue
            except OSError as err:
                detail = "proc connector subscription"
                if err.errno == errno.ECONNREFUSED:
                    detail += (
                        " (no connector in this network namespace: only the initial one has it)"
                    )
                raise NetlinkError(err.errno or errno.EIO, detail) from err

    def _subscribe(self, timeout_s: float) -> None:
        self._ack_wanted = self._send(ProcCnMcastOp.LISTEN)
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(self._socket().fileno(), select.POLLIN)
        while self._ack_wanted is not None:
            self._pending.extend(self._drain())
            if self._ack_error:
                raise NetlinkError(self._ack_error, "proc connector refused the subscription")
            if self._ack_wanted is None:
                break
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise NetlinkError(
                    errno.ETIMEDOUT,
                    "no answer from the proc connector (it ignores processes outside "
                    "the initial pid and user namespaces)",
                )
            poller.poll(max(1, int(remaining_s * 1000)))

    def _prime_cpus(self) -> int:
        """Learn every CPU's sequence number now, so a later gap on any CPU is counted.

        A gap can only be seen against a number already received from the same
        CPU.  The kernel answers a request on the CPU that sent it (the
        connector runs the request in the sender's context, and from Linux
        6.6 the answer takes the next number of that CPU), so the calling
        thread sends LISTEN again (a no-op for a subscribed socket) once from
        each CPU it may run on, then gets its CPU set back.  Returns the number
        of CPUs visited; CPUs outside the thread's cpuset are skipped.
        """
        visited = self._ask_from_every_cpu()
        self._pending.extend(self._drain(after_overflow=False))
        return visited

    def _ask_from_every_cpu(self) -> int:
        allowed = os.sched_getaffinity(0)
        visited = 0
        try:
            for cpu in range(os.cpu_count() or 1):
                try:
                    os.sched_setaffinity(0, {cpu})
                except OSError:
                    continue  # not in this cgroup's cpuset, or offline
                self._send(ProcCnMcastOp.LISTEN)
                visited += 1
        finally:
            os.sched_setaffinity(0, allowed)
        return visited

    # --- events ------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket, readable when read() has work."""
        return self._socket().fileno()

    def _socket(self) -> EventSocket:
        if self._sock is None:
            raise NetlinkError(errno.EBADF, "proc connector socket closed")
        return self._sock

    def read(self) -> list[ProcessEvent]:
        """The events queued now, oldest first, without blocking (at most DATAGRAMS_PER_READ)."""
        events = self._pending + self._drain()
        self._pending = []
        self.events += len(events)
        return events

    def take_resync(self) -> bool:
        """True once after events were lost: the caller should re-read /proc."""
        wanted, self._resync = self._resync, False
        return wanted

    def _drain(self, *, after_overflow: bool = True) -> list[ProcessEvent]:
        """Read what is queued (bounded).

        After an overflow, once the queue is empty: every CPU is asked for an
        answer (``_ask_from_every_cpu``) and those are read too, so the events
        dropped until now show as gaps at once rather than at each CPU's next
        event (when primed).
        """
        sock = self._socket()
        buffer = self._buffer
        events: list[ProcessEvent] = []
        overflowed = False
        for _ in range(DATAGRAMS_PER_READ):
            try:
                length_bytes, address = sock.recvfrom_into(
                    buffer, len(buffer), socket.MSG_DONTWAIT | socket.MSG_TRUNC
                )
            except InterruptedError:
                continue
            except BlockingIOError:
                if overflowed and after_overflow and self.primed_cpus:
                    self._ask_from_every_cpu()
                    events.extend(self._drain(after_overflow=False))
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise NetlinkError(err.errno or errno.EIO, "proc connector receive") from err
                overflowed = True
                self.overflows += 1
                self._resync = True
                log.info("proc connector: events lost (ENOBUFS)")
                continue
            sender_port = address[0] if isinstance(address, tuple) and address else 0
            if sender_port != 0:
                self.foreign_datagrams += 1
                continue
            try:
                if length_bytes > len(buffer):
                    raise NetlinkError(errno.EMSGSIZE, f"{length_bytes}-byte datagram")
                self._take_datagram(length_bytes, events)
            except NetlinkError as err:
                self.bad_messages += 1
                self._resync = True
                log.warning("proc connector: %s; skipped", err)
        return events

    def _take_datagram(self, length_bytes: int, events: list[ProcessEvent]) -> None:
        buffer = self._buffer
        for msg_type, _flags, _seq, _pid, start, end in iter_messages(buffer, length_bytes):
            if msg_type != NlmsgType.DONE:
                if msg_type == NlmsgType.OVERRUN:
                    self.overflows += 1
                    self._resync = True
                continue
            message = unpack_message(buffer, start, end)
            self._count_sequence(message.cpu, message.seq)
            if message.event is not None:
                events.append(message.event)
            elif message.what == ProcEventKind.NONE:
                if self._ack_wanted is not None and message.ack == self._ack_wanted:
                    self._ack_wanted = None
                    self._ack_error = message.error
            else:
                self.ignored_events += 1

    def _count_sequence(self, cpu: int, seq: int) -> None:
        if cpu == CPU_NONE:
            return  # an answer from a kernel before 6.6: outside the sequence
        expected = self._next_seq.get(cpu)
        self._next_seq[cpu] = (seq + 1) % SEQ_MODULO
        if expected is None or seq == expected:
            return
        gap = (seq - expected) % SEQ_MODULO
        if gap < SEQ_MODULO // 2:
            self.lost_events += gap
            self._resync = True

    # --- the end -------------------------------------------------------------------

    def close(self) -> None:
        """Unsubscribe (PROC_CN_MCAST_IGNORE, best effort) and close the socket."""
        if self._sock is None:
            return
        try:
            self._send(ProcCnMcastOp.IGNORE)
        except NetlinkError as err:
            log.debug("proc connector: unsubscribe failed: %s", err)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def __enter__(self) -> ProcessEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
