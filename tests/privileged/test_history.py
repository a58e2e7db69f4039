"""End to end: the SQLite history (issue 4) written by the real daemon.

Every test makes its own network namespace, starts netatopd inside it with
``--db`` on a file of the test's own, and makes processes finish: children
forked by the actors ``udp_short_lived`` and ``udp_burst``
(tests/privileged/actors.py) exchange UDP datagrams over the namespace's
loopback with a ``udp_server`` actor and exit.

Ground truth: each child reports its own pid, btime (atop's formula from
/proc/self/stat and /proc/stat), comm, command line and uid, read from /proc
while it lived, and what it sent.  A datagram of s payload bytes costs
s + 20 (IPv4) + 8 (UDP) + 14 (link header) + 4 (CRC) = s + 46 bytes on the
wire, so a child that sent k datagrams of s bytes and got k replies of r
bytes must have, in the ``exited`` table, exactly udpsndpacks = k,
udpsndbytes = k x (s + 46), udprcvpacks = k, udprcvbytes = k x (r + 46) and
zero TCP counters.

The database is read with a separate apsw connection (read-only), never with
the code under test; ``netatop exited --db`` is compared with it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from netatopd.protocol import COUNTER_NAMES

import harness
from harness import (
    REPO,
    UDP4_OVERHEAD,
    WAIT_S,
    Actor,
    Daemon,
    TimedLines,
    read_only,
    wait_until,
)

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpE"
FAST = ("--gc-interval-s", "0.5", "--flush-interval-s", "0.2")
CHILD_NAME = "ntpEhist"  # + index: each child's comm (at most 15 characters)
CHILD_UID = 65534  # the children switch to nobody: the row's uid must be theirs, not root's
REQUEST_BYTES = 120
REPLY_BYTES = 333
EXITED_COLUMNS = (
    "tgid",
    "btime",
    "command",
    "cmdline",
    "uid",
    "first_activity",
    "last_activity",
    "exit_time",
    *COUNTER_NAMES,
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns(NETNS_PREFIX)


class Started(harness.Started):
    def __init__(self, ns: Any, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.ns = ns

    def __call__(self, db: Path | None, *options: str) -> Daemon:
        """netatopd with a fresh run directory; --db db unless None (the harness default)."""
        extra = ("--db", str(db)) if db is not None else ()
        return self.start(self.ns, *extra, *options)


@pytest.fixture
def daemons(ns: Any, tmp_path: Path) -> Iterator[Started]:
    started = Started(ns, tmp_path)
    try:
        yield started
    finally:
        problems = started.stop_all()
    assert not problems, problems


# --------------------------------------------------------------------------- helpers


def expected_udp(datagrams: int, request: int, reply: int) -> dict[str, int]:
    """Counters of a client that sent datagrams x request bytes and got as many replies."""
    return {
        "tcpsndpacks": 0,
        "tcpsndbytes": 0,
        "tcprcvpacks": 0,
        "tcprcvbytes": 0,
        "udpsndpacks": datagrams,
        "udpsndbytes": datagrams * (request + UDP4_OVERHEAD),
        "udprcvpacks": datagrams if reply >= 0 else 0,
        "udprcvbytes": datagrams * (reply + UDP4_OVERHEAD) if reply >= 0 else 0,
    }


def exited_rows(db: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Every row of the exited table by (tgid, btime), as column -> value."""
    conn = read_only(db)
    try:
        rows = conn.execute(f"SELECT {', '.join(EXITED_COLUMNS)} FROM exited").fetchall()
    finally:
        conn.close()
    result: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        record: dict[str, Any] = dict(zip(EXITED_COLUMNS, row, strict=True))
        result[(record["tgid"], record["btime"])] = record
    assert len(result) == len(rows)  # (tgid, btime) is the primary key
    return result


def counters_of(record: dict[str, Any]) -> dict[str, int]:
    return {name: record[name] for name in COUNTER_NAMES}


def wait_for_rows(db: Path, count: int) -> dict[tuple[int, int], dict[str, Any]]:
    def enough() -> dict[tuple[int, int], dict[str, Any]] | None:
        if not db.exists():
            return None
        rows = exited_rows(db)
        return rows if len(rows) >= count else None

    rows: dict[tuple[int, int], dict[str, Any]] = wait_until(f"{count} rows in {db}", enough)
    return rows


