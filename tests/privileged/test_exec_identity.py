"""The eBPF helper's exec program on the real kernel (root): identity at exec.

Ground truth: what each program said about itself while it ran (its pid and
/proc/self/stat, read by bash's ``read`` builtin, so no other process is
involved), the argv the test gave it and the uid it was started with.  The
records ``KernelOwnership.exec_records`` returns must match exactly: start
time in /proc's clock ticks, command, uid, parent and the argument bytes
(the first ARGS_BYTES of a longer area, with the whole length).  Without
the kernel's BTF the program is not loaded and the helper says why.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd.ebpf import KernelOwnership, loaded_object_ids
from netatopd.ebpf import helper as helper_module
from netatopd.ebpf.execids import ARGS_BYTES, ExecRecord

pytestmark = pytest.mark.privileged

CHILD_UID = 65534
PROGRAMS = 20
WAIT_S = 5.0
FREE_WAIT_S = 5.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SCRIPT = 'read -r stat < /proc/self/stat; echo "$stat"'


@pytest.fixture
def helper() -> Iterator[KernelOwnership]:
    assert os.geteuid() == 0, "needs root"
    loaded = KernelOwnership.load()
    try:
        yield loaded
    finally:
        loaded.close()


def run_as_child(*argv: str) -> tuple[int, int]:
    """(pid, start ticks) of a bash program run with ``argv`` under CHILD_UID; it has
    exited when this returns."""
    done = subprocess.run(
        ["bash", "-c", SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        user=CHILD_UID,
        check=True,
    )
    stat = done.stdout.strip()
    pid = int(stat.split(" ", 1)[0])
    fields = stat.rsplit(")", 1)[1].split()
    return pid, int(fields[19])  # field 22: start time in clock ticks


def records_of(helper: KernelOwnership, pids: set[int]) -> dict[int, ExecRecord]:
    found: dict[int, ExecRecord] = {}
    deadline = time.monotonic() + WAIT_S
    while set(found) != pids and time.monotonic() < deadline:
        for record in helper.exec_records():
            if record.tgid in pids:
                found[record.tgid] = record
        time.sleep(0.01)
    return found


def test_each_exec_is_recorded_with_its_identity_exactly(helper: KernelOwnership) -> None:
    status = helper.status()
    assert status["ebpf_exec"] == "sched_process_exec", status
    assert status["ntp_exec_verified_insns"] > 0
    helper.exec_records()  # what came before
    truth: dict[int, tuple[int, list[str]]] = {}
    for index in range(PROGRAMS):
        # The last one's arguments are longer than what a record carries.
        argv = ["tag", f"life-{index}", "y" * (400 if index == PROGRAMS - 1 else index)]
        pid, ticks = run_as_child(*argv)
        truth[pid] = (ticks, argv)
    found = records_of(helper, set(truth))
    assert set(found) == set(truth)
    for pid, (ticks, argv) in truth.items():
        record = found[pid]
        area = b"\0".join(a.encode() for a in ["bash", "-c", SCRIPT, *argv]) + b"\0"
        assert record.start_boottime_ns * TICKS_PER_S // 10**9 == ticks, (pid, record)
        assert (record.comm, record.uid, record.ppid) == ("bash", CHILD_UID, os.getpid())
        assert record.args_len == len(area)
        assert record.args == area[:ARGS_BYTES]
    status = helper.status()
    assert status["ebpf_exec_events"] >= PROGRAMS
    assert status["ebpf_exec_lost"] == 0 and status["ebpf_exec_read_failed"] == 0


def test_without_btf_the_exec_program_is_not_loaded_and_says_why(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "needs root"
    loaded = KernelOwnership.load(btf_path=tmp_path / "vmlinux")  # calibrated socket offsets
    try:
        status = loaded.status()
        assert status["ebpf_offsets"] == "calibrated"
        assert str(status["ebpf_exec"]).startswith("no BTF for task offsets (cannot read ")
        assert not loaded.takes_exec
        run_as_child("tag")
        assert loaded.exec_records() == []
        prog_ids, map_ids = loaded.object_ids()
        assert len(prog_ids) == 3 and len(map_ids) == 5
    finally:
        loaded.close()


def test_the_exec_program_and_ring_go_with_the_helper(helper: KernelOwnership) -> None:
    prog_ids, map_ids = helper.object_ids()
    assert len(prog_ids) == 4 and len(map_ids) == 6  # ntp_exec, ntp_exec_ring
    helper.close()
    deadline = time.monotonic() + FREE_WAIT_S
    while True:
        progs, maps = loaded_object_ids()
        left = (set(prog_ids) & set(progs)) | (set(map_ids) & set(maps))
        if not left:
            break
        assert time.monotonic() < deadline, f"still loaded: {sorted(left)}"
        time.sleep(0.02)
    assert helper_module.EXEC_PROGRAM.name == "ntp_exec"
