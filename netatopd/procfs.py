"""What /proc says about processes: stat (comm, start time), socket inodes, threads.

Owns nothing but the root of the proc tree it reads (``proc_root``, so tests
build a fake tree under ``tmp_path``), the clock tick rate and the boot time;
declares the identity rule (``same_process``: a pid plus its start time names
one process).  Called by the ownership
package (``InodeIndex``: socket inodes of a process; ``TaskRegistry``: stat,
command line, uid, threads; ``Resolver``: socket names), by the daemon (thread
to tgid for GETCNT_PID) and by table.py (``read_stat``: is the table's writer
still running).  ``read_identity`` reads who a process is (start time, comm,
command line, uid, cgroup) in one pass, for the task registry at fork and exec.

Errors: a process that vanished (ENOENT, ESRCH) raises ProcessGone, which is a
normal race; EACCES or EPERM raise ProcAccessDenied, a configuration problem
(the daemon lacks CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from typing import NamedTuple

from .defaults import PROC_ROOT_DEFAULT
from .libc import libc
from .wire import IPV4_MAPPED_PREFIX

log = logging.getLogger(__name__)

_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
_SOCKET_LINK_PREFIX = "socket:["

# Zero-based positions in /proc/PID/stat of the fields after "(comm) "
# (proc_pid_stat(5) numbers them from 1 with pid; the first after comm is 3).
_STAT_STATE = 0  # field 3
_STAT_PPID = 1  # field 4
_STAT_NUM_THREADS = 17  # field 20
_STAT_START_TIME = 19  # field 22, clock ticks since boot


class ProcError(Exception):
    """Something under the proc root could not be read or made sense of."""


class ProcessGone(ProcError):
    """The process (or thread) ``pid`` no longer exists."""

    def __init__(self, pid: int, path: str = "") -> None:
        super().__init__(f"process {pid} is gone" + (f" ({path})" if path else ""))
        self.pid = pid
        self.path = path


class ProcAccessDenied(ProcError):
    """Reading ``path`` of process ``pid`` was refused with ``errno``."""

    def __init__(self, pid: int, path: str, error_number: int) -> None:
        super().__init__(f"{path}: {os.strerror(error_number)} (errno {error_number})")
        self.pid = pid
        self.path = path
        self.errno = error_number


# System call numbers (x86-64) for borrowing another process's descriptor.
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438


SO_COOKIE = 57  # asm-generic/socket.h: the socket's cookie, a __u64
SO_COOKIE_VALUE = struct.Struct("=Q")


class SocketEndpoint(NamedTuple):
    """The local end of an internet socket held by a process."""

    protocol: int  # IPPROTO_TCP or IPPROTO_UDP
    local_addr: bytes  # 4 bytes for IPv4 (an IPv4-mapped IPv6 address too), 16 for IPv6
    local_port: int
    cookie: int = 0  # the socket cookie (SO_COOKIE), 0 if it could not be read


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat this package uses."""

    pid: int
    comm: str  # at most 15 characters; may hold spaces and parentheses
    state: str  # one letter: R, S, D, Z, T, t, X, I ...
    ppid: int
    num_threads: int
    start_time_ticks: int  # clock ticks after boot


def _translate(err: OSError, pid: int, path: str) -> ProcError:
    """The project's exception for an OS error met while reading ``path``."""
    if err.errno in _GONE_ERRNOS:
        return ProcessGone(pid, path)
    if err.errno in _DENIED_ERRNOS:
        return ProcAccessDenied(pid, path, err.errno)
    return ProcError(f"{path}: {err.strerror} (errno {err.errno})")


def parse_stat(pid: int, content: bytes) -> ProcStat:
    """ProcStat from the text of /proc/PID/stat.

    The command name sits between the first "(" and the *last* ")": it may
    itself contain ") ", spaces and parentheses.
    """
    open_paren = content.find(b"(")
    close_paren = content.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ProcError(f"/proc/{pid}/stat: no (comm) in {content[:64]!r}")
    fields = content[close_paren + 1 :].split()
    if len(fields) <= _STAT_START_TIME:
        raise ProcError(f"/proc/{pid}/stat: {len(fields) + 2} fields, need {_STAT_START_TIME + 3}")
    try:
        return ProcStat(
            pid=int(content[:open_paren]),
            comm=content[open_paren + 1 : close_paren].decode("utf-8", "replace"),
            state=fields[_STAT_STATE].decode("ascii", "replace"),
            ppid=int(fields[_STAT_PPID]),
            num_threads=int(fields[_STAT_NUM_THREADS]),
            start_time_ticks=int(fields[_STAT_START_TIME]),
        )
    except ValueError as err:
        raise ProcError(f"/proc/{pid}/stat: {err}") from err


