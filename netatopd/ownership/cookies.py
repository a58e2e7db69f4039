"""The kernel counting path's owners: socket cookie -> socket inode -> process.

Owns nothing but the route from a ``CookieFlow`` (flows.py, one socket of
the ``--capture kernel`` path) to its owner.  First the eBPF helper's
records, when it is loaded (``--ownership auto|kernel``, in every
namespace): the last thread that sent or received on the socket, named by
its cookie (``KernelOwners.owner_of_cookie``; counted in ``kernel_finds``);
a later record naming another thread (a forked child serving the socket)
moves the flow to it.  Else the socket's namespace and
inode from ``NamespaceSockets`` (sock_diag inside that namespace, found by
the namespace cookie the programs recorded), then the holder of the inode
from the ``InodeIndex`` (it reads /proc/PID/fd, so it spans every
namespace: socket inodes are unique on the host) and the task from the
``TaskRegistry``.  Built by the daemon's engine instead of ``Resolver`` when
the capture is ``kernel``; the engine calls what it calls on ``Resolver``
plus ``sweep_cookie_flows`` after each garbage collection.

Why a subclass of ``Resolver`` rather than a resolver of its own: everything
after "which inode" is the same -- the pending queue and its retries, the
unowned limit and write-off, settling counters into tasks, the /proc rescans
that move a socket to the newest process holding it (a forked child), the
owners' memory, and the release of flows whose owner finished.  Only the
lookup differs (by cookie in the socket's namespace instead of by 4-tuple in
ours), so only ``_resolve``, the application of the helper's records and
the flow identity are overridden; the 4-tuple-only routes (the helper's
records by tuple, the UDP port recheck) are not used for cookie flows
because a 4-tuple does not say which namespace it is in.  The /proc rescans
go on with the helper loaded (``rescans_with_kernel``): a socket the helper
named no thread for (its cookie still 0 at the thread's call) keeps the
sock_diag route's moves to a newer holder.

Bounded work for sockets nothing will own.  The programs count the whole
machine, so many sockets have no process to find: the kernel's own control
sockets (TIME_WAIT ACKs, resets), sockets whose process ended before the
first drain, sockets held by no readable process.  Retrying those until the
unowned limit (and dropping the flow, so the next packet starts it all
again) was most of the daemon's CPU on a busy host.  Here a socket flow
gives up after ``GIVE_UP_LOOKUPS`` lookups (about 1.3 s of retries), and
after ``ENDPOINT_SEARCH_LOOKUPS`` (about 0.15 s) when its socket is gone or
closed and the searches among recent processes found no holder: its
counters, then and later, are unidentified (the written-off rule) without
further lookups, until the flow goes idle and the sweep drops it.
"""

from __future__ import annotations

import logging

from ..ebpf import FlowOwner, KernelOwnership, OwnerKind
from ..flows import CookieFlow, Flow, FlowState, FlowTable
from ..netlink.sockdiag import SockDiag
from ..parse import PROTO_TCP
from ..procfs import ProcAccessDenied, ProcessGone, SocketEndpoint, socket_endpoints
from ..tasks import TaskInfo
from .namespaces import NamespaceSockets, pids_by_namespace
from .registry import TaskRegistry
from .resolver import (
    ENDPOINT_CACHE_MAX,
    ENDPOINT_SEARCH_FOR_S,
    RESCAN_INTERVAL_S_DEFAULT,
    UNOWNED_LIMIT_S_DEFAULT,
    Resolver,
)

log = logging.getLogger(__name__)

NAMESPACE_SCAN_MAX_PIDS = 64  # a missed holder is looked for in namespaces this small
SOCKET_GONE_IDLE_S = 2.0  # a cookie flow this idle whose socket is gone is dropped
ENDPOINT_SEARCH_LOOKUPS = 5  # a closed socket's holder is searched for in this many lookups
SCANNED_NAMESPACES_MAX = 4096
GIVE_UP_LOOKUPS = 8  # a socket flow still without owner after this many lookups is given up


