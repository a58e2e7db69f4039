"""The directories netatopd writes in, and the files it makes there, made safe for root.

Owns the rules root follows before it writes into a directory (the run
directory, the database directory, the atop socket's directory): the
directory must be owned by root (or by the daemon's effective uid) and not
writable by group or others, and so must every directory above it unless that
one is sticky (like /tmp); a symlink to it counts only if root made it.  Files
are made through the directory's file descriptor (``openat``) with
``O_CREAT | O_EXCL | O_NOFOLLOW``, so a name planted in advance is never
followed; a leftover of ours is removed first, anything else is refused.

Also owns the run directory's lock (``flock`` on ``lock``, which holds the pid
of the daemon that has it), what a daemon that does not start takes away
again (the directories and the lock file it made itself, ``remove_made``;
nothing that was there before, nothing of a daemon that runs), and the
space of a file made for a memory map (``posix_fallocate``, so a full
filesystem fails at start with ENOSPC and not with SIGBUS later).

Unix sockets: ``bind`` does not follow a symlink at the last component (an
existing name of any kind gives EADDRINUSE), so a socket is bound in the
checked directory itself, through /proc/self/fd/N/NAME of the directory's
descriptor, with the umask giving its mode at creation; a socket file already
there is removed only if it is owned by root (or us) and nobody answers on it.

Called by the daemon at start (netatopd.daemon) before it touches anything in
these directories; errors are ``RunDirError`` with a sentence a person can act on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import socket
import stat
import time

from .defaults import LOCK_NAME

PID_WAIT_S = 0.5  # how long a refused daemon waits for the holder to write its pid
LOCK_ATTEMPTS = 5  # a lock file removed under us (a daemon that did not start) is made again
RUN_DIR_MODE = 0o755
DATABASE_DIR_MODE = 0o750


class RunDirError(Exception):
    """A directory or a file in it cannot be used safely (message says why and what to do)."""

    def __init__(self, message: str, path: str, error: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.errno = error


class AlreadyRunning(RunDirError):
    """Another netatopd holds the run directory's lock."""

    def __init__(self, message: str, path: str, pid: int | None) -> None:
        super().__init__(message, path, errno.EWOULDBLOCK)
        self.pid = pid


def trusted_uids() -> tuple[int, int]:
    return (0, os.geteuid())


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_directory_stat(st: os.stat_result, path: str, what: str) -> None:
    """Refuse a directory another user owns or may write in (RunDirError)."""
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"the {what} {path} is not a directory; choose another", path)
    if st.st_uid not in trusted_uids():
        raise RunDirError(
            f"the {what} {path} is owned by {_owner(st.st_uid)}, not by root: netatopd will "
            "not write where another user can swap its files; remove it or choose another",
            path,
        )
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        raise RunDirError(
            f"the {what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): "
            "netatopd will not write where another user can swap its files; "
            f"run chmod go-w {path} or choose another",
            path,
        )


def check_ancestors(real_path: str, what: str) -> None:
    """Every directory above real_path must be root's (or ours), and not writable by
    others unless sticky, else whoever may write there can rename ours away."""
    parent = os.path.dirname(real_path)
    while True:
        st = os.stat(parent)
        safe_owner = st.st_uid in trusted_uids()
        writable = st.st_mode & 0o022
        if not safe_owner or (writable and not st.st_mode & stat.S_ISVTX):
            raise RunDirError(
                f"the {what} {real_path} is inside {parent} (owned by {_owner(st.st_uid)}, "
                f"mode {stat.S_IMODE(st.st_mode):04o}), where another user can replace it; "
                "choose a directory under one only root can write in",
                real_path,
            )
        if parent == "/":
            return
        parent = os.path.dirname(parent)


