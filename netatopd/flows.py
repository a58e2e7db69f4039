"""The flow table (the kernel module's "sockinfo"): every live flow and its pending counters.

Owns one Flow per local socket endpoint seen on the wire: a TCP connection
(local and remote address and port) or a UDP local endpoint (local address and
port, as the module keys UDP by local port).  A flow holds the counters of its
packets that were not yet settled into a task.  Callers: the daemon's engine
(daemon.engine.Engine, ``charge`` with counting.py's sums of each batch);
ownership.Resolver (``new``, ``dirty``, the named lookups ``tcp_flow``,
``udp_flow`` and ``udp_flows_on_port``, ``remove``, ``write_off``), which
finds owners and settles counters; ownership.Sweeper (``all_flows``), which
drops idle and closed flows.

On the kernel counting path (``--capture kernel``) a flow is one socket,
kept by socket cookie (``CookieFlow``): ``charge_sockets`` adds a drain's
per-socket sums (capture/kernel.py), ``cookie_flow`` and ``cookie_flows``
are the resolver's and the sweep's lookups (ownership/cookies.py).  The
two kinds of flows share the cap, the totals and the pending lists, never
the lookup tables.

Per batch this table does one dictionary lookup per endpoint of each distinct
(kind, packet key) sum and four integer additions; everything else (owners,
states, garbage collection) is per flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING

from .counting import BatchSums
from .defaults import MAX_FLOWS_DEFAULT
from .wire import PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from .tasks import TaskInfo

log = logging.getLogger(__name__)

# One socket's sums of a kernel-path drain (FlowTable.charge_sockets): cookie,
# netns cookie, protocol, family, sent packets, sent wire bytes, received packets,
# received wire bytes.
SocketSums = tuple[int, int, int, int, int, int, int, int]
# Entries in each of the two UDP packet-key caches of charge; a cache that grows
# past this is emptied (it is refilled from the local endpoints as packets come).
UDP_KEY_CACHE_ENTRIES_MAX = 16_384
# Distinct addresses the flow table shares one bytes object for (Flow.local_addr and
# remote_addr); past this the interning table is emptied and starts again.
INTERNED_ADDRESSES_MAX = 4_096
INTERNED_PORTS_MAX = 4_096  # the same for Flow.local_port and remote_port

# The endpoints a sum is charged to: a packet's sender (local = the key's source)
# and receiver (local = the key's destination), of a UDP or a TCP flow.
_UDP_SENDER, _UDP_RECEIVER, _TCP_SENDER, _TCP_RECEIVER = 0, 1, 2, 3
_RECEIVING = 1  # the bit that tells a receiver from a sender
# counting's kind -> its endpoints, the sender first (a loopback packet has both),
# indexed by Direction's value for UDP and the same + counting.TCP_KIND for TCP.
_ENDPOINTS_OF_KIND: tuple[tuple[int, ...], ...] = (
    (_UDP_RECEIVER,),  # RECEIVED
    (_UDP_SENDER,),  # SENT
    (_UDP_SENDER, _UDP_RECEIVER),  # LOOPBACK
    (_TCP_RECEIVER,),  # RECEIVED + TCP_KIND
    (_TCP_SENDER,),  # SENT + TCP_KIND
    (_TCP_SENDER, _TCP_RECEIVER),  # LOOPBACK + TCP_KIND
)


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
        "table_key",
        "first_seen_s",
        "waiting_since_s",
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
        self.owner: TaskInfo | None = None  # set by ownership.Resolver
        self.tid = 0  # the owning thread, where the kernel told it (0: not known)
        self.inode = 0
        self.uid = -1
        # The tcp_sent key (its tcp_received key is the same swapped) or the udp_local
        # key that leads here; None once removed.  See keys.
        self.table_key: bytes | None = None
        self.first_seen_s = now_s
        # When the oldest packets waiting for an owner were read (set by the resolver's
        # settle; 0: none waiting, or only those read in this pass).
        self.waiting_since_s = 0.0
        self.last_seen_s = now_s
        self.next_lookup_s = now_s
        self.lookups = 0

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys that lead here: (tcp_sent key, tcp_received key) for TCP,
        (udp_local key,) for UDP; () once the flow is removed (false: gone)."""
        key = self.table_key
        if key is None:
            return ()
        return (key, _swap(key)) if self.proto == PROTO_TCP else (key,)

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


