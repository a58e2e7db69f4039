"""Connection tracking (ctnetlink over NETLINK_NETFILTER): what NAT did to a flow.

Owns one NETLINK_NETFILTER socket of the network namespace of the creating
thread.  ``Conntrack.get`` asks for the conntrack entry of one 5-tuple
(IPCTNL_MSG_CT_GET with CTA_TUPLE_ORIG; the kernel finds an entry by either
of its tuples) and gives its original and reply tuples and status.
``received_destination`` and ``sent_source`` turn that into the one address
the libpcap capture path needs to decide local or forwarded with
``LocalAddresses`` (rtnetlink).  Those two never raise: when conntrack
cannot be asked (no NETLINK_NETFILTER, no ctnetlink, no permission) they
answer ``CtState.UNKNOWN`` and the wire address.

Where the capture sees a frame, and so which address NAT has rewritten:
a received frame is captured before PREROUTING (no NAT applied yet, its
destination is the one before DNAT or before the reverse of SNAT); a sent
frame after POSTROUTING (its source is the one after SNAT or after the
reverse of DNAT).  With an entry whose original tuple is A:a -> B:b and
whose reply tuple is B':b' -> A':a' (B' differs from B after DNAT, A' from
A after SNAT):

* received, wire tuple == original: the kernel delivers it to B' (reply.src).
* received, wire tuple == reply: delivered to A (original.src).
* sent, wire tuple == inverse of reply: sent by A (original.src).
* sent, wire tuple == inverse of original: sent by B' (reply.src).

Which cases need conntrack (the address test alone is wrong only there):

1. Received, destination not local, DNAT or REDIRECT to a local address
   (port forward to a local service, transparent proxy): local after all.
2. Received, destination local, the reply of a connection this namespace
   masqueraded (containers behind SNAT): forwarded after the reverse NAT.
3. Sent, source local, forwarded traffic this namespace masqueraded:
   forwarded.
4. Sent, source not local, the reply of a REDIRECTed connection (the local
   proxy answers as the original destination): local.

ICMP and ICMPv6 queries (echo, and the other request/reply pairs conntrack
tracks) have an entry too, keyed by the echo identifier, type and code
instead of ports: ``FiveTuple`` carries the identifier as ``sport`` and
``type << 8 | code`` as ``dport`` (``icmp_tuple``), and its ``inverted``
turns a request into its reply as conntrack does (``ICMP_QUERY_REPLIES``),
so the four cases above hold for pings through a masquerade too.  ICMP
errors and messages that are no query (neighbour discovery, unreachables)
have no entry of their own and are never asked about (``lookup`` answers
UNKNOWN without asking).

So a caller asks for flows the address test calls forwarded (cases 1, 4)
and for flows it calls local but no local socket owns (cases 2, 3): one
request per distinct flow, never per packet.  No entry (``UNTRACKED``)
means no NAT: NAT needs an entry, so the wire address stands.  Conntrack
only tracks a namespace once something there uses it (a NAT or stateful
rule); until then every answer is ``UNTRACKED``, which is right too.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

from .attributes import iter_attributes, pack_attribute, pack_nested
from .socket import NLM_F_ACK, NetlinkError, NetlinkSocket, family_of

log = logging.getLogger(__name__)

# Netlink protocol number of netfilter (linux/netlink.h).
NETLINK_NETFILTER = 12

# nfnetlink subsystem of connection tracking (linux/netfilter/nfnetlink.h);
# nlmsg_type = subsystem << 8 | message.
NFNL_SUBSYS_CTNETLINK = 1
NFNETLINK_V0 = 0

# struct nfgenmsg (linux/netfilter/nfnetlink.h), 4 bytes; attributes follow:
#   __u8   nfgen_family   AF_INET / AF_INET6 (the family of the tuples)
#   __u8   version        NFNETLINK_V0
#   __be16 res_id         0 here
NFGENMSG = struct.Struct("=BBH")

# Attribute payloads: __be16 ports, __be32 status, __u8 protocol number.
BE16 = struct.Struct("!H")
BE32 = struct.Struct("!I")

# Protocols whose conntrack tuple carries ports (CTA_PROTO_SRC_PORT / DST_PORT).
IPPROTO_DCCP = 33
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
PORT_PROTOCOLS = frozenset(
    {socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP}
)

# ICMP and ICMPv6, whose conntrack tuple carries the echo identifier, type and code.
IPPROTO_ICMP = socket.IPPROTO_ICMP
IPPROTO_ICMPV6 = socket.IPPROTO_ICMPV6
# The query types conntrack tracks and the type of their other direction (its invmap
# in nf_conntrack_proto_icmp.c and nf_conntrack_proto_icmpv6.c): echo, timestamp,
# information and address mask (ICMP), echo and node information (ICMPv6).  The kernel
# refuses a tuple of any other type (EINVAL).
ICMP_QUERY_REPLIES: dict[int, dict[int, int]] = {
    IPPROTO_ICMP: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17},
    IPPROTO_ICMPV6: {128: 129, 129: 128, 139: 140, 140: 139},
}

# Errors meaning "conntrack cannot be asked here", as opposed to "no entry" (ENOENT).
UNAVAILABLE_ERRNOS = frozenset(
    {
        errno.EPROTONOSUPPORT,  # no NETLINK_NETFILTER
        errno.EOPNOTSUPP,  # no ctnetlink subsystem
        errno.EAFNOSUPPORT,  # no conntrack for that family
        errno.EPERM,  # needs CAP_NET_ADMIN
        errno.EACCES,
    }
)


class CtnlMsg(IntEnum):
    """ctnetlink message numbers (linux/netfilter/nfnetlink_conntrack.h)."""

    NEW = 0
    GET = 1
    DELETE = 2


def ctnl_msg_type(message: int) -> int:
    """The nlmsg_type of ctnetlink message ``message``."""
    return (NFNL_SUBSYS_CTNETLINK << 8) | message


class CtaAttr(IntEnum):
    """Top-level attributes of a conntrack message (enum ctattr_type), those used here."""

    TUPLE_ORIG = 1
    TUPLE_REPLY = 2
    STATUS = 3
    NAT_SRC = 6
    TIMEOUT = 7
    ID = 12
    NAT_DST = 13
    ZONE = 18


class CtaTuple(IntEnum):
    """Attributes nested in CTA_TUPLE_* (enum ctattr_tuple)."""

    IP = 1
    PROTO = 2
    ZONE = 3


class CtaIp(IntEnum):
    """Attributes nested in CTA_TUPLE_IP (enum ctattr_ip)."""

    V4_SRC = 1
    V4_DST = 2
    V6_SRC = 3
    V6_DST = 4


class CtaProto(IntEnum):
    """Attributes nested in CTA_TUPLE_PROTO (enum ctattr_l4proto).

    The identifiers are __be16, the types and codes __u8.
    """

    NUM = 1
    SRC_PORT = 2
    DST_PORT = 3
    ICMP_ID = 4
    ICMP_TYPE = 5
    ICMP_CODE = 6
    ICMPV6_ID = 7
    ICMPV6_TYPE = 8
    ICMPV6_CODE = 9


# protocol -> its (identifier, type, code) attributes.
ICMP_ATTRIBUTES = {
    IPPROTO_ICMP: (CtaProto.ICMP_ID, CtaProto.ICMP_TYPE, CtaProto.ICMP_CODE),
    IPPROTO_ICMPV6: (CtaProto.ICMPV6_ID, CtaProto.ICMPV6_TYPE, CtaProto.ICMPV6_CODE),
}

_ICMP_ID = frozenset({CtaProto.ICMP_ID, CtaProto.ICMPV6_ID})
_ICMP_TYPE = frozenset({CtaProto.ICMP_TYPE, CtaProto.ICMPV6_TYPE})
_ICMP_CODE = frozenset({CtaProto.ICMP_CODE, CtaProto.ICMPV6_CODE})


class CtaNat(IntEnum):
    """Attributes nested in CTA_NAT_SRC / CTA_NAT_DST (enum ctattr_nat)."""

    V4_MINIP = 1
    V4_MAXIP = 2
    PROTO = 3
    V6_MINIP = 4
    V6_MAXIP = 5


class CtaProtoNat(IntEnum):
    """Attributes nested in CTA_NAT_PROTO (enum ctattr_protonat)."""

    PORT_MIN = 1
    PORT_MAX = 2


class CtStatus(IntFlag):
    """Conntrack status bits (linux/netfilter/nf_conntrack_common.h), those used here."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    SEQ_ADJUST = 1 << 6
    SRC_NAT_DONE = 1 << 7
    DST_NAT_DONE = 1 << 8


