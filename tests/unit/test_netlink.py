"""Golden bytes for the netlink and sock_diag structs and messages (no root).

Ground truth: the C layouts of linux/netlink.h and linux/inet_diag.h on
x86-64, written out by hand below, byte by byte.
"""

from __future__ import annotations

import errno
import socket
from collections import deque

import pytest
from golden import golden

from netatopd.netlink.sockdiag import (
    INET_DIAG_MSG,
    INET_DIAG_REQ_V2,
    INET_DIAG_SOCKID,
    SockDiag,
    SocketInfo,
    TcpState,
    unpack_inet_diag_msg,
)
from netatopd.netlink.socket import (
    NLMSGERR,
    NLMSGHDR,
    NetlinkError,
    NetlinkSocket,
    iter_messages,
    nlmsg_align,
)


class FakeNetlink:
    """Stands in for the AF_NETLINK socket: records sends, replays datagrams."""

    def __init__(self, datagrams: list[tuple[bytes, int]] | None = None) -> None:
        self.sent: list[tuple[bytes, tuple[int, int]]] = []
        self.queue: deque[tuple[bytes, int]] = deque(datagrams or [])
        self.closed = False
        self.interrupt_next = False

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int:
        self.sent.append((bytes(data), address))
        return len(data)

    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if self.interrupt_next:
            self.interrupt_next = False
            raise InterruptedError(errno.EINTR, "interrupted")
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, sender_port = self.queue.popleft()
        copied = min(len(data), nbytes)
        buffer[:copied] = data[:copied]
        # MSG_TRUNC: the real length of the datagram, even if longer than nbytes
        return (len(data) if flags & socket.MSG_TRUNC else copied), (sender_port, 0)

    def close(self) -> None:
        self.closed = True


# --- struct sizes against the C sizeof --------------------------------------


def test_struct_sizes_match_c_sizeof() -> None:
    # sizeof(struct nlmsghdr) = 4+2+2+4+4
    assert NLMSGHDR.size == 16
    # sizeof(struct nlmsgerr) = int + struct nlmsghdr
    assert NLMSGERR.size == 20
    # sizeof(struct inet_diag_sockid) = 2+2+16+16+4+8
    assert INET_DIAG_SOCKID.size == 48
    # sizeof(struct inet_diag_req_v2) = 1+1+1+1+4+48
    assert INET_DIAG_REQ_V2.size == 56
    # sizeof(struct inet_diag_msg) = 4x1 + 48 + 5x4
    assert INET_DIAG_MSG.size == 72


@pytest.mark.parametrize(
    ("length", "aligned"), [(0, 0), (1, 4), (4, 4), (5, 8), (72, 72), (73, 76)]
)
def test_nlmsg_align(length: int, aligned: int) -> None:
    assert nlmsg_align(length) == aligned


# --- requests ----------------------------------------------------------------

# Exact TCP IPv4 lookup, local 192.0.2.1:80, remote 198.51.100.7:40000, seq 1.
TCP4_LOOKUP_REQUEST = golden(
    "48000000 1400 0100 01000000 00000000"  # len 72, SOCK_DIAG_BY_FAMILY, REQUEST, seq 1, pid 0
    "02 06 00 00 ffffffff"  # AF_INET, IPPROTO_TCP, ext 0, pad, all states
    "0050 9c40"  # sport 80 (local), dport 40000 (remote), big endian
    "c0000201 00000000 00000000 00000000"  # src 192.0.2.1 (local)
    "c6336407 00000000 00000000 00000000"  # dst 198.51.100.7 (remote)
    "00000000"  # if 0
    "ffffffff ffffffff"  # cookie INET_DIAG_NOCOOKIE
)

# Exact TCP IPv6 lookup, local [2001:db8::1]:443, remote [2001:db8::2]:50000, seq 1.
TCP6_LOOKUP_REQUEST = golden(
    "48000000 1400 0100 01000000 00000000"
    "0a 06 00 00 ffffffff"  # AF_INET6, IPPROTO_TCP, ext, pad, states
    "01bb c350"  # sport 443 (local), dport 50000 (remote)
    "20010db8 00000000 00000000 00000001"  # src 2001:db8::1 (local)
    "20010db8 00000000 00000000 00000002"  # dst 2001:db8::2 (remote)
    "00000000 ffffffff ffffffff"  # if, cookie
)

