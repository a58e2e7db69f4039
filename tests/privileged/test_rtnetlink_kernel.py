"""LocalAddresses against the real kernel (root, namespaces the tests make).

Topology: namespace ``host`` holds veth ``vh`` (192.0.2.1/24, 2001:db8::1/64)
whose peer ``vp`` (192.0.2.2/24, 2001:db8::2/64) is in namespace ``peer``;
``peer`` also owns 198.51.100.1 on its loopback, which ``host`` routes to
through 192.0.2.2.  The LocalAddresses object is made in a thread that
entered ``host`` (its sockets stay there) and is used from the test thread.
Ground truth: what ``ip`` was told to add and delete, and a fresh dump
compared with what notifications built.  No traffic.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netns import in_namespace

from netatopd.netlink.rtnetlink import LocalAddresses, open_event_socket

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="NOT RUN: needs root to create network namespaces; a run that skips this is no pass",
    ),
]

EVENT_WAIT_S = 3.0  # IPv6 local routes appear from the DAD work queue, a little later


def v4(text: str) -> bytes:
    return socket.inet_aton(text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def wait_for(local: LocalAddresses, condition: Callable[[], bool]) -> bool:
    """Apply notifications until ``condition`` holds, at most EVENT_WAIT_S."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        local.process_events()
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        select.select([local.fileno()], [], [], min(remaining, 0.05))


@pytest.fixture
def topology(make_netns: Callable[[str], Any]) -> Iterator[tuple[Any, Any]]:
    host = make_netns("ntpRh")
    peer = make_netns("ntpRp")
    host.run("ip", "link", "add", "vh", "type", "veth", "peer", "name", "vp", "netns", peer.name)
    host.run("ip", "addr", "add", "192.0.2.1/24", "dev", "vh")
    host.run("ip", "addr", "add", "2001:db8::1/64", "dev", "vh", "nodad")
    host.run("ip", "link", "set", "vh", "up")
    peer.run("ip", "addr", "add", "192.0.2.2/24", "dev", "vp")
    peer.run("ip", "addr", "add", "2001:db8::2/64", "dev", "vp", "nodad")
    peer.run("ip", "addr", "add", "198.51.100.1/32", "dev", "lo")
    peer.run("ip", "link", "set", "vp", "up")
    host.run("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2")
    yield host, peer


def fresh_routes(name: str) -> list[Any]:
    def body() -> list[Any]:
        with LocalAddresses() as local:
            return local.routes()

    return in_namespace(name, body)


def test_dump_finds_loopback_and_the_veth_address(topology: tuple[Any, Any]) -> None:
    host, _peer = topology
    with in_namespace(host.name, LocalAddresses) as local:
        # The veth's IPv6 route comes from the DAD work queue: let it settle.
        assert wait_for(local, lambda: local.is_local_v6(v6("2001:db8::1")))
        assert local.is_local_v4(v4("127.0.0.1"))
        assert local.is_local_v4(v4("127.1.2.3"))  # all of 127.0.0.0/8
        assert local.is_local_v6(v6("::1"))
        assert local.is_local_v4(v4("192.0.2.1"))
        assert local.is_local_v4(v4("192.0.2.255"))  # the subnet's broadcast
        assert not local.is_local_v4(v4("192.0.2.2"))  # the peer, on the link
        assert not local.is_local_v6(v6("2001:db8::2"))
        assert not local.is_local_v4(v4("198.51.100.1"))  # routed to another namespace
        assert not local.is_local_v4(v4("198.51.100.7"))


def test_peer_namespace_sees_its_own_addresses_only(topology: tuple[Any, Any]) -> None:
    _host, peer = topology
    with in_namespace(peer.name, LocalAddresses) as local:
        assert local.is_local_v4(v4("198.51.100.1"))
        assert local.is_local_v4(v4("192.0.2.2"))
        assert not local.is_local_v4(v4("192.0.2.1"))


def test_added_and_deleted_addresses_follow_notifications(topology: tuple[Any, Any]) -> None:
    host, _peer = topology
    with in_namespace(host.name, LocalAddresses) as local:
        generation = local.generation
        host.run("ip", "addr", "add", "198.51.100.5/32", "dev", "vh")
        host.run("ip", "addr", "add", "2001:db8:1::5/128", "dev", "vh", "nodad")
        assert wait_for(
            local,
            lambda: (
                local.is_local_v4(v4("198.51.100.5")) and local.is_local_v6(v6("2001:db8:1::5"))
            ),
        )
        assert local.generation > generation
        assert local.resyncs == 0  # found through notifications, not a dump
        host.run("ip", "addr", "del", "198.51.100.5/32", "dev", "vh")
        host.run("ip", "addr", "del", "2001:db8:1::5/128", "dev", "vh")
        assert wait_for(
            local,
            lambda: (
                not local.is_local_v4(v4("198.51.100.5"))
                and not local.is_local_v6(v6("2001:db8:1::5"))
            ),
        )
        assert local.is_local_v4(v4("192.0.2.1"))
        assert local.routes() == fresh_routes(host.name)


def test_anyip_prefix_route_is_local(topology: tuple[Any, Any]) -> None:
    host, _peer = topology
    with in_namespace(host.name, LocalAddresses) as local:
        host.run("ip", "route", "add", "local", "198.51.100.128/25", "dev", "lo")
        assert wait_for(local, lambda: local.is_local_v4(v4("198.51.100.200")))
        assert not local.is_local_v4(v4("198.51.100.1"))  # the /24 stays routed
        host.run("ip", "route", "del", "local", "198.51.100.128/25", "dev", "lo")
        assert wait_for(local, lambda: not local.is_local_v4(v4("198.51.100.200")))


def test_link_down_up_and_delete_stay_exact(topology: tuple[Any, Any]) -> None:
    host, _peer = topology
    with in_namespace(host.name, LocalAddresses) as local:
        wait_for(local, lambda: local.is_local_v6(v6("2001:db8::1")))
        host.run("ip", "link", "set", "vh", "down")
        # Down drops the subnet's broadcast route without a DELROUTE.
        assert wait_for(local, lambda: not local.is_local_v4(v4("192.0.2.255")))
        assert local.link_refreshes >= 1
        assert local.routes() == fresh_routes(host.name)
        host.run("ip", "link", "set", "vh", "up")
        assert wait_for(local, lambda: local.is_local_v4(v4("192.0.2.255")))
        host.run("ip", "link", "del", "vh")
        assert wait_for(local, lambda: not local.is_local_v4(v4("192.0.2.1")))
        assert local.routes() == fresh_routes(host.name)
        assert local.is_local_v4(v4("127.0.0.1"))


def test_lost_notifications_make_a_dump(topology: tuple[Any, Any], tmp_path: Any) -> None:
    """A receive buffer too small for a burst: ENOBUFS, then a dump that is exact."""
    host, _peer = topology

    def make() -> LocalAddresses:
        events = open_event_socket()
        events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        return LocalAddresses(events=events)

    addresses = [f"198.51.100.{n}" for n in range(10, 130)]
    batch = tmp_path / "addresses.batch"
    batch.write_text("".join(f"addr add {a}/32 dev vh\n" for a in addresses))
    with in_namespace(host.name, make) as local:
        host.run("ip", "-batch", str(batch))
        assert wait_for(local, lambda: all(local.is_local_v4(v4(a)) for a in addresses))
        assert local.resyncs >= 1
        assert local.routes() == fresh_routes(host.name)
