"""End to end: netatopd --metrics-listen scraped by a real Prometheus server in a namespace.

The daemon, the traffic actors (actors.py, run under chosen command names and
users by metrics_identity.py), a real ``prometheus`` (Debian package
prometheus: scrape interval 1 s, its own configuration and data directory
under tmp_path) and ``curl`` all run inside a network namespace the test
makes.  Ground truth: datagrams x wire size for UDP, TCP_INFO for TCP (as in
test_daemon.py), summed per group of command and user.  Prometheus's HTTP
query API must return exactly that for each group, keep it when the
processes exit, and add exactly the traffic of later processes.  The PromQL
queries of the README are run as written there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netatopd.protocol import COUNTER_NAMES
from netatopd.table import TableReader, table_path

from harness import UDP4_OVERHEAD, Actor, Daemon, fix_tcp_header_sizes
from test_daemon import expected_tcp

pytestmark = pytest.mark.privileged

IDENTITY = str(Path(__file__).with_name("metrics_identity.py"))
README = Path(__file__).resolve().parents[2] / "README.md"
NOBODY = 65534
METRICS_PORT = 9477
PROMETHEUS_PORT = 9090
WAIT_S = 30.0
# (metric, protocol) -> counter of struct taskcount
SERIES = {
    (f"netatop_{direction}_{unit}_total", protocol): f"{protocol}{short}{unit_short}"
    for direction, short in (("sent", "snd"), ("received", "rcv"))
    for unit, unit_short in (("packets", "packs"), ("bytes", "bytes"))
    for protocol in ("tcp", "udp")
}
GROUP_SERIES = r'{__name__=~"netatop_(sent|received)_(packets|bytes)_total",command=~"mx.*"}'


class Identity:
    """A stand-in for a namespace whose actors run as COMMAND and UID."""

    def __init__(self, netns: Any, command: str, uid: int) -> None:
        self.exec_prefix = [*netns.exec_prefix, sys.executable, "-u", IDENTITY, command, str(uid)]


def actor(netns: Any, command: str, uid: int, role: str, **args: Any) -> Actor:
    return Actor(Identity(netns, command, uid), role, **args)


def zero() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)


def add(*parts: dict[str, int]) -> dict[str, int]:
    total = zero()
    for part in parts:
        for name, value in part.items():
            total[name] += value
    return total


def udp_truth(count: int, sent_bytes: int, received_bytes: int) -> dict[str, int]:
    """A UDP peer that sent count datagrams of sent_bytes and received count of received_bytes."""
    return {
        **zero(),
        "udpsndpacks": count,
        "udpsndbytes": count * (sent_bytes + UDP4_OVERHEAD),
        "udprcvpacks": count,
        "udprcvbytes": count * (received_bytes + UDP4_OVERHEAD),
    }


def udp_exchange(
    ns: Any, d: Daemon, client: str, server: str, count: int, size: int, reply: int
) -> None:
    """client (root) sends count datagrams of size to server (nobody), which answers each.

    Both live until the daemon has given each its exact counters, so it reads
    their identity (user) from /proc: a process gone before its owner lookup is
    named by the eBPF helper's record alone, which carries no uid (user
    'unknown'), or with owners from /proc only may not be found at all.
    """
    sink = actor(ns, server, NOBODY, "udp_server", addr="127.0.0.1", count=count, reply_bytes=reply)
    source = actor(
        ns,
        client,
        0,
        "udp_client",
        addr="127.0.0.1",
        port=sink.port,
        count=count,
        size=size,
        expect_reply=True,
    )
    try:
        assert source.read()["sent"] == count and sink.read()["received"] == count
        d.sync()
        assert until(lambda: counters_or_none(d, source.pid), udp_truth(count, size, reply))
        assert until(lambda: counters_or_none(d, sink.pid), udp_truth(count, reply, size))
    finally:
        source.finish()
        sink.finish()


class Prometheus:
    """A real Prometheus server in the namespace, scraping the daemon every second."""

    def __init__(self, ns: Any, tmp_path: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: scripts/setup installs the Debian package"
        self.ns = ns
        self.url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: netatop\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log_path = tmp_path / "prometheus.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *ns.exec_prefix,
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_S
        while subprocess.run(
            [*ns.exec_prefix, "curl", "-sf", "-o", "/dev/null", f"{self.url}/-/ready"],
            timeout=10,
        ).returncode:
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, (
                "prometheus not ready:\n" + self.log_path.read_text()
            )
            time.sleep(0.2)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        args = ["curl", "-sf", "--get", "--data-urlencode", f"query={promql}"]
        if at is not None:
            args += ["--data-urlencode", f"time={at:.3f}"]
        answer = json.loads(self.ns.run(*args, f"{self.url}/api/v1/query"))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def groups(self, at: float | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """Every mx* group's counters, as Prometheus has them (at a time, or now)."""
        found: dict[tuple[str, str], dict[str, int]] = {}
        for series in self.query(GROUP_SERIES, at):
            labels = series["metric"]
            counter = SERIES[(labels["__name__"], labels["protocol"])]
            group = found.setdefault((labels["command"], labels["user"]), zero())
            group[counter] = int(float(series["value"][1]))
        return found

    def wait_groups(self, truth: dict[tuple[str, str], dict[str, int]]) -> float:
        """Until Prometheus shows exactly truth (bounded); the time of the query that did."""
        deadline = time.monotonic() + WAIT_S
        while True:
            at = time.time()
            got = self.groups(at)
            if got == truth or time.monotonic() > deadline:
                assert got == truth
                return at
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def readme_queries() -> list[str]:
    """The PromQL queries of the README's ```promql block, one a line after its comment."""
    block = re.search(r"```promql\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no promql block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def finish_and_sweep(d: Daemon, *actors: Actor) -> dict[int, dict[str, int]]:
    """The actors exit and the daemon finishes them; their exit-list counters by pid."""
    for a in actors:
        a.finish()
    d.sync()
    with d.client() as c:
        c.force_gc()
        exited = {record.id: record for record in c.list_exited()}
    assert {a.pid for a in actors} <= set(exited)  # finished: out of the task table
    return {a.pid: dict(zip(COUNTER_NAMES, exited[a.pid].counters, strict=True)) for a in actors}


def test_prometheus_sees_exact_group_totals_across_exits(make_netns: Any, tmp_path: Path) -> None:
    ns = make_netns("ntmp")
    fix_tcp_header_sizes(ns)
    d = Daemon(
        ns,
        tmp_path / "run",
        "--metrics-listen",
        f"127.0.0.1:{METRICS_PORT}",
        "--unowned-limit-s",
        "1",
    )
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(ns, tmp_path, f"127.0.0.1:{METRICS_PORT}")

        # Phase 1, running: mxalpha (root) talks UDP to mxsink (nobody) and TCP to mxbeta (nobody).
        sink = actor(
            ns, "mxsink", NOBODY, "udp_server", addr="127.0.0.1", count=50, reply_bytes=700
        )
        alpha_udp = actor(
            ns,
            "mxalpha",
            0,
            "udp_client",
            addr="127.0.0.1",
            port=sink.port,
            count=50,
            size=300,
            expect_reply=True,
        )
        assert alpha_udp.read()["sent"] == 50 and sink.read()["received"] == 50
        beta = actor(
            ns,
            "mxbeta",
            NOBODY,
            "tcp_server",
            addr="127.0.0.1",
            rounds=5,
            request_bytes=400,
            reply_bytes=900,
        )
        alpha_tcp = actor(
            ns,
            "mxalpha",
            0,
            "tcp_client",
            addr="127.0.0.1",
            port=beta.port,
            rounds=5,
            request_bytes=400,
            reply_bytes=900,
        )
        assert alpha_tcp.read()["done"] and beta.read()["done"]
        time.sleep(0.2)  # quiet: nothing more is in flight
        alpha_tcp.tell("measure")
        beta.tell("measure")
        client_info, server_info = alpha_tcp.read(), beta.read()
        d.sync()
        phase1 = {
            ("mxalpha", "root"): add(udp_truth(50, 300, 700), expected_tcp(client_info)),
            ("mxsink", "nobody"): udp_truth(50, 700, 300),
            ("mxbeta", "nobody"): add(expected_tcp(server_info, passive=True)),
        }
        prometheus.wait_groups(phase1)

        # Every process exits: the groups keep their totals.  Closing the TCP connection
        # adds its FIN and ACK segments after the TCP_INFO reading: a group's total is
        # then exactly the final counters of its finished processes (the exit list), and
        # its UDP counters still the datagram truth.
        final = finish_and_sweep(d, alpha_udp, sink, alpha_tcp, beta)
        after_exit = {
            ("mxalpha", "root"): add(final[alpha_udp.pid], final[alpha_tcp.pid]),
            ("mxsink", "nobody"): final[sink.pid],
            ("mxbeta", "nobody"): final[beta.pid],
        }
        for key, counters in after_exit.items():
            for name, value in counters.items():
                if name.startswith("udp"):
                    assert value == phase1[key][name], (key, name)
                else:
                    assert value >= phase1[key][name], (key, name)
        time.sleep(3.0)  # a publish (1 s) and scrapes (1 s) after the exits
        at_exit = prometheus.wait_groups(after_exit)

        # Phase 2: new processes of two of the groups; totals grow by exactly their traffic.
        udp_exchange(ns, d, "mxalpha", "mxsink", 20, 200, 100)
        d.sync()
        with d.client() as c:
            c.force_gc()
        phase2 = {
            ("mxalpha", "root"): udp_truth(20, 200, 100),
            ("mxsink", "nobody"): udp_truth(20, 100, 200),
            ("mxbeta", "nobody"): zero(),
        }
        both = {key: add(value, phase2[key]) for key, value in after_exit.items()}
        time.sleep(3.0)
        now = prometheus.wait_groups(both)
        # What each series gained since the exits, read at two instants (increase()
        # extrapolates to the window's edges, so it is not exact; this is).
        window_ms = int((now - at_exit) * 1000)
        for (metric, protocol), counter in SERIES.items():
            selector = f'{metric}{{command=~"mx.*",protocol="{protocol}"}}'
            gained = {
                (s["metric"]["command"], s["metric"]["user"]): int(float(s["value"][1]))
                for s in prometheus.query(f"{selector} - {selector} offset {window_ms}ms", now)
            }
            assert gained == {key: phase2[key][counter] for key in phase2}, (metric, protocol)
        for metric in {metric for metric, _ in SERIES}:
            resets = prometheus.query(f'resets({metric}{{command=~"mx.*"}}[5m])', now)
            assert len(resets) == 3 * 2, resets  # three groups, two protocols
            assert all(float(series["value"][1]) == 0 for series in resets)  # never went back

        # Unidentified traffic: datagrams to a closed port, received by no process.
        unidentified_udp = 'netatop_unidentified_received_packets_total{protocol="udp"}'
        before = float(prometheus.query(unidentified_udp)[0]["value"][1])
        probe = actor(
            ns,
            "mxprobe",
            0,
            "udp_client",
            addr="127.0.0.1",
            port=9,
            count=30,
            size=10,
            expect_reply=False,
        )
        assert probe.read()["sent"] == 30
        probe.finish()
        d.sync()
        deadline = time.monotonic() + WAIT_S
        while True:
            value = float(prometheus.query(unidentified_udp)[0]["value"][1])
            if value == before + 30 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert value == before + 30

        # The README's queries, as written there.
        top, per_user, share = readme_queries()
        commands = {s["metric"]["command"]: float(s["value"][1]) for s in prometheus.query(top)}
        assert all(set(s["metric"]) == {"command"} for s in prometheus.query(top))
        assert {"mxalpha", "mxsink", "mxbeta"} <= set(commands)
        # rate() sees what grew between scrapes: a group's traffic before its first
        # scrape is not in it (mxbeta's and mxprobe's), phase 2's is.
        assert commands["mxalpha"] > 0 and commands["mxsink"] > 0
        users = {s["metric"]["user"]: float(s["value"][1]) for s in prometheus.query(per_user)}
        # (curl, short-lived, may be 'unknown' with the eBPF helper: see udp_exchange)
        assert {"root", "nobody"} <= set(users) and users["nobody"] > 0 and users["root"] > 0
        shares = prometheus.query(share)
        assert len(shares) == 1 and shares[0]["metric"] == {}
        assert 0 < float(shares[0]["value"][1]) < 1

        # promtool on a scrape of the daemon.
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: scripts/setup installs the Debian package prometheus"
        text = ns.run("curl", "-sf", f"http://127.0.0.1:{METRICS_PORT}/metrics")
        assert "netatop_build_info" in text
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = d.stop()
    assert code == 0, d.logs()


HOSTILE = r"""
import select, socket, sys, time
address = ("127.0.0.1", int(sys.argv[1]))
trickle = socket.create_connection(address)
deaf = socket.socket()
deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
deaf.connect(address)
deaf.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
time.sleep(0.2)  # both served first; then more idle connections than the server has places
silent = [socket.create_connection(address) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
request = b"GET /metrics HTTP/1.0\r\nHost: x\r\n"
sent = 0
for i in range(300):  # a byte every 0.1 s, never the end of the request; at most 30 s
    if select.select([sys.stdin], [], [], 0.1)[0]:
        break
    try:
        sent += trickle.send(request[i % len(request) : i % len(request) + 1])
    except OSError:
        pass
print("done", sent, flush=True)
"""


def until(read: Any, expected: object) -> bool:
    """read() until it returns expected (bounded by WAIT_S); False if it never did."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = read()
        if got == expected:
            return True
        if time.monotonic() > deadline:
            print(f"never {expected}; last {got}")
            return False
        time.sleep(0.25)


def counters_or_none(d: Daemon, pid: int) -> dict[str, int] | None:
    try:
        return d.counters(pid)
    except ProcessLookupError:  # no task yet: its owner is still being looked up
        return None


def scrape(ns: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = ns.run("curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{METRICS_PORT}/metrics")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_series_cap_and_hostile_scrapers(make_netns: Any, tmp_path: Path) -> None:
    """Past --metrics-max-series groups count in 'other'; scrapers that hang stop no counting."""
    ns = make_netns("ntmc")
    run = tmp_path / "run"
    d = Daemon(
        ns,
        run,
        "--metrics-listen",
        f"127.0.0.1:{METRICS_PORT}",
        "--metrics-max-series",
        "2",
        "--metrics-top-processes",
        "100",
        # Owners from /proc only: the short-lived curl of each scrape is then never a group
        # of the eBPF helper's records (user 'unknown', see udp_exchange) taking a place.
        "--ownership",
        "proc",
    )
    hostile: subprocess.Popen[str] | None = None
    try:
        # The first scrapes make the two groups with places: the daemon's own and curl's.
        # A curl that ends as its answer comes is often gone before its flow's owner is
        # looked up (always, on a loaded machine); this one waits a second on its open
        # connection between two requests, so that /proc still shows it.
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        lingering = ["curl", "-sf", "--rate", "1/s", "-o", "/dev/null", "-o", "/dev/null"]
        for _ in range(10):
            ns.run(*lingering, url, url)
            if scrape(ns).get(("netatop_metrics_groups", frozenset())) == 2:
                break
        assert scrape(ns)[("netatop_metrics_groups", frozenset())] == 2

        # Every connection place taken and held by clients that never finish a request.
        hostile = subprocess.Popen(
            [*ns.exec_prefix, sys.executable, "-c", HOSTILE, str(METRICS_PORT), "16"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert hostile.stdout is not None and hostile.stdout.readline() == "ready\n"
        with TableReader(table_path(str(run))) as table:
            published = table.snapshot().updated_s
            sink = actor(
                ns, "mxsink", NOBODY, "udp_server", addr="127.0.0.1", count=40, reply_bytes=200
            )
            alpha = actor(
                ns,
                "mxalpha",
                0,
                "udp_client",
                addr="127.0.0.1",
                port=sink.port,
                count=40,
                size=100,
                expect_reply=True,
            )
            assert alpha.read()["sent"] == 40 and sink.read()["received"] == 40
            d.sync()
            # Counted exactly while the scrapers hang, and the shared table keeps updating.
            # (Counted at SYNC; the owners of the last flows may still be looked up in
            # their turn behind the hostile connections' flows: asked until settled.)
            assert until(lambda: counters_or_none(d, alpha.pid), udp_truth(40, 100, 200))
            assert until(lambda: counters_or_none(d, sink.pid), udp_truth(40, 200, 100))
            time.sleep(1.5)
            assert table.snapshot().updated_s > published
        assert hostile.poll() is None  # still hanging on
        hostile.stdin.write("exit\n")  # type: ignore[union-attr]
        hostile.stdin.flush()  # type: ignore[union-attr]
        assert hostile.stdout.readline().startswith("done")
        hostile.wait(timeout=10)

        udp_exchange(ns, d, "mxgamma", "mxsink", 30, 50, 300)
        # The top processes: the running mxalpha by its pid, exactly.
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                got = scrape(ns)
                break
            except subprocess.CalledProcessError:  # places still held by ending threads
                assert time.monotonic() < deadline
                time.sleep(0.5)
        process = frozenset({("pid", str(alpha.pid)), ("command", "mxalpha"), ("protocol", "udp")})
        assert got[("netatop_process_sent_bytes_total", process)] == 40 * (100 + UDP4_OVERHEAD)
        finish_and_sweep(d, alpha, sink)
        truth = add(
            udp_truth(40, 100, 200),
            udp_truth(40, 200, 100),
            udp_truth(30, 50, 300),
            udp_truth(30, 300, 50),
        )
        other = {("command", "other"), ("user", "other")}

        def other_counters() -> dict[str, int]:
            got = scrape(ns)
            return {
                counter: int(got.get((metric, frozenset({("protocol", protocol), *other})), -1))
                for (metric, protocol), counter in SERIES.items()
            }

        assert until(other_counters, truth)
        got = scrape(ns)
        group_metrics = {metric for metric, _ in SERIES}
        assert not any(
            name in group_metrics and dict(labels)["command"].startswith("mx")
            for name, labels in got
        )
        # mxalpha/root, mxsink/nobody, mxgamma/root
        assert got[("netatop_metrics_series_overflow_total", frozenset())] == 3
    finally:
        if hostile is not None and hostile.poll() is None:
            hostile.kill()
            hostile.wait()
        code = d.stop()
    assert code == 0, d.logs()
