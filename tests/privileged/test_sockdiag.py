"""sock_diag exact lookups and dumps against real sockets (root, own netns).

Each test runs its body in a thread that entered a network namespace made
for it (``ip netns add``), so the sockets and the SockDiag netlink socket all
live there and nothing else on the machine can match.  Ground truth: the
inode of each socket (``os.fstat(sock.fileno()).st_ino``), its uid (0, or the
uid a forked child switched to), and for UDP the socket a datagram is really
delivered to.  Traffic: loopback inside the namespace only, bounded.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import pytest
from netns import in_namespace

from netatopd.netlink.sockdiag import ALL_STATES, SockDiag, SocketInfo, TcpState

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="NOT RUN: needs root to create network namespaces; a run that skips this is no pass",
    ),
]

LOOPBACK4 = socket.inet_aton("127.0.0.1")
LOOPBACK6 = socket.inet_pton(socket.AF_INET6, "::1")
ANY6 = bytes(16)
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
WAIT_TRIES = 200  # bounded polls of 5 ms while the kernel finishes a handshake
_counter = itertools.count()

T = TypeVar("T")


class NetnsRunner(Protocol):
    """Runs a callable in a thread inside the test's namespace, returns its value."""

    def __call__(self, body: Callable[[], T]) -> T: ...


