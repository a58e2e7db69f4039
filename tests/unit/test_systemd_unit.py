"""The systemd unit's opening comment names both programs and how to install each
(issue 15 item 9). Ground truth: the console scripts pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_unit_comment_names_both_programs_and_installs_each() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"netatopd", "netatop"}
    comment = " ".join(
        line.lstrip("# ").strip()
        for line in (REPO / "systemd" / "netatopd.service").read_text().splitlines()
        if line.startswith("#") and not line.startswith("#   CAP")
    )
    assert "netatopd, the daemon this unit runs, counts; netatop, the command, asks it" in comment
    for program in scripts:
        assert re.search(
            rf"ln -s /opt/netatop/\.venv/bin/{program} /usr/local/s?bin/{program}\b", comment
        ), program
    exec_start = re.search(
        r"^ExecStart=(\S+)", (REPO / "systemd" / "netatopd.service").read_text(), re.M
    )
    assert exec_start is not None and exec_start.group(1) == "/usr/local/sbin/netatopd"
