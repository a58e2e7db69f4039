"""Stage 3: the flow table (the kernel module's "sockinfo").

Owns one Flow per local socket endpoint seen on the wire: a TCP connection
(local and remote address and port) or a UDP local endpoint (local address and
port, as the module keys UDP by local port).  A flow holds the counters of its
packets that were not yet settled into a task; the attribution stage finds the
owner and settles them.  Called by the daemon loop with parsed packets
(``account``); read by attribution.py and exitlist.py.

Per packet this stage does one dictionary lookup per endpoint and four integer
additions; everything else (owners, states, garbage collection) is per flow.
"""

from __future__ import annotations

import logging
from enum import IntEnum

from .parse import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Direction, Packet

log = logging.getLogger(__name__)

MAX_FLOWS_DEFAULT = 200_000


class FlowState(IntEnum):
    """Where a flow stands in owner resolution."""

    NEW = 0  # not looked up yet
    PENDING = 1  # looked up, owner not known yet; retried
    PROVISIONAL = 2  # owner taken from a listener; the accepted socket is looked for
    OWNED = 3  # owner known
    ORPHANED = 4  # its owner finished; later packets are unidentified


class Flow:
    """One sockinfo: a local endpoint and the counters not yet given to a task."""

    __slots__ = (
        "proto",
        "local_addr",
        "local_port",
        "remote_addr",
        "remote_port",
        "snd_packs",
        "snd_bytes",
        "rcv_packs",
        "rcv_bytes",
        "dirty",
        "state",
        "owner",
        "tid",
        "inode",
        "uid",
        "keys",
        "first_seen_s",
        "last_seen_s",
        "next_lookup_s",
        "lookups",
    )

    def __init__(
        self,
        proto: int,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        now_s: float,
    ) -> None:
        self.proto = proto
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.snd_packs = 0
        self.snd_bytes = 0
        self.rcv_packs = 0
        self.rcv_bytes = 0
        self.dirty = False
        self.state = FlowState.NEW
        self.owner: object | None = None  # a tasks.TaskInfo, set by attribution
        self.tid = 0  # the owning thread, where the kernel told it (0: not known)
        self.inode = 0
        self.uid = -1
        self.keys: tuple[tuple[int, bytes], ...] = ()  # (table, key) pairs that lead here
        self.first_seen_s = now_s
        self.last_seen_s = now_s
        self.next_lookup_s = now_s
        self.lookups = 0

    @property
    def pending_packets(self) -> int:
        return self.snd_packs + self.rcv_packs

    def take_pending(self) -> tuple[int, int, int, int]:
        """The unsettled counters (sent packets/bytes, received packets/bytes), reset."""
        pending = (self.snd_packs, self.snd_bytes, self.rcv_packs, self.rcv_bytes)
        self.snd_packs = self.snd_bytes = self.rcv_packs = self.rcv_bytes = 0
        return pending

    def describe(self) -> str:
        from ipaddress import ip_address

        proto = "tcp" if self.proto == PROTO_TCP else "udp"
        local = ip_address(self.local_addr)
        if self.remote_addr:
            remote = ip_address(self.remote_addr)
            return f"{proto} {local}:{self.local_port} <-> {remote}:{self.remote_port}"
        return f"{proto} {local}:{self.local_port}"


# Tables a key can live in (Flow.keys).
TCP_SENT, TCP_RECEIVED, UDP_LOCAL = 0, 1, 2


def _swap(key: bytes) -> bytes:
    """The key of the same TCP connection seen in the other direction."""
    if len(key) == 12:
        return key[4:8] + key[0:4] + key[10:12] + key[8:10]
    return key[16:32] + key[0:16] + key[34:36] + key[32:34]


def _split(key: bytes, local_is_source: bool) -> tuple[bytes, int, bytes, int]:
    """(local address, local port, remote address, remote port) of a packet key."""
    width = 4 if len(key) == 12 else 16
    src, dst = key[:width], key[width : 2 * width]
    sport = int.from_bytes(key[2 * width : 2 * width + 2], "big")
    dport = int.from_bytes(key[2 * width + 2 : 2 * width + 4], "big")
    if local_is_source:
        return src, sport, dst, dport
    return dst, dport, src, sport


