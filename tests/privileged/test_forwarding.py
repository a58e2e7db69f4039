"""Forwarded packets: counted for no process, in their own STATUS figures (libpcap path).

Three namespaces: a client (192.0.2.2), a router (192.0.2.1 and 198.51.100.1,
``ip_forward=1``) and a server (198.51.100.2); the daemon runs in the router
and captures on every interface of it.  Ground truth: the actors' own counts
(datagrams x wire size for UDP, TCP_INFO segments and bytes for TCP); each
forwarded packet is captured twice in the router, received on one interface
and sent on the other.  Then the same through source NAT (masquerade) on the
router, and with destination NAT to a socket of the router itself, whose
packets are the router's own.  nft (Debian package nftables) sets up NAT; its
masquerade rule counts the connections it rewrote, so each masquerade test
also shows that NAT happened.  Forwarded ICMP too (pings from a raw socket),
and pings through the masquerade: the client's are forwarded while the
router's own, between the same addresses outside, stay its own (the echo
identifier and conntrack tell them apart).

The same router with IPv6 (2001:db8:1::/64 inside, 2001:db8:2::/64 outside,
``net.ipv6.conf.all.forwarding=1``), on both capture paths: with libpcap the
forwarded packets are counted apart as with IPv4; with ``--capture kernel``
(which counts every namespace's sockets) they are never seen, so the client
and the server each count their own packets once, exactly, and nothing is
forwarded.  The same through IPv6 source NAT (an ip6 masquerade), ICMPv6
pings included.  On the kernel path ICMP is no socket's TCP or UDP traffic:
the ``icmp_*`` and ``forwarded_icmp_*`` figures stay 0 there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_kernel_path import balance

from harness import (
    LINK_OVERHEAD,
    UDP4_OVERHEAD,
    UDP6_OVERHEAD,
    Actor,
    Daemon,
    assert_balanced,
    fix_tcp_header_sizes,
    set_sysctl,
)
from test_daemon import ZERO_UDP, run_tcp

pytestmark = pytest.mark.privileged

CLIENT, ROUTER_INSIDE = "192.0.2.2", "192.0.2.1"
SERVER, ROUTER_OUTSIDE = "198.51.100.2", "198.51.100.1"
NOWHERE = "198.51.100.99"  # on the server's subnet, held by nobody: DNAT rewrites it
DATAGRAMS, REQUEST_BYTES, REPLY_BYTES = 30, 100, 300
ZERO_TCP = {"tcpsndpacks": 0, "tcpsndbytes": 0, "tcprcvpacks": 0, "tcprcvbytes": 0}
TCP_SEGMENT_OVERHEAD = 20 + 20 + LINK_OVERHEAD  # IP + TCP headers, link header and CRC


def nft_or_skip() -> str:
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("PRIVILEGED TEST SKIPPED: nft (Debian package nftables) is missing")
    return nft


@pytest.fixture
def net(make_netns: Any) -> dict[str, Any]:
    """client -- router -- server over two veth pairs; routes through the router."""
    client, router, server = make_netns("ntfc"), make_netns("ntfr"), make_netns("ntfs")
    for netns in (client, router, server):
        fix_tcp_header_sizes(netns)
    router.run("ip", "link", "add", "ri", "type", "veth", "peer", "name", "ci")
    router.run("ip", "link", "add", "ro", "type", "veth", "peer", "name", "so")
    router.run("ip", "link", "set", "ci", "netns", client.name)
    router.run("ip", "link", "set", "so", "netns", server.name)
    router.run("ip", "addr", "add", f"{ROUTER_INSIDE}/24", "dev", "ri")
    router.run("ip", "addr", "add", f"{ROUTER_OUTSIDE}/24", "dev", "ro")
    client.run("ip", "addr", "add", f"{CLIENT}/24", "dev", "ci")
    server.run("ip", "addr", "add", f"{SERVER}/24", "dev", "so")
    for netns, device in ((router, "ri"), (router, "ro"), (client, "ci"), (server, "so")):
        netns.run("ip", "link", "set", device, "up")
    client.run("ip", "route", "add", "default", "via", ROUTER_INSIDE)
    server.run("ip", "route", "add", "default", "via", ROUTER_OUTSIDE)
    set_sysctl(router, "net.ipv4.ip_forward", "1")
    return {"client": client, "router": router, "server": server}


@pytest.fixture
def router_daemon(net: dict[str, Any], tmp_path: Path) -> Any:
    started: list[Daemon] = []

    def start(*options: str) -> Daemon:
        d = Daemon(net["router"], tmp_path / f"run{len(started)}", *options)
        started.append(d)
        return d

    yield start
    for d in started:
        code = d.stop()
        assert code == 0, f"netatopd stopped with {code}:\n{d.logs()}"


def udp_through(net: dict[str, Any], d: Daemon, target: str, server_ns: str = "server") -> None:
    """DATAGRAMS requests from the client to target, each answered by the server; counted.

    UDP sockets closing send nothing: the figures can be read after.
    """
    server = Actor(
        net[server_ns], "udp_server", addr=SERVER, count=DATAGRAMS, reply_bytes=REPLY_BYTES
    )
    client = Actor(
        net["client"],
        "udp_client",
        addr=target,
        port=server.port,
        count=DATAGRAMS,
        size=REQUEST_BYTES,
        expect_reply=True,
    )
    try:
        assert client.read()["replies"] == DATAGRAMS
        assert server.read()["received"] == DATAGRAMS
        d.sync()
    finally:
        client.finish()
        server.finish()


def tcp_through(
    net: dict[str, Any], d: Daemon, rounds: int = 10
) -> tuple[int, int, dict[str, Any]]:
    """A TCP exchange client -> server: (segments, wire bytes) the two sides sent, summed,
    and STATUS read before the connection closes (its FIN segments are not in the truth)."""
    server = Actor(
        net["server"], "tcp_server", addr=SERVER, rounds=rounds, request_bytes=700, reply_bytes=900
    )
    client = Actor(
        net["client"],
        "tcp_client",
        addr=SERVER,
        port=server.port,
        rounds=rounds,
        request_bytes=700,
        reply_bytes=900,
    )
    try:
        assert client.read()["done"] and server.read()["done"]
        time.sleep(0.2)  # quiet: nothing more is in flight
        client.tell("measure")
        server.tell("measure")
        client_info, server_info = client.read(), server.read()
        d.sync()
        status = d.status()
    finally:
        client.finish()
        server.finish()
    # Each side sends one handshake segment with a 4-byte MSS option; the server's
    # SYN-ACK is not in the accepted socket's tcpi_segs_out.
    segments = client_info["segs_out"] + server_info["segs_out"] + 1
    wire_bytes = (
        segments * TCP_SEGMENT_OVERHEAD
        + 2 * 4
        + client_info["bytes_sent"]
        + server_info["bytes_sent"]
    )
    assert client_info["bytes_sent"] == rounds * 700 and server_info["bytes_sent"] == rounds * 900
    return segments, wire_bytes, status


def assert_only_forwarded(status: dict[str, Any]) -> None:
    """No packet of the router's own, no flow, no owner lookup, nothing unidentified."""
    for name in ("tcp_sent", "tcp_received", "udp_sent", "udp_received"):
        assert status[name] == 0, (name, status)
        assert status[f"{name}_unidentified"] == 0, (name, status)
    assert status["flows"] == 0 and status["tasks"] == 0 and status["exited"] == 0
    assert status["resolver_lookups"] == 0
    assert_balanced(status)