# Exact UDP IPv4 lookup, local 192.0.2.1:53, remote 198.51.100.7:5353, seq 1:
# udp_diag wants the remote end in src/sport and the local end in dst/dport.
UDP4_LOOKUP_REQUEST = golden(
    "48000000 1400 0100 01000000 00000000"
    "02 11 00 00 ffffffff"  # AF_INET, IPPROTO_UDP
    "14e9 0035"  # sport 5353 (remote), dport 53 (local)
    "c6336407 00000000 00000000 00000000"  # src 198.51.100.7 (remote)
    "c0000201 00000000 00000000 00000000"  # dst 192.0.2.1 (local)
    "00000000 ffffffff ffffffff"
)

# Dump of every UDP IPv6 socket, seq 1: flags REQUEST | DUMP = 0x301.
UDP6_DUMP_REQUEST = golden(
    "48000000 1400 0103 01000000 00000000"
    "0a 11 00 00 ffffffff"
    "0000 0000"
    "00000000 00000000 00000000 00000000"
    "00000000 00000000 00000000 00000000"
    "00000000 ffffffff ffffffff"
)

# ENOENT answer to request seq 1: nlmsgerr(-2, original header).
ENOENT_REPLY = golden(
    "24000000 0200 0000 01000000 00000000"  # len 36, NLMSG_ERROR, seq 1
    "feffffff"  # error -2 (ENOENT)
    "48000000 1400 0100 01000000 00000000"  # the request's header
)

# inet_diag_msg of an established TCP IPv4 socket + one attribute, 88 bytes.
TCP4_DIAG_MSG = golden(
    "02 01 00 00"  # AF_INET, ESTABLISHED, timer, retrans
    "0050 9c40"  # sport 80, dport 40000
    "c0000201 00000000 00000000 00000000"  # src 192.0.2.1
    "c6336407 00000000 00000000 00000000"  # dst 198.51.100.7
    "00000000"  # if
    "2a000000 01000000"  # cookie: low word 42, high word 1
    "00000000 00000000 00000000"  # expires, rqueue, wqueue
    "e8030000"  # uid 1000
    "39300000"  # inode 12345
    "0500 0800 00 000000"  # nlattr INET_DIAG_SHUTDOWN = 0, padded: ignored
)
TCP4_DIAG_INFO = SocketInfo(
    family=socket.AF_INET,
    protocol=socket.IPPROTO_TCP,
    state=TcpState.ESTABLISHED,
    local_addr=bytes([192, 0, 2, 1]),
    local_port=80,
    remote_addr=bytes([198, 51, 100, 7]),
    remote_port=40000,
    inode=12345,
    uid=1000,
    cookie=0x1_0000_002A,
)


def reply(seq: int, flags: int, payload: bytes, msg_type: int = 20) -> bytes:
    """One message with a hand-checked header layout (len, type, flags, seq, pid 0)."""
    length = 16 + len(payload)
    header = (
        length.to_bytes(4, "little")
        + msg_type.to_bytes(2, "little")
        + flags.to_bytes(2, "little")
        + seq.to_bytes(4, "little")
        + bytes(4)
    )
    return header + payload + bytes(-len(payload) % 4)


def test_tcp4_lookup_request_bytes() -> None:
    fake = FakeNetlink([(reply(1, 0, TCP4_DIAG_MSG), 0)])
    diag = SockDiag(NetlinkSocket(sock=fake))
    info = diag.lookup(
        socket.IPPROTO_TCP, bytes([192, 0, 2, 1]), 80, bytes([198, 51, 100, 7]), 40000
    )
    assert fake.sent == [(TCP4_LOOKUP_REQUEST, (0, 0))]
    assert info == TCP4_DIAG_INFO


def test_tcp6_lookup_request_bytes() -> None:
    fake = FakeNetlink([(ENOENT_REPLY, 0)])
    diag = SockDiag(NetlinkSocket(sock=fake))
    local = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    remote = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert diag.lookup(socket.IPPROTO_TCP, local, 443, remote, 50000) is None
    assert fake.sent == [(TCP6_LOOKUP_REQUEST, (0, 0))]


