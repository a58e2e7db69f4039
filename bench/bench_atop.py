"""Benchmark of the atop socket (netatopd/server.py, AtopServer); not a test.

Prints, for an answer of --processes live processes (default 50,000, about
4.8 MB):
  * the answer time: from the client's send() of its 96-byte request to the
    terminator received, median / min / max of --repeat requests on one
    connection, with the server in its own process (as the daemon is to atop);
    the client reads with recv_into a 1 MiB buffer (atop's recv of 96 bytes
    per record costs the reader, not the server: printed separately);
  * the same with 4 clients asking at once (time until the last has its terminator);
  * build_answer() alone in the server (packing, no socket);
  * a reference in the same run: packing the same 50,000 records with
    struct.Struct.pack_into from ready-made tuples (the least any packing costs),
    and the ratio of each figure to it.

Usage: .venv/bin/python bench/bench_atop.py [--processes 50000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

from netatopd.exitlist import ExitJournal
from netatopd.protocol import NETPERTASK, NETPERTASK_SIZE
from netatopd.server import AtopConnection, AtopServer
from netatopd.tasks import TaskInfo

RECEIVE_BUFFER_BYTES = 1 << 20
CONCURRENT_CLIENTS = 4
TIME_LIMIT_S = 120.0  # the whole run stops past this
CLIENT_TIMEOUT_S = 10.0


class Backend:
    def __init__(self, tasks: list[TaskInfo]) -> None:
        self.tasks = {task.tgid: task for task in tasks}

    def atop_tasks(self) -> Iterable[TaskInfo]:
        return self.tasks.values()


def make_tasks(count: int) -> list[TaskInfo]:
    tasks = []
    for n in range(1, count + 1):
        task = TaskInfo(n, n * 100, 1_700_000_000 + n, f"worker-{n % 997}")
        task.counters = [n, 1500 * n, n, 1500 * n, n % 7, 80 * (n % 7), n % 5, 80 * (n % 5)]
        tasks.append(task)
    return tasks


def serve_forever(server: AtopServer, ready_fd: int) -> None:
    """The daemon's part, in the child process: a selector loop calling the handlers."""
    selector = selectors.DefaultSelector()
    server.register(selector)
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    deadline = time.monotonic() + TIME_LIMIT_S
    while time.monotonic() < deadline:
        for key, mask in selector.select(0.5):
            key.data(mask)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT_S)
    sock.connect(path)
    return sock


def read_answer_bulk(sock: socket.socket, buffer: bytearray) -> int:
    """Read one answer with large recv_into calls; the number of records before id 0."""
    view = memoryview(buffer)
    filled = 0
    records = 0
    while True:
        got = sock.recv_into(view[filled:])
        if not got:
            raise ConnectionError("the server closed the connection")
        filled += got
        whole = filled - filled % NETPERTASK_SIZE
        if whole and int.from_bytes(view[whole - NETPERTASK_SIZE : whole - 92], "little") == 0:
            return records + whole // NETPERTASK_SIZE - 1
        records += whole // NETPERTASK_SIZE
        view[: filled - whole] = view[whole:filled]
        filled -= whole


def read_answer_like_atop(sock: socket.socket) -> tuple[int, int]:
    """recv(96) per record as atop does; (records, short recv() calls)."""
    records = 0
    short = 0
    while True:
        data = sock.recv(NETPERTASK_SIZE)
        if len(data) != NETPERTASK_SIZE:
            short += 1
            data += sock.recv(NETPERTASK_SIZE - len(data), socket.MSG_WAITALL)
        if int.from_bytes(data[:4], "little") == 0:
            return records, short
        records += 1


def median_ms(samples: list[float]) -> tuple[float, float, float]:
    return (
        statistics.median(samples) * 1000,
        min(samples) * 1000,
        max(samples) * 1000,
    )


