"""Conntrack against the real kernel (root, a namespace the test makes).

No NAT rules here (test_forwarding.py makes real ones with ``nft``): the
entries NAT would make are made directly with IPCTNL_MSG_CT_NEW (the ``conntrack -I`` request), CTA_NAT_DST
or CTA_NAT_SRC asking the kernel's NAT core to pick the rewritten tuple.
What is checked is what the kernel answers a GET with, in every direction,
for TCP, UDP, and ICMP and ICMPv6 echo (tuples by identifier, type and code).
Real traffic checks the other fact: a namespace with no rule that uses
conntrack has no entry for it (UNTRACKED).  Traffic: loopback of the test's
namespace only.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from netns import in_namespace

from netatopd.netlink.attributes import pack_attribute, pack_nested
from netatopd.netlink.conntrack import (
    BE16,
    BE32,
    NETLINK_NETFILTER,
    NFGENMSG,
    Conntrack,
    CtaAttr,
    CtaNat,
    CtaProtoNat,
    CtnlMsg,
    CtState,
    CtStatus,
    FiveTuple,
    ctnl_msg_type,
    icmp_tuple,
    pack_tuple,
)
from netatopd.netlink.socket import NLM_F_ACK, NetlinkSocket

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="NOT RUN: needs root to create network namespaces; a run that skips this is no pass",
    ),
]

NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
ENTRY_TIMEOUT_S = 120
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ICMP, ICMPV6 = socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6

CLIENT = socket.inet_aton("198.51.100.7")
PUBLIC = socket.inet_aton("192.0.2.1")
INNER = socket.inet_aton("192.0.2.9")
HOST = socket.inet_aton("192.0.2.2")
CLIENT6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::7")
INNER6 = socket.inet_pton(socket.AF_INET6, "2001:db8::9")
HOST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def create_entry(
    original: FiveTuple,
    *,
    nat_attribute: int | None = None,
    nat_address: bytes = b"",
    nat_port: int = 0,
) -> None:
    """Add a conntrack entry for ``original`` in the current thread's namespace."""
    family = socket.AF_INET if len(original.src) == 4 else socket.AF_INET6
    body = NFGENMSG.pack(family, 0, 0)
    body += pack_tuple(CtaAttr.TUPLE_ORIG, original)
    body += pack_tuple(CtaAttr.TUPLE_REPLY, original.inverted())
    body += pack_attribute(CtaAttr.TIMEOUT, BE32.pack(ENTRY_TIMEOUT_S))
    if nat_attribute is not None:
        if family == socket.AF_INET:
            low, high = CtaNat.V4_MINIP, CtaNat.V4_MAXIP
        else:
            low, high = CtaNat.V6_MINIP, CtaNat.V6_MAXIP
        body += pack_nested(
            nat_attribute,
            pack_attribute(low, nat_address),
            pack_attribute(high, nat_address),
            pack_nested(
                CtaNat.PROTO,
                pack_attribute(CtaProtoNat.PORT_MIN, BE16.pack(nat_port)),
                pack_attribute(CtaProtoNat.PORT_MAX, BE16.pack(nat_port)),
            ),
        )
    with NetlinkSocket(NETLINK_NETFILTER) as netlink:
        netlink.request(ctnl_msg_type(CtnlMsg.NEW), NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, body)


def test_dnat_entry_every_direction(make_netns: Callable[[str], Any]) -> None:
    """Port forward: CLIENT -> PUBLIC:80 rewritten to INNER:8080."""
    ns = make_netns("ntpCd")
    original = FiveTuple(TCP, CLIENT, 40000, PUBLIC, 80)

    def body() -> None:
        create_entry(original, nat_attribute=CtaAttr.NAT_DST, nat_address=INNER, nat_port=8080)
        with Conntrack() as ct:
            state, entry = ct.lookup(original)
            assert state == CtState.TRACKED and entry is not None
            assert entry.original == original
            assert entry.reply == FiveTuple(TCP, INNER, 8080, CLIENT, 40000)
            assert entry.status & CtStatus.DST_NAT and not entry.status & CtStatus.SRC_NAT
            assert entry.nated
            # received before PREROUTING: delivered to the DNAT target
            assert ct.received_destination(TCP, CLIENT, 40000, PUBLIC, 80) == (
                CtState.TRACKED,
                INNER,
            )
            # the reply leaves after the reverse NAT as PUBLIC:80, sent by INNER
            assert ct.sent_source(TCP, PUBLIC, 80, CLIENT, 40000) == (CtState.TRACKED, INNER)
            # the kernel finds the entry by its reply tuple too
            assert ct.lookup(entry.reply) == (CtState.TRACKED, entry)
            assert ct.received_destination(TCP, CLIENT, 40001, PUBLIC, 80) == (
                CtState.UNTRACKED,
                PUBLIC,
            )
            assert ct.available

    in_namespace(ns.name, body)