def read_stat(pid: int, proc_root: str = PROC_ROOT_DEFAULT) -> ProcStat:
    """/proc/PID/stat of ``pid`` under ``proc_root``, parsed (ProcessGone, ProcAccessDenied)."""
    path = f"{proc_root}/{pid}/stat"
    try:
        with open(path, "rb", buffering=0) as file:
            content = file.read()
    except OSError as err:
        raise _translate(err, pid, path) from err
    if not content:
        raise ProcessGone(pid, path)
    return parse_stat(pid, content)


def same_process(stat: ProcStat, start_time_ticks: int) -> bool:
    """Whether ``stat``, read now, is the process that started at ``start_time_ticks``.

    The identity rule: a pid alone does not name a process (the kernel gives
    a finished process's pid to a new one); the pid together with its start
    time (field 22 of /proc/PID/stat) does.
    """
    return stat.start_time_ticks == start_time_ticks


def _status_field(pid: int, content: bytes, name: bytes) -> list[bytes]:
    """The values of the line ``name:`` of /proc/PID/status."""
    prefix = name + b":"
    for line in content.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].split()
    raise ProcError(f"/proc/{pid}/status: no {name.decode()} line")


class ProcFS:
    """Reads of one proc tree (``/proc``, or a fake one in tests)."""

    def __init__(
        self, proc_root: str = PROC_ROOT_DEFAULT, *, clock_ticks_per_s: int | None = None
    ) -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        if clock_ticks_per_s is None:
            clock_ticks_per_s = os.sysconf("SC_CLK_TCK")
        self.clock_ticks_per_s: int = clock_ticks_per_s
        self.boot_time_s: float = self._read_boot_time_s()

    def _path(self, pid: int, name: str) -> str:
        return f"{self.proc_root}/{pid}/{name}"

    def _read(self, pid: int, name: str) -> bytes:
        path = self._path(pid, name)
        try:
            with open(path, "rb", buffering=0) as file:
                return file.read()
        except OSError as err:
            raise _translate(err, pid, path) from err

    def _read_boot_time_s(self) -> float:
        path = f"{self.proc_root}/stat"
        try:
            with open(path, "rb") as file:
                content = file.read()
        except OSError as err:
            raise ProcError(f"{path}: {err.strerror} (errno {err.errno})") from err
        for line in content.splitlines():
            if line.startswith(b"btime "):
                try:
                    return float(int(line.split()[1]))
                except (IndexError, ValueError) as err:
                    raise ProcError(f"{path}: bad btime line {line!r}") from err
        raise ProcError(f"{path}: no btime line")

    def pids(self) -> list[int]:
        """The numeric entries of the proc root (processes, not threads), sorted."""
        try:
            names = os.listdir(self.proc_root)
        except OSError as err:
            raise ProcError(f"{self.proc_root}: {err.strerror} (errno {err.errno})") from err
        return sorted(int(name) for name in names if name.isdigit())

    def stat(self, pid: int) -> ProcStat:
        """/proc/PID/stat, parsed."""
        return read_stat(pid, self.proc_root)

    def btime(self, start_time_ticks: int) -> int:
        """Epoch seconds of a process start, as atop computes it.

        atop: (start_time_ticks + boot time in ticks) / ticks per second, in
        integer arithmetic; the boot time comes from the btime line.
        """
        boot_ticks = int(self.boot_time_s) * self.clock_ticks_per_s
        return (start_time_ticks + boot_ticks) // self.clock_ticks_per_s

    def fd_count(self, pid: int) -> int:
        """Open descriptors of ``pid``: st_size of /proc/PID/fd (0 before Linux 6.2)."""
        path = self._path(pid, "fd")
        try:
            return os.stat(path).st_size
        except OSError as err:
            raise _translate(err, pid, path) from err

    def socket_inodes(self, pid: int) -> dict[int, int]:
        """Socket inode -> descriptor number for every socket ``pid`` holds.

        Uses readlink relative to an open /proc/PID/fd (the cheap form); a
        descriptor closed between the listing and its readlink is skipped.
        """
        path = self._path(pid, "fd")
        try:
            directory_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise _translate(err, pid, path) from err
        inodes: dict[int, int] = {}
        prefix = _SOCKET_LINK_PREFIX
        prefix_length = len(prefix)
        try:
            try:
                names = os.listdir(directory_fd)
            except OSError as err:
                raise _translate(err, pid, path) from err
            for name in names:
                try:
                    target = os.readlink(name, dir_fd=directory_fd)
                except FileNotFoundError:
                    continue  # closed since the listing
                except OSError as err:
                    raise _translate(err, pid, f"{path}/{name}") from err
                if target.startswith(prefix) and target.endswith("]"):
                    try:
                        inodes[int(target[prefix_length:-1])] = int(name)
                    except ValueError:
                        log.debug("%s/%s: odd socket link %r", path, name, target)
        finally:
            os.close(directory_fd)
        return inodes

    def thread_ids(self, pid: int) -> list[int]:
        """The thread ids of process ``pid`` (/proc/PID/task), sorted."""
        path = self._path(pid, "task")
        try:
            names = os.listdir(path)
        except OSError as err:
            raise _translate(err, pid, path) from err
        return sorted(int(name) for name in names if name.isdigit())

    def tgid_of(self, tid: int) -> int:
        """The process (Tgid) a thread id belongs to; works for any thread id."""
        values = _status_field(tid, self._read(tid, "status"), b"Tgid")
        try:
            return int(values[0])
        except (IndexError, ValueError) as err:
            raise ProcError(f"/proc/{tid}/status: bad Tgid line {values!r}") from err

    def uid(self, pid: int) -> int:
        """Real uid of ``pid`` (first value of the Uid: line)."""
        values = _status_field(pid, self._read(pid, "status"), b"Uid")
        try:
            return int(values[0])
        except (IndexError, ValueError) as err:
            raise ProcError(f"/proc/{pid}/status: bad Uid line {values!r}") from err

    def cmdline(self, pid: int) -> str:
        """Command line with NULs as spaces; "" for kernel threads (and zombies)."""
        content = self._read(pid, "cmdline")
        return content.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def _pidfd_syscall(number: int, *args: int) -> int:
    result = libc().syscall(number, *[ctypes.c_long(a) for a in args])
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def socket_endpoints(pid: int, inodes: dict[int, int]) -> dict[int, SocketEndpoint]:
    """The local address and port of some of a process's sockets, by inode.

    ``inodes`` maps inode -> descriptor number (``ProcFS.socket_inodes``).  Each
    descriptor is borrowed with pidfd_getfd(2) (needs CAP_SYS_PTRACE), asked for
    its name and given back at once.  This finds the owner of a socket that
    sock_diag no longer reports (a connection already closed, in TIME_WAIT, while
    its process still holds the descriptor).  Non-internet sockets are left out.
    """
    try:
        pidfd = _pidfd_syscall(SYS_PIDFD_OPEN, pid, 0)
    except OSError as err:
        raise _translate(err, pid, f"pidfd_open({pid})") from err
    found: dict[int, SocketEndpoint] = {}
    try:
        for inode, fd in inodes.items():
            try:
                borrowed = _pidfd_syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            except OSError as err:
                if err.errno in (errno.EPERM, errno.EACCES):
                    raise ProcAccessDenied(pid, f"pidfd_getfd({pid}, {fd})", err.errno) from err
                continue  # the descriptor was closed meanwhile
            try:
                if os.fstat(borrowed).st_ino != inode:
                    continue  # the descriptor number was reused
                sock = socket.socket(fileno=borrowed)
            except OSError:
                os.close(borrowed)
                continue
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                protocol = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
                name = sock.getsockname()
                addr = socket.inet_pton(sock.family, name[0])
                if addr.startswith(IPV4_MAPPED_PREFIX):
                    addr = addr[12:]
                cookie = SO_COOKIE_VALUE.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, SO_COOKIE_VALUE.size)
                )[0]
                found[inode] = SocketEndpoint(protocol, addr, name[1], cookie)
            except OSError:
                continue
            finally:
                sock.close()
    finally:
        os.close(pidfd)
    return found


