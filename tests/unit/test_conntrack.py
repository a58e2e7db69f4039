"""Golden bytes for ctnetlink requests and entries, and the NAT arithmetic (no root).

Ground truth: the C layouts of linux/netfilter/nfnetlink.h and
nfnetlink_conntrack.h written out by hand, and one entry as Linux 6.18 sent
it (198.51.100.7:40000 -> 192.0.2.1:80 TCP, DNAT to 192.0.2.9:8080, made
with IPCTNL_MSG_CT_NEW in a scratch namespace), and an ICMP echo entry as it
sent it (a ping 192.0.2.1 -> 192.0.2.1, identifier 0x1234, asked for by its
reply tuple).
"""

from __future__ import annotations

import errno
import socket

import pytest
from golden import golden, v4, v6

from netatopd.netlink.conntrack import (
    NFGENMSG,
    Conntrack,
    ConntrackEntry,
    CtaAttr,
    CtnlMsg,
    CtState,
    CtStatus,
    FiveTuple,
    ctnl_msg_type,
    destination_after_nat,
    icmp_tuple,
    is_icmp_query,
    pack_get_request,
    source_before_nat,
    unpack_entry,
)
from netatopd.netlink.socket import NLMSGHDR, NetlinkError

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ICMP, ICMPV6 = socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6


# The kernel's answer to IPCTNL_MSG_CT_GET: nlmsg_type 0x0100 (IPCTNL_MSG_CT_NEW),
# flags NLM_F_MULTI with no NLMSG_DONE after it; then nfgenmsg (AF_INET) and the
# attributes CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_MARK, CTA_ID,
# CTA_USE, CTA_TIMEOUT, CTA_PROTOINFO (TCP) and CTA_SYNPROXY.
KERNEL_ENTRY_DNAT = golden(
    """
    f0000000 0001 0200 07000000 22670000
    02 00 0000
    3400 0180
      1400 0180  0800 0100 c6336407  0800 0200 c0000201
      1c00 0280  0500 0100 06000000  0600 0200 9c400000  0600 0300 00500000
    3400 0280
      1400 0180  0800 0100 c0000209  0800 0200 c6336407
      1c00 0280  0500 0100 06000000  0600 0200 1f900000  0600 0300 9c400000
    0800 0300 000001a8
    0800 0800 00000000
    0800 0c00 901bee0c
    0800 0b00 00000002
    0800 0700 0000003c
    3000 0480
      2c00 0180  0500 0100 00000000  0500 0200 00000000  0500 0300 00000000
                 0600 0400 00000000  0600 0500 00000000
    1c00 1880  0800 0100 00000000  0800 0200 00000000  0800 0300 00000000
    """
)


# The kernel's answer to a GET of the reply tuple of a ping (Linux 6.18): both tuples
# carry CTA_PROTO_NUM 1, CTA_PROTO_ICMP_ID 0x1234, CTA_PROTO_ICMP_TYPE (8 in the
# original, 0 in the reply) and CTA_PROTO_ICMP_CODE 0; then CTA_STATUS, CTA_MARK,
# CTA_ID, CTA_USE, CTA_TIMEOUT.
KERNEL_ENTRY_ICMP = golden(
    """
    02 00 0000
    3c00 0180
      1400 0180  0800 0100 c0000201  0800 0200 c0000201
      2400 0280  0500 0100 01000000  0600 0400 12340000
                 0500 0500 08000000  0500 0600 00000000
    3c00 0280
      1400 0180  0800 0100 c0000201  0800 0200 c0000201
      2400 0280  0500 0100 01000000  0600 0400 12340000
                 0500 0500 00000000  0500 0600 00000000
    0800 0300 0000000a
    0800 0800 00000000
    0800 0c00 58b1ca47
    0800 0b00 00000002
    0800 0700 0000001e
    """
)


def test_struct_sizes_match_c_sizeof() -> None:
    # sizeof(struct nfgenmsg) = __u8 + __u8 + __be16
    assert NFGENMSG.size == 4


def test_message_type_numbers() -> None:
    assert ctnl_msg_type(CtnlMsg.GET) == 0x0101
    assert ctnl_msg_type(CtnlMsg.NEW) == 0x0100


def test_get_request_golden_ipv4() -> None:
    flow = FiveTuple(TCP, v4("198.51.100.7"), 40000, v4("192.0.2.1"), 80)
    assert pack_get_request(flow) == golden(
        """
        02 00 0000
        3400 0180
          1400 0180  0800 0100 c6336407  0800 0200 c0000201
          1c00 0280  0500 0100 06 000000  0600 0200 9c40 0000  0600 0300 0050 0000
        """
    )


