"""Start-up failures are one sentence a person can act on, and an exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness import REPO

pytestmark = pytest.mark.privileged


def run_daemon(prefix: list[str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "netatopd.daemon", *options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_without_privileges_the_daemon_names_the_capabilities(make_netns: Any) -> None:
    ns = make_netns("ntps")
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(
            scratch, 0o1777
        )  # like /tmp: nobody may make its run directory; only capture fails
        done = run_daemon(
            [*ns.exec_prefix, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
            "--run-dir",
            f"{scratch}/run",
            "--no-history",
            "--no-atop-socket",
            "--ownership",
            "proc",
        )
    assert done.returncode == 4, done.stderr
    assert "CAP_NET_RAW" in done.stderr and "CAP_NET_ADMIN" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_daemon_on_the_same_run_directory_is_refused(
    make_netns: Any, tmp_path: Path
) -> None:
    ns = make_netns("ntps")
    first = subprocess.Popen(
        [
            *ns.exec_prefix,
            sys.executable,
            "-m",
            "netatopd.daemon",
            "--run-dir",
            str(tmp_path / "run"),
            "--no-history",
            "--no-atop-socket",
            "--ownership",
            "proc",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        control = tmp_path / "run" / "control"
        for _ in range(400):
            if control.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        done = run_daemon(
            ns.exec_prefix,
            "--run-dir",
            str(tmp_path / "run"),
            "--no-history",
            "--no-atop-socket",
            "--ownership",
            "proc",
        )
        assert done.returncode == 5, done.stderr
        assert f"another netatopd (pid {first.pid})" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert first.poll() is None  # the first daemon is untouched
    finally:
        first.terminate()
        assert first.wait(timeout=20) == 0
    assert not (tmp_path / "run" / "control").exists()  # removed on a clean stop
    assert os.path.isdir(tmp_path / "run")