NAT_STATUS = CtStatus.SRC_NAT | CtStatus.DST_NAT


class CtState(IntEnum):
    """What conntrack could say about a flow."""

    UNKNOWN = 0  # conntrack could not be asked (see UNAVAILABLE_ERRNOS) or failed
    UNTRACKED = 1  # no entry: no NAT applies
    TRACKED = 2  # an entry; the address may or may not be rewritten


class FiveTuple(NamedTuple):
    """One direction of a flow: addresses 4 or 16 bytes, ports in host order.

    For ICMP and ICMPv6 (``icmp_tuple``), as conntrack keeps them: ``sport``
    is the echo identifier, ``dport`` is ``type << 8 | code``.
    """

    protocol: int
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def inverted(self) -> FiveTuple:
        """The tuple of the other direction (of an ICMP query: its reply, same identifier)."""
        replies = ICMP_QUERY_REPLIES.get(self.protocol)
        if replies is None:
            return FiveTuple(self.protocol, self.dst, self.dport, self.src, self.sport)
        icmp_type = self.dport >> 8
        other = replies.get(icmp_type, icmp_type)
        return FiveTuple(
            self.protocol, self.dst, self.sport, self.src, other << 8 | (self.dport & 0xFF)
        )


def icmp_tuple(
    protocol: int, src: bytes, dst: bytes, ident: int, icmp_type: int, code: int
) -> FiveTuple:
    """The FiveTuple of an ICMP or ICMPv6 message (identifier, type and code)."""
    return FiveTuple(protocol, src, ident, dst, icmp_type << 8 | code)