def test_get_request_golden_ipv6() -> None:
    flow = FiveTuple(UDP, v6("2001:db8::5"), 5000, v6("2001:db8::1"), 53)
    assert pack_get_request(flow) == golden(
        """
        0a 00 0000
        4c00 0180
          2c00 0180
            1400 0300 20010db8 00000000 00000000 00000005
            1400 0400 20010db8 00000000 00000000 00000001
          1c00 0280  0500 0100 11 000000  0600 0200 1388 0000  0600 0300 0035 0000
        """
    )


def test_get_request_golden_icmp() -> None:
    """An echo reply's tuple: CTA_PROTO_ICMP_ID (__be16), _TYPE and _CODE (__u8) instead
    of ports, as the kernel asked for it (the request that got KERNEL_ENTRY_ICMP)."""
    flow = icmp_tuple(ICMP, v4("192.0.2.1"), v4("192.0.2.1"), 0x1234, 0, 0)
    assert pack_get_request(flow) == golden(
        """
        02 00 0000
        3c00 0180
          1400 0180  0800 0100 c0000201  0800 0200 c0000201
          2400 0280  0500 0100 01000000  0600 0400 12340000
                     0500 0500 00000000  0500 0600 00000000
        """
    )


def test_get_request_golden_icmpv6() -> None:
    flow = icmp_tuple(ICMPV6, v6("2001:db8::5"), v6("2001:db8::1"), 0xBEEF, 128, 0)
    assert pack_get_request(flow) == golden(
        """
        0a 00 0000
        5400 0180
          2c00 0180
            1400 0300 20010db8 00000000 00000000 00000005
            1400 0400 20010db8 00000000 00000000 00000001
          2400 0280  0500 0100 3a000000  0600 0700 beef0000
                     0500 0800 80000000  0500 0900 00000000
        """
    )


def test_unpack_kernel_icmp_entry() -> None:
    entry = unpack_entry(KERNEL_ENTRY_ICMP)
    here = v4("192.0.2.1")
    assert entry.original == icmp_tuple(ICMP, here, here, 0x1234, 8, 0)
    assert entry.reply == icmp_tuple(ICMP, here, here, 0x1234, 0, 0)
    assert entry.original.inverted() == entry.reply and entry.reply.inverted() == entry.original
    assert not entry.nated


def test_an_icmp_query_inverts_to_its_reply_with_the_same_identifier() -> None:
    request = icmp_tuple(ICMP, v4("192.0.2.2"), v4("198.51.100.2"), 7, 8, 0)
    assert request.inverted() == FiveTuple(ICMP, v4("198.51.100.2"), 7, v4("192.0.2.2"), 0)
    for ask, answer in ((13, 14), (15, 16), (17, 18)):
        assert icmp_tuple(ICMP, HOST, CLIENT, 1, ask, 0).inverted().dport >> 8 == answer
    v6_request = icmp_tuple(ICMPV6, v6("2001:db8::5"), v6("2001:db8::1"), 9, 128, 0)
    assert v6_request.inverted() == icmp_tuple(
        ICMPV6, v6("2001:db8::1"), v6("2001:db8::5"), 9, 129, 0
    )
    assert icmp_tuple(ICMPV6, HOST, CLIENT, 1, 139, 0).inverted().dport >> 8 == 140
    assert is_icmp_query(request) and is_icmp_query(v6_request)
    unreachable = icmp_tuple(ICMP, HOST, CLIENT, 0, 3, 3)
    assert not is_icmp_query(unreachable)
    assert not is_icmp_query(icmp_tuple(ICMPV6, HOST, CLIENT, 0, 135, 0))  # solicitation
    assert not is_icmp_query(icmp_tuple(ICMPV6, HOST, CLIENT, 0, 8, 0))  # ICMP's echo type
    assert unreachable.inverted().dport == unreachable.dport  # no reply type: kept


def test_get_request_rejects_mixed_families() -> None:
    with pytest.raises(ValueError):
        pack_get_request(FiveTuple(TCP, v4("192.0.2.1"), 1, v6("2001:db8::1"), 2))


def test_unpack_kernel_entry() -> None:
    assert NLMSGHDR.unpack_from(KERNEL_ENTRY_DNAT, 0)[0] == len(KERNEL_ENTRY_DNAT)
    entry = unpack_entry(KERNEL_ENTRY_DNAT[NLMSGHDR.size :])
    assert entry.original == FiveTuple(TCP, v4("198.51.100.7"), 40000, v4("192.0.2.1"), 80)
    assert entry.reply == FiveTuple(TCP, v4("192.0.2.9"), 8080, v4("198.51.100.7"), 40000)
    assert entry.status == 0x1A8
    assert entry.status & CtStatus.DST_NAT and not entry.status & CtStatus.SRC_NAT
    assert entry.nated


