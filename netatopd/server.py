"""The control socket and the atop socket: their listeners, clients and limits.

Control socket (the kernel module's getsockopt commands): owns the listening
Unix stream socket, the client connections with their input and output
buffers, and the requests that are waiting (GETCNT_EXIT while the exit list is
empty, EMPTY_EXIT while it is not, SYNC until the capture ring is drained).
Answers come from a ``ControlBackend`` (implemented by daemon.answers), so
this module never reaches into the counting stages (tests/unit/test_layering.py
checks it loads only protocol, tasks, exitlist and defaults).  Built by
daemon.main; served by daemon.loop.

Wire format (see netatop-control(5) and protocol.py): a client sends 16-byte
requests; every request gets a 16-byte reply header and a payload.  A request
with a bad magic or an unknown command gets an error reply (EBADMSG or
EINVAL) and its connection is closed; the daemon carries on.

Atop socket (``AtopServer``, atop 2.10 and later started with ``-K``, the
protocol of atop's netatop-bpf helper): per sample the client sends 96 bytes
(an uninitialised ``struct netpertask``, ignored) and gets one netpertask per
live process from an ``AtopBackend``, the processes finished since its previous
request once more (from the daemon's ``ExitJournal``), and a record with id 0.
See ``AtopServer`` for the send discipline atop needs.

Both sockets bound what a client can cost (see ``UnixStreamServer``,
``ControlServer`` and ``AtopServer``): queued output per client and in total,
timeouts for idle, slow and non-reading clients (time from an injectable
clock), MAX_CLIENTS connections with the oldest idle one evicted for a
newcomer, and forced closures logged through a rate-limited ``DropLog``.

The daemon loop owns the selector: it calls the callables registered as
selector data with the event mask, and the control server's
``service_waiters`` after every pass (which also runs its ``expire``); the atop
server runs its ``expire`` after each of its own events, and the loop calls it
after every pass too (at least once a second), so a stalled client is closed
even when nothing else happens on that socket.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sized
from typing import Generic, Protocol, TypeVar

from .exitlist import ExitJournal
from .protocol import (
    NETPERTASK,
    NETPERTASK_SIZE,
    REPLY,
    REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    Command,
)
from .rundir import RunDirError, SafeDirectory
from .tasks import ExitedTask, TaskInfo

log = logging.getLogger(__name__)

MAX_CLIENTS = 256  # per socket; a newcomer beyond it evicts the oldest idle connection
MAX_INPUT_BYTES = 4096  # requests are 16 bytes; a client piling up more is cut off
SEND_CHUNK_BYTES = 64 * 1024
# Answers queued for one control client: past this it is served no further request
# (and not read from) until it reads them.
MAX_OUTPUT_BYTES_PER_CLIENT = 1 << 20
# Answers queued for all control clients: past this, clients that hold more than their
# own cap and read nothing for OVERLOAD_STALL_S are closed, oldest first.
MAX_OUTPUT_BYTES_TOTAL = 16 << 20
OVERLOAD_STALL_S = 1.0
# A control client with no request waiting that completes no exchange (request answered
# and read) for this long is closed: idle, slowloris, or not reading its answers.
CONTROL_IDLE_TIMEOUT_S = 30.0
EXPIRE_INTERVAL_S = 0.25  # how often the timeouts are looked at
DROP_LOG_INTERVAL_S = 10.0  # at most one line about closed clients per socket this often

Clock = Callable[[], float]


class ServerError(Exception):
    """The control socket could not be set up (message says why and what to do)."""


class ControlBackend(Protocol):
    def probe(self) -> bytes: ...
    def force_gc(self) -> object: ...
    def gc_done(self, token: object) -> bool: ...
    def getcnt_tgid(self, tgid: int) -> bytes | None: ...
    def getcnt_pid(self, pid: int) -> bytes | None: ...
    def pop_exited(self) -> bytes | None: ...
    def exit_list_length(self) -> int: ...
    def status(self) -> dict[str, object]: ...
    def list_tasks(self) -> bytes: ...
    def list_exited(self) -> bytes: ...
    def list_tasks_detail(self) -> bytes: ...
    def list_exited_detail(self) -> bytes: ...
    def pop_exited_detail(self) -> bytes | None: ...
    def start_sync(self) -> object: ...
    def sync_done(self, token: object) -> bool: ...


class HasSocket(Protocol):
    sock: socket.socket


ConnectionT = TypeVar("ConnectionT", bound=HasSocket)


class Connection:
    __slots__ = (
        "sock",
        "inbox",
        "outbox",
        "waiting",
        "closing",
        "peer",
        "events",
        "handler",
        "last_active_s",
        "last_progress_s",
    )

    def __init__(self, sock: socket.socket, now_s: float) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.waiting: tuple[Command, object] | None = None  # a blocking request in progress
        self.closing = False  # close once the outbox is empty
        self.peer = ""
        self.events = selectors.EVENT_READ  # as registered with the selector
        self.handler: Callable[[int], None] | None = None
        self.last_active_s = now_s  # accepted, a request taken, or every answer read
        self.last_progress_s = now_s  # the client last took some of its answers


class DropLog:
    """Warnings about clients closed by force, at most one line per interval.

    The first closure is logged at once; those that follow within the interval
    are counted by reason and told in one line when the interval is over (on the
    next closure or the next ``flush``).
    """

    def __init__(self, what: str, clock: Clock) -> None:
        self.what = what
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.next_line_s = -float("inf")
        self.total = 0  # clients closed by force since start

    def note(self, reason: str) -> None:
        self.total += 1
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.flush()

    def flush(self) -> None:
        now_s = self.clock()
        if not self.counts or now_s < self.next_line_s:
            return
        closed = sum(self.counts.values())
        reasons = "; ".join(f"{n} {reason}" for reason, n in self.counts.items())
        log.warning(
            "%s: closed %d client%s (%s)", self.what, closed, "" if closed == 1 else "s", reasons
        )
        self.counts.clear()
        self.next_line_s = now_s + DROP_LOG_INTERVAL_S


def prepare_socket_path(path: str, what: str, remove_stale: bool = True) -> None:
    """Remove a stale socket file at path; refuse if a live server answers there.

    With remove_stale False (netatopd --check) a leftover file is left alone.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        if remove_stale:
            os.unlink(path)  # nobody listens: a leftover of a daemon that died
        return
    finally:
        probe.close()
    raise ServerError(f"another program already serves {what} on {path}; stop it first")