UDP_FORWARDED_BYTES = DATAGRAMS * (REQUEST_BYTES + UDP4_OVERHEAD + REPLY_BYTES + UDP4_OVERHEAD)


def test_forwarded_udp_and_tcp_are_nobody_s(net: dict[str, Any], router_daemon: Any) -> None:
    """30 requests of 100 bytes and 30 replies of 300 pass the router: each in and out."""
    d = router_daemon()
    udp_through(net, d, SERVER)
    status = d.status()
    assert status["forwarded_udp_received"] == 2 * DATAGRAMS
    assert status["forwarded_udp_sent"] == 2 * DATAGRAMS
    assert status["forwarded_udp_received_bytes"] == UDP_FORWARDED_BYTES
    assert status["forwarded_udp_sent_bytes"] == UDP_FORWARDED_BYTES
    assert_only_forwarded(status)
    segments, wire_bytes, status = tcp_through(net, d)
    assert status["forwarded_tcp_received"] == segments
    assert status["forwarded_tcp_sent"] == segments
    assert status["forwarded_tcp_received_bytes"] == wire_bytes
    assert status["forwarded_tcp_sent_bytes"] == wire_bytes
    assert status["forwarded_udp_received"] == 2 * DATAGRAMS  # unchanged
    assert_only_forwarded(status)


