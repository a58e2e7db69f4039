"""The garbage collector (the sweep): old flows out, finished processes finished.

Owns the sweep's schedule and its run count.  The daemon calls ``run`` every
``gc_interval_s`` (``due``, ``seconds_until_due``) and on FORCE_GC
(``force``, at most twice a second).

The sweep keeps the kernel module's rules: TCP flows whose connection is no
longer ESTABLISHED or LISTEN (sock_diag) are dropped, owned TCP flows idle
for ``tcp_idle_s`` and UDP flows on ports above 1024 idle for ``udp_idle_s``
are dropped (``Resolver.forget_flow``), and a task whose process is gone (pid
gone, or reused: the start time differs) is finished by
``TaskRegistry.sweep``, which puts it on the exit list.
"""

from __future__ import annotations

import logging
import time
from socket import AF_INET, AF_INET6

from ..defaults import GC_INTERVAL_S_DEFAULT, TCP_IDLE_S_DEFAULT, UDP_IDLE_S_DEFAULT
from ..flows import Flow, FlowTable
from ..netlink.sockdiag import SockDiag, TcpState
from ..parse import PROTO_TCP
from ..wire import IPV4_MAPPED_PREFIX
from .registry import TaskRegistry
from .resolver import Resolver

log = logging.getLogger(__name__)

FORCED_GC_MIN_INTERVAL_S = 0.5  # FORCE_GC runs at most twice a second
UDP_IDLE_PORT_ABOVE = 1024
TCP_YOUNG_S = 2.0  # a TCP flow this young is kept whatever its state (handshake in progress)
TCP_KEPT_STATES = (TcpState.ESTABLISHED, TcpState.LISTEN)


def _normal_address(addr: bytes) -> bytes:
    """An IPv4-mapped IPv6 address as the IPv4 address its packets carry."""
    if len(addr) == 16 and addr.startswith(IPV4_MAPPED_PREFIX):
        return addr[12:]
    return addr


class Sweeper:
    """The garbage collector: old flows out, finished processes to the exit list."""

    def __init__(
        self,
        flows: FlowTable,
        registry: TaskRegistry,
        resolver: Resolver,
        sockdiag: SockDiag,
        gc_interval_s: float = GC_INTERVAL_S_DEFAULT,
        tcp_idle_s: float = TCP_IDLE_S_DEFAULT,
        udp_idle_s: float = UDP_IDLE_S_DEFAULT,
    ) -> None:
        self.flows = flows
        self.registry = registry
        self.resolver = resolver
        self.sockdiag = sockdiag
        self.gc_interval_s = gc_interval_s
        self.tcp_idle_s = tcp_idle_s
        self.udp_idle_s = udp_idle_s
        self.last_run_monotonic_s = time.monotonic()
        self.runs = 0

    def due(self) -> bool:
        return time.monotonic() - self.last_run_monotonic_s >= self.gc_interval_s

    def seconds_until_due(self) -> float:
        return max(0.0, self.gc_interval_s - (time.monotonic() - self.last_run_monotonic_s))

    def force(self, now_s: float) -> bool:
        """FORCE_GC: run now unless a sweep ran less than half a second ago."""
        if self.seconds_until_forcible() > 0:
            return False
        self.run(now_s)
        return True

    def seconds_until_forcible(self) -> float:
        """How long a forced sweep must wait (sweeps run at most twice a second)."""
        return max(0.0, self.last_run_monotonic_s + FORCED_GC_MIN_INTERVAL_S - time.monotonic())

    def run(self, now_s: float) -> None:
        self.last_run_monotonic_s = time.monotonic()
        self.runs += 1
        self._sweep_flows(now_s)
        self._sweep_tasks(now_s)
        self.registry.exit_list.expire()

    def _tcp_alive(self) -> set[tuple[bytes, int, bytes, int]]:
        alive: set[tuple[bytes, int, bytes, int]] = set()
        for family in (AF_INET, AF_INET6):
            for sock in self.sockdiag.dump(PROTO_TCP, family):
                if sock.state in TCP_KEPT_STATES:
                    alive.add(
                        (
                            _normal_address(sock.local_addr),
                            sock.local_port,
                            _normal_address(sock.remote_addr),
                            sock.remote_port,
                        )
                    )
        return alive

    def _sweep_flows(self, now_s: float) -> None:
        flows = self.flows.all_flows()
        tcp_alive = self._tcp_alive() if any(f.proto == PROTO_TCP for f in flows) else set()
        gone: list[Flow] = []
        for flow in flows:
            idle_s = now_s - flow.last_seen_s
            if flow.proto == PROTO_TCP:
                if now_s - flow.first_seen_s < TCP_YOUNG_S:
                    continue
                tuple_ = (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port)
                if tuple_ not in tcp_alive or (
                    flow.owner is not None and idle_s >= self.tcp_idle_s
                ):
                    gone.append(flow)
            elif flow.local_port > UDP_IDLE_PORT_ABOVE and idle_s >= self.udp_idle_s:
                gone.append(flow)
        for flow in gone:
            self.resolver.forget_flow(flow)
        if gone:
            log.debug("sweep: %d flows dropped, %d left", len(gone), self.flows.count)

    def _sweep_tasks(self, now_s: float) -> None:
        self.registry.sweep(now_s)
        if self.resolver.kernel is not None:
            self.resolver.kernel.expire()
