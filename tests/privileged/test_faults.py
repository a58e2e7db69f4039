"""End to end: issue 13's breaks in counting and history, each shown on the real daemon.

* a remote host lying in the IP length (item 5): frames from a raw packet
  socket over a veth pair claim 65,535 bytes in 60; the port's owner gets
  nothing from them, its legitimate datagrams stay exact;
* the database directory deleted while the daemon runs (item 7);
* SIGTERM shortly after a burst of short-lived processes (item 8);
* SIGKILL in the middle of a burst, and a restart with a sender still
  running (item 9);
* a database with damaged pages at start (item 13);
* two processes on one pid in a PID namespace of their own (item 6).

Ground truth: what the actors (tests/privileged/actors.py) sent and received,
each datagram of s bytes costing s + 8 + 20 (IPv4; 40 for IPv6) + 14 + 4 on the
wire, and their own identities read from /proc while they lived.  The database
is read with a separate read-only apsw connection.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from netatopd.protocol import COUNTER_NAMES

import harness
from harness import (
    REPO,
    UDP4_OVERHEAD,
    UDP6_OVERHEAD,
    WAIT_S,
    Actor,
    Daemon,
    TimedLines,
    exited_rows,
    read_only,
    udp,
    wait_until,
)

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpF"
FAST = ("--gc-interval-s", "0.5", "--flush-interval-s", "0.2")


# --------------------------------------------------------------------------- helpers


class Started(harness.Started):
    def __call__(self, ns: Any, db: Path, *options: str) -> Daemon:
        return self.start(ns, "--db", str(db), *options)


@pytest.fixture
def daemons(make_netns: Any, tmp_path: Path) -> Iterator[Started]:
    started = Started(tmp_path)
    try:
        yield started
    finally:
        problems = started.stop_all()
    assert not problems, problems


def sample_sums(db: Path, tgid: int) -> dict[str, int]:
    conn = read_only(db)
    try:
        row = conn.execute(
            "SELECT "
            + ", ".join(f"coalesce(sum({n}), 0)" for n in COUNTER_NAMES)
            + " FROM samples WHERE tgid = ?",
            (tgid,),
        ).fetchall()[0]
    finally:
        conn.close()
    return dict(zip(COUNTER_NAMES, row, strict=True))


def burst(ns: Any, count: int, batch: int, lifetime_ms: int) -> tuple[Actor, Actor, TimedLines]:
    """A UDP server and count children (batch at a time) sending it one 64-byte datagram."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=count, reply_bytes=-1)
    children = Actor(
        ns,
        "udp_burst",
        addr="127.0.0.1",
        port=server.port,
        count=count,
        batch=batch,
        size=BURST_BYTES,
        lifetime_ms=lifetime_ms,
    )
    return server, children, TimedLines(children)


def children_of(lines: list[tuple[float, dict[str, Any]]]) -> dict[int, float]:
    """pid -> when its batch was reported (every child of the batch had exited by then)."""
    reported: dict[int, float] = {}
    for arrived, line in lines:
        assert not line.get("failed"), line
        for pid in line.get("ports", {}):
            reported[int(pid)] = arrived
    return reported


BURST_BYTES = 64
ONE_DATAGRAM = udp(1, BURST_BYTES + UDP4_OVERHEAD)


# --------------------------------------------------------------------------- item 5


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def liar_frames(port: int) -> list[str]:
    """Ethernet payloads (after the MAC addresses) claiming 65,535 IP bytes; hex."""
    data = b"x" * 18
    udp4 = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        65535,
        1,
        0,
        64,
        17,
        0,
        bytes((198, 51, 100, 1)),
        bytes((198, 51, 100, 2)),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    ipv4 = b"\x08\x00" + header + udp4  # 14 + 46: a 60-byte frame
    v6_source = bytes.fromhex("20010db8000000000000000000000001")
    v6_destination = bytes.fromhex("20010db8000000000000000000000002")
    udp6 = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
    ipv6 = (
        b"\x86\xdd"
        + struct.pack("!IHBB16s16s", 0x60000000, 65535, 17, 64, v6_source, v6_destination)
        + udp6
    )
    assert len(ipv4) + 12 == 60
    return [ipv4.hex(), ipv6.hex()]