def listen_unix(path: str, mode: int, what: str) -> socket.socket:
    prepare_socket_path(path, what)
    sock = socket.socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as err:
        sock.close()
        raise ServerError(f"cannot create {what} {path}: {err.strerror}") from err
    finally:
        os.umask(old_umask)  # the umask gave the socket its mode at creation: no chmod,
    sock.listen(64)  # which would follow a symlink put in its place meanwhile
    return sock


class UnixStreamServer(Generic[ConnectionT]):
    """A listening Unix stream socket and its non-blocking client connections.

    Shared by the control and atop sockets: accepting, closing one connection,
    closing everything and removing the socket file.  The number of connections
    is capped at MAX_CLIENTS, and a newcomer is never refused for it: the
    oldest idle connection (the oldest of all if none is idle) is closed to make
    room.  Connections closed by force are logged through a ``DropLog``.
    Subclasses make a connection object in ``_accepted`` and register it, say
    which connections are idle, and close the expired ones in ``_expire``.
    Time comes from ``clock`` (time.monotonic; tests pass their own).

    The daemon passes the checked directory the socket lives in (a
    ``rundir.SafeDirectory``): the socket is then bound, given to ``group`` and
    removed through that directory's descriptor, and only if it is still the
    file this server made.  Without one (tests, benchmarks) the path is used as is.
    With ``group`` the socket is mode | 0660 and that group's.
    """

    def __init__(
        self,
        path: str,
        mode: int,
        what: str,
        clock: Clock = time.monotonic,
        directory: SafeDirectory | None = None,
        group: str | int | None = None,
    ) -> None:
        self.path = path
        self.what = what
        self.clock = clock
        self.connections: dict[int, ConnectionT] = {}
        self.selector: selectors.BaseSelector | None = None
        self.directory = directory
        self.name = os.path.basename(path)
        gid = None if group is None else resolve_group(group)
        if gid is not None:
            mode |= 0o060  # a group that may connect needs read and write
        if directory is None:
            self.listener = listen_unix(path, mode, what)
        else:
            try:
                self.listener = directory.bind_socket(self.name, mode)
            except RunDirError as err:
                raise ServerError(f"{what}: {err}") from err
        self.made = os.lstat(path) if directory is None else directory.stat(self.name)
        if gid is not None:
            try:
                if directory is None:
                    os.chown(path, -1, gid, follow_symlinks=False)
                else:
                    os.chown(self.name, -1, gid, dir_fd=directory.fd, follow_symlinks=False)
            except OSError as err:
                self.close()
                raise ServerError(f"cannot give {path} to group {group}: {err.strerror}") from err
        self.drops = DropLog(what, clock)
        self.next_expire_s = -float("inf")

    def register(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # Out of descriptors (EMFILE, ENFILE): free one for the next try.
                if err.errno in (errno.EMFILE, errno.ENFILE) and self.connections:
                    self._drop(self._eviction_victim(), "evicted: out of file descriptors")
                self.drops.note(f"not accepted: {err.strerror}")
                return
            if len(self.connections) >= MAX_CLIENTS:
                self._drop(
                    self._eviction_victim(),
                    f"evicted for a new client ({MAX_CLIENTS} connections at most)",
                )
            sock.setblocking(False)
            conn = self._accepted(sock)
            self.connections[sock.fileno()] = conn

    def _eviction_victim(self) -> ConnectionT:
        """The connection to close for a newcomer: the oldest idle one, else the oldest."""
        conns = list(self.connections.values())
        idle = [conn for conn in conns if self._idle(conn)]
        return min(idle or conns, key=self._last_active_s)

    def _idle(self, conn: ConnectionT) -> bool:
        raise NotImplementedError

    def _last_active_s(self, conn: ConnectionT) -> float:
        raise NotImplementedError

    def _drop(self, conn: ConnectionT, reason: str) -> None:
        """Close conn by force; logged (rate-limited) with reason."""
        self._close(conn)
        self.drops.note(reason)

    def _shed(
        self,
        stalled: Iterable[ConnectionT],
        total: int,
        cap: int,
        held: Callable[[ConnectionT], int],
        progress_s: Callable[[ConnectionT], float],
        reason: str,
    ) -> int:
        """While the output held for all clients (total bytes) is over cap, close stalled
        connections, the one whose last progress is oldest first; how many were closed.
        (stalled is not looked at while total is within cap.)"""
        closed = 0
        if total <= cap:
            return closed
        for conn in sorted(stalled, key=progress_s):
            if total <= cap:
                break
            total -= held(conn)
            closed += 1
            self._drop(conn, reason)
        return closed

    def expire(self) -> None:
        """Close the connections whose time is up (looked at every EXPIRE_INTERVAL_S);
        tell closures not logged yet once their interval is over."""
        now_s = self.clock()
        if now_s >= self.next_expire_s:
            self.next_expire_s = now_s + EXPIRE_INTERVAL_S
            self._expire(now_s)
        self.drops.flush()

    def _expire(self, now_s: float) -> None:
        raise NotImplementedError

    def _accepted(self, sock: socket.socket) -> ConnectionT:
        raise NotImplementedError

    def _close(self, conn: ConnectionT) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if self.selector is not None:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self.connections.pop(fd, None)
        conn.sock.close()

    def close(self) -> None:
        """Close every connection and the listener; remove the socket file."""
        for conn in list(self.connections.values()):
            self._close(conn)
        if self.selector is not None:
            try:
                self.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
        self.listener.close()
        if self.directory is not None:
            try:
                self.directory.remove(self.name, same_as=self.made)
            except RunDirError as err:
                log.warning("%s", err)
            return
        try:
            if os.lstat(self.path).st_ino == self.made.st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


class ControlServer(UnixStreamServer[Connection]):
    """The control socket: requests in, replies out, blocking requests parked.

    Limits (netatop-control(5)): a client whose queued answers exceed
    MAX_OUTPUT_BYTES_PER_CLIENT is served no further request and not read from
    until it has read them; while the answers queued for all clients exceed
    MAX_OUTPUT_BYTES_TOTAL, no client with answers queued is served either, and
    those over their own cap that read nothing for OVERLOAD_STALL_S are closed.
    A client with no request waiting that completes no exchange for
    CONTROL_IDLE_TIMEOUT_S is closed (idle, slowloris, or not reading).
    A client waiting for GETCNT_EXIT or EMPTY_EXIT may wait for ever.
    """

    def __init__(
        self,
        path: str,
        backend: ControlBackend,
        mode: int = 0o600,
        clock: Clock = time.monotonic,
        directory: SafeDirectory | None = None,
        group: str | int | None = None,
    ) -> None:
        super().__init__(path, mode, "the netatopd control socket", clock, directory, group)
        self.backend = backend
        self.bad_requests = 0
        self.requests = 0

    # -- selector plumbing -------------------------------------------------------

    def _accepted(self, sock: socket.socket) -> Connection:
        conn = Connection(sock, self.clock())
        conn.handler = self._make_handler(conn)
        assert self.selector is not None
        self.selector.register(sock, conn.events, conn.handler)
        return conn

    def _make_handler(self, conn: Connection) -> Callable[[int], None]:
        def handler(mask: int) -> None:
            if mask & selectors.EVENT_READ:
                self._readable(conn)
            if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                self._flush(conn)
                if conn.sock.fileno() >= 0:
                    self._process(conn)  # requests held back while its answers were unread

        return handler

    # -- limits ------------------------------------------------------------------

    def queued_output_bytes(self) -> int:
        return sum(len(conn.outbox) for conn in self.connections.values())

    def _held_back(self, conn: Connection) -> bool:
        """conn's answers are not being read fast enough to serve it more now."""
        queued = len(conn.outbox)
        if not queued:
            return False
        return (
            queued > MAX_OUTPUT_BYTES_PER_CLIENT
            or self.queued_output_bytes() > MAX_OUTPUT_BYTES_TOTAL
        )

    def _idle(self, conn: Connection) -> bool:
        return conn.waiting is None and not conn.outbox and not conn.inbox

    def _last_active_s(self, conn: Connection) -> float:
        return conn.last_active_s

    def _expire(self, now_s: float) -> None:
        timeout_s = CONTROL_IDLE_TIMEOUT_S
        for conn in list(self.connections.values()):
            if conn.waiting is not None or now_s - conn.last_active_s < timeout_s:
                continue
            if conn.outbox:
                reason = f"did not read its answers for {timeout_s:g} s"
            elif conn.inbox:
                reason = f"sent part of a request and nothing more for {timeout_s:g} s"
            else:
                reason = f"idle for {timeout_s:g} s"
            self._drop(conn, reason)
        self._shed(
            (
                conn
                for conn in self.connections.values()
                if len(conn.outbox) > MAX_OUTPUT_BYTES_PER_CLIENT
                and now_s - conn.last_progress_s >= OVERLOAD_STALL_S
            ),
            self.queued_output_bytes(),
            MAX_OUTPUT_BYTES_TOTAL,
            held=lambda conn: len(conn.outbox),
            progress_s=lambda conn: conn.last_progress_s,
            reason=f"did not read its answers while over {MAX_OUTPUT_BYTES_TOTAL >> 20} MiB "
            "were queued for all clients",
        )

    # -- input -------------------------------------------------------------------

    def _readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            log.debug("control client error: %s", err.strerror)
            self._close(conn)
            return
        if not data:
            self._close(conn)  # a client that left while blocked costs nothing
            return
        conn.inbox += data
        if len(conn.inbox) > MAX_INPUT_BYTES:
            self._reject(conn, 0, errno.EMSGSIZE, "too many requests queued")
            return
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        while (
            conn.waiting is None
            and not conn.closing
            and len(conn.inbox) >= REQUEST.size
            and not self._held_back(conn)
        ):
            magic, command, task_id, _ = REQUEST.unpack_from(conn.inbox)
            del conn.inbox[: REQUEST.size]
            self.requests += 1
            conn.last_active_s = self.clock()
            if magic != REQUEST_MAGIC:
                self._reject(conn, command, errno.EBADMSG, f"bad magic {magic:#x}")
                return
            try:
                cmd = Command(command)
            except ValueError:
                self._reject(conn, command, errno.EINVAL, f"unknown command {command}")
                return
            self._dispatch(conn, cmd, task_id)
            if conn.sock.fileno() < 0:
                return

    def _reject(self, conn: Connection, command: int, error: int, why: str) -> None:
        self.bad_requests += 1
        log.debug("control client: %s; closing the connection", why)
        self._reply(conn, command, error, b"")
        conn.closing = True
        conn.inbox.clear()
        self._flush(conn)

    def _dispatch(self, conn: Connection, cmd: Command, task_id: int) -> None:
        backend = self.backend
        if cmd == Command.PROBE:
            self._reply(conn, cmd, 0, backend.probe())
        elif cmd == Command.FORCE_GC:
            # Answered once a sweep has run (at once, or when the twice-a-second limit allows).
            conn.waiting = (cmd, backend.force_gc())
        elif cmd in (Command.GETCNT_TGID, Command.GETCNT_PID):
            if cmd == Command.GETCNT_TGID:
                record = backend.getcnt_tgid(task_id)
            else:
                record = backend.getcnt_pid(task_id)
            if record is None:
                self._reply(conn, cmd, errno.ESRCH, b"")
            else:
                self._reply(conn, cmd, 0, record)
        elif cmd == Command.STATUS:
            self._reply(conn, cmd, 0, json.dumps(backend.status()).encode())
        elif cmd == Command.LIST_TASKS:
            self._reply(conn, cmd, 0, backend.list_tasks())
        elif cmd == Command.LIST_EXIT:
            self._reply(conn, cmd, 0, backend.list_exited())
        elif cmd == Command.LIST_TASKS_DETAIL:
            self._reply(conn, cmd, 0, backend.list_tasks_detail())
        elif cmd == Command.LIST_EXIT_DETAIL:
            self._reply(conn, cmd, 0, backend.list_exited_detail())
        elif cmd == Command.SYNC:
            conn.waiting = (cmd, backend.start_sync())
        else:  # GETCNT_EXIT(_DETAIL) and EMPTY_EXIT block until they can be answered
            conn.waiting = (cmd, None)
        self._answer_waiters()

    # -- blocking requests -------------------------------------------------------------

    def service_waiters(self) -> None:
        """Answer the parked requests that can be answered now, and close the connections
        whose time is up (called every loop pass)."""
        self._answer_waiters()
        self.expire()

    def _answer_waiters(self) -> None:
        for conn in list(self.connections.values()):
            if conn.waiting is None or conn.sock.fileno() < 0:
                continue
            cmd, token = conn.waiting
            if cmd in (Command.GETCNT_EXIT, Command.GETCNT_EXIT_DETAIL):
                if cmd == Command.GETCNT_EXIT:
                    record = self.backend.pop_exited()
                else:
                    record = self.backend.pop_exited_detail()
                if record is None:
                    continue
                self._reply(conn, cmd, 0, record)
            elif cmd == Command.EMPTY_EXIT:
                if self.backend.exit_list_length():
                    continue
                self._reply(conn, cmd, 0, b"")
            elif cmd == Command.SYNC:
                if not self.backend.sync_done(token):
                    continue
                self._reply(conn, cmd, 0, b"")
            elif cmd == Command.FORCE_GC:
                if not self.backend.gc_done(token):
                    continue
                self._reply(conn, cmd, 0, b"")
            conn.waiting = None
            self._process(conn)  # requests that queued up behind the blocking one

    def waiting_for_loop(self) -> bool:
        """A SYNC or FORCE_GC is parked: the loop should wake up soon to finish it."""
        return any(
            c.waiting is not None and c.waiting[0] in (Command.SYNC, Command.FORCE_GC)
            for c in self.connections.values()
        )

    # -- output ------------------------------------------------------------------

    def _reply(self, conn: Connection, command: int, error: int, payload: bytes) -> None:
        if not conn.outbox:
            conn.last_progress_s = self.clock()
        conn.outbox += REPLY.pack(REPLY_MAGIC, command, error, len(payload))
        conn.outbox += payload
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        queued = len(conn.outbox)
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox[:SEND_CHUNK_BYTES])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.debug("control client gone while answering: %s", err.strerror)
                self._close(conn)
                return
            del conn.outbox[:sent]
        if len(conn.outbox) < queued:
            conn.last_progress_s = self.clock()
            if not conn.outbox:
                conn.last_active_s = conn.last_progress_s
        if conn.closing and not conn.outbox:
            self._close(conn)
            return
        # Not read from while held back: its requests wait in the kernel's buffer.
        events = 0 if self._held_back(conn) else selectors.EVENT_READ
        if conn.outbox:
            events |= selectors.EVENT_WRITE
        if events == conn.events:
            return
        assert self.selector is not None
        try:
            self.selector.modify(conn.sock, events, conn.handler)
        except (KeyError, ValueError):
            return
        conn.events = events


