"""Golden bytes for rtnetlink route messages and LocalAddresses on fake sockets (no root).

Ground truth: the C layouts of linux/netlink.h and linux/rtnetlink.h on
x86-64, and the messages the kernel sends for table local (as ``ip -d
monitor route`` shows them on Linux 6.18), written out by hand byte by byte.
"""

from __future__ import annotations

import errno
import socket
from collections import deque

import pytest
from golden import golden, v4, v6

from netatopd.netlink.attributes import NLATTR, iter_attributes, pack_attribute
from netatopd.netlink.rtnetlink import (
    IFINFOMSG,
    RTMSG,
    LocalAddresses,
    Route,
    RouteType,
    RtmType,
    pack_rtmsg_dump_request,
    prefix_mask,
    unpack_route,
)
from netatopd.netlink.socket import NLMSGHDR, NetlinkError, NetlinkSocket

# --- golden messages (nlmsghdr + rtmsg + rtattr), seq 0 and pid 0 as notifications ----

# RTM_NEWROUTE: local 192.0.2.1 dev #2 table local proto kernel scope host src 192.0.2.1
NEW_LOCAL_192_0_2_1 = golden(
    """
    3c000000 1800 0000 00000000 00000000
    02 20 00 00 ff 02 fe 02 00000000
    0800 0f00 ff000000
    0800 0100 c0000201
    0800 0700 c0000201
    0800 0400 02000000
    """
)
# RTM_DELROUTE of the same route (nlmsg_type 25)
DEL_LOCAL_192_0_2_1 = NEW_LOCAL_192_0_2_1[:4] + golden("1900") + NEW_LOCAL_192_0_2_1[6:]
# RTM_NEWROUTE: local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
NEW_LOCAL_127_0_0_0_8 = golden(
    """
    3c000000 1800 0000 00000000 00000000
    02 08 00 00 ff 02 fe 02 00000000
    0800 0f00 ff000000
    0800 0100 7f000000
    0800 0700 7f000001
    0800 0400 01000000
    """
)
# RTM_NEWROUTE: local 2001:db8::1 dev #2 table local proto kernel metric 0 pref medium
# (RTA_PREF is a 1-byte attribute padded to 8 bytes: the walk must skip the padding)
NEW_LOCAL_2001_DB8__1 = golden(
    """
    50000000 1800 0000 00000000 00000000
    0a 80 00 00 ff 02 00 02 00000000
    0800 0f00 ff000000
    1400 0100 20010db8 00000000 00000000 00000001
    0800 0600 00000000
    0800 0400 02000000
    0500 1400 00 000000
    """
)
# RTM_NEWROUTE: broadcast 192.0.2.255 dev #2 table local proto kernel scope link src 192.0.2.1
NEW_BROADCAST_192_0_2_255 = golden(
    """
    3c000000 1800 0000 00000000 00000000
    02 20 00 00 ff 02 fd 03 00000000
    0800 0f00 ff000000
    0800 0100 c00002ff
    0800 0700 c0000201
    0800 0400 02000000
    """
)
# RTM_NEWROUTE: 198.51.100.0/24 dev #2 table main proto kernel scope link (not local)
NEW_MAIN_198_51_100_0_24 = golden(
    """
    3c000000 1800 0000 00000000 00000000
    02 18 00 00 fe 02 fd 01 00000000
    0800 0f00 fe000000
    0800 0100 c6336400
    0800 0700 c6336401
    0800 0400 02000000
    """
)
# RTM_NEWLINK: ifindex 2 went down (ifi_flags without IFF_UP, ifi_change = IFF_UP)
NEWLINK_DOWN_2 = golden(
    """
    20000000 1000 0000 00000000 00000000
    00 00 0100 02000000 02100000 01000000
    """
)


def payload_of(message: bytes) -> bytes:
    return message[NLMSGHDR.size :]


def test_struct_sizes_match_c_sizeof() -> None:
    # sizeof(struct rtmsg) = 8 x unsigned char + unsigned int
    assert RTMSG.size == 12
    # sizeof(struct ifinfomsg) = 2 x unsigned char + unsigned short + int + 2 x unsigned
    assert IFINFOMSG.size == 16
    # sizeof(struct nlattr) = sizeof(struct rtattr) = 2 x __u16
    assert NLATTR.size == 4