def test_udp4_lookup_swaps_ends() -> None:
    fake = FakeNetlink([(ENOENT_REPLY, 0)])
    diag = SockDiag(NetlinkSocket(sock=fake))
    diag.lookup(socket.IPPROTO_UDP, bytes([192, 0, 2, 1]), 53, bytes([198, 51, 100, 7]), 5353)
    assert fake.sent[0][0] == UDP4_LOOKUP_REQUEST


def test_dump_request_bytes_and_multipart_reply() -> None:
    udp6_msg = bytearray(INET_DIAG_MSG.size)
    udp6_msg[0] = socket.AF_INET6
    udp6_msg[1] = TcpState.CLOSE
    udp6_msg[4:6] = (53).to_bytes(2, "big")
    udp6_msg[68:72] = (777).to_bytes(4, "little")  # inode
    second = bytes(udp6_msg[:68]) + (778).to_bytes(4, "little")
    third = bytes(udp6_msg[:68]) + (779).to_bytes(4, "little")
    done = reply(1, 0x2, bytes(4), msg_type=3)
    datagrams = [
        (reply(0xDEAD, 0x2, b"stale!!!"), 0),  # earlier sequence: skipped
        (reply(1, 0x2, bytes(udp6_msg)) + reply(1, 0x2, second), 0),
        (reply(1, 0x2, b"\xff" * 72), 4242),  # not from the kernel: skipped
        (reply(1, 0x2, third) + done, 0),
    ]
    fake = FakeNetlink(datagrams)
    netlink = NetlinkSocket(sock=fake)
    fake.interrupt_next = True  # one EINTR, retried
    infos = SockDiag(netlink).dump(socket.IPPROTO_UDP, socket.AF_INET6)
    assert fake.sent == [(UDP6_DUMP_REQUEST, (0, 0))]
    assert [info.inode for info in infos] == [777, 778, 779]
    assert infos[0] == SocketInfo(
        family=socket.AF_INET6,
        protocol=socket.IPPROTO_UDP,
        state=TcpState.CLOSE,
        local_addr=bytes(16),
        local_port=53,
        remote_addr=bytes(16),
        remote_port=0,
        inode=777,
        uid=0,
        cookie=0,
    )
    assert netlink.stale_messages == 1
    assert netlink.foreign_datagrams == 1
    assert not fake.queue


def test_parse_reply_message() -> None:
    assert unpack_inet_diag_msg(TCP4_DIAG_MSG, socket.IPPROTO_TCP) == TCP4_DIAG_INFO


def test_short_inet_diag_msg_is_ebadmsg() -> None:
    with pytest.raises(NetlinkError) as caught:
        unpack_inet_diag_msg(TCP4_DIAG_MSG[:71], socket.IPPROTO_TCP)
    assert caught.value.errno == errno.EBADMSG


def test_enoent_raises_netlink_error_with_errno() -> None:
    fake = FakeNetlink([(ENOENT_REPLY, 0)])
    with pytest.raises(NetlinkError) as caught:
        NetlinkSocket(sock=fake).request(20, 0, bytes(56))
    assert caught.value.errno == errno.ENOENT
    assert isinstance(caught.value, OSError)


def test_other_error_propagates_from_lookup() -> None:
    eperm = reply(1, 0, (-errno.EPERM & 0xFFFFFFFF).to_bytes(4, "little") + bytes(16), 2)
    diag = SockDiag(NetlinkSocket(sock=FakeNetlink([(eperm, 0)])))
    with pytest.raises(NetlinkError) as caught:
        diag.lookup(socket.IPPROTO_TCP, bytes(4), 1, bytes(4), 2)
    assert caught.value.errno == errno.EPERM


def test_ack_ends_reply() -> None:
    ack = reply(1, 0, bytes(20), msg_type=2)
    fake = FakeNetlink([(reply(1, 0x2, b"abcd") + ack, 0)])
    assert NetlinkSocket(sock=fake).request(20, 0x4, b"") == [b"abcd"]


def test_done_with_error_raises() -> None:
    done = reply(1, 0x2, (-errno.EINTR & 0xFFFFFFFF).to_bytes(4, "little"), msg_type=3)
    with pytest.raises(NetlinkError) as caught:
        NetlinkSocket(sock=FakeNetlink([(done, 0)])).request(20, 0x300, b"")
    assert caught.value.errno == errno.EINTR