class SafeDirectory:
    """A checked directory, held open: files in it are made and removed through its fd.

    made: the directories open_directory created for it (it, and the missing
    parents), deepest first; remove_made takes them away again.
    """

    def __init__(self, path: str, fd: int, what: str, made: tuple[str, ...] = ()) -> None:
        self.path = path
        self.fd = fd
        self.what = what
        self.made = made

    def remove_made(self) -> list[str]:
        """Close, and remove the directories made for this one (deepest first) while
        they are empty; what was there before is left as it was.  Returns the
        directories removed.  A directory someone put a file in meanwhile stays (and
        so do those above it)."""
        self.close()
        removed: list[str] = []
        for path in self.made:
            try:
                os.rmdir(path)
            except OSError:
                break
            removed.append(path)
        self.made = ()
        return removed

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _via_fd(self, name: str) -> str:
        """A path to name that resolves through the open directory, not self.path."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def _error(self, doing: str, name: str, err: OSError) -> RunDirError:
        path = self.join(name)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return RunDirError(
                f"cannot {doing} {path}: {err.strerror}; the {self.what} {self.path} must be "
                "writable by netatopd (run it as root, or choose another)",
                path,
                err.errno or 0,
            )
        return RunDirError(f"cannot {doing} {path}: {err.strerror}", path, err.errno or 0)

    # -- the lock ------------------------------------------------------------------------

    def lock(self, name: str = LOCK_NAME) -> DirectoryLock:
        """Take the directory's exclusive lock (flock, non-blocking); write our pid in it.

        AlreadyRunning names the pid of the daemon that holds it.  The lock file
        stays when the lock is let go (removing it would race with the next taker).
        """
        for _ in range(LOCK_ATTEMPTS - 1):
            try:
                return self._lock_once(name)
            except _LockFileReplaced:
                continue
        return self._lock_once(name, last=True)

    def _lock_once(self, name: str, last: bool = False) -> DirectoryLock:
        """One attempt of lock: the lock file made (O_EXCL: then it is ours to remove if
        the daemon does not start) or opened, locked, checked to be still the file
        under name (a daemon that failed to start may have just removed it)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        created = True
        try:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.fd)
            except FileExistsError:
                created = False
                fd = os.open(name, flags | os.O_CREAT, 0o600, dir_fd=self.fd)
        except OSError as err:
            raise self._error("open the lock file", name, err) from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted_uids():
                raise RunDirError(
                    f"{self.join(name)} is not a lock file of netatopd (owned by "
                    f"{_owner(st.st_uid)}); remove it",
                    self.join(name),
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder_pid(fd)
                holder = f"pid {pid}" if pid else "pid unknown"
                raise AlreadyRunning(
                    f"another netatopd ({holder}) holds {self.path}; stop it first "
                    "or choose another run directory",
                    self.path,
                    pid,
                ) from None
            try:
                now = self.stat(name)
            except FileNotFoundError:
                now = None
            if not last and (now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)):
                raise _LockFileReplaced
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return DirectoryLock(fd, self.join(name), self if created else None, name)

    # -- files ---------------------------------------------------------------------------

    def create_file(self, name: str, mode: int, size_bytes: int = 0) -> int:
        """Make name afresh (O_CREAT | O_EXCL | O_NOFOLLOW through the directory's fd)
        with exactly mode; its fd (read and write).

        A leftover of ours under that name (a crashed daemon's) is removed first;
        anything else there is refused.  With size_bytes, the file's space is
        allocated (``allocate``); if that fails the file is removed again.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(name, flags, mode, dir_fd=self.fd)
            except FileExistsError:
                self.remove(name)
                fd = os.open(name, flags, mode, dir_fd=self.fd)
        except OSError as err:
            raise self._error("create", name, err) from err
        try:
            os.fchmod(fd, mode)  # whatever the umask
            if size_bytes:
                allocate(fd, size_bytes, self.join(name))
        except BaseException:
            made = os.fstat(fd)
            os.close(fd)
            self.remove(name, same_as=made)
            raise
        return fd

    def remove(self, name: str, same_as: os.stat_result | None = None) -> bool:
        """Unlink name if it is ours (owned by root or us, not a directory) and, with
        same_as, the very file same_as describes; False if it was not there or not that
        file.  RunDirError for a file of another user."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if same_as is not None and (st.st_dev, st.st_ino) != (same_as.st_dev, same_as.st_ino):
            return False
        if stat.S_ISDIR(st.st_mode) or st.st_uid not in trusted_uids():
            raise RunDirError(
                f"{self.join(name)} is in the way and not netatopd's (owned by "
                f"{_owner(st.st_uid)}); remove it",
                self.join(name),
            )
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise self._error("remove", name, err) from err
        return True

    def stat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def rename(self, source: str, target: str) -> None:
        """Rename within the directory (replaces target, never follows it)."""
        try:
            os.rename(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as err:
            raise self._error("rename to", target, err) from err

    # -- sockets -------------------------------------------------------------------------

    def bind_socket(self, name: str, mode: int) -> socket.socket:
        """A listening Unix stream socket at name with exactly mode (non-blocking,
        close-on-exec).  A live server there is refused; a stale socket of ours is
        replaced; anything else there is refused."""
        try:
            st: os.stat_result | None = self.stat(name)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise RunDirError(
                    f"{self.join(name)} exists and is not a socket; remove it or choose "
                    "another path",
                    self.join(name),
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.connect(self._via_fd(name))
            except OSError:
                self.remove(name, same_as=st)  # nobody answers: a dead daemon's leftover
            else:
                raise RunDirError(
                    f"another program already serves {self.join(name)}; stop it first",
                    self.join(name),
                )
            finally:
                probe.close()
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(self._via_fd(name))
        except OSError as err:
            sock.close()
            raise self._error("create the socket", name, err) from err
        finally:
            os.umask(old_umask)
        sock.listen(64)
        return sock


class _LockFileReplaced(Exception):
    """The lock file was removed or replaced between its open and its flock."""


class DirectoryLock:
    """The run directory's lock, held while the fd is open.

    made_in: the directory, when this lock made the lock file (so that a daemon
    that does not start can take it away again: remove_made).
    """

    def __init__(
        self, fd: int, path: str, made_in: SafeDirectory | None = None, name: str = LOCK_NAME
    ) -> None:
        self.fd = fd
        self.path = path
        self.made_in = made_in
        self.name = name

    def remove_made(self) -> bool:
        """Remove the lock file if this lock made it and still holds it (the file is
        unlinked before the lock is let go, so no other daemon holds it then), then
        let go; True if removed."""
        removed = False
        if self.fd >= 0 and self.made_in is not None and self.made_in.fd >= 0:
            removed = self.made_in.remove(self.name, same_as=os.fstat(self.fd))
        self.made_in = None
        self.release()
        return removed

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _holder_pid(fd: int) -> int | None:
    """The pid in the lock file; the holder writes it just after it took the lock,
    so a file found empty is read again for up to PID_WAIT_S."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        pid = _read_pid(fd)
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.005)


def open_directory(
    path: str, mode: int = RUN_DIR_MODE, what: str = "run directory", create: bool = True
) -> SafeDirectory:
    """Check path (creating it with mode, and its missing parents, if create) and
    hold it open; RunDirError if it is not safe for root to write in."""
    path = os.path.abspath(path)
    made: list[str] = []
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise RunDirError(f"the {what} {path} does not exist", path, errno.ENOENT) from None
        missing = path
        while not os.path.lexists(missing):
            made.append(missing)  # deepest first
            missing = os.path.dirname(missing)
        try:
            os.makedirs(path, mode)
        except FileExistsError:
            made = []  # made meanwhile (by another daemon): checked below like any other
        except OSError as err:
            raise RunDirError(
                f"cannot create the {what} {path}: {err.strerror}", path, err.errno or 0
            ) from err
        link = os.lstat(path)
        if stat.S_ISDIR(link.st_mode) and link.st_uid in trusted_uids():
            os.chmod(path, mode)  # ours, just made: exactly mode whatever the umask
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted_uids():
        raise RunDirError(
            f"the {what} {path} is a symbolic link made by {_owner(link.st_uid)}; "
            "remove it or choose another",
            path,
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError as err:
        raise RunDirError(
            f"the {what} {path} is not a directory; choose another", path, errno.ENOTDIR
        ) from err
    except OSError as err:
        raise RunDirError(
            f"cannot open the {what} {path}: {err.strerror}", path, err.errno or 0
        ) from err
    try:
        check_directory_stat(os.fstat(fd), path, what)
        real_path = os.readlink(f"/proc/self/fd/{fd}")
        check_ancestors(real_path, what)
        if not os.access(f"/proc/self/fd/{fd}", os.W_OK | os.X_OK, effective_ids=True):
            raise RunDirError(
                f"the {what} {path} is not writable by netatopd (uid {os.geteuid()}); "
                "run it as root or choose another",
                path,
                errno.EACCES,
            )
    except BaseException:
        os.close(fd)
        raise
    return SafeDirectory(path, fd, what, tuple(made))


def allocate(fd: int, size_bytes: int, path: str) -> None:
    """Give the file fd its size_bytes of disk now (posix_fallocate), so that writing
    through a memory map of it never meets a full filesystem (SIGBUS)."""
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise RunDirError(
                f"no room for {path} ({size_bytes} bytes) on its filesystem "
                f"({err.strerror}); free some space or choose another directory",
                path,
                err.errno or 0,
            ) from err
        raise RunDirError(
            f"cannot allocate {size_bytes} bytes for {path}: {err.strerror}",
            path,
            err.errno or 0,
        ) from err