def test_golden_lengths_agree_with_their_headers() -> None:
    for message in (
        NEW_LOCAL_192_0_2_1,
        NEW_LOCAL_127_0_0_0_8,
        NEW_LOCAL_2001_DB8__1,
        NEW_BROADCAST_192_0_2_255,
        NEW_MAIN_198_51_100_0_24,
        NEWLINK_DOWN_2,
    ):
        assert NLMSGHDR.unpack_from(message, 0)[0] == len(message)


def test_unpack_local_route_192_0_2_1() -> None:
    route = unpack_route(payload_of(NEW_LOCAL_192_0_2_1))
    assert route == Route(
        family=socket.AF_INET,
        route_type=RouteType.LOCAL,
        dst=v4("192.0.2.1"),
        dst_len=32,
        tos=0,
        priority=0,
        output_interface=2,
        table=255,
    )


def test_unpack_local_prefix_127_0_0_0_8() -> None:
    route = unpack_route(payload_of(NEW_LOCAL_127_0_0_0_8))
    assert (route.family, route.route_type, route.dst, route.dst_len) == (
        socket.AF_INET,
        RouteType.LOCAL,
        v4("127.0.0.0"),
        8,
    )
    assert (route.output_interface, route.table) == (1, 255)


def test_unpack_local_route_2001_db8__1() -> None:
    route = unpack_route(payload_of(NEW_LOCAL_2001_DB8__1))
    assert route == Route(
        family=socket.AF_INET6,
        route_type=RouteType.LOCAL,
        dst=v6("2001:db8::1"),
        dst_len=128,
        tos=0,
        priority=0,
        output_interface=2,
        table=255,
    )


def test_unpack_delroute_is_the_same_route() -> None:
    assert NLMSGHDR.unpack_from(DEL_LOCAL_192_0_2_1, 0)[1] == RtmType.DELROUTE
    assert unpack_route(payload_of(DEL_LOCAL_192_0_2_1)) == unpack_route(
        payload_of(NEW_LOCAL_192_0_2_1)
    )


def test_rta_table_overrides_rtm_table() -> None:
    payload = bytearray(payload_of(NEW_MAIN_198_51_100_0_24))
    payload[4] = 252  # RT_TABLE_COMPAT: the real id is in RTA_TABLE (254 here)
    assert unpack_route(bytes(payload)).table == 254


def test_unpack_rejects_short_and_bad_lengths() -> None:
    with pytest.raises(NetlinkError) as short:
        unpack_route(b"\x02" * 11)
    assert short.value.errno == errno.EBADMSG
    wrong_dst = RTMSG.pack(socket.AF_INET, 32, 0, 0, 255, 2, 254, 2, 0) + pack_attribute(
        1, v6("2001:db8::1")
    )
    with pytest.raises(NetlinkError):
        unpack_route(wrong_dst)
    too_long_prefix = RTMSG.pack(socket.AF_INET, 33, 0, 0, 255, 2, 254, 2, 0)
    with pytest.raises(NetlinkError):
        unpack_route(too_long_prefix)
    lying_attribute = RTMSG.pack(socket.AF_INET, 32, 0, 0, 255, 2, 254, 2, 0) + golden(
        "0c00 0100 c0000201"
    )
    with pytest.raises(NetlinkError):
        unpack_route(lying_attribute)


def test_dump_request_golden() -> None:
    assert pack_rtmsg_dump_request(socket.AF_INET) == golden(
        "02 00 00 00 ff 00 00 00 00000000  0800 0f00 ff000000"
    )
    assert pack_rtmsg_dump_request(socket.AF_INET6)[0] == socket.AF_INET6


def test_iter_attributes_skips_padding() -> None:
    payload = payload_of(NEW_LOCAL_2001_DB8__1)
    types = [t for t, _s, _e in iter_attributes(payload, RTMSG.size, len(payload))]
    assert types == [15, 1, 6, 4, 20]


def test_prefix_mask() -> None:
    assert prefix_mask(0, 32) == 0
    assert prefix_mask(8, 32) == 0xFF000000
    assert prefix_mask(4, 32) == 0xF0000000
    assert prefix_mask(32, 32) == 0xFFFFFFFF
    assert prefix_mask(8, 128) == 0xFF << 120


# --- LocalAddresses over fake sockets ------------------------------------------------


def as_reply(message: bytes, seq: int, multi: bool = True) -> bytes:
    """``message`` re-headed as part of the reply to request ``seq``."""
    length, msg_type, flags, _seq, _pid = NLMSGHDR.unpack_from(message, 0)
    if multi:
        flags |= 0x2
    return NLMSGHDR.pack(length, msg_type, flags, seq, 0) + message[NLMSGHDR.size :]


