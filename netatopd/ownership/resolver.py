"""The resolver: flow (sockinfo) -> process (taskinfo).

Owns the flows waiting for an owner, the memory of recent owners (tuple ->
task), the sockets named by ``procfs.socket_endpoints``, the inode index
(``InodeIndex``), the kernel-owner join (``KernelOwners``, with the eBPF
helper) and the resolver's counters.  Tasks come from the ``TaskRegistry``;
when it finishes tasks, their flows look for an owner again here.  The
daemon calls, after each captured batch counted into the ``FlowTable``:
``resolve`` (looks up the owners of new flows, retries pending ones, applies
what the kernel recorded) and ``settle`` (moves the counters of owned flows
into their tasks); ``Sweeper`` calls ``forget_flow``.

How an owner is found, cheapest first:
1. sock_diag exact lookup of the flow's tuple: the socket's inode, uid, state;
2. the inode index; on a miss, an incremental refresh that rescans only new
   processes and those whose descriptor count changed (``stat`` of
   ``/proc/PID/fd`` gives the count), newest first;
3. a full rescan, at most once per ``FULL_SCAN_MIN_INTERVAL_S``.
Where several processes hold a socket, the newest (latest start) wins, so a
socket accepted by a parent and served by a forked child goes to the child.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections import OrderedDict, deque

from ..defaults import RESCAN_INTERVAL_S_DEFAULT, UNOWNED_LIMIT_S_DEFAULT
from ..ebpf import FlowOwner, KernelOwnership, OwnerKind
from ..flows import Flow, FlowState, FlowTable
from ..netlink.connector import wall_time_s
from ..netlink.sockdiag import SockDiag, SocketInfo, TcpState
from ..parse import PROTO_UDP
from ..procfs import ProcAccessDenied, ProcessGone, SocketEndpoint, socket_endpoints
from ..tasks import TaskInfo
from .inodes import InodeIndex
from .kernel import KernelOwner, KernelOwners
from .registry import TaskRegistry

log = logging.getLogger(__name__)

FULL_SCAN_MIN_INTERVAL_S = 1.0
UDP_RECHECK_IDLE_S = 1.0  # a UDP flow quiet this long is looked up again when it speaks
FULL_SCAN_STEP_S = 0.003  # a full rescan proceeds in steps this long (and a lookup's refresh)
OWNER_LATENCY_SAMPLES = 1000  # new flows whose seen -> owner-known delay STATUS summarises
REMEMBER_OWNERS_S = 120.0  # how long a tuple -> owner mapping outlives its flow
REMEMBER_OWNERS_MAX = 65_536
FIRST_RETRY_S = 0.005
MAX_RETRY_S = 2.0
# A flow whose socket sock_diag no longer reports (closed before the lookup) is
# looked for among the processes started this shortly before its first packet,
# by asking their sockets for their names (procfs.socket_endpoints).
ENDPOINT_SEARCH_WINDOW_S = 5.0
ENDPOINT_SEARCH_FOR_S = 2.0  # searched for this long after the first packet, then not
ENDPOINT_CACHE_MAX = 65_536
RESOLVE_BUDGET_S = 0.005  # lookups per pass stop after this long; the rest wait their turn
REFRESH_MIN_INTERVAL_S = 0.002  # the incremental /proc refresh runs at most this often
# The helper records a thread on a flow again after REPORT_INTERVAL_NS (1 s) when it
# goes on using it: a UDP flow's last record older than its waiting packets by more
# than this was another socket's, one that held the port before (_kernel_owner).
KERNEL_RECORD_STALE_S = 2.0


class Resolver:
    """Finds the owner of each flow and keeps it current."""

    # Whether the /proc rescans go on while the eBPF helper names owners (CookieResolver).
    rescans_with_kernel = False

    def __init__(
        self,
        flows: FlowTable,
        registry: TaskRegistry,
        sockdiag: SockDiag,
        unowned_limit_s: float = UNOWNED_LIMIT_S_DEFAULT,
        rescan_interval_s: float = RESCAN_INTERVAL_S_DEFAULT,
        kernel: KernelOwnership | None = None,
    ) -> None:
        self.flows = flows
        self.registry = registry
        self.procfs = procfs = registry.procfs
        self.sockdiag = sockdiag
        self.unowned_limit_s = unowned_limit_s
        self.rescan_interval_s = rescan_interval_s
        self.inodes = InodeIndex(procfs)
        self.kernel = KernelOwners(kernel) if kernel is not None else None
        self.kernel_finds = 0  # owners known from the eBPF helper
        self.udp_rechecks = 0  # UDP flows found to belong to a new socket
        self.proc_nlink = 0
        self.inode_flows: dict[int, list[Flow]] = {}
        # Flows waiting for an owner, by when to look again: (due_s, sequence, flow).
        # Entries of flows that got an owner or went away are skipped when they surface.
        self.pending: list[tuple[float, int, Flow]] = []
        self._sequence = itertools.count()
        self.remembered: OrderedDict[tuple[int, bytes, int, bytes, int], tuple[TaskInfo, float]] = (
            OrderedDict()
        )
        self.endpoints: OrderedDict[int, SocketEndpoint | None] = OrderedDict()  # inode -> name
        self.last_rescan_s = 0.0
        self.last_refresh_monotonic_s = 0.0
        self.endpoint_finds = 0  # owners found by socket name after sock_diag lost the socket
        self.lookups = 0
        self.misses = 0  # lookups that found a socket but no process holding it
        self.not_found = 0  # lookups that found no socket
        self.unowned_written_off = 0  # flows given up after unowned_limit_s
        # Seconds from a flow's first packet read to its first owner, latest flows.
        self.owner_latencies_s: deque[float] = deque(maxlen=OWNER_LATENCY_SAMPLES)
        registry.on_finish.append(self._owners_finished)

    # -- settling counters -----------------------------------------------------

    def settle(self, now_s: float) -> None:
        """Move the unsettled counters of every flow touched since the last call to its owner."""
        dirty = self.flows.dirty
        self.flows.dirty = []
        recheck = self.kernel is None
        for flow in dirty:
            flow.dirty = False
            if (
                recheck
                and flow.proto == PROTO_UDP
                and flow.state == FlowState.OWNED
                and now_s - flow.last_seen_s >= UDP_RECHECK_IDLE_S
            ):
                # A UDP port quiet for a while may belong to another socket now
                # (its process gone, the port taken by a new one): look again.
                self._recheck_udp(flow, now_s)
            flow.last_seen_s = now_s
            owner = flow.owner
            if owner is not None:
                owner.add(flow.proto == PROTO_UDP, flow.take_pending(), now_s, flow.tid)
            elif flow.state == FlowState.ORPHANED:
                self.flows.write_off(flow)
            elif not flow.waiting_since_s:
                flow.waiting_since_s = now_s

    def _recheck_udp(self, flow: Flow, now_s: float) -> None:
        sock = self._lookup(flow)
        self.lookups += 1
        if sock is not None and sock.inode == flow.inode:
            return  # the same socket
        self.udp_rechecks += 1
        self.remembered.pop(self._identity(flow), None)  # that owner was the old socket's
        self._unlink_inode(flow)
        flow.owner = None
        flow.tid = 0
        flow.inode = 0
        flow.state = FlowState.PENDING
        flow.first_seen_s = now_s  # the new socket's flow starts here
        self._resolve(flow, now_s)

    # -- resolution ----------------------------------------------------------

    def resolve(self, now_s: float, everything: bool = False) -> None:
        """Look up new flows, retry the pending ones that are due (all if everything)."""
        deadline = time.monotonic() + RESOLVE_BUDGET_S
        kernel = self.kernel
        # The kernel map is walked only when its programs wrote something new: a
        # new flow, another thread on a flow, an open or a close (or every
        # REPORT_INTERVAL_NS per busy flow), never merely because packets came.
        if kernel is not None and (everything or kernel.has_news()):
            self._apply_kernel_records(kernel.drain(), now_s)
        new = self.flows.new
        if new:
            self.flows.new = []
            for index, flow in enumerate(new):
                if time.monotonic() > deadline and not everything:
                    # A flood of new flows must not stall the capture: later, in turn.
                    for late in new[index:]:
                        if late.keys:
                            late.state = FlowState.PENDING
                            late.next_lookup_s = now_s
                            heapq.heappush(self.pending, (now_s, next(self._sequence), late))
                    break
                if flow.keys:  # not removed meanwhile
                    self._resolve(flow, now_s)
        pending = self.pending
        if everything:
            due = pending[:]
            pending.clear()
        else:
            due = []
            while pending and pending[0][0] <= now_s and time.monotonic() <= deadline:
                due.append(heapq.heappop(pending))
        limit_s = now_s - self.unowned_limit_s
        for due_s, _, flow in due:
            if due_s != flow.next_lookup_s:
                continue  # a later retry of the same flow is queued
            if not flow.keys or flow.state not in (FlowState.PENDING, FlowState.PROVISIONAL):
                continue  # owned or removed since it was queued
            if flow.owner is None and flow.first_seen_s <= limit_s:
                self.flows.write_off(flow)
                self._drop(flow)
                self.unowned_written_off += 1
                continue
            self._resolve(flow, now_s)
        # With the eBPF helper a process that takes a socket over and uses it is
        # named by the kernel at its first send or receive: no /proc rescans.
        rescans = self.kernel is None or self.rescans_with_kernel
        if rescans and now_s - self.last_rescan_s >= self.rescan_interval_s:
            if new or self._processes_changed():
                self.rescan(now_s)
            else:
                self.last_rescan_s = now_s  # looked: nothing new; look again an interval later

    def _processes_changed(self) -> bool:
        """Whether processes started or ended since the last rescan (cheap: one stat).

        The link count of /proc grows and shrinks with the number of processes,
        so a fork that may have handed sockets to a child shows there.
        """
        try:
            nlink = os.stat(self.procfs.proc_root).st_nlink
        except OSError:
            return True
        if nlink == self.proc_nlink:
            return False
        self.proc_nlink = nlink
        return True

    def _apply_kernel_records(self, records: list[FlowOwner], now_s: float) -> None:
        """Flows already known whose owning thread the kernel names anew move to it."""
        assert self.kernel is not None
        flows = self.flows
        for r in records:
            if r.kind not in (OwnerKind.SEND, OwnerKind.RECV, OwnerKind.CONNECT):
                continue
            if r.protocol == PROTO_UDP:
                if any(r.local_addr):
                    flow = flows.udp_flow(r.local_addr, r.local_port)
                    candidates: tuple[Flow, ...] = () if flow is None else (flow,)
                else:  # an unbound socket: every local address of that port
                    candidates = flows.udp_flows_on_port(r.local_port, len(r.local_addr))
                for flow in candidates:
                    self._apply_kernel_owner(flow, now_s)
                continue
            if r.remote_addr:
                flow = flows.tcp_flow(r.local_addr, r.local_port, r.remote_addr, r.remote_port)
            else:
                continue
            if flow is not None:
                self._apply_kernel_owner(flow, now_s)

    def _apply_kernel_owner(self, flow: Flow, now_s: float) -> None:
        assert self.kernel is not None
        if flow.state == FlowState.NEW:
            return  # resolved in its turn, with this record
        owner = self.kernel.owner_of(flow)
        if owner is not None:
            self._take_kernel_owner(flow, owner, now_s)

    def _take_kernel_owner(self, flow: Flow, owner: KernelOwner, now_s: float) -> None:
        """The flow moves to the thread the kernel's record names, unless it is there."""
        current = flow.owner
        if current is not None and current.tgid == owner.tgid and flow.tid == owner.tid:
            return
        task = self.registry.task_named_by_kernel(owner.tgid, owner.comm, owner.time_ns)
        if task is not None:
            self._assign(flow, task, now_s, final=True, tid=owner.tid)

    def rescan(self, now_s: float, full: bool = False) -> None:
        """Refresh the inode index; sockets gained by a newer process move to it."""
        self.last_rescan_s = now_s
        for _pid, inode in self.inodes.refresh(full=full):
            for flow in self.inode_flows.get(inode, ()):
                if flow.owner is None or flow.state not in (FlowState.OWNED, FlowState.PROVISIONAL):
                    continue
                holder = self.inodes.holder(inode)
                if holder is not None and holder != flow.owner.tgid:
                    task = self.registry.task(holder)
                    if task is not None:
                        log.debug("%s moves to pid %d", flow.describe(), holder)
                        self._assign(flow, task, now_s, final=True)

    def _retry(self, flow: Flow, now_s: float) -> None:
        delay = min(FIRST_RETRY_S * (2 ** min(flow.lookups, 12)), MAX_RETRY_S)
        flow.next_lookup_s = now_s + delay
        if flow.state == FlowState.NEW:
            flow.state = FlowState.PENDING
        heapq.heappush(self.pending, (flow.next_lookup_s, next(self._sequence), flow))

    def owner_latency_ms(self) -> dict[str, float | int]:
        """p50, p99 and max of first packet read -> owner known over the latest new flows."""
        samples = sorted(self.owner_latencies_s)
        if not samples:
            return {"owner_latency_samples": 0}
        return {
            "owner_latency_samples": len(samples),
            "owner_latency_ms_p50": round(samples[len(samples) // 2] * 1000, 3),
            "owner_latency_ms_p99": round(
                samples[min(len(samples) - 1, len(samples) * 99 // 100)] * 1000, 3
            ),
            "owner_latency_ms_max": round(samples[-1] * 1000, 3),
        }

    def pending_count(self) -> int:
        return sum(
            1
            for due_s, _, f in self.pending
            if due_s == f.next_lookup_s
            and f.keys
            and f.state in (FlowState.PENDING, FlowState.PROVISIONAL)
        )

    def _identity(self, flow: Flow) -> tuple[int, bytes, int, bytes, int]:
        if flow.proto == PROTO_UDP:
            return (flow.proto, flow.local_addr, flow.local_port, b"", 0)
        return (flow.proto, flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port)

    def _kernel_owner(self, flow: Flow, now_s: float) -> KernelOwner | None:
        """The kernel's last record of the flow, unless it is older than the packets that
        wait for an owner by more than KERNEL_RECORD_STALE_S (UDP: the port's earlier
        socket's record, its new socket's not drained yet: sock_diag is asked instead)."""
        assert self.kernel is not None
        owner = self.kernel.owner_of(flow)
        if owner is None or flow.proto != PROTO_UDP:
            return owner
        since_s = flow.waiting_since_s or now_s
        if wall_time_s(owner.time_ns) < since_s - KERNEL_RECORD_STALE_S:
            return None
        return owner

    def _finished_kernel_owner(self, flow: Flow, now_s: float) -> TaskInfo | None:
        """The socket is gone and nobody holds it: the finished process the kernel named.

        Its packets were sent before it exited and seen after its task was
        finished (``TaskRegistry.late_task_named_by_kernel``).
        """
        if self.kernel is None or not flow.pending_packets:
            # No packet waits: nothing to give it, and taking it back would hand it
            # the packets of the port's next holder.
            return None
        owner = self._kernel_owner(flow, now_s)
        if owner is None:
            return None
        return self.registry.late_task_named_by_kernel(owner.tgid, owner.time_ns)

    def _remembered_owner(self, flow: Flow, now_s: float) -> TaskInfo | None:
        entry = self.remembered.get(self._identity(flow))
        if entry is None:
            return None
        task, expires_s = entry
        if expires_s < now_s or task.exited:
            return None
        return task

    def _resolve(self, flow: Flow, now_s: float) -> None:
        flow.lookups += 1
        if self.kernel is not None:
            owner = self._kernel_owner(flow, now_s)
            if owner is not None:
                task = self.registry.task_named_by_kernel(owner.tgid, owner.comm, owner.time_ns)
                if task is not None:
                    self.kernel_finds += 1
                    self._assign(flow, task, now_s, final=True, tid=owner.tid)
                    return
        self.lookups += 1
        sock = self._lookup(flow)
        if sock is None or sock.inode == 0:
            # Gone (closed, TIME_WAIT) or not yet accept()ed: a remembered owner, else retry.
            if sock is None:
                self.not_found += 1
            task = (
                self._remembered_owner(flow, now_s)
                or self._search_endpoints(flow, now_s)
                or self._finished_kernel_owner(flow, now_s)
            )
            if task is not None:
                self._assign(flow, task, now_s, final=True)
            else:
                self._retry(flow, now_s)
            return
        listener = flow.proto != PROTO_UDP and sock.state == TcpState.LISTEN
        pid = self._holder(sock.inode)
        if pid is None:
            self.misses += 1
            self._retry(flow, now_s)
            return
        task = self.registry.task(pid)
        if task is None:
            self._retry(flow, now_s)
            return
        flow.uid = sock.uid
        if task.uid < 0:
            task.uid = sock.uid
            task.touch()
        if listener:
            # The SYN reached the listener; the connection's own socket comes later.
            self._assign(flow, task, now_s, final=False)
            self._retry(flow, now_s)
            return
        if flow.inode and flow.inode != sock.inode:
            self._unlink_inode(flow)
        flow.inode = sock.inode
        self.inode_flows.setdefault(sock.inode, []).append(flow)
        self._assign(flow, task, now_s, final=True)

    def _search_endpoints(self, flow: Flow, now_s: float) -> TaskInfo | None:
        """The owner of a socket sock_diag no longer knows, among recently started processes.

        A short-lived process's connection may be over (TIME_WAIT, inode 0) before
        its first packet is even read; the process may still hold the socket.  The
        newest processes are asked for the names of their sockets, each socket once.
        """
        if now_s - flow.first_seen_s > ENDPOINT_SEARCH_FOR_S or not flow.snd_packs:
            # Only a socket that sent can have been closed by a process we can still find.
            return None
        self._refresh()
        procfs = self.procfs
        earliest_ticks = (
            flow.first_seen_s - ENDPOINT_SEARCH_WINDOW_S - procfs.boot_time_s
        ) * procfs.clock_ticks_per_s
        candidates = sorted(
            (pid for pid, ticks in self.inodes.pid_start_ticks.items() if ticks >= earliest_ticks),
            key=lambda pid: self.inodes.pid_start_ticks[pid],
            reverse=True,
        )
        for pid in candidates:
            unknown = {}
            for inode in self.inodes.pid_inodes.get(pid, ()):
                if inode not in self.endpoints and inode not in self.inode_flows:
                    unknown[inode] = 0
            if unknown:
                try:
                    descriptors = procfs.socket_inodes(pid)
                    named = socket_endpoints(
                        pid, {i: descriptors[i] for i in unknown if i in descriptors}
                    )
                except (ProcessGone, ProcAccessDenied):
                    continue
                for inode in unknown:
                    self.endpoints[inode] = named.get(inode)
                while len(self.endpoints) > ENDPOINT_CACHE_MAX:
                    self.endpoints.popitem(last=False)
            for inode in self.inodes.pid_inodes.get(pid, ()):
                endpoint = self.endpoints.get(inode)
                if endpoint is not None and self._endpoint_matches(endpoint, flow):
                    task = self.registry.task(pid)
                    if task is not None:
                        self.endpoint_finds += 1
                        return task
        return None

    def _endpoint_matches(self, endpoint: SocketEndpoint, flow: Flow) -> bool:
        """Whether a socket named by its process is the flow's (by local address and port)."""
        return (
            endpoint.protocol == flow.proto
            and endpoint.local_port == flow.local_port
            and endpoint.local_addr in (flow.local_addr, bytes(len(endpoint.local_addr)))
        )

    def _lookup(self, flow: Flow) -> SocketInfo | None:
        remote_addr = flow.remote_addr
        return self.sockdiag.lookup(
            flow.proto, flow.local_addr, flow.local_port, remote_addr, flow.remote_port
        )

    def _refresh(self) -> bool:
        """An incremental /proc refresh, unless one ran very recently."""
        now = time.monotonic()
        if now - self.last_refresh_monotonic_s < REFRESH_MIN_INTERVAL_S:
            return False
        self.last_refresh_monotonic_s = now
        self.inodes.refresh(budget_s=FULL_SCAN_STEP_S)
        return True

    def _holder(self, inode: int) -> int | None:
        pid = self.inodes.holder(inode)
        if pid is not None:
            return pid
        self._refresh()
        pid = self.inodes.holder(inode)
        if pid is not None:
            return pid
        scanning = bool(self.inodes.full_scan_queue)
        if scanning or time.monotonic() - self.inodes.last_full_scan_s >= FULL_SCAN_MIN_INTERVAL_S:
            self.inodes.full_scan_step(FULL_SCAN_STEP_S)
            pid = self.inodes.holder(inode)
        return pid

    def _assign(self, flow: Flow, task: TaskInfo, now_s: float, final: bool, tid: int = 0) -> None:
        """Give the flow to task (and thread tid, if the kernel named it); its unsettled
        counters (held while unowned) go along."""
        if flow.owner is None and flow.state in (FlowState.NEW, FlowState.PENDING):
            self.owner_latencies_s.append(max(0.0, time.time() - flow.first_seen_s))
        flow.owner = task
        flow.tid = tid
        flow.state = FlowState.OWNED if final else FlowState.PROVISIONAL
        flow.waiting_since_s = 0.0
        if flow.pending_packets:
            task.add(flow.proto == PROTO_UDP, flow.take_pending(), now_s, tid)
        if final:
            self.remembered[self._identity(flow)] = (task, now_s + REMEMBER_OWNERS_S)
            self.remembered.move_to_end(self._identity(flow))
            while len(self.remembered) > REMEMBER_OWNERS_MAX:
                self.remembered.popitem(last=False)

    # -- tasks and flows going away ---------------------------------------------

    def _owners_finished(self, tasks: list[TaskInfo], now_s: float) -> None:
        """The registry finished these processes: their flows look for a new holder."""
        for flow in self.flows.all_flows():
            owner = flow.owner
            if owner is not None and owner.exited:
                flow.owner = None
                flow.state = FlowState.PENDING
                self._retry(flow, now_s)

    def _unlink_inode(self, flow: Flow) -> None:
        flows = self.inode_flows.get(flow.inode)
        if flows is not None:
            if flow in flows:
                flows.remove(flow)
            if not flows:
                del self.inode_flows[flow.inode]

    def _drop(self, flow: Flow) -> None:
        self._unlink_inode(flow)
        self.flows.remove(flow)

    def forget_flow(self, flow: Flow) -> None:
        """Remove a flow for good (garbage collection); its counters are settled already."""
        if flow.owner is None and flow.pending_packets:
            self.flows.write_off(flow)
        self._drop(flow)
        flow.state = FlowState.ORPHANED
