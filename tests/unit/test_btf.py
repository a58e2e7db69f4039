"""The BTF reader on a tiny blob built here.

Ground truth: the blob below is laid out by hand after the BTF format
(Documentation/bpf/btf.rst); the struct mimics the shape of Linux's
``struct sock_common`` (members in anonymous unions of anonymous structs) at
its x86-64 offsets, and ``struct sock`` with ``sk_protocol`` as a bitfield
(as before Linux 5.6).  ``skc_net`` is a ``possible_net_t`` as in Linux: a
typedef of an unnamed struct holding ``struct net *net`` (empty without
CONFIG_NET_NS); ``struct net`` embeds ``struct ns_common ns`` at byte 120,
and ``inum`` lies in an unnamed union at byte 16 of ``ns_common``, so
``net.ns.inum`` is at 136.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from netatopd.ebpf.btf import (
    BTF_HEADER,
    Btf,
    BtfError,
    BtfKind,
    Member,
    NetOffsets,
    net_offsets,
    sock_offsets,
    u64_struct_btf,
)


class BlobBuilder:
    """Types are numbered from 1 in the order they are added."""

    def __init__(self) -> None:
        self.types = bytearray()
        self.strings = bytearray(b"\0")
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(
        self,
        kind: BtfKind,
        name: str,
        vlen: int,
        size_or_type: int,
        extra: bytes = b"",
        kind_flag: bool = False,
    ) -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types += struct.pack("=III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def integer(self, name: str, size: int) -> int:
        return self.add(BtfKind.INT, name, 0, size, struct.pack("=I", size * 8))

    def record(
        self,
        kind: BtfKind,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        kind_flag: bool = False,
    ) -> int:
        extra = b"".join(struct.pack("=III", self.name(m), t, off) for m, t, off in members)
        return self.add(kind, name, len(members), size, extra, kind_flag)

    def blob(self, magic: int = 0xEB9F) -> bytes:
        header = BTF_HEADER.pack(
            magic, 1, 0, BTF_HEADER.size, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def build(magic: int = 0xEB9F, net_ns: bool = True, inum_bytes: int = 4) -> bytes:
    b = BlobBuilder()
    u32 = b.integer("unsigned int", 4)  # 1
    u16 = b.integer("unsigned short", 2)  # 2
    u8 = b.integer("unsigned char", 1)  # 3
    u64 = b.integer("unsigned long long", 8)  # 4
    # variable-length kinds before the structs: their ids only come out right if skipped exactly
    b.add(
        BtfKind.ENUM,
        "states",
        2,
        4,
        struct.pack("=Ii", b.name("A"), 1) + struct.pack("=Ii", b.name("B"), 2),
    )
    b.add(BtfKind.FUNC_PROTO, "", 1, u32, struct.pack("=II", 0, u32))
    b.add(BtfKind.DECL_TAG, "tag", 0, u32, struct.pack("=i", -1))
    be32 = b.add(BtfKind.TYPEDEF, "__be32", 0, u32)
    be16 = b.add(BtfKind.TYPEDEF, "__be16", 0, u16)
    const_u16 = b.add(BtfKind.CONST, "", 0, be16)
    array16 = b.add(BtfKind.ARRAY, "", 0, 0, struct.pack("=III", u8, u32, 16))
    in6 = b.record(BtfKind.STRUCT, "in6_addr", 16, [("u6_addr8", array16, 0)])
    addrs = b.record(BtfKind.STRUCT, "", 8, [("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 32)])
    addrpair = b.record(BtfKind.UNION, "", 8, [("skc_addrpair", u64, 0), ("", addrs, 0)])
    ports = b.record(BtfKind.STRUCT, "", 4, [("skc_dport", const_u16, 0), ("skc_num", u16, 16)])
    portpair = b.record(BtfKind.UNION, "", 4, [("skc_portpair", u32, 0), ("", ports, 0)])
    inum_type = u32 if inum_bytes == 4 else u64
    inum_union = b.record(BtfKind.UNION, "", 8, [("inum", inum_type, 0), ("ns_id", u64, 0)])
    ns_common = b.record(
        BtfKind.STRUCT,
        "ns_common",
        24,
        [("stashed", u64, 0), ("ops", u64, 64), ("", inum_union, 128)],
    )
    net = b.record(BtfKind.STRUCT, "net", 400, [("passive", u32, 0), ("ns", ns_common, 120 * 8)])
    net_pointer = b.add(BtfKind.PTR, "", 0, net)
    possible = b.record(
        BtfKind.STRUCT, "", 8 if net_ns else 0, [("net", net_pointer, 0)] if net_ns else []
    )
    possible_net_t = b.add(BtfKind.TYPEDEF, "possible_net_t", 0, possible)
    common = b.record(
        BtfKind.STRUCT,
        "sock_common",
        136,
        [
            ("", addrpair, 0),
            ("skc_hash", u32, 64),
            ("", portpair, 96),
            ("skc_family", u16, 128),
            ("skc_net", possible_net_t, 48 * 8),
            ("skc_v6_daddr", in6, 56 * 8),
            ("skc_v6_rcv_saddr", in6, 72 * 8),
        ],
    )
    # struct sock with kind_flag: member offsets carry bitfield size << 24
    b.record(
        BtfKind.STRUCT,
        "sock",
        600,
        [
            ("__sk_common", common, 0),
            ("sk_type", u32, (16 << 24) | 4240),
            ("sk_protocol", u32, (8 << 24) | 4256),
        ],
        kind_flag=True,
    )
    return b.blob(magic)


def test_types_are_indexed_and_counted() -> None:
    btf = Btf(build())
    assert btf.type_count == 24
    assert (
        btf.find_struct("sock_common") == 23
    )  # ids count every record, variable-length ones included
    assert btf.kind(23) is BtfKind.STRUCT
    assert btf.kind(20) is BtfKind.PTR  # struct net *, before possible_net_t (21, 22)


def test_members_inside_anonymous_unions_of_structs() -> None:
    btf = Btf(build())
    assert btf.member("sock_common", "skc_daddr") == Member("skc_daddr", 0, 4, 0, 0)
    assert btf.member("sock_common", "skc_rcv_saddr") == Member("skc_rcv_saddr", 4, 4, 32, 0)
    assert btf.member("sock_common", "skc_dport") == Member(
        "skc_dport", 12, 2, 96, 0
    )  # through const + typedef
    assert btf.member("sock_common", "skc_num") == Member("skc_num", 14, 2, 112, 0)
    assert btf.member("sock_common", "skc_v6_daddr") == Member("skc_v6_daddr", 56, 16, 448, 0)


def test_bitfield_member() -> None:
    btf = Btf(build())
    assert btf.member("sock", "sk_protocol") == Member("sk_protocol", 532, 4, 4256, 8)


def test_sock_offsets() -> None:
    offsets = sock_offsets(Btf(build()))
    assert offsets == (16, 14, 12, 4, 0, 72, 56, 532, True, -1)  # no skc_cookie here


def test_type_size_of_array_typedef_and_pointer_free_struct() -> None:
    btf = Btf(build())
    assert btf.type_size(btf.find_struct("in6_addr")) == 16
    assert btf.type_size(btf.find_struct("sock")) == 600


def test_errors() -> None:
    with pytest.raises(BtfError, match="magic"):
        Btf(build(magic=0x9FEB))
    with pytest.raises(BtfError, match="shorter"):
        Btf(b"\x9f\xeb")
    with pytest.raises(BtfError, match="no struct"):
        Btf(build()).member("inet_sock", "x")
    with pytest.raises(BtfError, match="no member"):
        Btf(build()).member("sock_common", "skc_bogus")
    blob = build()
    with pytest.raises(BtfError):
        Btf(blob[: BTF_HEADER.size + 30])  # sections run past the end


def test_truncated_type_section_is_refused() -> None:
    blob = bytearray(build())
    # announce a type section 4 bytes shorter than the records in it
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = BTF_HEADER.unpack_from(
        blob
    )
    blob[: BTF_HEADER.size] = BTF_HEADER.pack(
        magic, version, flags, hdr_len, type_off, type_len - 4, str_off, str_len
    )
    with pytest.raises(BtfError):
        Btf(bytes(blob))


def test_from_file_missing(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read"):
        Btf.from_file(tmp_path / "vmlinux")


def test_unknown_kind_is_refused() -> None:
    b = BlobBuilder()
    b.integer("int", 4)
    b.types += struct.pack("=III", 0, 25 << 24, 0)  # kind 25 does not exist
    with pytest.raises(BtfError, match="unknown BTF kind 25"):
        Btf(b.blob())


# --- the socket's network namespace ----------------------------------------------------


def test_locate_follows_embedded_structs_and_typedefs() -> None:
    btf = Btf(build())
    # sock.__sk_common (0) + sock_common.skc_net (48) + possible_net_t.net (0), a pointer
    assert btf.locate("sock", "__sk_common", "skc_net", "net") == (
        Member("net", 48, 8, 384, 0),
        BtfKind.PTR,
    )
    # the typedef is looked through: skc_net itself is the unnamed struct
    assert btf.locate("sock", "__sk_common", "skc_net")[1] is BtfKind.STRUCT
    # net.ns (120) + ns_common's unnamed union (16) + inum (0)
    assert btf.locate("net", "ns", "inum") == (Member("inum", 136, 4, 1088, 0), BtfKind.INT)
    # one name is the same as member()
    assert btf.locate("sock_common", "skc_num")[0] == btf.member("sock_common", "skc_num")


def test_locate_refuses_pointers_missing_members_and_empty_paths() -> None:
    btf = Btf(build())
    with pytest.raises(BtfError, match=r"sock.__sk_common.skc_net.net is a PTR"):
        btf.locate("sock", "__sk_common", "skc_net", "net", "ns")
    with pytest.raises(BtfError, match=r"struct net.ns has no member inode"):
        btf.locate("net", "ns", "inode")
    with pytest.raises(BtfError, match="sock_common.skc_num is a INT"):
        btf.locate("sock_common", "skc_num", "x")
    with pytest.raises(BtfError, match="at least one"):
        btf.locate("net")


def test_net_offsets() -> None:
    assert net_offsets(Btf(build())) == NetOffsets(sk_net=48, net_ns_inum=136)


def test_net_offsets_without_network_namespaces() -> None:
    # CONFIG_NET_NS=n: possible_net_t is an empty struct
    with pytest.raises(BtfError, match="skc_net has no member net"):
        net_offsets(Btf(build(net_ns=False)))


def test_net_offsets_refuse_an_inum_of_another_size() -> None:
    with pytest.raises(BtfError, match="net.ns.inum is 8 bytes"):
        net_offsets(Btf(build(inum_bytes=8)))


def test_tracepoint_arguments_from_the_btf_trace_typedef() -> None:
    """typedef void (*btf_trace_sock_send_length)(void *, struct sock *, int, int):
    the arguments after the private data, spelled for comparison."""
    b = BlobBuilder()
    integer = b.integer("int", 4)  # 1
    sock = b.record(BtfKind.STRUCT, "sock", 8, [("x", integer, 0)])  # 2
    sock_pointer = b.add(BtfKind.PTR, "", 0, sock)  # 3
    void_pointer = b.add(BtfKind.PTR, "", 0, 0)  # 4
    params = [(0, void_pointer), (b.name("sk"), sock_pointer), (0, integer), (0, integer)]
    proto = b.add(
        BtfKind.FUNC_PROTO, "", len(params), 0, b"".join(struct.pack("=II", *p) for p in params)
    )
    b.add(BtfKind.TYPEDEF, "btf_trace_sock_send_length", 0, b.add(BtfKind.PTR, "", 0, proto))
    b.add(BtfKind.TYPEDEF, "btf_trace_odd", 0, integer)  # not a pointer to a function
    btf = Btf(b.blob())
    assert btf.tracepoint_arguments("sock_send_length") == ["struct sock *", "int", "int"]
    assert btf.describe(void_pointer) == "void *"
    with pytest.raises(BtfError, match="btf_trace_sock_recv_length"):
        btf.tracepoint_arguments("sock_recv_length")
    with pytest.raises(BtfError, match="btf_trace_odd"):
        btf.tracepoint_arguments("odd")
    assert btf.find_struct("sock") == sock  # typedefs are indexed by name, structs still found


def test_find_by_name_and_kind() -> None:
    """The tp_btf programs are attached by the id of the typedef btf_trace_<name>."""
    b = BlobBuilder()
    integer = b.integer("int", 4)  # 1
    structure = b.record(BtfKind.STRUCT, "same", 4, [("x", integer, 0)])  # 2
    typedef = b.add(BtfKind.TYPEDEF, "same", 0, integer)  # 3: the same name, another kind
    btf = Btf(b.blob())
    assert btf.find("same", BtfKind.TYPEDEF) == typedef
    assert btf.find("same", BtfKind.STRUCT) == structure
    with pytest.raises(BtfError, match="no union same"):
        btf.find("same", BtfKind.UNION)
    with pytest.raises(BtfError, match="not indexed"):
        btf.find("int", BtfKind.INT)


def test_u64_struct_btf_reads_back_as_built() -> None:
    """The blob made for the per-socket storage map, read by our own reader: int key,
    a struct of u64 members at 0 and 8, and the ids handed to BPF_MAP_CREATE."""
    blob, key_id, value_id = u64_struct_btf("ntp_sock_seen", ["pid_tgid", "generation"])
    btf = Btf(blob)
    assert btf.type_count == 3
    assert (key_id, value_id) == (1, 3)
    assert btf.kind(key_id) == BtfKind.INT and btf.type_size(key_id) == 4
    assert btf.find_struct("ntp_sock_seen") == value_id and btf.type_size(value_id) == 16
    assert btf.member("ntp_sock_seen", "pid_tgid") == Member("pid_tgid", 0, 8, 0, 0)
    assert btf.member("ntp_sock_seen", "generation") == Member("generation", 8, 8, 64, 0)
    # the int is signed, 32 bits (the kernel wants the key of an SK_STORAGE map an int)
    assert struct.unpack_from("=I", blob, BTF_HEADER.size + 12)[0] == (1 << 24) | 32
