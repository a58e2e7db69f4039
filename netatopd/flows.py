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
import struct
from collections import Counter
from collections.abc import Mapping
from enum import IntEnum
from typing import TYPE_CHECKING

from .parse import (
    CRC_BYTES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    UNKNOWN_LINK,
    Direction,
    Packet,
    Reject,
    parse_record,
)
from .parse import direction as frame_direction
from .parse import wire_bytes as packet_wire_bytes

if TYPE_CHECKING:
    from .tasks import TaskInfo

log = logging.getLogger(__name__)

MAX_FLOWS_DEFAULT = 200_000
# Entries in each of the two UDP packet-key caches of account_records; a cache
# that grows past this is emptied (it is refilled from udp_local as packets come).
UDP_KEY_CACHE_ENTRIES_MAX = 16_384
# Distinct addresses the flow table shares one bytes object for (Flow.local_addr and
# remote_addr); past this the interning table is emptied and starts again.
INTERNED_ADDRESSES_MAX = 4_096
INTERNED_PORTS_MAX = 4_096  # the same for Flow.local_port and remote_port

# The common frames account_records reads with one unpack each (network order).
# A cooked v2 header (struct sll2_header, see parse.SLL2_HEADER) followed by an
# IPv4 header without options (struct iphdr, see parse.IPHDR) and the ports:
#   sll2_protocol, [reserved], sll2_if_index, sll2_hatype, sll2_pkttype,
#   [halen, addr[8]];  version/ihl, [tos], tot_len, [id], frag_off, [ttl],
#   protocol, [check];  saddr + daddr + source port + destination port (the key)
_SLL2_IPV4_PORTS = struct.Struct("!H2xIHB9xBxH2xHxB2x12s")
# The same cooked v2 header followed by an IPv6 header (struct ipv6hdr, see
# parse.IPV6HDR) without extension headers and the ports:
#   sll2_protocol, [reserved], sll2_if_index, sll2_hatype, sll2_pkttype,
#   [halen, addr[8]];  first byte (version), [3 bytes], payload_len, nexthdr,
#   [hop_limit];  saddr + daddr + source port + destination port (the key)
_SLL2_IPV6_PORTS = struct.Struct("!H2xIHB9xB3xHBx36s")
# struct pcap_sf_pkthdr (parse.PCAP_SF_PKTHDR), native order: [ts_sec, ts_usec], caplen, len
_PCAP_SF_PKTHDR_LENGTHS = struct.Struct("=8xII")
_RECORD_HEADER_BYTES = 16
# A record of a fixed capture lane (capture/lanes.py): the record header, then a
# frame captured to exactly LaneKind.frame_bytes (44 for IPv4, 64 for IPv6).
# account_fixed reads, network order, skipping the members in brackets:
#   [pcap_sf_pkthdr];  [sll2_protocol, reserved], sll2_if_index, [sll2_hatype],
#   sll2_pkttype, [halen, addr[8]];  then for IPv4 [version/ihl, tos], tot_len,
#   [id, frag_off, ttl], protocol, [check], saddr + daddr + ports (the key);
#   for IPv6 [version/class/label], payload_len, nexthdr, [hop_limit],
#   saddr + daddr + ports (the key).
# Members that change from packet to packet (id, checksums, time stamps) are
# skipped, so the records of one flow and packet size unpack to equal tuples.
# sll2_hatype is a property of the interface: it is read once per interface
# and batch (_FIXED_HATYPE at _FIXED_IFINDEX_OFFSET + 4), not per record.
_FIXED_IPV4_RECORD = struct.Struct("!16x2x2xI2xB9x2xH5xB2x12s")  # 60 bytes
_FIXED_IPV6_RECORD = struct.Struct("!16x2x2xI2xB9x4xHBx36s")  # 80 bytes
_FIXED_IFINDEX_OFFSET = 16 + 4  # sll2_if_index in a record
_FIXED_HATYPE = struct.Struct("!H")  # sll2_hatype, right after sll2_if_index
# IP version -> (record layout, bytes to add to the length read to get the IP length)
FIXED_RECORDS: dict[int, tuple[struct.Struct, int]] = {
    4: (_FIXED_IPV4_RECORD, 0),
    6: (_FIXED_IPV6_RECORD, 40),  # payload_len does not count the 40-byte header
}
_IPV4_FRAME_BYTES = _SLL2_IPV4_PORTS.size  # 44: what the IPv4 fast path reads
_IPV6_FRAME_BYTES = _SLL2_IPV6_PORTS.size  # 64: what the IPv6 fast path reads
# Kinds of packet sums in account_records: parse.Direction's values for UDP, and
# the same + _TCP_SUMS for TCP.
_RECEIVED, _SENT, _LOOPBACK = (
    Direction.RECEIVED.value,
    Direction.SENT.value,
    Direction.LOOPBACK.value,
)
_TCP_SUMS = 3
_NO_MTU = 1 << 62  # stands for an MTU of 0 (unknown): no packet is larger