def is_icmp_query(flow: FiveTuple) -> bool:
    """True for an ICMP or ICMPv6 message of a type conntrack keeps an entry for."""
    replies = ICMP_QUERY_REPLIES.get(flow.protocol)
    return replies is not None and (flow.dport >> 8) in replies


class ConntrackEntry(NamedTuple):
    """One conntrack entry: what the first packet looked like, what a reply looks like."""

    original: FiveTuple
    reply: FiveTuple
    status: int  # CtStatus bits

    @property
    def nated(self) -> bool:
        """True when NAT rewrote this connection in this namespace."""
        return bool(self.status & NAT_STATUS) or self.reply != self.original.inverted()


def pack_tuple(attribute_type: int, flow: FiveTuple) -> bytes:
    """A CTA_TUPLE_ORIG / CTA_TUPLE_REPLY attribute describing ``flow``."""
    if family_of(flow.src) == socket.AF_INET:
        src_type, dst_type = CtaIp.V4_SRC, CtaIp.V4_DST
    else:
        src_type, dst_type = CtaIp.V6_SRC, CtaIp.V6_DST
    if len(flow.dst) != len(flow.src):
        raise ValueError("source and destination of different families")
    icmp = ICMP_ATTRIBUTES.get(flow.protocol)
    transport: tuple[bytes, ...]
    if icmp is None:
        transport = (
            pack_attribute(CtaProto.SRC_PORT, BE16.pack(flow.sport)),
            pack_attribute(CtaProto.DST_PORT, BE16.pack(flow.dport)),
        )
    else:
        id_type, type_type, code_type = icmp
        transport = (
            pack_attribute(id_type, BE16.pack(flow.sport)),
            pack_attribute(type_type, bytes([flow.dport >> 8])),
            pack_attribute(code_type, bytes([flow.dport & 0xFF])),
        )
    return pack_nested(
        attribute_type,
        pack_nested(
            CtaTuple.IP,
            pack_attribute(src_type, flow.src),
            pack_attribute(dst_type, flow.dst),
        ),
        pack_nested(
            CtaTuple.PROTO, pack_attribute(CtaProto.NUM, bytes([flow.protocol])), *transport
        ),
    )