def test_unpack_entry_needs_both_tuples() -> None:
    only_original = (
        NFGENMSG.pack(2, 0, 0)
        + pack_get_request(FiveTuple(TCP, v4("192.0.2.1"), 1, v4("192.0.2.2"), 2))[NFGENMSG.size :]
    )
    with pytest.raises(NetlinkError) as err:
        unpack_entry(only_original)
    assert err.value.errno == errno.EBADMSG


# --- the four directions (see the conntrack module docstring) -------------------------

CLIENT, PUBLIC, INNER, HOST = v4("198.51.100.7"), v4("192.0.2.1"), v4("192.0.2.9"), v4("192.0.2.2")
# Port forward: CLIENT -> PUBLIC:80 DNAT to INNER:8080.
DNAT = ConntrackEntry(
    FiveTuple(TCP, CLIENT, 40000, PUBLIC, 80),
    FiveTuple(TCP, INNER, 8080, CLIENT, 40000),
    CtStatus.CONFIRMED | CtStatus.DST_NAT,
)
# Masquerade: INNER:5000 -> CLIENT:53 leaves as HOST:61000.
SNAT = ConntrackEntry(
    FiveTuple(UDP, INNER, 5000, CLIENT, 53),
    FiveTuple(UDP, CLIENT, 53, HOST, 61000),
    CtStatus.CONFIRMED | CtStatus.SRC_NAT,
)
PLAIN = ConntrackEntry(
    FiveTuple(UDP, HOST, 5000, CLIENT, 53),
    FiveTuple(UDP, CLIENT, 53, HOST, 5000),
    CtStatus.CONFIRMED,
)


def test_received_original_direction_goes_to_the_dnat_target() -> None:
    wire = FiveTuple(TCP, CLIENT, 40000, PUBLIC, 80)
    assert destination_after_nat(DNAT, wire) == INNER


def test_received_reply_of_masquerade_goes_to_the_inner_host() -> None:
    wire = FiveTuple(UDP, CLIENT, 53, HOST, 61000)  # arrives for HOST, a local address
    assert destination_after_nat(SNAT, wire) == INNER


def test_sent_original_direction_of_masquerade_came_from_the_inner_host() -> None:
    wire = FiveTuple(UDP, HOST, 61000, CLIENT, 53)  # leaves from HOST, a local address
    assert source_before_nat(SNAT, wire) == INNER


def test_sent_reply_of_dnat_came_from_the_dnat_target() -> None:
    wire = FiveTuple(TCP, PUBLIC, 80, CLIENT, 40000)
    assert source_before_nat(DNAT, wire) == INNER


# A ping from INNER (identifier 7) masqueraded as HOST (identifier 9) to CLIENT.
PING_SNAT = ConntrackEntry(
    icmp_tuple(ICMP, INNER, CLIENT, 7, 8, 0),
    icmp_tuple(ICMP, CLIENT, HOST, 9, 0, 0),
    CtStatus.CONFIRMED | CtStatus.SRC_NAT,
)


def test_pings_through_a_masquerade_come_from_and_go_to_the_inner_host() -> None:
    request_out = icmp_tuple(ICMP, HOST, CLIENT, 9, 8, 0)  # leaves from HOST
    reply_in = icmp_tuple(ICMP, CLIENT, HOST, 9, 0, 0)  # arrives for HOST
    assert source_before_nat(PING_SNAT, request_out) == INNER
    assert destination_after_nat(PING_SNAT, reply_in) == INNER
    # The inside leg carries the inner identifier: the original tuple and its inverse.
    assert destination_after_nat(PING_SNAT, icmp_tuple(ICMP, INNER, CLIENT, 7, 8, 0)) == CLIENT
    assert source_before_nat(PING_SNAT, icmp_tuple(ICMP, CLIENT, INNER, 7, 0, 0)) == CLIENT
    # Another identifier between the same addresses is not this entry's.
    assert source_before_nat(PING_SNAT, icmp_tuple(ICMP, HOST, CLIENT, 8, 8, 0)) is None


def test_without_nat_the_addresses_stand() -> None:
    assert not PLAIN.nated
    assert destination_after_nat(PLAIN, PLAIN.reply) == HOST
    assert source_before_nat(PLAIN, PLAIN.original.inverted().inverted()) == HOST
    assert destination_after_nat(PLAIN, FiveTuple(UDP, CLIENT, 1, HOST, 2)) is None


# --- Conntrack on a fake socket ----------------------------------------------------


