"""A raw AF_NETLINK request/reply socket.

Owns one kernel netlink socket (``open_raw``: ``AF_NETLINK``, ``SOCK_RAW``,
close-on-exec, the receive timeout), its sequence counter and its receive
buffer.  ``NetlinkSocket.request`` sends
one request and collects the payloads of the reply: a single message, or a
multi-part reply up to NLMSG_DONE; NLMSG_ERROR becomes ``NetlinkError`` with
the kernel's errno (an error of 0 is an ACK).  Called by ``sockdiag``,
``rtnetlink`` and ``conntrack``.

The socket belongs to the network namespace of the thread that created it;
every later request is answered from that namespace.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Iterator
from enum import IntEnum, IntFlag
from typing import Protocol

log = logging.getLogger(__name__)

# Netlink protocol numbers (linux/netlink.h) this package uses.
NETLINK_SOCK_DIAG = 4

# struct nlmsghdr (linux/netlink.h), 16 bytes, host byte order:
#   __u32 nlmsg_len     length of the message including this header
#   __u16 nlmsg_type    message content (NlmsgType, or the family's own numbers)
#   __u16 nlmsg_flags   NlmFlag bits
#   __u32 nlmsg_seq     sequence number, copied into the replies
#   __u32 nlmsg_pid     sending port id (0 = the kernel)
NLMSGHDR = struct.Struct("=IHHII")

# struct timeval (sys/time.h), for SO_RCVTIMEO, x86-64 / LP64:
#   time_t      tv_sec    (64-bit)
#   suseconds_t tv_usec   (64-bit)
TIMEVAL = struct.Struct("=qq")

# struct nlmsgerr (linux/netlink.h), 20 bytes, payload of NLMSG_ERROR:
#   int              error   0 (ACK) or a negative errno
#   struct nlmsghdr  msg     header of the request that failed (its payload may follow)
NLMSGERR = struct.Struct("=iIHHII")

# NLMSG_DONE carries one int: 0, or a negative errno if the dump failed.
NLMSG_DONE_ERROR = struct.Struct("=i")

NLMSG_ALIGNTO = 4
# Message types below this are netlink's own control messages.
NLMSG_MIN_TYPE = 0x10

# A reply datagram is at most 32 KiB on current kernels (netlink dumps cap the
# skb they fill); twice that leaves room, and MSG_TRUNC tells if it was not.
RECEIVE_BUFFER_BYTES = 65536
# Wait at most this long for the kernel's answer (it always answers at once).
DEFAULT_TIMEOUT_S = 5.0
# Upper bound of datagrams read while draining an abandoned dump.
DRAIN_DATAGRAMS_MAX = 100_000


class NlmsgType(IntEnum):
    """Control message types (linux/netlink.h)."""

    NOOP = 1
    ERROR = 2
    DONE = 3
    OVERRUN = 4


class NlmFlag(IntFlag):
    """nlmsg_flags bits (linux/netlink.h)."""

    REQUEST = 0x1
    MULTI = 0x2
    ACK = 0x4
    ECHO = 0x8
    DUMP_INTR = 0x10
    ROOT = 0x100
    MATCH = 0x200
    DUMP = 0x300  # ROOT | MATCH


NLMSG_ERROR = NlmsgType.ERROR
NLMSG_DONE = NlmsgType.DONE
NLM_F_REQUEST = NlmFlag.REQUEST
NLM_F_MULTI = NlmFlag.MULTI
NLM_F_ACK = NlmFlag.ACK
NLM_F_DUMP = NlmFlag.DUMP


def nlmsg_align(length_bytes: int) -> int:
    """``length_bytes`` rounded up to the netlink alignment (4 bytes)."""
    return (length_bytes + (NLMSG_ALIGNTO - 1)) & ~(NLMSG_ALIGNTO - 1)


def nlmsg_length(payload_bytes: int) -> int:
    """nlmsg_len of a message with ``payload_bytes`` of payload."""
    return NLMSGHDR.size + payload_bytes


class NetlinkError(OSError):
    """A netlink request failed; ``errno`` is the kernel's (or EBADMSG, EMSGSIZE...)."""

    def __init__(self, error_number: int, detail: str = "") -> None:
        message = os.strerror(error_number)
        if detail:
            message = f"{message} ({detail})"
        super().__init__(error_number, message)


