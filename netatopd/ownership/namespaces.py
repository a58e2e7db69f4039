"""Network namespaces: one sock_diag socket in each, and the sockets they report by cookie.

Owns, for every network namespace some process is in (``/proc/PID/ns/net``,
distinct nsfs inodes), a ``SockDiag`` created inside that namespace, the
namespace's cookie (``SO_NETNS_COOKIE``, the value the kernel path's
programs record with each socket, ``bpf_get_netns_cookie``) and the latest
dump of its TCP and UDP sockets by socket cookie.  Called by
``CookieResolver`` (``socket`` for a flow's owner lookup, ``new_pass`` once
a resolve pass, ``refresh`` and ``alive`` for the sweep) and by the daemon's
STATUS readings (``inodes``); ``sockets_elsewhere`` is the libpcap path's
cheap count of the namespaces it does not cover.

A socket belongs to the namespace of the thread that created it, and setns(2)
moves only the calling thread: each namespace's sockets are made in a
short-lived thread that enters the namespace through ``/proc/PID/ns/net``
and leaves with the thread.  A namespace no process is in any more is
forgotten (its sockets closed) at the next refresh.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
import time
from typing import NamedTuple

from ..libc import libc
from ..netlink.sockdiag import SockDiag, SocketInfo
from ..netlink.socket import NetlinkError

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000  # linux/sched.h
SO_NETNS_COOKIE = 71  # asm-generic/socket.h: __u64, the socket's namespace cookie
NETNS_COOKIE = struct.Struct("=Q")
ENTER_TIMEOUT_S = 5.0  # a thread entering a namespace is waited for this long at most
REFRESH_MIN_INTERVAL_S = 0.05  # an unknown netns cookie rescans /proc at most this often
PROC_NET_FILES = ("tcp", "tcp6", "udp", "udp6")
ELSEWHERE_INTERVAL_S = 5.0  # sockets_elsewhere is computed at most this often


class NamespaceError(Exception):
    """A namespace could not be entered (it went away, or setns was refused)."""


class Namespace(NamedTuple):
    """One network namespace: its nsfs inode, its cookie and a sock_diag socket inside it."""

    inode: int
    cookie: int
    sockdiag: SockDiag


def namespace_pids(proc_root: str = "/proc") -> dict[int, int]:
    """nsfs inode -> one pid in that network namespace (the lowest), from /proc/*/ns/net."""
    found: dict[int, int] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            inode = os.stat(f"{proc_root}/{name}/ns/net").st_ino
        except OSError:
            continue  # gone, or a kernel thread's namespace we may not look at
        pid = int(name)
        known = found.get(inode)
        if known is None or pid < known:
            found[inode] = pid
    return found


def pids_by_namespace(proc_root: str = "/proc") -> dict[int, list[int]]:
    """nsfs inode -> every pid in that network namespace (one stat a process)."""
    found: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return found
    for name in names:
        if name.isdigit():
            try:
                inode = os.stat(f"{proc_root}/{name}/ns/net").st_ino
            except OSError:
                continue
            found.setdefault(inode, []).append(int(name))
    return found


def _enter_and_open(path: str) -> tuple[SockDiag, int]:
    """A SockDiag and the namespace cookie, made in a thread inside the namespace at path."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            outcome["error"] = NamespaceError(f"cannot open {path}: {err.strerror}")
            return
        try:
            if libc().setns(fd, CLONE_NEWNET) != 0:
                number = ctypes.get_errno()
                outcome["error"] = NamespaceError(f"setns({path}): {os.strerror(number)}")
                return
        finally:
            os.close(fd)
        try:
            sockdiag = SockDiag()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                raw = probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, NETNS_COOKIE.size)
            outcome["result"] = (sockdiag, NETNS_COOKIE.unpack(raw)[0])
        except OSError as err:
            outcome["error"] = NamespaceError(f"sockets in {path}: {err.strerror}")

    thread = threading.Thread(target=run, name="netatopd-setns")
    thread.start()
    thread.join(ENTER_TIMEOUT_S)
    if thread.is_alive():
        raise NamespaceError(f"entering {path} did not finish in {ENTER_TIMEOUT_S} s")
    error = outcome.get("error")
    if isinstance(error, NamespaceError):
        raise error
    result = outcome["result"]
    assert isinstance(result, tuple)
    return result


class NamespaceSockets:
    """A sock_diag socket in every network namespace, and their sockets by cookie."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.by_inode: dict[int, Namespace] = {}
        self.by_cookie: dict[int, Namespace] = {}
        self.failed: set[int] = set()  # inodes that could not be entered (not retried)
        self.last_refresh_monotonic_s = -REFRESH_MIN_INTERVAL_S
        self.generation = 0  # one a resolve pass: a socket not found dumps again next pass
        # (netns cookie, protocol, family) -> (generation of the dump, cookie -> socket)
        self._dumps: dict[tuple[int, int, int], tuple[int, dict[int, SocketInfo]]] = {}
        self.dumps = 0
        self.refreshes = 0
        self.enter_failures = 0

    # -- the namespaces ------------------------------------------------------------------

    def refresh(self) -> None:
        """Open namespaces processes entered since the last look, close those left empty."""
        self.last_refresh_monotonic_s = time.monotonic()
        self.refreshes += 1
        pids = namespace_pids(self.proc_root)
        for inode in [inode for inode in self.by_inode if inode not in pids]:
            gone = self.by_inode.pop(inode)
            self.by_cookie.pop(gone.cookie, None)
            for key in [key for key in self._dumps if key[0] == gone.cookie]:
                del self._dumps[key]
            gone.sockdiag.close()
            log.debug("network namespace %d left (no process in it)", inode)
        self.failed &= set(pids)
        for inode, pid in pids.items():
            if inode in self.by_inode or inode in self.failed:
                continue
            try:
                sockdiag, cookie = _enter_and_open(f"{self.proc_root}/{pid}/ns/net")
            except NamespaceError as err:
                self.enter_failures += 1
                self.failed.add(inode)
                log.warning("network namespace %d: %s", inode, err)
                continue
            namespace = Namespace(inode, cookie, sockdiag)
            self.by_inode[inode] = namespace
            self.by_cookie[cookie] = namespace
            log.debug("network namespace %d (cookie %d) opened", inode, cookie)

    def namespace(self, netns_cookie: int) -> Namespace | None:
        """The namespace of a cookie, looking at /proc again (rate-limited) when unknown."""
        namespace = self.by_cookie.get(netns_cookie)
        if namespace is None and (
            time.monotonic() - self.last_refresh_monotonic_s >= REFRESH_MIN_INTERVAL_S
        ):
            self.refresh()
            namespace = self.by_cookie.get(netns_cookie)
        return namespace

    @property
    def inodes(self) -> list[int]:
        """The nsfs inodes of the namespaces open, sorted."""
        return sorted(self.by_inode)

    @property
    def count(self) -> int:
        return len(self.by_inode)

    # -- sockets by cookie ----------------------------------------------------------------

    def new_pass(self) -> None:
        """A resolve pass begins: a cookie not found in a dump may dump again."""
        self.generation += 1

    def _dump(self, namespace: Namespace, protocol: int, family: int) -> dict[int, SocketInfo]:
        key = (namespace.cookie, protocol, family)
        entry = self._dumps.get(key)
        if entry is not None and entry[0] == self.generation:
            return entry[1]
        try:
            sockets = {s.cookie: s for s in namespace.sockdiag.dump(protocol, family)}
        except NetlinkError as err:
            if err.errno != errno.ENOENT:
                log.warning("sock_diag dump in namespace %d: %s", namespace.inode, err)
            sockets = {}
        self.dumps += 1
        self._dumps[key] = (self.generation, sockets)
        return sockets

    def socket(
        self, netns_cookie: int, cookie: int, protocol: int, family: int
    ) -> SocketInfo | None:
        """The socket of a cookie in its namespace (a dump at most once a pass), or None."""
        namespace = self.namespace(netns_cookie)
        if namespace is None:
            return None
        both = (socket.AF_INET, socket.AF_INET6)
        families = (family,) if family in both else both
        for each in families:
            key = (namespace.cookie, protocol, each)
            entry = self._dumps.get(key)
            if entry is not None and cookie in entry[1]:
                return entry[1][cookie]
            found = self._dump(namespace, protocol, each).get(cookie)
            if found is not None:
                return found
        return None

    def close(self) -> None:
        for namespace in self.by_inode.values():
            namespace.sockdiag.close()
        self.by_inode.clear()
        self.by_cookie.clear()
        self._dumps.clear()


def _has_sockets(proc_root: str, pid: int) -> bool:
    """Whether /proc/PID/net lists a TCP or UDP socket (a header line, then one a socket)."""
    for name in PROC_NET_FILES:
        try:
            with open(f"{proc_root}/{pid}/net/{name}", "rb") as table:
                table.readline()
                if table.readline():
                    return True
        except OSError:
            continue
    return False


def sockets_elsewhere(proc_root: str = "/proc") -> list[int]:
    """nsfs inodes of the network namespaces other than ours that hold TCP or UDP sockets.

    The libpcap path counts only its own namespace; this is what it misses.
    Cheap: one stat a process and a few lines of /proc/PID/net of one
    process a namespace.
    """
    try:
        own = os.stat(f"{proc_root}/self/ns/net").st_ino
    except OSError:
        return []
    return sorted(
        inode
        for inode, pid in namespace_pids(proc_root).items()
        if inode != own and _has_sockets(proc_root, pid)
    )
