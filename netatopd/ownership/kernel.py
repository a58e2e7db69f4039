"""The kernel-owner join: what the eBPF helper said about each flow, by tuple or cookie.

Owns the owner records drained from ``netatopd.ebpf.KernelOwnership`` (who
called connect() on a TCP tuple; the last thread that sent or received on a
tuple, and on a socket cookie), kept ``KERNEL_OWNER_KEEP_S``, and the drain
counters.  Called by ``Resolver`` (``has_news`` and ``drain`` each pass,
``owner_of`` for a flow), ``CookieResolver`` (``owner_of_cookie`` for a
socket of the kernel counting path) and by ``Sweeper`` (``expire``).
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ..ebpf import FlowOwner, KernelOwnership, OwnerKind
from ..flows import Flow
from ..parse import PROTO_UDP

KERNEL_OWNER_KEEP_S = 300.0  # a record this old (and its flow unseen) is forgotten
KERNEL_OWNERS_MAX = 200_000


class KernelOwner(NamedTuple):
    """The process and thread the kernel named as a flow's owner, and when (CLOCK_MONOTONIC)."""

    tgid: int
    tid: int
    comm: str
    time_ns: int


class KernelOwners:
    """What the eBPF helper said about each flow: who opened it, who used it last.

    Rule: an actively opened TCP connection belongs to the thread that called
    connect(); any other flow to the last thread that sent or received on it.
    State-change records alone are never trusted for ownership (the kernel
    may skip them under load), only together with send/recv records.
    """

    def __init__(self, helper: KernelOwnership) -> None:
        self.helper = helper
        self.connect: dict[tuple[bytes, int, bytes, int], KernelOwner] = {}
        self.used: dict[tuple[int, bytes, int, bytes, int], KernelOwner] = {}
        # socket cookie -> the last thread that sent or received on that socket
        self.by_cookie: dict[int, KernelOwner] = {}
        self.records = 0
        self.drains = 0
        self.drains_skipped = 0  # looks that found the programs' change count unmoved
        self.changes_drained = -1  # the programs' change count before the last drain

    def has_news(self) -> bool:
        """Whether the programs wrote a record since the last drain (one cheap syscall)."""
        news = self.helper.changes() != self.changes_drained
        if not news:
            self.drains_skipped += 1
        return news

    def drain(self) -> list[FlowOwner]:
        # The count first: a record written during the walk moves it again.
        self.changes_drained = self.helper.changes()
        records = self.helper.drain()
        self.drains += 1
        self.records += len(records)
        for r in records:
            owner = KernelOwner(r.tgid, r.tid, r.comm, r.time_ns)
            if r.kind == OwnerKind.CONNECT:
                self.connect[(r.local_addr, r.local_port, r.remote_addr, r.remote_port)] = owner
            elif r.kind in (OwnerKind.SEND, OwnerKind.RECV):
                key = (r.protocol, r.local_addr, r.local_port, r.remote_addr, r.remote_port)
                known = self.used.get(key)
                if known is None or known.time_ns <= r.time_ns:
                    self.used[key] = owner
                if r.cookie:
                    known = self.by_cookie.get(r.cookie)
                    if known is None or known.time_ns <= r.time_ns:
                        self.by_cookie[r.cookie] = owner
        if len(self.connect) + len(self.used) + len(self.by_cookie) > KERNEL_OWNERS_MAX:
            self.expire(time.monotonic_ns() - int(KERNEL_OWNER_KEEP_S * 1e9) // 10)
        return records

    def expire(self, older_than_ns: int | None = None) -> None:
        if older_than_ns is None:
            older_than_ns = time.monotonic_ns() - int(KERNEL_OWNER_KEEP_S * 1e9)
        limit = older_than_ns
        self.connect = {k: v for k, v in self.connect.items() if v.time_ns >= limit}
        self.used = {k: v for k, v in self.used.items() if v.time_ns >= limit}
        self.by_cookie = {k: v for k, v in self.by_cookie.items() if v.time_ns >= limit}

    def owner_of_cookie(self, cookie: int) -> KernelOwner | None:
        """The last thread that sent or received on the socket of this cookie."""
        return self.by_cookie.get(cookie)

    def owner_of(self, flow: Flow) -> KernelOwner | None:
        if flow.proto == PROTO_UDP:
            wildcard = bytes(len(flow.local_addr))
            for local in (flow.local_addr, wildcard):
                # a connected socket first, then an unconnected one
                for remote, rport in ((flow.remote_addr, flow.remote_port), (b"", 0)):
                    owner = self.used.get((PROTO_UDP, local, flow.local_port, remote, rport))
                    if owner is not None:
                        return owner
            return None
        tuple4 = (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port)
        owner = self.connect.get(tuple4)
        if owner is not None:
            return owner
        return self.used.get((flow.proto, *tuple4))
