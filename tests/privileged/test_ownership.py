"""Owners from the kernel: the optional eBPF helper (--ownership kernel).

Ground truth as in test_daemon.py (TCP_INFO per socket, datagrams x size),
now per thread: each thread reports its own tid (threading.get_native_id)
and its own connection's TCP_INFO.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netatopd.ebpf import loaded_object_ids

from harness import UDP4_OVERHEAD, Actor, Daemon, attributed_packets, fix_tcp_header_sizes
from test_daemon import ZERO_UDP, expected_tcp

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(make_netns: Any) -> Any:
    netns = make_netns("ntpo")
    fix_tcp_header_sizes(netns)
    return netns


@pytest.fixture
def daemons(ns: Any, tmp_path: Path) -> Any:
    started: list[Daemon] = []

    def start(*options: str) -> Daemon:
        d = Daemon(ns, tmp_path / f"run{len(started)}", *options)
        started.append(d)
        return d

    yield start
    for d in started:
        assert d.stop() == 0, d.logs()


def test_thread_counters_are_exact(ns: Any, daemons: Any) -> None:
    """3 threads, each with its own TCP connection; thread 0 also 12 UDP datagrams of 70 bytes each way."""
    d = daemons("--ownership", "kernel")
    assert d.status()["ownership"] == "kernel"
    server = Actor(
        ns,
        "threaded_tcp_server",
        addr="127.0.0.1",
        connections=3,
        rounds=8,
        request_bytes=200,
        reply_bytes=300,
    )
    client = Actor(
        ns,
        "threaded_client",
        addr="127.0.0.1",
        port=server.port,
        udp_port=server_udp_port(server),
        threads=3,
        rounds=8,
        request_bytes=200,
        reply_bytes=300,
        datagrams=12,
        datagram_bytes=70,
    )
    try:
        assert client.read()["done"]
        assert server.read()["served"] == 3
        time.sleep(0.2)
        client.tell("measure")
        threads = client.read()["threads"]
        d.sync()
        total = [0] * 8
        with d.client() as c:
            for index, thread in enumerate(threads):
                expected = {**expected_tcp(thread), **ZERO_UDP}
                if index == 0:
                    per = 70 + UDP4_OVERHEAD
                    expected.update(
                        udpsndpacks=12, udpsndbytes=12 * per, udprcvpacks=12, udprcvbytes=12 * per
                    )
                got = c.getcnt_pid(thread["tid"])
                assert got.id == thread["tid"]
                assert got.as_dict() == expected, (index, thread)
                total = [a + b for a, b in zip(total, got.counters, strict=True)]
            # The process is the sum of its threads; its main thread did no networking.
            assert list(c.getcnt_tgid(client.pid).counters) == total
            with pytest.raises(ProcessLookupError):
                c.getcnt_pid(client.pid)
    finally:
        client.finish()
        server.finish()


def server_udp_port(server: Actor) -> int:
    return int(server.first["udp_port"])


def test_connected_in_one_thread_used_by_another(ns: Any, daemons: Any) -> None:
    """The connecting thread owns an actively opened connection, whoever sends on it later.

    That is the rule because connect() is the one moment the kernel runs in the
    opener's context for certain; later sends may come from any worker.
    """
    d = daemons("--ownership", "kernel")
    server = Actor(ns, "tcp_server", addr="127.0.0.1", rounds=5, request_bytes=100, reply_bytes=100)
    client = Actor(
        ns,
        "handoff_client",
        addr="127.0.0.1",
        port=server.port,
        rounds=5,
        request_bytes=100,
        reply_bytes=100,
    )
    try:
        info = client.read()
        assert server.read()["done"]
        time.sleep(0.2)
        client.tell("measure")
        server.tell("measure")
        measured, _ = client.read(), server.read()
        d.sync()
        with d.client() as c:
            assert c.getcnt_pid(info["connector"]).as_dict() == {
                **expected_tcp(measured),
                **ZERO_UDP,
            }
            with pytest.raises(ProcessLookupError):
                c.getcnt_pid(info["user"])
    finally:
        client.finish()
        server.finish()


def attributed_share(d: Daemon, ns: Any, lifetime_ms: int) -> tuple[int, int]:
    server = Actor(ns, "tcp_echo_server", addr="127.0.0.1", connections=50, message_bytes=100)
    clients = Actor(
        ns,
        "short_lived_clients",
        addr="127.0.0.1",
        port=server.port,
        count=50,
        message_bytes=100,
        lifetime_ms=lifetime_ms,
    )
    try:
        children = clients.read(timeout_s=60)["children"]
        assert server.read()["served"] == 50
        d.sync()
        attributed, truth, _ = attributed_packets(d, children)
        return attributed, truth
    finally:
        server.finish()
        clients.finish()


def test_processes_of_a_few_milliseconds(ns: Any, daemons: Any) -> None:
    """50 processes living about 10 ms each: every packet attributed with the helper."""
    with_helper = attributed_share(
        daemons("--ownership", "kernel", "--exit-lifetime-s", "120"), ns, 10
    )
    without = attributed_share(daemons("--ownership", "proc", "--exit-lifetime-s", "120"), ns, 10)
    print(
        f"10 ms processes: with the eBPF helper {with_helper[0]}/{with_helper[1]} packets, "
        f"with /proc only {without[0]}/{without[1]}"
    )
    assert with_helper[0] == with_helper[1]
    assert without[0] <= without[1]


def test_helper_unavailable_falls_back_to_proc(ns: Any, daemons: Any, tmp_path: Path) -> None:
    os.environ["NETATOPD_SIMULATE_EBPF_FAILURE"] = "1"
    try:
        d = daemons("--ownership", "auto")
        status = d.status()
        assert status["ownership"] == "proc"
        assert "simulated load failure" in status["ownership_note"]
        # --ownership kernel refuses to run without the helper, with a sentence and status 6.
        failed = subprocess.run(
            [
                *ns.exec_prefix,
                sys.executable,
                "-m",
                "netatopd.daemon",
                "--ownership",
                "kernel",
                "--run-dir",
                str(tmp_path / "k"),
                "--no-history",
                "--no-atop-socket",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        del os.environ["NETATOPD_SIMULATE_EBPF_FAILURE"]
    assert failed.returncode == 6
    assert "eBPF ownership helper did not load: simulated load failure" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_nothing_stays_loaded_after_the_daemon_stops(ns: Any, daemons: Any) -> None:
    d = daemons("--ownership", "kernel")
    programs, maps = loaded_object_ids()
    assert programs and maps  # ours, named ntp_*
    assert d.stop() == 0
    deadline = time.monotonic() + 10
    while loaded_object_ids() != ([], []) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees maps shortly after the last descriptor closes
    assert loaded_object_ids() == ([], [])
