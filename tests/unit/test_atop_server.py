"""The atop socket (server.AtopServer) and the exit journal, without root.

The server runs on a real selector in a background thread, on a socket under
tmp_path.  The clients here speak atop's protocol byte for byte: 96 bytes of
request (random: atop sends an uninitialised struct), then one ``recv(96)`` per
record exactly as atop does, failing if any recv returns less than a whole
record.  Ground truth: the TaskInfos and ExitedTasks the fake backend and the
test's journal hold; one golden answer pins the bytes of struct netpertask.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from netatopd.exitlist import ExitJournal
from netatopd.protocol import (
    REPLY,
    REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    Command,
    unpack_netpertask,
)
from netatopd.server import (
    ATOP_SEND_BATCH_BYTES,
    AtopServer,
    ControlServer,
    ServerError,
    next_send_end,
    send_batch_bytes,
    send_records,
)
from netatopd.tasks import ExitedTask, TaskInfo

RECORD = 96
WAIT_S = 10.0  # longest wait for the server thread to notice something (not a timing check)

Record = tuple[int, int, str, tuple[int, ...]]


def make_task(tgid: int, btime: int, command: str, counters: Iterable[int]) -> TaskInfo:
    task = TaskInfo(tgid, start_time_ticks=btime * 100, btime=btime, command=command)
    task.counters = list(counters)
    return task


def finished(task: TaskInfo) -> ExitedTask:
    return task.finished(exit_time_s=1_700_000_999.0)


def record(task: TaskInfo | ExitedTask) -> Record:
    return (task.tgid, task.btime, task.command, tuple(task.counters))


class FakeBackend:
    def __init__(self) -> None:
        self.tasks: dict[int, TaskInfo] = {}
        self.fail = False

    def add(self, *tasks: TaskInfo) -> None:
        for task in tasks:
            self.tasks[task.tgid] = task

    def atop_tasks(self) -> Iterable[TaskInfo]:
        if self.fail:
            raise RuntimeError("backend failure for the test")
        return self.tasks.values()


class Loop:
    """The daemon's part: a selector loop in a thread calling the registered handlers."""

    def __init__(self, server: AtopServer | ControlServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.register(self.selector)
        self.lock = threading.Lock()  # held while a handler runs; tests mutate under it
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            events = self.selector.select(0.02)
            with self.lock:
                for key, mask in events:
                    try:
                        key.data(mask)
                    except Exception as err:  # kept for the test to see, as the daemon logs it
                        self.errors.append(err)

    def wait_for(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self.lock:
                if condition():
                    return
            time.sleep(0.005)
        raise AssertionError("the server did not get there in time")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        self.server.close()
        self.selector.close()


class AtopClient:
    """atop's netatop-bpf client: one 96-byte request, then recv(96) until id 0."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(path)

    def request(self) -> None:
        self.sock.sendall(os.urandom(RECORD))  # uninitialised contents: anything goes

    def read_answer(self) -> list[Record]:
        records: list[Record] = []
        while True:
            data = self.sock.recv(RECORD)
            assert len(data) == RECORD, f"recv returned {len(data)} bytes, not a whole record"
            rec = unpack_netpertask(data)
            if rec[0] == 0:
                assert data == bytes(RECORD)  # the terminator is all zero
                return records
            records.append(rec)

    def sample(self) -> list[Record]:
        self.request()
        records = self.read_answer()
        ids = [r[0] for r in records]
        assert len(ids) == len(set(ids)), "a tgid twice in one answer"
        return records

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def atop(tmp_path: Path) -> Iterator[tuple[AtopServer, FakeBackend, ExitJournal, Loop]]:
    backend = FakeBackend()
    journal = ExitJournal()
    server = AtopServer(str(tmp_path / "netatop-bpf-socket"), backend, journal)
    loop = Loop(server)
    try:
        yield server, backend, journal, loop
    finally:
        loop.close()


# -- the bytes on the wire -----------------------------------------------------------------


GOLDEN_ANSWER = bytes.fromhex(
    # id 4242, 4 bytes padding, btime 1700000123
    "92100000"
    "00000000"
    "7bf1536500000000"
    # command "curl", NUL padded to 16
    "6375726c000000000000000000000000"
    # tcpsndpacks 1 .. udprcvbytes 8, uint64 little endian
    "0100000000000000"
    "0200000000000000"
    "0300000000000000"
    "0400000000000000"
    "0500000000000000"
    "0600000000000000"
    "0700000000000000"
    "0800000000000000" + "00" * 96
    # terminator: id 0, everything zero
)


def test_golden_answer_bytes(atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop]) -> None:
    server, backend, _, _ = atop
    backend.add(make_task(4242, 1_700_000_123, "curl", range(1, 9)))
    client = AtopClient(server.path)
    try:
        client.request()
        received = b""
        while len(received) < len(GOLDEN_ANSWER):
            received += client.sock.recv(RECORD)
        assert received == GOLDEN_ANSWER
    finally:
        client.close()


def test_answers_every_live_process_and_keeps_the_connection(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, loop = atop
    tasks = [
        make_task(100, 1_700_000_001, "sshd", (1, 2, 3, 4, 0, 0, 0, 0)),
        make_task(200, 1_700_000_002, "a-very-long-command-name", (0, 0, 0, 0, 5, 6, 7, 8)),
        make_task(300, 1_700_000_003, "chronyd", (2**64 - 1, 0, 0, 0, 0, 0, 0, 1)),
    ]
    backend.add(*tasks)
    client = AtopClient(server.path)
    try:
        first = client.sample()
        assert sorted(first) == [
            (100, 1_700_000_001, "sshd", (1, 2, 3, 4, 0, 0, 0, 0)),
            (200, 1_700_000_002, "a-very-long-com", (0, 0, 0, 0, 5, 6, 7, 8)),
            (300, 1_700_000_003, "chronyd", (2**64 - 1, 0, 0, 0, 0, 0, 0, 1)),
        ]
        with loop.lock:
            tasks[0].counters[0] = 11
        second = client.sample()  # same connection, fresh counters
        assert (100, 1_700_000_001, "sshd", (11, 2, 3, 4, 0, 0, 0, 0)) in second
        assert len(second) == 3
        loop.wait_for(lambda: server.answers == 2)  # counted just after the last send
        assert server.requests == 2
    finally:
        client.close()
    assert not loop.errors


def test_empty_answer_is_just_the_terminator(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, _, _, _ = atop
    client = AtopClient(server.path)
    try:
        assert client.sample() == []
    finally:
        client.close()


def test_pipelined_requests_get_one_answer_each(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, _ = atop
    backend.add(make_task(7, 1_700_000_007, "x", range(8)))
    client = AtopClient(server.path)
    try:
        client.sock.sendall(bytes(RECORD * 3))
        for _ in range(3):
            assert client.read_answer() == [(7, 1_700_000_007, "x", tuple(range(8)))]
    finally:
        client.close()


def test_request_split_across_sends_is_answered_when_whole(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, loop = atop
    backend.add(make_task(7, 1_700_000_007, "x", range(8)))
    client = AtopClient(server.path)
    try:
        client.sock.sendall(bytes(50))
        loop.wait_for(lambda: len(server.connections) == 1)
        with loop.lock:
            assert server.requests == 0  # 50 bytes are not a request yet
        client.sock.sendall(bytes(46))
        assert client.read_answer() == [(7, 1_700_000_007, "x", tuple(range(8)))]
    finally:
        client.close()


def test_half_closed_client_gets_its_answer_then_eof(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, _ = atop
    backend.add(make_task(9, 1_700_000_009, "y", range(8)))
    client = AtopClient(server.path)
    try:
        client.request()
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_answer() == [(9, 1_700_000_009, "y", tuple(range(8)))]
        assert client.sock.recv(RECORD) == b""
    finally:
        client.close()


# -- finished processes: once more, then gone ---------------------------------------------


def test_finished_process_is_served_once_more_then_left_out(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, journal, loop = atop
    keep = make_task(10, 1_700_000_010, "keep", (1, 1, 1, 1, 0, 0, 0, 0))
    gone = make_task(20, 1_700_000_020, "gone", (5, 500, 4, 400, 0, 0, 0, 0))
    backend.add(keep, gone)
    client = AtopClient(server.path)
    try:
        assert sorted(client.sample()) == [record(keep), record(gone)]
        with loop.lock:
            gone.counters[1] = 600  # the last packets before it finished
            del backend.tasks[20]
            journal.append(finished(gone))
        assert sorted(client.sample()) == [
            record(keep),
            (20, 1_700_000_020, "gone", (5, 600, 4, 400, 0, 0, 0, 0)),
        ]
        assert client.sample() == [record(keep)]
        assert client.sample() == [record(keep)]
    finally:
        client.close()


def test_client_that_connects_later_does_not_get_earlier_finished(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, journal, loop = atop
    keep = make_task(10, 1_700_000_010, "keep", range(8))
    backend.add(keep)
    with loop.lock:
        journal.append(finished(make_task(30, 1_700_000_030, "before", range(8))))
    client = AtopClient(server.path)
    try:
        loop.wait_for(lambda: len(server.connections) == 1)
        with loop.lock:
            journal.append(finished(make_task(31, 1_700_000_031, "after", range(8))))
        assert sorted(client.sample()) == [
            record(keep),
            (31, 1_700_000_031, "after", tuple(range(8))),
        ]
    finally:
        client.close()


def test_concurrent_clients_each_get_their_own_once_more(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, journal, loop = atop
    gone = make_task(40, 1_700_000_040, "gone", (3, 300, 0, 0, 1, 100, 0, 0))
    backend.add(gone)
    first, second = AtopClient(server.path), AtopClient(server.path)
    try:
        assert first.sample() == [record(gone)]
        assert second.sample() == [record(gone)]
        with loop.lock:
            del backend.tasks[40]
            journal.append(finished(gone))
        assert first.sample() == [record(gone)]  # its once-more
        assert first.sample() == []
        assert first.sample() == []
        assert second.sample() == [record(gone)]  # still there for the other client
        assert second.sample() == []
        third = AtopClient(server.path)
        try:
            assert third.sample() == []  # connected after it finished
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_reused_pid_starts_from_zero_only_after_the_old_was_served(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, journal, loop = atop
    old = make_task(50, 1_700_000_050, "old", (100, 10_000, 90, 9_000, 0, 0, 0, 0))
    backend.add(old)
    client = AtopClient(server.path)
    try:
        assert client.sample() == [record(old)]
        new = make_task(50, 1_700_000_099, "new", (1, 60, 1, 60, 0, 0, 0, 0))
        with loop.lock:
            journal.append(finished(old))
            backend.add(new)  # same tgid, another btime
        assert client.sample() == [record(old)]  # the old one's final counters, the new not yet
        assert client.sample() == [record(new)]
        assert client.sample() == [record(new)]
    finally:
        client.close()


def test_pid_reused_twice_between_samples_is_served_in_order(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, journal, loop = atop
    first_life = make_task(60, 1_700_000_060, "one", (9, 9, 9, 9, 0, 0, 0, 0))
    second_life = make_task(60, 1_700_000_061, "two", (5, 5, 5, 5, 0, 0, 0, 0))
    third_life = make_task(60, 1_700_000_062, "three", (1, 1, 1, 1, 0, 0, 0, 0))
    other = make_task(61, 1_700_000_063, "other", (2, 2, 2, 2, 0, 0, 0, 0))
    backend.add(first_life)
    client = AtopClient(server.path)
    try:
        assert client.sample() == [record(first_life)]
        with loop.lock:
            journal.append(finished(first_life))
            journal.append(finished(second_life))
            journal.append(finished(other))
            backend.add(third_life)
        assert client.sample() == [record(first_life)]
        assert sorted(client.sample()) == [record(second_life), record(other)]
        assert client.sample() == [record(third_life)]
    finally:
        client.close()


# -- misbehaving clients cost nothing -----------------------------------------------------


def test_garbage_and_early_disconnect_leave_others_served(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, loop = atop
    tasks = [
        make_task(n, 1_700_000_000 + n, f"p{n}", (n, 2 * n, 0, 0, 0, 0, 0, n))
        for n in range(1, 50_001)
    ]
    backend.add(*tasks)
    patient = AtopClient(server.path)
    early = AtopClient(server.path)
    garbage = AtopClient(server.path)
    flood = AtopClient(server.path)
    try:
        early.request()
        assert len(early.sock.recv(RECORD)) == RECORD
        early.close()  # mid-answer: 50,000 records cannot all be queued yet
        garbage.sock.sendall(b"\x01\x02\x03\x04\x05")
        garbage.close()
        flood.sock.sendall(bytes(RECORD * 17))  # never reads: more than atop ever queues
        loop.wait_for(lambda: server.abandoned >= 1 and server.garbage >= 2)
        answer = patient.sample()
        assert len(answer) == 50_000
        assert sorted(answer) == sorted(record(t) for t in tasks)
        with loop.lock:
            assert server.abandoned == 1
            assert server.garbage == 2
            assert len(server.connections) == 1  # only the patient client is left
    finally:
        patient.close()
        flood.close()
    assert not loop.errors


def test_backend_failure_closes_that_client_only(
    atop: tuple[AtopServer, FakeBackend, ExitJournal, Loop],
) -> None:
    server, backend, _, loop = atop
    backend.add(make_task(70, 1_700_000_070, "z", range(8)))
    client = AtopClient(server.path)
    try:
        with loop.lock:
            backend.fail = True
        client.request()
        assert client.sock.recv(RECORD) == b""  # closed: atop reconnects next sample
        loop.wait_for(lambda: len(loop.errors) == 1)
        with loop.lock:
            backend.fail = False
    finally:
        client.close()
    again = AtopClient(server.path)
    try:
        assert again.sample() == [(70, 1_700_000_070, "z", tuple(range(8)))]
    finally:
        again.close()


# -- send sizes ---------------------------------------------------------------------------


def test_send_batch_fits_one_socket_buffer() -> None:
    assert send_batch_bytes(212_992) == 32_736  # Linux's default wmem: the full batch
    assert send_batch_bytes(65_600) == 32_736  # 65600 / 2 - 64 = 32736 exactly
    assert send_batch_bytes(65_598) == 32_640  # one byte short: one record less
    assert send_batch_bytes(4_608) == 2_208  # SOCK_MIN_SNDBUF: (2304 - 64) // 96 records
    assert send_batch_bytes(0) == 96  # never less than one record


def test_next_send_end() -> None:
    assert ATOP_SEND_BATCH_BYTES == 32_736 == 341 * RECORD
    assert next_send_end(0, 10 * RECORD) == 10 * RECORD
    assert next_send_end(0, 1000 * RECORD) == 32_736
    assert next_send_end(32_736, 1000 * RECORD) == 65_472
    assert next_send_end(100, 1000 * RECORD) == 192  # the rest of the split record only
    assert next_send_end(191, 1000 * RECORD) == 192


def test_every_send_is_whole_records_except_the_rest_of_a_split_one() -> None:
    answer = bytes(range(256)) * (RECORD * 1200 // 256)  # 1200 records
    # what a full socket might accept: a whole batch, short counts that split a
    # record, one byte, EAGAIN, ...
    accepted: list[int | None] = [32_736, 1000, None, 50, 46, 5000, 1, None, 32_736, 95]
    sends: list[tuple[int, int]] = []  # (offset, bytes asked)
    received = bytearray()

    def fake_send(view: memoryview) -> int:
        offset = len(received)
        sends.append((offset, len(view)))
        limit = accepted.pop(0) if accepted else len(view)
        if limit is None:
            raise BlockingIOError
        taken = min(limit, len(view))
        received.extend(view[:taken])
        return taken

    view = memoryview(answer)
    offset = 0
    rounds = 0
    while offset < len(answer):
        offset = send_records(fake_send, view, offset)  # each call: one EVENT_WRITE
        rounds += 1
        assert rounds < 100
    assert bytes(received) == answer
    for start, size in sends:
        if start % RECORD == 0:
            assert size % RECORD == 0 and 0 < size <= ATOP_SEND_BATCH_BYTES
        else:
            assert start + size == (start // RECORD + 1) * RECORD  # the rest of that record
    # after 33,736 bytes (33736 % 96 == 40) the next sends ask for the 56 that complete it
    assert sends[2:4] == [(33_736, 56), (33_736, 56)]


def test_short_send_stops_until_the_socket_is_writable() -> None:
    calls: list[int] = []

    def fake_send(view: memoryview) -> int:
        calls.append(len(view))
        return 10

    assert send_records(fake_send, memoryview(bytes(RECORD * 5)), 0) == 10
    assert calls == [RECORD * 5]
    assert send_records(fake_send, memoryview(bytes(RECORD * 5)), 10) == 20
    assert calls == [RECORD * 5, 86]


# -- the socket file ------------------------------------------------------------------------


def test_socket_file_mode_and_removal(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    server = AtopServer(path, FakeBackend(), ExitJournal())
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        server.close()
    assert not os.path.exists(path)


def test_group_gets_read_and_write(tmp_path: Path) -> None:
    gid = 65534 if os.geteuid() == 0 else os.getgid()
    path = str(tmp_path / "sock")
    server = AtopServer(path, FakeBackend(), ExitJournal(), group=str(gid))
    try:
        st = os.stat(path)
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o660
    finally:
        server.close()


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="no group named"):
        AtopServer(str(tmp_path / "sock"), FakeBackend(), ExitJournal(), group="no-such-group-f")
    assert not os.path.exists(tmp_path / "sock")


def test_refuses_a_path_another_program_serves(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(path)
        other.listen(1)
        with pytest.raises(ServerError, match="another program already serves"):
            AtopServer(path, FakeBackend(), ExitJournal())
        assert os.path.exists(path)  # not stolen
    finally:
        other.close()


def test_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens
    server = AtopServer(path, FakeBackend(), ExitJournal())
    loop = Loop(server)
    try:
        client = AtopClient(path)
        try:
            assert client.sample() == []
        finally:
            client.close()
    finally:
        loop.close()


# -- the control socket still works on the shared listening code -----------------------------


class ProbeBackend:
    def probe(self) -> bytes:
        return b"netatopd test"


def test_control_server_still_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    server = ControlServer(path, ProbeBackend())  # type: ignore[arg-type]
    loop = Loop(server)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(WAIT_S)
            client.connect(path)
            client.sendall(REQUEST.pack(REQUEST_MAGIC, Command.PROBE, 0, 0))
            reply = b""
            while len(reply) < REPLY.size + 13:
                reply += client.recv(4096)
        assert REPLY.unpack_from(reply) == (REPLY_MAGIC, Command.PROBE, 0, 13)
        assert reply[REPLY.size :] == b"netatopd test"
    finally:
        loop.close()
    assert not os.path.exists(path)


# -- the exit journal -------------------------------------------------------------------------


def exited(tgid: int) -> ExitedTask:
    return finished(make_task(tgid, 1_700_000_000, f"e{tgid}", range(8)))


def test_journal_numbers_entries_and_answers_since() -> None:
    journal = ExitJournal()
    assert journal.last_sequence == 0 and journal.since(0) == []
    assert [journal.append(exited(t)) for t in (101, 102, 103)] == [1, 2, 3]
    assert [(s, e.tgid) for s, e in journal.since(0)] == [(1, 101), (2, 102), (3, 103)]
    assert [(s, e.tgid) for s, e in journal.since(2)] == [(3, 103)]
    assert journal.since(3) == []
    assert len(journal) == 3  # reading consumes nothing


def test_journal_is_bounded_by_count() -> None:
    journal = ExitJournal(max_entries=3)
    for tgid in range(201, 206):
        journal.append(exited(tgid))
    assert [(s, e.tgid) for s, e in journal.since(0)] == [(3, 203), (4, 204), (5, 205)]
    assert journal.dropped == 2 and journal.last_sequence == 5


def test_journal_is_bounded_by_age() -> None:
    now = [1000.0]
    journal = ExitJournal(max_age_s=600.0, clock=lambda: now[0])
    journal.append(exited(301))
    now[0] = 1300.0
    journal.append(exited(302))
    now[0] = 1599.0
    assert [e.tgid for _, e in journal.since(0)] == [301, 302]
    now[0] = 1600.0
    assert [e.tgid for _, e in journal.since(0)] == [302]
    now[0] = 1900.0
    assert journal.since(0) == [] and journal.dropped == 2
    assert journal.last_sequence == 2  # numbering goes on
    assert journal.append(exited(303)) == 3