class CookieResolver(Resolver):
    """Finds the owner of each socket the kernel path counted, in any namespace."""

    rescans_with_kernel = True

    def __init__(
        self,
        flows: FlowTable,
        registry: TaskRegistry,
        sockdiag: SockDiag,
        namespaces: NamespaceSockets,
        unowned_limit_s: float = UNOWNED_LIMIT_S_DEFAULT,
        rescan_interval_s: float = RESCAN_INTERVAL_S_DEFAULT,
        kernel: KernelOwnership | None = None,
        helper_only: bool = False,
    ) -> None:
        """helper_only (tests): owners come from the helper's records alone, never from
        sock_diag and /proc, to show that its records name them."""
        super().__init__(
            flows,
            registry,
            sockdiag,
            unowned_limit_s=unowned_limit_s,
            rescan_interval_s=rescan_interval_s,
            kernel=kernel,
        )
        self.namespaces = namespaces
        self.helper_only = helper_only and kernel is not None
        self.cookie_finds = 0  # owners found through a namespace's sock_diag dump
        self.given_up = 0  # socket flows given up (no owner to find): unidentified
        # Namespace rescans: nsfs inode -> (generation scanned, few processes), and
        # the pass's one walk of /proc (nsfs inode -> pids).
        self._scanned: dict[int, tuple[int, bool]] = {}
        self._pids: dict[int, list[int]] = {}
        self._pids_generation = -1
        self._holders: dict[int, dict[int, int]] = {}  # this pass: nsfs inode -> cookie -> pid

    def resolve(self, now_s: float, everything: bool = False) -> None:
        self.namespaces.new_pass()
        if everything:
            # SYNC: namespaces made since the last look are opened now, whatever the
            # rate limit of lookups of unknown namespace cookies.
            self.namespaces.refresh()
        super().resolve(now_s, everything)

    def _identity(self, flow: Flow) -> tuple[int, bytes, int, bytes, int]:
        if isinstance(flow, CookieFlow):
            return (flow.proto, flow.cookie.to_bytes(8, "little"), flow.netns_cookie, b"", 0)
        return super()._identity(flow)

    def _recheck_udp(self, flow: Flow, now_s: float) -> None:
        """Not needed: a cookie names one socket for its whole life."""
        if not isinstance(flow, CookieFlow):
            super()._recheck_udp(flow, now_s)

    def _apply_kernel_records(self, records: list[FlowOwner], now_s: float) -> None:
        """Socket flows whose owning thread the helper names anew (by cookie) move to it."""
        kernel = self.kernel
        assert kernel is not None
        flows = self.flows
        for r in records:
            if not r.cookie or r.kind not in (OwnerKind.SEND, OwnerKind.RECV):
                continue
            flow = flows.cookie_flow(r.cookie)
            if flow is None or flow.state in (FlowState.NEW, FlowState.ORPHANED):
                continue  # not counted yet, or resolved in its turn with this record
            owner = kernel.owner_of_cookie(r.cookie)
            if owner is not None:
                self._take_kernel_owner(flow, owner, now_s)

    def _resolve(self, flow: Flow, now_s: float) -> None:
        if not isinstance(flow, CookieFlow):
            super()._resolve(flow, now_s)
            return
        flow.lookups += 1
        kernel = self.kernel
        if kernel is not None:
            owner = kernel.owner_of_cookie(flow.cookie)
            if owner is not None:
                task = self.registry.task_named_by_kernel(owner.tgid, owner.comm, owner.time_ns)
                if task is not None:
                    self.kernel_finds += 1
                    self._assign(flow, task, now_s, final=True, tid=owner.tid)
                    return
            if self.helper_only:
                self._retry_or_give_up(flow, now_s)
                return
        self.lookups += 1
        sock = self.namespaces.socket(flow.netns_cookie, flow.cookie, flow.proto, flow.family)
        if sock is None:
            self.not_found += 1
            if flow.lookups == 1:
                log.debug("%s: no such socket in its namespace", flow.describe())
        elif not flow.local_addr:
            flow.local_addr, flow.local_port = sock.local_addr, sock.local_port
            flow.remote_addr, flow.remote_port = sock.remote_addr, sock.remote_port
        if sock is None or sock.inode == 0:
            # Closed (or TIME_WAIT: the process may hold the closed socket still) before it
            # was looked up: a remembered owner, a recent process holding that cookie, else
            # retry.
            task = self._remembered_owner(flow, now_s) or self._search_endpoints(flow, now_s)
            if task is not None:
                self._assign(flow, task, now_s, final=True)
            elif flow.lookups >= ENDPOINT_SEARCH_LOOKUPS:
                # Gone (or closed) and no process found holding it in the searches:
                # no owner will come.
                self._give_up(flow)
            else:
                self._retry(flow, now_s)
            return
        pid = self.inodes.holder(sock.inode)
        if pid is None:
            pid, scanned = self._namespace_holder(flow, sock.inode)
            if pid is None and not scanned:
                # The host's namespace (or one not entered): the budgeted refreshes.
                pid = self._holder(sock.inode)
        if pid is None:
            self.misses += 1
            self._retry_or_give_up(flow, now_s)
            return
        task = self.registry.task(pid)
        if task is None:
            self._retry_or_give_up(flow, now_s)
            return
        flow.uid = sock.uid
        if task.uid < 0:
            task.uid = sock.uid
            task.touch()
        if flow.inode and flow.inode != sock.inode:
            self._unlink_inode(flow)
        flow.inode = sock.inode
        self.inode_flows.setdefault(sock.inode, []).append(flow)
        self.cookie_finds += 1
        self._assign(flow, task, now_s, final=True)

    def _namespace_holder(self, flow: CookieFlow, inode: int) -> tuple[int | None, bool]:
        """(holder, scanned): the holder of a socket inode among the processes of the
        flow's namespace, and whether that namespace is one of few processes.

        The holder is in the socket's namespace: its processes are looked at now
        rather than when the budgeted refreshes of the whole host reach them (and
        instead of them).  A namespace of many processes (the host's), or one not
        entered, is left to those refreshes (scanned False).  At most once a
        resolve pass per namespace, with one walk of /proc a pass for all of
        them: the flows of one namespace share the rescan.
        """
        namespaces = self.namespaces
        namespace = namespaces.by_cookie.get(flow.netns_cookie)
        if namespace is None:
            return None, False
        generation = namespaces.generation
        scanned = self._scanned.get(namespace.inode)
        if scanned is not None and scanned[0] == generation:
            return self.inodes.holder(inode), scanned[1]  # scanned this pass
        pids = self._namespace_pids(namespace.inode)
        small = len(pids) <= NAMESPACE_SCAN_MAX_PIDS
        self._scanned[namespace.inode] = (generation, small)
        if not small:
            return None, False
        self.inodes.scan_pids(pids)
        return self.inodes.holder(inode), True

    def _search_endpoints(self, flow: Flow, now_s: float) -> TaskInfo | None:
        """The process holding a socket sock_diag no longer reports, by its cookie.

        Only in a socket flow's first lookups.  In a namespace of few processes,
        those processes' sockets are named once a pass (each socket once: cached
        by inode) into cookie -> pid, which every flow of the namespace then
        reads; elsewhere (the host's namespace) the search among the processes
        started recently, as for the libpcap path.
        """
        if not isinstance(flow, CookieFlow):
            return super()._search_endpoints(flow, now_s)
        if flow.lookups > ENDPOINT_SEARCH_LOOKUPS:
            return None
        if now_s - flow.first_seen_s > ENDPOINT_SEARCH_FOR_S or not flow.snd_packs:
            return None  # only a socket that sent can have been closed by a live process
        namespace = self.namespaces.by_cookie.get(flow.netns_cookie)
        if namespace is None:
            return super()._search_endpoints(flow, now_s)
        pids = self._namespace_pids(namespace.inode)
        if len(pids) > NAMESPACE_SCAN_MAX_PIDS:
            return super()._search_endpoints(flow, now_s)
        holders = self._cookie_holders(namespace.inode, pids)
        pid = holders.get(flow.cookie)
        if pid is None:
            return None
        task = self.registry.task(pid)
        if task is not None:
            self.endpoint_finds += 1
        return task

    def _namespace_pids(self, namespace_inode: int) -> list[int]:
        """The pids of a namespace, from this pass's one walk of /proc."""
        generation = self.namespaces.generation
        if self._pids_generation != generation:
            self._pids = pids_by_namespace(self.namespaces.proc_root)
            self._pids_generation = generation
            if len(self._scanned) > SCANNED_NAMESPACES_MAX:
                self._scanned.clear()
            self._holders.clear()
        return self._pids.get(namespace_inode, [])

    def _cookie_holders(self, namespace_inode: int, pids: list[int]) -> dict[int, int]:
        """socket cookie -> pid over the sockets the namespace's processes hold, once a pass."""
        holders = self._holders.get(namespace_inode)
        if holders is not None:
            return holders
        holders = {}
        procfs = self.procfs
        endpoints = self.endpoints
        for pid in sorted(pids):  # the newest (highest) pid last: it wins a shared socket
            try:
                descriptors = procfs.socket_inodes(pid)
                unknown = {i: fd for i, fd in descriptors.items() if i not in endpoints}
                named = socket_endpoints(pid, unknown) if unknown else {}
            except (ProcessGone, ProcAccessDenied):
                continue
            for inode in unknown:
                endpoints[inode] = named.get(inode)
            for inode in descriptors:
                endpoint = endpoints.get(inode)
                if endpoint is not None:
                    holders[endpoint.cookie] = pid
        while len(endpoints) > ENDPOINT_CACHE_MAX:
            endpoints.popitem(last=False)
        self._holders[namespace_inode] = holders
        return holders

    def _retry_or_give_up(self, flow: CookieFlow, now_s: float) -> None:
        if flow.lookups >= GIVE_UP_LOOKUPS:
            self._give_up(flow)
        else:
            self._retry(flow, now_s)

    def _give_up(self, flow: CookieFlow) -> None:
        """No owner will be found: the flow's counters, now and later, are unidentified.

        The flow stays in the table (ORPHANED: ``settle`` writes off what it
        counts next, no lookups) so a busy ownerless socket costs one lookup
        round, not one every unowned limit; the sweep drops it when idle.
        """
        self.flows.write_off(flow)
        flow.state = FlowState.ORPHANED
        self.given_up += 1
        self.unowned_written_off += 1
        log.debug("%s: no owner found, given up", flow.describe())

    def _endpoint_matches(self, endpoint: SocketEndpoint, flow: Flow) -> bool:
        """A cookie flow's socket is the one with its cookie (any namespace: cookies are
        unique on the host)."""
        if isinstance(flow, CookieFlow):
            return endpoint.cookie == flow.cookie
        return super()._endpoint_matches(endpoint, flow)

    def _owners_finished(self, tasks: list[TaskInfo], now_s: float) -> None:
        super()._owners_finished(tasks, now_s)
        for flow in self.flows.cookie_flows():
            owner = flow.owner
            if owner is not None and owner.exited:
                flow.owner = None
                flow.state = FlowState.PENDING
                self._retry(flow, now_s)

    def sweep_cookie_flows(self, now_s: float, tcp_idle_s: float, udp_idle_s: float) -> int:
        """Drop cookie flows idle past the protocol's limit, or owned ones whose socket is gone.

        Called after each garbage collection, with the counters settled; a
        flow dropped with counters still unowned writes them off.  Returns
        how many were dropped.
        """
        self.namespaces.new_pass()
        gone: list[CookieFlow] = []
        for flow in self.flows.cookie_flows():
            idle_s = now_s - flow.last_seen_s
            limit_s = tcp_idle_s if flow.proto == PROTO_TCP else udp_idle_s
            if idle_s >= limit_s:
                gone.append(flow)
            elif flow.owner is None and flow.state in (FlowState.NEW, FlowState.PENDING):
                continue  # waits for its owner until the unowned limit (Resolver.resolve)
            elif idle_s >= SOCKET_GONE_IDLE_S and (
                self.namespaces.socket(flow.netns_cookie, flow.cookie, flow.proto, flow.family)
                is None
            ):
                gone.append(flow)
        for flow in gone:
            self.forget_flow(flow)
        if gone:
            log.debug("sweep: %d socket flows dropped, %d left", len(gone), self.flows.count)
        return len(gone)