def test_masqueraded_traffic_is_forwarded_too(net: dict[str, Any], router_daemon: Any) -> None:
    """Source NAT on the router: outside, the flows carry the router's own address
    (198.51.100.1) and look local; conntrack tells them forwarded."""
    nft = nft_or_skip()
    router = net["router"]
    router.run(nft, "add table ip nat")
    router.run(nft, "add chain ip nat post { type nat hook postrouting priority srcnat ; }")
    router.run(nft, "add rule ip nat post oifname ro masquerade")
    d = router_daemon()
    udp_through(net, d, SERVER)
    segments, wire_bytes, status = tcp_through(net, d)
    assert status["forwarded_udp_received"] == 2 * DATAGRAMS
    assert status["forwarded_udp_sent"] == 2 * DATAGRAMS
    assert status["forwarded_udp_received_bytes"] == UDP_FORWARDED_BYTES
    assert status["forwarded_udp_sent_bytes"] == UDP_FORWARDED_BYTES
    assert status["forwarded_tcp_received"] == segments
    assert status["forwarded_tcp_sent"] == segments
    assert status["forwarded_tcp_received_bytes"] == wire_bytes
    assert status["forwarded_tcp_sent_bytes"] == wire_bytes
    assert status["conntrack"].startswith("asked for"), status["conntrack"]
    assert_only_forwarded(status)


@pytest.mark.parametrize("ownership", ["proc", "kernel"])
def test_dnat_to_the_router_is_the_router_s_traffic(
    net: dict[str, Any], router_daemon: Any, ownership: str
) -> None:
    """The client sends to 198.51.100.99:7000, which the router rewrites to a UDP server of
    its own (192.0.2.1): those packets are local, the server's, on its real tuple."""
    nft = nft_or_skip()
    router = net["router"]
    server = Actor(
        router, "udp_server", addr=ROUTER_INSIDE, count=DATAGRAMS, reply_bytes=REPLY_BYTES
    )
    try:
        router.run(nft, "add table ip nat")
        router.run(nft, "add chain ip nat pre { type nat hook prerouting priority dstnat ; }")
        router.run(
            nft,
            f"add rule ip nat pre ip daddr {NOWHERE} udp dport 7000 "
            f"dnat to {ROUTER_INSIDE}:{server.port}",
        )
        d = router_daemon("--ownership", ownership)
        client = Actor(
            net["client"],
            "udp_client",
            addr=NOWHERE,
            port=7000,
            count=DATAGRAMS,
            size=REQUEST_BYTES,
            expect_reply=True,
        )
        try:
            assert client.read()["replies"] == DATAGRAMS
            assert server.read()["received"] == DATAGRAMS
            d.sync()
            assert d.counters(server.pid) == {
                **ZERO_TCP,
                "udpsndpacks": DATAGRAMS,
                "udpsndbytes": DATAGRAMS * (REPLY_BYTES + UDP4_OVERHEAD),
                "udprcvpacks": DATAGRAMS,
                "udprcvbytes": DATAGRAMS * (REQUEST_BYTES + UDP4_OVERHEAD),
            }
        finally:
            client.finish()
        status = d.status()
        for name in ("udp_sent", "udp_received"):
            assert status[name] == DATAGRAMS and status[f"forwarded_{name}"] == 0
            assert status[f"{name}_unidentified"] == 0
        assert status["nat_rewrites"] >= 1
        assert_balanced(status)
    finally:
        server.finish()