def test_masquerade_entry_every_direction_ipv6(make_netns: Callable[[str], Any]) -> None:
    """Source NAT: INNER6:5000 -> CLIENT6:53 leaves as HOST6:61000."""
    ns = make_netns("ntpCs")
    original = FiveTuple(UDP, INNER6, 5000, CLIENT6, 53)

    def body() -> None:
        create_entry(original, nat_attribute=CtaAttr.NAT_SRC, nat_address=HOST6, nat_port=61000)
        with Conntrack() as ct:
            state, entry = ct.lookup(original)
            assert state == CtState.TRACKED and entry is not None
            assert entry.reply == FiveTuple(UDP, CLIENT6, 53, HOST6, 61000)
            assert entry.status & CtStatus.SRC_NAT
            # sent after POSTROUTING from HOST6 (local): it came from INNER6
            assert ct.sent_source(UDP, HOST6, 61000, CLIENT6, 53) == (CtState.TRACKED, INNER6)
            # the reply arrives for HOST6 (local): it goes on to INNER6
            assert ct.received_destination(UDP, CLIENT6, 53, HOST6, 61000) == (
                CtState.TRACKED,
                INNER6,
            )

    in_namespace(ns.name, body)


@pytest.mark.parametrize(
    ("protocol", "inner", "client", "host", "echo_request"),
    [(ICMP, INNER, CLIENT, HOST, 8), (ICMPV6, INNER6, CLIENT6, HOST6, 128)],
    ids=["icmp", "icmpv6"],
)
def test_masqueraded_ping_entry_every_direction(
    make_netns: Callable[[str], Any],
    protocol: int,
    inner: bytes,
    client: bytes,
    host: bytes,
    echo_request: int,
) -> None:
    """A ping from inner (echo identifier 7) to client, masqueraded as host with identifier
    9: the kernel keeps ICMP tuples by identifier, type and code (CTA_PROTO_ICMP*_ID,
    _TYPE, _CODE), finds the entry by either, and NAT maps the identifier as a port."""
    ns = make_netns("ntpCi")
    original = icmp_tuple(protocol, inner, client, 7, echo_request, 0)

    def body() -> None:
        create_entry(original, nat_attribute=CtaAttr.NAT_SRC, nat_address=host, nat_port=9)
        with Conntrack() as ct:
            state, entry = ct.lookup(original)
            assert state == CtState.TRACKED and entry is not None
            assert entry.original == original
            reply_type = original.inverted().dport >> 8
            assert entry.reply == icmp_tuple(protocol, client, host, 9, reply_type, 0)
            assert entry.status & CtStatus.SRC_NAT
            # the request leaves from host (local): it came from inner
            assert ct.sent_source(protocol, host, 9, client, echo_request << 8) == (
                CtState.TRACKED,
                inner,
            )
            # the reply arrives for host (local): it goes on to inner
            assert ct.received_destination(protocol, client, 9, host, reply_type << 8) == (
                CtState.TRACKED,
                inner,
            )
            # another identifier between the same addresses: no entry
            assert ct.lookup(icmp_tuple(protocol, host, client, 10, echo_request, 0)) == (
                CtState.UNTRACKED,
                None,
            )
            assert ct.failures == 0

    in_namespace(ns.name, body)


def test_entry_without_nat_leaves_the_addresses(make_netns: Callable[[str], Any]) -> None:
    ns = make_netns("ntpCn")
    original = FiveTuple(UDP, HOST, 5000, CLIENT, 53)

    def body() -> None:
        create_entry(original)
        with Conntrack() as ct:
            state, entry = ct.lookup(original)
            assert state == CtState.TRACKED and entry is not None
            assert not entry.nated
            assert ct.sent_source(UDP, HOST, 5000, CLIENT, 53) == (CtState.TRACKED, HOST)
            assert ct.received_destination(UDP, CLIENT, 53, HOST, 5000) == (
                CtState.TRACKED,
                HOST,
            )

    in_namespace(ns.name, body)


def test_real_traffic_without_rules_is_untracked(make_netns: Callable[[str], Any]) -> None:
    """No rule uses conntrack in a fresh namespace, so it tracks nothing there."""
    ns = make_netns("ntpCu")

    def body() -> tuple[CtState, CtState]:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            receiver.bind(("127.0.0.1", 0))
            sender.bind(("127.0.0.1", 0))
            sender.sendto(b"x" * 16, receiver.getsockname())
            receiver.settimeout(5)
            receiver.recvfrom(64)
            loopback = socket.inet_aton("127.0.0.1")
            with Conntrack() as ct:
                received = ct.received_destination(
                    UDP,
                    loopback,
                    sender.getsockname()[1],
                    loopback,
                    receiver.getsockname()[1],
                )
                sent = ct.sent_source(
                    UDP,
                    loopback,
                    sender.getsockname()[1],
                    loopback,
                    receiver.getsockname()[1],
                )
            assert received[1] == loopback and sent[1] == loopback
            return received[0], sent[0]
        finally:
            receiver.close()
            sender.close()

    assert in_namespace(ns.name, body) == (CtState.UNTRACKED, CtState.UNTRACKED)
