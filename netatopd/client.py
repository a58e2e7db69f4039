"""A client of the control socket, for the CLI, scripts and tests.

Owns one Unix stream connection to server.py's control socket and NetPerTask,
a reply record as the wire carries it (struct netpertask); the *_detail calls
return the JSON objects of the *_DETAIL commands (protocol.DETAIL_FIELDS:
who each process is, its times and counters; from a daemon older than those
commands, the plain commands' records with the identity unknown).  Called by the
netatop command (cli.sources, cli.commands), the privileged tests and
bench_daemon.py.  Translates the daemon's error replies into Python exceptions:
ESRCH -> ProcessLookupError, an unreachable or refused socket -> DaemonNotRunning
(which names the run directory), a socket we may not open, or one that root (or
we) did not make and serve (SO_PEERCRED) -> PermissionError.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import time
from typing import Any, NamedTuple

from .defaults import CONTROL_SOCKET_NAME, RUN_DIR_DEFAULT
from .protocol import (
    COUNTER_NAMES,
    NETPERTASK_SIZE,
    REPLY,
    REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    Command,
    unpack_netpertask,
)

CONNECT_RETRY_S = 0.01  # while the listen backlog is full


class DaemonNotRunning(ConnectionError):
    """Nobody answers on the control socket of the run directory."""


class ProtocolError(Exception):
    """The daemon's reply did not follow the protocol."""


class NetPerTask(NamedTuple):
    """One struct netpertask of a reply; the CLI turns it into its row (cli.rows.from_reply)."""

    id: int  # the tgid, or the tid for GETCNT_PID
    btime: int
    command: str
    counters: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return dict(zip(COUNTER_NAMES, self.counters, strict=True))


def run_dir_from_env(run_dir: str | None = None) -> str:
    return run_dir or os.environ.get("NETATOP_RUN_DIR") or RUN_DIR_DEFAULT


def plain_detail(record: NetPerTask) -> dict[str, Any]:
    """A *_DETAIL object made from a plain record: the identity unknown (uid -1, "")."""
    return {
        "tgid": record.id,
        "btime": record.btime,
        "command": record.command,
        "cmdline": "",
        "uid": -1,
        "unit": "",
        "container": "",
        "cgroup": "",
        "first_activity": None,
        "last_activity": None,
        "exit_time": None,
        **record.as_dict(),
    }