def timed(repeat: int, action: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def reference_pack(tasks: list[TaskInfo]) -> Callable[[], bytearray]:
    rows = [
        (t.tgid, t.btime, t.command.encode()[:15], *t.counters) for t in tasks
    ]  # ready-made: no attribute reads, no encoding

    def pack() -> bytearray:
        buffer = bytearray(NETPERTASK_SIZE * (len(rows) + 1))
        pack_into = NETPERTASK.pack_into
        offset = 0
        for row in rows:
            pack_into(buffer, offset, *row)
            offset += NETPERTASK_SIZE
        return buffer

    return pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=15)
    options = parser.parse_args()
    count = options.processes
    tasks = make_tasks(count)
    started = time.monotonic()

    # reference and server-side packing, in this process
    reference = timed(options.repeat, reference_pack(tasks))
    local_server_dir = tempfile.mkdtemp(prefix="bench-atop-")
    local = AtopServer(os.path.join(local_server_dir, "local"), Backend(tasks), ExitJournal())
    conn = AtopConnection(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), 0)
    build = timed(options.repeat, lambda: local.build_answer(conn))
    assert len(local.build_answer(conn)) == NETPERTASK_SIZE * (count + 1)
    conn.sock.close()
    local.close()

    # the server in its own process, the clients here
    directory = tempfile.mkdtemp(prefix="bench-atop-")
    path = os.path.join(directory, "netatop-bpf-socket")
    server = AtopServer(path, Backend(tasks), ExitJournal())
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_read)
        try:
            serve_forever(server, ready_write)
        finally:
            os._exit(0)
    os.close(ready_write)
    server.listener.close()  # the child owns it now
    try:
        if os.read(ready_read, 1) != b"1":
            sys.exit("the server process did not start")
        os.close(ready_read)
        buffer = bytearray(RECEIVE_BUFFER_BYTES)
        client = connect(path)

        def one_answer() -> None:
            client.sendall(bytes(NETPERTASK_SIZE))
            records = read_answer_bulk(client, buffer)
            assert records == count, records

        one_answer()  # warm-up
        answer = timed(options.repeat, one_answer)

        def atop_style() -> None:
            client.sendall(bytes(NETPERTASK_SIZE))
            records, short = read_answer_like_atop(client)
            assert records == count and short == 0, (records, short)

        atop_like = timed(max(3, options.repeat // 3), atop_style)

        clients = [connect(path) for _ in range(CONCURRENT_CLIENTS)]
        buffers = [bytearray(RECEIVE_BUFFER_BYTES) for _ in clients]

        def concurrent() -> None:
            for sock in clients:
                sock.sendall(bytes(NETPERTASK_SIZE))
            for sock, buf in zip(clients, buffers, strict=True):
                assert read_answer_bulk(sock, buf) == count

        concurrent()
        together = timed(max(3, options.repeat // 3), concurrent)
        for sock in [client, *clients]:
            sock.close()
        if time.monotonic() - started > TIME_LIMIT_S:
            sys.exit("time limit passed; figures not printed")
    finally:
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.rmdir(directory)
        os.rmdir(local_server_dir)

    ref_ms = median_ms(reference)[0]
    answer_bytes = NETPERTASK_SIZE * (count + 1)
    print(f"atop socket, {count} processes, answer {answer_bytes} bytes, {options.repeat} requests")
    rows = [
        ("reference: pack_into from ready tuples", reference),
        ("build_answer() in the server", build),
        ("answer: request sent -> terminator read", answer),
        ("  same, client recv(96) per record (atop)", atop_like),
        (f"  {CONCURRENT_CLIENTS} clients at once, until the last is done", together),
    ]
    print(f"{'':48} {'median ms':>10} {'min':>8} {'max':>8} {'x ref':>7}")
    for label, samples in rows:
        med, low, high = median_ms(samples)
        print(f"{label:48} {med:10.1f} {low:8.1f} {high:8.1f} {med / ref_ms:7.2f}")


if __name__ == "__main__":
    main()
