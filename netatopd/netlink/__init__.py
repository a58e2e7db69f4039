"""Raw NETLINK sockets (no pyroute2): the kernel's answers about sockets, routes and NAT.

``socket`` holds the generic AF_NETLINK request/reply machinery (nlmsghdr,
multi-part replies, NLMSG_ERROR / NLMSG_DONE, the receive timeout) and
``attributes`` the nlattr walk and build.  On top of them, one dialect each:
``sockdiag`` (NETLINK_SOCK_DIAG: which socket, inode and uid a 4-tuple
belongs to; called by ownership.Resolver and ownership.Sweeper), ``rtnetlink``
(NETLINK_ROUTE: ``LocalAddresses``, the namespace's local addresses) and
``conntrack`` (NETLINK_NETFILTER: what NAT did to a flow); those two are
used by the tests and bench/bench_local_addresses.py, not by the daemon
yet.  Imports nothing else of ours.
"""

from __future__ import annotations

from .sockdiag import SockDiag, SocketInfo, TcpState
from .socket import NetlinkError, NetlinkSocket

__all__ = ["NetlinkError", "NetlinkSocket", "SockDiag", "SocketInfo", "TcpState"]
