"""The daemon's engine and its answers, built from fakes with a clock the test drives.

Ground truth: the packets and rejects each test feeds in, the capture
counters of FakeCapture, and the clock's readings; the table figures are the
integer STATUS figures that have a table slot.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_locality import FakeAddresses

from netatopd.capture.pcap import CaptureStats
from netatopd.config import resolve
from netatopd.counting import count_packets
from netatopd.daemon.answers import Answers
from netatopd.daemon.engine import IDLE_WAKE_S, SIMULATE_CONNECTOR_FAILURE_ENV, Clock, Engine
from netatopd.locality import Locality
from netatopd.netlink.connector import ProcessEvent, ProcEventKind
from netatopd.parse import PROTO_TCP, PROTO_UDP, Direction, Reject
from netatopd.protocol import DETAIL_FIELDS
from netatopd.table import STATUS_FIELDS, TableWriter, open_table, table_path
from netatopd.tasks import Kind, TaskInfo

A4 = bytes((192, 0, 2, 1))
B4 = bytes((198, 51, 100, 2))
WALL_START_S = 1_700_000_000.0


def key4(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


class FakeTime:
    """Wall and monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.wall_s = WALL_START_S
        self.monotonic_s = 500.0

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.monotonic_s += seconds

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall_s, monotonic=lambda: self.monotonic_s)