def mapped(address4: bytes) -> bytes:
    """IPv4-mapped IPv6 address ::ffff:a.b.c.d."""
    return bytes(10) + b"\xff\xff" + address4


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@pytest.fixture
def in_netns() -> Iterator[NetnsRunner]:
    """Run a callable in a thread inside a fresh network namespace (lo up)."""
    name = f"ntpB{os.getpid()}{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

        def run(body: Callable[[], T]) -> T:
            return in_namespace(name, body)

        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def udp(family: int = socket.AF_INET, reuse: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def test_namespace_is_private(in_netns: NetnsRunner) -> None:
    def body() -> list[SocketInfo]:
        with SockDiag() as diag:
            return diag.dump(TCP, socket.AF_INET) + diag.dump(UDP, socket.AF_INET)

    assert in_netns(body) == []


def test_udp_connected_bound_wildcard_precedence(
    in_netns: NetnsRunner,
) -> None:
    """(a) connected, (b) bound to an address, (c) wildcard, all on one port."""

    def body() -> None:
        peer = udp()
        peer.bind(("127.0.0.1", 0))
        other = udp()
        other.bind(("127.0.0.1", 0))
        wildcard = udp(reuse=True)
        wildcard.bind(("0.0.0.0", 0))
        port = port_of(wildcard)
        bound = udp(reuse=True)
        bound.bind(("127.0.0.1", port))
        connected = udp(reuse=True)
        connected.bind(("127.0.0.1", port))
        connected.connect(("127.0.0.1", port_of(peer)))
        sockets = [peer, other, wildcard, bound, connected]
        try:
            with SockDiag() as diag:
                # (a) the connected socket, for its own peer
                info = diag.lookup(UDP, LOOPBACK4, port, LOOPBACK4, port_of(peer))
                assert info is not None
                assert info._replace(cookie=0) == SocketInfo(
                    family=socket.AF_INET,
                    protocol=UDP,
                    state=TcpState.ESTABLISHED,
                    local_addr=LOOPBACK4,
                    local_port=port,
                    remote_addr=LOOPBACK4,
                    remote_port=port_of(peer),
                    inode=inode_of(connected),
                    uid=0,
                    cookie=0,
                )
                # (b) the socket bound to 127.0.0.1, for any other peer
                info = diag.lookup(UDP, LOOPBACK4, port, LOOPBACK4, port_of(other))
                assert info is not None
                assert (info.inode, info.state, info.local_addr, info.remote_port) == (
                    inode_of(bound),
                    TcpState.CLOSE,
                    LOOPBACK4,
                    0,
                )
                # (c) the wildcard socket, for a local address nobody bound
                info = diag.lookup(UDP, bytes([192, 0, 2, 1]), port, bytes([198, 51, 100, 7]), 4000)
                assert info is not None
                assert (info.inode, info.local_addr, info.uid) == (
                    inode_of(wildcard),
                    bytes(4),
                    0,
                )
                # nothing on a port nobody bound
                assert diag.lookup(UDP, LOOPBACK4, 9, LOOPBACK4, port_of(peer)) is None
            # the kernel really delivers as the lookups said
            peer.sendto(b"to-connected", ("127.0.0.1", port))
            other.sendto(b"to-bound", ("127.0.0.1", port))
            connected.settimeout(5.0)
            bound.settimeout(5.0)
            assert connected.recv(100) == b"to-connected"
            assert bound.recv(100) == b"to-bound"
        finally:
            for sock in sockets:
                sock.close()

    in_netns(body)


def test_udp_each_kind_alone(in_netns: NetnsRunner) -> None:
    def body() -> None:
        with SockDiag() as diag:
            connected = udp()
            connected.bind(("127.0.0.1", 0))
            connected.connect(("127.0.0.1", 7))
            bound = udp()
            bound.bind(("127.0.0.1", 0))
            wildcard = udp()
            wildcard.bind(("0.0.0.0", 0))
            try:
                for sock in (connected, bound, wildcard):
                    info = diag.lookup(UDP, LOOPBACK4, port_of(sock), LOOPBACK4, 7)
                    assert info is not None
                    assert (info.inode, info.uid, info.family) == (
                        inode_of(sock),
                        0,
                        socket.AF_INET,
                    )
                # an IPv6 socket bound to ::1
                bound6 = udp(socket.AF_INET6)
                bound6.bind(("::1", 0))
                try:
                    info = diag.lookup(UDP, LOOPBACK6, port_of(bound6), LOOPBACK6, 7)
                    assert info is not None
                    assert (info.inode, info.family, info.local_addr) == (
                        inode_of(bound6),
                        socket.AF_INET6,
                        LOOPBACK6,
                    )
                finally:
                    bound6.close()
            finally:
                for sock in (connected, bound, wildcard):
                    sock.close()

    in_netns(body)


def test_udp_dual_stack_socket_found_for_ipv4(
    in_netns: NetnsRunner,
) -> None:
    """(d) AF_INET6 without IPV6_V6ONLY receiving IPv4: family AF_INET6, mapped."""

    def body() -> None:
        wildcard = udp(socket.AF_INET6)
        wildcard.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        wildcard.bind(("::", 0))
        connected = udp(socket.AF_INET6)
        connected.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        connected.bind(("::", 0))
        connected.connect(("::ffff:127.0.0.1", 7))
        v6only = udp(socket.AF_INET6)
        v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6only.bind(("::", 0))
        try:
            with SockDiag() as diag:
                info = diag.lookup(UDP, LOOPBACK4, port_of(wildcard), LOOPBACK4, 7)
                assert info is not None
                assert (info.family, info.inode, info.local_addr, info.local_port) == (
                    socket.AF_INET6,
                    inode_of(wildcard),
                    ANY6,
                    port_of(wildcard),
                )
                info = diag.lookup(UDP, LOOPBACK4, port_of(connected), LOOPBACK4, 7)
                assert info is not None
                assert info[:7] == (
                    socket.AF_INET6,
                    UDP,
                    TcpState.ESTABLISHED,
                    mapped(LOOPBACK4),
                    port_of(connected),
                    mapped(LOOPBACK4),
                    7,
                )
                assert (info.inode, info.uid) == (inode_of(connected), 0)
                # an IPV6_V6ONLY socket never gets IPv4
                assert diag.lookup(UDP, LOOPBACK4, port_of(v6only), LOOPBACK4, 7) is None
        finally:
            for sock in (wildcard, connected, v6only):
                sock.close()

    in_netns(body)


def test_udp_uid_of_other_user(in_netns: NetnsRunner) -> None:
    """A socket made by a process running as uid 65534 is reported with that uid."""

    def body() -> None:
        to_parent_r, to_parent_w = os.pipe()
        to_child_r, to_child_w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.close(to_parent_r)
                os.close(to_child_w)
                os.setgid(65534)
                os.setuid(65534)
                sock = udp()
                sock.bind(("127.0.0.1", 0))
                os.write(to_parent_w, f"{port_of(sock)} {inode_of(sock)}".encode())
                os.read(to_child_r, 1)  # until the parent is done
            finally:
                os._exit(0)
        os.close(to_parent_w)
        os.close(to_child_r)
        try:
            readable, _, _ = select.select([to_parent_r], [], [], 10.0)
            assert readable, "child did not report its socket"
            port, inode = (int(field) for field in os.read(to_parent_r, 100).split())
            with SockDiag() as diag:
                info = diag.lookup(UDP, LOOPBACK4, port, LOOPBACK4, 7)
            assert info is not None
            assert (info.inode, info.uid) == (inode, 65534)
        finally:
            os.close(to_child_w)
            os.close(to_parent_r)
            os.waitpid(child, 0)

    in_netns(body)


def wait_for_state(diag: SockDiag, tuple4: tuple[bytes, int, bytes, int], state: int) -> SocketInfo:
    """The TCP lookup of ``tuple4`` once it reports ``state`` (bounded polling)."""
    info = None
    for _ in range(WAIT_TRIES):
        info = diag.lookup(TCP, *tuple4)
        if info is not None and info.state == state:
            return info
        select.select([], [], [], 0.005)
    raise AssertionError(f"state {state} never reached; last answer {info}")


def test_tcp_established_both_ends_and_listener(
    in_netns: NetnsRunner,
) -> None:
    """(e) both ends of a connection; (f) the listener and the not-accepted socket."""

    def body() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server_port = port_of(listener)
        client = socket.socket()
        try:
            with SockDiag() as diag:
                # (f) only the listener exists: any 4-tuple to its port answers it
                info = diag.lookup(TCP, LOOPBACK4, server_port, bytes([198, 51, 100, 7]), 4000)
                assert info is not None
                assert info[:7] == (
                    socket.AF_INET,
                    TCP,
                    TcpState.LISTEN,
                    LOOPBACK4,
                    server_port,
                    bytes(4),
                    0,
                )
                assert (info.inode, info.uid) == (inode_of(listener), 0)
                # nothing at all on a port without listener
                assert diag.lookup(TCP, LOOPBACK4, 9, LOOPBACK4, 4000) is None

                client.connect(("127.0.0.1", server_port))
                client_port = port_of(client)
                server_end = (LOOPBACK4, server_port, LOOPBACK4, client_port)
                # (f) connected, in the accept queue, not accept()ed: no inode yet
                info = wait_for_state(diag, server_end, TcpState.ESTABLISHED)
                assert (info.inode, info.uid, info.remote_port) == (0, 0, client_port)

                accepted, _ = listener.accept()
                try:
                    # (e) both ends
                    info = diag.lookup(TCP, LOOPBACK4, client_port, LOOPBACK4, server_port)
                    assert info is not None
                    assert (info.inode, info.uid, info.state, info.local_port) == (
                        inode_of(client),
                        0,
                        TcpState.ESTABLISHED,
                        client_port,
                    )
                    info = diag.lookup(TCP, *server_end)
                    assert info is not None
                    assert (info.inode, info.uid, info.state, info.local_port) == (
                        inode_of(accepted),
                        0,
                        TcpState.ESTABLISHED,
                        server_port,
                    )
                finally:
                    accepted.close()
        finally:
            client.close()
            listener.close()

    in_netns(body)


def test_tcp_pending_request_socket(in_netns: NetnsRunner) -> None:
    """(f) a handshake the listener holds back (TCP_DEFER_ACCEPT): SYN_RECV, inode 0."""

    def body() -> None:
        listener = socket.socket()
        listener.setsockopt(TCP, socket.TCP_DEFER_ACCEPT, 30)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = socket.socket()
        try:
            client.connect(("127.0.0.1", port_of(listener)))
            with SockDiag() as diag:
                info = diag.lookup(TCP, LOOPBACK4, port_of(listener), LOOPBACK4, port_of(client))
                assert info is not None
                # a request socket is reported as SYN_RECV (3), not NEW_SYN_RECV
                assert (info.state, info.inode, info.uid, info.remote_port) == (
                    TcpState.SYN_RECV,
                    0,
                    0,
                    port_of(client),
                )
        finally:
            client.close()
            listener.close()

    in_netns(body)


def test_tcp_ipv6_and_dual_stack(in_netns: NetnsRunner) -> None:
    def body() -> None:
        listener = socket.socket(socket.AF_INET6)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(8)
        port = port_of(listener)
        client6 = socket.create_connection(("::1", port), timeout=5)
        accepted6, _ = listener.accept()
        client4 = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted4, _ = listener.accept()
        sockets = [listener, client6, accepted6, client4, accepted4]
        try:
            with SockDiag() as diag:
                info = diag.lookup(TCP, LOOPBACK6, port_of(client6), LOOPBACK6, port)
                assert info is not None
                assert (info.family, info.inode) == (socket.AF_INET6, inode_of(client6))
                info = diag.lookup(TCP, LOOPBACK6, port, LOOPBACK6, port_of(client6))
                assert info is not None
                assert (info.family, info.inode) == (socket.AF_INET6, inode_of(accepted6))
                # IPv4 tuple of a connection accepted by the dual-stack listener
                info = diag.lookup(TCP, LOOPBACK4, port, LOOPBACK4, port_of(client4))
                assert info is not None
                assert info[:7] == (
                    socket.AF_INET6,
                    TCP,
                    TcpState.ESTABLISHED,
                    mapped(LOOPBACK4),
                    port,
                    mapped(LOOPBACK4),
                    port_of(client4),
                )
                assert (info.inode, info.uid) == (inode_of(accepted4), 0)
        finally:
            for sock in sockets:
                sock.close()

    in_netns(body)


def test_dump_contains_known_listener(in_netns: NetnsRunner) -> None:
    def body() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        receiver = udp(socket.AF_INET6)
        receiver.bind(("::1", 0))
        try:
            with SockDiag() as diag:
                tcp4 = diag.dump(TCP, socket.AF_INET)
                assert [(i.inode, i.state, i.local_addr, i.local_port, i.uid) for i in tcp4] == [
                    (inode_of(listener), TcpState.LISTEN, LOOPBACK4, port_of(listener), 0)
                ]
                listening = diag.dump(TCP, socket.AF_INET, 1 << TcpState.LISTEN)
                assert [i.inode for i in listening] == [inode_of(listener)]
                assert diag.dump(TCP, socket.AF_INET, 1 << TcpState.ESTABLISHED) == []
                udp6 = diag.dump(UDP, socket.AF_INET6, ALL_STATES)
                assert [(i.inode, i.local_addr, i.local_port) for i in udp6] == [
                    (inode_of(receiver), LOOPBACK6, port_of(receiver))
                ]
        finally:
            listener.close()
            receiver.close()

    in_netns(body)
