"""Stage 3a: raw NETLINK sockets (no pyroute2).

``socket`` holds the generic AF_NETLINK request/reply machinery (nlmsghdr,
multi-part replies, NLMSG_ERROR / NLMSG_DONE); ``sockdiag`` speaks the
inet_diag dialect of NETLINK_SOCK_DIAG on top of it.  Called by the owner
resolver; imports nothing of the package above this stage.
"""

from __future__ import annotations

from .sockdiag import SockDiag, SocketInfo, TcpState
from .socket import NetlinkError, NetlinkSocket

__all__ = ["NetlinkError", "NetlinkSocket", "SockDiag", "SocketInfo", "TcpState"]
