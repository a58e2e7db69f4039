"""The daemon in its run and database directories under attack and fault (issue 13).

Items 3 (a refused second daemon must not touch the first one's files), 4 (an
attacker's run or database directory and its planted symlinks), 10 (SIGTERM
right after SIGHUP), 11 (a full run-directory filesystem), 12 (an unwritable
run directory), and least privilege: the mode of every file the daemon makes,
and who can read the table and use the control socket with --table-group and
--control-group.  Ground truth: the files on disk (lstat), the bytes of a
victim file, the exit status and the daemon's stderr.
"""

from __future__ import annotations

import grp
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netatopd.client import ControlClient, DaemonNotRunning
from netatopd.table import open_table

from conftest import root_or_skip
from harness import REPO

pytestmark = pytest.mark.privileged

NOBODY = 65534
START_TIMEOUT_S = 20.0
QUICK = ("--no-history", "--no-atop-socket", "--ownership", "proc")


def daemon_argv(prefix: list[str], run_dir: Path, *options: str) -> list[str]:
    return [*prefix, sys.executable, "-m", "netatopd.daemon", "--run-dir", str(run_dir), *options]


def start(prefix: list[str], run_dir: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        daemon_argv(prefix, run_dir, *options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_serving(proc: subprocess.Popen[str], run_dir: Path) -> None:
    """Until the daemon answers PROBE on its control socket (AssertionError if it exits)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"netatopd exited with {proc.returncode}: {err}")
        try:
            with ControlClient(str(run_dir), timeout_s=5) as client:
                client.probe()
            return
        except (DaemonNotRunning, OSError):
            if time.monotonic() > deadline:
                raise AssertionError("netatopd did not answer in time") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def run_to_exit(argv: list[str], timeout_s: float = 30.0) -> tuple[int | None, str]:
    """Exit status and stderr; None when it was still running after timeout_s (killed)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        return None, err


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A root-owned 0755 directory in /tmp that every user can reach (tmp_path is 0700)."""
    root_or_skip()
    path = Path(tempfile.mkdtemp(prefix="netatop-rd-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- item 3: one run directory, one daemon ------------------------------------------------


def test_five_simultaneous_starts_leave_one_daemon_with_its_table(
    make_netns: Any, tmp_path: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    procs = [start(ns.exec_prefix, run_dir, *QUICK) for _ in range(5)]
    try:
        deadline = time.monotonic() + 60
        while sum(p.poll() is None for p in procs) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        running = [p for p in procs if p.poll() is None]
        assert len(running) == 1, [p.returncode for p in procs]
        survivor = running[0]
        wait_serving(survivor, run_dir)
        time.sleep(1.0)  # a loser that would remove files has had its time
        with open_table(str(run_dir)) as reader:
            snapshot = reader.snapshot(max_age_s=5)
            assert snapshot.daemon_pid == survivor.pid
        for loser in procs:
            if loser is survivor:
                continue
            code, err = stop(loser)
            assert code == 5, err
            assert f"another netatopd (pid {survivor.pid})" in err, err
            assert "Traceback" not in err
        assert (run_dir / "control").exists()
        with ControlClient(str(run_dir), timeout_s=5) as client:
            assert client.status()["version"]
        assert sorted(os.listdir(run_dir)) == ["control", "lock", "table"]
        assert (run_dir / "lock").read_text().strip() == str(survivor.pid)
    finally:
        for proc in procs:
            stop(proc)
    assert survivor.returncode == 0
    assert sorted(os.listdir(run_dir)) == ["lock"]  # table and socket removed on stop


# -- item 4: another user's directories ----------------------------------------------------


def test_an_attackers_run_directory_is_refused_and_the_victim_untouched(
    make_netns: Any, open_tmp: Path
) -> None:
    ns = make_netns("ntrd")
    victim = open_tmp / "victim"
    victim.write_bytes(b"root's secret\n" * 100)
    os.chmod(victim, 0o600)
    before = (hashlib.sha256(victim.read_bytes()).hexdigest(), os.stat(victim))
    attack = open_tmp / "attack"
    attack.mkdir()
    os.chmod(attack, 0o777)
    os.chown(attack, NOBODY, NOBODY)
    # The daemon keeps the pid of the shell that plants the symlink (exec, ip netns exec
    # execs too): the symlink is named for exactly that pid, as the attacker guessed it.
    script = (
        f"ln -s {victim} {attack}/.table.$$.new && chown -h {NOBODY}:{NOBODY} "
        f"{attack}/.table.$$.new && exec " + " ".join(daemon_argv(ns.exec_prefix, attack, *QUICK))
    )
    code, err = run_to_exit(["sh", "-c", script])
    assert code == 5, err
    assert "--run-dir" in err and str(attack) in err, err
    assert "Traceback" not in err
    after = os.stat(victim)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == before[0]
    assert (after.st_size, stat.S_IMODE(after.st_mode)) == (before[1].st_size, 0o600)
    names = os.listdir(attack)
    assert len(names) == 1 and names[0].startswith(".table."), names  # only the planted link


def test_a_database_directory_of_another_user_is_refused(
    make_netns: Any, open_tmp: Path, tmp_path: Path
) -> None:
    ns = make_netns("ntrd")
    db_dir = open_tmp / "db"
    db_dir.mkdir()
    os.chmod(db_dir, 0o777)
    code, err = run_to_exit(
        daemon_argv(
            ns.exec_prefix,
            tmp_path / "run",
            "--db",
            str(db_dir / "netatop.db"),
            "--no-atop-socket",
            "--ownership",
            "proc",
        )
    )
    assert code == 5, err
    assert "--db" in err and "writable by others" in err, err
    assert "Traceback" not in err
    assert os.listdir(db_dir) == []
    assert not (tmp_path / "run").exists()  # made by the daemon that did not start: gone


# -- item 10: signals ----------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_right_after_sighup_stops_the_daemon(
    make_netns: Any, tmp_path: Path, attempt: int
) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    proc = start(ns.exec_prefix, run_dir, *QUICK)
    try:
        wait_serving(proc, run_dir)
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM right after SIGHUP was lost: the daemon kept running")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "SIGTERM: stopping" in err or proc.returncode == 0


def test_a_storm_of_sighups_then_sigint_stops_the_daemon(make_netns: Any, tmp_path: Path) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    proc = start(ns.exec_prefix, run_dir, *QUICK, "--log-level", "info")
    try:
        wait_serving(proc, run_dir)
        for _ in range(50):
            proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGINT after 50 SIGHUPs was lost: the daemon kept running")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "SIGINT: stopping" in err
    assert sorted(os.listdir(run_dir)) == ["lock"]


def test_signals_during_the_start_stop_it_cleanly(make_netns: Any, tmp_path: Path) -> None:
    """SIGHUP and SIGTERM as soon as the lock names the daemon (its handlers are in
    place by then), while it still loads the capture and the eBPF helper."""
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    proc = start(ns.exec_prefix, run_dir, "--no-history", "--no-atop-socket")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        lock = run_dir / "lock"
        while time.monotonic() < deadline and proc.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(proc.pid):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("a SIGTERM during the start was lost")
    finally:
        code, err = stop(proc)
    assert code == 0, err  # not killed by SIGHUP (-1) nor SIGTERM (-15)
    assert "Traceback" not in err
    assert os.listdir(run_dir) == ["lock"]


# -- items 11 and 12: a full and an unwritable run directory ------------------------------


def test_a_full_run_directory_filesystem_is_a_clean_exit_5(
    make_netns: Any, small_tmpfs: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = small_tmpfs / "run"
    code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK), timeout_s=30)
    assert code == 5, err
    assert "no room for" in err and str(run_dir) in err, err
    assert "Traceback" not in err
    assert not run_dir.exists()  # no table, no temporary file, no socket, no lock, no directory


def test_an_unwritable_run_directory_is_exit_5_with_a_sentence(
    make_netns: Any, small_tmpfs: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = small_tmpfs / "run"
    run_dir.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-o", "remount,ro", str(small_tmpfs)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK), timeout_s=30)
    assert code == 5, err
    assert "--run-dir" in err and "not writable" in err, err
    assert "Traceback" not in err


# -- least privilege -----------------------------------------------------------------------


def modes(directory: Path) -> dict[str, tuple[int, int]]:
    """name -> (permission bits, gid) of every entry."""
    result = {}
    for name in os.listdir(directory):
        st = os.lstat(directory / name)
        result[name] = (stat.S_IMODE(st.st_mode), st.st_gid)
    return result


def test_every_file_the_daemon_creates_is_root_only(make_netns: Any, open_tmp: Path) -> None:
    ns = make_netns("ntrd")
    run_dir = open_tmp / "run"
    db_dir = open_tmp / "db"
    atop_dir = open_tmp / "atop"
    proc = start(
        ns.exec_prefix,
        run_dir,
        "--db",
        str(db_dir / "netatop.db"),
        "--atop-socket",
        str(atop_dir / "netatop-bpf-socket"),
        "--flush-interval-s",
        "0.1",
        "--ownership",
        "proc",
    )
    try:
        wait_serving(proc, run_dir)
        deadline = time.monotonic() + 10
        while not (db_dir / "netatop.db-shm").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert modes(run_dir) == {
            "control": (0o600, 0),
            "lock": (0o600, 0),
            "table": (0o600, 0),
        }
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755
        assert modes(db_dir) == {
            "netatop.db": (0o600, 0),
            "netatop.db-wal": (0o600, 0),
            "netatop.db-shm": (0o600, 0),
        }
        assert stat.S_IMODE(os.stat(db_dir).st_mode) == 0o750
        assert modes(atop_dir) == {"netatop-bpf-socket": (0o600, 0)}
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert os.listdir(run_dir) == ["lock"]
    assert os.listdir(atop_dir) == []
    assert stat.S_IMODE(os.stat(db_dir / "netatop.db").st_mode) == 0o600


# A reader as nobody with the given supplementary groups: reads the table and asks the
# control socket for STATUS; prints what worked.
READER = """
import os, sys
from netatopd.client import ControlClient
from netatopd.table import open_table

run_dir, groups = sys.argv[1], [int(g) for g in sys.argv[2].split(",") if g]
os.setgroups(groups)
os.setgid(65534)
os.setuid(65534)
for what, attempt in (
    ("table", lambda: open_table(run_dir).snapshot()),
    ("control", lambda: ControlClient(run_dir, timeout_s=5).status()),
):
    try:
        attempt()
        print(what, "read")
    except Exception as err:
        refused = "Permission denied" in str(err) or getattr(err, "errno", 0) == 13
        print(what, "refused" if refused else repr(err))
"""


def read_as_nobody(run_dir: Path, groups: list[int]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(run_dir), ",".join(map(str, groups))],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def temporary_group() -> Iterator[tuple[str, int]]:
    root_or_skip()
    name = f"ntrd{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)


def test_without_groups_only_root_reads_the_table_and_the_control_socket(
    make_netns: Any, open_tmp: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = open_tmp / "run"
    proc = start(ns.exec_prefix, run_dir, *QUICK)
    try:
        wait_serving(proc, run_dir)
        assert read_as_nobody(run_dir, []) == ["table refused", "control refused"]
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_table_group_and_control_group_share_with_that_group_only(
    make_netns: Any, open_tmp: Path, temporary_group: tuple[str, int]
) -> None:
    name, gid = temporary_group
    ns = make_netns("ntrd")
    run_dir = open_tmp / "run"
    proc = start(ns.exec_prefix, run_dir, *QUICK, "--table-group", name, "--control-group", name)
    try:
        wait_serving(proc, run_dir)
        assert modes(run_dir) == {
            "control": (0o660, gid),
            "lock": (0o600, 0),
            "table": (0o640, gid),
        }
        assert read_as_nobody(run_dir, [gid]) == ["table read", "control read"]
        assert read_as_nobody(run_dir, []) == ["table refused", "control refused"]
    finally:
        code, err = stop(proc)
    assert code == 0, err


# -- --check tells the same -----------------------------------------------------------------


def test_check_names_an_unsafe_run_directory_and_a_running_daemon(
    make_netns: Any, open_tmp: Path, tmp_path: Path
) -> None:
    ns = make_netns("ntrd")
    attack = open_tmp / "attack"
    attack.mkdir()
    os.chmod(attack, 0o777)
    code, out = run_check(ns.exec_prefix, attack)
    assert code == 5, out
    assert "--run-dir: the run directory" in out and "writable by others" in out, out
    assert os.listdir(attack) == []  # --check makes nothing
    run_dir = tmp_path / "run"
    proc = start(ns.exec_prefix, run_dir, *QUICK)
    try:
        wait_serving(proc, run_dir)
        code, out = run_check(ns.exec_prefix, run_dir)
        assert code == 5, out
        assert f"another netatopd (pid {proc.pid}) holds {run_dir}" in out, out
    finally:
        stop(proc)
    code, out = run_check(ns.exec_prefix, run_dir)
    assert code == 0, out
    assert f"run directory {run_dir} is safe" in out, out


def run_check(prefix: list[str], run_dir: Path) -> tuple[int, str]:
    done = subprocess.run(
        [*daemon_argv(prefix, run_dir, *QUICK), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return done.returncode, done.stdout + done.stderr


# -- issue 15 item 6: a daemon that does not start leaves no run directory behind ----------

NO_SUCH_INTERFACE = ("--interface", "ntpnosuch0")


def test_a_failed_start_removes_the_run_directory_it_made(make_netns: Any, tmp_path: Path) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "made" / "run"  # neither exists: both are the daemon's
    code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK, *NO_SUCH_INTERFACE))
    assert code == 1, err
    assert "ntpnosuch0" in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


def test_a_failed_start_leaves_an_existing_run_directory_as_it_was(
    make_netns: Any, tmp_path: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    (run_dir / "notes").write_text("the administrator's\n")
    before = {name: os.lstat(run_dir / name) for name in os.listdir(run_dir)}
    code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK, *NO_SUCH_INTERFACE))
    assert code == 1, err
    assert sorted(os.listdir(run_dir)) == ["notes"]  # no lock file left: it made that one
    after = os.lstat(run_dir / "notes")
    assert (after.st_ino, after.st_mtime_ns) == (
        before["notes"].st_ino,
        before["notes"].st_mtime_ns,
    )
    # An old lock file (a daemon that ran before) stays, the very same file.
    (run_dir / "lock").write_text("12345\n")
    os.chmod(run_dir / "lock", 0o600)
    old_lock = os.lstat(run_dir / "lock")
    code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK, *NO_SUCH_INTERFACE))
    assert code == 1, err
    assert sorted(os.listdir(run_dir)) == ["lock", "notes"]
    assert os.lstat(run_dir / "lock").st_ino == old_lock.st_ino


def test_a_refused_second_daemon_removes_nothing_of_the_running_one(
    make_netns: Any, tmp_path: Path
) -> None:
    ns = make_netns("ntrd")
    run_dir = tmp_path / "run"
    first = start(ns.exec_prefix, run_dir, *QUICK)
    try:
        wait_serving(first, run_dir)
        before = {name: os.lstat(run_dir / name).st_ino for name in os.listdir(run_dir)}
        assert sorted(before) == ["control", "lock", "table"]
        code, err = run_to_exit(daemon_argv(ns.exec_prefix, run_dir, *QUICK))
        assert code == 5, err
        assert f"another netatopd (pid {first.pid})" in err, err
        assert {name: os.lstat(run_dir / name).st_ino for name in os.listdir(run_dir)} == before
        assert (run_dir / "lock").read_text().strip() == str(first.pid)
        with ControlClient(str(run_dir), timeout_s=5) as client:
            assert client.status()["version"]
    finally:
        code, err = stop(first)
    assert code == 0, err
    assert sorted(os.listdir(run_dir)) == ["lock"]  # a daemon that ran keeps its run directory
