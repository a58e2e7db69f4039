"""Calibrated struct offsets on the real kernel (root).

Ground truth: this kernel's BTF (/sys/kernel/btf/vmlinux), read by btf.py,
whose offsets the existing tests check against the known x86-64 layout; the
calibration must give exactly the same.  For attribution without BTF: a
workload inside a namespace made by the fixture reports its own pid, thread
id and ports, and the helper loaded with a missing BTF file must record
exactly those.  "Nothing stays loaded": the ids of every program and map the
calibration created (caught as they are created) are gone after it returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netatopd.ebpf import (
    EbpfUnavailable,
    KernelOwnership,
    OwnerKind,
    calibrate,
    helper,
    loaded_object_ids,
    namespace_inode,
    syscalls,
)
from netatopd.ebpf.btf import VMLINUX_BTF_PATH, Btf, net_offsets, sock_offsets
from netatopd.ebpf.programs import TRACEFS_ROOT, read_format

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpC"
FREE_WAIT_S = 5.0
WORKLOAD_TIMEOUT_S = 60
LOOPBACK4 = bytes([127, 0, 0, 1])
TCP = 6


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("PRIVILEGED TEST SKIPPED: the eBPF helper needs root (bpf, perf_event_open)")


def btf_or_skip() -> Btf:
    if not VMLINUX_BTF_PATH.exists():
        pytest.skip("PRIVILEGED TEST SKIPPED: no /sys/kernel/btf/vmlinux to compare with")
    return Btf.from_file()


def catch_created_ids(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """(program ids, map ids) of every program and map created from now on."""
    progs: list[int] = []
    maps: list[int] = []
    real_map_create, real_prog_load = syscalls.map_create, syscalls.prog_load

    def map_create(*args: Any, **kwargs: Any) -> int:
        fd = real_map_create(*args, **kwargs)
        maps.append(syscalls.object_id(fd))
        return fd

    def prog_load(*args: Any, **kwargs: Any) -> int:
        fd = real_prog_load(*args, **kwargs)
        progs.append(syscalls.object_id(fd))
        return fd

    monkeypatch.setattr(syscalls, "map_create", map_create)
    monkeypatch.setattr(syscalls, "prog_load", prog_load)
    return progs, maps


def still_loaded(prog_ids: list[int], map_ids: list[int]) -> tuple[set[int], set[int]]:
    """Those of the ids still loaded after at most FREE_WAIT_S (freeing is asynchronous)."""
    deadline = time.monotonic() + FREE_WAIT_S
    while True:
        progs, maps = loaded_object_ids()
        left = (set(prog_ids) & set(progs), set(map_ids) & set(maps))
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def test_calibration_gives_exactly_the_btf_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    root_or_skip()
    btf = btf_or_skip()
    created = catch_created_ids(monkeypatch)
    try:
        found = calibrate.calibrate(read_format("sock", "sock_send_length"))
    except calibrate.CalibrationError as err:
        pytest.fail(f"calibration failed on this kernel: {err}")
    assert found == (sock_offsets(btf), net_offsets(btf))
    # one program and one map, both named ntp_calib, and both gone now
    assert [len(ids) for ids in created] == [1, 1]
    assert still_loaded(*created) == (set(), set())


def test_calibration_in_another_namespace_finds_its_inode(
    make_netns: Callable[..., Any],
) -> None:
    # the same offsets, found from sockets of a fresh namespace (its struct net
    # is allocated, not init_net): run in a child process inside it
    root_or_skip()
    btf = btf_or_skip()
    netns = make_netns(NETNS_PREFIX)
    # ip netns exec mounts its own /sys (no tracefs): the format comes on stdin
    script = """
        import json, sys
        from netatopd.ebpf.calibrate import calibrate
        from netatopd.ebpf.programs import parse_format
        sock, net = calibrate(parse_format("sock", "sock_send_length", sys.stdin.read()))
        print(json.dumps([list(sock), list(net)]))
    """
    format_text = (TRACEFS_ROOT / "events/sock/sock_send_length/format").read_text()
    done = subprocess.run(
        [*netns.exec_prefix, sys.executable, "-c", textwrap.dedent(script)],
        input=format_text,
        capture_output=True,
        text=True,
        timeout=WORKLOAD_TIMEOUT_S,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    sock, net = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(sock) == tuple(sock_offsets(btf))
    assert tuple(net) == tuple(net_offsets(btf))


TCP_SCRIPT = """
import json, os, socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
port = srv.getsockname()[1]
server = os.fork()
if server == 0:
    srv.settimeout(10)
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
    os._exit(0)
srv.close()
record = {}
def client():
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        record["local_port"] = s.getsockname()[1]
        for _ in range(5):
            s.sendall(b"p" * 50)
            got = 0
            while got < 50:
                got += len(s.recv(50 - got))
    record["tid"] = threading.get_native_id()
thread = threading.Thread(target=client); thread.start(); thread.join(20)
_, status = os.waitpid(server, 0)
assert status == 0 and "tid" in record
print(json.dumps({"pid": os.getpid(), "server": server, "port": port, **record}))
"""


def test_load_without_btf_attributes_a_tcp_connection_in_a_namespace(
    make_netns: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root_or_skip()
    netns = make_netns(NETNS_PREFIX)
    created = catch_created_ids(monkeypatch)
    try:
        loaded = KernelOwnership.load(
            btf_path=tmp_path / "no-vmlinux",
            netns_inode=namespace_inode(Path("/run/netns") / netns.name),
        )
    except EbpfUnavailable as err:
        pytest.fail(f"the helper did not load without BTF: {err.reason}")
    try:
        assert loaded.status()["ebpf_offsets"] == "calibrated"
        # calibrated offsets: the send/recv programs read the perf tracepoint's record
        assert loaded.status()["ebpf_attach"] == "perf_tracepoint"
        loaded.drain()
        done = subprocess.run(
            [*netns.exec_prefix, sys.executable, "-c", textwrap.dedent(TCP_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=WORKLOAD_TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        owners = loaded.drain()
        status = loaded.status()
    finally:
        loaded.close()
    client = sorted(
        (o.kind, o.tgid, o.tid, o.remote_addr, o.remote_port, o.closed)
        for o in owners
        if o.protocol == TCP and o.local_addr == LOOPBACK4 and o.local_port == report["local_port"]
    )
    expected = (LOOPBACK4, report["port"], True)
    assert client == [
        (OwnerKind.SEND, report["pid"], report["tid"], *expected),  # its first call
        (OwnerKind.CONNECT, report["pid"], report["tid"], *expected),
        (OwnerKind.CLOSE, report["pid"], report["tid"], *expected),
    ]
    accepted = {
        o.tgid
        for o in owners
        if o.protocol == TCP
        and o.local_port == report["port"]
        and o.remote_port == report["local_port"]
    }
    assert accepted == {report["server"]}
    assert status["ebpf_read_failed"] == 0 and status["ebpf_drops"] == 0
    # ntp_calib and its map, then the helper's 3 programs and 5 maps: all gone
    assert [len(ids) for ids in created] == [4, 6]
    assert still_loaded(*created) == (set(), set())


def test_load_with_btf_says_so() -> None:
    root_or_skip()
    btf_or_skip()
    try:
        loaded = KernelOwnership.load()
    except EbpfUnavailable as err:
        pytest.skip(f"PRIVILEGED TEST SKIPPED: the eBPF helper cannot load here: {err.reason}")
    with loaded:
        assert loaded.status()["ebpf_offsets"] == "btf"
        assert loaded.status()["ebpf_attach"] == "btf_tracepoint"
        assert loaded.offsets_source is helper.OffsetSource.BTF