class Round(NamedTuple):
    """Children that exchanged datagrams with one server; all of them have exited."""

    children: list[dict[str, Any]]  # each child's own report (actors.own_identity + sent)
    server_pid: int
    datagrams: int  # per child, each way

    def keys(self) -> set[tuple[int, int]]:
        """(tgid, btime) of the children."""
        return {(c["pid"], c["btime"]) for c in self.children}

    def tgids(self) -> set[int]:
        """The children's and the server's pids: every process of the round."""
        return {c["pid"] for c in self.children} | {self.server_pid}

    def expected(self) -> dict[int, dict[str, int]]:
        """Ground-truth counters by pid: each child, and the server that answered them all."""
        child = expected_udp(self.datagrams, REQUEST_BYTES, REPLY_BYTES)
        total = len(self.children) * self.datagrams
        server = expected_udp(total, REPLY_BYTES, REQUEST_BYTES)
        return {**{c["pid"]: child for c in self.children}, self.server_pid: server}


def run_round(
    ns: Any, count: int, datagrams: int, lifetime_ms: int = 600, name: str = CHILD_NAME
) -> Round:
    """count children, one after another, each exchanging datagrams with a UDP server.

    On return every child and the server have exited.
    """
    server = Actor(
        ns, "udp_server", addr="127.0.0.1", count=count * datagrams, reply_bytes=REPLY_BYTES
    )
    clients = Actor(
        ns,
        "udp_short_lived",
        addr="127.0.0.1",
        port=server.port,
        count=count,
        datagrams=datagrams,
        size=REQUEST_BYTES,
        lifetime_ms=lifetime_ms,
        name=name,
        uid=CHILD_UID,
    )
    try:
        children: list[dict[str, Any]] = clients.read(timeout_s=WAIT_S)["children"]
        assert server.read()["received"] == count * datagrams
    finally:
        clients.finish()
        server.finish()
    assert len(children) == count
    for child in children:
        assert child["sent"] == child["replies"] == datagrams
        assert child["uid"] == CHILD_UID
    return Round(children, server.pid, datagrams)


