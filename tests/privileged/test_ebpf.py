"""The eBPF ownership helper on the real kernel (root).

Every workload runs as a separate process inside a network namespace the
fixture creates (``ip netns exec``), talking over that namespace's loopback;
it reports its own pids and thread ids (``threading.get_native_id()``, the
initial pid namespace's numbers since ``ip netns exec`` keeps the pid
namespace) and the ports it used: that report is the ground truth the
drained records are compared with.  When the helper cannot load here the
tests are skipped with the helper's own reason.

The helper's send/recv programs are tp_btf programs when the kernel's BTF is
there, else raw tracepoint programs, else perf-event tracepoint programs: the
``helper``, ``netns_helper`` and ``kernel_helper`` fixtures load each way in
turn, and every test using them must find the same records every way.  The
kernel counting path's helper (``kernel_helper``, every namespace) asks the
socket's own storage first with tp_btf programs (the per-socket fast path).

The helper records only the sockets of one network namespace: the tests
whose workload runs in a namespace load it for that namespace
(``netns_inode`` from ``/run/netns/NAME``); the tests that talk in this
process load it for this process's namespace (the default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netatopd.ebpf import (
    AttachKind,
    EbpfUnavailable,
    FlowOwner,
    KernelOwnership,
    OwnerKind,
    loaded_object_ids,
    namespace_inode,
    syscalls,
)
from netatopd.ebpf import helper as helper_module
from netatopd.ebpf.btf import VMLINUX_BTF_PATH, Btf, net_offsets, sock_offsets
from netatopd.ebpf.programs import REPORT_INTERVAL_NS

pytestmark = pytest.mark.privileged

NETNS_PREFIX = "ntpC"
WORKLOAD_TIMEOUT_S = 60
FREE_WAIT_S = 5.0  # the kernel frees maps after an RCU grace period (about 20 ms here)
NETNS_DIR = Path("/run/netns")  # where ip netns add mounts the namespace files
LOOPBACK4 = bytes([127, 0, 0, 1])
FAST_PATH_MAPS = ("ntp_sock_seen", "ntp_generation")  # the tp_btf programs' own maps
WILDCARD4 = bytes(4)
TCP, UDP = 6, 17


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("PRIVILEGED TEST SKIPPED: the eBPF helper needs root (bpf, perf_event_open)")


ATTACH_KINDS = [AttachKind.BTF_TRACEPOINT, AttachKind.RAW_TRACEPOINT, AttachKind.PERF_TRACEPOINT]


def load_or_skip(
    netns_inode: int | None = None,
    attach: AttachKind = AttachKind.BTF_TRACEPOINT,
    every_namespace: bool = False,
) -> KernelOwnership:
    root_or_skip()
    try:
        loaded = KernelOwnership.load(
            netns_inode=netns_inode,
            every_namespace=every_namespace,
            raw_tracepoints=attach is not AttachKind.PERF_TRACEPOINT,
            btf_tracepoints=attach is AttachKind.BTF_TRACEPOINT,
        )
    except EbpfUnavailable as err:
        pytest.skip(f"PRIVILEGED TEST SKIPPED: the eBPF helper cannot load here: {err.reason}")
    # tp_btf or raw tracepoints whenever the kernel's BTF is there and they are asked for
    expected = attach if VMLINUX_BTF_PATH.exists() else AttachKind.PERF_TRACEPOINT
    assert loaded.attach_kind is expected
    assert loaded.status()["ebpf_attach"] == expected.value
    # the per-socket fast path: tp_btf programs on the kernel path only
    assert loaded.fast_path is (every_namespace and expected is AttachKind.BTF_TRACEPOINT)
    loaded.drain()  # start from an empty flows map
    return loaded


def inode_of(netns: Any) -> int:
    """The nsfs inode of a namespace made by the make_netns fixture."""
    return namespace_inode(NETNS_DIR / netns.name)


@pytest.fixture(params=ATTACH_KINDS, ids=[kind.value for kind in ATTACH_KINDS])
def helper(request: pytest.FixtureRequest) -> Iterator[KernelOwnership]:
    """The helper for this process's network namespace (the default), each attach kind."""
    loaded = load_or_skip(attach=request.param)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(params=ATTACH_KINDS, ids=[kind.value for kind in ATTACH_KINDS])
def kernel_helper(request: pytest.FixtureRequest) -> Iterator[KernelOwnership]:
    """The helper as the kernel counting path loads it (every namespace), each attach kind."""
    loaded = load_or_skip(attach=request.param, every_namespace=True)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(params=ATTACH_KINDS, ids=[kind.value for kind in ATTACH_KINDS])
def netns_helper(
    make_netns: Callable[..., Any], request: pytest.FixtureRequest
) -> Iterator[tuple[Any, KernelOwnership]]:
    """A new namespace and the helper loaded for it, each attach kind."""
    netns = make_netns(NETNS_PREFIX)
    loaded = load_or_skip(inode_of(netns), request.param)
    try:
        yield netns, loaded
    finally:
        loaded.close()