def test_sequence_numbers_increase() -> None:
    fake = FakeNetlink([(reply(1, 0, b"one!"), 0), (reply(2, 0, b"two!"), 0)])
    netlink = NetlinkSocket(sock=fake)
    assert netlink.request(20, 0, b"") == [b"one!"]
    assert netlink.request(20, 0, b"") == [b"two!"]
    assert [NLMSGHDR.unpack_from(data)[3] for data, _ in fake.sent] == [1, 2]


def test_lying_length_is_ebadmsg_and_drains() -> None:
    good = reply(1, 0x2, TCP4_DIAG_MSG)  # 104 bytes
    lying = bytearray(good)
    lying[0:4] = (200).to_bytes(4, "little")  # claims more than the datagram holds
    leftover = reply(1, 0x2, b"rest") + reply(1, 0x2, bytes(4), msg_type=3)
    fake = FakeNetlink([(bytes(lying), 0), (leftover, 0)])
    with pytest.raises(NetlinkError) as caught:
        SockDiag(NetlinkSocket(sock=fake)).dump(socket.IPPROTO_TCP, socket.AF_INET)
    assert caught.value.errno == errno.EBADMSG
    assert not fake.queue  # the rest of the abandoned dump was read and dropped


@pytest.mark.parametrize(
    "datagram",
    [
        golden("08000000 1400 0000"),  # a header cut short: 8 trailing bytes
        golden("08000000 1400 0000 01000000 00000000"),  # nlmsg_len 8 < header
        golden("14000000 0200 0000 01000000 00000000"),  # NLMSG_ERROR, 4-byte payload cut
    ],
)
def test_malformed_messages_are_ebadmsg(datagram: bytes) -> None:
    with pytest.raises(NetlinkError) as caught:
        NetlinkSocket(sock=FakeNetlink([(datagram, 0)])).request(20, 0, b"")
    assert caught.value.errno == errno.EBADMSG


def test_unexpected_reply_type_is_ebadmsg() -> None:
    fake = FakeNetlink([(reply(1, 0, TCP4_DIAG_MSG, msg_type=21), 0)])
    with pytest.raises(NetlinkError) as caught:
        SockDiag(NetlinkSocket(sock=fake)).lookup(socket.IPPROTO_TCP, bytes(4), 1, bytes(4), 2)
    assert caught.value.errno == errno.EBADMSG


def test_truncated_datagram_is_emsgsize() -> None:
    huge = reply(1, 0x2, bytes(70_000))
    with pytest.raises(NetlinkError) as caught:
        NetlinkSocket(sock=FakeNetlink([(huge, 0)])).request(20, 0x300, b"")
    assert caught.value.errno == errno.EMSGSIZE


def test_iter_messages_offsets() -> None:
    datagram = reply(7, 0x2, b"abcde") + reply(7, 0, b"", msg_type=3)
    assert list(iter_messages(datagram, len(datagram))) == [
        (20, 0x2, 7, 0, 16, 21),
        (3, 0, 7, 0, 40, 40),
    ]


def test_closed_socket_raises_ebadf() -> None:
    fake = FakeNetlink()
    netlink = NetlinkSocket(sock=fake)
    netlink.close()
    assert fake.closed
    with pytest.raises(NetlinkError) as caught:
        netlink.request(20, 0, b"")
    assert caught.value.errno == errno.EBADF


def test_lookup_rejects_mixed_families() -> None:
    diag = SockDiag(NetlinkSocket(sock=FakeNetlink()))
    with pytest.raises(ValueError):
        diag.lookup(socket.IPPROTO_TCP, bytes(4), 1, bytes(16), 2)


def test_no_reply_is_etimedout() -> None:
    # SO_RCVTIMEO expiry shows as EAGAIN (BlockingIOError) on the real socket
    with pytest.raises(NetlinkError) as caught:
        NetlinkSocket(sock=FakeNetlink()).request(20, 0, b"")
    assert caught.value.errno == errno.ETIMEDOUT


def test_real_socket_timeout_option_accepted() -> None:
    # creating an AF_NETLINK sock_diag socket needs no privilege
    netlink = NetlinkSocket(timeout_s=0.25)
    netlink.close()
