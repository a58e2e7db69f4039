"""procfs against a fake proc tree under tmp_path (no root).

Ground truth: the files the fixture writes; field positions as documented in
proc_pid_stat(5) and proc_pid_status(5).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from netatopd import procfs
from netatopd.procfs import ProcAccessDenied, ProcError, ProcessGone, ProcFS, ProcStat

BOOT_TIME_S = 1_700_000_000
CLOCK_TICKS_PER_S = 100


def stat_line(pid: int, comm: str, state: str, ppid: int, threads: int, start_ticks: int) -> str:
    # fields 3..22 of proc_pid_stat(5), then a few more to show they are ignored
    after_comm = [state, str(ppid), "100", "100", "0", "-1", "4194560", "10", "0", "0", "0"]
    after_comm += ["5", "3", "0", "0", "20", "0", str(threads), "0", str(start_ticks)]
    after_comm += ["1000000", "250", "18446744073709551615"]
    return f"{pid} ({comm}) " + " ".join(after_comm) + "\n"


def status_text(tgid: int, pid: int, uid: int) -> str:
    return (
        "Name:\tworker\nUmask:\t0022\nState:\tS (sleeping)\n"
        f"Tgid:\t{tgid}\nNgid:\t0\nPid:\t{pid}\nPPid:\t1\nTracerPid:\t0\n"
        f"Uid:\t{uid}\t{uid + 1}\t{uid + 2}\t{uid + 3}\nGid:\t0\t0\t0\t0\n"
    )


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text(
        f"cpu  1 2 3 4 5 6 7 0 0 0\nintr 12345\nctxt 99\nbtime {BOOT_TIME_S}\nprocesses 400\n"
    )
    for name in ("self", "net", "sys"):  # non-numeric entries are not processes
        (root / name).mkdir()
    # pid 100: a comm with ") " and parentheses, three threads, sockets
    p100 = root / "100"
    p100.mkdir()
    (p100 / "stat").write_text(stat_line(100, "a) b) (c", "S", 1, 3, 123456))
    (p100 / "status").write_text(status_text(100, 100, 1000))
    (p100 / "cmdline").write_bytes(b"python3\0-c\0print(1)\0")
    fd = p100 / "fd"
    fd.mkdir()
    os.symlink("/dev/null", fd / "0")
    os.symlink("socket:[123]", fd / "3")
    os.symlink("pipe:[5]", fd / "4")
    os.symlink("socket:[4567890123]", fd / "17")
    os.symlink("anon_inode:[eventfd]", fd / "5")
    task = p100 / "task"
    task.mkdir()
    for tid in ("100", "101", "102"):
        (task / tid).mkdir()
    # 101: a thread of 100, reachable as /proc/101 like on Linux
    p101 = root / "101"
    p101.mkdir()
    (p101 / "status").write_text(status_text(100, 101, 1000))
    # pid 2: a kernel thread with spaces and non-ASCII in its comm
    p2 = root / "2"
    p2.mkdir()
    (p2 / "stat").write_text(stat_line(2, "kworker/0:1 ünï", "I", 0, 1, 7))
    (p2 / "cmdline").write_bytes(b"")
    # pid 300: listed, but gone before anything could be read
    (root / "300").mkdir()
    return root


@pytest.fixture
def proc(proc_root: Path) -> ProcFS:
    return ProcFS(str(proc_root), clock_ticks_per_s=CLOCK_TICKS_PER_S)


def test_boot_time_and_ticks(proc: ProcFS) -> None:
    assert proc.boot_time_s == float(BOOT_TIME_S)
    assert proc.clock_ticks_per_s == CLOCK_TICKS_PER_S


def test_default_ticks_from_sysconf(proc_root: Path) -> None:
    assert ProcFS(str(proc_root)).clock_ticks_per_s == os.sysconf("SC_CLK_TCK")


def test_missing_btime_is_proc_error(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu 1 2 3\n")
    with pytest.raises(ProcError):
        ProcFS(str(tmp_path))


def test_pids_are_numeric_entries(proc: ProcFS) -> None:
    assert proc.pids() == [2, 100, 101, 300]


def test_stat_with_nasty_comm(proc: ProcFS) -> None:
    assert proc.stat(100) == ProcStat(
        pid=100, comm="a) b) (c", state="S", ppid=1, num_threads=3, start_time_ticks=123456
    )
    assert proc.stat(2) == ProcStat(
        pid=2, comm="kworker/0:1 ünï", state="I", ppid=0, num_threads=1, start_time_ticks=7
    )


def test_stat_of_vanished_pid(proc: ProcFS) -> None:
    with pytest.raises(ProcessGone) as caught:
        proc.stat(300)
    assert caught.value.pid == 300


def test_stat_truncated_is_proc_error() -> None:
    with pytest.raises(ProcError) as caught:
        procfs.parse_stat(9, b"9 (x) S 1 2 3\n")
    assert not isinstance(caught.value, ProcessGone)


def test_read_stat_without_procfs_object(proc_root: Path) -> None:
    """The reader table.py uses: no /proc/stat needed, the same answer as ProcFS.stat."""
    assert procfs.read_stat(100, str(proc_root)).start_time_ticks == 123456
    with pytest.raises(ProcessGone):
        procfs.read_stat(300, str(proc_root))


def test_same_process_is_pid_and_start_time(proc: ProcFS) -> None:
    stat = proc.stat(100)
    assert procfs.same_process(stat, 123456)
    assert not procfs.same_process(stat, 123457)  # the pid now names a later process


def test_btime_as_atop(proc: ProcFS) -> None:
    # (123456 ticks + 1_700_000_000 s * 100 ticks/s) // 100 ticks/s
    assert proc.btime(123456) == 1_700_001_234
    assert proc.btime(proc.stat(2).start_time_ticks) == 1_700_000_000


def test_socket_inodes(proc: ProcFS) -> None:
    assert proc.socket_inodes(100) == {123: 3, 4567890123: 17}


def test_socket_inodes_of_vanished_pid(proc: ProcFS) -> None:
    with pytest.raises(ProcessGone) as caught:
        proc.socket_inodes(300)
    assert caught.value.pid == 300


def test_socket_inodes_skips_fd_closed_during_scan(
    proc: ProcFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_readlink = os.readlink

    def readlink(path: str, *, dir_fd: int | None = None) -> str:
        if path == "3":
            raise FileNotFoundError(errno.ENOENT, "closed meanwhile", path)
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(procfs.os, "readlink", readlink)
    assert proc.socket_inodes(100) == {4567890123: 17}


def test_socket_inodes_access_denied(proc: ProcFS, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(procfs.os, "open", refuse)
    with pytest.raises(ProcAccessDenied) as caught:
        proc.socket_inodes(100)
    assert (caught.value.pid, caught.value.errno) == (100, errno.EACCES)
    assert caught.value.path == f"{proc.proc_root}/100/fd"


def test_eperm_is_access_denied_esrch_is_gone(
    proc: ProcFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stat_eperm(path: str) -> os.stat_result:
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(procfs.os, "stat", stat_eperm)
    with pytest.raises(ProcAccessDenied) as denied:
        proc.fd_count(100)
    assert denied.value.errno == errno.EPERM

    def stat_esrch(path: str) -> os.stat_result:
        raise ProcessLookupError(errno.ESRCH, "No such process", path)

    monkeypatch.setattr(procfs.os, "stat", stat_esrch)
    with pytest.raises(ProcessGone):
        proc.fd_count(100)


def test_fd_count_real_proc() -> None:
    # Linux >= 6.2: st_size of /proc/PID/fd counts open descriptors.
    real = ProcFS()
    before = real.fd_count(os.getpid())
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    try:
        assert real.fd_count(os.getpid()) == before + 3
    finally:
        for descriptor in extra:
            os.close(descriptor)


def test_fd_count_of_vanished_pid(proc: ProcFS) -> None:
    with pytest.raises(ProcessGone):
        proc.fd_count(300)


def test_thread_ids(proc: ProcFS) -> None:
    assert proc.thread_ids(100) == [100, 101, 102]


def test_tgid_of_thread(proc: ProcFS) -> None:
    assert proc.tgid_of(101) == 100
    assert proc.tgid_of(100) == 100
    with pytest.raises(ProcessGone):
        proc.tgid_of(300)


def test_uid_is_real_uid(proc: ProcFS) -> None:
    assert proc.uid(100) == 1000


def test_cmdline(proc: ProcFS) -> None:
    assert proc.cmdline(100) == "python3 -c print(1)"
    assert proc.cmdline(2) == ""
    with pytest.raises(ProcessGone):
        proc.cmdline(300)
