"""Golden bytes for the proc connector and ProcessEvents on a fake socket (no root).

Ground truth: the C layouts of linux/netlink.h, linux/connector.h and
linux/cn_proc.h on x86-64 (little-endian), and the datagrams the kernel sends
(drivers/connector/cn_proc.c: nlmsghdr of type NLMSG_DONE whose seq is the
cn_msg seq, cn_msg, proc_event of 40 bytes), written out by hand.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections import deque

import pytest

from netatopd.netlink import connector
from netatopd.netlink.connector import (
    CN_MSG,
    COMM_PROC_EVENT,
    EVENT_MESSAGE_BYTES,
    EXEC_PROC_EVENT,
    EXIT_PROC_EVENT,
    FORK_PROC_EVENT,
    ID_PROC_EVENT,
    PROC_EVENT_ACK,
    PROC_EVENT_BYTES,
    PROC_EVENT_HEADER,
    ConnectorMessage,
    ProcCnMcastOp,
    ProcessEvent,
    ProcessEvents,
    ProcEventKind,
    exit_status,
    pack_mcast_request,
    unpack_message,
    wall_time_s,
)
from netatopd.netlink.socket import NetlinkError, iter_messages

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="golden bytes are x86-64")


def golden(text: str) -> bytes:
    """Bytes from hex written with spaces and newlines for the reader."""
    return bytes.fromhex("".join(text.split()))


# --- layouts -----------------------------------------------------------------------


def test_struct_sizes_match_the_c_sizeof() -> None:
    assert CN_MSG.size == 20  # BUILD_BUG_ON(sizeof(struct cn_msg) != 20) in cn_proc.c
    assert PROC_EVENT_HEADER.size == 16  # what, cpu, timestamp_ns (aligned 8)
    assert PROC_EVENT_BYTES == 40  # sizeof(struct proc_event)
    assert FORK_PROC_EVENT.size == 16
    assert EXEC_PROC_EVENT.size == 8
    assert ID_PROC_EVENT.size == 16
    assert COMM_PROC_EVENT.size == 24
    assert EXIT_PROC_EVENT.size == 24  # the largest union member, with comm
    assert PROC_EVENT_ACK.size == 4
    assert EVENT_MESSAGE_BYTES == 76  # what recv() returns for one event


def test_kind_numbers_are_the_kernels() -> None:
    assert ProcEventKind.FORK == 0x1
    assert ProcEventKind.EXEC == 0x2
    assert ProcEventKind.UID == 0x4
    assert ProcEventKind.COMM == 0x200
    assert ProcEventKind.EXIT == 0x80000000
    assert ProcCnMcastOp.LISTEN == 1
    assert ProcCnMcastOp.IGNORE == 2


def test_listen_request_bytes() -> None:
    assert pack_mcast_request(ProcCnMcastOp.LISTEN, ack=4242) == golden(
        """
        28000000 0300 0000 00000000 00000000
        01000000 01000000 00000000 92100000 0400 0000
        01000000
        """
    )  # nlmsghdr (40 bytes, NLMSG_DONE), cn_msg (CN_IDX_PROC, CN_VAL_PROC, ack 4242, len 4), op
    ignore = pack_mcast_request(ProcCnMcastOp.IGNORE)
    assert ignore[-4:] == golden("02000000")
    assert ignore[28:32] == golden("00000000")  # ack 0


# --- golden events: pid 20326 (sh -c 'exec true') forked by 20325 --------------------

# nlmsghdr: 76 bytes, NLMSG_DONE, flags 0, seq 7, port 0 (the kernel)
# cn_msg:   CN_IDX_PROC, CN_VAL_PROC, seq 7, ack 0, len 40, flags 0
# proc_event: FORK, cpu 1, timestamp 0x0000038a12345678 ns
# fork:     parent 20325/20325, child 20326/20326, 8 bytes of the union unused
FORK = golden(
    """
    4c000000 0300 0000 07000000 00000000
    01000000 01000000 07000000 00000000 2800 0000
    01000000 01000000 78563412 8a030000
    654f0000 654f0000 664f0000 664f0000 00000000 00000000
    """
)
TIMESTAMP_NS = 0x0000038A12345678


def datagram(seq: int, cpu: int, what: str, body: str, ack: int = 0) -> bytes:
    """An event like FORK with another kind and body (hex, padded to the 24-byte union)."""
    union = golden(body)
    assert len(union) <= 24
    return (
        golden("4c000000 0300 0000")
        + seq.to_bytes(4, "little")
        + golden("00000000 01000000 01000000")
        + seq.to_bytes(4, "little")
        + ack.to_bytes(4, "little")
        + golden("2800 0000")
        + golden(what)
        + cpu.to_bytes(4, "little")
        + golden("78563412 8a030000")
        + union
        + bytes(24 - len(union))
    )


def exec_event(seq: int = 8, cpu: int = 1, pid: int = 20326) -> bytes:
    # exec: process_pid, process_tgid
    return datagram(seq, cpu, "02000000", (pid.to_bytes(4, "little") * 2).hex())


# exit: 20326/20326, exit_code 0x0100 (status 1), exit_signal 17 (SIGCHLD), parent 20325/20325
EXIT = datagram(9, 1, "00000080", "664f0000 664f0000 00010000 11000000 654f0000 654f0000")
# comm: thread 20327 of 20326 renamed "worker-1"
COMM = datagram(10, 1, "00020000", "674f0000 664f0000 776f726b65722d31 0000000000000000")
# uid: 20326/20326, ruid 1000, euid 0
UID = datagram(11, 1, "04000000", "664f0000 664f0000 e8030000 00000000")
# gid: not reported, counted
GID = datagram(12, 1, "40000000", "664f0000 664f0000 e8030000 e8030000")


def only_message(data: bytes) -> ConnectorMessage:
    spans = list(iter_messages(data, len(data)))
    assert len(spans) == 1
    msg_type, _flags, _seq, _pid, start, end = spans[0]
    assert msg_type == 3  # NLMSG_DONE
    return unpack_message(data, start, end)


def test_fork_fields() -> None:
    assert len(FORK) == EVENT_MESSAGE_BYTES
    message = only_message(FORK)
    assert (message.what, message.cpu, message.seq, message.ack) == (ProcEventKind.FORK, 1, 7, 0)
    assert message.event == ProcessEvent(
        kind=ProcEventKind.FORK,
        pid=20326,
        tgid=20326,
        parent_pid=20325,
        parent_tgid=20325,
        timestamp_ns=TIMESTAMP_NS,
        exit_code=0,
        exit_signal=0,
        uid=0,
        comm="",
        cpu=1,
    )
    assert message.event.is_process


def test_exec_fields() -> None:
    event = only_message(exec_event()).event
    assert event is not None
    assert (event.kind, event.pid, event.tgid, event.timestamp_ns) == (
        ProcEventKind.EXEC,
        20326,
        20326,
        TIMESTAMP_NS,
    )
    assert (event.parent_pid, event.parent_tgid, event.exit_code) == (0, 0, 0)


def test_exit_fields() -> None:
    event = only_message(EXIT).event
    assert event is not None
    assert event.kind == ProcEventKind.EXIT
    assert (event.pid, event.tgid, event.parent_pid, event.parent_tgid) == (
        20326,
        20326,
        20325,
        20325,
    )
    assert (event.exit_code, event.exit_signal) == (0x0100, 17)
    assert exit_status(event.exit_code) == 1


def test_thread_events_are_not_the_process() -> None:
    event = only_message(COMM).event
    assert event is not None
    assert (event.kind, event.pid, event.tgid, event.comm) == (
        ProcEventKind.COMM,
        20327,
        20326,
        "worker-1",
    )
    assert not event.is_process


def test_uid_fields() -> None:
    event = only_message(UID).event
    assert event is not None
    assert (event.kind, event.pid, event.uid) == (ProcEventKind.UID, 20326, 1000)


def test_ack_and_unreported_kinds_carry_no_event() -> None:
    ack = only_message(datagram(3, 0, "00000000", "0d000000", ack=4243))
    assert (ack.what, ack.ack, ack.error, ack.event) == (
        ProcEventKind.NONE,
        4243,
        errno.EACCES,
        None,
    )
    gid = only_message(GID)
    assert (gid.what, gid.seq, gid.event) == (ProcEventKind.GID, 12, None)


def with_cn_len(data: bytes, cn_len: int) -> bytes:
    return data[:32] + cn_len.to_bytes(2, "little") + data[34:]


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (FORK, 40),  # cut inside the proc_event header
        (FORK[:16] + golden("02000000") + FORK[20:], 76),  # a connector id other than CN_IDX_PROC
        (with_cn_len(FORK, 256), 76),  # cn_msg.len beyond the message
        (with_cn_len(FORK, 24), 76),  # FORK whose data ends after 8 bytes of its 16
        (with_cn_len(EXIT, 36), 76),  # EXIT whose data ends after 20 bytes of its 24
    ],
)
def test_malformed_messages_are_ebadmsg(data: bytes, end: int) -> None:
    with pytest.raises(NetlinkError) as caught:
        unpack_message(data, 16, end)
    assert caught.value.errno == errno.EBADMSG


@pytest.mark.parametrize(
    ("wait_status", "expected"),
    [(0x0000, 0), (0x0100, 1), (0xFF00, 255), (0x0009, -9), (0x0086, -6), (0x000F, -15)],
)
def test_exit_status(wait_status: int, expected: int) -> None:
    assert exit_status(wait_status) == expected


def test_wall_time_of_a_monotonic_timestamp() -> None:
    one_second_ago_ns = time.monotonic_ns() - 1_000_000_000
    assert abs(wall_time_s(one_second_ago_ns) - (time.time() - 1.0)) < 0.5


# --- ProcessEvents over a fake socket -------------------------------------------------

PORT_ID = 4242


class FakeConnector:
    """The connector socket: answers LISTEN like the kernel, then queued datagrams in order."""

    def __init__(self, *, answer_error: int = 0, answer: bool = True) -> None:
        self.queue: deque[tuple[bytes, int] | int] = deque()
        self.sent: list[bytes] = []
        self.answer_error = answer_error
        self.answer = answer
        self.send_error = 0
        self.next_seq: dict[int, int] = {}  # cpu -> the number its next answer takes
        self.closed = False
        self._pair = socket.socketpair()  # a real descriptor that never becomes readable

    def push(self, data: bytes, sender_port: int = 0) -> None:
        self.queue.append((data, sender_port))

    def push_error(self, error_number: int) -> None:
        self.queue.append(error_number)

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int:
        if self.send_error:
            raise OSError(self.send_error, "fake")
        self.sent.append(data)
        if self.answer and data[-4:] == golden("01000000"):
            # like the kernel: answered on the sender's CPU, with that CPU's next number
            cpu = min(os.sched_getaffinity(0))
            seq = self.next_seq.setdefault(cpu, 1000)
            self.next_seq[cpu] = seq + 1
            body = f"{self.answer_error:02x}000000"
            self.push(datagram(seq, cpu, "00000000", body, ack=PORT_ID + 1))
        return len(data)

    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.queue.popleft()
        if isinstance(item, int):
            raise OSError(item, "fake")
        data, sender_port = item
        buffer[: len(data)] = data[: len(buffer)]
        return len(data), (sender_port, 1)

    def getsockname(self) -> object:
        return (PORT_ID, 1)

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        self.closed = True
        for end in self._pair:
            end.close()


def subscribed(fake: FakeConnector | None = None) -> tuple[ProcessEvents, FakeConnector]:
    fake = fake or FakeConnector()
    return ProcessEvents(sock=fake, subscribe_timeout_s=0.2, prime_cpus=False), fake


def test_subscribe_sends_listen_with_the_port_id_as_ack() -> None:
    events, fake = subscribed()
    assert fake.sent == [pack_mcast_request(ProcCnMcastOp.LISTEN, ack=PORT_ID)]
    assert events.read() == []  # the answer is not an event
    assert (events.events, events.ignored_events, events.lost_events) == (0, 0, 0)


def test_priming_asks_again_from_every_cpu_and_gives_the_cpus_back() -> None:
    before = os.sched_getaffinity(0)
    fake = FakeConnector()
    events = ProcessEvents(sock=fake, subscribe_timeout_s=0.2)
    listen = pack_mcast_request(ProcCnMcastOp.LISTEN, ack=PORT_ID)
    assert events.primed_cpus >= 1
    assert fake.sent == [listen] * (1 + events.primed_cpus)
    assert os.sched_getaffinity(0) == before
    assert events.read() == []  # the answers are not events


def test_events_in_order_and_the_ones_before_the_answer_kept() -> None:
    fake = FakeConnector()
    fake.push(FORK)  # queued between bind() and the answer
    events, _ = subscribed(fake)
    fake.push(exec_event())
    fake.push(EXIT)
    got = events.read()
    assert [(e.kind, e.tgid) for e in got] == [
        (ProcEventKind.FORK, 20326),
        (ProcEventKind.EXEC, 20326),
        (ProcEventKind.EXIT, 20326),
    ]
    assert events.events == 3
    assert events.read() == []


def test_refused_subscription_raises_the_kernels_errno_and_closes() -> None:
    fake = FakeConnector(answer_error=errno.EPERM)
    with pytest.raises(NetlinkError) as caught:
        ProcessEvents(sock=fake, subscribe_timeout_s=0.2)
    assert caught.value.errno == errno.EPERM
    assert fake.closed


def test_someone_elses_answer_is_not_ours() -> None:
    fake = FakeConnector(answer=False)
    fake.push(datagram(3, 0, "00000000", "01000000", ack=PORT_ID + 7))  # refused, but not us
    with pytest.raises(NetlinkError) as caught:
        ProcessEvents(sock=fake, subscribe_timeout_s=0.05)
    assert caught.value.errno == errno.ETIMEDOUT
    assert "initial pid and user namespaces" in str(caught.value)
    assert fake.closed


def test_no_connector_in_this_namespace() -> None:
    fake = FakeConnector()
    fake.send_error = errno.ECONNREFUSED
    with pytest.raises(NetlinkError) as caught:
        ProcessEvents(sock=fake)
    assert caught.value.errno == errno.ECONNREFUSED
    assert "initial" in str(caught.value)


def test_enobufs_counts_an_overflow_and_asks_once_for_a_resync() -> None:
    events, fake = subscribed()
    fake.push(FORK)
    fake.push_error(errno.ENOBUFS)
    fake.push(exec_event(seq=8))
    got = events.read()
    assert [e.kind for e in got] == [ProcEventKind.FORK, ProcEventKind.EXEC]  # the queue is kept
    assert events.overflows == 1
    assert events.take_resync()
    assert not events.take_resync()


def test_sequence_gaps_count_lost_events_per_cpu() -> None:
    events, fake = subscribed()
    fake.push(exec_event(seq=10, cpu=0))
    fake.push(exec_event(seq=11, cpu=0))
    fake.push(exec_event(seq=100, cpu=1))  # another CPU counts on its own
    fake.push(exec_event(seq=14, cpu=0))  # 12 and 13 never came
    fake.push(exec_event(seq=101, cpu=1))
    assert len(events.read()) == 5
    assert events.lost_events == 2
    assert events.take_resync()
    fake.push(exec_event(seq=15, cpu=0))
    events.read()
    assert events.lost_events == 2
    assert not events.take_resync()


def test_an_overflow_asks_every_cpu_so_the_loss_counts_at_once() -> None:
    fake = FakeConnector()
    events = ProcessEvents(sock=fake, subscribe_timeout_s=0.2)  # primed: numbers known
    cpu = min(os.sched_getaffinity(0))
    seq = fake.next_seq[cpu]
    fake.push(exec_event(seq=seq, cpu=cpu))
    fake.next_seq[cpu] = seq + 1 + 5  # the kernel dropped five events of this CPU
    fake.push_error(errno.ENOBUFS)
    sent_before = len(fake.sent)
    assert [e.kind for e in events.read()] == [ProcEventKind.EXEC]
    assert len(fake.sent) == sent_before + events.primed_cpus  # asked again, from each CPU
    assert (events.overflows, events.lost_events) == (1, 5)
    assert events.take_resync()


def test_without_priming_a_loss_counts_at_the_next_event() -> None:
    events, fake = subscribed()
    fake.push(exec_event(seq=40, cpu=3))
    fake.push_error(errno.ENOBUFS)
    events.read()
    assert (events.overflows, events.lost_events, len(fake.sent)) == (1, 0, 1)
    fake.push(exec_event(seq=45, cpu=3))
    events.read()
    assert events.lost_events == 4


def test_sequence_wraps_without_loss() -> None:
    events, fake = subscribed()
    fake.push(exec_event(seq=0xFFFFFFFE, cpu=0))
    fake.push(exec_event(seq=0xFFFFFFFF, cpu=0))
    fake.push(exec_event(seq=0, cpu=0))
    fake.push(exec_event(seq=1, cpu=0))
    assert len(events.read()) == 4
    assert events.lost_events == 0
    assert not events.take_resync()


def test_old_kernel_answers_are_outside_the_sequence() -> None:
    events, fake = subscribed()
    fake.push(exec_event(seq=20, cpu=0))
    fake.push(datagram(77, 0xFFFFFFFF, "00000000", "00000000", ack=9))  # cpu -1: Linux < 6.6
    fake.push(exec_event(seq=21, cpu=0))
    assert len(events.read()) == 2
    assert events.lost_events == 0


def test_foreign_malformed_and_unreported_datagrams() -> None:
    events, fake = subscribed()
    fake.push(FORK, sender_port=31337)  # a user process, not the kernel
    fake.push(FORK[:16] + golden("02000000") + FORK[20:])  # another connector id
    fake.push(GID)
    fake.push(COMM)
    got = events.read()
    assert [e.kind for e in got] == [ProcEventKind.COMM]
    assert (events.foreign_datagrams, events.bad_messages, events.ignored_events) == (1, 1, 1)
    assert events.take_resync()  # a malformed datagram may have been an event


def test_close_unsubscribes_once() -> None:
    events, fake = subscribed()
    events.close()
    assert fake.sent[-1] == pack_mcast_request(ProcCnMcastOp.IGNORE, ack=PORT_ID)
    assert fake.closed
    events.close()
    assert len(fake.sent) == 2
    with pytest.raises(NetlinkError) as caught:
        events.read()
    assert caught.value.errno == errno.EBADF


def test_read_is_bounded_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector, "DATAGRAMS_PER_READ", 3)
    events, fake = subscribed()
    for seq in range(5):
        fake.push(exec_event(seq=seq, cpu=2))
    assert len(events.read()) == 3
    assert len(events.read()) == 2