def test_an_address_added_while_running_is_local_at_once(
    net: dict[str, Any], router_daemon: Any
) -> None:
    """The local table follows rtnetlink notifications: 198.51.100.99, added to the
    router after the daemon started, is the router's; its UDP server gets the packets."""
    d = router_daemon()
    net["router"].run("ip", "addr", "add", f"{NOWHERE}/32", "dev", "lo")
    server = Actor(net["router"], "udp_server", addr=NOWHERE, count=DATAGRAMS, reply_bytes=0)
    client = Actor(
        net["client"],
        "udp_client",
        addr=NOWHERE,
        port=server.port,
        count=DATAGRAMS,
        size=REQUEST_BYTES,
        expect_reply=True,
    )
    try:
        assert client.read()["replies"] == DATAGRAMS
        assert server.read()["received"] == DATAGRAMS
        d.sync()
        counters = d.counters(server.pid)
        assert counters["udprcvpacks"] == DATAGRAMS and counters["udpsndpacks"] == DATAGRAMS
        assert counters["udprcvbytes"] == DATAGRAMS * (REQUEST_BYTES + UDP4_OVERHEAD)
        status = d.status()
        assert status["forwarded_udp_received"] == 0 and status["forwarded_udp_sent"] == 0
        assert_balanced(status)
    finally:
        client.finish()
        server.finish()


# ICMP (or ICMPv6, for an IPv6 target) echo requests from a raw socket, each waited for
# (its reply), bounded in time.  The identifier is the pid's: two runs differ.
PINGS = """
import os, socket, struct, sys, time
target, count = sys.argv[1], int(sys.argv[2])
v6 = ":" in target


def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


if v6:  # the kernel fills in an ICMPv6 raw socket's checksum
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    request, reply = 128, 129
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    request, reply = 8, 0
sock.settimeout(2.0)
ident = os.getpid() & 0xFFFF
replies = 0
for seq in range(count):
    payload = bytes(56)
    header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
    check = 0 if v6 else checksum(header + payload)
    sock.sendto(struct.pack("!BBHHH", request, 0, check, ident, seq) + payload, (target, 0))
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        data = sock.recv(2048)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if icmp[0] == reply and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            replies += 1
            break
print(replies)
"""
PING_WIRE_BYTES = 20 + 8 + 56 + LINK_OVERHEAD  # IP + ICMP header + payload, link and CRC
PING6_WIRE_BYTES = 40 + 8 + 56 + LINK_OVERHEAD  # the same over IPv6


def masquerade(router: Any, family: str = "ip") -> None:
    """Source NAT of everything leaving the router by its outside interface (ro)."""
    nft = nft_or_skip()
    router.run(nft, f"add table {family} nat")
    router.run(
        nft, f"add chain {family} nat post {{ type nat hook postrouting priority srcnat ; }}"
    )
    router.run(nft, f"add rule {family} nat post oifname ro counter masquerade")


def masqueraded(router: Any, family: str = "ip") -> int:
    """How many connections the masquerade rule rewrote (its counter: NAT chains see the
    first packet of each conntrack entry only)."""
    listing = router.run(nft_or_skip(), f"list chain {family} nat post")
    counted = re.search(r"counter packets (\d+)", listing)
    assert counted is not None, listing
    return int(counted.group(1))


def test_forwarded_icmp_is_counted_apart(net: dict[str, Any], router_daemon: Any) -> None:
    """8 pings through the router and 5 to the router itself (IPv6 off, so no other ICMP):
    the router's own ICMP figures hold its 5 requests and 5 replies only, the 8 requests
    and 8 replies that pass through are forwarded ICMP, in and out."""
    for netns in net.values():
        set_sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")
    d = router_daemon()
    before = d.status()
    client = net["client"]
    assert client.run(sys.executable, "-c", PINGS, SERVER, "8").split() == ["8"]
    assert client.run(sys.executable, "-c", PINGS, ROUTER_INSIDE, "5").split() == ["5"]
    d.sync()
    status = d.status()
    assert status["forwarded_icmp_received"] == 2 * 8
    assert status["forwarded_icmp_sent"] == 2 * 8
    assert status["forwarded_icmp_received_bytes"] == 2 * 8 * PING_WIRE_BYTES
    assert status["forwarded_icmp_sent_bytes"] == 2 * 8 * PING_WIRE_BYTES
    assert status["icmp_received"] - before["icmp_received"] == 5
    assert status["icmp_sent"] - before["icmp_sent"] == 5
    assert_only_forwarded(status)


