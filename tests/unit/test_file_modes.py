"""Modes and ownership of the files the daemon's stages make, without the daemon.

The control and atop sockets bound through a checked directory (rundir), with
and without a group; the history database and its -wal and -shm files.
Ground truth: lstat of each file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from netatopd import history
from netatopd.exitlist import ExitJournal
from netatopd.rundir import SafeDirectory, open_directory
from netatopd.server import AtopServer, ControlServer


class Backend:
    def atop_tasks(self) -> list[object]:
        return []


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[SafeDirectory]:
    with open_directory(str(tmp_path / "run")) as directory:
        yield directory


def mode_and_group(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_gid


def a_group() -> int:
    return 65534 if os.geteuid() == 0 else os.getgid()


def test_the_control_socket_is_bound_through_the_directory(run_dir: SafeDirectory) -> None:
    path = Path(run_dir.join("control"))
    server = ControlServer(str(path), Backend(), directory=run_dir)  # type: ignore[arg-type]
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode_and_group(path) == (0o600, os.getegid())
    finally:
        server.close()
    assert not path.exists()


def test_a_control_group_gets_read_and_write(run_dir: SafeDirectory) -> None:
    gid = a_group()
    path = Path(run_dir.join("control"))
    server = ControlServer(str(path), Backend(), directory=run_dir, group=gid)  # type: ignore[arg-type]
    try:
        assert mode_and_group(path) == (0o660, gid)
    finally:
        server.close()


def test_the_atop_socket_with_a_group_through_the_directory(run_dir: SafeDirectory) -> None:
    gid = a_group()
    path = Path(run_dir.join("atop"))
    server = AtopServer(str(path), Backend(), ExitJournal(), group=str(gid), directory=run_dir)  # type: ignore[arg-type]
    try:
        assert mode_and_group(path) == (0o660, gid)
    finally:
        server.close()
    assert not path.exists()


def test_close_leaves_a_socket_that_is_not_its_own(run_dir: SafeDirectory) -> None:
    path = Path(run_dir.join("control"))
    server = ControlServer(str(path), Backend(), directory=run_dir)  # type: ignore[arg-type]
    os.rename(path, Path(run_dir.path) / "moved")
    path.write_bytes(b"another file under the name")
    server.close()
    assert path.read_bytes() == b"another file under the name"


def test_close_without_a_directory_leaves_a_file_that_is_not_its_own(tmp_path: Path) -> None:
    path = tmp_path / "control"
    server = ControlServer(str(path), Backend())  # type: ignore[arg-type]
    path.unlink()
    path.write_bytes(b"a newer daemon's")
    server.close()
    assert path.exists()


def test_a_new_database_and_its_wal_and_shm_are_root_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # what root usually has: files 0644 unless told
    try:
        path = tmp_path / "netatop.db"
        conn = history.open_db(str(path))
        try:
            conn.execute("CREATE TEMP TABLE probe(x)")
            conn.execute("PRAGMA wal_checkpoint").fetchall()
            names = sorted(os.listdir(tmp_path))
            assert names == ["netatop.db", "netatop.db-shm", "netatop.db-wal"]
            for name in names:
                assert mode_and_group(tmp_path / name)[0] == 0o600, name
        finally:
            conn.close()
    finally:
        os.umask(old_umask)


def test_an_existing_database_readable_by_everyone_loses_others_access(tmp_path: Path) -> None:
    path = tmp_path / "netatop.db"
    history.open_db(str(path)).close()
    os.chmod(path, 0o644)
    history.open_db(str(path)).close()
    assert mode_and_group(path)[0] == 0o640  # the group's access is the admin's choice
