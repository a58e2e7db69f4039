"""The proc connector against the kernel (root, initial pid and user namespace).

Ground truth: the processes this test starts (their pids from Popen, their
exit statuses, the number of exec calls each makes) and the monotonic clock
read around them.  The connector is global: events of every process on the
machine arrive, so each check filters on the pids started here.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netatopd.netlink.connector import ProcessEvent, ProcessEvents, ProcEventKind, exit_status

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="NOT RUN: needs root for the proc connector; a run that skips this is no pass",
    ),
]
WAIT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def events() -> Iterator[ProcessEvents]:
    if os.readlink("/proc/self/ns/pid") != "pid:[4026531836]":
        pytest.skip("PRIVILEGED TEST SKIPPED: the proc connector needs the initial pid namespace")
    reader = ProcessEvents()
    yield reader
    reader.close()


def collect(
    reader: ProcessEvents, done: Callable[[list[ProcessEvent]], bool], pids: set[int]
) -> list[ProcessEvent]:
    """Events of ``pids`` (by tgid) until ``done`` says enough, at most WAIT_S."""
    got: list[ProcessEvent] = []
    deadline = time.monotonic() + WAIT_S
    while not done(got) and time.monotonic() < deadline:
        select.select([reader.fileno()], [], [], 0.1)
        got.extend(e for e in reader.read() if e.tgid in pids)
    return got


def kinds_of(got: list[ProcessEvent], pid: int) -> list[ProcEventKind]:
    return [e.kind for e in got if e.tgid == pid]


def test_fork_exec_exit_of_a_shell_and_a_python_child(events: ProcessEvents) -> None:
    before_ns = time.monotonic_ns()
    shell = subprocess.Popen(["sh", "-c", "exec true"])
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.02); exit(3)"])
    assert shell.wait(timeout=WAIT_S) == 0
    assert python.wait(timeout=WAIT_S) == 3
    after_ns = time.monotonic_ns()
    pids = {shell.pid, python.pid}

    def both_exited(got: list[ProcessEvent]) -> bool:
        exited = {e.tgid for e in got if e.kind == ProcEventKind.EXIT and e.is_process}
        return exited == pids

    got = collect(events, both_exited, pids)
    # sh: fork, exec of sh, exec of true, exit; python: fork, one exec, exit (its
    # interpreter threads, if any, add FORK/EXIT of pid != tgid: leave them out).
    shell_main = [e.kind for e in got if e.tgid == shell.pid and e.is_process]
    assert shell_main == [
        ProcEventKind.FORK,
        ProcEventKind.EXEC,
        ProcEventKind.EXEC,
        ProcEventKind.EXIT,
    ]
    python_main = [e for e in got if e.tgid == python.pid and e.is_process]
    assert [e.kind for e in python_main if e.kind != ProcEventKind.COMM] == [
        ProcEventKind.FORK,
        ProcEventKind.EXEC,
        ProcEventKind.EXIT,
    ]
    for pid, status in ((shell.pid, 0), (python.pid, 3)):
        fork = next(e for e in got if e.tgid == pid and e.kind == ProcEventKind.FORK)
        assert (fork.pid, fork.parent_tgid) == (pid, os.getpid())
        end = next(e for e in got if e.tgid == pid and e.kind == ProcEventKind.EXIT)
        assert exit_status(end.exit_code) == status
        assert end.parent_tgid == os.getpid()
        stamps = [e.timestamp_ns for e in got if e.tgid == pid]
        assert stamps == sorted(stamps)
        assert before_ns <= stamps[0] and stamps[-1] <= after_ns
    assert events.lost_events == 0
    assert events.overflows == 0


def test_a_full_queue_is_reported_and_counted(events: ProcessEvents) -> None:
    """A tiny receive buffer, 300 processes, nothing read meanwhile: ENOBUFS and exact gaps.

    The loss is counted by the read that meets the overflow (every CPU is
    asked for an answer then), not only once later events arrive.
    """
    events.close()
    small = ProcessEvents(receive_buffer_bytes=4096)
    try:
        children = 300
        pids: set[int] = set()
        for _ in range(children):
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            os.waitpid(pid, 0)
            pids.add(pid)
        got: list[ProcessEvent] = []
        for _ in range(100):  # drain (bounded); a last EXIT may come after waitpid()
            batch = small.read()
            got.extend(e for e in batch if e.tgid in pids)
            if not batch and not select.select([small.fileno()], [], [], 0.05)[0]:
                break
        assert small.overflows >= 1
        assert small.take_resync()
        # Every event of ours that never arrived is among the events counted lost.
        missing = 3 * children - len(got)  # fork, exec, exit each
        assert missing > 0
        assert small.lost_events >= missing
    finally:
        small.close()


def test_only_the_initial_network_namespace_answers(make_netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Inside a test namespace: refused; with netns_path to ours: events arrive."""
    ns = make_netns("ntcn")
    script = tmp_path / "inside.py"
    script.write_text(
        textwrap.dedent(
            """
            import select, subprocess, sys, time
            sys.path.insert(0, sys.argv[2])
            from netatopd.netlink.connector import ProcessEvents, ProcEventKind
            from netatopd.netlink.socket import NetlinkError
            try:
                ProcessEvents().close()
                print("opened")
            except NetlinkError as err:
                print("refused", err.errno)
            with ProcessEvents(netns_path=sys.argv[1]) as events:
                child = subprocess.Popen(["true"])
                child.wait()
                deadline = time.monotonic() + 10
                seen = False
                while not seen and time.monotonic() < deadline:
                    select.select([events.fileno()], [], [], 0.1)
                    seen = any(
                        e.kind == ProcEventKind.EXIT and e.pid == child.pid for e in events.read()
                    )
                print("exit seen" if seen else "exit missed", child.pid)
            """
        )
    )
    output = ns.run(
        sys.executable, str(script), f"/proc/{os.getpid()}/ns/net", str(REPO_ROOT), timeout_s=60
    ).splitlines()
    assert output[0] == f"refused {errno.ECONNREFUSED}"
    assert output[1].startswith("exit seen ")