def done(seq: int) -> bytes:
    return NLMSGHDR.pack(20, 3, 0x2, seq, 0) + bytes(4)


class FakeDumpKernel:
    """Answers RTM_GETROUTE dumps from ``tables[family]`` (a list of messages)."""

    def __init__(self, tables: dict[int, list[bytes]]) -> None:
        self.tables = tables
        self.queue: deque[bytes] = deque()
        self.requests: list[bytes] = []
        self.closed = False

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int:
        self.requests.append(bytes(data))
        _length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, 0)
        assert msg_type == RtmType.GETROUTE
        family = data[NLMSGHDR.size]
        body = b"".join(as_reply(m, seq) for m in self.tables.get(family, []))
        self.queue.append(body + done(seq))
        return len(data)

    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data = self.queue.popleft()
        buffer[: len(data)] = data
        return len(data), (0, 0)

    def close(self) -> None:
        self.closed = True


class FakeEvents:
    """The notification socket: datagrams (or errnos to raise) in order."""

    def __init__(self) -> None:
        self.queue: deque[bytes | int] = deque()
        self.closed = False

    def push(self, *messages: bytes) -> None:
        self.queue.append(b"".join(messages))

    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.queue.popleft()
        if isinstance(item, int):
            raise OSError(item, "fake")
        buffer[: len(item)] = item
        return len(item), (0, 0)

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


def make(
    v4_table: list[bytes], v6_table: list[bytes] | None = None
) -> tuple[LocalAddresses, FakeEvents, FakeDumpKernel]:
    kernel = FakeDumpKernel({socket.AF_INET: v4_table, socket.AF_INET6: v6_table or []})
    events = FakeEvents()
    local = LocalAddresses(events=events, dump=NetlinkSocket(0, sock=kernel))
    return local, events, kernel


def test_dump_answers_hosts_prefixes_and_ignores_other_tables() -> None:
    local, _events, kernel = make(
        [
            NEW_LOCAL_127_0_0_0_8,
            NEW_LOCAL_192_0_2_1,
            NEW_BROADCAST_192_0_2_255,
            NEW_MAIN_198_51_100_0_24,
        ],
        [NEW_LOCAL_2001_DB8__1],
    )
    assert len(kernel.requests) == 2  # one dump per family
    assert local.is_local_v4(v4("192.0.2.1"))
    assert local.is_local_v4(v4("192.0.2.255"))  # broadcast of a local subnet: received
    assert local.is_local_v4(v4("127.0.0.1"))
    assert local.is_local_v4(v4("127.45.6.7"))  # the whole 127.0.0.0/8 prefix
    assert not local.is_local_v4(v4("192.0.2.2"))
    assert not local.is_local_v4(v4("198.51.100.1"))  # a main-table route is not local
    assert not local.is_local_v4(v4("128.0.0.1"))
    assert local.is_local_v6(v6("2001:db8::1"))
    assert not local.is_local_v6(v6("2001:db8::2"))
    assert not local.is_local_v6(v6("::1"))  # not in this fake table
    assert local.networks() == [
        (socket.AF_INET, v4("127.0.0.0"), 8),
        (socket.AF_INET, v4("192.0.2.1"), 32),
        (socket.AF_INET, v4("192.0.2.255"), 32),
        (socket.AF_INET6, v6("2001:db8::1"), 128),
    ]


def test_multicast_and_limited_broadcast_are_always_received() -> None:
    local, _events, _kernel = make([])
    assert local.is_local_v4(v4("224.0.0.251"))
    assert local.is_local_v4(v4("239.255.255.250"))
    assert local.is_local_v4(v4("255.255.255.255"))
    assert not local.is_local_v4(v4("240.0.0.1"))
    assert local.is_local_v6(v6("ff02::fb"))
    assert not local.is_local_v6(v6("fe80::1"))
    assert local.is_local(v4("224.0.0.1")) and not local.is_local(v6("2001:db8::9"))
    with pytest.raises(ValueError):
        local.is_local(b"\x00" * 5)