class FakeNetlink:
    """Stands in for NetlinkSocket: answers each request from a script."""

    def __init__(self, *answers: list[bytes] | int) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[int, int, bytes]] = []
        self.closed = False

    def request(self, msg_type: int, flags: int, payload: bytes, **_: object) -> list[bytes]:
        self.requests.append((msg_type, flags, payload))
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise NetlinkError(answer)
        return answer

    def close(self) -> None:
        self.closed = True


def conntrack(*answers: list[bytes] | int) -> tuple[Conntrack, FakeNetlink]:
    fake = FakeNetlink(*answers)
    return Conntrack(fake), fake  # type: ignore[arg-type]


def test_lookup_tracked_untracked() -> None:
    ct, fake = conntrack([KERNEL_ENTRY_DNAT[NLMSGHDR.size :]], errno.ENOENT)
    wire = FiveTuple(TCP, v4("198.51.100.7"), 40000, v4("192.0.2.1"), 80)
    assert ct.received_destination(*wire) == (CtState.TRACKED, v4("192.0.2.9"))
    msg_type, flags, payload = fake.requests[0]
    assert msg_type == 0x0101 and flags & 0x4  # GET, with NLM_F_ACK (the ACK ends the reply)
    assert payload == pack_get_request(wire)
    state, entry = ct.lookup(FiveTuple(UDP, HOST, 1, CLIENT, 2))
    assert (state, entry) == (CtState.UNTRACKED, None)


def test_sent_source_asks_with_the_inverted_tuple() -> None:
    reply_payload = NFGENMSG.pack(2, 0, 0)
    from netatopd.netlink.conntrack import pack_tuple

    reply_payload += pack_tuple(CtaAttr.TUPLE_ORIG, SNAT.original)
    reply_payload += pack_tuple(CtaAttr.TUPLE_REPLY, SNAT.reply)
    ct, fake = conntrack([reply_payload])
    wire = FiveTuple(UDP, HOST, 61000, CLIENT, 53)
    assert ct.sent_source(*wire) == (CtState.TRACKED, INNER)
    assert fake.requests[0][2] == pack_get_request(wire.inverted())


def test_unavailable_conntrack_answers_unknown_and_stops_asking() -> None:
    ct, fake = conntrack(errno.EPROTONOSUPPORT)
    wire = FiveTuple(TCP, CLIENT, 40000, PUBLIC, 80)
    assert ct.received_destination(*wire) == (CtState.UNKNOWN, PUBLIC)
    assert not ct.available
    assert ct.sent_source(*wire) == (CtState.UNKNOWN, CLIENT)
    assert len(fake.requests) == 1
    assert ct.failures == 1


def test_a_timeout_is_unknown_but_does_not_give_up() -> None:
    ct, fake = conntrack(errno.ETIMEDOUT, errno.ENOENT)
    wire = FiveTuple(TCP, CLIENT, 40000, PUBLIC, 80)
    assert ct.lookup(wire) == (CtState.UNKNOWN, None)
    assert ct.available
    assert ct.lookup(wire) == (CtState.UNTRACKED, None)


def test_protocols_without_ports_are_unknown_without_asking() -> None:
    """ESP has no conntrack tuple of its own, nor has an ICMP error (the kernel would
    refuse its type): UNKNOWN, never asked."""
    ct, fake = conntrack()
    unreachable = icmp_tuple(ICMP, CLIENT, PUBLIC, 0, 3, 3)
    esp = FiveTuple(50, CLIENT, 0, PUBLIC, 0)
    for flow in (unreachable, esp):
        assert ct.lookup(flow) == (CtState.UNKNOWN, None)
        with pytest.raises(ValueError):
            ct.get(flow)
    assert fake.requests == []


def test_an_icmp_echo_is_asked_for_by_identifier_type_and_code() -> None:
    ct, fake = conntrack([KERNEL_ENTRY_ICMP], errno.ENOENT)
    here = v4("192.0.2.1")
    reply = icmp_tuple(ICMP, here, here, 0x1234, 0, 0)
    state, entry = ct.lookup(reply)
    assert state == CtState.TRACKED and entry is not None and entry.reply == reply
    assert fake.requests[0][2] == pack_get_request(reply)
    assert ct.lookup(icmp_tuple(ICMP, here, here, 0x1235, 8, 0)) == (CtState.UNTRACKED, None)


def test_no_netfilter_socket_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    import netatopd.netlink.conntrack as module

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise NetlinkError(errno.EPROTONOSUPPORT, "netlink protocol 12")

    monkeypatch.setattr(module, "NetlinkSocket", refuse)
    ct = Conntrack()
    assert ct.lookup(FiveTuple(TCP, CLIENT, 1, PUBLIC, 2)) == (CtState.UNKNOWN, None)
    assert not ct.available