# -- the atop socket ----------------------------------------------------------------------

# Records per send(): 341 x 96 = 32736 bytes, a whole number of records that fits in
# one kernel buffer (skb) of a Unix stream socket, so the peer never sees a part of it.
# Linux puts at most (SO_SNDBUF / 2 - 64) bytes, and about 36 KiB, in one skb.
ATOP_SEND_RECORDS = 341
ATOP_SEND_BATCH_BYTES = ATOP_SEND_RECORDS * NETPERTASK_SIZE
ATOP_SNDBUF_BYTES = 2 * (ATOP_SEND_BATCH_BYTES + 64)  # SO_SNDBUF that holds one batch per skb
SKB_OVERHEAD_BYTES = 64  # what Linux keeps back of SO_SNDBUF / 2 per Unix stream skb
ATOP_MAX_QUEUED_REQUESTS = 16  # requests sent ahead of their answers; more is not atop
ATOP_RECV_BYTES = 4096
# An atop client is never closed for being idle (atop keeps its connection between
# samples, up to its interval, which can be 10 minutes and more); one that reads none of
# an answer for this long is closed.
ATOP_STALL_TIMEOUT_S = 30.0
# Answers held for all atop clients (one each at most): past this, clients that read
# none of theirs for OVERLOAD_STALL_S are closed, oldest first.
ATOP_MAX_OUTPUT_BYTES_TOTAL = 64 << 20