def rows_by_tgid(rows: dict[tuple[int, int], dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_tgid = {tgid: record for (tgid, _), record in rows.items()}
    assert len(by_tgid) == len(rows), "a process has two rows"
    return by_tgid


def assert_round(rows: dict[tuple[int, int], dict[str, Any]], done: Round) -> None:
    """The round's rows: counters exact for all; each child's key and names its own."""
    by_tgid = rows_by_tgid(rows)
    for pid, counters in done.expected().items():
        assert counters_of(by_tgid[pid]) == counters, (pid, by_tgid[pid])
    for child in done.children:
        record = rows[(child["pid"], child["btime"])]
        assert record["command"] == child["comm"], child
        assert record["cmdline"] == child["cmdline"], child
        assert record["uid"] == child["uid"], child
        assert record["first_activity"] <= record["last_activity"] <= record["exit_time"], record
    server = by_tgid[done.server_pid]
    assert server["uid"] == 0 and "actors.py udp_server {" in server["cmdline"], server


def netatop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netatopd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("ownership", ["proc", "kernel"])
def test_finished_processes_land_with_exact_counters(
    ns: Any, daemons: Started, tmp_path: Path, ownership: str
) -> None:
    """6 children, each 5 datagrams of 120 bytes out and 5 of 333 back, and their server: 7 rows.

    Also: the samples (every 0.3 s) of each process add up to its final
    counters, and ``netatop exited --since 1h --db`` prints the same rows.
    """
    db = tmp_path / "history.db"
    d = daemons(db, "--ownership", ownership, *FAST, "--sample-interval-s", "0.3")
    if ownership == "kernel" and d.status()["ownership"] != "kernel":
        pytest.skip(f"PRIVILEGED TEST SKIPPED: eBPF helper not loaded: {d.status()}")
    started_s = time.time()
    done = run_round(ns, count=6, datagrams=5)
    rows = wait_for_rows(db, 7)
    # Nothing else finished in the namespace (the forking parent sent nothing).
    assert set(rows_by_tgid(rows)) == done.tgids()
    assert done.keys() <= set(rows)
    assert_round(rows, done)
    for record in rows.values():
        assert started_s <= record["first_activity"] and record["exit_time"] <= time.time()
    status = d.status()
    assert status["history"] == str(db)
    assert status["history_persisted"] == 7
    assert status["history_write_errors"] == 0 and status["history_dropped"] == 0

    conn = read_only(db)
    try:
        for (tgid, btime), record in rows.items():
            sums: tuple[Any, ...] = conn.execute(
                "SELECT " + ", ".join(f"sum({n})" for n in COUNTER_NAMES) + ", count(*)"
                " FROM samples WHERE tgid = ? AND btime = ?",
                (tgid, btime),
            ).fetchall()[0]
            assert sums[-1] >= 1, record
            assert dict(zip(COUNTER_NAMES, sums[:-1], strict=True)) == counters_of(record), record
    finally:
        conn.close()

    listed = netatop("exited", "--since", "1h", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    printed = {(r["pid"], r["btime"]): r for r in json.loads(listed.stdout)}
    assert set(printed) == set(rows)
    for key, record in rows.items():
        shown = printed[key]
        assert {n: shown[n] for n in COUNTER_NAMES} == counters_of(record)
        for column in ("command", "cmdline", "uid", "exit_time"):
            assert shown[column] == record[column], (column, shown, record)


def test_restart_neither_duplicates_nor_loses(ns: Any, daemons: Started, tmp_path: Path) -> None:
    """First daemon: 5 exits, written within a second of their exit (the flush interval
    of 60 s is for samples: issue 13), then SIGTERM.

    Second daemon on the same --db: those 5 rows are exactly as before, and 4
    more exits land beside them; 9 rows in all, each process once.
    """
    db = tmp_path / "history.db"
    first = daemons(db, "--gc-interval-s", "0.5", "--flush-interval-s", "60")
    before = run_round(ns, count=4, datagrams=3, name="ntpEone")
    # The sweep has moved all 5 to the exit list; the writer commits them within a
    # second, long before the 60 s flush interval.
    wait_until("5 exits handed to the history", lambda: first.status()["exited"] == 5)
    wait_until("5 exits persisted", lambda: first.status()["history_persisted"] == 5)
    assert first.status()["history_pending"] == 0
    assert first.stop() == 0
    rows = exited_rows(db)
    assert set(rows_by_tgid(rows)) == before.tgids()
    assert_round(rows, before)

    second = daemons(db, *FAST)
    assert second.status()["history"] == str(db)
    after = run_round(ns, count=3, datagrams=2, name="ntpEtwo")
    rows_now = wait_for_rows(db, 9)
    assert set(rows_by_tgid(rows_now)) == before.tgids() | after.tgids()
    for key, record in rows.items():
        assert rows_now[key] == record  # untouched by the second daemon
    assert_round(rows_now, after)
    assert second.stop() == 0
    assert exited_rows(db) == rows_now  # the second final flush added nothing twice


BURST = 2000
BURST_BATCH = 25
BURST_BYTES = 64
PERSISTED_BEFORE_KILL = 200


def test_kill_9_during_a_burst(ns: Any, daemons: Started, tmp_path: Path) -> None:
    """2,000 processes of ~50 ms, one 64-byte datagram each; SIGKILL once >= 200 are persisted.

    How the test knows what was persisted: STATUS history_persisted counts a
    finished process only after the transaction holding its row committed
    (HistoryWriter._commit counts after COMMIT returns).  A commit in WAL mode
    with synchronous=NORMAL survives the death of the process (the WAL is in the
    page cache; only a power loss could lose it).  So every row STATUS counted
    before the kill must be in the file afterwards, and the file must pass
    PRAGMA integrity_check.  Owners come from the eBPF helper (--ownership auto),
    which attributes even processes that are gone before /proc could be read.
    """
    db = tmp_path / "history.db"
    d = daemons(db, *FAST)
    status = d.status()
    if status["ownership"] != "kernel":
        pytest.skip(f"PRIVILEGED TEST SKIPPED: eBPF helper not loaded: {status['ownership_note']}")
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=BURST, reply_bytes=-1)
    burst = Actor(
        ns,
        "udp_burst",
        addr="127.0.0.1",
        port=server.port,
        count=BURST,
        batch=BURST_BATCH,
        size=BURST_BYTES,
        lifetime_ms=50,
    )
    collector = TimedLines(burst)
    try:

        def enough_persisted() -> int:
            persisted = int(d.status()["history_persisted"])
            return persisted if persisted >= PERSISTED_BEFORE_KILL else 0

        persisted = wait_until(f"{PERSISTED_BEFORE_KILL} persisted", enough_persisted)
        assert not collector.done(), "the burst ended before the kill"
        daemons.kill(d)
        wait_until("the end of the burst", collector.done)
    finally:
        burst.finish()
        server.finish()
    lines = [line for _, line in collector.snapshot()]
    ports = {int(pid): port for line in lines for pid, port in line.get("ports", {}).items()}
    failed = [pid for line in lines for pid in line.get("failed", ())]
    assert not failed and len(ports) == BURST
    users: dict[int, list[int]] = {}  # source port -> the children that used it, in order
    for pid, port in ports.items():
        users.setdefault(port, []).append(pid)
    print(f"kill -9 after {persisted} exits were reported persisted")

    conn = read_only(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    rows = exited_rows(db)
    assert len(rows) >= persisted
    tgids = [tgid for tgid, _ in rows]
    assert len(set(tgids)) == len(tgids), "a process has two rows"
    wrong = {
        tgid: (record["udpsndpacks"], users[ports[tgid]])
        for (tgid, _), record in rows.items()
        if counters_of(record) != expected_udp(1, BURST_BYTES, -1)
    }
    assert set(rows_by_tgid(rows)) <= set(ports)
    assert not wrong, (
        f"{len(wrong)} of {len(rows)} rows: pid -> (packets, children on its port) {wrong}"
    )

    # The file is usable afterwards: a new daemon opens it (WAL recovered) and keeps it.
    again = daemons(db, *FAST)
    status = again.status()
    assert status["history"] == str(db) and status["history_write_errors"] == 0
    assert again.stop() == 0
    assert exited_rows(db) == rows


def test_long_reader_stops_neither_capture_nor_writes(
    ns: Any, daemons: Started, tmp_path: Path
) -> None:
    """A reader holds BEGIN; SELECT for >= 4 s while 7 more processes finish.

    WAL: the reader keeps its snapshot (its count does not move) while the
    daemon's commits go on (STATUS history_persisted reaches 12 during the
    read), capture goes on (packets_counted grows by the exchange, capture_dropped
    0), and a new connection afterwards sees all 12 rows, exact.
    """
    db = tmp_path / "history.db"
    d = daemons(db, *FAST, "--exit-lifetime-s", "120")
    first = run_round(ns, count=4, datagrams=2, name="ntpEpre")
    wait_for_rows(db, 5)
    reader = read_only(db)
    try:
        reader.execute("BEGIN")
        held_since = time.monotonic()
        assert reader.execute("SELECT count(*) FROM exited").fetchall() == [(5,)]
        before = d.status()
        second = run_round(ns, count=6, datagrams=4, name="ntpEdur")
        wait_until("12 persisted", lambda: d.status()["history_persisted"] >= 12)
        time.sleep(max(0.0, 4.0 - (time.monotonic() - held_since)))
        assert reader.execute("SELECT count(*) FROM exited").fetchall() == [(5,)]
        assert not reader.get_autocommit()  # still inside the read transaction
        during = d.status()
    finally:
        if not reader.get_autocommit():
            reader.execute("COMMIT")
        reader.close()
    # 6 children x 4 datagrams each way, all counted while the reader held on.
    assert during["udp_sent"] - before["udp_sent"] == 6 * 4 * 2
    assert during["packets_counted"] - before["packets_counted"] >= 6 * 4 * 2
    assert during["capture_dropped"] == 0
    assert during["history_persisted"] == 12 and during["history_write_errors"] == 0
    with d.client() as client:
        exited = {r.id: r.as_dict() for r in client.list_exited()}
    assert {pid: exited[pid] for pid in second.tgids()} == second.expected()
    rows = exited_rows(db)
    assert set(rows_by_tgid(rows)) == first.tgids() | second.tgids()
    assert_round(rows, first)
    assert_round(rows, second)


TMPFS_BYTES = 8 << 20
FREE_WHEN_FULL = 0.02  # the daemon pauses below 5 % free


def free_fraction(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail / st.f_blocks


def test_disk_nearly_full(ns: Any, daemons: Started, tmp_path: Path) -> None:
    """The database on an 8 MiB tmpfs of the test's own, filled to 98 % by a filler file.

    While full: 6 exits wait in memory (history_pending 6, history_disk_full_skips
    grows), the warning is logged once, the exit list over the control socket has
    their exact counters.  Filler deleted: the 6 rows land exactly, pending 0.
    """
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TMPFS_BYTES},mode=0700",
            "ntpEhist",
            str(mount_point),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        db = mount_point / "history.db"
        # No samples: history_pending then counts exactly the finished processes.
        d = daemons(db, *FAST, "--exit-lifetime-s", "120", "--sample-interval-s", "0")
        early = run_round(ns, count=2, datagrams=1, name="ntpEearly")
        wait_for_rows(db, 3)

        filler = mount_point / "filler"
        st = os.statvfs(mount_point)
        size = st.f_bavail * st.f_frsize - int(FREE_WHEN_FULL * st.f_blocks * st.f_frsize)
        with open(filler, "wb") as out:
            chunk = b"\xa5" * (1 << 20)
            while size > 0:
                size -= out.write(chunk[: min(size, len(chunk))])
        assert free_fraction(mount_point) < 0.05

        late = run_round(ns, count=5, datagrams=3, name="ntpElate")

        seen: list[dict[str, Any]] = []

        def skipping() -> dict[str, Any] | None:
            status = d.status()
            seen[:] = [status]
            full = status["history_disk_full_skips"] >= 3 and status["history_pending"] == 6
            return status if full else None

        try:
            status = wait_until("writes skipped with 6 pending", skipping)
        except AssertionError as err:
            history = {k: v for k, v in seen[0].items() if k.startswith(("history", "exited"))}
            raise AssertionError(f"{err}: {history}\n{d.logs()}") from None
        assert status["history_persisted"] == 3 and status["history_dropped"] == 0
        assert set(rows_by_tgid(exited_rows(db))) == early.tgids()
        assert d.logs().count("history writes paused") == 1
        with d.client() as client:
            exited = {r.id: r.as_dict() for r in client.list_exited()}
        assert {pid: exited[pid] for pid in late.tgids()} == late.expected()

        filler.unlink()
        rows = wait_for_rows(db, 9)
        assert set(rows_by_tgid(rows)) == early.tgids() | late.tgids()
        assert_round(rows, early)
        assert_round(rows, late)
        status = wait_until("pending 0", lambda: (s := d.status())["history_pending"] == 0 and s)
        assert status["history_persisted"] == 9 and status["history_write_errors"] == 0
        logs = d.logs()
        assert logs.count("history writes paused") == 1
        assert logs.count("free again: writing 6 waiting records") == 1
    finally:
        try:
            for started in daemons.daemons:
                started.stop()  # before the unmount: the daemon holds the database open
        finally:
            unmount(mount_point)


def unmount(mount_point: Path) -> None:
    """Unmount the test's tmpfs; lazily if it stays busy; complain if it is still there."""
    problems = []
    for argv in (["umount", str(mount_point)], ["umount", "-l", str(mount_point)]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            break
        problems.append(f"{' '.join(argv)}: {done.stderr.strip()}")
    assert not os.path.ismount(mount_point), f"{mount_point} still mounted: {problems}"


def test_corrupt_database_at_start(ns: Any, daemons: Started, tmp_path: Path) -> None:
    """16 KiB of random bytes as the database: history disabled with the reason, counting exact."""
    db = tmp_path / "garbage.db"
    garbage = random.Random(4).randbytes(16384)
    db.write_bytes(garbage)
    d = daemons(db, *FAST, "--exit-lifetime-s", "120")
    status = d.status()
    assert status["history"].startswith("disabled: ")
    assert "not a database" in status["history"]
    assert "history_persisted" not in status
    assert "history disabled" in d.logs()
    done = run_round(ns, count=2, datagrams=3)
    wait_until("3 exits", lambda: d.status()["exited"] == 3)
    with d.client() as client:
        exited = {r.id: r.as_dict() for r in client.list_exited()}
    assert exited == done.expected()
    assert d.stop() == 0
    assert db.read_bytes() == garbage  # the administrator's file is left as it was