LIARS = 1000
LEGITIMATE = 25
LEGITIMATE_BYTES = 100


def test_ip_length_beyond_the_frame_credits_nothing(make_netns: Any, daemons: Started) -> None:
    """1,000 frames of 60 bytes claiming tot_len 65,535 (and 1,000 IPv6 ones claiming
    payload_len 65,535) to a bound UDP port: its owner gets 0 bytes from them, and
    exactly its 25 legitimate datagrams of each family; STATUS counts 2,000 rejects."""
    left, right = make_netns(NETNS_PREFIX), make_netns(NETNS_PREFIX)
    for argv in (
        ["-n", left.name, "link", "add", "va", "type", "veth", "peer", "name", "vb"],
        ["-n", left.name, "link", "set", "vb", "netns", right.name],
        ["-n", left.name, "addr", "add", "198.51.100.1/24", "dev", "va"],
        ["-n", right.name, "addr", "add", "198.51.100.2/24", "dev", "vb"],
        ["-n", left.name, "addr", "add", "2001:db8::1/64", "dev", "va", "nodad"],
        ["-n", right.name, "addr", "add", "2001:db8::2/64", "dev", "vb", "nodad"],
        ["-n", left.name, "link", "set", "va", "up"],
        ["-n", right.name, "link", "set", "vb", "up"],
    ):
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)
    d = daemons(right, Path(str(daemons.tmp_path / "h.db")))
    destination_mac = right.run("cat", "/sys/class/net/vb/address").strip()
    servers = {
        "198.51.100.2": Actor(
            right, "udp_server", addr="198.51.100.2", count=LEGITIMATE, reply_bytes=-1
        ),
        "2001:db8::2": Actor(
            right, "udp_server", addr="2001:db8::2", count=LEGITIMATE, reply_bytes=-1
        ),
    }
    # One port for both families' liars: the IPv6 server's; the IPv4 liars go to the
    # IPv4 server's port.
    frames = [
        liar_frames(servers["198.51.100.2"].port)[0],
        liar_frames(servers["2001:db8::2"].port)[1],
    ]
    raw = Actor(
        left,
        "raw_frames",
        interface="va",
        destination_mac=destination_mac,
        frames_hex=frames,
        repeat=LIARS,
    )
    try:
        assert raw.first["sent"] == 2 * LIARS
        for addr, server in servers.items():
            client = Actor(
                left,
                "udp_client",
                addr=addr,
                port=server.port,
                count=LEGITIMATE,
                size=LEGITIMATE_BYTES,
                expect_reply=False,
            )
            try:
                assert client.read()["sent"] == LEGITIMATE
                assert server.read()["received"] == LEGITIMATE  # the liars were dropped
            finally:
                client.finish()
        d.sync()
        for addr, overhead in (("198.51.100.2", UDP4_OVERHEAD), ("2001:db8::2", UDP6_OVERHEAD)):
            got = d.counters(servers[addr].pid)
            expected = udp(received=LEGITIMATE, received_bytes=LEGITIMATE * (100 + overhead))
            assert {n: got[n] for n in COUNTER_NAMES} == expected, (addr, got)
        status = d.status()
        assert status["rejected"]["ip_length_beyond_frame"] == 2 * LIARS, status["rejected"]
        assert status["malformed"] >= 2 * LIARS
    finally:
        raw.finish()
        for server in servers.values():
            server.finish()


# --------------------------------------------------------------------------- item 7


