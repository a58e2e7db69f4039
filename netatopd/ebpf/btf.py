"""A reader of the kernel's BTF, enough to find struct member offsets.

Part of the optional in-kernel ownership helper.  Owns a parsed copy of one BTF
blob (normally ``/sys/kernel/btf/vmlinux``): the position of every type
record and an index of struct/union/typedef names; members are decoded on
demand.  Also makes the small BTF blob a map needs for its key and value
(``u64_struct_btf``).  Callers: ``helper.py`` (``sock_offsets`` and
``net_offsets`` at load time, ``find`` for the tp_btf programs' attach ids,
``u64_struct_btf`` for the per-socket storage), ``execids.py`` and the tests.

The format (Documentation/bpf/btf.rst): a header, a type section of
variable-length records numbered from 1 in file order, and a string section
of NUL-terminated names referred to by byte offset.  Anonymous struct and
union members (name offset 0) are searched through, so members declared in
an unnamed union, such as ``skc_daddr`` in ``struct sock_common``, resolve
with their offset from the start of the outer struct; ``locate`` follows a
path of members through embedded structs (``sock.__sk_common.skc_net.net``).
"""

from __future__ import annotations

import logging
import struct
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

VMLINUX_BTF_PATH = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
POINTER_BYTES = 8  # x86-64

# struct btf_header (linux/btf.h), 24 bytes, native byte order:
#   __u16 magic; __u8 version; __u8 flags; __u32 hdr_len;
#   __u32 type_off; __u32 type_len; __u32 str_off; __u32 str_len;
#   (offsets relative to the end of the header)
BTF_HEADER = struct.Struct("=HBBIIIII")

# struct btf_type (linux/btf.h), 12 bytes:
#   __u32 name_off; __u32 info (vlen bits 0-15, kind bits 24-28, kind_flag bit 31);
#   __u32 size or type (a union)
BTF_TYPE = struct.Struct("=III")

# struct btf_member (linux/btf.h), 12 bytes, vlen of them after a STRUCT/UNION:
#   __u32 name_off; __u32 type; __u32 offset (bits; with kind_flag:
#   bitfield size << 24 | bit offset)
BTF_MEMBER = struct.Struct("=III")

# struct btf_param (linux/btf.h), 8 bytes, vlen of them after a FUNC_PROTO:
#   __u32 name_off; __u32 type
BTF_PARAM = struct.Struct("=II")

# struct btf_array (linux/btf.h), 12 bytes after an ARRAY:
#   __u32 type; __u32 index_type; __u32 nelems
BTF_ARRAY = struct.Struct("=III")


class BtfKind(IntEnum):
    """BTF_KIND_* (linux/btf.h)."""

    UNKNOWN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes that follow struct btf_type: a fixed amount, or this many per vlen entry.
_EXTRA_FIXED = {BtfKind.INT: 4, BtfKind.ARRAY: 12, BtfKind.VAR: 4, BtfKind.DECL_TAG: 4}
_EXTRA_PER_VLEN = {
    BtfKind.STRUCT: 12,
    BtfKind.UNION: 12,
    BtfKind.ENUM: 8,
    BtfKind.FUNC_PROTO: 8,
    BtfKind.DATASEC: 12,
    BtfKind.ENUM64: 12,
}
_MODIFIERS = frozenset(
    {BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG}
)
_SIZED = frozenset(
    {BtfKind.INT, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64, BtfKind.FLOAT}
)
_KNOWN_KINDS = frozenset(int(kind) for kind in BtfKind)
_NAMED_KINDS = (BtfKind.STRUCT, BtfKind.UNION, BtfKind.TYPEDEF)  # indexed by name
_MAX_CHAIN = 64  # modifier chains longer than this mean a corrupt blob


class BtfError(Exception):
    """The BTF cannot be read, or lacks the type or member asked for."""


class Member(NamedTuple):
    """Where a member lies from the start of the outermost struct."""

    name: str
    offset_bytes: int  # byte holding the first bit
    size_bytes: int  # size of the member's type (of the storage unit for a bitfield)
    bit_offset: int  # offset in bits from the start of the outer struct
    bit_size: int  # 0 unless the member is a bitfield


