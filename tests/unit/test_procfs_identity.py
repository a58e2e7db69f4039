"""procfs.read_identity against a fake proc tree under tmp_path, and our own processes (no root).

Ground truth: the files the fixture writes (layouts of proc_pid_stat(5),
proc_pid_status(5), proc_pid_cmdline(5), cgroups(7) for /proc/PID/cgroup);
for the real /proc, what this process and a child it started are.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netatopd import procfs
from netatopd.procfs import (
    CMDLINE_MAX_BYTES,
    CMDLINE_TRUNCATION_MARKER,
    Identity,
    ProcAccessDenied,
    ProcError,
    ProcessGone,
    format_cmdline,
    parse_cgroup_v2,
    read_identity,
)

HYBRID_CGROUP = (
    "12:pids:/system.slice/nginx.service\n"
    "4:memory:/system.slice/nginx.service\n"
    "1:name=systemd:/system.slice/nginx.service\n"
    "0::/system.slice/nginx.service\n"
)


def stat_line(pid: int, comm: str, ppid: int, start_ticks: int) -> str:
    # fields 3..22 of proc_pid_stat(5), then a few more
    after_comm = ["S", str(ppid), "100", "100", "0", "-1", "4194560", "10", "0", "0", "0"]
    after_comm += ["5", "3", "0", "0", "20", "0", "1", "0", str(start_ticks)]
    after_comm += ["1000000", "250", "18446744073709551615"]
    return f"{pid} ({comm}) " + " ".join(after_comm) + "\n"


def status_text(pid: int, uid: int, name: str = "worker") -> str:
    return (
        f"Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\n"
        f"Pid:\t{pid}\nPPid:\t1\nTracerPid:\t0\n"
        f"Uid:\t{uid}\t{uid + 1}\t{uid + 2}\t{uid + 3}\nGid:\t0\t0\t0\t0\n"
        + "Groups:\t"
        + " ".join(str(g) for g in range(400))
        + "\n"  # pushes the tail past 1 KiB
        + "VmPeak:\t   10000 kB\n"
    )


def make_process(
    root: Path,
    pid: int,
    *,
    comm: str = "python3",
    ppid: int = 1,
    start_ticks: int = 123456,
    cmdline: bytes = b"python3\0-m\0http.server\0",
    uid: int = 1000,
    cgroup: str = HYBRID_CGROUP,
) -> Path:
    directory = root / str(pid)
    directory.mkdir()
    (directory / "stat").write_text(stat_line(pid, comm, ppid, start_ticks))
    (directory / "cmdline").write_bytes(cmdline)
    (directory / "status").write_text(status_text(pid, uid))
    (directory / "cgroup").write_text(cgroup)
    return directory


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    return root


def test_identity_from_the_four_files(proc_root: Path) -> None:
    make_process(proc_root, 4321, comm="a) b (c", ppid=77)
    assert read_identity(4321, str(proc_root)) == Identity(
        pid=4321,
        ppid=77,
        start_time_ticks=123456,
        comm="a) b (c",
        cmdline="python3 -m http.server",
        uid=1000,  # the real uid: first of the four
        cgroup="/system.slice/nginx.service",
    )


def test_kernel_thread_and_zombie_have_no_command_line(proc_root: Path) -> None:
    make_process(proc_root, 2, comm="kthreadd", ppid=0, cmdline=b"", uid=0, cgroup="0::/\n")
    identity = read_identity(2, str(proc_root))
    assert (identity.cmdline, identity.comm, identity.uid, identity.cgroup) == (
        "",
        "kthreadd",
        0,
        "/",
    )


def test_cgroup_v1_only_gives_no_path(proc_root: Path) -> None:
    make_process(proc_root, 10, cgroup="4:memory:/user.slice\n1:name=systemd:/user.slice\n")
    assert read_identity(10, str(proc_root)).cgroup == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"0::/\n", "/"),
        (HYBRID_CGROUP.encode(), "/system.slice/nginx.service"),
        (
            b"0::/user.slice/user-1000.slice/session-3.scope\n",
            "/user.slice/user-1000.slice/session-3.scope",
        ),
        (b"0::/a b/c\xffd\n", "/a b/c\ufffdd"),
        (b"", ""),
        (b"10:cpu:/\n", ""),
    ],
)
def test_parse_cgroup_v2(content: bytes, expected: str) -> None:
    assert parse_cgroup_v2(content) == expected


def test_long_command_line_is_cut_with_a_marker(proc_root: Path) -> None:
    argument = b"x" * 5000
    make_process(proc_root, 11, cmdline=b"prog\0" + argument + b"\0")
    cmdline = read_identity(11, str(proc_root)).cmdline
    assert cmdline.endswith(CMDLINE_TRUNCATION_MARKER)
    body = cmdline[: -len(CMDLINE_TRUNCATION_MARKER)]
    assert len(body.encode()) == CMDLINE_MAX_BYTES
    assert body == "prog " + "x" * (CMDLINE_MAX_BYTES - 5)


def test_command_line_of_exactly_the_limit_is_whole(proc_root: Path) -> None:
    raw = b"p" * CMDLINE_MAX_BYTES
    make_process(proc_root, 12, cmdline=raw)
    assert read_identity(12, str(proc_root)).cmdline == "p" * CMDLINE_MAX_BYTES


def test_cut_never_splits_a_character() -> None:
    raw = b"a" * 9 + "é".encode() + b"bbbb"  # é is bytes 9 and 10
    assert format_cmdline(raw, max_bytes=10) == "a" * 9 + CMDLINE_TRUNCATION_MARKER
    assert format_cmdline(raw, max_bytes=11) == "a" * 9 + "é" + CMDLINE_TRUNCATION_MARKER
    assert format_cmdline(b"a\0b\0\0", max_bytes=10) == "a b"
    assert format_cmdline(b"bad\xff\0arg") == "bad\ufffd arg"


def test_vanished_pid_is_process_gone(proc_root: Path) -> None:
    with pytest.raises(ProcessGone) as caught:
        read_identity(999, str(proc_root))
    assert caught.value.pid == 999
    (proc_root / "300").mkdir()  # listed, its files already gone
    with pytest.raises(ProcessGone):
        read_identity(300, str(proc_root))


def test_empty_stat_is_process_gone(proc_root: Path) -> None:
    directory = make_process(proc_root, 13)
    (directory / "stat").write_text("")
    with pytest.raises(ProcessGone):
        read_identity(13, str(proc_root))


def test_status_without_uid_is_proc_error(proc_root: Path) -> None:
    directory = make_process(proc_root, 14)
    (directory / "status").write_text("Name:\tx\nPid:\t14\n")
    with pytest.raises(ProcError) as caught:
        read_identity(14, str(proc_root))
    assert not isinstance(caught.value, (ProcessGone, ProcAccessDenied))


def test_permission_denied_is_its_own_error(
    proc_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_process(proc_root, 15)
    real_open = os.open

    def refusing_open(
        path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        if path == "cmdline":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(procfs.os, "open", refusing_open)
    with pytest.raises(ProcAccessDenied) as caught:
        read_identity(15, str(proc_root))
    assert (caught.value.pid, caught.value.errno) == (15, errno.EACCES)
    assert caught.value.path.endswith("/15/cmdline")


# --- the real /proc ----------------------------------------------------------------


def test_own_identity_matches_the_other_readers() -> None:
    pid = os.getpid()
    identity = read_identity(pid)
    stat = procfs.read_stat(pid)
    assert (identity.pid, identity.ppid, identity.start_time_ticks, identity.comm) == (
        pid,
        os.getppid(),
        stat.start_time_ticks,
        stat.comm,
    )
    assert identity.uid == os.getuid()
    with open("/proc/self/cmdline", "rb") as file:
        assert identity.cmdline == format_cmdline(file.read())
    with open("/proc/self/cgroup", "rb") as file:
        assert identity.cgroup == parse_cgroup_v2(file.read())


def test_a_zombie_answers_and_a_reaped_one_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while procfs.read_stat(child.pid).state != "Z" and time.monotonic() < deadline:
        time.sleep(0.005)  # not reaped yet: stays a zombie
    identity = read_identity(child.pid)
    assert identity.cmdline == ""
    assert identity.ppid == os.getpid()
    assert child.wait(timeout=10) == 0
    with pytest.raises(ProcessGone):
        read_identity(child.pid)


def test_a_running_child_with_arguments() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "first arg", "ünï"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        identity = read_identity(child.pid)
        while identity.cmdline.startswith(sys.executable) is False and time.monotonic() < deadline:
            time.sleep(0.005)  # still between fork and exec
            identity = read_identity(child.pid)
        assert identity.cmdline == f"{sys.executable} -c import sys; sys.stdin.read() first arg ünï"
        assert identity.start_time_ticks == procfs.read_stat(child.pid).start_time_ticks
    finally:
        assert child.communicate(timeout=10) == (None, None)
