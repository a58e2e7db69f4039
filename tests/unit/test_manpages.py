"""Manual pages render without warnings and name every option the programs take."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = sorted(MAN.glob("*.[1-8]"))


def text_of(page: Path) -> str:
    """The page as groff renders it, hyphenation off so option names stay whole."""
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-rHY=0", "-P-cbou", str(page)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.replace("\u2010", "-").replace("\u2212", "-")


def options_in_help(argv: list[str]) -> set[str]:
    done = subprocess.run(
        argv + ["--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", done.stdout)) - {"--help"}


@pytest.fixture(scope="module", autouse=True)
def need_groff() -> None:
    if shutil.which("groff") is None:
        pytest.fail("groff is missing: scripts/setup installs groff-base")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_renders_without_warnings(page: Path) -> None:
    done = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.parametrize("section", ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"])
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_has_the_usual_sections(page: Path, section: str) -> None:
    assert re.search(rf"^\.SH \"?{section}\"?$", page.read_text(), re.M)


def test_daemon_page_covers_every_option() -> None:
    options = options_in_help([sys.executable, "-m", "netatopd.daemon"])
    assert len(options) > 20
    rendered = text_of(MAN / "netatopd.8")
    missing = sorted(o for o in options if o not in rendered)
    assert missing == []


def test_daemon_page_has_exit_status_and_overhead() -> None:
    text = (MAN / "netatopd.8").read_text()
    for section in ("OPTIONS", "FIELDS", "FILES", "EXIT STATUS", "OVERHEAD"):
        assert re.search(rf"^\.SH {section}$", text, re.M), section
    for counter in (
        "tcpsndpacks",
        "tcpsndbytes",
        "tcprcvpacks",
        "tcprcvbytes",
        "udpsndpacks",
        "udpsndbytes",
        "udprcvpacks",
        "udprcvbytes",
    ):
        assert counter in text


def test_netatop_page_covers_the_commands_own_options() -> None:
    options = options_in_help([sys.executable, "-m", "netatopd.cli"])
    assert "--version" in options
    rendered = text_of(MAN / "netatop.1")
    assert sorted(o for o in options if o not in rendered) == []
