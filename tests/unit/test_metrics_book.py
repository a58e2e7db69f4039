"""The metrics book, collector and HTTP server with fake tasks and snapshots (no root).

Ground truth: the counters each test gives its fake processes (TaskInfo) and
finished processes (ExitedTask); the clock is the number each test passes to
``publish``.  The exposition is checked with prometheus_client's own parser and
with ``promtool check metrics`` (Debian package prometheus, scripts/setup).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netatopd.capture.pcap import CaptureStats
from netatopd.config import ConfigError, resolve
from netatopd.daemon.engine import Clock, Engine
from netatopd.metrics import MetricsBook, MetricsSnapshot, parse_group_by, parse_listen
from netatopd.metrics import http as metrics_http
from netatopd.metrics.book import UserNames
from netatopd.metrics.catalogue import HEALTH, health_figures
from netatopd.metrics.families import SnapshotCollector
from netatopd.metrics.options import MetricsListenError
from netatopd.status import FIELDS
from netatopd.tasks import ExitedTask, TaskInfo

USERS = {0: "root", 1000: "alice"}


def user_name(uid: int) -> str:
    return USERS[uid]


def task(tgid: int, command: str, uid: int, counters: list[int]) -> TaskInfo:
    t = TaskInfo(tgid, tgid * 10, 1_700_000_000, command, "", uid)
    t.counters = list(counters)
    return t


def exited(t: TaskInfo) -> ExitedTask:
    return t.finished(0.0)


def book(**kw: object) -> MetricsBook:
    return MetricsBook(("command", "user"), user_name=UserNames(user_name), **kw)  # type: ignore[arg-type]


def groups(snapshot: MetricsSnapshot) -> dict[tuple[str, ...], tuple[int, ...]]:
    return dict(snapshot.groups)


C1 = [1, 100, 2, 200, 3, 300, 4, 400]
C2 = [10, 1000, 20, 2000, 30, 3000, 40, 4000]


# -- options -------------------------------------------------------------------------------


def test_group_by_accepts_command_and_user() -> None:
    assert parse_group_by("command,user") == ("command", "user")
    assert parse_group_by(" user ") == ("user",)


def test_group_by_unit_and_container_from_the_cgroup() -> None:
    assert parse_group_by("unit,container") == ("unit", "container")
    book = MetricsBook(("container", "unit"), started_s=0.0)
    docker = f"docker:{'d' * 64}"
    assert book.key_of("nginx", 0, f"docker-{'d' * 64}.scope", docker) == (
        docker,
        f"docker-{'d' * 64}.scope",
    )
    assert book.key_of("sshd", 0, "ssh.service", "") == ("", "ssh.service")


@pytest.mark.parametrize(
    "text,message", [("pid", "unknown group 'pid'"), ("", "at least one"), ("user,user", "twice")]
)
def test_group_by_refuses_others(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_group_by(text)


def test_listen_address_forms() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9477") == ("::1", 9477)
    for bad in ("9477", "127.0.0.1", "127.0.0.1:x", "::1:9477", "host:70000"):
        with pytest.raises(MetricsListenError):
            parse_listen(bad)


def test_config_refuses_bad_metrics_options() -> None:
    with pytest.raises(ConfigError, match="unknown group 'pod'"):
        resolve(["--metrics-group-by", "pod"], environ={})
    with pytest.raises(ConfigError, match="is not ADDR:PORT"):
        resolve(["--metrics-listen", "localhost"], environ={})
    options = resolve([], environ={})
    assert options.metrics_listen == "" and options.metrics_group_by == "command,user"
    assert options.metrics_max_series == 10_000 and options.metrics_idle_drop_s == 3600.0
    assert options.metrics_top_processes == 0


# -- the book ------------------------------------------------------------------------------


def test_groups_sum_their_processes() -> None:
    b = book()
    tasks = [task(1, "nginx", 0, C1), task(2, "nginx", 0, C2), task(3, "nginx", 1000, C1)]
    snap = b.publish(tasks, {}, 0.0, 0.0)
    assert groups(snap) == {
        ("nginx", "root"): tuple(a + c for a, c in zip(C1, C2, strict=True)),
        ("nginx", "alice"): tuple(C1),
    }
    assert snap.labels == ("command", "user")


def test_group_by_user_only() -> None:
    b = MetricsBook(("user",), user_name=UserNames(user_name))
    snap = b.publish([task(1, "a", 0, C1), task(2, "b", 0, C2)], {}, 0.0, 0.0)
    assert groups(snap) == {("root",): tuple(a + c for a, c in zip(C1, C2, strict=True))}


def test_a_finished_process_is_neither_lost_nor_counted_twice() -> None:
    b = book()
    running = task(1, "curl", 0, C1)
    other = task(2, "curl", 0, C2)
    first = groups(b.publish([running, other], {}, 0.0, 0.0))[("curl", "root")]
    # More traffic after the publish, then the process finishes: its final counters join.
    running.counters[1] += 50
    b.process_finished(exited(running))
    second = groups(b.publish([other], {}, 1.0, 1.0))[("curl", "root")]
    assert second[1] == first[1] + 50
    assert second == tuple(a + c for a, c in zip(running.counters, C2, strict=True))
    # Both gone: the group keeps everything.
    b.process_finished(exited(other))
    third = groups(b.publish([], {}, 2.0, 2.0))[("curl", "root")]
    assert third == second


def test_series_cap_sends_new_groups_to_other() -> None:
    b = book(max_series=2)
    tasks = [task(1, "a", 0, C1), task(2, "b", 0, C1), task(3, "c", 0, C2), task(4, "d", 0, C2)]
    snap = b.publish(tasks, {}, 0.0, 0.0)
    assert groups(snap) == {
        ("a", "root"): tuple(C1),
        ("b", "root"): tuple(C1),
        ("other", "other"): tuple(2 * c for c in C2),
    }
    assert snap.series_overflow == 2 and snap.own_groups == 2 and snap.other_groups == 2


def test_other_stays_monotonic_when_its_members_are_dropped() -> None:
    b = book(max_series=1, idle_drop_s=10.0)
    a, c = task(1, "a", 0, C1), task(3, "c", 0, C2)
    b.publish([a, c], {}, 0.0, 0.0)  # a has the one series, c goes to other
    b.process_finished(exited(c))
    assert groups(b.publish([a], {}, 1.0, 1.0))[("other", "other")] == tuple(C2)
    # c idle long enough: it leaves the book, its counts stay in 'other'.
    snap = b.publish([a], {}, 20.0, 20.0)
    assert snap.other_groups == 0
    assert groups(snap)[("other", "other")] == tuple(C2)
    # A group that returns after being dropped from 'other' starts again from zero there.
    again = task(5, "c", 0, C1)
    assert groups(b.publish([a, again], {}, 21.0, 21.0))[("other", "other")] == tuple(
        x + y for x, y in zip(C1, C2, strict=True)
    )


def test_a_group_keeps_its_place_and_dropped_groups_free_theirs() -> None:
    b = book(max_series=1, idle_drop_s=10.0)
    a = task(1, "a", 0, C1)
    b.publish([a], {}, 0.0, 0.0)
    later = task(2, "late", 0, C2)
    snap = b.publish([a, later], {}, 1.0, 1.0)
    assert ("late", "root") not in groups(snap) and snap.series_overflow == 1
    b.process_finished(exited(a))
    b.publish([later], {}, 2.0, 2.0)
    # a idle past the limit: dropped; 'late' stays in other, a newcomer gets a's place.
    newcomer = task(3, "new", 0, C1)
    snap = b.publish([later, newcomer], {}, 13.0, 13.0)
    found = groups(snap)
    assert ("a", "root") not in found and ("late", "root") not in found
    assert found[("new", "root")] == tuple(C1)
    assert found[("other", "other")] == tuple(C2)


def test_idle_groups_are_dropped_only_without_running_processes() -> None:
    b = book(idle_drop_s=10.0)
    quiet_but_running = task(1, "sshd", 0, C1)
    gone = task(2, "cron", 0, C2)
    b.publish([quiet_but_running, gone], {}, 0.0, 0.0)
    b.process_finished(exited(gone))
    assert ("cron", "root") in groups(b.publish([quiet_but_running], {}, 9.0, 9.0))
    snap = b.publish([quiet_but_running], {}, 10.5, 10.5)
    assert ("cron", "root") not in groups(snap)
    assert ("sshd", "root") in groups(snap)


def test_a_group_that_grows_is_not_idle() -> None:
    b = book(idle_drop_s=10.0)
    t = task(1, "dig", 0, C1)
    b.publish([t], {}, 0.0, 0.0)
    t.counters[4] += 1
    b.process_finished(exited(t))
    b.publish([], {}, 9.0, 9.0)  # grew at 9
    assert ("dig", "root") in groups(b.publish([], {}, 18.0, 18.0))
    assert ("dig", "root") not in groups(b.publish([], {}, 19.5, 19.5))


def test_a_real_group_named_other_is_counted_in_other() -> None:
    b = MetricsBook(("command",), user_name=UserNames(user_name))
    snap = b.publish([task(1, "other", 0, C1), task(2, "x", 0, C2)], {}, 0.0, 0.0)
    assert groups(snap) == {("x",): tuple(C2), ("other",): tuple(C1)}
    assert snap.series_overflow == 0
    assert [key for key, _ in snap.groups].count(("other",)) == 1


def test_top_processes_are_the_busiest_by_bytes() -> None:
    b = book(top_processes=2)
    tasks = [task(1, "a", 0, C1), task(2, "b", 0, C2), task(3, "c", 0, [0, 5000, 0, 0] * 2)]
    snap = b.publish(tasks, {}, 0.0, 0.0)
    assert [(pid, command) for pid, command, _ in snap.processes] == [(2, "b"), (3, "c")]
    assert book().publish(tasks, {}, 0.0, 0.0).processes == ()


def test_publish_is_due_once_a_second() -> None:
    b = book()
    assert b.due(100.0)
    b.publish([], {}, 100.0, 0.0)
    assert not b.due(100.9) and b.due(101.0)


def test_user_names_fall_back_to_the_uid() -> None:
    names = UserNames()
    assert names(0) == "root"
    assert names(-1) == "unknown"
    assert names(4_000_000_000) == "4000000000"  # no such user


# -- the collector -------------------------------------------------------------------------

FIGURES: dict[str, object] = {
    "tcp_sent": 7,
    "udp_sent": 3,
    "icmp_sent": 1,
    "tcp_received": 6,
    "udp_received": 2,
    "icmp_received": 0,
    "tcp_sent_unidentified": 1,
    "udp_sent_unidentified": 0,
    "tcp_received_unidentified": 2,
    "udp_received_unidentified": 1,
    "malformed": 4,
    "capture_dropped": 5,
    "capture_interface_dropped": 0,
    "flows": 12,
    "flows_pending": 1,
    "flows_overflow": 0,
    "tasks": 3,
    "tasks_overflow": 0,
    "exited": 2,
    "owner_latency_ms_p50": 1.5,
    "owner_latency_ms_p99": 20.0,
    "owner_latency_ms_max": 40.0,
    "history_pending": 8,
    "history_dropped": 0,
    "history_write_errors": 1,
    "ownership": "kernel",
}


def exposition(snapshot: MetricsSnapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_catalogue_figure_is_a_status_field() -> None:
    for entry in HEALTH:
        for figure, _ in entry.figures:
            assert figure in FIELDS, figure
    assert set(health_figures()) <= set(FIELDS)
    assert {figure for entry in HEALTH for figure, _ in entry.figures} | {"ownership"} == set(
        FIGURES
    )


def test_collector_shows_groups_processes_and_health() -> None:
    b = book(top_processes=1, caps={"max_flows": 200, "max_tasks": 100})
    snap = b.publish([task(7, "nginx", 1000, C1)], FIGURES, 0.0, 5.0)
    got = samples(exposition(snap))
    nginx = {("command", "nginx"), ("user", "alice")}
    assert got[("netatop_sent_packets_total", frozenset({("protocol", "tcp"), *nginx}))] == 1
    assert got[("netatop_sent_bytes_total", frozenset({("protocol", "udp"), *nginx}))] == 300
    assert got[("netatop_received_packets_total", frozenset({("protocol", "udp"), *nginx}))] == 4
    assert got[("netatop_received_bytes_total", frozenset({("protocol", "tcp"), *nginx}))] == 200
    proc = {("pid", "7"), ("command", "nginx"), ("protocol", "udp")}
    assert got[("netatop_process_received_bytes_total", frozenset(proc))] == 400
    assert got[("netatop_host_sent_packets_total", frozenset({("protocol", "icmp")}))] == 1
    assert (
        got[("netatop_unidentified_received_packets_total", frozenset({("protocol", "tcp")}))] == 2
    )
    assert got[("netatop_malformed_packets_total", frozenset())] == 4
    assert got[("netatop_capture_dropped_packets_total", frozenset())] == 5
    assert got[("netatop_flows", frozenset())] == 12
    assert got[("netatop_flows_max", frozenset())] == 200
    assert got[("netatop_tasks_max", frozenset())] == 100
    assert got[("netatop_history_write_errors_total", frozenset())] == 1
    assert got[("netatop_owner_resolution_seconds", frozenset({("quantile", "0.99")}))] == 0.02
    assert got[("netatop_ebpf_helper_loaded", frozenset())] == 1
    assert got[("netatop_build_info", frozenset({("version", "0.1.0")}))] == 1
    assert got[("netatop_metrics_series_overflow_total", frozenset())] == 0
    assert not any(name.startswith("netatop_forwarded") for name, _ in got)


def test_absent_figures_make_no_family_and_forwarded_ones_appear_when_present() -> None:
    figures = {"tcp_sent": 1, "forwarded_packets": 9, "forwarded_bytes": 900, "ownership": "proc"}
    got = samples(exposition(book().publish([], figures, 0.0, 0.0)))
    assert got[("netatop_forwarded_packets_total", frozenset())] == 9
    assert got[("netatop_forwarded_bytes_total", frozenset())] == 900
    assert got[("netatop_ebpf_helper_loaded", frozenset())] == 0
    assert not any(name.startswith("netatop_history") for name, _ in got)
    assert not any(name.startswith("netatop_owner_resolution") for name, _ in got)


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup installs the Debian package prometheus"
    b = book(top_processes=2, max_series=1, caps={"max_flows": 200, "max_tasks": 100})
    snap = b.publish(
        [task(1, 'we"ird\\na\nme', 0, C1), task(2, "b", 1000, C2)],
        {**FIGURES, "forwarded_packets": 3},
        0.0,
        0.0,
    )
    done = subprocess.run(
        [promtool, "check", "metrics"], input=exposition(snap), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# -- the engine's wiring -------------------------------------------------------------------


class FakeCapture:
    lanes: list[object] = [object()]
    fallback = ""

    def stats(self) -> CaptureStats:
        return CaptureStats(10, 2, 0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    now = {"s": 1000.0}
    options = resolve(
        [
            "--run-dir",
            str(tmp_path),
            "--no-history",
            "--ownership",
            "proc",
            "--metrics-listen",
            "127.0.0.1:9477",
        ],
        environ={},
    )
    clock = Clock(wall=lambda: now["s"], monotonic=lambda: now["s"])
    e = Engine(options, FakeCapture(), clock)  # type: ignore[arg-type]
    e.now = now  # type: ignore[attr-defined]
    try:
        yield e
    finally:
        e.table.close(unlink=True)
        e.sockdiag.close()


def test_engine_publishes_and_folds_in_finished_processes(engine: Engine) -> None:
    assert engine.metrics is not None
    t = task(os.getpid(), "pytest", 0, C1)
    engine.tasks.admit(t)
    engine.publish()
    snap = engine.metrics.snapshot
    before = groups(snap)[("pytest", "root")]
    assert before == tuple(C1)
    assert snap.figures["capture_dropped"] == 2 and snap.figures["ownership"] == "proc"
    assert snap.caps == {"max_flows": engine.options.max_flows, "max_tasks": 100_000}
    engine.registry.finish([t], 1000.0)  # the registry's one way out: exit list -> book
    engine.now["s"] += 1.0  # type: ignore[attr-defined]
    engine.publish()
    assert engine.metrics.snapshot is not snap
    assert groups(engine.metrics.snapshot)[("pytest", "root")] == before


def test_engine_without_metrics_has_no_book(tmp_path: Path) -> None:
    options = resolve(["--run-dir", str(tmp_path), "--no-history"], environ={})
    assert not options.metrics_listen
    options.ownership = "proc"
    e = Engine(options, FakeCapture())  # type: ignore[arg-type]
    try:
        assert e.metrics is None and e.exit_list.listeners == []
    finally:
        e.table.close(unlink=True)
        e.sockdiag.close()


# -- the HTTP server -----------------------------------------------------------------------


@pytest.fixture
def big_book() -> MetricsBook:
    """A book whose scrape is about a megabyte: a client that never reads blocks its writer."""
    b = book()
    b.publish([task(i + 1, f"cmd{i}", 0, C1) for i in range(3000)], FIGURES, 0.0, 0.0)
    return b


@pytest.fixture
def server(big_book: MetricsBook) -> Iterator[metrics_http.MetricsServer]:
    s = metrics_http.MetricsServer("127.0.0.1:0", big_book)
    try:
        yield s
    finally:
        s.close()


def scrape(server: metrics_http.MetricsServer) -> str:
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def test_server_serves_while_hostile_clients_hang(
    server: metrics_http.MetricsServer, big_book: MetricsBook
) -> None:
    hostile: list[socket.socket] = []
    try:
        silent = socket.create_connection(server.address)  # connects, says nothing
        trickle = socket.create_connection(server.address)
        trickle.sendall(b"GE")  # a request byte by byte, never finished
        deaf = socket.socket()
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.connect(server.address)
        deaf.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # asks and never reads
        hostile += [silent, trickle, deaf]
        time.sleep(0.5)
        # The writer to 'deaf' is stuck with most of a megabyte unsent; others are served,
        # and the loop side publishes without waiting for anyone.
        started = time.monotonic()
        big_book.publish([task(1, "cmd0", 0, C2)], FIGURES, 1.0, 1.0)
        assert time.monotonic() - started < 5.0  # generous: a stall would be forever
        text = scrape(server)
        assert 'netatop_sent_bytes_total{command="cmd0",protocol="tcp",user="root"} 1000.0' in text
        assert server.stats()["served"] >= 1
    finally:
        for conn in hostile:
            conn.close()


def test_server_caps_connections_and_shuts_late_ones(
    monkeypatch: pytest.MonkeyPatch, big_book: MetricsBook
) -> None:
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(metrics_http, "DEADLINE_S", 1.0)
    monkeypatch.setattr(metrics_http, "POLL_INTERVAL_S", 0.05)
    s = metrics_http.MetricsServer("127.0.0.1:0", big_book)
    idle = [socket.create_connection(s.address) for _ in range(2)]
    try:
        time.sleep(0.3)
        third = socket.create_connection(s.address)
        third.settimeout(5)
        assert third.recv(1) == b""  # closed at once: both places are taken
        third.close()
        assert s.stats()["refused"] == 1
        for conn in idle:
            conn.settimeout(5)
            assert conn.recv(1) == b""  # shut down at the deadline
        assert s.stats()["expired"] == 2
        deadline = time.monotonic() + 5
        while s.httpd.open and time.monotonic() < deadline:  # the handlers' threads end
            time.sleep(0.01)
        assert "netatop_build_info" in scrape(s)  # places free again
    finally:
        for conn in idle:
            conn.close()
        s.close()


def test_server_refuses_a_port_in_use(big_book: MetricsBook) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(MetricsListenError, match="cannot listen"):
            metrics_http.MetricsServer(f"127.0.0.1:{taken.getsockname()[1]}", big_book)
    finally:
        taken.close()


def test_the_manual_page_lists_every_metric() -> None:
    page = (Path(__file__).resolve().parents[2] / "man" / "netatopd.8").read_text()
    metrics_section = page[page.index(".SH METRICS") : page.index(".SH SIGNALS")]
    b = book(top_processes=1, caps={"max_flows": 1, "max_tasks": 1})
    snap = b.publish([task(1, "a", 0, C1)], FIGURES, 0.0, 0.0)
    names = {family.name for family in text_string_to_metric_families(exposition(snap))}
    assert len(names) > 25
    for name in names:
        counter = f"{name}_total"
        assert name in metrics_section or counter in metrics_section, name
    assert "netatop_forwarded_*_total" in metrics_section