class CookieFlow(Flow):
    """A flow of the kernel counting path: one socket, known by its cookie.

    The cgroup_skb programs (ebpf/skbcount.py) sum per socket cookie, and a
    cookie names one socket of one network namespace, so the same 4-tuple in
    two containers is two CookieFlows.  The addresses and ports are filled in
    when sock_diag in the socket's namespace reports the socket (empty until
    then); ``netns_cookie`` says which namespace to ask.
    """

    __slots__ = ("cookie", "netns_cookie", "family")

    def __init__(self, cookie: int, netns_cookie: int, proto: int, family: int, now_s: float):
        super().__init__(proto, b"", 0, b"", 0, now_s)
        self.cookie = cookie
        self.netns_cookie = netns_cookie
        self.family = family

    @property
    def keys(self) -> tuple[bytes, ...]:
        """(the cookie as 8 bytes,) while the flow is in the table; () once removed."""
        key = self.table_key
        return () if key is None else (key,)

    def describe(self) -> str:
        proto = "tcp" if self.proto == PROTO_TCP else "udp"
        if self.local_addr:
            return f"{super().describe()} (socket cookie {self.cookie})"
        return f"{proto} socket cookie {self.cookie} (netns cookie {self.netns_cookie})"


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
        self.count = 0
        self.overflow = 0  # flows refused at the cap
        self.new: list[Flow] = []  # created since the resolver last looked
        self.dirty: list[Flow] = []  # with unsettled counters
        self.totals = TrafficTotals()
        self._tcp_sent: dict[bytes, Flow] = {}  # key of a packet this endpoint sent
        self._tcp_received: dict[bytes, Flow] = {}  # key of a packet it received
        self._udp_local: dict[bytes, Flow] = {}  # local address + port
        # local port -> its flows (any address); a tuple: mostly one flow a port
        self._udp_by_port: dict[int, tuple[Flow, ...]] = {}
        # charge's shortcuts from a whole UDP packet key to the flow of its sending /
        # receiving endpoint; a removed flow (table_key None) is never used.
        self._udp_sent_cache: dict[bytes, Flow] = {}
        self._udp_received_cache: dict[bytes, Flow] = {}
        # One shared object per address and per port number seen (flows of a host
        # share few addresses, and a server's flows share its port).
        self._addresses: dict[bytes, bytes] = {}
        self._ports: dict[int, int] = {}
        # The kernel counting path's flows (--capture kernel), by socket cookie, and
        # the packets of sockets of another protocol or one the kernel could not tell.
        self._by_cookie: dict[int, CookieFlow] = {}
        self.other_protocol_packets = 0

    # -- charging a batch ------------------------------------------------------

    def charge(self, sums: BatchSums, now_s: float) -> None:
        """Add a batch's sums (counting.py) to their flows, made when new, and the totals.

        Sums are taken in the order they first appeared, the sender's flow of
        a loopback sum before the receiver's; a flow refused at the cap counts
        its packets as unidentified and each of them as one refusal, as if
        the packets had come one by one.  UDP sums find their flow through a
        cache keyed by the whole packet key, so the local endpoint is cut out
        of the key only when a packet key is first seen.
        """
        totals = self.totals
        totals.icmp_sent += sums.icmp_sent
        totals.icmp_received += sums.icmp_received
        dirty = self.dirty
        by_kind = sums.by_kind
        endpoints_of_kind = _ENDPOINTS_OF_KIND
        receiving = _RECEIVING
        # Per endpoint (_UDP_SENDER ... _TCP_RECEIVER): the packet keys that lead to
        # known flows, and packets without a flow; per kind: packets.
        known = (self._udp_sent_cache, self._udp_received_cache, self._tcp_sent, self._tcp_received)
        unidentified = [0, 0, 0, 0]
        of_kind = [0] * len(endpoints_of_kind)
        for kind, key in sums.order:
            packets, wire_bytes = by_kind[kind][key]
            of_kind[kind] += packets
            for endpoint in endpoints_of_kind[kind]:
                flow = known[endpoint].get(key)
                if flow is None or flow.table_key is None:
                    flow = self._endpoint_flow(endpoint, key, now_s)
                    if flow is None:
                        unidentified[endpoint] += packets
                        self.overflow += packets - 1  # _admit counted one refusal
                        continue
                if endpoint & receiving:
                    flow.rcv_packs += packets
                    flow.rcv_bytes += wire_bytes
                else:
                    flow.snd_packs += packets
                    flow.snd_bytes += wire_bytes
                if not flow.dirty:
                    flow.dirty = True
                    dirty.append(flow)
        seen = [0, 0, 0, 0]  # per endpoint
        for kind, packets in enumerate(of_kind):
            for endpoint in endpoints_of_kind[kind]:
                seen[endpoint] += packets
        totals.udp_sent += seen[_UDP_SENDER]
        totals.udp_received += seen[_UDP_RECEIVER]
        totals.tcp_sent += seen[_TCP_SENDER]
        totals.tcp_received += seen[_TCP_RECEIVER]
        totals.udp_sent_unidentified += unidentified[_UDP_SENDER]
        totals.udp_received_unidentified += unidentified[_UDP_RECEIVER]
        totals.tcp_sent_unidentified += unidentified[_TCP_SENDER]
        totals.tcp_received_unidentified += unidentified[_TCP_RECEIVER]

    def _endpoint_flow(self, endpoint: int, key: bytes, now_s: float) -> Flow | None:
        """The flow of one endpoint of a packet key, made if new (None: refused at the cap)."""
        local_is_source = not endpoint & _RECEIVING
        if endpoint >= _TCP_SENDER:
            return self._new_tcp(key, local_is_source, now_s)
        if len(key) == 12:
            local = key[0:4] + key[8:10] if local_is_source else key[4:8] + key[10:12]
        else:
            local = key[0:16] + key[32:34] if local_is_source else key[16:32] + key[34:36]
        flow = self._udp_local.get(local)
        if flow is None:
            flow = self._new_udp(local, key, local_is_source, now_s)
            if flow is None:
                return None
        cache = self._udp_sent_cache if local_is_source else self._udp_received_cache
        if len(cache) >= UDP_KEY_CACHE_ENTRIES_MAX:
            cache.clear()
        cache[key] = flow
        return flow

    # -- the resolver's lookups ----------------------------------------------------

    def tcp_flow(
        self, local_addr: bytes, local_port: int, remote_addr: bytes, remote_port: int
    ) -> Flow | None:
        """The TCP flow of a connection, by its 4-tuple (addresses of one family)."""
        return self._tcp_sent.get(
            local_addr
            + remote_addr
            + local_port.to_bytes(2, "big")
            + remote_port.to_bytes(2, "big")
        )

    def udp_flow(self, local_addr: bytes, local_port: int) -> Flow | None:
        """The UDP flow of a local endpoint."""
        return self._udp_local.get(local_addr + local_port.to_bytes(2, "big"))

    def udp_flows_on_port(self, local_port: int, address_bytes: int) -> tuple[Flow, ...]:
        """The UDP flows of every local address of one family (4 or 16 bytes) on a port."""
        return tuple(
            f for f in self._udp_by_port.get(local_port, ()) if len(f.local_addr) == address_bytes
        )

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
        flow = self._flow(PROTO_TCP, key, local_is_source, now_s)
        if local_is_source:
            sent_key, received_key = key, _swap(key)
        else:
            sent_key, received_key = _swap(key), key
        self._tcp_sent[sent_key] = flow
        self._tcp_received[received_key] = flow
        flow.table_key = sent_key
        self.new.append(flow)
        return flow

    def _new_udp(
        self, local: bytes, key: bytes, local_is_source: bool, now_s: float
    ) -> Flow | None:
        if not self._admit():
            return None
        flow = self._flow(PROTO_UDP, key, local_is_source, now_s)
        self._udp_local[local] = flow
        by_port = self._udp_by_port
        by_port[flow.local_port] = by_port.get(flow.local_port, ()) + (flow,)
        flow.table_key = local
        self.new.append(flow)
        return flow

    def _flow(self, proto: int, key: bytes, local_is_source: bool, now_s: float) -> Flow:
        """A new Flow for a packet key, its addresses shared with earlier flows'."""
        local_addr, local_port, remote_addr, remote_port = _split(key, local_is_source)
        addresses = self._addresses
        if len(addresses) >= INTERNED_ADDRESSES_MAX:
            addresses.clear()
        local_addr = addresses.setdefault(local_addr, local_addr)
        remote_addr = addresses.setdefault(remote_addr, remote_addr)
        ports = self._ports
        if len(ports) >= INTERNED_PORTS_MAX:
            ports.clear()
        local_port = ports.setdefault(local_port, local_port)
        remote_port = ports.setdefault(remote_port, remote_port)
        return Flow(proto, local_addr, local_port, remote_addr, remote_port, now_s)

    def remove(self, flow: Flow) -> None:
        """Forget a flow (the caller has settled or written off its counters)."""
        if isinstance(flow, CookieFlow):
            if self._by_cookie.get(flow.cookie) is flow:
                del self._by_cookie[flow.cookie]
                self.count -= 1
            flow.table_key = None
            return
        tables = (
            (self._tcp_sent, self._tcp_received) if flow.proto == PROTO_TCP else (self._udp_local,)
        )
        for table, key in zip(tables, flow.keys, strict=False):
            if table.get(key) is flow:
                del table[key]
        if flow.table_key is not None:
            self.count -= 1
            if flow.proto == PROTO_UDP:
                same_port = tuple(
                    f for f in self._udp_by_port.get(flow.local_port, ()) if f is not flow
                )
                if same_port:
                    self._udp_by_port[flow.local_port] = same_port
                else:
                    self._udp_by_port.pop(flow.local_port, None)
        flow.table_key = None

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
        return list(self._tcp_sent.values()) + list(self._udp_local.values())

    # -- the kernel counting path (--capture kernel) -------------------------------

    def charge_sockets(self, sums: Iterable[SocketSums], now_s: float) -> None:
        """Add one drain's per-socket sums to their CookieFlows, made when new, and the totals.

        Each sum is (cookie, netns cookie, protocol, family, sent packets, sent
        wire bytes, received packets, received wire bytes).  A socket of a
        protocol other than TCP and UDP (or one the kernel could not tell)
        only adds to ``other_protocol_packets``; a flow refused at the cap
        counts its packets as unidentified.
        """
        totals = self.totals
        by_cookie = self._by_cookie
        dirty = self.dirty
        for cookie, netns_cookie, proto, family, snd_p, snd_b, rcv_p, rcv_b in sums:
            if proto == PROTO_TCP:
                totals.tcp_sent += snd_p
                totals.tcp_received += rcv_p
            elif proto == PROTO_UDP:
                totals.udp_sent += snd_p
                totals.udp_received += rcv_p
            else:
                self.other_protocol_packets += snd_p + rcv_p
                continue
            flow = by_cookie.get(cookie)
            if flow is None:
                if not self._admit():
                    self.overflow += snd_p + rcv_p - 1  # _admit counted one refusal
                    if proto == PROTO_TCP:
                        totals.tcp_sent_unidentified += snd_p
                        totals.tcp_received_unidentified += rcv_p
                    else:
                        totals.udp_sent_unidentified += snd_p
                        totals.udp_received_unidentified += rcv_p
                    continue
                flow = CookieFlow(cookie, netns_cookie, proto, family, now_s)
                flow.table_key = cookie.to_bytes(8, "little")
                by_cookie[cookie] = flow
                self.new.append(flow)
            flow.snd_packs += snd_p
            flow.snd_bytes += snd_b
            flow.rcv_packs += rcv_p
            flow.rcv_bytes += rcv_b
            if not flow.dirty:
                flow.dirty = True
                dirty.append(flow)

    def cookie_flow(self, cookie: int) -> CookieFlow | None:
        """The kernel path's flow of one socket cookie."""
        return self._by_cookie.get(cookie)

    def cookie_flows(self) -> list[CookieFlow]:
        """Every live flow of the kernel counting path."""
        return list(self._by_cookie.values())
