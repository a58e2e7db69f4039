"""rundir: directories checked before root writes in them, the lock, files made safely.

Ownership cases chown to nobody and need root; they are skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd import rundir
from netatopd.defaults import LOCK_NAME
from netatopd.rundir import AlreadyRunning, RunDirError, SafeDirectory, open_directory

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def safe(tmp_path: Path) -> Iterator[SafeDirectory]:
    directory = open_directory(str(tmp_path / "run"))
    yield directory
    directory.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the directory ----------------------------------------------------------------------


def test_a_missing_directory_is_made_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with open_directory(str(tmp_path / "a" / "run")) as run:
            assert run.path == str(tmp_path / "a" / "run")
        with open_directory(str(tmp_path / "db"), rundir.DATABASE_DIR_MODE, "database directory"):
            pass
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a" / "run") == 0o755
    assert mode_of(tmp_path / "db") == 0o750


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_directory_others_may_write_in_is_refused(tmp_path: Path, mode: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, mode)
    with pytest.raises(RunDirError, match="writable by .*chmod go-w") as caught:
        open_directory(str(run))
    assert caught.value.path == str(run)
    assert mode_of(run) == mode  # refused, not "fixed" behind the admin's back


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(RunDirError, match="not a directory"):
        open_directory(str(tmp_path / "run"))


@as_root
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match="owned by uid 65534.*not by root"):
        open_directory(str(run))


@as_root
def test_a_symlink_made_by_another_user_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o755)
    (tmp_path / "run").symlink_to(target)
    os.lchown(tmp_path / "run", NOBODY, NOBODY)
    with pytest.raises(RunDirError, match="symbolic link made by uid 65534"):
        open_directory(str(tmp_path / "run"))


def test_a_symlink_of_ours_is_followed_and_its_target_checked(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o777)
    os.chmod(target, 0o777)
    (tmp_path / "run").symlink_to(target)
    with pytest.raises(RunDirError, match="writable by others"):
        open_directory(str(tmp_path / "run"))
    os.chmod(target, 0o755)
    with open_directory(str(tmp_path / "run")):
        pass


@as_root
def test_a_directory_inside_one_another_user_controls_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "run").mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)  # nobody can rename run away and put his own there
    with pytest.raises(RunDirError, match="inside .*home"):
        open_directory(str(home / "run"))


def test_a_sticky_parent_like_tmp_is_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with open_directory(str(shared / "run")):
        pass


def test_without_create_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        open_directory(str(tmp_path / "run"), create=False)


# -- the lock ---------------------------------------------------------------------------


def test_the_lock_is_exclusive_and_names_its_holder(safe: SafeDirectory) -> None:
    lock = safe.lock()
    path = Path(safe.path) / LOCK_NAME
    assert path.read_text() == f"{os.getpid()}\n"
    assert mode_of(path) == 0o600
    with pytest.raises(AlreadyRunning, match=f"another netatopd \\(pid {os.getpid()}\\) holds"):
        safe.lock()  # a second open file description conflicts even in this process
    lock.release()
    with safe.lock():
        pass
    assert path.exists()  # the lock file stays: removing it would race the next taker


def test_the_lock_file_is_never_a_symlink(safe: SafeDirectory, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    (Path(safe.path) / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunDirError, match="lock file"):
        safe.lock()
    assert victim.read_text() == "precious" and mode_of(victim) == 0o600


# -- files ------------------------------------------------------------------------------


def test_a_file_is_made_with_exactly_its_mode(safe: SafeDirectory) -> None:
    old = os.umask(0)
    try:
        fd = safe.create_file(".table.1.new", 0o600)
    finally:
        os.umask(old)
    os.close(fd)
    assert mode_of(Path(safe.path) / ".table.1.new") == 0o600


def test_a_planted_symlink_is_never_followed(safe: SafeDirectory, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    (Path(safe.path) / ".table.7.new").symlink_to(victim)
    fd = safe.create_file(".table.7.new", 0o644, size_bytes=4096)
    os.close(fd)
    made = Path(safe.path) / ".table.7.new"
    assert not made.is_symlink() and made.stat().st_size == 4096
    assert victim.read_text() == "precious" and mode_of(victim) == 0o600


@as_root
def test_a_file_of_another_user_in_the_way_is_refused(safe: SafeDirectory, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = Path(safe.path) / ".table.7.new"
    planted.symlink_to(victim)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match="not netatopd's"):
        safe.create_file(".table.7.new", 0o600)
    assert victim.read_text() == "precious"


def test_space_is_allocated_at_creation(safe: SafeDirectory) -> None:
    size = 1 << 20
    fd = safe.create_file("table", 0o600, size_bytes=size)
    try:
        st = os.fstat(fd)
        assert st.st_size == size and st.st_blocks * 512 >= size
    finally:
        os.close(fd)


def test_a_full_filesystem_is_a_clean_error_and_leaves_nothing(
    safe: SafeDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(RunDirError, match="no room for .*table") as caught:
        safe.create_file("table", 0o600, size_bytes=15 << 20)
    assert caught.value.errno == errno.ENOSPC
    assert not (Path(safe.path) / "table").exists()


def test_remove_takes_only_the_file_we_made(safe: SafeDirectory) -> None:
    ours_fd = safe.create_file("table", 0o600)  # held open: its inode is not reused
    ours = safe.stat("table")
    os.close(safe.create_file(".other", 0o600))
    safe.rename(".other", "table")  # another daemon's table now
    assert not safe.remove("table", same_as=ours)
    os.close(ours_fd)
    assert (Path(safe.path) / "table").exists()
    assert safe.remove("table", same_as=safe.stat("table"))
    assert not safe.remove("table")


def test_rename_publishes_within_the_directory(safe: SafeDirectory) -> None:
    os.close(safe.create_file(".table.1.new", 0o600))
    safe.rename(".table.1.new", "table")
    assert sorted(os.listdir(safe.path)) == ["table"]


def test_an_unwritable_directory_is_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").mkdir(mode=0o755)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(RunDirError, match="not writable by netatopd"):
        open_directory(str(tmp_path / "run"))


# -- sockets ----------------------------------------------------------------------------


def test_a_socket_is_bound_in_the_directory_with_its_mode(safe: SafeDirectory) -> None:
    sock = safe.bind_socket("control", 0o600)
    try:
        path = Path(safe.path) / "control"
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode_of(path) == 0o600
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
        with pytest.raises(RunDirError, match="already serves"):
            safe.bind_socket("control", 0o600)
    finally:
        sock.close()
    safe.bind_socket("control", 0o600).close()  # nobody answers now: the leftover is replaced


def test_a_socket_name_taken_by_something_else_is_refused(
    safe: SafeDirectory, tmp_path: Path
) -> None:
    (tmp_path / "victim").write_text("precious")
    (Path(safe.path) / "control").symlink_to(tmp_path / "victim")
    with pytest.raises(RunDirError, match="not a socket"):
        safe.bind_socket("control", 0o600)
    assert (tmp_path / "victim").read_text() == "precious"


# -- what a daemon that does not start takes away again (issue 15 item 6) ---------------


def test_directories_made_are_removed_again_and_only_those(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(mode=0o755)
    made = open_directory(str(tmp_path / "a" / "b" / "run"))
    assert made.made == (str(tmp_path / "a" / "b" / "run"), str(tmp_path / "a" / "b"))
    lock = made.lock()
    assert lock.remove_made() is True
    assert made.remove_made() == [str(tmp_path / "a" / "b" / "run"), str(tmp_path / "a" / "b")]
    assert os.listdir(tmp_path / "a") == []  # "a" was there before: it stays


def test_a_directory_that_was_there_stays_with_its_old_lock_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / LOCK_NAME).write_text("")
    os.chmod(run / LOCK_NAME, 0o600)
    before = os.stat(run / LOCK_NAME)
    existing = open_directory(str(run))
    assert existing.made == ()
    assert existing.lock().remove_made() is False  # not made by this lock
    assert existing.remove_made() == []
    assert os.listdir(run) == [LOCK_NAME]
    assert os.stat(run / LOCK_NAME).st_ino == before.st_ino


def test_a_lock_file_made_in_an_existing_directory_is_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    existing = open_directory(str(run))
    assert existing.lock().remove_made() is True
    existing.close()
    assert os.listdir(run) == []


def test_a_refused_second_taker_removes_nothing(tmp_path: Path) -> None:
    first = open_directory(str(tmp_path / "run"))
    held = first.lock()
    second = open_directory(str(tmp_path / "run"))
    assert second.made == ()  # the first made it
    with pytest.raises(AlreadyRunning):
        second.lock()
    assert second.remove_made() == []
    assert os.listdir(tmp_path / "run") == [LOCK_NAME]
    assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    held.release()
    first.close()


def test_a_directory_someone_wrote_in_meanwhile_stays(tmp_path: Path) -> None:
    made = open_directory(str(tmp_path / "run"))
    (tmp_path / "run" / "other").write_text("x")
    assert made.remove_made() == []
    assert os.listdir(tmp_path / "run") == ["other"]


def test_a_lock_file_removed_before_the_flock_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that failed to start removes its lock file; one that opened that file
    just before must not hold a lock on a file that no longer has the name."""
    directory = open_directory(str(tmp_path / "run"))
    real_flock = rundir.fcntl.flock
    calls = []

    def flock_after_removal(fd: int, operation: int) -> None:
        if not calls:
            os.unlink(tmp_path / "run" / LOCK_NAME)  # what a failing daemon does
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(rundir.fcntl, "flock", flock_after_removal)
    lock = directory.lock()
    assert len(calls) == 2
    assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / "run" / LOCK_NAME).st_ino
    lock.release()
    directory.close()
