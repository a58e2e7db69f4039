"""The kernel path's flows (FlowTable.charge_sockets, CookieFlow) and its options."""

from __future__ import annotations

import socket

import pytest

from netatopd.config import ConfigError, resolve
from netatopd.ebpf import FlowOwner, OwnerKind
from netatopd.flows import CookieFlow, FlowTable
from netatopd.ownership.kernel import KernelOwners

TCP, UDP, ICMP = 6, 17, 1


def test_sums_of_one_cookie_add_up_on_one_flow_per_socket() -> None:
    table = FlowTable()
    table.charge_sockets([(7, 100, TCP, socket.AF_INET, 3, 300, 2, 200)], 1.0)
    table.charge_sockets([(7, 100, TCP, socket.AF_INET, 1, 100, 0, 0)], 2.0)
    # Another socket in another namespace: its own flow even with the same addresses.
    table.charge_sockets([(8, 200, TCP, socket.AF_INET, 5, 500, 0, 0)], 2.0)
    flow = table.cookie_flow(7)
    assert isinstance(flow, CookieFlow)
    assert (flow.snd_packs, flow.snd_bytes, flow.rcv_packs, flow.rcv_bytes) == (4, 400, 2, 200)
    assert flow.netns_cookie == 100 and flow.proto == TCP
    assert table.count == 2 and len(table.new) == 2
    assert table.totals.tcp_sent == 9 and table.totals.tcp_received == 2
    assert table.all_flows() == []  # the pcap path's tables are untouched


def test_other_protocols_are_counted_apart_and_the_cap_holds() -> None:
    table = FlowTable(max_flows=1)
    table.charge_sockets(
        [
            (1, 9, ICMP, socket.AF_INET6, 2, 200, 1, 100),
            (2, 9, UDP, socket.AF_INET, 1, 50, 1, 50),
            (3, 9, UDP, socket.AF_INET, 4, 200, 0, 0),  # refused at the cap
        ],
        1.0,
    )
    assert table.other_protocol_packets == 3
    assert table.count == 1
    assert table.totals.udp_sent == 5 and table.totals.udp_sent_unidentified == 4
    assert table.overflow == 4
    flow = table.cookie_flow(2)
    assert flow is not None
    table.remove(flow)
    assert table.count == 0 and table.cookie_flow(2) is None and not flow.keys


def test_capture_option_and_drain_interval() -> None:
    assert resolve([], environ={}).capture == "pcap"
    options = resolve(["--capture", "kernel"], environ={"NETATOPD_DRAIN_INTERVAL_MS": "25"})
    assert options.capture == "kernel" and options.drain_interval_ms == 25
    assert resolve([], environ={"NETATOPD_CAPTURE": "kernel"}).capture == "kernel"
    with pytest.raises(ConfigError, match="capture must be one of pcap, kernel"):
        resolve([], environ={"NETATOPD_CAPTURE": "ebpf"})


class FakeHelper:
    """What KernelOwners drains: a list of records, handed out once."""

    def __init__(self, records: list[FlowOwner]) -> None:
        self.records = records

    def changes(self) -> int:
        return len(self.records)

    def drain(self) -> list[FlowOwner]:
        records, self.records = self.records, []
        return records


def record(kind: OwnerKind, tgid: int, time_ns: int, cookie: int) -> FlowOwner:
    loopback = bytes((127, 0, 0, 1))
    return FlowOwner(
        17, loopback, 5000, b"", 0, tgid, tgid, f"p{tgid}", time_ns, kind, False, cookie
    )


def test_helper_records_name_sockets_by_cookie_the_latest_wins() -> None:
    """Two namespaces' sockets with the same tuple: told apart by cookie; per cookie the
    latest send or receive names the owner; cookie 0 (none yet) names nothing."""
    helper = FakeHelper(
        [
            record(OwnerKind.SEND, 100, 5, cookie=11),
            record(OwnerKind.RECV, 200, 6, cookie=22),  # the same tuple, another socket
            record(OwnerKind.RECV, 101, 9, cookie=11),  # a later thread of socket 11
            record(OwnerKind.SEND, 102, 7, cookie=11),  # older than the one before
            record(OwnerKind.SEND, 300, 8, cookie=0),
        ]
    )
    owners = KernelOwners(helper)  # type: ignore[arg-type]
    owners.drain()
    owner_11, owner_22 = owners.owner_of_cookie(11), owners.owner_of_cookie(22)
    assert owner_11 is not None and owner_22 is not None
    assert (owner_11.tgid, owner_22.tgid) == (101, 200)
    assert owners.owner_of_cookie(0) is None and set(owners.by_cookie) == {11, 22}
    owners.expire(older_than_ns=7)
    assert set(owners.by_cookie) == {11}
