"""The README's atop section (issue 15 item 9), sentence by sentence where a test can hold it.

Ground truth: defaults.py, the Debian package lists of this machine (apt-cache), the README
text.  The namespace sentence is held by tests/privileged/test_cli_answers.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netatopd.defaults import ATOP_SOCKET_DEFAULT

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    return " ".join(README[start : README.index("\n## ", start + 1)].split())


def test_the_atop_socket_default_is_the_path_atop_reads() -> None:
    text = section("atop")
    assert ATOP_SOCKET_DEFAULT == "/run/netatop-bpf-socket"
    assert f"it connects to `{ATOP_SOCKET_DEFAULT}`" in text
    assert "the default of `--atop-socket`" in text


def _debian_release() -> str:
    try:
        fields = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return ""
    return fields.get("ID", "") + " " + fields.get("VERSION_ID", "").strip('"')


@pytest.mark.skipif(
    _debian_release() != "debian 12" or shutil.which("apt-cache") is None,
    reason="the claim is about Debian 12's package; this is not Debian 12",
)
def test_debian_12_ships_atop_2_8_1() -> None:
    assert "Debian 12 ships atop 2.8.1" in section("atop")
    done = subprocess.run(
        ["apt-cache", "policy", "atop"], capture_output=True, text=True, timeout=60, check=True
    )
    candidate = next(
        line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if "Candidate:" in line
    )
    assert candidate.startswith("2.8.1-"), done.stdout