def test_deleted_database_directory_is_created_anew(make_netns: Any, daemons: Started) -> None:
    """rm -r of the database directory while the daemon runs: the next flush creates a
    new database there holding the later processes; STATUS and the log say so."""
    ns = make_netns(NETNS_PREFIX)
    directory = daemons.tmp_path / "lib"
    db = directory / "h.db"
    d = daemons(ns, db, *FAST)
    first_server, first, first_lines = burst(ns, count=3, batch=3, lifetime_ms=300)
    try:
        wait_until("the first burst", first_lines.done)
        first_pids = set(children_of(first_lines.snapshot()))
        wait_until("the first rows", lambda: first_pids <= {t for t, _ in exited_rows(db)})
    finally:
        first.finish()
        first_server.finish()
    subprocess.run(["rm", "-r", str(directory)], check=True, timeout=30)
    second_server, second, second_lines = burst(ns, count=4, batch=4, lifetime_ms=300)
    try:
        wait_until("the second burst", second_lines.done)
        second_pids = set(children_of(second_lines.snapshot()))
    finally:
        second.finish()
        second_server.finish()
    rows = wait_until(
        "the later rows in a new database",
        lambda: (r := exited_rows(db)) and second_pids <= {t for t, _ in r} and r,
    )
    for (tgid, _), counters in rows.items():
        if tgid in second_pids:
            assert counters == ONE_DATAGRAM, (tgid, counters)
    assert not first_pids & {t for t, _ in rows}  # they went with the deleted file
    status = d.status()
    assert status["history_reopened"] == 1, status
    assert status["history_write_errors"] == 0
    assert "history database deleted while in use" in d.logs()


# --------------------------------------------------------------------------- item 8

SIGTERM_CHILDREN = 200


@pytest.mark.parametrize("delay_s", [2.5, 0.0])
def test_sigterm_keeps_every_finished_process(
    make_netns: Any, daemons: Started, delay_s: float
) -> None:
    """200 short-lived processes each sending one datagram; SIGTERM 2.5 s after the last
    exited (the issue's case: before any sweep, 15 s, or flush, 5 s, is due), and at
    once (the last batch is then for the stop itself to find, count and commit): every
    one has its row, exact, and the server (still running) its final sample."""
    ns = make_netns(NETNS_PREFIX)
    db = daemons.tmp_path / "h.db"
    d = daemons(ns, db)  # the default intervals: gc 15 s, flush 5 s, samples 60 s
    server, children, lines = burst(ns, count=SIGTERM_CHILDREN, batch=25, lifetime_ms=300)
    try:
        wait_until("the burst", lines.done, timeout_s=WAIT_S)
        pids = children_of(lines.snapshot())
        assert len(pids) == SIGTERM_CHILDREN
        time.sleep(delay_s)
        assert d.stop() == 0
    finally:
        children.finish()
        server.finish()
    rows = exited_rows(db)
    by_tgid = {tgid: counters for (tgid, _), counters in rows.items()}
    missing = sorted(set(pids) - set(by_tgid))
    assert not missing, f"{len(missing)} of {len(pids)} processes have no row: {missing[:10]}"
    wrong = {pid: by_tgid[pid] for pid in pids if by_tgid[pid] != ONE_DATAGRAM}
    assert not wrong, wrong
    received = SIGTERM_CHILDREN
    assert sample_sums(db, server.pid) == udp(
        received=received, received_bytes=received * (BURST_BYTES + UDP4_OVERHEAD)
    )
    assert "stopping" in d.logs()


# --------------------------------------------------------------------------- item 9

KILL_CHILDREN = 400
KILL_AFTER_S = 3.0
PERSISTED_WITHIN_S = 1.5


def test_kill_9_loses_at_most_about_a_second(make_netns: Any, daemons: Started) -> None:
    """A burst of 400 processes of 300 ms, 10 at a time; SIGKILL 3 s in.  Every process
    reported finished more than 1.5 s before the kill has its row, exact (the default
    intervals: a sweep every 15 s, samples and retries every 5 s)."""
    ns = make_netns(NETNS_PREFIX)
    db = daemons.tmp_path / "h.db"
    d = daemons(ns, db)
    server, children, lines = burst(ns, count=KILL_CHILDREN, batch=10, lifetime_ms=300)
    try:
        wait_until("the first batch", lambda: lines.snapshot()[1:])
        time.sleep(KILL_AFTER_S)
        killed_at = time.monotonic()
        daemons.kill(d)
        assert not lines.done(), "the burst ended before the kill"
        wait_until("the end of the burst", lines.done)
    finally:
        children.finish()
        server.finish()
    reported = children_of(lines.snapshot())
    due = {pid for pid, at in reported.items() if at < killed_at - PERSISTED_WITHIN_S}
    assert len(due) >= 20, len(due)
    rows = {tgid: counters for (tgid, _), counters in exited_rows(db).items()}
    missing = sorted(due - set(rows))
    assert not missing, f"{len(missing)} of {len(due)} finished processes lost: {missing[:10]}"
    wrong = {pid: rows[pid] for pid in due if rows[pid] != ONE_DATAGRAM}
    assert not wrong, wrong


