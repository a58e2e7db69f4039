"""The namespace's local addresses, from the kernel's `local` routing table.

Owns two NETLINK_ROUTE sockets of the network namespace of the creating
thread: one subscribed to the route notification groups (RTNLGRP_IPV4_ROUTE,
RTNLGRP_IPV6_ROUTE), non-blocking, and one for dumps (RTM_GETROUTE of table
``local``).  ``LocalAddresses`` keeps the set of routes of that table and
answers ``is_local_v4`` / ``is_local_v6``: is a packet to this address
received by this namespace rather than forwarded?  Meant for the libpcap
capture path (a received frame is local when its destination is, a sent one
when its source is); the daemon's loop polls ``fileno()`` and calls
``process_events()``.

What the kernel puts in table local (RT_TABLE_LOCAL, 255), and so what is
local here:

* RTN_LOCAL: every address of the namespace (``ip addr add``), as a /32 or
  /128 route, and whole prefixes routed locally: 127.0.0.0/8 (any 127.x.y.z
  is received), ``ip route add local 198.51.100.0/24 dev lo`` (AnyIP).
* RTN_BROADCAST (IPv4): the broadcast address of each local subnet, /32.
  Received by the namespace, so local.
* RTN_ANYCAST (IPv6): the subnet-router anycast address of each prefix, /128.
  Received by the namespace, so local.
* RTN_MULTICAST (IPv6, ff00::/8 per interface).

Multicast destinations (224.0.0.0/4, ff00::/8) and the limited broadcast
255.255.255.255 are always answered local: the kernel delivers them to
every socket that joined the group (or bound the port), so a captured one
is treated as received.  A namespace that routes multicast (mrouted, pimd)
also forwards them; this class cannot tell those apart.

Why routes rather than addresses (RTM_GETADDR): the local table holds
exactly what ``ip_route_input`` / ``ip6_route_input`` deliver locally,
including the prefixes no address names (127.0.0.0/8, AnyIP routes) and the
broadcast and anycast addresses.

Keeping it exact: the notification socket is subscribed before the first
dump, so a change made during the dump is applied again afterwards (every
notification states the whole truth about one route, so replaying it is
harmless).  When the kernel drops notifications because the socket's queue
was full, the next read fails with ENOBUFS: what is queued is discarded and
the table dumped again (``resyncs`` counts it).

One change is not notified (measured on Linux 6.18): when an interface goes
down, the kernel drops the IPv4 broadcast routes of its subnets from table
local without an RTM_DELROUTE (its local routes stay, and IPv6 notifies
each address it removes).  So the socket also joins RTNLGRP_LINK, and a
link notification whose IFF_UP bit changed, or an RTM_DELLINK, makes one
dump at the end of that ``process_events()`` call (``link_refreshes``).  Route keys include the
output interface, metric and TOS, so one address on two interfaces is two
routes, and it stays local until both are gone.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple, Protocol

from .attributes import iter_attributes, pack_attribute
from .socket import (
    DEFAULT_TIMEOUT_S,
    NLM_F_DUMP,
    NetlinkError,
    NetlinkSocket,
    NlmsgType,
    iter_messages,
    open_raw,
)

log = logging.getLogger(__name__)

# Netlink protocol number of rtnetlink (linux/netlink.h).
NETLINK_ROUTE = 0

# Socket options of level SOL_NETLINK (linux/netlink.h, linux/socket.h).
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_GET_STRICT_CHK = 12  # Linux 4.20: dump requests may filter (here: by table)

# The routing table this module reads (linux/rtnetlink.h, enum rt_class_t).
RT_TABLE_LOCAL = 255

# Receive buffer asked for the notification socket (capped by net.core.rmem_max);
# an address change makes two to four notifications of about 100 bytes.
EVENT_RECEIVE_BUFFER_BYTES = 1 << 20
EVENT_DATAGRAM_BYTES = 65536
# Datagrams read by one process_events() call; more stay queued for the next.
EVENT_DATAGRAMS_PER_CALL = 1024

# struct rtmsg (linux/rtnetlink.h), 12 bytes, host byte order; rtattr follow:
#   unsigned char rtm_family     AF_INET / AF_INET6
#   unsigned char rtm_dst_len    prefix length of RTA_DST
#   unsigned char rtm_src_len
#   unsigned char rtm_tos
#   unsigned char rtm_table      table id, RT_TABLE_COMPAT (252) when > 255: see RTA_TABLE
#   unsigned char rtm_protocol   who installed it (RTPROT_KERNEL = 2, ...)
#   unsigned char rtm_scope      RT_SCOPE_HOST = 254 for local routes
#   unsigned char rtm_type       RouteType
#   unsigned int  rtm_flags      RTM_F_* bits
RTMSG = struct.Struct("=BBBBBBBBI")

# Attribute payloads: RTA_TABLE, RTA_OIF and RTA_PRIORITY are a __u32 each.
U32 = struct.Struct("=I")

# struct ifinfomsg (linux/rtnetlink.h), 16 bytes, host byte order; rtattr follow:
#   unsigned char  ifi_family
#   unsigned char  __ifi_pad
#   unsigned short ifi_type     ARPHRD_*
#   int            ifi_index
#   unsigned       ifi_flags    IFF_* (net/if.h)
#   unsigned       ifi_change   IFF_* bits that changed (in notifications)
IFINFOMSG = struct.Struct("=BxHiII")

IFF_UP = 0x1


class RtmType(IntEnum):
    """Link and route message types (linux/rtnetlink.h)."""

    NEWLINK = 16
    DELLINK = 17
    NEWROUTE = 24
    DELROUTE = 25
    GETROUTE = 26


class RouteType(IntEnum):
    """rtm_type values (linux/rtnetlink.h, RTN_*)."""

    UNSPEC = 0
    UNICAST = 1
    LOCAL = 2
    BROADCAST = 3
    ANYCAST = 4
    MULTICAST = 5
    BLACKHOLE = 6
    UNREACHABLE = 7
    PROHIBIT = 8
    THROW = 9
    NAT = 10
    XRESOLVE = 11


class RouteAttr(IntEnum):
    """Route attribute numbers (linux/rtnetlink.h, enum rtattr_type_t), those read here."""

    DST = 1
    OIF = 4
    PRIORITY = 6
    TABLE = 15


class RtnlGroup(IntEnum):
    """Multicast group numbers (linux/rtnetlink.h, enum rtnetlink_groups)."""

    LINK = 1
    IPV4_ROUTE = 7
    IPV6_ROUTE = 11


# Route types of table local whose destination this namespace receives.
RECEIVED_TYPES = frozenset(
    {RouteType.LOCAL, RouteType.BROADCAST, RouteType.ANYCAST, RouteType.MULTICAST}
)

# Destinations always received (see the module docstring): (family, network, prefix length).
ALWAYS_RECEIVED = (
    (socket.AF_INET, bytes([224, 0, 0, 0]), 4),
    (socket.AF_INET, bytes([255, 255, 255, 255]), 32),
    (socket.AF_INET6, bytes([0xFF]) + bytes(15), 8),
)

_ADDRESS_BYTES = {socket.AF_INET: 4, socket.AF_INET6: 16}


class Route(NamedTuple):
    """One route of table local, as a notification or a dump describes it.

    The fields after ``dst_len`` are part of the key only: two routes that
    differ in them are two routes (the same address on two interfaces).
    """

    family: int  # AF_INET or AF_INET6
    route_type: int  # RouteType value
    dst: bytes  # 4 or 16 bytes, the network (all zero without RTA_DST)
    dst_len: int  # prefix length in bits
    tos: int
    priority: int  # RTA_PRIORITY (metric), 0 when absent
    output_interface: int  # RTA_OIF, 0 when absent
    table: int  # RTA_TABLE, else rtm_table


def pack_rtmsg_dump_request(family: int, table: int = RT_TABLE_LOCAL) -> bytes:
    """The payload of an RTM_GETROUTE dump of one family's table ``table``.

    A kernel in strict checking mode dumps that table only; an older one
    dumps every table and the caller filters.
    """
    header = RTMSG.pack(family, 0, 0, 0, table & 0xFF, 0, 0, 0, 0)
    return header + pack_attribute(RouteAttr.TABLE, U32.pack(table))


def unpack_route(payload: bytes | bytearray | memoryview) -> Route:
    """Route from the payload of one RTM_NEWROUTE / RTM_DELROUTE message.

    Raises NetlinkError(EBADMSG) for a payload shorter than struct rtmsg, a
    destination of the wrong length or a malformed attribute.
    """
    if len(payload) < RTMSG.size:
        raise NetlinkError(errno.EBADMSG, f"rtmsg of {len(payload)} bytes, need {RTMSG.size}")
    family, dst_len, _src_len, tos, table, _protocol, _scope, route_type, _flags = (
        RTMSG.unpack_from(payload, 0)
    )
    address_bytes = _ADDRESS_BYTES.get(family, 0)
    dst = bytes(address_bytes)
    priority = 0
    output_interface = 0
    for attribute_type, start, end in iter_attributes(payload, RTMSG.size, len(payload)):
        if attribute_type == RouteAttr.DST:
            dst = bytes(payload[start:end])
            if len(dst) != address_bytes:
                raise NetlinkError(
                    errno.EBADMSG, f"RTA_DST of {len(dst)} bytes in a family {family} route"
                )
        elif end - start >= U32.size and attribute_type == RouteAttr.TABLE:
            (table,) = U32.unpack_from(payload, start)
        elif end - start >= U32.size and attribute_type == RouteAttr.OIF:
            (output_interface,) = U32.unpack_from(payload, start)
        elif end - start >= U32.size and attribute_type == RouteAttr.PRIORITY:
            (priority,) = U32.unpack_from(payload, start)
    if dst_len > 8 * address_bytes:
        raise NetlinkError(errno.EBADMSG, f"rtm_dst_len {dst_len} in a family {family} route")
    return Route(family, route_type, dst, dst_len, tos, priority, output_interface, table)


def is_received_route(route: Route) -> bool:
    """True for a route of table local whose destination the namespace receives."""
    return (
        route.table == RT_TABLE_LOCAL
        and route.family in _ADDRESS_BYTES
        and route.route_type in RECEIVED_TYPES
    )


def prefix_mask(prefix_len: int, address_bits: int) -> int:
    """The network mask of a ``prefix_len``-bit prefix as an integer of ``address_bits`` bits."""
    all_ones = (1 << address_bits) - 1
    return all_ones ^ ((1 << (address_bits - prefix_len)) - 1)


class _Lookup:
    """The fast form of one family's local destinations: hosts and short prefixes."""

    __slots__ = ("hosts", "prefixes")

    def __init__(self, networks: Iterable[tuple[bytes, int]], address_bits: int) -> None:
        hosts: set[bytes] = set()
        prefixes: set[tuple[int, int]] = set()
        for network, prefix_len in networks:
            if prefix_len == address_bits:
                hosts.add(network)
            else:
                mask = prefix_mask(prefix_len, address_bits)
                prefixes.add((int.from_bytes(network, "big") & mask, mask))
        self.hosts = frozenset(hosts)
        # Widest first: 127.0.0.0/8 and 224.0.0.0/4 answer most of the misses.
        self.prefixes = tuple(sorted(prefixes, key=lambda item: item[1]))

    def contains(self, address: bytes) -> bool:
        if address in self.hosts:
            return True
        if not self.prefixes:
            return False
        value = int.from_bytes(address, "big")
        for network, mask in self.prefixes:
            if value & mask == network:
                return True
        return False