class AtopBackend(Protocol):
    def atop_tasks(self) -> Iterable[TaskInfo]:
        """Every live process with counters (the daemon's task table)."""
        ...


def send_batch_bytes(sndbuf_bytes: int) -> int:
    """The largest batch of whole records (at most ATOP_SEND_BATCH_BYTES) that Linux
    queues as one skb on a Unix stream socket whose SO_SNDBUF reads sndbuf_bytes."""
    fits = (sndbuf_bytes // 2 - SKB_OVERHEAD_BYTES) // NETPERTASK_SIZE * NETPERTASK_SIZE
    return max(NETPERTASK_SIZE, min(ATOP_SEND_BATCH_BYTES, fits))


def next_send_end(offset: int, total: int, batch_bytes: int = ATOP_SEND_BATCH_BYTES) -> int:
    """Where the send() that starts at offset of an answer of total bytes ends.

    After a short send that split a record, exactly the rest of that record;
    otherwise a batch of at most batch_bytes (whole records).
    """
    split = offset % NETPERTASK_SIZE
    if split:
        return offset + NETPERTASK_SIZE - split
    return min(offset + batch_bytes, total)


def send_records(
    send: Callable[[memoryview], int],
    answer: memoryview,
    offset: int,
    batch_bytes: int = ATOP_SEND_BATCH_BYTES,
) -> int:
    """Send answer[offset:] in record batches until the socket is full; the new offset.

    Stops at the end, on BlockingIOError, or after a short send (the buffer is
    full: the caller waits for EVENT_WRITE).  Other OS errors propagate.
    """
    total = len(answer)
    while offset < total:
        end = next_send_end(offset, total, batch_bytes)
        try:
            sent = send(answer[offset:end])
        except BlockingIOError:
            break
        offset += sent
        if offset != end:
            break
    return offset


def resolve_group(group: str | int) -> int:
    """A group name or number as a gid (ServerError if there is no such group)."""
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise ServerError(f"no group named {group!r}; create it or choose another") from err


def _command_bytes(command: str) -> bytes:
    return command.encode("utf-8", "replace")[:15]


class AtopConnection:
    __slots__ = (
        "sock",
        "batch_bytes",
        "handler",
        "events",
        "request_bytes",
        "answer",
        "sent_bytes",
        "last_sequence",
        "input_closed",
        "last_active_s",
        "last_progress_s",
    )

    def __init__(self, sock: socket.socket, last_sequence: int, now_s: float) -> None:
        self.sock = sock
        self.batch_bytes = ATOP_SEND_BATCH_BYTES  # bytes per send(), whole records
        self.handler: Callable[[int], None] | None = None
        self.events = selectors.EVENT_READ  # as registered with the selector
        self.request_bytes = 0  # received and not answered yet (contents ignored)
        self.answer: memoryview | None = None  # the answer being sent
        self.sent_bytes = 0  # of answer
        self.last_sequence = last_sequence  # newest ExitJournal entry this client was given
        self.input_closed = False  # the client shut down its side; answer, then close
        self.last_active_s = now_s  # accepted, or the last request or answer
        self.last_progress_s = now_s  # the client last took some of its answer


class AtopServer(UnixStreamServer[AtopConnection]):
    """The atop socket: one answer per 96 bytes received, whole records per send().

    atop reads one record per recv() and takes whatever that recv() returned as a
    record, so the bytes queued in the socket must always end on a record
    boundary.  Every send() carries whole records, at most ATOP_SEND_BATCH_BYTES
    (32736 bytes).  On Linux a send() that fits one skb of a Unix stream socket
    (at most SO_SNDBUF / 2 - 64 bytes and about 36 KiB) is queued whole or not
    at all (EAGAIN), so atop never sees part of it; SO_SNDBUF is raised on
    accept where the host's default is too small for that, else the batch is
    made smaller.  A larger send() is cut into several skbs and can come back
    short in the middle of a record.  Measured here, 20 answers of 50,000
    records to a reader doing recv(96) like atop: 32736-byte sends never came
    back short and the reader never got a short record; 65472-byte sends came
    back short 34 times; 106368-byte sends gave the reader 17 short records.
    Should a send() still come back short with a record split, the connection
    waits for EVENT_WRITE and the next send() is exactly the rest of that
    record, then batches resume; no other bytes ever come in between, but a
    reader that catches up in that window does see a short record, which is
    why the batch size, not this, is the guard.

    Answers are built once per request, packed straight into one bytearray.
    Finished processes come from the ExitJournal: each client is given the
    entries appended since its previous request (none from before it
    connected).  A tgid appears at most once per answer: when a journal entry
    for tgid T is served, a live process T (a reused pid) waits for the next
    answer, and a second journal entry for T too, so atop sees the old
    process's final counters before the new one's start from zero.
    """

    def __init__(
        self,
        path: str,
        backend: AtopBackend,
        journal: ExitJournal,
        mode: int = 0o600,
        group: str | int | None = None,
        clock: Clock = time.monotonic,
        directory: SafeDirectory | None = None,
    ) -> None:
        super().__init__(path, mode, "the atop socket", clock, directory, group)
        self.backend = backend
        self.journal = journal
        self.requests = 0  # answers started
        self.answers = 0  # answers sent whole
        self.abandoned = 0  # clients that left before their answer was sent
        self.garbage = 0  # clients closed for sending what atop does not send

    def stats(self) -> dict[str, int]:
        return {
            "atop_clients": len(self.connections),
            "atop_requests": self.requests,
            "atop_answers": self.answers,
            "atop_abandoned": self.abandoned,
            "atop_garbage": self.garbage,
            "atop_journal": len(self.journal),
            "atop_journal_dropped": self.journal.dropped,
        }

    # -- selector plumbing -------------------------------------------------------

    def _accepted(self, sock: socket.socket) -> AtopConnection:
        conn = AtopConnection(sock, self.journal.last_sequence, self.clock())
        conn.batch_bytes = self._fit_send_buffer(sock)

        def handler(mask: int) -> None:
            try:
                if mask & selectors.EVENT_READ:
                    self._readable(conn)
                if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self._serve(conn)
            except Exception:
                self._close(conn)  # never leave atop waiting for an answer; it reconnects
                raise
            self.expire()

        conn.handler = handler
        assert self.selector is not None
        self.selector.register(sock, conn.events, handler)
        return conn

    def _accept(self, mask: int) -> None:
        super()._accept(mask)
        self.expire()

    # -- limits ------------------------------------------------------------------

    def _idle(self, conn: AtopConnection) -> bool:
        return conn.answer is None and conn.request_bytes < NETPERTASK_SIZE

    def _last_active_s(self, conn: AtopConnection) -> float:
        return conn.last_active_s if self._idle(conn) else conn.last_progress_s

    def held_output_bytes(self) -> int:
        return sum(len(c.answer) for c in self.connections.values() if c.answer is not None)

    def _expire(self, now_s: float) -> None:
        timeout_s = ATOP_STALL_TIMEOUT_S
        for conn in list(self.connections.values()):
            if conn.answer is not None and now_s - conn.last_progress_s >= timeout_s:
                self.abandoned += 1
                self._drop(conn, f"did not read its answer for {timeout_s:g} s")
        self.abandoned += self._shed(
            (
                conn
                for conn in self.connections.values()
                if conn.answer is not None and now_s - conn.last_progress_s >= OVERLOAD_STALL_S
            ),
            self.held_output_bytes(),
            ATOP_MAX_OUTPUT_BYTES_TOTAL,
            held=lambda conn: len(conn.answer) if conn.answer is not None else 0,
            progress_s=lambda conn: conn.last_progress_s,
            reason=f"did not read its answer while over {ATOP_MAX_OUTPUT_BYTES_TOTAL >> 20} MiB "
            "were held for all clients",
        )

    @staticmethod
    def _fit_send_buffer(sock: socket.socket) -> int:
        """Make one batch fit one skb (raise SO_SNDBUF if the host's default is small);
        the batch size this connection uses."""
        try:
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            if sndbuf < ATOP_SNDBUF_BYTES:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ATOP_SNDBUF_BYTES // 2)
                sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError as err:
            log.debug("atop client: SO_SNDBUF: %s", err.strerror)
            return ATOP_SEND_BATCH_BYTES
        return send_batch_bytes(sndbuf)

    def _set_events(self, conn: AtopConnection, events: int) -> None:
        if events == conn.events:
            return
        assert self.selector is not None
        self.selector.modify(conn.sock, events, conn.handler)
        conn.events = events

    # -- input -------------------------------------------------------------------

    def _readable(self, conn: AtopConnection) -> None:
        try:
            data = conn.sock.recv(ATOP_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            if conn.answer is not None:
                self.abandoned += 1
            log.debug("atop client error: %s; closing it", err.strerror)
            self._close(conn)
            return
        if not data:
            self._input_closed(conn)
            return
        conn.request_bytes += len(data)
        if conn.request_bytes > ATOP_MAX_QUEUED_REQUESTS * NETPERTASK_SIZE:
            self.garbage += 1
            log.debug(
                "atop client sent %d bytes without reading its answers; closing it",
                conn.request_bytes,
            )
            self._close(conn)
            return
        self._serve(conn)

    def _input_closed(self, conn: AtopConnection) -> None:
        """The client shut down its sending side: answer its whole requests, then close."""
        stray = conn.request_bytes % NETPERTASK_SIZE
        if stray:
            self.garbage += 1
            log.debug("atop client left with %d bytes of an incomplete request", stray)
            conn.request_bytes -= stray
        if conn.answer is None and not conn.request_bytes:
            self._close(conn)
            return
        conn.input_closed = True
        self._serve(conn)

    # -- output ------------------------------------------------------------------

    def _serve(self, conn: AtopConnection) -> None:
        """Send what the socket takes; start the next answer when one is done."""
        while True:
            if conn.answer is None:
                if conn.request_bytes < NETPERTASK_SIZE:
                    break
                conn.request_bytes -= NETPERTASK_SIZE
                conn.answer = memoryview(self.build_answer(conn))
                conn.sent_bytes = 0
                conn.last_active_s = conn.last_progress_s = self.clock()
                self.requests += 1
            sent_before = conn.sent_bytes
            try:
                conn.sent_bytes = send_records(
                    conn.sock.send, conn.answer, conn.sent_bytes, conn.batch_bytes
                )
            except OSError as err:
                self.abandoned += 1
                log.debug("atop client gone while answering: %s", err.strerror)
                self._close(conn)
                return
            if conn.sent_bytes != sent_before:
                conn.last_progress_s = self.clock()
            if conn.sent_bytes < len(conn.answer):
                break  # the socket is full: go on at EVENT_WRITE
            conn.answer = None
            conn.last_active_s = conn.last_progress_s
            self.answers += 1
        if conn.input_closed and conn.answer is None:
            self._close(conn)
            return
        events = 0 if conn.input_closed else selectors.EVENT_READ
        if conn.answer is not None:
            events |= selectors.EVENT_WRITE
        self._set_events(conn, events)

    def build_answer(self, conn: AtopConnection) -> bytearray:
        """One answer for conn: journal entries it has not had, live processes, id 0.

        Advances conn.last_sequence past the journal entries it includes.
        """
        finished: list[ExitedTask] = []
        served: set[int] = set()
        for sequence, exited in self.journal.since(conn.last_sequence):
            if exited.tgid in served:
                break  # the pid was reused and finished again: that one next time
            served.add(exited.tgid)
            finished.append(exited)
            conn.last_sequence = sequence
        live = self.backend.atop_tasks()
        if not isinstance(live, Sized):
            live = list(live)
        size = NETPERTASK_SIZE
        answer = bytearray(size * (len(finished) + len(live) + 1))
        pack_into = NETPERTASK.pack_into
        offset = 0
        for exited in finished:
            if exited.tgid > 0:
                pack_into(
                    answer,
                    offset,
                    exited.tgid,
                    exited.btime,
                    _command_bytes(exited.command),
                    *exited.counters,
                )
                offset += size
        for task in live:
            tgid = task.tgid
            if tgid <= 0 or tgid in served:
                continue
            pack_into(
                answer,
                offset,
                tgid,
                task.btime,
                task.command.encode("utf-8", "replace")[:15],
                *task.counters,
            )
            offset += size
        del answer[offset + size :]  # what is left is the terminator: id 0, all zero
        return answer