PHASE_ONE = 20
PHASE_TWO = 7
PHASE_BYTES = 90


def test_restart_continues_the_counters_of_running_processes(
    make_netns: Any, daemons: Started
) -> None:
    """A sender still running across kill -9 and restart: after the restart its counters
    go on from its last sample (20 datagrams), not from zero: 27 after 7 more."""
    ns = make_netns(NETNS_PREFIX)
    db = daemons.tmp_path / "h.db"
    d = daemons(ns, db, *FAST, "--sample-interval-s", "0.5")
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=PHASE_ONE + PHASE_TWO, reply_bytes=-1)
    sender = Actor(ns, "udp_phases", addr="127.0.0.1", port=server.port, size=PHASE_BYTES)
    per_datagram = PHASE_BYTES + UDP4_OVERHEAD
    try:
        sender.tell(f"send {PHASE_ONE}")
        assert sender.read()["sent"] == PHASE_ONE
        phase_one = udp(sent=PHASE_ONE, sent_bytes=PHASE_ONE * per_datagram)
        wait_until("a sample of phase one", lambda: sample_sums(db, sender.pid) == phase_one)
        daemons.kill(d)
        again = daemons(ns, db, *FAST, "--sample-interval-s", "0.5")
        sender.tell(f"send {PHASE_TWO}")
        assert sender.read()["sent"] == PHASE_ONE + PHASE_TWO
        assert server.read()["received"] == PHASE_ONE + PHASE_TWO
        again.sync()
        total = PHASE_ONE + PHASE_TWO
        got = again.counters(sender.pid)
        assert {n: got[n] for n in COUNTER_NAMES} == udp(
            sent=total, sent_bytes=total * per_datagram
        )
        assert again.status()["tasks_restored"] >= 2  # the sender and the server
        assert "continue from the counters of their last sample" in again.logs()
        # The samples do not count phase one twice.
        wait_until(
            "a sample of phase two",
            lambda: sample_sums(db, sender.pid) == udp(sent=total, sent_bytes=total * per_datagram),
        )
    finally:
        sender.finish()
        server.finish()


# --------------------------------------------------------------------------- item 13