# One message located in a buffer: (type, flags, seq, pid, payload_start, payload_end).
MessageSpan = tuple[int, int, int, int, int, int]


def iter_messages(
    buffer: bytes | bytearray | memoryview, length_bytes: int
) -> Iterator[MessageSpan]:
    """The messages of one datagram held in ``buffer[:length_bytes]``.

    Raises NetlinkError(EBADMSG) when a header is cut short or its nlmsg_len
    lies (smaller than a header or past the end of the datagram).
    """
    offset = 0
    while offset + NLMSGHDR.size <= length_bytes:
        msg_len, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(buffer, offset)
        if msg_len < NLMSGHDR.size or offset + msg_len > length_bytes:
            raise NetlinkError(
                errno.EBADMSG,
                f"nlmsg_len {msg_len} at offset {offset} of a {length_bytes}-byte datagram",
            )
        yield (msg_type, flags, seq, pid, offset + NLMSGHDR.size, offset + msg_len)
        offset += nlmsg_align(msg_len)
    if offset < length_bytes:
        raise NetlinkError(errno.EBADMSG, f"{length_bytes - offset} trailing bytes in datagram")


class RawSocket(Protocol):
    """What NetlinkSocket needs of a socket (a real one, or a fake in tests)."""

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int: ...

    def recvfrom_into(
        self, buffer: bytearray, nbytes: int, flags: int, /
    ) -> tuple[int, object]: ...

    def close(self) -> None: ...


def family_of(address: bytes) -> int:
    """AF_INET for a 4-byte address, AF_INET6 for a 16-byte one."""
    if len(address) == 4:
        return socket.AF_INET
    if len(address) == 16:
        return socket.AF_INET6
    raise ValueError(f"an address is 4 or 16 bytes, not {len(address)}")