class Btf:
    """The types of one BTF blob; type id 0 is ``void``."""

    def __init__(self, data: bytes) -> None:
        if len(data) < BTF_HEADER.size:
            raise BtfError("BTF blob shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = (
            BTF_HEADER.unpack_from(data, 0)
        )
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (byte order or not BTF)")
        if version != 1:
            raise BtfError(f"BTF version {version} not understood")
        type_start = hdr_len + type_off
        string_start = hdr_len + str_off
        if type_start + type_len > len(data) or string_start + str_len > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._data = data
        self._strings = data[string_start : string_start + str_len]
        # _offsets[type_id] = position of its struct btf_type in data (id 0 is void).
        self._offsets: list[int] = [0]
        self._by_name: dict[str, list[int]] = {}
        self._index(type_start, type_start + type_len)

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF_PATH) -> Btf:
        """Parse a BTF file; BtfError when it cannot be read."""
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BtfError(f"cannot read {path}: {err.strerror}") from err
        return cls(data)

    def _index(self, start: int, end: int) -> None:
        data = self._data
        unpack = BTF_TYPE.unpack_from
        offsets = self._offsets
        by_name = self._by_name
        named_kinds = _NAMED_KINDS
        position = start
        while position < end:
            if position + BTF_TYPE.size > end:
                raise BtfError(f"truncated type record at byte {position}")
            name_off, info, _size = unpack(data, position)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offsets.append(position)
            if kind in named_kinds and name_off:
                by_name.setdefault(self.string(name_off), []).append(len(offsets) - 1)
            extra = _EXTRA_FIXED.get(kind)
            if extra is None:
                per = _EXTRA_PER_VLEN.get(kind)
                if per is not None:
                    extra = per * vlen
                elif kind in _KNOWN_KINDS:
                    extra = 0
                else:
                    raise BtfError(f"unknown BTF kind {kind} at byte {position}")
            position += BTF_TYPE.size + extra
        if position != end:
            raise BtfError("type section does not end on a record boundary")

    @property
    def type_count(self) -> int:
        """Number of types, void excluded."""
        return len(self._offsets) - 1

    def string(self, offset: int) -> str:
        """The NUL-terminated name at ``offset`` of the string section."""
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"string offset {offset} not terminated")
        return self._strings[offset:end].decode("ascii", "replace")

    def _record(self, type_id: int) -> tuple[int, BtfKind, int, bool, int]:
        """(position, kind, vlen, kind_flag, size_or_type) of one type."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"type id {type_id} out of range")
        position = self._offsets[type_id]
        _name_off, info, size_or_type = BTF_TYPE.unpack_from(self._data, position)
        return position, BtfKind((info >> 24) & 0x1F), info & 0xFFFF, bool(info >> 31), size_or_type

    def kind(self, type_id: int) -> BtfKind:
        """The kind of one type."""
        return self._record(type_id)[1]

    def strip(self, type_id: int) -> int:
        """The type under typedefs and qualifiers (const, volatile, ...)."""
        for _ in range(_MAX_CHAIN):
            _position, kind, _vlen, _flag, size_or_type = self._record(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = size_or_type
        raise BtfError(f"modifier chain too long from type {type_id}")

    def type_size(self, type_id: int) -> int:
        """sizeof the type, in bytes."""
        type_id = self.strip(type_id)
        position, kind, _vlen, _flag, size_or_type = self._record(type_id)
        if kind in _SIZED:
            return size_or_type
        if kind == BtfKind.PTR:
            return POINTER_BYTES
        if kind == BtfKind.ARRAY:
            element, _index_type, count = BTF_ARRAY.unpack_from(
                self._data, position + BTF_TYPE.size
            )
            return self.type_size(element) * count
        raise BtfError(f"type {type_id} of kind {kind.name} has no size")

    def find(self, name: str, kind: BtfKind) -> int:
        """The id of the first type called ``name`` of ``kind`` (STRUCT, UNION or
        TYPEDEF: the kinds indexed by name), e.g. the typedef
        ``btf_trace_sock_send_length`` a tp_btf program is attached by."""
        if kind not in _NAMED_KINDS:
            raise BtfError(f"types of kind {kind.name} are not indexed by name")
        for type_id in self._by_name.get(name, ()):
            if self.kind(type_id) == kind:
                return type_id
        raise BtfError(f"no {kind.name.lower()} {name} in the BTF")

    def find_struct(self, name: str) -> int:
        """The id of the (first) complete struct or union called ``name``."""
        for type_id in self._by_name.get(name, ()):
            if self.kind(type_id) in (BtfKind.STRUCT, BtfKind.UNION):
                return type_id
        raise BtfError(f"no struct {name} in the BTF")

    def describe(self, type_id: int) -> str:
        """A short C spelling of a type, typedefs and qualifiers looked through:
        ``int``, ``struct sock *``, ``void *``."""
        if type_id == 0:
            return "void"
        type_id = self.strip(type_id)
        position, kind, _vlen, _flag, size_or_type = self._record(type_id)
        name_off = BTF_TYPE.unpack_from(self._data, position)[0]
        name = self.string(name_off) if name_off else ""
        if kind == BtfKind.PTR:
            return f"{self.describe(size_or_type)} *"
        if kind in (BtfKind.STRUCT, BtfKind.UNION):
            return f"{kind.name.lower()} {name}".strip()
        return name or kind.name.lower()

    def tracepoint_arguments(self, tracepoint: str) -> list[str]:
        """The C types of a raw tracepoint's arguments (``describe``), from the kernel's
        ``btf_trace_<tracepoint>`` typedef: a pointer to a function whose first
        parameter, the tracepoint's private data, is left out."""
        for type_id in self._by_name.get(f"btf_trace_{tracepoint}", ()):
            if self.kind(type_id) != BtfKind.TYPEDEF:
                continue
            target = self.strip(type_id)
            position, kind, _vlen, _flag, pointee = self._record(target)
            if kind != BtfKind.PTR:
                break
            position, kind, vlen, _flag, _return = self._record(pointee)
            if kind != BtfKind.FUNC_PROTO or vlen < 1:
                break
            base = position + BTF_TYPE.size
            params = [
                BTF_PARAM.unpack_from(self._data, base + index * BTF_PARAM.size)[1]
                for index in range(vlen)
            ]
            return [self.describe(param) for param in params[1:]]
        raise BtfError(f"no raw tracepoint prototype btf_trace_{tracepoint} in the BTF")

    def _members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """(name, member type, bit offset, bitfield bits) of a struct or union."""
        position, kind, vlen, kind_flag, _size = self._record(type_id)
        if kind not in (BtfKind.STRUCT, BtfKind.UNION):
            raise BtfError(f"type {type_id} is a {kind.name}, not a struct or union")
        members = []
        base = position + BTF_TYPE.size
        for index in range(vlen):
            name_off, member_type, offset = BTF_MEMBER.unpack_from(self._data, base + index * 12)
            if kind_flag:
                bit_size, bit_offset = offset >> 24, offset & 0xFFFFFF
            else:
                bit_size, bit_offset = 0, offset
            members.append(
                (self.string(name_off) if name_off else "", member_type, bit_offset, bit_size)
            )
        return members

    def _search(self, type_id: int, name: str, base_bits: int) -> tuple[Member, int] | None:
        """The member called ``name`` and its type id, anonymous members searched."""
        anonymous = []
        for member_name, member_type, bit_offset, bit_size in self._members(type_id):
            if member_name == name:
                bits = base_bits + bit_offset
                found = Member(name, bits // 8, self.type_size(member_type), bits, bit_size)
                return found, member_type
            if not member_name:
                inner = self.strip(member_type)
                if self.kind(inner) in (BtfKind.STRUCT, BtfKind.UNION):
                    anonymous.append((inner, base_bits + bit_offset))
        for inner, bits in anonymous:
            nested = self._search(inner, name, bits)
            if nested is not None:
                return nested
        return None

    def member(self, struct_name: str, member_name: str) -> Member:
        """Offset and size of ``struct_name.member_name``, anonymous members searched."""
        return self.locate(struct_name, member_name)[0]

    def locate(self, struct_name: str, *path: str) -> tuple[Member, BtfKind]:
        """``struct_name.a.b...`` through embedded structs: the last member and its kind.

        Each name but the last must be a struct or union embedded by value
        (typedefs and qualifiers are looked through, as for ``possible_net_t``,
        a typedef of an unnamed struct); a pointer is not followed, since the
        program has to read it first.  The offset is from the start of
        ``struct_name``; the kind is that of the last member's type with
        typedefs and qualifiers removed (``PTR`` for a pointer).
        """
        if not path:
            raise BtfError("locate() needs at least one member name")
        type_id = self.find_struct(struct_name)
        where = struct_name
        base_bits = 0
        for name in path[:-1]:
            member, kind, inner = self._step(type_id, where, name, base_bits)
            where = f"{where}.{name}"
            if kind not in (BtfKind.STRUCT, BtfKind.UNION) or member.bit_size:
                raise BtfError(f"{where} is a {kind.name}, not an embedded struct or union")
            type_id, base_bits = inner, member.bit_offset
        member, kind, _inner = self._step(type_id, where, path[-1], base_bits)
        return member, kind

    def _step(
        self, type_id: int, where: str, name: str, base_bits: int
    ) -> tuple[Member, BtfKind, int]:
        """One member of a path: (member, kind of its stripped type, stripped type id)."""
        found = self._search(type_id, name, base_bits)
        if found is None:
            raise BtfError(f"struct {where} has no member {name}")
        member, member_type = found
        inner = self.strip(member_type) if member_type else 0
        kind = self.kind(inner) if inner else BtfKind.UNKNOWN  # type id 0 is void
        return member, kind, inner


class SockOffsets(NamedTuple):
    """Byte offsets into ``struct sock`` of what the programs read (sock_common first)."""

    skc_family: int  # unsigned short
    skc_num: int  # __u16, local port, host order
    skc_dport: int  # __be16, remote port, network order
    skc_rcv_saddr: int  # __be32, local IPv4 address
    skc_daddr: int  # __be32, remote IPv4 address
    skc_v6_rcv_saddr: int  # struct in6_addr, local IPv6 address
    skc_v6_daddr: int  # struct in6_addr, remote IPv6 address
    sk_protocol: int  # byte holding sk_protocol (informative: the tracepoints carry it)
    sk_protocol_is_bitfield: bool  # a bitfield before Linux 5.6
    skc_cookie: int = -1  # atomic64_t, the socket cookie (-1: unknown, records carry 0)


# The sizes the programs' loads assume, checked against the BTF.
_EXPECTED_BYTES = {
    "skc_family": 2,
    "skc_num": 2,
    "skc_dport": 2,
    "skc_rcv_saddr": 4,
    "skc_daddr": 4,
    "skc_v6_rcv_saddr": 16,
    "skc_v6_daddr": 16,
}


def sock_offsets(btf: Btf) -> SockOffsets:
    """Resolve the members of struct sock_common / struct sock the programs need.

    ``struct sock`` begins with ``struct sock_common __sk_common``; its offset
    is added so every result is an offset into ``struct sock``.
    """
    common = btf.member("sock", "__sk_common").offset_bytes
    found: dict[str, int] = {}
    for name, size in _EXPECTED_BYTES.items():
        member = btf.member("sock_common", name)
        if member.size_bytes != size or member.bit_size:
            raise BtfError(f"sock_common.{name} is {member.size_bytes} bytes, expected {size}")
        found[name] = common + member.offset_bytes
    protocol = btf.member("sock", "sk_protocol")
    try:
        cookie = btf.member("sock_common", "skc_cookie")
        skc_cookie = common + cookie.offset_bytes if cookie.size_bytes == 8 else -1
    except BtfError:
        skc_cookie = -1  # a kernel without socket cookies (before Linux 4.12)
    return SockOffsets(
        skc_family=found["skc_family"],
        skc_num=found["skc_num"],
        skc_dport=found["skc_dport"],
        skc_rcv_saddr=found["skc_rcv_saddr"],
        skc_daddr=found["skc_daddr"],
        skc_v6_rcv_saddr=found["skc_v6_rcv_saddr"],
        skc_v6_daddr=found["skc_v6_daddr"],
        sk_protocol=protocol.offset_bytes,
        sk_protocol_is_bitfield=protocol.bit_size != 0,
        skc_cookie=skc_cookie,
    )


class NetOffsets(NamedTuple):
    """Where the programs find a socket's network namespace inode (two reads)."""

    sk_net: int  # offset in struct sock of __sk_common.skc_net.net (struct net *)
    net_ns_inum: int  # offset in struct net of ns.inum (unsigned int, the nsfs inode)


def net_offsets(btf: Btf) -> NetOffsets:
    """Resolve ``sock->__sk_common.skc_net.net`` and ``net->ns.inum``.

    ``skc_net`` is a ``possible_net_t``: a typedef of an unnamed struct that
    holds ``struct net *net`` when the kernel has network namespaces
    (CONFIG_NET_NS) and nothing otherwise; without it there is no member
    ``net`` and this raises BtfError.
    """
    sk_net, kind = btf.locate("sock", "__sk_common", "skc_net", "net")
    if kind != BtfKind.PTR or sk_net.size_bytes != POINTER_BYTES:
        raise BtfError(f"sock_common.skc_net.net is a {kind.name}, expected a pointer")
    inum, kind = btf.locate("net", "ns", "inum")
    if kind not in (BtfKind.INT, BtfKind.ENUM) or inum.size_bytes != 4 or inum.bit_size:
        raise BtfError(
            f"net.ns.inum is {inum.size_bytes} bytes of {kind.name}, expected a 4-byte integer"
        )
    return NetOffsets(sk_net=sk_net.offset_bytes, net_ns_inum=inum.offset_bytes)


# --- BTF made here, for a map that needs it --------------------------------------------

# struct btf_type's info word: kind in bits 24-28, vlen in bits 0-15.
_INFO_KIND_SHIFT = 24
# An INT's extra word: encoding bits 24-27 (1 = signed), bits in 0-7.
_INT_SIGNED = 1 << 24


def u64_struct_btf(struct_name: str, members: list[str]) -> tuple[bytes, int, int]:
    """A BTF blob of three types: ``int`` (id 1, a map key), ``unsigned long long``
    (id 2) and ``struct struct_name`` of the named u64 members in order (id 3, a map
    value); returns (blob, key type id, value type id) for BPF_BTF_LOAD and
    BPF_MAP_CREATE (an SK_STORAGE map must describe its key and value)."""
    names = ["int", "unsigned long long", struct_name, *members]
    strings = b"\0" + b"".join(name.encode() + b"\0" for name in names)
    offset = {name: strings.index(b"\0" + name.encode() + b"\0") + 1 for name in names}
    types = b"".join(
        [
            BTF_TYPE.pack(offset["int"], BtfKind.INT << _INFO_KIND_SHIFT, 4),
            struct.pack("=I", _INT_SIGNED | 32),
            BTF_TYPE.pack(offset["unsigned long long"], BtfKind.INT << _INFO_KIND_SHIFT, 8),
            struct.pack("=I", 64),
            BTF_TYPE.pack(
                offset[struct_name],
                BtfKind.STRUCT << _INFO_KIND_SHIFT | len(members),
                8 * len(members),
            ),
            *(
                BTF_MEMBER.pack(offset[member], 2, index * 64)
                for index, member in enumerate(members)
            ),
        ]
    )
    header = BTF_HEADER.pack(
        BTF_MAGIC, 1, 0, BTF_HEADER.size, 0, len(types), len(types), len(strings)
    )
    return header + types + strings, 1, 3