def _fixed_record_hatype(records: bytes, record_bytes: int, ifindex: int) -> int:
    """sll2_hatype of the first record of a fixed-lane batch whose sll2_if_index is ifindex."""
    pattern = ifindex.to_bytes(4, "big")
    position = records.find(pattern, _FIXED_IFINDEX_OFFSET)
    while position >= 0:
        if (position - _FIXED_IFINDEX_OFFSET) % record_bytes == 0:
            return int(_FIXED_HATYPE.unpack_from(records, position + 4)[0])
        position = records.find(pattern, position + 1)
    return 0  # not reached: the caller read ifindex from one of these records


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


# The table each of Flow.keys lives in: TCP flows have a TCP_SENT and a TCP_RECEIVED
# key, UDP flows one UDP_LOCAL key.
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
        # local port -> its flows (any address); a tuple: mostly one flow a port
        self.udp_by_port: dict[int, tuple[Flow, ...]] = {}
        self.count = 0
        self.overflow = 0  # flows refused at the cap
        self.new: list[Flow] = []  # created since the resolver last looked
        self.dirty: list[Flow] = []  # with unsettled counters
        self.totals = TrafficTotals()
        # account_records' shortcuts from a whole UDP packet key to the flow of its
        # sending / receiving endpoint; a removed flow (table_key None) is never used.
        self._udp_sent_cache: dict[bytes, Flow] = {}
        self._udp_received_cache: dict[bytes, Flow] = {}
        # One shared object per address and per port number seen (flows of a host
        # share few addresses, and a server's flows share its port).
        self._addresses: dict[bytes, bytes] = {}
        self._ports: dict[int, int] = {}

    # -- the per-packet path -------------------------------------------------

    def account(self, packets: list[Packet], now_s: float) -> None:
        """Count a batch of parsed packets on their flows.

        The plain, readable path (one tuple a packet from parse.parse_batch); the
        daemon uses account_records, and the tests hold the two to the same counts.
        """
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

    def account_records(
        self,
        records: bytes,
        links: Mapping[int, tuple[int, int]],
        rejects: list[int],
        now_s: float,
    ) -> None:
        """Parse and count a capture Batch's records in one walk.

        Counts exactly what ``account(parse_batch(records, links, rejects),
        now_s)`` counts (flows made in the same order, the same overflow),
        without a tuple per packet.  The common frames (IPv4 without options,
        IPv6 without extension headers, TCP or UDP, not a fragment) are read
        with one unpack; every other frame goes through ``parse.parse_record``.
        Packets are summed per (protocol, direction, packet key) during the
        walk, and each sum is then counted on its flows once, in the order the
        sums first appeared; UDP sums find their flow through a cache keyed by
        the whole packet key, so the local endpoint is cut out of the key only
        when a packet key is first seen.
        """
        # Index _RECEIVED/_SENT/_LOOPBACK for UDP, + _TCP_SUMS for TCP:
        # packet key -> [packets, wire bytes] in this batch.
        sums_by_kind: tuple[dict[bytes, list[int]], ...] = ({}, {}, {}, {}, {}, {})
        order: list[tuple[int, bytes]] = []  # (kind, key) as first seen
        unpack_lengths = _PCAP_SF_PKTHDR_LENGTHS.unpack_from
        unpack_ipv4 = _SLL2_IPV4_PORTS.unpack_from
        unpack_ipv6 = _SLL2_IPV6_PORTS.unpack_from
        # The link facts of the last ifindex seen: frames of one batch mostly share it.
        link_ifindex = -1
        link_overhead = link_mtu = link_gso_overhead = 0
        size = len(records)
        position = 0
        while position < size:
            frame = position + _RECORD_HEADER_BYTES
            if frame > size:
                rejects[Reject.TRUNCATED_LINK] += 1
                break
            caplen, original_bytes = unpack_lengths(records, position)
            position = frame + caplen
            proto = 0  # stays 0 when the frame is not for the fast path
            if caplen >= _IPV4_FRAME_BYTES and position <= size:
                (ethertype, ifindex, hatype, pkttype, first_byte, ip_len, frag_off, proto, key) = (
                    unpack_ipv4(records, frame)
                )
                if ethertype == 0x0800:  # ETH_P_IP
                    # version 4, 20-byte header, first fragment, ports inside tot_len
                    if first_byte != 0x45 or frag_off & 0x1FFF or ip_len < 24:
                        proto = 0
                elif ethertype == 0x86DD and caplen >= _IPV6_FRAME_BYTES:  # ETH_P_IPV6
                    (ethertype, ifindex, hatype, pkttype, first_byte, ip_len, proto, key) = (
                        unpack_ipv6(records, frame)
                    )
                    if first_byte >> 4 != 6 or ip_len < 4:  # ip_len is payload_len here
                        proto = 0
                    ip_len += 40
                else:
                    proto = 0
            if proto == PROTO_UDP or proto == PROTO_TCP:
                # parse.direction(hatype, pkttype), inlined
                if hatype == 772:  # ARPHRD_LOOPBACK: seen once, a send and a receive
                    if pkttype == 4:  # PacketType.OUTGOING
                        rejects[Reject.LOOPBACK_OUTGOING] += 1
                        continue
                    kind = _LOOPBACK
                elif pkttype == 4:  # PacketType.OUTGOING
                    kind = _SENT
                elif pkttype <= 2:  # PacketType.HOST, BROADCAST, MULTICAST
                    kind = _RECEIVED
                else:
                    rejects[Reject.OTHERHOST] += 1
                    continue
                if ifindex != link_ifindex:
                    try:
                        hhl, mtu = links[ifindex]
                    except KeyError:
                        hhl, mtu = UNKNOWN_LINK
                    link_ifindex = ifindex
                    link_overhead = hhl + CRC_BYTES
                    link_mtu = mtu if mtu > 0 else _NO_MTU
                    link_gso_overhead = 20 + hhl + CRC_BYTES
                wire_bytes = ip_len + link_overhead  # parse.wire_bytes, inlined
                if ip_len > link_mtu:
                    wire_bytes += (ip_len // link_mtu) * link_gso_overhead
            else:
                result = parse_record(
                    records, frame, position if position < size else size, original_bytes, links
                )
                if result.__class__ is not tuple:
                    rejects[result] += 1  # type: ignore[index]
                    continue
                kind, proto, key, wire_bytes = result
                if proto != PROTO_UDP and proto != PROTO_TCP:  # ICMP, ICMPv6: only counted
                    if kind != Direction.RECEIVED:
                        self.totals.icmp_sent += 1
                    if kind != Direction.SENT:
                        self.totals.icmp_received += 1
                    continue
            if proto == PROTO_TCP:
                kind += _TCP_SUMS
            sums_of_kind = sums_by_kind[kind]
            sums = sums_of_kind.get(key)
            if sums is None:
                sums_of_kind[key] = [1, wire_bytes]
                order.append((kind, key))
            else:
                sums[0] += 1
                sums[1] += wire_bytes
        if order:
            self._account_sums(order, sums_by_kind, now_s)

    def account_fixed(
        self,
        records: bytes,
        count: int,
        ip_version: int,
        links: Mapping[int, tuple[int, int]],
        rejects: list[int],
        now_s: float,
    ) -> None:
        """Count a batch of a fixed capture lane (capture/lanes.py) without a Python
        loop per packet.

        The lane's kernel filter guarantees the frames' shape (IPv4 without
        options or IPv6 without extension headers, TCP or UDP, ports inside the
        packet) and its snap length makes every record the same size, so the
        batch is split and counted in C: one ``Counter`` over ``iter_unpack``
        gives how many packets each (link, packet type, IP length, protocol,
        key) had, and only those few distinct rows are looked at here.  A batch
        whose size is not ``count`` whole records (a frame from the wire shorter
        than its IP header claims) is walked by account_records instead.
        Counts exactly what account_records counts for the same records.
        """
        layout, length_extra = FIXED_RECORDS[ip_version]
        if len(records) != count * layout.size:
            self.account_records(records, links, rejects, now_s)
            return
        sums_by_kind: tuple[dict[bytes, list[int]], ...] = ({}, {}, {}, {}, {}, {})
        order: list[tuple[int, bytes]] = []
        interfaces: dict[int, tuple[int, int, int]] = {}  # ifindex -> (sll2_hatype, hhl, mtu)
        for (ifindex, pkttype, ip_len, proto, key), packets in Counter(
            layout.iter_unpack(records)
        ).items():
            interface = interfaces.get(ifindex)
            if interface is None:
                try:
                    hhl, mtu = links[ifindex]
                except KeyError:
                    hhl, mtu = UNKNOWN_LINK
                hatype = _fixed_record_hatype(records, layout.size, ifindex)
                interface = interfaces[ifindex] = (hatype, hhl, mtu)
            hatype, hhl, mtu = interface
            counted_as = frame_direction(hatype, pkttype)
            if isinstance(counted_as, Reject):
                rejects[counted_as] += packets
                continue
            kind = int(counted_as)
            if proto == PROTO_TCP:
                kind += _TCP_SUMS
            elif proto != PROTO_UDP:  # the lane filter lets no other through
                rejects[Reject.OTHER_PROTOCOL] += packets
                continue
            packet_bytes = packet_wire_bytes(ip_len + length_extra, hhl, mtu)
            sums_of_kind = sums_by_kind[kind]
            sums = sums_of_kind.get(key)
            if sums is None:
                sums_of_kind[key] = [packets, packets * packet_bytes]
                order.append((kind, key))
            else:
                sums[0] += packets
                sums[1] += packets * packet_bytes
        if order:
            self._account_sums(order, sums_by_kind, now_s)

    def _account_sums(
        self,
        order: list[tuple[int, bytes]],
        sums_by_kind: tuple[dict[bytes, list[int]], ...],
        now_s: float,
    ) -> None:
        """Count a batch's [packets, wire bytes] per (kind, packet key) on their flows."""
        totals = self.totals
        dirty = self.dirty
        udp_sent_cache = self._udp_sent_cache
        udp_received_cache = self._udp_received_cache
        tcp_sent_table = self.tcp_sent
        tcp_received_table = self.tcp_received
        for kind, key in order:
            packets, wire_bytes = sums_by_kind[kind][key]
            if kind < _TCP_SUMS:
                if kind != _RECEIVED:
                    totals.udp_sent += packets
                    flow = udp_sent_cache.get(key)
                    if flow is None or flow.table_key is None:
                        flow = self._udp_flow(key, True, now_s)
                    if flow is None:
                        totals.udp_sent_unidentified += packets
                        self.overflow += packets - 1  # account() tries once a packet
                    else:
                        flow.snd_packs += packets
                        flow.snd_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
                if kind != _SENT:
                    totals.udp_received += packets
                    flow = udp_received_cache.get(key)
                    if flow is None or flow.table_key is None:
                        flow = self._udp_flow(key, False, now_s)
                    if flow is None:
                        totals.udp_received_unidentified += packets
                        self.overflow += packets - 1
                    else:
                        flow.rcv_packs += packets
                        flow.rcv_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
            else:
                if kind != _RECEIVED + _TCP_SUMS:
                    totals.tcp_sent += packets
                    flow = tcp_sent_table.get(key)
                    if flow is None:
                        flow = self._new_tcp(key, True, now_s)
                    if flow is None:
                        totals.tcp_sent_unidentified += packets
                        self.overflow += packets - 1
                    else:
                        flow.snd_packs += packets
                        flow.snd_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)
                if kind != _SENT + _TCP_SUMS:
                    totals.tcp_received += packets
                    flow = tcp_received_table.get(key)
                    if flow is None:
                        flow = self._new_tcp(key, False, now_s)
                    if flow is None:
                        totals.tcp_received_unidentified += packets
                        self.overflow += packets - 1
                    else:
                        flow.rcv_packs += packets
                        flow.rcv_bytes += wire_bytes
                        if not flow.dirty:
                            flow.dirty = True
                            dirty.append(flow)

    def _udp_flow(self, key: bytes, local_is_source: bool, now_s: float) -> Flow | None:
        """The flow of a UDP packet key's local endpoint (made if new), remembered by key."""
        if len(key) == 12:
            local = key[0:4] + key[8:10] if local_is_source else key[4:8] + key[10:12]
        else:
            local = key[0:16] + key[32:34] if local_is_source else key[16:32] + key[34:36]
        flow = self.udp_local.get(local)
        if flow is None:
            flow = self._new_udp(local, key, local_is_source, now_s)
            if flow is None:
                return None
        cache = self._udp_sent_cache if local_is_source else self._udp_received_cache
        if len(cache) >= UDP_KEY_CACHE_ENTRIES_MAX:
            cache.clear()
        cache[key] = flow
        return flow

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
        self.tcp_sent[sent_key] = flow
        self.tcp_received[received_key] = flow
        flow.table_key = sent_key
        self.new.append(flow)
        return flow

    def _new_udp(
        self, local: bytes, key: bytes, local_is_source: bool, now_s: float
    ) -> Flow | None:
        if not self._admit():
            return None
        flow = self._flow(PROTO_UDP, key, local_is_source, now_s)
        self.udp_local[local] = flow
        by_port = self.udp_by_port
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
        tables = (
            (self.tcp_sent, self.tcp_received) if flow.proto == PROTO_TCP else (self.udp_local,)
        )
        for table, key in zip(tables, flow.keys, strict=False):
            if table.get(key) is flow:
                del table[key]
        if flow.table_key is not None:
            self.count -= 1
            if flow.proto == PROTO_UDP:
                same_port = tuple(
                    f for f in self.udp_by_port.get(flow.local_port, ()) if f is not flow
                )
                if same_port:
                    self.udp_by_port[flow.local_port] = same_port
                else:
                    self.udp_by_port.pop(flow.local_port, None)
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
        return list(self.tcp_sent.values()) + list(self.udp_local.values())
