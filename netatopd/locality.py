"""Locality: which rows of a capture batch are this namespace's traffic, which are forwarded.

Owns the libpcap path's split of each batch's sums (counting.BatchSums)
into the namespace's own traffic, which goes on to the flow table, and the
forwarded packets, which are only counted here (``forwarded``): no flow, no
owner lookup, never a process's and never "unidentified".  The kernel
module hooks LOCAL_IN and LOCAL_OUT and so never sees a forwarded packet; a
packet socket sees them all, so the decision is made from the kernel's own
facts:

* a received row is local when its destination is in the namespace's local
  routing table, a sent row when its source is (``LocalAddresses``,
  netlink/rtnetlink.py, kept current by its notifications); a loopback row
  always is;
* where NAT rewrote a connection, conntrack (netlink/conntrack.py) tells the
  address at the local end: a port forward or REDIRECT to a local service
  is local and is charged to the local socket's tuple (the row's key is
  rewritten), the outside of a masqueraded connection is forwarded.

Decided once per distinct (kind, packet key) row, never per packet: the
verdict of each row key is cached, and the address test per address, both
until the local table changes (``LocalAddresses.generation``).  Conntrack
is asked only when the namespace tracks connections at all
(``nf_conntrack_count`` above 0), once per new row key; when it cannot be
asked the address test stands.

ICMP and ICMPv6 (only counted, never on a flow) are split the same way,
per distinct (direction, row key) of the batch, the row key being the
addresses, the echo identifier, type and code (parse.py): the address test,
and for queries (echo and the other request/reply pairs conntrack tracks)
conntrack, so a masqueraded ping is forwarded on the outside too while the
namespace's own pings between the same addresses (another identifier: NAT
keeps the identifiers of live entries apart) stay its own.  ICMP errors,
neighbour discovery and the other messages that are no query have no
conntrack entry of their own: the address test alone decides them.  The
forwarded ones leave the ``icmp_*`` figures for ``forwarded_icmp_*``.

Also owns ``counted``: the TCP and UDP packets of every row before the split,
the first term of the balance (daemon/readings.py).  Called by the daemon's
engine (``split`` before ``FlowTable.charge``) and event loop
(``process_events`` when the rtnetlink socket is readable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from .counting import KINDS, LOOPBACK, RECEIVED, SENT, TCP_KIND, BatchSums
from .netlink.conntrack import ConntrackEntry, CtState, FiveTuple, is_icmp_query
from .wire import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

log = logging.getLogger(__name__)

# Verdicts cached per row key: local as it is, forwarded, or else the key of the
# local socket's tuple after NAT (12 or 36 bytes; these two never are a key).
LOCAL = b""
FORWARDED = b"f"
VERDICTS_MAX = 65_536  # row keys remembered per kind; past it the cache starts again
ADDRESSES_MAX = 65_536  # addresses remembered
CONNTRACK_COUNT_PATH = "/proc/sys/net/netfilter/nf_conntrack_count"
# ICMP row keys (parse.py): IPv4 8 or 12 bytes, IPv6 32 or 36 (with identifier, type, code).
ICMP_KEY_V6_MIN = 32

# The kinds of received rows (the others are sent, or loopback: always local).
_RECEIVED_KINDS = frozenset({RECEIVED, RECEIVED + TCP_KIND})
_LOOPBACK_KINDS = frozenset({LOOPBACK, LOOPBACK + TCP_KIND})
# The kind of the other direction of a row: a received row's reply is sent.
_OTHER_DIRECTION = {
    RECEIVED: SENT,
    SENT: RECEIVED,
    RECEIVED + TCP_KIND: SENT + TCP_KIND,
    SENT + TCP_KIND: RECEIVED + TCP_KIND,
}
# The figures by protocol and direction: name -> the kinds whose packets they add.
DIRECTIONS: dict[str, tuple[int, ...]] = {
    "tcp_sent": (SENT + TCP_KIND, LOOPBACK + TCP_KIND),
    "tcp_received": (RECEIVED + TCP_KIND, LOOPBACK + TCP_KIND),
    "udp_sent": (SENT, LOOPBACK),
    "udp_received": (RECEIVED, LOOPBACK),
}


class AddressTable(Protocol):
    """What Locality needs of rtnetlink.LocalAddresses."""

    generation: int

    def is_local(self, address: bytes) -> bool: ...

    def fileno(self) -> int: ...

    def process_events(self) -> int: ...

    def close(self) -> None: ...


class NatLookup(Protocol):
    """What Locality needs of conntrack.Conntrack."""

    requests: int

    @property
    def available(self) -> bool: ...

    def lookup(self, flow: FiveTuple) -> tuple[CtState, ConntrackEntry | None]: ...

    def close(self) -> None: ...


def conntrack_in_use(path: str = CONNTRACK_COUNT_PATH) -> bool | None:
    """True when this namespace tracks a connection now; None when conntrack is not loaded."""
    try:
        with open(path, "rb") as count_file:
            return int(count_file.read() or b"0") > 0
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return True  # cannot tell: ask conntrack


def key_tuple(protocol: int, key: bytes) -> FiveTuple:
    """The FiveTuple of a packet key (source + destination + source port + destination port).

    Of an ICMP row key (addresses + identifier + type + code): conntrack.icmp_tuple's.
    """
    width = 4 if len(key) == 12 else 16
    return FiveTuple(
        protocol,
        key[:width],
        int.from_bytes(key[2 * width : 2 * width + 2], "big"),
        key[width : 2 * width],
        int.from_bytes(key[2 * width + 2 : 2 * width + 4], "big"),
    )


def tuple_key(flow: FiveTuple) -> bytes:
    """The packet key of a FiveTuple."""
    return flow.src + flow.dst + flow.sport.to_bytes(2, "big") + flow.dport.to_bytes(2, "big")


def swap_key(key: bytes) -> bytes:
    """The key of a packet going the other way."""
    width = 4 if len(key) == 12 else 16
    return (
        key[width : 2 * width]
        + key[:width]
        + key[2 * width + 2 : 2 * width + 4]
        + key[2 * width : 2 * width + 2]
    )


def local_tuple(entry: ConntrackEntry, wire: FiveTuple, received: bool) -> FiveTuple | None:
    """The tuple of a captured frame as the namespace's own socket sees it (NAT undone).

    A received frame is captured before PREROUTING: of tuple ``original`` it
    is delivered as the inverse of ``reply``, of tuple ``reply`` as the
    inverse of ``original``.  A sent frame is captured after POSTROUTING: of
    tuple inverse-of-``reply`` it was sent as ``original``, of tuple
    inverse-of-``original`` as ``reply`` (conntrack.py's module docstring).
    None when ``wire`` is none of these.
    """
    if received:
        if wire == entry.original:
            return entry.reply.inverted()
        if wire == entry.reply:
            return entry.original.inverted()
        return None
    if wire == entry.reply.inverted():
        return entry.original
    if wire == entry.original.inverted():
        return entry.reply
    return None


class Locality:
    """The split of each batch's rows into local and forwarded, and what it counted.

    ``addresses`` None: the local table could not be read (``note`` says why);
    every row is then taken as local, as before this split existed.
    ``conntrack`` None: NAT is not recognised (the address test stands).
    """

    def __init__(
        self,
        addresses: AddressTable | None,
        conntrack: NatLookup | None = None,
        *,
        note: str = "",
        conntrack_note: str = "",
        tracking: Callable[[], bool | None] = conntrack_in_use,
    ) -> None:
        self.addresses = addresses
        self.conntrack = conntrack
        self.note = note
        self._conntrack_note = conntrack_note
        self._tracking = tracking
        self._tracked: bool | None = False  # the last answer of tracking()
        # Per kind (counting's 0 .. KINDS-1): packets of every row, and of forwarded rows.
        self.counted_packets = [0] * KINDS
        self.forwarded_packets = [0] * KINDS
        self.forwarded_bytes = [0] * KINDS
        # Forwarded ICMP and ICMPv6: packets and wire bytes by direction.
        self.forwarded_icmp = dict.fromkeys(
            ("icmp_sent", "icmp_sent_bytes", "icmp_received", "icmp_received_bytes"), 0
        )
        self.nat_rewrites = 0  # row keys charged to another tuple after NAT
        self.decisions = 0  # row keys decided (cache misses)
        self._generation = -1
        self._address_local: dict[bytes, bool] = {}
        self._verdicts: tuple[dict[bytes, bytes], ...] = tuple({} for _ in range(KINDS))
        # ICMP rows: (Direction, row key) -> forwarded or not.
        self._icmp_verdicts: dict[tuple[int, bytes], bool] = {}

    # -- the split of a batch ------------------------------------------------------------

    def split(self, sums: BatchSums) -> None:
        """Count every row of sums, and take the forwarded rows out of it (in place).

        Rows NAT sends to a local socket get that socket's key.  Per distinct
        row: one dictionary lookup (a cached verdict); a row key not seen since
        the local table last changed is decided once (``_decide``).
        """
        by_kind = sums.by_kind
        counted = self.counted_packets
        addresses = self.addresses
        if addresses is None:
            for kind, key in sums.order:
                counted[kind] += by_kind[kind][key][0]
            return
        if addresses.generation != self._generation:
            self._forget(addresses.generation)
        verdicts = self._verdicts
        loopback = _LOOPBACK_KINDS
        local = LOCAL
        others: list[tuple[int, int, bytes, bytes]] = []  # (position, kind, key, verdict)
        undecided = True  # tracking() not asked yet this batch
        for position, (kind, key) in enumerate(sums.order):
            counted[kind] += by_kind[kind][key][0]
            if kind in loopback:
                continue
            verdict = verdicts[kind].get(key)
            if verdict is None:
                if undecided:
                    undecided = False
                    self._ask_tracking()
                verdict = self._decide(kind, key)
            if verdict is not local:
                others.append((position, kind, key, verdict))
        if others:
            self._apply(sums, others)
        if sums.icmp_rows:
            self._split_icmp(sums, undecided)

    def _ask_tracking(self) -> None:
        """Whether the namespace tracks connections now (asked at most once a batch)."""
        conntrack = self.conntrack
        asked = conntrack is not None and conntrack.available
        self._tracked = self._tracking() if asked else False

    def _split_icmp(self, sums: BatchSums, undecided: bool) -> None:
        """Take forwarded ICMP out of the batch's ICMP figures, per distinct row (cached).

        A received ICMP packet is local when its destination is in the local
        table, a sent one when its source is; loopback always is.  A query
        (echo and the other request/reply pairs) whose row key carries its
        identifier, type and code (parse.py) is looked up in conntrack as a
        TCP or UDP row is, so the outside of a masqueraded ping is forwarded
        while the namespace's own pings between the same addresses (another
        identifier) stay its own.  ``undecided``: tracking() not asked yet this
        batch.
        """
        forwarded = self.forwarded_icmp
        verdicts = self._icmp_verdicts
        for row_key, (packets, wire_bytes) in sums.icmp_rows.items():
            direction = row_key[0]
            if direction == LOOPBACK:
                continue
            is_forwarded = verdicts.get(row_key)
            if is_forwarded is None:
                if undecided:
                    undecided = False
                    self._ask_tracking()
                is_forwarded = self._decide_icmp(direction, row_key[1])
                if len(verdicts) >= VERDICTS_MAX:
                    verdicts.clear()
                verdicts[row_key] = is_forwarded
            if not is_forwarded:
                continue
            if direction == RECEIVED:
                sums.icmp_received -= packets
                name = "icmp_received"
            else:
                sums.icmp_sent -= packets
                name = "icmp_sent"
            forwarded[name] += packets
            forwarded[f"{name}_bytes"] += wire_bytes

    def _decide_icmp(self, direction: int, key: bytes) -> bool:
        """True when the ICMP row key of ``direction`` is forwarded (not cached here)."""
        self.decisions += 1
        received = direction == RECEIVED
        width = 4 if len(key) < ICMP_KEY_V6_MIN else 16
        local = self._is_local(key[width : 2 * width] if received else key[:width])
        conntrack = self.conntrack
        if self._tracked and conntrack is not None and len(key) == 2 * width + 4:
            wire = key_tuple(PROTO_ICMP if width == 4 else PROTO_ICMPV6, key)
            if is_icmp_query(wire):
                state, entry = conntrack.lookup(wire if received else wire.inverted())
                if state == CtState.TRACKED and entry is not None:
                    seen = local_tuple(entry, wire, received)
                    if seen is not None:
                        local = self._is_local(seen.dst if received else seen.src)
        return not local

    def _apply(self, sums: BatchSums, others: list[tuple[int, int, bytes, bytes]]) -> None:
        """Take the forwarded rows out of sums; move NAT-rewritten rows to their local key."""
        by_kind = sums.by_kind
        order: list[tuple[int, bytes] | None] = list(sums.order)
        for position, kind, key, verdict in others:
            row = by_kind[kind].pop(key)
            if verdict is FORWARDED:
                self.forwarded_packets[kind] += row[0]
                self.forwarded_bytes[kind] += row[1]
                order[position] = None
                continue
            existing = by_kind[kind].get(verdict)
            if existing is None:
                by_kind[kind][verdict] = row
                order[position] = (kind, verdict)
            else:  # the local tuple has a row of its own already
                existing[0] += row[0]
                existing[1] += row[1]
                order[position] = None
        sums.order = [row for row in order if row is not None]

    def _forget(self, generation: int) -> None:
        """The local table changed: every cached answer may be wrong now."""
        self._generation = generation
        self._address_local.clear()
        self._icmp_verdicts.clear()
        for verdicts in self._verdicts:
            verdicts.clear()

    def _is_local(self, address: bytes) -> bool:
        local = self._address_local.get(address)
        if local is None:
            assert self.addresses is not None
            local = self.addresses.is_local(address)
            if len(self._address_local) >= ADDRESSES_MAX:
                self._address_local.clear()
            self._address_local[address] = local
        return local

    def _decide(self, kind: int, key: bytes) -> bytes:
        """The verdict of a row key not seen yet; cached, with its other direction's."""
        self.decisions += 1
        received = kind in _RECEIVED_KINDS
        width = 4 if len(key) == 12 else 16
        address = key[width : 2 * width] if received else key[:width]
        verdict = LOCAL if self._is_local(address) else FORWARDED
        if self._tracked and self.conntrack is not None:
            protocol = PROTO_TCP if kind >= TCP_KIND else PROTO_UDP
            wire = key_tuple(protocol, key)
            state, entry = self.conntrack.lookup(wire if received else wire.inverted())
            if state == CtState.TRACKED and entry is not None:
                seen = local_tuple(entry, wire, received)
                if seen is not None:
                    at_local_end = seen.dst if received else seen.src
                    if not self._is_local(at_local_end):
                        verdict = FORWARDED
                    elif seen == wire:
                        verdict = LOCAL
                    else:
                        verdict = tuple_key(seen)
                        self.nat_rewrites += 1
        self._remember(kind, key, verdict)
        # The other direction of the same flow: the same answer, keys swapped.
        other = swap_key(key)
        if verdict is LOCAL or verdict is FORWARDED:
            self._remember(_OTHER_DIRECTION[kind], other, verdict)
        else:
            self._remember(_OTHER_DIRECTION[kind], other, swap_key(verdict))
        return verdict

    def _remember(self, kind: int, key: bytes, verdict: bytes) -> None:
        verdicts = self._verdicts[kind]
        if len(verdicts) >= VERDICTS_MAX:
            verdicts.clear()
        verdicts[key] = verdict

    # -- the rtnetlink notifications -------------------------------------------------------

    def fileno(self) -> int | None:
        """The rtnetlink notification socket (for the loop's selector); None without one."""
        return None if self.addresses is None else self.addresses.fileno()

    def process_events(self) -> int:
        """Apply queued changes of the local table (a lost notification makes a fresh dump)."""
        return 0 if self.addresses is None else self.addresses.process_events()

    # -- figures ---------------------------------------------------------------------------

    def figures(self) -> dict[str, int]:
        """counted_* and forwarded_* packets (and forwarded bytes) by protocol and direction;
        ICMP (and ICMPv6) only forwarded: they are not in the balance."""
        figures: dict[str, int] = {}
        for name, kinds in DIRECTIONS.items():
            figures[f"counted_{name}"] = sum(self.counted_packets[k] for k in kinds)
            figures[f"forwarded_{name}"] = sum(self.forwarded_packets[k] for k in kinds)
            figures[f"forwarded_{name}_bytes"] = sum(self.forwarded_bytes[k] for k in kinds)
        for name, value in self.forwarded_icmp.items():
            figures[f"forwarded_{name}"] = value
        return figures

    @property
    def conntrack_note(self) -> str:
        """How NAT is recognised: through conntrack, or why not."""
        conntrack = self.conntrack
        if conntrack is None:
            return self._conntrack_note or "unavailable"
        if not conntrack.available:
            reason = getattr(conntrack, "unavailable_reason", "") or "cannot be asked"
            return f"unavailable: {reason}"
        if self._tracked is None:
            return "not loaded (no NAT here)"
        return f"asked for {conntrack.requests} flows"

    def close(self) -> None:
        if self.addresses is not None:
            self.addresses.close()
        if self.conntrack is not None:
            self.conntrack.close()


def open_locality() -> Locality:
    """The Locality of the namespace of the calling thread; never raises (see Locality.note)."""
    from .netlink.conntrack import Conntrack
    from .netlink.rtnetlink import LocalAddresses
    from .netlink.socket import NetlinkError

    try:
        addresses: AddressTable | None = LocalAddresses()
    except (NetlinkError, OSError) as err:
        reason = f"unavailable: {err}"
        log.warning("local addresses %s; forwarded packets are counted as local", reason)
        return Locality(None, None, note=reason, conntrack_note="not used")
    return Locality(addresses, Conntrack(), note="from the local routing table")