def test_notifications_add_and_remove() -> None:
    local, events, _kernel = make([NEW_LOCAL_127_0_0_0_8])
    generation = local.generation
    assert not local.is_local_v4(v4("192.0.2.1"))
    events.push(NEW_LOCAL_192_0_2_1, NEW_LOCAL_2001_DB8__1)  # two messages, one datagram
    assert local.process_events() == 2
    assert local.is_local_v4(v4("192.0.2.1"))
    assert local.is_local_v6(v6("2001:db8::1"))
    assert local.generation == generation + 2
    events.push(NEW_LOCAL_192_0_2_1)  # the same route again: no change
    assert local.process_events() == 0
    events.push(DEL_LOCAL_192_0_2_1)
    assert local.process_events() == 1
    assert not local.is_local_v4(v4("192.0.2.1"))
    assert local.is_local_v4(v4("127.0.0.1"))
    events.push(NEW_MAIN_198_51_100_0_24)  # other tables are not followed
    assert local.process_events() == 0
    assert local.events_applied == 3


def test_one_address_on_two_interfaces_stays_local_until_both_go() -> None:
    on_lo = bytearray(NEW_LOCAL_192_0_2_1)
    on_lo[-4:] = (1).to_bytes(4, "little")  # RTA_OIF 1: the same address on lo
    local, events, _kernel = make([NEW_LOCAL_192_0_2_1, bytes(on_lo)])
    del_on_lo = DEL_LOCAL_192_0_2_1[:-4] + (1).to_bytes(4, "little")
    events.push(del_on_lo)
    assert local.process_events() == 1
    assert local.is_local_v4(v4("192.0.2.1"))
    events.push(DEL_LOCAL_192_0_2_1)
    assert local.process_events() == 1
    assert not local.is_local_v4(v4("192.0.2.1"))


def test_enobufs_drops_the_queue_and_dumps_again() -> None:
    local, events, kernel = make([NEW_LOCAL_127_0_0_0_8])
    kernel.tables[socket.AF_INET] = [NEW_LOCAL_127_0_0_0_8, NEW_LOCAL_192_0_2_1]
    events.queue.append(errno.ENOBUFS)
    events.push(DEL_LOCAL_192_0_2_1)  # queued before the dump: may follow a gap, dropped
    requests_before = len(kernel.requests)
    assert local.process_events() == 1
    assert local.resyncs == 1
    assert len(kernel.requests) == requests_before + 2
    assert local.is_local_v4(v4("192.0.2.1"))  # the dump's truth, not the stale DELROUTE


def test_link_going_down_makes_one_dump() -> None:
    local, events, kernel = make([NEW_LOCAL_192_0_2_1, NEW_BROADCAST_192_0_2_255])
    # The kernel dropped the broadcast route without a DELROUTE (see the module docstring).
    kernel.tables[socket.AF_INET] = [NEW_LOCAL_192_0_2_1]
    requests_before = len(kernel.requests)
    events.push(NEWLINK_DOWN_2, NEWLINK_DOWN_2)
    assert local.process_events() == 1
    assert local.link_refreshes == 1
    assert len(kernel.requests) == requests_before + 2  # one dump per family, not two
    assert not local.is_local_v4(v4("192.0.2.255"))
    assert local.is_local_v4(v4("192.0.2.1"))


def test_link_change_without_iff_up_makes_no_dump() -> None:
    local, events, kernel = make([NEW_LOCAL_192_0_2_1])
    mtu_change = NEWLINK_DOWN_2[:-4] + bytes(4)  # ifi_change 0
    requests_before = len(kernel.requests)
    events.push(mtu_change)
    assert local.process_events() == 0
    assert len(kernel.requests) == requests_before


def test_malformed_notification_counts_and_dumps_again() -> None:
    local, events, kernel = make([NEW_LOCAL_192_0_2_1])
    broken = NLMSGHDR.pack(16 + 4, RtmType.NEWROUTE, 0, 0, 0) + bytes(4)  # rtmsg cut short
    events.push(broken)
    local.process_events()
    assert local.bad_messages == 1
    assert local.resyncs == 1
    assert local.is_local_v4(v4("192.0.2.1"))


def test_notifications_from_user_space_are_skipped() -> None:
    local, events, _kernel = make([])

    def from_port_4242(buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if not events.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data = events.queue.popleft()
        assert isinstance(data, bytes)
        buffer[: len(data)] = data
        return len(data), (4242, 0)

    events.recvfrom_into = from_port_4242  # type: ignore[method-assign]
    events.push(NEW_LOCAL_192_0_2_1)
    assert local.process_events() == 0
    assert local.foreign_datagrams == 1
    assert not local.is_local_v4(v4("192.0.2.1"))


def test_close_closes_both_sockets() -> None:
    local, events, kernel = make([])
    assert local.fileno() == 99
    local.close()
    assert events.closed and kernel.closed
    with pytest.raises(NetlinkError) as closed:
        local.process_events()
    assert closed.value.errno == errno.EBADF
