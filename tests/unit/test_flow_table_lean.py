"""Unit tests of the flow table's lean bookkeeping.

Ground truth: the tables a flow must be reachable from (a TCP flow under the key
of a packet it sent and the same key with source and destination swapped; a UDP
flow under its local address + port), worked out by hand from the addresses
below.  (The daemon's shared-table figures: test_engine.py.)
"""

from __future__ import annotations

import struct

from netatopd.counting import count_packets
from netatopd.flows import INTERNED_ADDRESSES_MAX, FlowTable
from netatopd.parse import PROTO_TCP, PROTO_UDP, Direction, Packet

A4 = bytes((192, 0, 2, 1))
C4 = bytes((192, 0, 2, 3))
B4 = bytes((198, 51, 100, 2))


def key4(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


def test_tcp_flow_keys_lead_to_it_and_go_with_it() -> None:
    flows = FlowTable()
    sent = key4(A4, B4, 40000, 443)  # local A4:40000 -> remote B4:443
    flows.charge(count_packets([(Direction.SENT, PROTO_TCP, sent, 60)]), 1.0)
    flow = flows.tcp_flow(A4, 40000, B4, 443)
    assert flow is not None
    received = key4(B4, A4, 443, 40000)
    assert flows._tcp_received[received] is flow
    assert flow.keys == (sent, received)
    assert (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port) == (
        A4,
        40000,
        B4,
        443,
    )
    flows.remove(flow)
    assert flow.keys == ()
    assert flows._tcp_sent == {} and flows._tcp_received == {} and flows.count == 0
    assert flows.tcp_flow(A4, 40000, B4, 443) is None
    flows.remove(flow)  # twice: nothing more happens
    assert flows.count == 0


def test_udp_flows_of_one_port_and_their_removal() -> None:
    flows = FlowTable()
    # Two local addresses on port 53, each receiving from B4:5000.
    packets: list[Packet] = [
        (Direction.RECEIVED, PROTO_UDP, key4(B4, A4, 5000, 53), 80),
        (Direction.RECEIVED, PROTO_UDP, key4(B4, C4, 5000, 53), 80),
    ]
    flows.charge(count_packets(packets), 1.0)
    first = flows.udp_flow(A4, 53)
    second = flows.udp_flow(C4, 53)
    assert first is not None and second is not None
    assert first.keys == (A4 + b"\x00\x35",)
    assert flows.udp_flows_on_port(53, 4) == (first, second)
    assert flows.udp_flows_on_port(53, 16) == ()
    assert flows._udp_by_port == {53: (first, second)}
    flows.remove(first)
    assert flows.udp_flows_on_port(53, 4) == (second,)
    assert flows.udp_flow(A4, 53) is None
    assert flows._udp_by_port == {53: (second,)}
    assert list(flows._udp_local) == [C4 + b"\x00\x35"] and flows.count == 1
    flows.remove(second)
    assert flows.udp_flows_on_port(53, 4) == ()
    assert flows._udp_by_port == {} and flows._udp_local == {} and flows.count == 0


def test_flows_share_address_and_port_objects_with_equal_values() -> None:
    flows = FlowTable()
    packets: list[Packet] = [
        (Direction.SENT, PROTO_TCP, key4(A4, B4, 40000 + n, 443), 60) for n in range(3)
    ]
    flows.charge(count_packets(packets), 1.0)
    made = [flows.tcp_flow(A4, 40000 + n, B4, 443) for n in range(3)]
    assert all(f is not None for f in made)
    assert [f.local_port for f in made] == [40000, 40001, 40002]
    assert all(f.local_addr == A4 and f.remote_addr == B4 and f.remote_port == 443 for f in made)
    assert made[0].local_addr is made[2].local_addr
    assert made[0].remote_addr is made[1].remote_addr
    assert made[0].remote_port is made[2].remote_port


def test_address_sharing_past_its_limit_keeps_values() -> None:
    flows = FlowTable()
    count = INTERNED_ADDRESSES_MAX + 10
    remotes = [bytes((198, 51, 100 + n // 250, 1 + n % 250)) for n in range(count)]
    flows.charge(
        count_packets([(Direction.SENT, PROTO_TCP, key4(A4, r, 1024, 443), 60) for r in remotes]),
        1.0,
    )
    assert flows.count == count
    assert len(flows._addresses) <= INTERNED_ADDRESSES_MAX
    assert [getattr(flows.tcp_flow(A4, 1024, r, 443), "remote_addr", None) for r in remotes] == (
        remotes
    )
