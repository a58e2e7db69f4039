"""Stage 8: the control socket (the kernel module's getsockopt commands).

Owns the listening Unix stream socket, the client connections with their
input and output buffers, and the requests that are waiting (GETCNT_EXIT while
the exit list is empty, EMPTY_EXIT while it is not, SYNC until the capture ring
is drained).  The daemon loop owns the selector: it calls ``handle_event`` for
the server's descriptors and ``service_waiters`` after every pass.  Answers
come from a ``ControlBackend`` (implemented by the daemon), so this module
never reaches into the counting stages.

Wire format (see netatop-control(5) and protocol.py): a client sends 16-byte
requests; every request gets a 16-byte reply header and a payload.  A request
with a bad magic or an unknown command gets an error reply (EBADMSG or
EINVAL) and its connection is closed; the daemon carries on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable
from typing import Protocol

from .protocol import (
    REPLY,
    REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    Command,
)

log = logging.getLogger(__name__)

MAX_CLIENTS = 256
MAX_INPUT_BYTES = 4096  # requests are 16 bytes; a client piling up more is cut off
SEND_CHUNK_BYTES = 64 * 1024


class ServerError(Exception):
    """The control socket could not be set up (message says why and what to do)."""


class ControlBackend(Protocol):
    def probe(self) -> bytes: ...
    def force_gc(self) -> None: ...
    def getcnt_tgid(self, tgid: int) -> bytes | None: ...
    def getcnt_pid(self, pid: int) -> bytes | None: ...
    def pop_exited(self) -> bytes | None: ...
    def exit_list_length(self) -> int: ...
    def status(self) -> dict[str, object]: ...
    def list_tasks(self) -> bytes: ...
    def list_exited(self) -> bytes: ...
    def start_sync(self) -> object: ...
    def sync_done(self, token: object) -> bool: ...


class Connection:
    __slots__ = ("sock", "inbox", "outbox", "waiting", "closing", "peer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.waiting: tuple[Command, object] | None = None  # a blocking request in progress
        self.closing = False  # close once the outbox is empty
        self.peer = ""


def prepare_socket_path(path: str, what: str) -> None:
    """Remove a stale socket file at path; refuse if a live server answers there."""
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
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(64)
    return sock


class ControlServer:
    """The control socket: requests in, replies out, blocking requests parked."""

    def __init__(self, path: str, backend: ControlBackend, mode: int = 0o600) -> None:
        self.path = path
        self.backend = backend
        self.listener = listen_unix(path, mode, "the netatopd control socket")
        self.connections: dict[int, Connection] = {}
        self.selector: selectors.BaseSelector | None = None
        self.bad_requests = 0
        self.requests = 0

    # -- selector plumbing -------------------------------------------------------

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
                log.warning("control socket accept failed: %s", err.strerror)
                return
            if len(self.connections) >= MAX_CLIENTS:
                log.warning("control socket: %d clients already, refusing one", MAX_CLIENTS)
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock)
            self.connections[sock.fileno()] = conn
            assert self.selector is not None
            self.selector.register(sock, selectors.EVENT_READ, self._make_handler(conn))

    def _make_handler(self, conn: Connection) -> Callable[[int], None]:
        def handler(mask: int) -> None:
            if mask & selectors.EVENT_READ:
                self._readable(conn)
            if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                self._flush(conn)

        return handler

    def _close(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        assert self.selector is not None
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.connections.pop(fd, None)
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        if self.selector is not None:
            try:
                self.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

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
        while conn.waiting is None and not conn.closing and len(conn.inbox) >= REQUEST.size:
            magic, command, task_id, _ = REQUEST.unpack_from(conn.inbox)
            del conn.inbox[: REQUEST.size]
            self.requests += 1
            if magic != REQUEST_MAGIC:
                self._reject(conn, command, errno.EBADMSG, f"bad magic {magic:#x}")
                return
            try:
                cmd = Command(command)
            except ValueError:
                self._reject(conn, command, errno.EINVAL, f"unknown command {command}")
                return
            self._dispatch(conn, cmd, task_id)

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
            backend.force_gc()
            self._reply(conn, cmd, 0, b"")
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
        elif cmd == Command.SYNC:
            conn.waiting = (cmd, backend.start_sync())
        else:  # GETCNT_EXIT and EMPTY_EXIT block until they can be answered
            conn.waiting = (cmd, None)
        self.service_waiters()

    # -- blocking requests -------------------------------------------------------------

    def service_waiters(self) -> None:
        """Answer the parked requests that can be answered now (called every loop pass)."""
        for conn in list(self.connections.values()):
            if conn.waiting is None:
                continue
            cmd, token = conn.waiting
            if cmd == Command.GETCNT_EXIT:
                record = self.backend.pop_exited()
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
            conn.waiting = None
            self._process(conn)  # requests that queued up behind the blocking one

    def waiting_for_sync(self) -> bool:
        return any(
            c.waiting is not None and c.waiting[0] == Command.SYNC
            for c in self.connections.values()
        )

    # -- output ------------------------------------------------------------------

    def _reply(self, conn: Connection, command: int, error: int, payload: bytes) -> None:
        conn.outbox += REPLY.pack(REPLY_MAGIC, command, error, len(payload))
        conn.outbox += payload
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
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
        assert self.selector is not None
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        if conn.closing and not conn.outbox:
            self._close(conn)
            return
        try:
            self.selector.modify(conn.sock, events, self._make_handler(conn))
        except (KeyError, ValueError):
            pass
