"""Fixtures for tests that need root: network namespaces made and always removed."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_counter = itertools.count()


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("PRIVILEGED TEST SKIPPED: needs root (network namespaces, AF_PACKET)")
    if shutil.which("ip") is None:
        pytest.skip("PRIVILEGED TEST SKIPPED: the ip command (Debian package iproute2) is missing")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Netns:
    """A network namespace with loopback up; deleted by the fixture."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}{os.getpid()}x{next(_counter)}"
        ip("netns", "add", self.name)
        self.exec_prefix = ["ip", "netns", "exec", self.name]
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, timeout_s: float = 30) -> str:
        done = subprocess.run(
            [*self.exec_prefix, *argv],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return done.stdout

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


@pytest.fixture
def make_netns() -> Iterator:
    """A factory of namespaces; every namespace it made is deleted afterwards."""
    root_or_skip()
    made: list[Netns] = []

    def make(prefix: str = "ntpt") -> Netns:
        ns = Netns(prefix)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted in tmp_path (a 15 MB table does not fit); unmounted after."""
    root_or_skip()
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