class ControlClient:
    def __init__(self, run_dir: str | None = None, timeout_s: float | None = 30.0) -> None:
        self.run_dir = run_dir_from_env(run_dir)
        self.path = os.path.join(self.run_dir, CONTROL_SOCKET_NAME)
        self.timeout_s = timeout_s
        # Set when the daemon is older than the *_DETAIL commands: the answers then
        # came from the plain ones, without identities (see _details_or_plain).
        self.without_identity = False
        self._open(timeout_s)

    def _open(self, timeout_s: float | None) -> None:
        """Connect to the control socket and check that root (or we) serve it."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout_s)
        try:
            self._connect(timeout_s)
        except PermissionError as err:
            self.sock.close()
            raise PermissionError(
                errno.EACCES,
                f"no permission to use {self.path} (run as root, or as a member of "
                "the group netatopd --control-group names)",
            ) from err
        except (FileNotFoundError, ConnectionRefusedError) as err:
            self.sock.close()
            raise DaemonNotRunning(
                f"netatopd is not running (no control socket at {self.path}; "
                f"run directory {self.run_dir})"
            ) from err
        # Believe only a daemon of root (or of ourselves): the socket file's owner and the
        # credentials of the process listening on it (SO_PEERCRED: pid, uid, gid).
        trusted = (0, os.geteuid())
        try:
            file_uid = os.stat(self.path).st_uid
            _, peer_uid, _ = struct.unpack(
                "3i", self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
        except OSError as err:
            self.sock.close()
            raise DaemonNotRunning(
                f"cannot check the control socket {self.path}: {err.strerror}"
            ) from err
        for what, uid in (("owned", file_uid), ("served", peer_uid)):
            if uid not in trusted:
                self.sock.close()
                raise PermissionError(
                    errno.EPERM,
                    f"{self.path} is {what} by uid {uid}, not by root: not trusting it "
                    f"(a forged control socket?); check the run directory {self.run_dir}",
                )

    def _connect(self, timeout_s: float | None) -> None:
        """connect(), waiting up to timeout_s while the daemon's listen backlog is full: a
        Unix stream socket with a timeout says EAGAIN at once rather than wait for room."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                self.sock.connect(self.path)
                return
            except BlockingIOError as err:
                if deadline is not None and time.monotonic() >= deadline:
                    self.sock.close()
                    raise DaemonNotRunning(
                        f"netatopd did not take the connection on {self.path} within "
                        f"{timeout_s:g} s (its backlog of connections stayed full)"
                    ) from err
                time.sleep(CONNECT_RETRY_S)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            data = self.sock.recv(size - len(chunks))
            if not data:
                raise ProtocolError("the daemon closed the connection")
            chunks += data
        return bytes(chunks)

    def request(self, command: Command, task_id: int = 0) -> bytes:
        """Send one request; return the payload of its reply or raise its error."""
        self.sock.sendall(REQUEST.pack(REQUEST_MAGIC, int(command), task_id, 0))
        magic, reply_command, error, length = REPLY.unpack(self._recv_exact(REPLY.size))
        if magic != REPLY_MAGIC or reply_command != int(command):
            raise ProtocolError(
                f"unexpected reply header (magic {magic:#x}, command {reply_command})"
            )
        payload = self._recv_exact(length) if length else b""
        if error == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, f"no such process: {task_id}")
        if error:
            raise OSError(error, os.strerror(error))
        return payload

    @staticmethod
    def _records(payload: bytes) -> list[NetPerTask]:
        if len(payload) % NETPERTASK_SIZE:
            raise ProtocolError(f"payload of {len(payload)} bytes is not whole records")
        return [
            NetPerTask(*unpack_netpertask(payload[i : i + NETPERTASK_SIZE]))
            for i in range(0, len(payload), NETPERTASK_SIZE)
        ]

    def probe(self) -> str:
        return self.request(Command.PROBE).decode()

    def status(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.request(Command.STATUS))
        return result

    def sync(self) -> None:
        self.request(Command.SYNC)

    def force_gc(self) -> None:
        self.request(Command.FORCE_GC)

    def empty_exit(self) -> None:
        self.request(Command.EMPTY_EXIT)

    def getcnt_exit(self) -> NetPerTask:
        return self._records(self.request(Command.GETCNT_EXIT))[0]

    def getcnt_tgid(self, tgid: int) -> NetPerTask:
        return self._records(self.request(Command.GETCNT_TGID, tgid))[0]

    def getcnt_pid(self, pid: int) -> NetPerTask:
        return self._records(self.request(Command.GETCNT_PID, pid))[0]

    def list_tasks(self) -> list[NetPerTask]:
        return self._records(self.request(Command.LIST_TASKS))

    def list_exited(self) -> list[NetPerTask]:
        return self._records(self.request(Command.LIST_EXIT))

    # Identity included: objects with protocol.DETAIL_FIELDS.

    @staticmethod
    def _details(payload: bytes) -> list[dict[str, Any]]:
        try:
            answer = json.loads(payload)
        except ValueError as err:
            raise ProtocolError(f"a detail reply that is not JSON: {err}") from err
        if isinstance(answer, dict):
            answer = [answer]
        if not isinstance(answer, list) or not all(isinstance(a, dict) for a in answer):
            raise ProtocolError("a detail reply that is not objects")
        return answer

    def _details_or_plain(self, detail: Command, plain: Command) -> list[dict[str, Any]]:
        """The answer to a *_DETAIL command; from a daemon older than those commands
        (it answers EINVAL and closes the connection), the plain command's records on a
        new connection, as objects without identity (``without_identity`` is set)."""
        try:
            return self._details(self.request(detail))
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
        self.sock.close()
        self._open(self.timeout_s)
        self.without_identity = True
        return [plain_detail(record) for record in self._records(self.request(plain))]

    def list_tasks_detail(self) -> list[dict[str, Any]]:
        """Every live process with its identity."""
        return self._details_or_plain(Command.LIST_TASKS_DETAIL, Command.LIST_TASKS)

    def list_exited_detail(self) -> list[dict[str, Any]]:
        """The exit list with each process's identity and exit time, not consumed."""
        return self._details_or_plain(Command.LIST_EXIT_DETAIL, Command.LIST_EXIT)

    def getcnt_exit_detail(self) -> dict[str, Any]:
        """The oldest finished process, taken off the exit list (waits for one)."""
        return self._details_or_plain(Command.GETCNT_EXIT_DETAIL, Command.GETCNT_EXIT)[0]