def _damaged_database(db: Path) -> bytes:
    """A database of 3,000 rows whose pages in the middle are overwritten; its bytes."""
    script = (
        "import sys\n"
        "from netatopd import history\n"
        "from netatopd.tasks import ExitedTask\n"
        "w = history.HistoryWriter(sys.argv[1], sample_interval_s=None, retention_days=0)\n"
        "w.add_exited([ExitedTask(t, 1_700_000_000, 'c', 'c', 0, 1.0, 2.0, 3.0, (t,) * 8)"
        " for t in range(1, 3001)])\n"
        "assert w.flush() == 3000\n"
        "w.stop()\n"
        "import apsw\n"
        "apsw.Connection(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True, cwd=REPO, timeout=60)
    size = db.stat().st_size
    with open(db, "r+b") as file:
        file.seek(size // 2)
        file.write(bytes(range(256)) * 32)
    conn = read_only(db)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]
    except apsw.CorruptError:
        pass  # damaged, as SQLite says one way or the other
    finally:
        conn.close()
    return db.read_bytes()


def test_damaged_database_is_moved_aside(make_netns: Any, daemons: Started) -> None:
    """Damaged pages at start: the file is moved aside (kept, byte for byte), a fresh
    database takes the new rows, ``netatop exited`` reads it; STATUS and the log say so."""
    ns = make_netns(NETNS_PREFIX)
    db = daemons.tmp_path / "h.db"
    damaged = _damaged_database(db)
    d = daemons(ns, db, *FAST)
    status = d.status()
    assert status["history"] == str(db)
    assert status["history_corrupt_moved"] == 1
    aside = [p for p in db.parent.iterdir() if p.name.startswith("h.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert f"moved aside to {aside[0]}" in d.logs()
    server, children, lines = burst(ns, count=3, batch=3, lifetime_ms=300)
    try:
        wait_until("the burst", lines.done)
        pids = set(children_of(lines.snapshot()))
    finally:
        children.finish()
        server.finish()
    rows = wait_until(
        "the rows", lambda: (r := exited_rows(db)) and pids <= {t for t, _ in r} and r
    )
    assert all(rows[key] == ONE_DATAGRAM for key in rows if key[0] in pids)
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "netatopd.cli",
            "exited",
            "--since",
            "1h",
            "--db",
            str(db),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert listed.returncode == 0, listed.stderr
    assert pids <= {r["pid"] for r in json.loads(listed.stdout)}
    assert d.status()["history_write_errors"] == 0


# --------------------------------------------------------------------------- item 6


class PidNamespace:
    """Commands run in a network namespace and, for the daemon, a PID namespace of its
    own (unshare --pid --fork --mount-proc); actors join it with nsenter."""

    def __init__(self, ns: Any) -> None:
        self.ns = ns
        self.exec_prefix = [
            *ns.exec_prefix,
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGTERM",
        ]


class Joined:
    def __init__(self, host_pid: int) -> None:
        self.exec_prefix = ["nsenter", "--target", str(host_pid), "--pid", "--mount", "--net", "--"]


def _child_of(pid: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"no child of {pid}")


SAME_PID = 4242


def test_two_processes_on_one_pid_are_two_rows(make_netns: Any, daemons: Started) -> None:
    """In a PID namespace, kernel.ns_last_pid makes two short-lived children take the
    same pid 1.2 s apart (btime counts seconds); each sends its own number of datagrams
    and lives 400 ms.  Two history rows, each with its own btime and exact counters."""
    ns = make_netns(NETNS_PREFIX)
    db = daemons.tmp_path / "h.db"
    d = daemons(PidNamespace(ns), db, *FAST, "--ownership", "proc")
    inside = Joined(_child_of(d.proc.pid))  # the daemon: pid 1 of the new namespace
    server = Actor(inside, "udp_server", addr="127.0.0.1", count=3 + 5, reply_bytes=-1)
    children = Actor(
        inside,
        "same_pid_children",
        addr="127.0.0.1",
        port=server.port,
        datagrams=[3, 5],
        size=BURST_BYTES,
        pid=SAME_PID,
        gap_s=1.2,
        lifetime_ms=400,
    )
    try:
        reports = children.read()["children"]
        assert server.read()["received"] == 8
    finally:
        children.finish()
        server.finish()
    try:
        _check_two_rows(db, reports)
    finally:
        # Stopped from inside: the daemon is the namespace's pid 1, unshare waits for it.
        daemons.killed.add(id(d))
        os.kill(_child_of(d.proc.pid), signal.SIGTERM)
        code = d.proc.wait(timeout=30)
        d.log.close()
    assert code == 0, d.logs()


def _check_two_rows(db: Path, reports: list[dict[str, Any]]) -> None:
    assert [c["pid"] for c in reports] == [SAME_PID, SAME_PID]
    assert reports[0]["btime"] != reports[1]["btime"]
    expected = {
        (c["pid"], c["btime"]): udp(c["sent"], c["sent"] * (BURST_BYTES + UDP4_OVERHEAD))
        for c in reports
    }
    rows = wait_until(
        "two rows for one pid",
        lambda: (r := exited_rows(db)) and set(expected) <= set(r) and r,
    )
    assert {key: rows[key] for key in expected} == expected
    assert all(btime != 0 for _, btime in rows)