# --- identity at birth ----------------------------------------------------------------
#
# What names a process on every row: read once, when the proc connector says a
# process was forked or exec'ed, while it still exists.  One directory
# descriptor of /proc/PID and four files read relative to it: every file comes
# from the same process even if the pid is reused meanwhile (a lookup under the
# descriptor of a finished process fails instead of reaching its successor).

# Bytes of command line kept; longer ones end with CMDLINE_TRUNCATION_MARKER.
CMDLINE_MAX_BYTES = 4096
CMDLINE_TRUNCATION_MARKER = "\u2026"  # "…": visibly not part of the command
# First read of a file; /proc's seq files hand over their whole text in one
# read when it fits, so a short read is the end (a full one reads on).
_FIRST_READ_BYTES = 4096
# The Uid: line is the ninth of /proc/PID/status, within its first 1 KiB
# (the Name: line before it is at most 64 escaped characters).
_STATUS_HEAD_BYTES = 1024
_CGROUP_V2_PREFIX = b"0::"
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class Identity(NamedTuple):
    """Who a process is: read at fork and exec, kept after it has gone."""

    pid: int  # the process (tgid)
    ppid: int
    start_time_ticks: int  # field 22 of stat: with pid, names the process
    comm: str  # at most 15 characters
    cmdline: str  # arguments joined by spaces; "" for kernel threads and zombies
    uid: int  # real uid (first value of the Uid: line)
    cgroup: str  # cgroup v2 path (the "0::" line), "" when in no v2 hierarchy