class TrafficTotals:
    """The module's /proc/netatop packet figures: all packets, and unidentified ones."""

    __slots__ = (
        "tcp_sent",
        "tcp_received",
        "udp_sent",
        "udp_received",
        "tcp_sent_unidentified",
        "tcp_received_unidentified",
        "udp_sent_unidentified",
        "udp_received_unidentified",
        "icmp_sent",
        "icmp_received",
    )

    def __init__(self) -> None:
        self.tcp_sent = 0
        self.tcp_received = 0
        self.udp_sent = 0
        self.udp_received = 0
        self.tcp_sent_unidentified = 0
        self.tcp_received_unidentified = 0
        self.udp_sent_unidentified = 0
        self.udp_received_unidentified = 0
        self.icmp_sent = 0
        self.icmp_received = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class FlowTable:
    """Every live flow, reachable from the raw packet keys that lead to it."""

    def __init__(self, max_flows: int = MAX_FLOWS_DEFAULT) -> None:
        self.max_flows = max_flows
        self.tcp_sent: dict[bytes, Flow] = {}  # key of a packet this endpoint sent
        self.tcp_received: dict[bytes, Flow] = {}  # key of a packet it received
        self.udp_local: dict[bytes, Flow] = {}  # local address + port
        self.count = 0
        self.overflow = 0  # flows refused at the cap
        self.new: list[Flow] = []  # created since the resolver last looked
        self.dirty: list[Flow] = []  # with unsettled counters
        self.totals = TrafficTotals()

    # -- the per-packet path -------------------------------------------------

    def account(self, packets: list[Packet], now_s: float) -> None:
        """Count a batch of parsed packets on their flows."""
        totals = self.totals
        tcp_sent = self.tcp_sent
        tcp_received = self.tcp_received
        udp_local = self.udp_local
        dirty = self.dirty
        for direction, proto, key, wire_bytes in packets:
            if proto == PROTO_TCP:
                if direction != Direction.RECEIVED:  # SENT, or LOOPBACK's sending side
                    totals.tcp_sent += 1
                    flow = tcp_sent.get(key)
                    if flow is None:
                        flow = self._new_tcp(key, True, now_s)
                    if flow is None:
                        totals.tcp_sent_unidentified += 1
                    else:
                        flow.snd_packs += 1
                        flow.snd_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
                if direction != Direction.SENT:
                    totals.tcp_received += 1
                    flow = tcp_received.get(key)
                    if flow is None:
                        flow = self._new_tcp(key, False, now_s)
                    if flow is None:
                        totals.tcp_received_unidentified += 1
                    else:
                        flow.rcv_packs += 1
                        flow.rcv_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
            elif proto == PROTO_UDP:
                v4 = len(key) == 12
                if direction != Direction.RECEIVED:
                    totals.udp_sent += 1
                    local = key[0:4] + key[8:10] if v4 else key[0:16] + key[32:34]
                    flow = udp_local.get(local)
                    if flow is None:
                        flow = self._new_udp(local, key, True, now_s)
                    if flow is None:
                        totals.udp_sent_unidentified += 1
                    else:
                        flow.snd_packs += 1
                        flow.snd_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
                if direction != Direction.SENT:
                    totals.udp_received += 1
                    local = key[4:8] + key[10:12] if v4 else key[16:32] + key[34:36]
                    flow = udp_local.get(local)
                    if flow is None:
                        flow = self._new_udp(local, key, False, now_s)
                    if flow is None:
                        totals.udp_received_unidentified += 1
                    else:
                        flow.rcv_packs += 1
                        flow.rcv_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
            elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
                if direction != Direction.RECEIVED:
                    totals.icmp_sent += 1
                if direction != Direction.SENT:
                    totals.icmp_received += 1

    # -- flow creation and removal --------------------------------------------

    def _admit(self) -> bool:
        if self.count >= self.max_flows:
            self.overflow += 1
            return False
        self.count += 1
        return True

    def _new_tcp(self, key: bytes, local_is_source: bool, now_s: float) -> Flow | None:
        if not self._admit():
            return None
        flow = Flow(PROTO_TCP, *_split(key, local_is_source), now_s)
        if local_is_source:
            sent_key, received_key = key, _swap(key)
        else:
            sent_key, received_key = _swap(key), key
        self.tcp_sent[sent_key] = flow
        self.tcp_received[received_key] = flow
        flow.keys = ((TCP_SENT, sent_key), (TCP_RECEIVED, received_key))
        self.new.append(flow)
        return flow

    def _new_udp(
        self, local: bytes, key: bytes, local_is_source: bool, now_s: float
    ) -> Flow | None:
        if not self._admit():
            return None
        flow = Flow(PROTO_UDP, *_split(key, local_is_source), now_s)
        self.udp_local[local] = flow
        flow.keys = ((UDP_LOCAL, local),)
        self.new.append(flow)
        return flow

    def remove(self, flow: Flow) -> None:
        """Forget a flow (the caller has settled or written off its counters)."""
        tables = (self.tcp_sent, self.tcp_received, self.udp_local)
        for table, key in flow.keys:
            if tables[table].get(key) is flow:
                del tables[table][key]
        if flow.keys:
            self.count -= 1
        flow.keys = ()

    def write_off(self, flow: Flow) -> None:
        """Count a flow's unsettled packets as unidentified (no owner will come)."""
        snd_packs, _, rcv_packs, _ = flow.take_pending()
        if flow.proto == PROTO_TCP:
            self.totals.tcp_sent_unidentified += snd_packs
            self.totals.tcp_received_unidentified += rcv_packs
        else:
            self.totals.udp_sent_unidentified += snd_packs
            self.totals.udp_received_unidentified += rcv_packs

    def all_flows(self) -> list[Flow]:
        """Every live flow once (TCP flows appear under two keys)."""
        return list(self.tcp_sent.values()) + list(self.udp_local.values())