@pytest.mark.parametrize("capture", ["pcap", "kernel"])
def test_masqueraded_pings_are_forwarded_and_the_router_s_own_stay_its_own(
    net: dict[str, Any], router_daemon: Any, capture: str
) -> None:
    """Source NAT on the router (IPv6 off, so no other ICMP): 8 pings from the client to the
    server leave the router from its own outside address, as do the 5 pings the router
    sends to the server itself meanwhile, between the same two addresses (another echo
    identifier); 3 pings from the client to the router are the router's too.

    libpcap path: the 8 requests and 8 replies are forwarded ICMP, each in and out,
    bytes exact; the router's own ICMP figures hold its 5 + 3 requests and replies.
    Kernel path: the programs count sockets' TCP and UDP only, so ICMP is in neither
    figure (0), forwarded or not, as on every host there."""
    for netns in net.values():
        set_sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")
    masquerade(net["router"])
    d = router_daemon("--capture", capture)
    before = d.status()
    client, router = net["client"], net["router"]
    # The router's own pings run beside the client's (the same batches, most likely).
    own_pings = subprocess.Popen(
        [*router.exec_prefix, sys.executable, "-c", PINGS, SERVER, "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.run(sys.executable, "-c", PINGS, SERVER, "8").split() == ["8"]
    finally:
        own_replies, _ = own_pings.communicate(timeout=30)
    assert own_replies.split() == ["5"]
    assert client.run(sys.executable, "-c", PINGS, ROUTER_INSIDE, "3").split() == ["3"]
    d.sync()
    # One conntrack entry for the client's pings (one identifier), one for the router's.
    assert masqueraded(router) == 2
    status = d.status()
    icmp = {name: status[name] - before[name] for name in ("icmp_sent", "icmp_received")}
    if capture == "kernel":
        assert icmp == {"icmp_sent": 0, "icmp_received": 0}, status
        # The programs count the pings' sockets as sockets of another protocol: the raw
        # sockets' 8 + 5 + 3 requests and replies, and the 16 echo replies of the server's
        # and the router's own ICMP sockets; at least (the whole machine counts there).
        other = status["kernel_other_protocol_packets"] - before["kernel_other_protocol_packets"]
        assert other >= 2 * (8 + 5 + 3) + 8 + 5 + 3, other
        for name in ("icmp_sent", "icmp_received"):
            assert status[f"forwarded_{name}"] == 0 and status[f"forwarded_{name}_bytes"] == 0
        balance(d)
        return
    assert status["forwarded_icmp_received"] == 2 * 8
    assert status["forwarded_icmp_sent"] == 2 * 8
    assert status["forwarded_icmp_received_bytes"] == 2 * 8 * PING_WIRE_BYTES
    assert status["forwarded_icmp_sent_bytes"] == 2 * 8 * PING_WIRE_BYTES
    assert icmp == {"icmp_sent": 5 + 3, "icmp_received": 5 + 3}, status
    assert status["conntrack"].startswith("asked for"), status["conntrack"]
    assert_only_forwarded(status)


CLIENT6, ROUTER6_INSIDE = "2001:db8:1::2", "2001:db8:1::1"
SERVER6, ROUTER6_OUTSIDE = "2001:db8:2::2", "2001:db8:2::1"
TCP6_SEGMENT_OVERHEAD = 40 + 20 + LINK_OVERHEAD  # IPv6 + TCP headers, link header and CRC


@pytest.fixture
def net6(make_netns: Any) -> dict[str, Any]:
    """client -- router -- server over two veth pairs with IPv6 only on them."""
    client, router, server = make_netns("ntfc"), make_netns("ntfr"), make_netns("ntfs")
    for netns in (client, router, server):
        fix_tcp_header_sizes(netns)
    router.run("ip", "link", "add", "ri", "type", "veth", "peer", "name", "ci")
    router.run("ip", "link", "add", "ro", "type", "veth", "peer", "name", "so")
    router.run("ip", "link", "set", "ci", "netns", client.name)
    router.run("ip", "link", "set", "so", "netns", server.name)
    for netns, device, address in (
        (router, "ri", ROUTER6_INSIDE),
        (router, "ro", ROUTER6_OUTSIDE),
        (client, "ci", CLIENT6),
        (server, "so", SERVER6),
    ):
        netns.run("ip", "addr", "add", f"{address}/64", "dev", device, "nodad")
        netns.run("ip", "link", "set", device, "up")
    set_sysctl(router, "net.ipv6.conf.all.forwarding", "1")
    client.run("ip", "-6", "route", "add", "default", "via", ROUTER6_INSIDE)
    server.run("ip", "-6", "route", "add", "default", "via", ROUTER6_OUTSIDE)
    return {"client": client, "router": router, "server": server}


@pytest.mark.parametrize("nat", ["routed", "masquerade"])
@pytest.mark.parametrize("capture", ["pcap", "kernel"])
def test_forwarded_ipv6_udp_and_tcp_are_nobody_s(
    net6: dict[str, Any], tmp_path: Path, capture: str, nat: str
) -> None:
    """30 UDP requests of 100 bytes and 30 replies of 300, then a TCP exchange, from the
    client through the IPv6 router to the server; the daemon runs in the router.  With
    ``masquerade`` the router rewrites the client's address to its own outside one
    (nft, ip6 nat): outside, the flows carry 2001:db8:2::1 and look local; conntrack
    tells them forwarded (libpcap path), and the kernel path never sees them."""
    if nat == "masquerade":
        masquerade(net6["router"], "ip6")
    d = Daemon(net6["router"], tmp_path / "run", "--capture", capture, "--exit-lifetime-s", "300")
    actors: list[Actor] = []
    try:
        server = Actor(
            net6["server"], "udp_server", addr=SERVER6, count=DATAGRAMS, reply_bytes=REPLY_BYTES
        )
        client = Actor(
            net6["client"],
            "udp_client",
            addr=SERVER6,
            port=server.port,
            count=DATAGRAMS,
            size=REQUEST_BYTES,
            expect_reply=True,
        )
        actors += [server, client]
        assert client.read()["replies"] == DATAGRAMS
        assert server.read()["received"] == DATAGRAMS
        d.sync()
        udp_status = d.status()
        udp_pids = client.pid, server.pid
        tcp_server, tcp_client, server_info, client_info = run_tcp(
            net6["server"], net6["client"], d, SERVER6, SERVER6, 10, 700, 900
        )
        actors += [tcp_server, tcp_client]
        status = d.status()
        # Each side sends one handshake segment with a 4-byte MSS option; the server's
        # SYN-ACK is not in the accepted socket's tcpi_segs_out.
        segments = client_info["segs_out"] + server_info["segs_out"] + 1
        wire_bytes = (
            segments * TCP6_SEGMENT_OVERHEAD
            + 2 * 4
            + client_info["bytes_sent"]
            + server_info["bytes_sent"]
        )
        assert client_info["bytes_sent"] == 7000 and server_info["bytes_sent"] == 9000
        if nat == "masquerade":  # the UDP flow and the TCP connection, each rewritten
            assert masqueraded(net6["router"], "ip6") == 2
        if capture == "pcap":
            udp_bytes = DATAGRAMS * (REQUEST_BYTES + REPLY_BYTES + 2 * UDP6_OVERHEAD)
            for name in ("udp_received", "udp_sent"):
                assert udp_status[f"forwarded_{name}"] == 2 * DATAGRAMS, (name, udp_status)
                assert udp_status[f"forwarded_{name}_bytes"] == udp_bytes
                assert status[f"forwarded_{name}"] == 2 * DATAGRAMS
            assert_only_forwarded(udp_status)
            for name in ("tcp_received", "tcp_sent"):
                assert status[f"forwarded_{name}"] == segments, (name, status)
                assert status[f"forwarded_{name}_bytes"] == wire_bytes
            assert_only_forwarded(status)
            if nat == "masquerade":
                assert status["conntrack"].startswith("asked for"), status["conntrack"]
            return
        # --capture kernel: the endpoints' sockets are counted in their namespaces, each
        # packet once; the router forwards them unseen.
        for name in ("tcp_sent", "tcp_received", "udp_sent", "udp_received"):
            assert status[f"forwarded_{name}"] == 0, (name, status)
        udp_client_pid, udp_server_pid = udp_pids
        request, reply = REQUEST_BYTES + UDP6_OVERHEAD, REPLY_BYTES + UDP6_OVERHEAD
        assert d.counters(udp_client_pid) == {
            **ZERO_TCP,
            "udpsndpacks": DATAGRAMS,
            "udpsndbytes": DATAGRAMS * request,
            "udprcvpacks": DATAGRAMS,
            "udprcvbytes": DATAGRAMS * reply,
        }
        assert d.counters(udp_server_pid) == {
            **ZERO_TCP,
            "udpsndpacks": DATAGRAMS,
            "udpsndbytes": DATAGRAMS * reply,
            "udprcvpacks": DATAGRAMS,
            "udprcvbytes": DATAGRAMS * request,
        }
        for actor, info, passive in (
            (tcp_client, client_info, False),
            (tcp_server, server_info, True),
        ):
            sent = info["segs_out"] + (1 if passive else 0)  # the SYN-ACK (listener)
            assert d.counters(actor.pid) == {
                **ZERO_UDP,
                "tcpsndpacks": sent,
                "tcpsndbytes": sent * TCP6_SEGMENT_OVERHEAD + 4 + info["bytes_sent"],
                "tcprcvpacks": info["segs_in"],
                "tcprcvbytes": info["segs_in"] * TCP6_SEGMENT_OVERHEAD + 4 + info["bytes_received"],
            }
        balance(d)
    finally:
        for actor in actors:
            actor.finish()
        code = d.stop()
        assert code == 0, f"netatopd stopped with {code}:\n{d.logs()}"


def wait_for_no_tentative_address(netns: Any) -> None:
    """Bounded: until duplicate address detection is over (its neighbour solicitations,
    sent from ::, are no address of the router's)."""
    deadline = time.monotonic() + 5.0
    while netns.run("ip", "-6", "addr", "show", "tentative").strip():
        assert time.monotonic() < deadline, "IPv6 addresses still tentative after 5 s"
        time.sleep(0.1)


@pytest.mark.parametrize("capture", ["pcap", "kernel"])
def test_masqueraded_icmpv6_pings_are_forwarded(
    net6: dict[str, Any], tmp_path: Path, capture: str
) -> None:
    """IPv6 source NAT on the router: 8 ICMPv6 pings from the client to the server and 5
    the router sends to the server itself, between the same addresses outside.

    libpcap path: the client's 8 requests and 8 replies are forwarded ICMP, in and out,
    bytes exact; the router's own pings are its own ICMP (with its neighbour discovery,
    hence at least 5 each way).  Kernel path: ICMP is counted in neither figure."""
    router = net6["router"]
    masquerade(router, "ip6")
    for netns in net6.values():
        wait_for_no_tentative_address(netns)
    d = Daemon(router, tmp_path / "run", "--capture", capture)
    try:
        before = d.status()
        assert net6["client"].run(sys.executable, "-c", PINGS, SERVER6, "8").split() == ["8"]
        assert router.run(sys.executable, "-c", PINGS, SERVER6, "5").split() == ["5"]
        d.sync()
        status = d.status()
        assert masqueraded(router, "ip6") == 2  # the client's pings, the router's own
        own = {name: status[name] - before[name] for name in ("icmp_sent", "icmp_received")}
        if capture == "kernel":
            assert own == {"icmp_sent": 0, "icmp_received": 0}, status
            for name in ("icmp_sent", "icmp_received"):
                assert status[f"forwarded_{name}"] == 0, status
            balance(d)
            return
        for name in ("icmp_received", "icmp_sent"):
            assert status[f"forwarded_{name}"] == 2 * 8, (name, status)
            assert status[f"forwarded_{name}_bytes"] == 2 * 8 * PING6_WIRE_BYTES, status
            assert own[name] >= 5, (name, own)
        assert status["conntrack"].startswith("asked for"), status["conntrack"]
        assert_only_forwarded(status)
    finally:
        code = d.stop()
        assert code == 0, f"netatopd stopped with {code}:\n{d.logs()}"