class EventSource(Protocol):
    """What LocalAddresses needs of its notification socket (a real one, or a fake)."""

    def recvfrom_into(
        self, buffer: bytearray, nbytes: int, flags: int, /
    ) -> tuple[int, object]: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def open_event_socket(
    groups: Iterable[int] = (RtnlGroup.LINK, RtnlGroup.IPV4_ROUTE, RtnlGroup.IPV6_ROUTE),
) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to ``groups``."""
    sock = open_raw(NETLINK_ROUTE, nonblocking=True, what="rtnetlink socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_RECEIVE_BUFFER_BYTES)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, int(group))
    except OSError as err:
        sock.close()
        raise NetlinkError(err.errno or errno.EIO, "rtnetlink subscription") from err
    return sock


def open_dump_socket(timeout_s: float = DEFAULT_TIMEOUT_S) -> NetlinkSocket:
    """A NetlinkSocket of NETLINK_ROUTE with strict dump checking on when the kernel has it."""
    sock = open_raw(NETLINK_ROUTE, timeout_s, what="rtnetlink socket")
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError as err:  # before Linux 4.20: the dump covers every table
        log.debug("rtnetlink: no strict dump checking (%s); filtering the dump", err.strerror)
    return NetlinkSocket(NETLINK_ROUTE, sock=sock)


class LocalAddresses:
    """The destinations the network namespace of the creating thread receives.

    ``events`` and ``dump`` replace the two sockets (tests feed recorded
    messages through them).  Not thread-safe.  ``generation`` grows by one
    with every change of the answers, so a caller may cache answers per
    generation.
    """

    def __init__(
        self,
        *,
        events: EventSource | None = None,
        dump: NetlinkSocket | None = None,
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
    ) -> None:
        self._events: EventSource | None = events if events is not None else open_event_socket()
        try:
            self._dump = dump if dump is not None else open_dump_socket()
        except BaseException:
            self._events.close()
            raise
        self._families = families
        self._buffer = bytearray(EVENT_DATAGRAM_BYTES)
        self._routes: set[Route] = set()
        self._networks: Counter[tuple[int, bytes, int]] = Counter()
        self._v4 = _Lookup((), 32)
        self._v6 = _Lookup((), 128)
        self._dirty = True
        self.generation = 0
        self.resyncs = 0  # dumps after lost notifications (ENOBUFS) or a bad message
        self.events_applied = 0  # notifications that changed the table
        self.bad_messages = 0  # malformed notifications (each forces a dump)
        self.foreign_datagrams = 0  # datagrams not sent by the kernel, skipped
        self.link_refreshes = 0  # dumps after an interface went up, down or away
        self._refresh_wanted = False
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    # --- the table -------------------------------------------------------------

    def refresh(self) -> None:
        """Dump table local of every family again and replace what is held."""
        routes: set[Route] = set()
        for family in self._families:
            payloads = self._dump.request(
                RtmType.GETROUTE,
                NLM_F_DUMP,
                pack_rtmsg_dump_request(family),
                reply_type=RtmType.NEWROUTE,
            )
            for payload in payloads:
                route = unpack_route(payload)
                if is_received_route(route):
                    routes.add(route)
        if routes != self._routes:
            self._routes = set()
            self._networks.clear()
            for route in routes:
                self._add(route)
            self._changed()

    def _add(self, route: Route) -> bool:
        if route in self._routes:
            return False
        self._routes.add(route)
        self._networks[(route.family, route.dst, route.dst_len)] += 1
        return True

    def _remove(self, route: Route) -> bool:
        if route not in self._routes:
            return False
        self._routes.remove(route)
        key = (route.family, route.dst, route.dst_len)
        self._networks[key] -= 1
        if self._networks[key] <= 0:
            del self._networks[key]
        return True

    def _changed(self) -> None:
        self._dirty = True
        self.generation += 1

    def apply(self, msg_type: int, payload: bytes | bytearray | memoryview) -> bool:
        """Apply one RTM_NEWROUTE / RTM_DELROUTE; True when the table changed."""
        route = unpack_route(payload)
        if not is_received_route(route):
            return False
        if msg_type == RtmType.NEWROUTE:
            changed = self._add(route)
        elif msg_type == RtmType.DELROUTE:
            changed = self._remove(route)
        else:
            return False
        if changed:
            self.events_applied += 1
            self._changed()
        return changed

    def networks(self) -> list[tuple[int, bytes, int]]:
        """(family, network, prefix length) of every local destination, sorted; no fixed ones."""
        return sorted(self._networks)

    def routes(self) -> list[Route]:
        """Every route held, sorted."""
        return sorted(self._routes)

    # --- notifications -------------------------------------------------------------

    def fileno(self) -> int:
        """The notification socket, readable when process_events() has work."""
        return self._event_socket().fileno()

    def _event_socket(self) -> EventSource:
        if self._events is None:
            raise NetlinkError(errno.EBADF, "rtnetlink socket closed")
        return self._events

    def process_events(self) -> int:
        """Apply the queued notifications without blocking; the number that changed the table.

        Lost notifications (ENOBUFS) and malformed ones make a fresh dump.
        """
        sock = self._event_socket()
        buffer = self._buffer
        changes = 0
        for _ in range(EVENT_DATAGRAMS_PER_CALL):
            try:
                length_bytes, address = sock.recvfrom_into(
                    buffer, len(buffer), socket.MSG_DONTWAIT | socket.MSG_TRUNC
                )
            except InterruptedError:
                continue
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise NetlinkError(err.errno or errno.EIO, "rtnetlink receive") from err
                log.info("rtnetlink: notifications lost (ENOBUFS); dumping table local again")
                changes += self._resync(sock)
                continue
            sender_port = address[0] if isinstance(address, tuple) and address else 0
            if sender_port != 0:
                self.foreign_datagrams += 1
                continue
            try:
                if length_bytes > len(buffer):
                    raise NetlinkError(errno.EMSGSIZE, f"{length_bytes}-byte notification")
                changes += self._take_datagram(length_bytes)
            except NetlinkError as err:
                self.bad_messages += 1
                log.warning("rtnetlink: %s; dumping table local again", err)
                changes += self._resync(sock)
        if self._refresh_wanted:
            self._refresh_wanted = False
            self.link_refreshes += 1
            before = self.generation
            self.refresh()
            changes += self.generation - before
        return changes

    def _take_datagram(self, length_bytes: int) -> int:
        changes = 0
        buffer = self._buffer
        for msg_type, _flags, _seq, _pid, start, end in iter_messages(buffer, length_bytes):
            if msg_type in (RtmType.NEWROUTE, RtmType.DELROUTE):
                changes += self.apply(msg_type, memoryview(buffer)[start:end])
            elif msg_type == RtmType.DELLINK:
                self._refresh_wanted = True
            elif msg_type == RtmType.NEWLINK:
                if end - start < IFINFOMSG.size:
                    raise NetlinkError(errno.EBADMSG, "ifinfomsg too short")
                _family, _type, _index, _flags, change = IFINFOMSG.unpack_from(buffer, start)
                if change & IFF_UP:
                    self._refresh_wanted = True
            elif msg_type == NlmsgType.OVERRUN:
                raise NetlinkError(errno.ENOBUFS, "NLMSG_OVERRUN")
        return changes

    def _resync(self, sock: EventSource) -> int:
        """Drop what is queued (it may follow a gap), then dump again."""
        for _ in range(EVENT_DATAGRAMS_PER_CALL * 16):
            try:
                sock.recvfrom_into(self._buffer, len(self._buffer), socket.MSG_DONTWAIT)
            except InterruptedError:
                continue
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    break
        self.resyncs += 1
        before = self.generation
        self.refresh()
        return self.generation - before

    # --- answers -------------------------------------------------------------------

    def _rebuild(self) -> None:
        v4: list[tuple[bytes, int]] = []
        v6: list[tuple[bytes, int]] = []
        for family, network, prefix_len in (*self._networks, *ALWAYS_RECEIVED):
            (v4 if family == socket.AF_INET else v6).append((network, prefix_len))
        self._v4 = _Lookup(v4, 32)
        self._v6 = _Lookup(v6, 128)
        self._dirty = False

    def is_local_v4(self, addr4: bytes) -> bool:
        """True when the namespace receives IPv4 packets to ``addr4`` (4 bytes)."""
        if self._dirty:
            self._rebuild()
        return self._v4.contains(addr4)

    def is_local_v6(self, addr16: bytes) -> bool:
        """True when the namespace receives IPv6 packets to ``addr16`` (16 bytes)."""
        if self._dirty:
            self._rebuild()
        return self._v6.contains(addr16)

    def is_local(self, address: bytes) -> bool:
        """is_local_v4 or is_local_v6 by the length of ``address``."""
        if len(address) == 4:
            return self.is_local_v4(address)
        if len(address) == 16:
            return self.is_local_v6(address)
        raise ValueError(f"an address is 4 or 16 bytes, not {len(address)}")

    # --- life ----------------------------------------------------------------------

    def close(self) -> None:
        """Close both sockets; later calls of fileno/process_events raise NetlinkError(EBADF)."""
        if self._events is not None:
            events, self._events = self._events, None
            events.close()
        self._dump.close()

    def __enter__(self) -> LocalAddresses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
