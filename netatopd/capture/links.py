"""Interface facts the parser needs: link header length and MTU per ifindex.

Owns a cache ifindex -> (link header bytes,
MTU bytes) filled on first use from the kernel with ioctls (SIOCGIFNAME,
SIOCGIFMTU, SIOCGIFHWADDR) on one datagram socket.  That socket is opened when
the table is made, so every lookup answers for the network namespace the
table was made in, whichever thread or namespace asks later.
Callers: the daemon (daemon.engine makes one table, daemon.loop clears it
when links change), counting.py and parse.py (read it as a Mapping, per distinct
interface of a batch or per packet).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import struct
import time

from ..wire import ARPHRD_ETHER, ARPHRD_LOOPBACK

log = logging.getLogger(__name__)

SIOCGIFNAME = 0x8910
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927

ETHERNET_HEADER_BYTES = 14  # what the kernel module adds for ethernet and loopback

VANISHED_LINK = (0, 65536)  # (hhl, mtu) for an ifindex that no longer exists
VANISHED_RETRY_S = 1.0  # ask the kernel again about a vanished ifindex after this long

# struct ifreq (linux/if.h), 40 bytes on x86-64:
#   char ifr_name[16];  then a 24-byte union, of which we use
#   int ifr_ifindex / int ifr_mtu         (SIOCGIFNAME, SIOCGIFMTU)
#   struct sockaddr ifr_hwaddr:           (SIOCGIFHWADDR)
#       unsigned short sa_family (= ARPHRD_*);  char sa_data[14]
IFREQ = struct.Struct("=16s24s")
IFREQ_INT = struct.Struct("=16si20x")  # ifr_name, ifr_ifindex or ifr_mtu
IFREQ_HWADDR = struct.Struct("=16sH22x")  # ifr_name, ifr_hwaddr.sa_family


class LinkTable(dict[int, tuple[int, int]]):
    """ifindex -> (link_header_bytes, mtu_bytes), looked up in the kernel on a miss."""

    def __init__(self) -> None:
        super().__init__()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._vanished_at: dict[int, float] = {}

    def __missing__(self, ifindex: int) -> tuple[int, int]:
        asked = self._vanished_at.get(ifindex)
        now = time.monotonic()
        if asked is not None and now - asked < VANISHED_RETRY_S:
            return VANISHED_LINK
        facts = self.lookup(ifindex)
        if facts is None:
            self._vanished_at[ifindex] = now
            return VANISHED_LINK
        self._vanished_at.pop(ifindex, None)
        self[ifindex] = facts
        return facts

    def lookup(self, ifindex: int) -> tuple[int, int] | None:
        """(hhl, mtu) for ifindex from the kernel, or None when there is no such link."""
        fd = self._socket.fileno()
        try:
            answer = fcntl.ioctl(fd, SIOCGIFNAME, IFREQ_INT.pack(b"", ifindex))
            name = IFREQ_INT.unpack(answer)[0]
            mtu = IFREQ_INT.unpack(fcntl.ioctl(fd, SIOCGIFMTU, IFREQ_INT.pack(name, 0)))[1]
            arphrd = IFREQ_HWADDR.unpack(
                fcntl.ioctl(fd, SIOCGIFHWADDR, IFREQ_HWADDR.pack(name, 0))
            )[1]
        except OSError as err:
            if err.errno in (errno.ENODEV, errno.ENXIO):
                log.debug("ifindex %d vanished", ifindex)
                return None
            log.warning(
                "cannot look up ifindex %d: [Errno %s] %s", ifindex, err.errno, err.strerror
            )
            return None
        hhl = ETHERNET_HEADER_BYTES if arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK) else 0
        log.debug(
            "ifindex %d is %s: ARPHRD %d, hhl %d, mtu %d",
            ifindex,
            name.rstrip(b"\0").decode(errors="replace"),
            arphrd,
            hhl,
            mtu,
        )
        return (hhl, mtu if mtu > 0 else VANISHED_LINK[1])

    def forget(self, ifindex: int) -> None:
        """Drop what is known about ifindex (its MTU changed, or it went away)."""
        self.pop(ifindex, None)
        self._vanished_at.pop(ifindex, None)

    def clear(self) -> None:
        """Forget every interface."""
        super().clear()
        self._vanished_at.clear()

    def close(self) -> None:
        """Close the lookup socket; the table keeps answering from its cache."""
        self._socket.close()