class FakeCapture:
    """What Engine needs of CaptureLanes outside the loop: its counters and lanes."""

    lanes: list[object] = [object(), object(), object()]
    fallback = ""

    def stats(self) -> CaptureStats:
        return CaptureStats(1234, 5, 6)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def engine(
    tmp_path: Path, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    monkeypatch.setenv(SIMULATE_CONNECTOR_FAILURE_ENV, "1")  # unit tests: no kernel events
    options: argparse.Namespace = resolve(
        [
            "--run-dir",
            str(tmp_path / "run"),
            "--no-history",
            "--ownership",
            "proc",
            "--no-atop-socket",
        ],
        environ={},
    )
    (tmp_path / "run").mkdir()
    engine = Engine(options, FakeCapture(), fake_time.clock())  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.table.close(unlink=True)
        engine.sockdiag.close()
        engine.locality.close()


def test_table_figures_are_the_integer_status_fields(engine: Engine) -> None:
    engine.flows.charge(
        count_packets(
            [
                (Direction.SENT, PROTO_TCP, key4(A4, B4, 40000, 443), 60),
                (Direction.LOOPBACK, PROTO_UDP, key4(A4, A4, 5000, 53), 80),
            ]
        ),
        1.0,
    )
    engine.rejects[Reject.TRUNCATED_IP] = 2
    engine.rejects[Reject.OTHERHOST] = 9  # not malformed
    status = Answers(engine).status()
    expected = {name: status[name] for name in STATUS_FIELDS if isinstance(status.get(name), int)}
    figures = engine.table_figures()
    assert figures == expected
    assert figures["malformed"] == 2
    assert figures["capture_received"] == 1234
    assert figures["capture_dropped"] == 5
    assert figures["capture_interface_dropped"] == 6
    assert figures["tcp_sent"] == 1 and figures["udp_sent"] == 1
    assert figures["flows"] == 3  # one TCP flow, two UDP endpoints
    assert "history_persisted" not in figures  # --no-history
    rejected = status["rejected"]
    assert isinstance(rejected, dict) and len(rejected) == len(Reject)
    assert rejected["truncated_ip"] == 2 and rejected["otherhost"] == 9
    assert sum(rejected.values()) == 11


STATUS_ORDER_PROC = [
    "version",
    *STATUS_FIELDS[:10],
    "malformed",
    "rejected",
    "flows",
    "flows_overflow",
    "flows_pending",
    "flows_written_off",
    "tasks",
    "tasks_overflow",
    "exited",
    "exited_expired",
    "capture_received",
    "capture_dropped",
    "capture_interface_dropped",
    "packets_counted",
    "capture_lanes",
    "capture_holds",
    "capture_hold_ms",
    "resolver_lookups",
    "resolver_misses",
    "resolver_not_found",
    "resolver_endpoint_finds",
    "resolver_udp_rechecks",
    "owner_latency_samples",
    "inode_full_scans",
    "proc_denied",
    "gc_runs",
    "table_capacity",
    "history",
    "ownership",
    "ownership_note",
    "uptime_s",
    *(
        f"forwarded_{name}{unit}"
        for name in (
            "tcp_sent",
            "tcp_received",
            "udp_sent",
            "udp_received",
            "icmp_sent",
            "icmp_received",
        )
        for unit in ("", "_bytes")
    ),
    "local_addresses",
    "conntrack",
    "nat_rewrites",
    *(
        f"balance_{name}{term}"
        for name in ("tcp_sent", "tcp_received", "udp_sent", "udp_received")
        for term in ("_counted", "_processes", "_pending", "")
    ),
    "capture_path",
    "namespaces_uncovered",
    "namespaces_uncovered_inodes",
    # The proc connector refused (simulated): polling, so no connector figures.
    "process_events",
    "process_events_resyncs",
    "identities_read",
    "identities_known",
    "identity_unreadable",
    "identity_unknown",
    "identity_incomplete",
    "tasks_late",
    "leader_exits_deferred",
    "identity_source",
    "identities_from_kernel",
]


def test_status_names_and_their_order_on_the_control_socket(engine: Engine) -> None:
    assert list(Answers(engine).status()) == STATUS_ORDER_PROC
    # No eBPF helper: identities after an exec come from /proc alone.
    assert Answers(engine).status()["identity_source"] == "/proc"


def test_status_without_the_stages_that_are_off(engine: Engine, fake_time: FakeTime) -> None:
    fake_time.advance(90.25)
    status = Answers(engine).status()
    assert status["uptime_s"] == 90.25  # from the engine's clock
    assert status["ownership"] == "proc"
    assert status["process_events"].startswith("polling /proc: proc connector: ")
    assert status["history"] == "disabled (--no-history)"
    assert status["capture_lanes"] == 3 and status["capture_hold_ms"] == 0
    assert status["owner_latency_samples"] == 0 and "owner_latency_ms_p50" not in status
    absent = (
        "capture_lanes_fallback",
        "resolver_kernel_finds",
        "atop_clients",
        "history_pending",
        "table_text_refused",
    )
    assert [name for name in absent if name in status] == []
    assert not any(name.startswith("ebpf_") for name in status)


def test_publish_follows_the_interval_while_counting_and_beats_once_a_second_idle(
    engine: Engine, fake_time: FakeTime
) -> None:
    interval_s = engine.publish_interval_s
    assert interval_s < IDLE_WAKE_S
    engine.housekeeping()
    published_s = fake_time.monotonic_s
    assert engine.last_publish_monotonic_s == published_s  # the first: at once
    fake_time.advance(interval_s)
    engine.housekeeping()
    assert engine.last_publish_monotonic_s == published_s  # idle: only the heartbeat
    fake_time.advance(IDLE_WAKE_S - interval_s)
    engine.housekeeping()
    assert engine.last_publish_monotonic_s == fake_time.monotonic_s
    published_s = fake_time.monotonic_s
    engine.packets += 1  # counting: every interval
    assert engine.seconds_until_next_work() == pytest.approx(interval_s)
    fake_time.advance(interval_s / 2)
    assert engine.seconds_until_next_work() == pytest.approx(interval_s / 2)
    engine.housekeeping()
    assert engine.last_publish_monotonic_s == published_s
    fake_time.advance(interval_s / 2)
    engine.housekeeping()
    assert engine.last_publish_monotonic_s == fake_time.monotonic_s


def test_the_balance_holds_through_owners_finish_and_the_exit_list(engine: Engine) -> None:
    """counted = processes (running and finished) + unidentified + pending + forwarded.

    Ground truth: the packets fed in: 3 UDP sent by a local endpoint, 2 TCP over
    loopback (each a send and a receive), 4 UDP passing through (forwarded).
    """
    engine.locality.close()
    engine.locality = Locality(FakeAddresses(A4))
    sums = count_packets(
        [
            *[(Direction.SENT, PROTO_UDP, key4(A4, B4, 5353, 53), 100)] * 3,
            *[(Direction.LOOPBACK, PROTO_TCP, key4(A4, A4, 40000, 80), 60)] * 2,
            *[(Direction.RECEIVED, PROTO_UDP, key4(B4, B4, 1, 2), 70)] * 4,
        ]
    )
    engine.locality.split(sums)
    engine.flows.charge(sums, WALL_START_S)

    def balance() -> dict[str, object]:
        status = Answers(engine).status()
        return {name: value for name, value in status.items() if name.startswith("balance_")}

    figures = balance()
    assert figures["balance_udp_sent_counted"] == 3 and figures["balance_udp_sent_pending"] == 3
    assert figures["balance_tcp_sent_pending"] == 2 and figures["balance_tcp_received_pending"] == 2
    assert figures["balance_udp_received_counted"] == 4
    assert Answers(engine).status()["forwarded_udp_received"] == 4
    assert [
        figures[f"balance_{n}"] for n in ("tcp_sent", "tcp_received", "udp_sent", "udp_received")
    ] == [0] * 4
    # An owner takes the UDP flow's packets; then it finishes and leaves the exit list.
    task = TaskInfo(4242, 1, 0, "sender")
    assert engine.tasks.admit(task)
    flow = engine.flows.udp_flow(A4, 5353)
    assert flow is not None
    flow.owner = task
    engine.resolver.settle(WALL_START_S)
    assert balance()["balance_udp_sent_processes"] == 3
    engine.registry.finish([task], WALL_START_S)
    engine.exit_list.entries.clear()
    figures = balance()
    assert figures["balance_udp_sent_processes"] == 3 and figures["balance_udp_sent_pending"] == 0
    assert [
        figures[f"balance_{n}"] for n in ("tcp_sent", "tcp_received", "udp_sent", "udp_received")
    ] == [0] * 4


class FakeProcessEvents:
    """The proc connector as the engine reads it: queued events, then a resync flag."""

    def __init__(self, events: list[ProcessEvent], resync: bool) -> None:
        self.queued = events
        self.resync = resync
        self.events = len(events)  # the STATUS figures of ProcessEvents
        self.lost_events = 7
        self.overflows = 1

    def read(self) -> list[ProcessEvent]:
        events, self.queued = self.queued, []
        return events

    def take_resync(self) -> bool:
        wanted, self.resync = self.resync, False
        return wanted

    def close(self) -> None:
        pass


def test_an_exit_event_finishes_the_task_now_and_lost_events_resync(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    drained: list[bool] = []  # the capture is read before the task is finished, forced

    def drain_capture(force: bool = False) -> bool:
        drained.append(force and engine.tasks.get(gone_pid) is not None)
        return False

    monkeypatch.setattr(engine, "drain_capture", drain_capture)
    gone_pid = 4_000_000  # above pid_max: no such process
    task = TaskInfo(gone_pid, -1, 1_700_000_000, "ghost")
    engine.tasks.admit(task)
    truth_s = time.time() - 3.0  # the exit: three seconds ago, on both clocks
    exit_ns = time.monotonic_ns() - 3_000_000_000
    exit_event = ProcessEvent(ProcEventKind.EXIT, gone_pid, gone_pid, 1, 1, exit_ns, 0, 0, 0, "", 0)
    engine.process_events = FakeProcessEvents([exit_event], resync=True)  # type: ignore[assignment]
    engine.on_process_events()
    assert drained == [True]
    assert task.exited and engine.tasks.get(gone_pid) is None
    (exited,) = engine.exit_list.snapshot()
    # The kernel's time, not the time the event was read (however long the resync took).
    assert abs(exited.exit_time_s - truth_s) < 0.05
    assert engine.process_events_resyncs == 1
    assert len(engine.identities) > 0  # every running process read again
    status = Answers(engine).status()
    assert (status["process_events_resyncs"], status["process_events_lost"]) == (1, 7)


def test_identity_reaches_the_table_and_the_detail_answers(engine: Engine) -> None:
    """A task's uid, command line and placement: in its table row, LIST_TASKS_DETAIL, and
    once finished in the exit list's table row, LIST_EXIT_DETAIL and GETCNT_EXIT_DETAIL."""
    scope = "/system.slice/docker-" + "e" * 64 + ".scope"
    task = TaskInfo(4321, 100, 1_700_000_000, "web", "web --port 80", 33, scope)
    task.add(True, (2, 300, 1, 100), 1_700_000_010.0)
    assert engine.tasks.admit(task)
    identity = {
        "uid": 33,
        "cmdline": "web --port 80",
        "unit": "docker-" + "e" * 64 + ".scope",
        "container": "docker:" + "e" * 64,
        "cgroup": scope,
    }
    answers = Answers(engine)
    engine.publish()
    with open_table(engine.options.run_dir) as reader:
        row = reader.lookup(4321)
    assert row is not None
    assert {name: getattr(row, name) for name in identity} == identity
    running = json.loads(answers.list_tasks_detail())
    assert [(r["tgid"], r["exit_time"], r["udpsndbytes"]) for r in running] == [(4321, None, 300)]
    assert {name: running[0][name] for name in identity} == identity
    assert list(running[0]) == list(DETAIL_FIELDS)

    engine.exit_list.add(task.finished(1_700_000_020.5))
    engine.tasks.remove(task)
    engine.publish()
    with open_table(engine.options.run_dir) as reader:
        gone = reader.lookup(4321)
    assert gone is not None and gone.kind == Kind.EXITED
    assert {name: getattr(gone, name) for name in identity} == identity
    (listed,) = json.loads(answers.list_exited_detail())
    assert {name: listed[name] for name in identity} == identity
    assert (listed["exit_time"], listed["first_activity"], listed["udpsndpacks"]) == (
        1_700_000_020.5,
        1_700_000_010.0,
        2,
    )
    taken = answers.pop_exited_detail()
    assert taken is not None and json.loads(taken) == listed
    assert answers.pop_exited_detail() is None and len(engine.exit_list) == 0


def test_strings_the_table_had_no_room_for_are_in_status(engine: Engine) -> None:
    """A text area too small for the command lines: STATUS table_text_refused says how many."""
    engine.table.close(unlink=True)
    engine.table = TableWriter(table_path(engine.options.run_dir), 8, 250, text_size_bytes=16)
    for tgid, cmdline in ((10, "first --x"), (11, "second --y")):
        task = TaskInfo(tgid, 1, 1_700_000_000, "p", cmdline, 0, "")
        assert engine.tasks.admit(task)
    engine.publish()
    # 1 + "first --x\0" (10) fits in 16; "second --y\0" does not
    assert Answers(engine).status()["table_text_refused"] == 1
    with open_table(engine.options.run_dir) as reader:
        assert sorted(row.cmdline for row in reader.snapshot().rows) == ["", "first --x"]
