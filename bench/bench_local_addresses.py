"""In-process cost of LocalAddresses.is_local_v4 / is_local_v6; not a test.

Builds a LocalAddresses over fake sockets (no root) holding what a container
host's table local looks like: 127.0.0.0/8, 127.0.0.1, N host addresses
with their subnets' broadcast addresses, one AnyIP /24, and N IPv6 /128s.
Times, per call (best of a few rounds): a host address (frozenset hit),
an address inside 127.0.0.0/8 (prefix hit), a multicast address (fixed
prefix), and a forwarded address (every prefix tried, then a miss).

Usage: .venv/bin/python bench/bench_local_addresses.py [N]
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netatopd.netlink.attributes import pack_attribute  # noqa: E402
from netatopd.netlink.rtnetlink import RTMSG, U32, LocalAddresses, RouteAttr  # noqa: E402
from netatopd.netlink.socket import NLMSGHDR, NetlinkSocket  # noqa: E402

CALLS = 200_000
ROUNDS = 5


def route_message(family: int, route_type: int, dst: bytes, dst_len: int, seq: int) -> bytes:
    payload = RTMSG.pack(family, dst_len, 0, 0, 255, 2, 254, route_type, 0)
    payload += pack_attribute(RouteAttr.TABLE, U32.pack(255))
    payload += pack_attribute(RouteAttr.DST, dst)
    payload += pack_attribute(RouteAttr.OIF, U32.pack(2))
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), 24, 0x2, seq, 0) + payload


class FakeKernel:
    def __init__(self, routes: dict[int, list[tuple[int, bytes, int]]]) -> None:
        self.routes = routes
        self.queue: deque[bytes] = deque()

    def sendto(self, data: bytes, address: tuple[int, int], /) -> int:
        seq = NLMSGHDR.unpack_from(data, 0)[3]
        family = data[NLMSGHDR.size]
        body = b"".join(
            route_message(family, kind, dst, length, seq)
            for kind, dst, length in self.routes[family]
        )
        self.queue.append(body + NLMSGHDR.pack(20, 3, 0x2, seq, 0) + bytes(4))
        return len(data)

    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data = self.queue.popleft()
        buffer[: len(data)] = data
        return len(data), (0, 0)

    def close(self) -> None:
        pass


class NoEvents:
    def recvfrom_into(self, buffer: bytearray, nbytes: int, flags: int, /) -> tuple[int, object]:
        raise BlockingIOError(errno.EAGAIN, "empty")

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def build(hosts: int) -> LocalAddresses:
    v4: list[tuple[int, bytes, int]] = [
        (2, bytes([127, 0, 0, 0]), 8),
        (2, bytes([127, 0, 0, 1]), 32),
    ]
    v6: list[tuple[int, bytes, int]] = [(2, bytes(15) + b"\x01", 128)]
    for n in range(hosts):
        v4.append((2, bytes([10, n // 256, n % 256, 1]), 32))
        v4.append((3, bytes([10, n // 256, n % 256, 255]), 32))
        v6.append(
            (2, bytes([0x20, 0x01, 0x0D, 0xB8]) + n.to_bytes(2, "big") + bytes(9) + b"\x01", 128)
        )
    v4.append((2, bytes([198, 51, 100, 0]), 24))
    kernel = FakeKernel({socket.AF_INET: v4, socket.AF_INET6: v6})
    return LocalAddresses(events=NoEvents(), dump=NetlinkSocket(0, sock=kernel))


def best_ns_per_call(function: object, address: bytes) -> float:
    call = function  # bound method
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(CALLS):
            call(address)  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - start) / CALLS)
    return best


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    local = build(hosts)
    print(f"table local: {len(local.routes())} routes ({hosts} host addresses per family)")
    cases = [
        ("v4 host address (set hit)", local.is_local_v4, bytes([10, 0, 5, 1])),
        ("v4 in 127.0.0.0/8 (prefix)", local.is_local_v4, bytes([127, 9, 9, 9])),
        ("v4 multicast (fixed prefix)", local.is_local_v4, bytes([224, 0, 0, 251])),
        ("v4 forwarded (miss)", local.is_local_v4, bytes([192, 0, 2, 77])),
        (
            "v6 host address (set hit)",
            local.is_local_v6,
            bytes([0x20, 1, 0xD, 0xB8, 0, 5]) + bytes(9) + b"\x01",
        ),
        ("v6 forwarded (miss)", local.is_local_v6, bytes([0x20, 1, 0xD, 0xB8, 0xFF]) + bytes(11)),
    ]
    for label, function, address in cases:
        assert isinstance(function(address), bool)
        print(f"{label:32s} {best_ns_per_call(function, address):7.1f} ns/call")


if __name__ == "__main__":
    main()