def run_workload(netns: Any, script: str) -> dict[str, Any]:
    """Run a Python script inside the namespace; its last stdout line is JSON."""
    done = subprocess.run(
        [*netns.exec_prefix, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=WORKLOAD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def flow_records(
    owners: list[FlowOwner], protocol: int, local_port: int, local_addr: bytes = LOOPBACK4
) -> list[FlowOwner]:
    return [
        o
        for o in owners
        if o.protocol == protocol and o.local_port == local_port and o.local_addr == local_addr
    ]


def wait_until_freed(prog_ids: list[int], map_ids: list[int]) -> tuple[set[int], set[int]]:
    """Ours still loaded after at most FREE_WAIT_S (the kernel frees asynchronously)."""
    deadline = time.monotonic() + FREE_WAIT_S
    while True:
        progs, maps = loaded_object_ids()
        left = (set(prog_ids) & set(progs), set(map_ids) & set(maps))
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


# --- BTF on this kernel --------------------------------------------------------------


def test_btf_resolves_sock_common_on_this_kernel() -> None:
    if not VMLINUX_BTF_PATH.exists():
        pytest.skip("PRIVILEGED TEST SKIPPED: this kernel has no /sys/kernel/btf/vmlinux")
    offsets = sock_offsets(Btf.from_file())
    # struct sock_common on x86-64 since Linux 4.x: addrpair @0, portpair @12,
    # family @16, v6 addresses @56/@72; sk_protocol a u16 since 5.6.
    assert offsets[:7] == (16, 14, 12, 4, 0, 72, 56)
    assert offsets.sk_protocol_is_bitfield is False


def test_btf_resolves_the_socket_network_namespace_on_this_kernel() -> None:
    if not VMLINUX_BTF_PATH.exists():
        pytest.skip("PRIVILEGED TEST SKIPPED: this kernel has no /sys/kernel/btf/vmlinux")
    offsets = net_offsets(Btf.from_file())
    # struct sock_common on x86-64 since Linux 4.x: the skc_bind_node union at 24
    # (16 bytes), skc_prot at 40, skc_net at 48.  struct net's layout varies by
    # version and config, so only the alignment and range of ns.inum are fixed.
    assert offsets.sk_net == 48
    assert offsets.net_ns_inum % 4 == 0 and 0 < offsets.net_ns_inum < 4096


# --- threads, each with its own connection ------------------------------------------

THREADS_SCRIPT = """
import json, os, socket, threading
ROUNDS, SIZE = 20, 100
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); usrv.bind(("127.0.0.1", 0))
port, uport = srv.getsockname()[1], usrv.getsockname()[1]
server = os.fork()
if server == 0:
    srv.settimeout(10); usrv.settimeout(10)
    def echo_tcp(conn):
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)
    def echo_udp():
        for _ in range(ROUNDS):
            data, peer = usrv.recvfrom(4096)
            usrv.sendto(data, peer)
    workers = [threading.Thread(target=echo_udp)]
    workers[0].start()
    for _ in range(3):
        conn, _ = srv.accept()
        workers.append(threading.Thread(target=echo_tcp, args=(conn,)))
        workers[-1].start()
    for worker in workers:
        worker.join(10)
    os._exit(0)
srv.close(); usrv.close()
results = {}
def client(index):
    calls = moved = 0
    record = {"tid": threading.get_native_id()}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        record["tcp"] = s.getsockname()[1]
        for _ in range(ROUNDS):
            sent = 0
            while sent < SIZE:
                sent += s.send(bytes(SIZE - sent)); calls += 1
            got = 0
            while got < SIZE:
                got += len(s.recv(SIZE - got)); calls += 1
            moved += sent + got
        if index == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(10)
                for _ in range(ROUNDS):
                    moved += u.sendto(bytes(SIZE), ("127.0.0.1", uport)); calls += 1
                    moved += len(u.recvfrom(4096)[0]); calls += 1
                record["udp"] = u.getsockname()[1]
    record["calls"], record["bytes"] = calls, moved
    results[index] = record
threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join(20)
_, status = os.waitpid(server, 0)
assert status == 0 and len(results) == 3
print(json.dumps({"pid": os.getpid(), "server": server, "port": port, "uport": uport,
                  "threads": [results[i] for i in range(3)]}))
"""


def test_threads_each_with_own_connection(netns_helper: tuple[Any, KernelOwnership]) -> None:
    netns, helper = netns_helper
    report = run_workload(netns, THREADS_SCRIPT)
    owners = helper.drain()
    pid, server = report["pid"], report["server"]
    for record in report["threads"]:
        tid = record["tid"]
        client_side = flow_records(owners, TCP, record["tcp"])
        kinds = sorted(o.kind for o in client_side)
        # the thread that sent and received (reported once, by its first call: a SEND),
        # the connect() record and the closer: all this thread
        assert kinds == [OwnerKind.SEND, OwnerKind.CONNECT, OwnerKind.CLOSE], client_side
        for owner in client_side:
            assert (owner.tgid, owner.tid, owner.remote_port) == (pid, tid, report["port"])
            assert owner.closed is True
        # the server's accepted socket belongs to the server process
        server_side = [
            o for o in flow_records(owners, TCP, report["port"]) if o.remote_port == record["tcp"]
        ]
        assert server_side and {o.tgid for o in server_side} == {server}
    # the unconnected UDP socket is bound to the wildcard address by its first sendto()
    udp = flow_records(owners, UDP, report["threads"][0]["udp"], WILDCARD4)
    assert [(o.tgid, o.tid, o.remote_addr, o.closed) for o in udp] == [
        (pid, report["threads"][0]["tid"], b"", False)
    ]
    assert udp[0].kind is OwnerKind.SEND  # reported once, at its first call (sendto)
    status = helper.status()
    assert status["ebpf_drops"] == 0 and status["ebpf_read_failed"] == 0


# --- many threads -----------------------------------------------------------------------

# More distinct threads than a preallocated per-thread hash map of the usual
# size (16,384 entries) holds: each thread sends once on one shared UDP socket.
MANY_THREADS = 17_000
MANY_THREADS_SCRIPT = f"""
import json, os, socket, threading
COUNT = {MANY_THREADS}
BATCH = 64
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.bind(("127.0.0.1", 0))
target = sink.getsockname()
tids = set()
def send():
    tids.add(threading.get_native_id())
    sender.sendto(b"x", target)
for first in range(0, COUNT, BATCH):
    batch = [threading.Thread(target=send) for _ in range(min(BATCH, COUNT - first))]
    for t in batch: t.start()
    for t in batch: t.join()
print(json.dumps({{"pid": os.getpid(), "port": sender.getsockname()[1],
                  "tids": len(tids), "sends": COUNT}}))
"""


def test_more_threads_than_a_thread_map_would_hold_cost_no_drops(
    netns_helper: tuple[Any, KernelOwnership],
) -> None:
    """Every send runs the program; a thread the program has not seen adds no map entry.

    The flows map keeps one record per flow and slot whichever thread sends,
    so the number of threads never fills a map: nothing is refused, nothing
    counted as a drop, and the flow's record names one of the senders.
    """
    netns, helper = netns_helper
    report = run_workload(netns, MANY_THREADS_SCRIPT)
    assert report["tids"] > 16_384
    owners = helper.drain()
    status = helper.status()
    assert int(status["ebpf_send_events"]) >= report["sends"]
    assert status["ebpf_flow_update_failed"] == 0
    assert status["ebpf_connect_update_failed"] == 0
    assert status["ebpf_drops"] == 0
    # the programs fill no map per thread: six maps (the exec ring among them), none
    # named for threads
    _prog_ids, map_ids = helper.object_ids()
    assert len(map_ids) == 6
    sent = flow_records(owners, UDP, report["port"])
    assert [(o.kind, o.tgid) for o in sent] == [(OwnerKind.SEND, report["pid"])]


# --- short-lived processes ------------------------------------------------------------

SHORT_LIVED_SCRIPT = """
import json, os, random, socket, threading, time
COUNT = 50
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64); srv.settimeout(10)
port = srv.getsockname()[1]
def serve():
    for _ in range(COUNT):
        conn, _ = srv.accept()
        with conn:
            conn.sendall(conn.recv(64))
threading.Thread(target=serve, daemon=True).start()
rng = random.Random(7)
read_end, write_end = os.pipe()
children = []
for _ in range(COUNT):
    life_s = rng.uniform(0.005, 0.020)
    child = os.fork()
    if child == 0:
        started = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"x" * 32)
            s.recv(64)
            os.write(write_end, f"{os.getpid()} {s.getsockname()[1]}\\n".encode())
            s.close()
            left = life_s - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
            os._exit(0)
        except BaseException:
            os._exit(1)
    children.append(child)
failed = sum(1 for child in children if os.waitpid(child, 0)[1] != 0)
os.close(write_end)
lines = os.read(read_end, 65536).decode().split()
pairs = [[int(lines[i]), int(lines[i + 1])] for i in range(0, len(lines), 2)]
print(json.dumps({"failed": failed, "children": pairs, "port": port}))
"""


def test_fifty_short_lived_processes(netns_helper: tuple[Any, KernelOwnership]) -> None:
    netns, helper = netns_helper
    report = run_workload(netns, SHORT_LIVED_SCRIPT)
    assert report["failed"] == 0 and len(report["children"]) == 50
    owners = helper.drain()
    exact = 0
    for child_pid, local_port in report["children"]:
        records = [
            o for o in flow_records(owners, TCP, local_port) if o.remote_port == report["port"]
        ]
        kinds = {o.kind for o in records}
        if records and {o.tgid for o in records} == {child_pid} and {OwnerKind.CONNECT} <= kinds:
            exact += 1
    assert exact == 50, f"{exact} of 50 short-lived processes attributed exactly"


# --- connect in one thread, use in another --------------------------------------------

HANDOFF_SCRIPT = """
import json, os, socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4); srv.settimeout(10)
port = srv.getsockname()[1]
def serve():
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(64))
        conn.recv(64)
server = threading.Thread(target=serve); server.start()
box = {}
def connect():
    box["sock"] = socket.create_connection(("127.0.0.1", port), timeout=10)
    box["connector"] = threading.get_native_id()
def use():
    box["sock"].sendall(b"y" * 10)
    box["sock"].recv(64)
    box["user"] = threading.get_native_id()
for target in (connect, use):
    t = threading.Thread(target=target); t.start(); t.join(10)
local_port = box["sock"].getsockname()[1]
box["sock"].close()
server.join(10)
print(json.dumps({"pid": os.getpid(), "connector": box["connector"], "user": box["user"],
                  "closer": threading.get_native_id(), "local_port": local_port, "port": port}))
"""


def test_connect_in_one_thread_send_in_another(
    netns_helper: tuple[Any, KernelOwnership],
) -> None:
    netns, helper = netns_helper
    report = run_workload(netns, HANDOFF_SCRIPT)
    owners = helper.drain()
    records = {o.kind: o for o in flow_records(owners, TCP, report["local_port"])}
    recorded = {kind.name: (o.tgid, o.tid) for kind, o in records.items()}
    connector, user, closer = report["connector"], report["user"], report["closer"]
    print(f"connector {connector} user {user} closer {closer}: {recorded}")
    # CONNECT: the thread that called connect(); SEND: the thread that sent and
    # received (the user thread, reported once at its first call, a send);
    # CLOSE: the thread that called close().
    assert recorded == {
        "CONNECT": (report["pid"], report["connector"]),
        "SEND": (report["pid"], report["user"]),
        "CLOSE": (report["pid"], report["closer"]),
    }


STEPS_SCRIPT = """
import json, queue, socket, sys, threading
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.bind(("127.0.0.1", 0))
tids, orders, done = {}, {}, queue.Queue()
def serve(name):
    tids[name] = threading.get_native_id()
    while True:
        count = orders[name].get()
        if count is None:
            return
        for _ in range(count):
            sender.sendto(b"s" * 32, sink.getsockname())
        done.put(name)
print(json.dumps({"port": sender.getsockname()[1]}), flush=True)
workers = []
for line in sys.stdin:
    name, count = line.split()
    if name not in orders:
        orders[name] = queue.Queue()
        workers.append(threading.Thread(target=serve, args=(name,), daemon=True))
        workers[-1].start()
    orders[name].put(int(count))
    done.get(timeout=10)
    print(json.dumps(tids), flush=True)
for name in orders:
    orders[name].put(None)
"""


def test_a_flow_is_reported_again_only_when_its_thread_changes(
    netns_helper: tuple[Any, KernelOwnership],
) -> None:
    """The programs write a send record when the flow is new or another thread uses
    it, not for every call; the change count tells when a drain has something.

    Ground truth: the workload's own steps (which thread sent, how often).
    """
    netns, helper = netns_helper
    worker = subprocess.Popen(
        [*netns.exec_prefix, sys.executable, "-u", "-c", STEPS_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdin is not None and worker.stdout is not None
        port = json.loads(worker.stdout.readline())["port"]

        def step(name: str, count: int) -> int:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(f"{name} {count}\n")
            worker.stdin.flush()
            tid: int = json.loads(worker.stdout.readline())[name]
            return tid

        def sends_recorded() -> list[tuple[int, int]]:
            return [
                (o.tgid, o.tid)
                for o in flow_records(helper.drain(), UDP, port)
                if o.kind == OwnerKind.SEND
            ]

        first = step("first", 20)
        written = helper.changes()
        assert [tid for _, tid in sends_recorded()] == [first]  # 20 sends, one record
        step("first", 20)  # the same thread again, well within the interval
        assert helper.changes() == written
        assert sends_recorded() == []
        second = step("second", 1)  # another thread: reported at once
        assert second != first
        assert helper.changes() > written
        assert [tid for _, tid in sends_recorded()] == [second]
        assert REPORT_INTERVAL_NS == 1_000_000_000
        time.sleep(1.1)  # past the interval: the same thread is reported again
        step("second", 1)
        assert [tid for _, tid in sends_recorded()] == [second]
    finally:
        if worker.stdin is not None:
            worker.stdin.close()
        worker.wait(timeout=WORKLOAD_TIMEOUT_S)


KERNEL_STEPS_SCRIPT = """
import json, os, queue, socket, sys, threading
SO_COOKIE = 57  # asm-generic/socket.h: asking gives the socket its cookie
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.connect(sink.getsockname())
def act(what, count):
    if what == "send":
        for _ in range(count):
            sender.send(b"s" * 32)
    elif what == "cork":  # appended to the cork, not sent: no packet gives a cookie
        sender.send(b"c", socket.MSG_MORE)
    elif what == "cookie":
        return int.from_bytes(sender.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
    elif what == "fork":  # a child sends on the inherited socket
        child = os.fork()
        if child == 0:
            act("send", count)
            os._exit(0)
        os.waitpid(child, 0)
        return child
    return threading.get_native_id()
orders, answers = {}, queue.Queue()
def serve(name):
    while True:
        order = orders[name].get()
        if order is None:
            return
        answers.put(act(*order))
print(json.dumps({"port": sender.getsockname()[1], "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    name, what, count = line.split()
    if name not in orders:
        orders[name] = queue.Queue()
        threading.Thread(target=serve, args=(name,), daemon=True).start()
    orders[name].put((what, int(count)))
    print(json.dumps(answers.get(timeout=10)), flush=True)
for name in orders:
    orders[name].put(None)
"""


class KernelSteps:
    """KERNEL_STEPS_SCRIPT running in a namespace: ``do(thread, what, count)`` runs one
    step in the named thread and returns its answer (a tid, a child's pid, the
    cookie); ``sends()`` drains the helper and returns the workload's send records
    since the last call as (tgid, tid, cookie)."""

    def __init__(self, netns: Any, helper: KernelOwnership) -> None:
        self.helper = helper
        self.worker = subprocess.Popen(
            [*netns.exec_prefix, sys.executable, "-u", "-c", KERNEL_STEPS_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.worker.stdout is not None
        hello = json.loads(self.worker.stdout.readline())
        self.port, self.pid = hello["port"], hello["pid"]
        self.pids = {self.pid}

    def do(self, thread: str, what: str, count: int = 1) -> int:
        assert self.worker.stdin is not None and self.worker.stdout is not None
        self.worker.stdin.write(f"{thread} {what} {count}\n")
        self.worker.stdin.flush()
        answer: int = json.loads(self.worker.stdout.readline())
        if what == "fork":
            self.pids.add(answer)
        return answer

    def sends(self) -> list[tuple[int, int, int]]:
        # the helper records every namespace: this workload's records by port and pids
        return [
            (o.tgid, o.tid, o.cookie)
            for o in flow_records(self.helper.drain(), UDP, self.port)
            if o.kind == OwnerKind.SEND and o.tgid in self.pids
        ]

    def close(self) -> None:
        if self.worker.stdin is not None:
            self.worker.stdin.close()
        self.worker.wait(timeout=WORKLOAD_TIMEOUT_S)


def test_kernel_path_reports_a_socket_again_when_its_thread_or_generation_changes(
    make_netns: Callable[..., Any], kernel_helper: KernelOwnership
) -> None:
    """On the kernel path (every namespace) a socket with a cookie is reported once a
    thread while the same thread goes on, at once when another thread or a forked
    child uses it, and again when the generation moves (tp_btf: the fast path
    compares thread and generation) or, every way, after REPORT_INTERVAL_NS.

    Ground truth: the workload's own steps (which thread or child sent).
    """
    steps = KernelSteps(make_netns(NETNS_PREFIX), kernel_helper)
    try:
        pid = steps.pid
        cookie = steps.do("a", "cookie")
        assert cookie != 0
        first = steps.do("a", "send", 20)
        assert steps.sends() == [(pid, first, cookie)]  # 20 sends, one record
        written = kernel_helper.changes()
        steps.do("a", "send", 20)  # the same thread again, within the interval
        assert steps.sends() == []
        assert kernel_helper.changes() == written
        second = steps.do("b", "send", 1)  # another thread: at once
        assert second != first
        assert steps.sends() == [(pid, second, cookie)]
        steps.do("a", "send", 1)  # and back
        assert steps.sends() == [(pid, first, cookie)]
        child = steps.do("a", "fork", 3)  # a forked child on the inherited socket
        assert child != pid
        assert steps.sends() == [(child, child, cookie)]
        steps.do("a", "send", 3)  # the parent's thread again
        assert steps.sends() == [(pid, first, cookie)]
        steps.do("a", "send", 3)
        assert steps.sends() == []
        # a new generation: reported again at once by the fast path; the other ways
        # (seen map and clock) wait for REPORT_INTERVAL_NS
        generation = kernel_helper.advance_generation()
        assert generation == (1 if kernel_helper.fast_path else 0)
        steps.do("a", "send", 3)
        assert steps.sends() == ([(pid, first, cookie)] if kernel_helper.fast_path else [])
        steps.do("a", "send", 3)
        assert steps.sends() == []
        # past the interval (the daemon asks for changes all the time: that moves
        # the generation once a REPORT_INTERVAL_NS): the same thread again, every way
        assert REPORT_INTERVAL_NS == 1_000_000_000
        time.sleep(1.1)
        kernel_helper.changes()
        steps.do("a", "send", 3)
        assert steps.sends() == [(pid, first, cookie)]
        status = kernel_helper.status()
        assert status["ebpf_read_failed"] == 0 and status["ebpf_drops"] == 0
    finally:
        steps.close()


def test_kernel_path_reports_a_socket_again_once_it_has_a_cookie(
    make_netns: Callable[..., Any], kernel_helper: KernelOwnership
) -> None:
    """A socket's first record without its cookie (none given yet: a corked UDP send
    puts no packet out, so nothing asks for one) is repeated by the same thread at
    its first call once the socket has one, then not again (the cookie's record
    names it).  Ground truth: the workload's own steps and SO_COOKIE."""
    steps = KernelSteps(make_netns(NETNS_PREFIX), kernel_helper)
    try:
        pid = steps.pid
        tid = steps.do("a", "cork")
        assert steps.sends() == [(pid, tid, 0)]
        steps.do("a", "cork")  # the same thread, no cookie: within the interval
        assert steps.sends() == []
        cookie = steps.do("a", "cookie")
        assert cookie != 0
        steps.do("a", "send", 1)  # sends the corked datagram: now with the cookie
        assert steps.sends() == [(pid, tid, cookie)]
        steps.do("a", "send", 5)
        assert steps.sends() == []
    finally:
        steps.close()


# --- lifecycle ----------------------------------------------------------------------


def map_names(map_ids: list[int]) -> list[str]:
    """The names of loaded maps, by id."""
    names = []
    for map_id in map_ids:
        fd = syscalls.get_fd_by_id(syscalls.BpfCmd.MAP_GET_FD_BY_ID, map_id)
        assert fd is not None
        try:
            info = syscalls.obj_get_info(fd, syscalls.BPF_MAP_INFO_SIZE)
        finally:
            os.close(fd)
        names.append(syscalls.BPF_MAP_INFO_HEAD.unpack_from(info)[6].split(b"\0")[0].decode())
    return names


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("every_namespace", [False, True], ids=["one_netns", "every_netns"])
@pytest.mark.parametrize("attach", ATTACH_KINDS, ids=[kind.value for kind in ATTACH_KINDS])
def test_nothing_stays_loaded_after_close(attach: AttachKind, every_namespace: bool) -> None:
    fds_before = open_fds()
    loaded = load_or_skip(attach=attach, every_namespace=every_namespace)
    prog_ids, map_ids = loaded.object_ids()
    try:
        # flows, connect, counters, seen, changes and the exec ring; ntp_exec with BTF;
        # the per-socket storage and the generation with tp_btf on the kernel path
        assert len(prog_ids) == 4 and len(map_ids) == 6 + 2 * loaded.fast_path
        progs, maps = loaded_object_ids()
        assert set(prog_ids) <= set(progs) and set(map_ids) <= set(maps)
        assert sorted(name for name in map_names(map_ids) if name in FAST_PATH_MAPS) == (
            sorted(FAST_PATH_MAPS) if loaded.fast_path else []
        )
    finally:
        loaded.close()
    loaded.close()  # idempotent
    assert wait_until_freed(prog_ids, map_ids) == (set(), set())
    assert open_fds() == fds_before  # raw tracepoint fds, perf events, programs, maps
    with pytest.raises(EbpfUnavailable, match="closed"):
        loaded.drain()


def test_a_forked_child_drops_its_copies(helper: KernelOwnership) -> None:
    prog_ids, _map_ids = helper.object_ids()
    fds = list(helper._fds) + list(helper._perf_fds) + list(helper._raw_fds)
    assert len(fds) >= 10
    child = os.fork()
    if child == 0:
        still_open = 0
        for fd in fds:
            try:
                os.fstat(fd)
                still_open += 1
            except OSError:
                pass
        os._exit(min(still_open, 100))
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(prog_ids) <= set(loaded_object_ids()[0])  # the parent's helper is untouched


def test_load_failure_after_maps_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    root_or_skip()
    before_progs, before_maps = loaded_object_ids()

    def refuse(tracepoint_id: int, cpu: int) -> int:
        raise syscalls.BpfSyscallError("perf_event_open", 19)

    monkeypatch.setattr(syscalls, "perf_event_open_tracepoint", refuse)
    with pytest.raises(EbpfUnavailable, match="perf_event_open") as caught:
        KernelOwnership.load()
    assert "No such device" in caught.value.reason
    deadline = time.monotonic() + FREE_WAIT_S
    while True:
        progs, maps = loaded_object_ids()
        new = (set(progs) - set(before_progs), set(maps) - set(before_maps))
        # another helper loaded meanwhile by a concurrent test would be named ntp_ too;
        # none runs here, so anything new is a leak of the failed load
        if new == (set(), set()) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert new == (set(), set())


FALLBACKS = {
    # the attach that fails -> the way loaded instead
    AttachKind.BTF_TRACEPOINT: AttachKind.RAW_TRACEPOINT,
    AttachKind.RAW_TRACEPOINT: AttachKind.PERF_TRACEPOINT,
}


@pytest.mark.parametrize("failing", list(FALLBACKS), ids=[kind.value for kind in FALLBACKS])
def test_a_failed_attach_falls_back_to_the_next_way_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, failing: AttachKind
) -> None:
    """The second BPF_RAW_TRACEPOINT_OPEN of one way (tp_btf: name None; raw: the
    tracepoint's name) fails: the first attachment, both programs of that way and
    (tp_btf, every namespace) the fast path's storage and generation maps are
    closed, the next way's programs are loaded instead and record exactly; after
    close nothing of any way stays (programs, maps, fds)."""
    root_or_skip()
    if not VMLINUX_BTF_PATH.exists():
        pytest.fail("this test needs the kernel's BTF (tp_btf and raw are tried only with it)")
    real_open, real_load, real_create = (
        syscalls.raw_tracepoint_open,
        syscalls.prog_load,
        syscalls.map_create,
    )
    opened: list[int] = []  # the failing way's attachments
    failed_programs: list[int] = []  # ... and its programs
    created_maps: dict[int, str] = {}  # every map the load made: id -> name
    failing_type = (
        syscalls.ProgType.TRACING
        if failing is AttachKind.BTF_TRACEPOINT
        else syscalls.ProgType.RAW_TRACEPOINT
    )

    def open_once(name: str | None, prog_fd: int) -> int:
        if (name is None) == (failing is AttachKind.BTF_TRACEPOINT):
            if opened:
                raise syscalls.BpfSyscallError("RAW_TRACEPOINT_OPEN", 2)
            opened.append(real_open(name, prog_fd))
            return opened[-1]
        return real_open(name, prog_fd)

    def load(prog_type: syscalls.ProgType, *args: Any, **kwargs: Any) -> int:
        fd = real_load(prog_type, *args, **kwargs)
        if prog_type == failing_type:
            failed_programs.append(syscalls.object_id(fd))
        return fd

    def create(
        map_type: syscalls.MapType,
        key: int,
        value: int,
        entries: int,
        name: str,
        *args: Any,
        **kwargs: Any,
    ) -> int:
        fd = real_create(map_type, key, value, entries, name, *args, **kwargs)
        created_maps[syscalls.object_id(fd)] = name
        return fd

    monkeypatch.setattr(syscalls, "raw_tracepoint_open", open_once)
    monkeypatch.setattr(syscalls, "prog_load", load)
    monkeypatch.setattr(syscalls, "map_create", create)
    fds_before = open_fds()
    # the raw way is tried first when tp_btf is not asked for
    loaded = KernelOwnership.load(
        every_namespace=True, btf_tracepoints=failing is AttachKind.BTF_TRACEPOINT
    )
    try:
        assert len(opened) == 1 and len(failed_programs) == 2
        assert loaded.attach_kind is FALLBACKS[failing]
        assert loaded.status()["ebpf_attach"] == FALLBACKS[failing].value
        assert not loaded.fast_path
        fast_maps = [i for i, name in created_maps.items() if name in FAST_PATH_MAPS]
        assert len(fast_maps) == (2 if failing is AttachKind.BTF_TRACEPOINT else 0)
        assert wait_until_freed(failed_programs, fast_maps) == (set(), set())
        assert opened[0] not in loaded._raw_fds
        prog_ids, map_ids = loaded.object_ids()
        assert len(prog_ids) == 4 and not set(prog_ids) & set(failed_programs)
        import socket

        loaded.drain()
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            receiver.bind(("127.0.0.1", 0))
            sender.bind(("127.0.0.1", 0))
            sender.sendto(b"z", receiver.getsockname())
            receiver.recv(16)
            ports = sender.getsockname()[1], receiver.getsockname()[1]
        owners = [o for o in loaded.drain() if o.tgid == os.getpid()]
        me = (os.getpid(), threading.get_native_id())
        assert [(o.tgid, o.tid, o.kind) for o in flow_records(owners, UDP, ports[0])] == [
            (*me, OwnerKind.SEND)
        ]
        assert [(o.tgid, o.tid, o.kind) for o in flow_records(owners, UDP, ports[1])] == [
            (*me, OwnerKind.RECV)
        ]
    finally:
        loaded.close()
    assert wait_until_freed(prog_ids, list(created_maps)) == (set(), set())
    assert open_fds() == fds_before


def test_missing_btf_and_failed_calibration_refuse_naming_both(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_or_skip()

    def fail(*args: object, **kwargs: object) -> None:
        raise helper_module.CalibrationError("skc_num: no offset holds the expected value")

    monkeypatch.setattr(helper_module, "calibrate", fail)
    with pytest.raises(EbpfUnavailable) as caught:
        KernelOwnership.load(btf_path=tmp_path / "vmlinux")
    reason = caught.value.reason
    assert reason.startswith("struct sock offsets unknown: BTF: cannot read ")
    assert "vmlinux: No such file or directory" in reason
    assert reason.endswith("; calibration: skc_num: no offset holds the expected value")


def test_status_reports_runs_and_map_fill(helper: KernelOwnership) -> None:
    # a bounded UDP exchange on loopback, in this thread
    import socket

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        for _ in range(10):
            sender.sendto(b"z", receiver.getsockname())
        for _ in range(10):
            receiver.recv(16)
        sender_port = sender.getsockname()[1]
    before = helper.status()
    owners = helper.drain()
    mine = flow_records(owners, UDP, sender_port, WILDCARD4)
    assert [(o.tgid, o.tid, o.kind) for o in mine] == [
        (os.getpid(), threading.get_native_id(), OwnerKind.SEND)
    ]
    status = helper.status()
    assert status["ebpf_netns_inode"] == os.stat("/proc/self/ns/net").st_ino
    assert int(before["ebpf_send_events"]) >= 10 and int(before["ebpf_recv_events"]) >= 10
    assert status["ebpf_flows_last_drain"] == len(owners)
    assert (
        status["ebpf_flow_map_fill_percent"] == int(status["ebpf_flows_peak_drain"]) * 100 // 32768
    )
    for name in ("ntp_send", "ntp_recv", "ntp_state"):
        assert f"{name}_recursion_misses" in status and f"{name}_run_cnt" in status


def test_ipv6_and_ipv4_mapped_addresses(helper: KernelOwnership) -> None:
    import socket

    tid = threading.get_native_id()
    ports = {}
    for name, connect_to in (("v6", "::1"), ("mapped", "::ffff:127.0.0.1")):
        with socket.socket(socket.AF_INET6) as listener:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(("::", 0))
            listener.listen(1)
            with socket.socket(socket.AF_INET6) as client:
                client.connect((connect_to, listener.getsockname()[1]))
                server, _ = listener.accept()
                with server:
                    client.sendall(b"q")
                    server.recv(1)
                ports[name] = (client.getsockname()[1], listener.getsockname()[1])
    owners = helper.drain()
    v6 = flow_records(owners, TCP, ports["v6"][0], bytes(15) + b"\x01")
    assert {(o.kind, o.remote_addr, o.remote_port, o.tid) for o in v6} == {
        (kind, bytes(15) + b"\x01", ports["v6"][1], tid)
        for kind in (OwnerKind.SEND, OwnerKind.CONNECT, OwnerKind.CLOSE)
    }
    mapped = flow_records(owners, TCP, ports["mapped"][0], LOOPBACK4)
    assert {(o.kind, o.remote_addr, o.remote_port, o.tid) for o in mapped} == {
        (kind, LOOPBACK4, ports["mapped"][1], tid)
        for kind in (OwnerKind.SEND, OwnerKind.CONNECT, OwnerKind.CLOSE)
    }


# --- the same tuple in two namespaces ------------------------------------------------

SAME_TUPLE_SERVER_PORT = 8080
SAME_TUPLE_CLIENT_PORT = 40000

# Every namespace runs exactly this: a server process on 127.0.0.1:8080 and a
# client thread bound to 127.0.0.1:40000, so both namespaces use the tuple
# 127.0.0.1:40000 <-> 127.0.0.1:8080 at the same time.
SAME_TUPLE_SCRIPT = f"""
import json, os, socket, threading
ROUNDS, SIZE = 30, 64
srv = socket.socket(); srv.bind(("127.0.0.1", {SAME_TUPLE_SERVER_PORT})); srv.listen(4)
server = os.fork()
if server == 0:
    srv.settimeout(10)
    conn, _ = srv.accept()
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    os._exit(0)
srv.close()
record = {{}}
def client():
    calls = moved = 0
    s = socket.socket(); s.settimeout(10)
    s.bind(("127.0.0.1", {SAME_TUPLE_CLIENT_PORT})); s.connect(("127.0.0.1", {SAME_TUPLE_SERVER_PORT}))
    for _ in range(ROUNDS):
        sent = 0
        while sent < SIZE:
            sent += s.send(bytes(SIZE - sent)); calls += 1
        got = 0
        while got < SIZE:
            got += len(s.recv(SIZE - got)); calls += 1
        moved += sent + got
    s.close()
    record.update(tid=threading.get_native_id(), calls=calls, bytes=moved)
thread = threading.Thread(target=client); thread.start(); thread.join(20)
_, status = os.waitpid(server, 0)
assert status == 0 and record
print(json.dumps({{"pid": os.getpid(), "server": server, **record}}))
"""


def same_tuple_records(owners: list[FlowOwner]) -> list[FlowOwner]:
    """Both ends of 127.0.0.1:40000 <-> 127.0.0.1:8080, and the listener on 8080."""
    return [
        o
        for o in owners
        if o.protocol == TCP
        and o.local_addr == LOOPBACK4
        and (o.local_port, o.remote_port)
        in (
            (SAME_TUPLE_CLIENT_PORT, SAME_TUPLE_SERVER_PORT),
            (SAME_TUPLE_SERVER_PORT, SAME_TUPLE_CLIENT_PORT),
            (SAME_TUPLE_SERVER_PORT, 0),
        )
    ]


def test_same_tuple_in_two_namespaces_is_recorded_only_for_its_own(
    make_netns: Callable[..., Any],
) -> None:
    namespaces = [make_netns(NETNS_PREFIX), make_netns(NETNS_PREFIX)]
    inodes = [inode_of(netns) for netns in namespaces]
    assert inodes[0] != inodes[1]
    helpers: list[KernelOwnership] = []
    try:
        # one helper per namespace, and one for this process's namespace
        for inode in [*inodes, None]:
            helpers.append(load_or_skip(inode))
        # both workloads at once, so the two tuples are in the kernel together
        running = [
            subprocess.Popen(
                [*netns.exec_prefix, sys.executable, "-c", textwrap.dedent(SAME_TUPLE_SCRIPT)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for netns in namespaces
        ]
        reports = []
        for process in running:
            out, err = process.communicate(timeout=WORKLOAD_TIMEOUT_S)
            assert process.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        drained = [(h.drain(), h.status()) for h in helpers]
    finally:
        for loaded in helpers:
            loaded.close()
    for index in (0, 1):
        mine, theirs = reports[index], reports[1 - index]
        owners, status = drained[index]
        assert status["ebpf_netns_inode"] == inodes[index]
        records = same_tuple_records(owners)
        client_side = [o for o in records if o.local_port == SAME_TUPLE_CLIENT_PORT]
        server_side = [o for o in records if o.local_port == SAME_TUPLE_SERVER_PORT]
        # the client end: connect(), the thread that sent and received (reported at
        # its first call, a send) and close(), all by this namespace's thread
        assert sorted((o.kind, o.tgid, o.tid) for o in client_side) == [
            (OwnerKind.SEND, mine["pid"], mine["tid"]),
            (OwnerKind.CONNECT, mine["pid"], mine["tid"]),
            (OwnerKind.CLOSE, mine["pid"], mine["tid"]),
        ]
        # the listener is the parent (listen() ran before the fork), the
        # accepted end the forked server: nothing of the other namespace
        assert {(o.kind, o.tgid) for o in server_side if o.remote_port == 0} == {
            (OwnerKind.LISTEN, mine["pid"])
        }
        assert {o.tgid for o in server_side if o.remote_port != 0} == {mine["server"]}
        # the other namespace's client calls were each skipped and counted (a lower
        # bound: other namespaces on this machine run meanwhile)
        assert int(status["ebpf_other_netns"]) >= theirs["calls"]
        assert status["ebpf_read_failed"] == 0 and status["ebpf_drops"] == 0
    # the helper of this process's namespace saw none of it
    owners, status = drained[2]
    workload_pids = {r[key] for r in reports for key in ("pid", "server")}
    assert [o for o in owners if o.tgid in workload_pids] == []
    assert int(status["ebpf_other_netns"]) >= reports[0]["calls"] + reports[1]["calls"]