def pack_get_request(flow: FiveTuple) -> bytes:
    """The payload of an IPCTNL_MSG_CT_GET for the entry holding ``flow``."""
    return NFGENMSG.pack(family_of(flow.src), NFNETLINK_V0, 0) + pack_tuple(
        CtaAttr.TUPLE_ORIG, flow
    )


def _unpack_tuple(payload: bytes | bytearray | memoryview, start: int, end: int) -> FiveTuple:
    src = dst = b""
    protocol = sport = dport = icmp_type = icmp_code = 0
    for tuple_type, tuple_start, tuple_end in iter_attributes(payload, start, end):
        if tuple_type == CtaTuple.IP:
            for ip_type, ip_start, ip_end in iter_attributes(payload, tuple_start, tuple_end):
                if ip_type in (CtaIp.V4_SRC, CtaIp.V6_SRC):
                    src = bytes(payload[ip_start:ip_end])
                elif ip_type in (CtaIp.V4_DST, CtaIp.V6_DST):
                    dst = bytes(payload[ip_start:ip_end])
        elif tuple_type == CtaTuple.PROTO:
            for l4_type, l4_start, l4_end in iter_attributes(payload, tuple_start, tuple_end):
                if l4_type == CtaProto.NUM and l4_end > l4_start:
                    protocol = payload[l4_start]
                elif l4_type == CtaProto.SRC_PORT and l4_end - l4_start >= BE16.size:
                    (sport,) = BE16.unpack_from(payload, l4_start)
                elif l4_type == CtaProto.DST_PORT and l4_end - l4_start >= BE16.size:
                    (dport,) = BE16.unpack_from(payload, l4_start)
                elif l4_type in _ICMP_ID and l4_end - l4_start >= BE16.size:
                    (sport,) = BE16.unpack_from(payload, l4_start)
                elif l4_type in _ICMP_TYPE and l4_end > l4_start:
                    icmp_type = payload[l4_start]
                elif l4_type in _ICMP_CODE and l4_end > l4_start:
                    icmp_code = payload[l4_start]
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise NetlinkError(
            errno.EBADMSG, f"conntrack tuple with addresses of {len(src)}/{len(dst)} bytes"
        )
    if protocol in ICMP_ATTRIBUTES:
        dport = icmp_type << 8 | icmp_code
    return FiveTuple(protocol, src, sport, dst, dport)


def unpack_entry(payload: bytes | bytearray | memoryview) -> ConntrackEntry:
    """ConntrackEntry from the payload of one ctnetlink entry message.

    Raises NetlinkError(EBADMSG) when a tuple is missing or malformed.
    """
    if len(payload) < NFGENMSG.size:
        raise NetlinkError(errno.EBADMSG, f"nfgenmsg of {len(payload)} bytes")
    original = reply = None
    status = 0
    for attribute_type, start, end in iter_attributes(payload, NFGENMSG.size, len(payload)):
        if attribute_type == CtaAttr.TUPLE_ORIG:
            original = _unpack_tuple(payload, start, end)
        elif attribute_type == CtaAttr.TUPLE_REPLY:
            reply = _unpack_tuple(payload, start, end)
        elif attribute_type == CtaAttr.STATUS and end - start >= BE32.size:
            (status,) = BE32.unpack_from(payload, start)
    if original is None or reply is None:
        raise NetlinkError(errno.EBADMSG, "conntrack entry without both tuples")
    return ConntrackEntry(original, reply, status)


def destination_after_nat(entry: ConntrackEntry, wire: FiveTuple) -> bytes | None:
    """Where the kernel delivers a received frame of tuple ``wire`` (captured before PREROUTING).

    None when ``wire`` is neither tuple of ``entry``.
    """
    if wire == entry.original:
        return entry.reply.src
    if wire == entry.reply:
        return entry.original.src
    return None


def source_before_nat(entry: ConntrackEntry, wire: FiveTuple) -> bytes | None:
    """Who sent a frame of tuple ``wire`` (captured after POSTROUTING).

    None when ``wire`` is the inverse of neither tuple of ``entry``.
    """
    inverse = wire.inverted()
    if inverse == entry.reply:
        return entry.original.src
    if inverse == entry.original:
        return entry.reply.src
    return None


