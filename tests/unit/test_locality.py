"""Locality (netatopd/locality.py): local or forwarded per distinct row, with fakes.

Ground truth: the local addresses the fake table holds, the conntrack entries
the fake conntrack holds (tuples as conntrack.py's module docstring states
them), and the rows each test puts in a batch.  Every packet counted ends up
either in what is left for the flow table or in the forwarded figures.
"""

from __future__ import annotations

import struct

from netatopd.counting import LOOPBACK, RECEIVED, SENT, TCP_KIND, BatchSums
from netatopd.flows import FlowTable
from netatopd.locality import (
    FORWARDED,
    LOCAL,
    Locality,
    key_tuple,
    local_tuple,
    swap_key,
    tuple_key,
)
from netatopd.netlink.conntrack import (
    ConntrackEntry,
    CtState,
    CtStatus,
    FiveTuple,
    icmp_tuple,
)
from netatopd.wire import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

ROUTER = bytes((198, 51, 100, 1))  # the namespace's own address
INSIDE = bytes((192, 0, 2, 9))  # a container behind it
OUTSIDE = bytes((203, 0, 113, 5))  # somewhere else
SERVICE = bytes((198, 51, 100, 99))  # not local: DNAT moves it to ROUTER


def key4(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


class FakeAddresses:
    """The local table: a set of addresses; generation grows on each change."""

    def __init__(self, *local: bytes) -> None:
        self.local = set(local)
        self.generation = 1
        self.asked: list[bytes] = []
        self.closed = False

    def is_local(self, address: bytes) -> bool:
        self.asked.append(address)
        return address in self.local

    def add(self, address: bytes) -> None:
        self.local.add(address)
        self.generation += 1

    def fileno(self) -> int:
        return -1

    def process_events(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeConntrack:
    """Entries found by either tuple, as the kernel finds them."""

    def __init__(self, *entries: ConntrackEntry, available: bool = True) -> None:
        self.entries = entries
        self.requests = 0
        self._available = available

    @property
    def available(self) -> bool:
        return self._available

    def lookup(self, flow: FiveTuple) -> tuple[CtState, ConntrackEntry | None]:
        if not self._available:
            return CtState.UNKNOWN, None
        self.requests += 1
        for entry in self.entries:
            if flow in (entry.original, entry.reply):
                return CtState.TRACKED, entry
        return CtState.UNTRACKED, None

    def close(self) -> None:
        pass


def batch(*rows: tuple[int, bytes, int, int]) -> BatchSums:
    sums = BatchSums()
    for kind, key, packets, wire_bytes in rows:
        sums.add(kind, key, packets, wire_bytes)
    return sums


def rows(sums: BatchSums) -> list[tuple[int, bytes, list[int]]]:
    return [(kind, key, sums.by_kind[kind][key]) for kind, key in sums.order]


def test_received_by_destination_sent_by_source_loopback_always_local() -> None:
    addresses = FakeAddresses(ROUTER)
    locality = Locality(addresses)
    local_in = key4(OUTSIDE, ROUTER, 5000, 53)
    local_out = key4(ROUTER, OUTSIDE, 53, 5000)
    passing_in = key4(INSIDE, OUTSIDE, 4000, 443)
    passing_out = key4(INSIDE, OUTSIDE, 4000, 443)  # the same packet leaving
    loop = key4(bytes((127, 0, 0, 1)), bytes((127, 0, 0, 1)), 1, 2)
    sums = batch(
        (RECEIVED, local_in, 3, 300),
        (RECEIVED + TCP_KIND, passing_in, 5, 500),
        (SENT, local_out, 2, 200),
        (SENT + TCP_KIND, passing_out, 5, 500),
        (LOOPBACK, loop, 7, 700),
    )
    locality.split(sums)
    assert rows(sums) == [
        (RECEIVED, local_in, [3, 300]),
        (SENT, local_out, [2, 200]),
        (LOOPBACK, loop, [7, 700]),
    ]
    figures = locality.figures()
    assert figures["forwarded_tcp_received"] == 5 and figures["forwarded_tcp_sent"] == 5
    assert figures["forwarded_tcp_received_bytes"] == 500
    assert figures["forwarded_tcp_sent_bytes"] == 500
    assert figures["forwarded_udp_received"] == 0 and figures["forwarded_udp_sent"] == 0
    # counted: before the split, loopback both a send and a receive.
    assert figures["counted_udp_received"] == 3 + 7 and figures["counted_udp_sent"] == 2 + 7
    assert figures["counted_tcp_received"] == 5 and figures["counted_tcp_sent"] == 5
    assert loop[4:8] not in addresses.asked  # loopback rows are never looked at


def test_forwarded_icmp_leaves_the_icmp_figures() -> None:
    """ICMP by the address test: a ping to the router and its reply are its own; a
    ping passing through (in and out) is forwarded; loopback is local, never asked."""
    addresses = FakeAddresses(ROUTER)
    locality = Locality(addresses)
    sums = BatchSums()
    sums.add_icmp(RECEIVED, 4, OUTSIDE + ROUTER, 4 * 102)  # echo requests to the router
    sums.add_icmp(SENT, 4, ROUTER + OUTSIDE, 4 * 102)  # its replies
    sums.add_icmp(RECEIVED, 3, INSIDE + OUTSIDE, 3 * 102)  # passing: in ...
    sums.add_icmp(SENT, 3, INSIDE + OUTSIDE, 3 * 102)  # ... and out
    sums.add_icmp(RECEIVED, 2, OUTSIDE + INSIDE, 2 * 90)  # the replies passing back
    sums.add_icmp(SENT, 2, OUTSIDE + INSIDE, 2 * 90)
    loopback = bytes((127, 0, 0, 1)) * 2
    sums.add_icmp(LOOPBACK, 5, loopback, 5 * 102)
    assert (sums.icmp_sent, sums.icmp_received) == (4 + 3 + 2 + 5, 4 + 3 + 2 + 5)
    locality.split(sums)
    assert (sums.icmp_sent, sums.icmp_received) == (4 + 5, 4 + 5)
    figures = locality.figures()
    assert figures["forwarded_icmp_sent"] == 5 and figures["forwarded_icmp_received"] == 5
    assert figures["forwarded_icmp_sent_bytes"] == 3 * 102 + 2 * 90
    assert figures["forwarded_icmp_received_bytes"] == 3 * 102 + 2 * 90
    assert figures["forwarded_udp_sent"] == 0 and figures["counted_udp_sent"] == 0
    assert bytes((127, 0, 0, 1)) not in addresses.asked
    flows = FlowTable()
    flows.charge(sums, 1.0)
    assert (flows.totals.icmp_sent, flows.totals.icmp_received) == (9, 9)


def test_forwarded_rows_make_no_flows() -> None:
    locality = Locality(FakeAddresses(ROUTER))
    flows = FlowTable()
    sums = batch((RECEIVED, key4(INSIDE, OUTSIDE, 4000, 53), 10, 1000))
    locality.split(sums)
    flows.charge(sums, 1.0)
    assert flows.count == 0 and flows.new == [] and flows.totals.udp_received == 0
    assert flows.totals.udp_received_unidentified == 0
    assert locality.figures()["forwarded_udp_received"] == 10


def test_decided_once_per_row_key_and_once_per_address() -> None:
    addresses = FakeAddresses(ROUTER)
    locality = Locality(addresses)
    passing = key4(INSIDE, OUTSIDE, 4000, 443)
    for _ in range(5):
        locality.split(batch((RECEIVED + TCP_KIND, passing, 100, 6000)))
        # the reply leaving: the other direction, decided with the first
        locality.split(batch((SENT + TCP_KIND, swap_key(passing), 100, 6000)))
    assert locality.decisions == 1
    assert addresses.asked == [OUTSIDE]
    assert locality.figures()["forwarded_tcp_received"] == 500
    assert locality.figures()["forwarded_tcp_sent"] == 500


def test_a_change_of_the_local_table_decides_again() -> None:
    addresses = FakeAddresses(ROUTER)
    locality = Locality(addresses)
    key = key4(OUTSIDE, SERVICE, 5000, 53)
    locality.split(batch((RECEIVED, key, 1, 100)))
    assert locality.figures()["forwarded_udp_received"] == 1
    addresses.add(SERVICE)  # ip addr add: a notification, generation + 1
    sums = batch((RECEIVED, key, 1, 100))
    locality.split(sums)
    assert rows(sums) == [(RECEIVED, key, [1, 100])]
    assert locality.figures()["forwarded_udp_received"] == 1


def test_without_a_local_table_every_row_is_local() -> None:
    locality = Locality(None, note="unavailable: test")
    sums = batch((RECEIVED, key4(INSIDE, OUTSIDE, 1, 2), 4, 40))
    locality.split(sums)
    assert len(sums.order) == 1 and locality.figures()["counted_udp_received"] == 4
    assert locality.fileno() is None and locality.process_events() == 0


# -- NAT ------------------------------------------------------------------------------

# Masquerade: INSIDE:4000 -> OUTSIDE:443 leaves as ROUTER:61000 -> OUTSIDE:443.
MASQUERADE = ConntrackEntry(
    FiveTuple(PROTO_TCP, INSIDE, 4000, OUTSIDE, 443),
    FiveTuple(PROTO_TCP, OUTSIDE, 443, ROUTER, 61000),
    int(CtStatus.SRC_NAT | CtStatus.CONFIRMED),
)
# Port forward: OUTSIDE:5000 -> SERVICE:80 is delivered to ROUTER:8080.
PORT_FORWARD = ConntrackEntry(
    FiveTuple(PROTO_UDP, OUTSIDE, 5000, SERVICE, 80),
    FiveTuple(PROTO_UDP, ROUTER, 8080, OUTSIDE, 5000),
    int(CtStatus.DST_NAT | CtStatus.CONFIRMED),
)


def test_local_tuple_undoes_nat_in_each_direction() -> None:
    wire_in = PORT_FORWARD.original
    assert local_tuple(PORT_FORWARD, wire_in, received=True) == FiveTuple(
        PROTO_UDP, OUTSIDE, 5000, ROUTER, 8080
    )
    # the service's answer leaves rewritten back to SERVICE:80; it was sent by ROUTER:8080
    wire_out = PORT_FORWARD.original.inverted()
    assert local_tuple(PORT_FORWARD, wire_out, received=False) == PORT_FORWARD.reply
    # masquerade: the reply comes to ROUTER:61000, is for INSIDE:4000
    assert local_tuple(MASQUERADE, MASQUERADE.reply, received=True).dst == INSIDE  # type: ignore[union-attr]
    assert local_tuple(MASQUERADE, MASQUERADE.reply.inverted(), received=False) == (
        MASQUERADE.original
    )
    assert local_tuple(MASQUERADE, FiveTuple(PROTO_TCP, OUTSIDE, 1, ROUTER, 2), True) is None
    assert tuple_key(key_tuple(PROTO_TCP, key4(INSIDE, OUTSIDE, 1, 2))) == key4(
        INSIDE, OUTSIDE, 1, 2
    )


def test_masqueraded_rows_look_local_but_are_forwarded() -> None:
    conntrack = FakeConntrack(MASQUERADE)
    locality = Locality(FakeAddresses(ROUTER), conntrack, tracking=lambda: True)
    leaving = key4(ROUTER, OUTSIDE, 61000, 443)  # sent, source local (case 3)
    reply = key4(OUTSIDE, ROUTER, 443, 61000)  # received, destination local (case 2)
    sums = batch((SENT + TCP_KIND, leaving, 4, 400), (RECEIVED + TCP_KIND, reply, 3, 300))
    locality.split(sums)
    assert sums.order == []
    figures = locality.figures()
    assert figures["forwarded_tcp_sent"] == 4 and figures["forwarded_tcp_received"] == 3
    assert conntrack.requests == 1  # the reply's verdict came with the first row's


def test_port_forward_to_a_local_socket_is_charged_to_its_tuple() -> None:
    conntrack = FakeConntrack(PORT_FORWARD)
    locality = Locality(FakeAddresses(ROUTER), conntrack, tracking=lambda: True)
    arriving = key4(OUTSIDE, SERVICE, 5000, 80)  # received, destination not local (case 1)
    answer = key4(SERVICE, OUTSIDE, 80, 5000)  # sent, source not local (case 4)
    sums = batch((RECEIVED, arriving, 2, 200), (SENT, answer, 2, 500))
    locality.split(sums)
    assert rows(sums) == [
        (RECEIVED, key4(OUTSIDE, ROUTER, 5000, 8080), [2, 200]),
        (SENT, key4(ROUTER, OUTSIDE, 8080, 5000), [2, 500]),
    ]
    assert locality.nat_rewrites == 1 and conntrack.requests == 1
    flows = FlowTable()
    flows.charge(sums, 1.0)
    flow = flows.udp_flow(ROUTER, 8080)
    assert flow is not None and (flow.rcv_packs, flow.snd_packs) == (2, 2)
    assert locality.figures()["forwarded_udp_received"] == 0


def test_a_rewritten_row_joins_the_row_of_its_local_tuple() -> None:
    locality = Locality(FakeAddresses(ROUTER), FakeConntrack(PORT_FORWARD), tracking=lambda: True)
    direct = key4(OUTSIDE, ROUTER, 5000, 8080)
    sums = batch((RECEIVED, direct, 1, 100), (RECEIVED, key4(OUTSIDE, SERVICE, 5000, 80), 2, 200))
    locality.split(sums)
    assert rows(sums) == [(RECEIVED, direct, [3, 300])]


def test_conntrack_is_not_asked_when_nothing_is_tracked_or_it_is_unavailable() -> None:
    idle = FakeConntrack(MASQUERADE)
    locality = Locality(FakeAddresses(ROUTER), idle, tracking=lambda: False)
    sums = batch((SENT + TCP_KIND, key4(ROUTER, OUTSIDE, 61000, 443), 1, 60))
    locality.split(sums)
    assert idle.requests == 0 and len(sums.order) == 1  # the address test stands
    not_loaded = Locality(FakeAddresses(ROUTER), FakeConntrack(), tracking=lambda: None)
    not_loaded.split(batch((SENT, key4(ROUTER, OUTSIDE, 1, 2), 1, 60)))
    assert not_loaded.conntrack_note == "not loaded (no NAT here)"
    unavailable = FakeConntrack(MASQUERADE, available=False)
    locality = Locality(FakeAddresses(ROUTER), unavailable, tracking=lambda: True)
    sums = batch((SENT + TCP_KIND, key4(ROUTER, OUTSIDE, 61000, 443), 1, 60))
    locality.split(sums)
    assert len(sums.order) == 1  # unknown: the address test stands
    assert locality.conntrack_note.startswith("unavailable")


def test_verdict_markers_are_never_keys() -> None:
    assert len(LOCAL) not in (12, 36) and len(FORWARDED) not in (12, 36)


# --- ICMP through a masquerade: rows keyed by identifier, type and code (parse.py) ------

V6_ROUTER, V6_OUTSIDE = (
    bytes.fromhex("20010db8" + "00" * 11 + "01"),
    bytes.fromhex("20010db8" + "00" * 11 + "05"),
)


def icmp_key(src: bytes, dst: bytes, ident: int, icmp_type: int, code: int = 0) -> bytes:
    return src + dst + struct.pack("!HBB", ident, icmp_type, code)


# INSIDE pings OUTSIDE with identifier 7; the router masquerades it as ROUTER, identifier 9.
PING_MASQUERADE = ConntrackEntry(
    icmp_tuple(PROTO_ICMP, INSIDE, OUTSIDE, 7, 8, 0),
    icmp_tuple(PROTO_ICMP, OUTSIDE, ROUTER, 9, 0, 0),
    CtStatus.CONFIRMED | CtStatus.SRC_NAT,
)
# The router's own ping to OUTSIDE, identifier 5: the same addresses outside.
PING_OWN = ConntrackEntry(
    icmp_tuple(PROTO_ICMP, ROUTER, OUTSIDE, 5, 8, 0),
    icmp_tuple(PROTO_ICMP, OUTSIDE, ROUTER, 5, 0, 0),
    CtStatus.CONFIRMED,
)


def test_masqueraded_pings_are_forwarded_and_the_router_s_own_are_its_own() -> None:
    """Outside, the masqueraded ping and the router's own carry the same addresses; the
    identifier tells them apart (with addresses alone one verdict would serve both)."""
    conntrack = FakeConntrack(PING_MASQUERADE, PING_OWN)
    locality = Locality(FakeAddresses(ROUTER), conntrack, tracking=lambda: True)
    sums = BatchSums()
    sums.add_icmp(RECEIVED, 8, icmp_key(INSIDE, OUTSIDE, 7, 8), 8 * 102)  # in from inside
    sums.add_icmp(SENT, 8, icmp_key(ROUTER, OUTSIDE, 9, 8), 8 * 102)  # out, masqueraded
    sums.add_icmp(RECEIVED, 8, icmp_key(OUTSIDE, ROUTER, 9, 0), 8 * 102)  # replies in
    sums.add_icmp(SENT, 8, icmp_key(OUTSIDE, INSIDE, 7, 0), 8 * 102)  # replies back in
    sums.add_icmp(SENT, 5, icmp_key(ROUTER, OUTSIDE, 5, 8), 5 * 102)  # the router's own
    sums.add_icmp(RECEIVED, 5, icmp_key(OUTSIDE, ROUTER, 5, 0), 5 * 102)
    locality.split(sums)
    assert (sums.icmp_sent, sums.icmp_received) == (5, 5)
    figures = locality.figures()
    assert figures["forwarded_icmp_sent"] == 16 and figures["forwarded_icmp_received"] == 16
    assert figures["forwarded_icmp_sent_bytes"] == 16 * 102
    assert figures["forwarded_icmp_received_bytes"] == 16 * 102
    asked = conntrack.requests
    # Decided once per row key: the same rows in the next batch ask nothing.
    again = BatchSums()
    again.add_icmp(SENT, 1, icmp_key(ROUTER, OUTSIDE, 9, 8), 102)
    again.add_icmp(SENT, 1, icmp_key(ROUTER, OUTSIDE, 5, 8), 102)
    locality.split(again)
    assert conntrack.requests == asked and (again.icmp_sent, again.icmp_received) == (1, 0)


def test_masqueraded_icmpv6_pings_are_forwarded() -> None:
    inside6 = bytes.fromhex("20010db8" + "00" * 10 + "0109")
    entry = ConntrackEntry(
        icmp_tuple(PROTO_ICMPV6, inside6, V6_OUTSIDE, 7, 128, 0),
        icmp_tuple(PROTO_ICMPV6, V6_OUTSIDE, V6_ROUTER, 7, 129, 0),
        CtStatus.CONFIRMED | CtStatus.SRC_NAT,
    )
    locality = Locality(FakeAddresses(V6_ROUTER), FakeConntrack(entry), tracking=lambda: True)
    sums = BatchSums()
    sums.add_icmp(SENT, 3, icmp_key(V6_ROUTER, V6_OUTSIDE, 7, 128), 3 * 122)
    sums.add_icmp(RECEIVED, 3, icmp_key(V6_OUTSIDE, V6_ROUTER, 7, 129), 3 * 122)
    locality.split(sums)
    assert (sums.icmp_sent, sums.icmp_received) == (0, 0)
    assert locality.figures()["forwarded_icmp_sent_bytes"] == 3 * 122


def test_icmp_that_is_no_query_or_has_no_identifier_goes_by_the_address_test() -> None:
    """An unreachable to the router, a neighbour solicitation, and a ping whose capture
    ended before its identifier (the addresses alone): conntrack is never asked."""
    conntrack = FakeConntrack(PING_MASQUERADE)
    locality = Locality(FakeAddresses(ROUTER, V6_ROUTER), conntrack, tracking=lambda: True)
    sums = BatchSums()
    sums.add_icmp(RECEIVED, 1, icmp_key(OUTSIDE, ROUTER, 0, 3, 3), 90)
    sums.add_icmp(SENT, 1, icmp_key(V6_ROUTER, V6_OUTSIDE, 0, 135), 90)
    sums.add_icmp(RECEIVED, 2, OUTSIDE + ROUTER, 2 * 102)
    sums.add_icmp(SENT, 4, INSIDE + OUTSIDE, 4 * 102)  # passing through
    locality.split(sums)
    assert conntrack.requests == 0
    assert (sums.icmp_sent, sums.icmp_received) == (1, 3)
    assert locality.figures()["forwarded_icmp_sent"] == 4


def test_icmp_asks_conntrack_only_when_something_is_tracked() -> None:
    conntrack = FakeConntrack(PING_MASQUERADE)
    locality = Locality(FakeAddresses(ROUTER), conntrack, tracking=lambda: False)
    sums = BatchSums()
    sums.add_icmp(SENT, 2, icmp_key(ROUTER, OUTSIDE, 9, 8), 2 * 102)
    locality.split(sums)
    assert conntrack.requests == 0 and sums.icmp_sent == 2  # the address test stands