def _read_at(pid: int, dir_fd: int, name: str, first_bytes: int, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` of ``name`` under the process directory ``dir_fd``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        raise _translate(err, pid, f"/proc/{pid}/{name}") from err
    try:
        content = b""
        while len(content) < max_bytes:
            request = min(first_bytes, max_bytes - len(content))
            chunk = os.read(fd, request)
            content += chunk
            if len(chunk) < request:  # a short read is the end of a /proc file
                break
        return content
    except OSError as err:
        raise _translate(err, pid, f"/proc/{pid}/{name}") from err
    finally:
        os.close(fd)


def format_cmdline(raw: bytes, max_bytes: int = CMDLINE_MAX_BYTES) -> str:
    """The text of /proc/PID/cmdline: NULs as spaces, cut at ``max_bytes`` with a marker.

    The cut never splits a UTF-8 character; bytes that are not UTF-8 become U+FFFD.
    """
    truncated = len(raw) > max_bytes
    if truncated:
        cut = max_bytes
        while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # a continuation byte: back off
            cut -= 1
        raw = raw[:cut]
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text + CMDLINE_TRUNCATION_MARKER if truncated else text


def parse_cgroup_v2(content: bytes) -> str:
    """The path of the "0::" line of /proc/PID/cgroup, "" without one (cgroup v1 only)."""
    for line in content.splitlines():
        if line.startswith(_CGROUP_V2_PREFIX):
            return line[len(_CGROUP_V2_PREFIX) :].decode("utf-8", "replace")
    return ""


def read_identity(pid: int, proc_root: str = PROC_ROOT_DEFAULT) -> Identity:
    """Identity of process ``pid``: stat, cmdline, status (Uid) and cgroup of one process.

    Raises ProcessGone (the process, or its pid, is gone), ProcAccessDenied,
    or ProcError (a file that makes no sense).  A zombie still answers, with
    an empty command line.
    """
    path = f"{proc_root}/{pid}"
    try:
        dir_fd = os.open(path, _PATH_FLAGS)
    except OSError as err:
        raise _translate(err, pid, path) from err
    try:
        stat_content = _read_at(pid, dir_fd, "stat", _FIRST_READ_BYTES, 1 << 16)
        if not stat_content:
            raise ProcessGone(pid, f"{path}/stat")
        stat = parse_stat(pid, stat_content)
        cmdline_raw = _read_at(pid, dir_fd, "cmdline", CMDLINE_MAX_BYTES + 1, CMDLINE_MAX_BYTES + 1)
        status_head = _read_at(pid, dir_fd, "status", _STATUS_HEAD_BYTES, _STATUS_HEAD_BYTES)
        cgroup_content = _read_at(pid, dir_fd, "cgroup", _FIRST_READ_BYTES, 1 << 16)
    finally:
        os.close(dir_fd)
    if not status_head:
        raise ProcessGone(pid, f"{path}/status")
    values = _status_field(pid, status_head, b"Uid")
    try:
        uid = int(values[0])
    except (IndexError, ValueError) as err:
        raise ProcError(f"{path}/status: bad Uid line {values!r}") from err
    return Identity(
        pid=stat.pid,
        ppid=stat.ppid,
        start_time_ticks=stat.start_time_ticks,
        comm=stat.comm,
        cmdline=format_cmdline(cmdline_raw),
        uid=uid,
        cgroup=parse_cgroup_v2(cgroup_content),
    )