class Conntrack:
    """A ctnetlink client of the namespace of the creating thread; never raises from the answers.

    ``netlink`` replaces the socket (tests feed recorded replies through it).
    The socket is opened at the first request; when it cannot be, every
    answer is UNKNOWN.
    """

    def __init__(self, netlink: NetlinkSocket | None = None) -> None:
        self._netlink = netlink
        self._unavailable_errno = 0
        self.requests = 0
        self.failures = 0  # requests answered UNKNOWN

    @property
    def available(self) -> bool:
        """False once conntrack turned out not to be there (no module, no permission)."""
        return self._unavailable_errno == 0

    @property
    def unavailable_reason(self) -> str:
        """Why conntrack cannot be asked ('' while it can)."""
        error_number = self._unavailable_errno
        return f"{os.strerror(error_number)} (errno {error_number})" if error_number else ""

    def _socket(self) -> NetlinkSocket:
        if self._netlink is None:
            self._netlink = NetlinkSocket(NETLINK_NETFILTER)
        return self._netlink

    def get(self, flow: FiveTuple) -> ConntrackEntry | None:
        """The entry holding ``flow`` in either direction, None when there is none.

        Raises NetlinkError for every other failure, ValueError for a protocol
        without ports that is not an ICMP query (``is_icmp_query``).
        """
        if flow.protocol not in PORT_PROTOCOLS and not is_icmp_query(flow):
            raise ValueError(
                f"protocol {flow.protocol} ({flow.dport:#06x}) has no conntrack tuple of its own"
            )
        try:
            # The entry comes back flagged NLM_F_MULTI but with no NLMSG_DONE
            # after it (ctnetlink_fill_info, Linux 6.18): the ACK ends the reply.
            payloads = self._socket().request(
                ctnl_msg_type(CtnlMsg.GET), NLM_F_ACK, pack_get_request(flow)
            )
        except NetlinkError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        if not payloads:
            return None
        return unpack_entry(payloads[0])

    def lookup(self, flow: FiveTuple) -> tuple[CtState, ConntrackEntry | None]:
        """(TRACKED, entry), (UNTRACKED, None) or (UNKNOWN, None); never raises."""
        if self._unavailable_errno or (
            flow.protocol not in PORT_PROTOCOLS and not is_icmp_query(flow)
        ):
            return CtState.UNKNOWN, None
        self.requests += 1
        try:
            entry = self.get(flow)
        except (NetlinkError, ValueError) as err:
            self.failures += 1
            error_number = err.errno if isinstance(err, OSError) else 0
            if error_number in UNAVAILABLE_ERRNOS:
                self._unavailable_errno = error_number
                log.warning("conntrack: not available here (%s); NAT is not recognised", err)
            else:
                log.debug("conntrack: lookup of %s failed: %s", flow, err)
            return CtState.UNKNOWN, None
        if entry is None:
            return CtState.UNTRACKED, None
        return CtState.TRACKED, entry

    def received_destination(
        self, protocol: int, src: bytes, sport: int, dst: bytes, dport: int
    ) -> tuple[CtState, bytes]:
        """The destination a received frame is delivered to after this namespace's NAT.

        The wire destination when there is no entry or conntrack cannot say.
        """
        wire = FiveTuple(protocol, src, sport, dst, dport)
        state, entry = self.lookup(wire)
        if entry is not None:
            address = destination_after_nat(entry, wire)
            if address is not None:
                return state, address
        return state, dst

    def sent_source(
        self, protocol: int, src: bytes, sport: int, dst: bytes, dport: int
    ) -> tuple[CtState, bytes]:
        """The source a sent frame had before this namespace's NAT.

        The wire source when there is no entry or conntrack cannot say.
        """
        wire = FiveTuple(protocol, src, sport, dst, dport)
        state, entry = self.lookup(wire.inverted())
        if entry is not None:
            address = source_before_nat(entry, wire)
            if address is not None:
                return state, address
        return state, src

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
