"""Golden bytes for the netlink unit tests: hex as the reader writes it, addresses as text.

Called by test_netlink, test_rtnetlink and test_conntrack.
"""

from __future__ import annotations

import socket


def golden(text: str) -> bytes:
    """Bytes from hex written with spaces and newlines for the reader."""
    return bytes.fromhex("".join(text.split()))


def v4(text: str) -> bytes:
    return socket.inet_aton(text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)