def open_raw(
    protocol: int,
    timeout_s: float | None = None,
    *,
    nonblocking: bool = False,
    what: str = "",
) -> socket.socket:
    """An AF_NETLINK raw socket of ``protocol`` (close-on-exec); NetlinkError if refused.

    ``timeout_s`` sets a kernel-side receive timeout (SO_RCVTIMEO) rather
    than settimeout(): no poll() before each recv, and MSG_DONTWAIT still
    returns at once while draining.  ``what`` names the socket in the error.
    """
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC | (socket.SOCK_NONBLOCK if nonblocking else 0)
    try:
        sock = socket.socket(socket.AF_NETLINK, kind, protocol)
    except OSError as err:
        raise NetlinkError(err.errno or errno.EIO, what or f"netlink protocol {protocol}") from err
    if timeout_s is not None:
        seconds = int(timeout_s)
        microseconds = int((timeout_s - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL.pack(seconds, microseconds))
    return sock


class NetlinkSocket:
    """One netlink socket of protocol ``protocol`` talking to the kernel.

    Not thread-safe: one request at a time.  ``sock`` replaces the OS socket
    (tests feed recorded datagrams through it).
    """

    def __init__(
        self,
        protocol: int = NETLINK_SOCK_DIAG,
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        sock: RawSocket | None = None,
    ) -> None:
        if sock is None:
            sock = open_raw(protocol, timeout_s)
        self._sock: RawSocket | None = sock
        self._seq = 0
        self._buffer = bytearray(RECEIVE_BUFFER_BYTES)
        self.stale_messages = 0  # replies to earlier requests, skipped
        self.foreign_datagrams = 0  # datagrams not sent by the kernel, skipped

    def _next_seq(self) -> int:
        self._seq = (self._seq % 0xFFFFFFFF) + 1  # 1 .. 2**32-1, never 0
        return self._seq

    def _socket(self) -> RawSocket:
        if self._sock is None:
            raise NetlinkError(errno.EBADF, "netlink socket closed")
        return self._sock

    def request(
        self, msg_type: int, flags: int, payload: bytes, *, reply_type: int | None = None
    ) -> list[bytes]:
        """Send one request and return the payloads of its reply messages.

        NLM_F_REQUEST is always set.  A reply that is one message without
        NLM_F_MULTI ends at that message; a multi-part one at NLMSG_DONE.
        Data messages must be of ``reply_type`` when given (else of any type
        at or above NLMSG_MIN_TYPE).  An ACK (NLMSG_ERROR with error 0) ends
        the reply.  Raises NetlinkError with the kernel's errno.
        """
        sock = self._socket()
        seq = self._next_seq()
        header = NLMSGHDR.pack(nlmsg_length(len(payload)), msg_type, flags | NLM_F_REQUEST, seq, 0)
        message = header + payload
        while True:
            try:
                sock.sendto(message, (0, 0))
                break
            except InterruptedError:
                continue  # EINTR (CPython retries too, unless a handler raised)
            except OSError as err:
                raise NetlinkError(err.errno or errno.EIO, "netlink send") from err
        payloads: list[bytes] = []
        while True:
            length_bytes = self._receive(sock)
            if length_bytes < 0:
                continue
            try:
                finished = self._take_datagram(length_bytes, seq, reply_type, payloads)
            except NetlinkError as err:
                if err.errno in (errno.EBADMSG, errno.EMSGSIZE):
                    self._drain(sock)
                raise
            if finished:
                return payloads

    def _receive(self, sock: RawSocket) -> int:
        """Length of the next datagram in the buffer, -1 for one to skip."""
        buffer = self._buffer
        while True:
            try:
                length_bytes, address = sock.recvfrom_into(buffer, len(buffer), socket.MSG_TRUNC)
                break
            except InterruptedError:
                continue
            except BlockingIOError as err:  # SO_RCVTIMEO expired
                raise NetlinkError(errno.ETIMEDOUT, "no netlink reply") from err
            except OSError as err:
                raise NetlinkError(err.errno or errno.EIO, "netlink receive") from err
        if length_bytes > len(buffer):
            self._drain(sock)
            raise NetlinkError(
                errno.EMSGSIZE, f"{length_bytes}-byte datagram, buffer of {len(buffer)}"
            )
        sender_port = address[0] if isinstance(address, tuple) and address else 0
        if sender_port != 0:
            self.foreign_datagrams += 1
            return -1
        return length_bytes

    def _take_datagram(
        self, length_bytes: int, seq: int, reply_type: int | None, payloads: list[bytes]
    ) -> bool:
        """Append the data payloads of one datagram; True when the reply is complete."""
        buffer = self._buffer
        finished = False
        for msg_type, flags, msg_seq, _pid, start, end in iter_messages(buffer, length_bytes):
            if msg_seq != seq:
                self.stale_messages += 1
                continue
            if msg_type == NlmsgType.ERROR:
                if end - start < NLMSG_DONE_ERROR.size:
                    raise NetlinkError(errno.EBADMSG, "NLMSG_ERROR too short")
                (error,) = NLMSG_DONE_ERROR.unpack_from(buffer, start)
                if error == 0:
                    return True  # ACK
                raise NetlinkError(-error if error < 0 else error)
            if msg_type == NlmsgType.DONE:
                if end - start >= NLMSG_DONE_ERROR.size:
                    (error,) = NLMSG_DONE_ERROR.unpack_from(buffer, start)
                    if error < 0:
                        raise NetlinkError(-error, "dump failed")
                return True
            if msg_type == NlmsgType.NOOP:
                continue
            if msg_type == NlmsgType.OVERRUN:
                raise NetlinkError(errno.ENOBUFS, "NLMSG_OVERRUN")
            if msg_type < NLMSG_MIN_TYPE or (reply_type is not None and msg_type != reply_type):
                raise NetlinkError(errno.EBADMSG, f"unexpected nlmsg_type {msg_type}")
            payloads.append(bytes(buffer[start:end]))
            if not flags & NLM_F_MULTI:
                finished = True
        return finished

    def _drain(self, sock: RawSocket) -> None:
        """Read and drop what is queued, so an abandoned dump ends in the kernel."""
        for _ in range(DRAIN_DATAGRAMS_MAX):
            try:
                sock.recvfrom_into(self._buffer, len(self._buffer), socket.MSG_DONTWAIT)
            except InterruptedError:
                continue
            except OSError:  # BlockingIOError when empty, or anything else: stop
                return
        log.warning("netlink: gave up draining after %d datagrams", DRAIN_DATAGRAMS_MAX)

    def close(self) -> None:
        """Close the socket; later requests raise NetlinkError(EBADF)."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
