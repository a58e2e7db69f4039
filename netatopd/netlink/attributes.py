"""Netlink attributes (struct nlattr / struct rtattr): walk them and build them.

Owns nothing but the attribute layout.  ``iter_attributes`` walks the
attributes of one message payload (or of one nested attribute) in place;
``pack_attribute`` and ``pack_nested`` build request attributes.  Called by
``rtnetlink`` (route messages) and ``conntrack`` (ctnetlink messages).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

from .socket import NetlinkError, nlmsg_align

# struct nlattr (linux/netlink.h), 4 bytes, host byte order; struct rtattr
# (linux/rtnetlink.h) has the same layout:
#   __u16 nla_len    length of the attribute including this header (unpadded)
#   __u16 nla_type   attribute number; the top two bits are flags
NLATTR = struct.Struct("=HH")

NLA_F_NESTED = 0x8000  # the payload is itself a list of attributes
NLA_F_NET_BYTEORDER = 0x4000  # the payload is in network byte order
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# One attribute located in a buffer: (type without flag bits, payload_start, payload_end).
AttributeSpan = tuple[int, int, int]


def iter_attributes(
    buffer: bytes | bytearray | memoryview, start: int, end: int
) -> Iterator[AttributeSpan]:
    """The attributes held in ``buffer[start:end]``, flag bits removed from the type.

    Raises NetlinkError(EBADMSG) when an attribute's nla_len is smaller than
    its header or runs past ``end``.
    """
    offset = start
    while offset + NLATTR.size <= end:
        length_bytes, attribute_type = NLATTR.unpack_from(buffer, offset)
        if length_bytes < NLATTR.size or offset + length_bytes > end:
            raise NetlinkError(
                errno.EBADMSG, f"nla_len {length_bytes} at offset {offset}, attributes end at {end}"
            )
        yield (attribute_type & NLA_TYPE_MASK, offset + NLATTR.size, offset + length_bytes)
        offset += nlmsg_align(length_bytes)


def pack_attribute(attribute_type: int, payload: bytes) -> bytes:
    """One attribute, padded to the netlink alignment."""
    length_bytes = NLATTR.size + len(payload)
    padding = nlmsg_align(length_bytes) - length_bytes
    return NLATTR.pack(length_bytes, attribute_type) + payload + bytes(padding)


def pack_nested(attribute_type: int, *attributes: bytes) -> bytes:
    """One nested attribute (NLA_F_NESTED set) holding already packed ``attributes``."""
    return pack_attribute(attribute_type | NLA_F_NESTED, b"".join(attributes))
