"""The daemon's engine: every counting stage wired together, the counting pass and housekeeping.

Owns each stage's object (flow table, task table, resolver, sweeper, exit
list, exit journal, shared-table writer, history writer, the eBPF helper,
the metrics book with --metrics-listen) and the figures about them.  The
event loop (loop.EventLoop) calls
``drain_capture`` and ``housekeeping`` on every pass and asks
``seconds_until_next_work`` how long it may sleep; the control and atop
answers (answers.Answers) read the same objects.  Each pass reads the capture
lanes dry in batches; each batch is summed (counting.py), its forwarded rows
taken out (``Locality.split``), the rest charged to its flows
(``FlowTable.charge``), then new flows' owners are looked up and counters
settled into tasks.  Nothing here runs per packet.

The proc connector's events (fork, exec, exit; ``open_process_events``)
come through ``on_process_events`` (the loop polls their socket): identities
go to the ``IdentityBook``, a task's process exiting finishes it at once.

Time comes from a ``Clock`` (wall and monotonic), passed in so tests can
drive it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..capture.kernel import KernelCapture
from ..capture.lanes import CaptureLanes, LaneKind
from ..capture.links import LinkTable
from ..counting import count_fixed, count_records
from ..ebpf import EbpfUnavailable, KernelOwnership
from ..exitlist import ExitJournal, ExitList
from ..flows import FlowTable
from ..history import HistoryWriter, StoreError
from ..history.writer import SampleEntry
from ..locality import open_locality
from ..metrics import MetricsBook, parse_group_by
from ..metrics.catalogue import health_figures
from ..netlink.connector import RECEIVE_BUFFER_BYTES, ProcessEvents, ProcEventKind
from ..netlink.sockdiag import SockDiag
from ..netlink.socket import NetlinkError
from ..ownership import Resolver, Sweeper, TaskRegistry
from ..ownership.cookies import CookieResolver
from ..ownership.identities import SOURCE_KERNEL, IdentityBook
from ..ownership.namespaces import NamespaceSockets, sockets_elsewhere
from ..parse import Reject
from ..procfs import ProcError, ProcFS
from ..rundir import SafeDirectory
from ..status import ABSENT, FIELDS, collect_table
from ..table import TableWriter, table_path
from ..tasks import ExitedTask, TaskInfo, TaskRow, TaskTable
from .hold import Hold, hold_seconds
from .readings import StatusReadings

log = logging.getLogger(__name__)

# Records a read takes from one capture lane at most: enough that what a lane gathers
# during a hold is usually one read (one call of the counting functions), few enough
# that a batch's memory stays small.
BATCH_PACKETS = 8192
IDLE_WAKE_S = 1.0  # longest sleep when nothing is due
# Between sweeps, finished processes are looked for this often, this many tasks at a time
# (round robin): they reach the exit list and the history within about a second.
REAP_INTERVAL_S = 0.25
REAP_TASKS_MAX = 256  # about 16 us each: at most about 17 ms of CPU a second
RECENT_TRAFFIC_S = 5.0  # after traffic, the loop wakes every rescan interval this long
SIMULATE_EBPF_FAILURE_ENV = "NETATOPD_SIMULATE_EBPF_FAILURE"  # tests: pretend the load failed
# tests: pretend the proc connector refused (the daemon polls /proc instead).
SIMULATE_CONNECTOR_FAILURE_ENV = "NETATOPD_SIMULATE_CONNECTOR_FAILURE"
# tests: on the kernel path owners come from the eBPF helper's records alone.
SIMULATE_HELPER_OWNERS_ONLY_ENV = "NETATOPD_SIMULATE_HELPER_OWNERS_ONLY"
IDENTITY_EXPIRY_INTERVAL_S = 5.0  # identities of ended processes are dropped this often
INITIAL_NETNS_PATH = "/proc/1/ns/net"  # where the proc connector answers (default)
RESYNC_LOG_INTERVAL_S = 10.0  # at most one warning this often about lost process events
# A periodic step (reap, publish) counts as due this much early: on the kernel path it
# then runs in the wake-up of the sums read it was put in phase with (_in_read_phase).
DUE_SLACK_S = 0.001


@dataclass(frozen=True, slots=True)
class Clock:
    """Where the engine reads the time: wall (epoch seconds) and monotonic seconds."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


class KernelOwnershipFailed(Exception):
    """--ownership kernel was asked for and the eBPF helper did not load."""


def load_kernel_ownership(mode: str, capture: str = "pcap") -> tuple[KernelOwnership | None, str]:
    """The eBPF helper for --ownership auto|kernel, or None for proc; and a note for STATUS.

    With --capture kernel the helper records the sockets of every namespace,
    each by its cookie (the first source of owners there); sock_diag in each
    socket's namespace and /proc find the rest.
    """
    every_namespace = capture == "kernel"
    fallback = (
        "sock_diag in each socket's network namespace and /proc"
        if every_namespace
        else "/proc and sock_diag"
    )
    if mode == "proc":
        return None, f"{fallback} (--ownership proc)"
    try:
        if os.environ.get(SIMULATE_EBPF_FAILURE_ENV) == "1":
            raise EbpfUnavailable(f"simulated load failure ({SIMULATE_EBPF_FAILURE_ENV}=1)")
        helper = KernelOwnership.load(every_namespace=every_namespace)
    except EbpfUnavailable as err:
        if mode == "kernel":
            raise KernelOwnershipFailed(
                f"the eBPF ownership helper did not load: {err.reason}"
            ) from err
        log.warning("eBPF ownership helper not loaded (%s); owners come from /proc", err.reason)
        return None, f"{fallback}: eBPF helper not loaded: {err.reason}"
    if every_namespace:
        return helper, (
            "eBPF helper by socket cookie in every network namespace"
            " (sock_send_length, sock_recv_length), else sock_diag in the socket's"
            " namespace and /proc"
        )
    return helper, "eBPF helper (sock_send_length, sock_recv_length, inet_sock_set_state)"


def open_process_events(
    netns_path: str = INITIAL_NETNS_PATH, receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES
) -> tuple[ProcessEvents | None, str]:
    """The proc connector subscription, or None; and the source STATUS names.

    The kernel answers only in the initial network namespace: a daemon in
    another one (refused with ECONNREFUSED) opens the socket in ``netns_path``
    (--process-events-netns).  Without it, processes are known from the /proc
    sweeps (polling), and STATUS says why.
    """
    try:
        if os.environ.get(SIMULATE_CONNECTOR_FAILURE_ENV) == "1":
            simulated = f"simulated ({SIMULATE_CONNECTOR_FAILURE_ENV}=1)"
            raise NetlinkError(errno.ECONNREFUSED, simulated)
        try:
            return ProcessEvents(receive_buffer_bytes=receive_buffer_bytes), "proc connector"
        except NetlinkError as err:
            if err.errno != errno.ECONNREFUSED or not netns_path:
                raise
        try:
            events = ProcessEvents(netns_path=netns_path, receive_buffer_bytes=receive_buffer_bytes)
            return events, "proc connector"
        except (NetlinkError, OSError) as err:
            raise NetlinkError(
                getattr(err, "errno", None) or errno.EIO, f"in {netns_path}: {err}"
            ) from err
    except (NetlinkError, OSError) as err:
        log.warning("proc connector not available (%s): processes are polled in /proc", err)
        return None, f"polling /proc: proc connector: {err}"


class Engine:
    """Every counting stage wired together, the counting pass and housekeeping."""

    def __init__(
        self,
        options: argparse.Namespace,
        capture: CaptureLanes | KernelCapture,
        clock: Clock | None = None,
        run_dir: SafeDirectory | None = None,
        table_group: int | None = None,
    ) -> None:
        """run_dir: the checked, locked run directory (main.run); the shared table is
        made through it.  table_group: a gid that may read the table (--table-group)."""
        self.options = options
        self.capture = capture
        self.clock = clock = clock or Clock()
        self.timeout_s = options.capture_timeout_ms / 1000.0
        # --capture kernel: the cgroup_skb path, its flows keyed by socket cookie.
        self.kernel_capture = capture if isinstance(capture, KernelCapture) else None
        self.namespaces: NamespaceSockets | None = None
        if self.kernel_capture is not None:
            self.timeout_s = self.kernel_capture.drain_interval_s
            self.namespaces = NamespaceSockets()
        self.namespaces_elsewhere = _Elsewhere(clock.monotonic)
        self.links = LinkTable()
        self.rejects = [0] * (max(int(r) for r in Reject) + 1)
        # The table first: a run directory that cannot hold it stops the start here,
        # before anything is loaded; a later failure removes it again.
        self.table = TableWriter(
            table_path(options.run_dir),
            options.table_capacity,
            options.publish_interval_ms,
            directory=run_dir,
            group=table_group,
        )
        self.procfs = ProcFS()
        try:
            self.sockdiag = SockDiag()
            try:
                self.kernel, self.ownership_note = load_kernel_ownership(
                    options.ownership, getattr(options, "capture", "pcap")
                )
            except BaseException:
                self.sockdiag.close()
                raise
        except BaseException:
            self.table.close(unlink=True)
            raise
        self.hold = Hold(
            0.0
            if self.kernel_capture is not None  # nothing to batch: the drain interval is the batch
            else hold_seconds(options.hold_ms, self.kernel is not None),
            self.timeout_s,
            clock.monotonic,
        )
        self.flows = FlowTable(max_flows=options.max_flows)
        # Forwarded rows of each batch are taken out before the flow table sees them.
        self.locality = open_locality()
        self.tasks = TaskTable(max_tasks=options.max_tasks)
        self.exit_list = ExitList(lifetime_s=options.exit_lifetime_s)
        self.journal = ExitJournal()
        self.gc_requested = False  # a FORCE_GC waits for the twice-a-second limit
        # Identities at fork and exec, exits as they happen (the proc connector).
        self.identities = IdentityBook(
            self.procfs.proc_root, self.procfs.btime, ticks_per_s=self.procfs.clock_ticks_per_s
        )
        if self.kernel is not None and self.kernel.takes_exec:
            self.identities.source = SOURCE_KERNEL
            self.identities.exec_source = self.kernel.exec_records
        self.process_events, self.process_events_source = open_process_events(
            getattr(options, "process_events_netns", INITIAL_NETNS_PATH),
            getattr(options, "process_events_buffer_bytes", RECEIVE_BUFFER_BYTES),
        )
        self.process_events_resyncs = 0
        self.in_process_events = False  # on_process_events runs (it may drain the capture)
        self.last_resync_log_s = -RESYNC_LOG_INTERVAL_S
        self.last_identity_expiry_s = clock.monotonic()
        self.registry = TaskRegistry(
            self.tasks,
            self.procfs,
            self.exit_list,
            self.journal,
            clock=clock.wall,
            identities=self.identities,
        )
        self.registry.before_finish.append(self._before_tasks_finish)
        self._reading_sums = False  # in _drain_kernel (a finish there needs no other read)
        self.resolver: Resolver
        if self.namespaces is not None:
            self.resolver = CookieResolver(
                self.flows,
                self.registry,
                self.sockdiag,
                self.namespaces,
                unowned_limit_s=options.unowned_limit_s,
                rescan_interval_s=options.rescan_interval_ms / 1000.0,
                kernel=self.kernel,
                helper_only=os.environ.get(SIMULATE_HELPER_OWNERS_ONLY_ENV) == "1",
            )
        else:
            self.resolver = Resolver(
                self.flows,
                self.registry,
                self.sockdiag,
                unowned_limit_s=options.unowned_limit_s,
                rescan_interval_s=options.rescan_interval_ms / 1000.0,
                kernel=self.kernel,
            )
        self.sweeper = Sweeper(
            self.flows,
            self.registry,
            self.resolver,
            self.sockdiag,
            gc_interval_s=options.gc_interval_s,
            tcp_idle_s=options.tcp_idle_s,
            udp_idle_s=options.udp_idle_s,
        )
        self.publish_interval_s = options.publish_interval_ms / 1000.0
        self.last_publish_monotonic_s = 0.0
        self.packets_at_publish = -1
        self.last_packet_monotonic_s = 0.0
        self.history: HistoryWriter | None = None
        self.history_problem = "disabled (--no-history)" if options.no_history else ""
        if not options.no_history:
            try:
                self.history = HistoryWriter(
                    options.db,
                    flush_interval_s=options.flush_interval_s,
                    sample_interval_s=options.sample_interval_s or None,
                    retention_days=options.retention_days,
                )
            except StoreError as err:
                # Counting matters more than history: carry on without it, and say so.
                self.history_problem = f"disabled: {err}"
                log.error("history %s", self.history_problem)
            else:
                self._restore_running()
                self.history.start()
                self.exit_list.listeners.append(self._persist_exited)
        self.last_reap_monotonic_s = clock.monotonic()
        self.started_s = clock.wall()
        # --metrics-listen: per-group totals for Prometheus (daemon.main serves them).
        self.metrics: MetricsBook | None = None
        if options.metrics_listen:
            self.metrics = MetricsBook(
                parse_group_by(options.metrics_group_by),
                max_series=options.metrics_max_series,
                idle_drop_s=options.metrics_idle_drop_s,
                top_processes=options.metrics_top_processes,
                caps={"max_flows": options.max_flows, "max_tasks": options.max_tasks},
                started_s=self.started_s,
            )
            self.exit_list.listeners.append(self.metrics.process_finished)
        self.packets = 0
        self.batches = 0
        self.last_drained_s = 0.0  # wall time of the last read that left the ring empty
        self.errors = 0

    # -- the counting pass ---------------------------------------------------------------

    def drain_capture(self, force: bool = False) -> bool:
        """Read every capture lane dry, batch by batch, and count every packet.

        True when packets were counted: then the resolver has just looked up,
        retried and settled everything due (housekeeping need not again).
        force: the kernel path reads every socket's sums now (before tasks finish).
        """
        if self.process_events is not None and not self.in_process_events:
            # Forks and execs before these packets: their identities first.
            self.on_process_events()
        if self.kernel_capture is not None:
            return self._drain_kernel(self.kernel_capture, force)
        flows = self.flows
        split = self.locality.split
        links = self.links
        rejects = self.rejects
        wall = self.clock.wall
        counted = False
        started_s = wall()
        assert isinstance(self.capture, CaptureLanes)
        for kind, capture in self.capture.lanes:
            while True:
                batch = capture.read_batch(BATCH_PACKETS)
                count = batch.count
                if count:
                    now_s = wall()
                    if kind == LaneKind.OTHER:
                        sums = count_records(batch.records, links, rejects)
                    else:
                        sums = count_fixed(batch.records, count, kind, links, rejects)
                    split(sums)
                    flows.charge(sums, now_s)
                    self.packets += count
                    self.batches += 1
                    counted = True
                if count < BATCH_PACKETS:
                    break
        self.last_drained_s = started_s
        if counted:
            now_s = wall()
            # Owners first: the kernel may name a new holder of a flow (a port
            # reused by another process), and these packets are its.
            self.resolver.resolve(now_s)
            self.resolver.settle(now_s)
            self.last_packet_monotonic_s = self.clock.monotonic()
        return counted

    def _drain_kernel(self, capture: KernelCapture, force: bool = False) -> bool:
        """--capture kernel: when the drain interval is up (or forced), charge the
        per-socket sums (known sockets' sums wait for the sum interval unless forced)."""
        if not force and not capture.due():
            return False
        self._reading_sums = True
        try:
            return self._read_sums(capture, force)
        finally:
            self._reading_sums = False

    def _read_sums(self, capture: KernelCapture, force: bool) -> bool:
        started_s = self.clock.wall()
        packets_before = capture.packets
        sums = capture.drain(force)
        if sums is None:
            return False  # known sockets' sums left in the kernel: not everything counted
        self.last_drained_s = started_s
        if not sums:
            return False
        now_s = self.clock.wall()
        self.flows.charge_sockets(sums, now_s)
        self.packets += capture.packets - packets_before
        self.batches += 1
        self.resolver.resolve(now_s)
        self.resolver.settle(now_s)
        self.last_packet_monotonic_s = self.clock.monotonic()
        return True

    def _before_tasks_finish(self, tasks: list[TaskInfo]) -> None:
        """The kernel path: the sums still in the kernel are read and charged before
        these tasks finish (issue 12).  Their processes were seen gone before
        this read, so every packet they sent is in it; a read made before that
        look (housekeeping's) can miss a process's last packets when it exits
        between the read and the look, as it does on a loaded host."""
        if self.kernel_capture is None or self._reading_sums:
            return
        self.drain_capture(force=True)

    def on_process_events(self) -> None:
        """The proc connector has events: identities learnt, exited tasks finished now.

        Before a task is finished, what the capture holds is counted (its last
        packets are its).  After lost events, /proc is read again (resync).
        """
        events_source = self.process_events
        if events_source is None or self.in_process_events:
            return
        self.in_process_events = True
        try:
            self._process_events(events_source)
        finally:
            self.in_process_events = False

    def _process_events(self, events_source: ProcessEvents) -> None:
        try:
            events = events_source.read()
        except NetlinkError as err:
            self.errors += 1
            log.error("process events: %s", err)
            return
        self.take_exec_records()  # after the read: every exec in it has its record
        read_now = self.registry.read_execs(events)  # first: programs may end at once
        tasks = self.tasks.by_tgid
        if any(e.kind == ProcEventKind.EXIT and e.is_process and e.tgid in tasks for e in events):
            if not self.drain_capture(force=True):
                now_s = self.clock.wall()
                self.resolver.resolve(now_s)
                self.resolver.settle(now_s)
        self.registry.process_events(events, read_now)
        if events_source.take_resync():
            self.resync_processes()

    def take_exec_records(self) -> None:
        """The kernel's exec records (eBPF helper, ntp_exec) into the identity book."""
        if self.kernel is not None and self.kernel.takes_exec:
            self.identities.take_execs(self.kernel.exec_records())

    def resync_processes(self) -> None:
        """Process events were lost: finish the tasks that are gone, learn every process."""
        self.process_events_resyncs += 1
        now_monotonic_s = self.clock.monotonic()
        if now_monotonic_s - self.last_resync_log_s >= RESYNC_LOG_INTERVAL_S:
            self.last_resync_log_s = now_monotonic_s
            events = self.process_events
            log.warning(
                "process events lost (%d so far, %d overflows): /proc read again (resync %d)",
                events.lost_events if events is not None else 0,
                events.overflows if events is not None else 0,
                self.process_events_resyncs,
            )
        if self.kernel_capture is not None:
            self.drain_capture(force=True)  # known sockets' last sums before tasks finish
        now_s = self.clock.wall()
        self.registry.sweep(now_s)
        identities = self.identities
        try:
            pids = self.procfs.pids()
        except ProcError as err:
            log.warning("resync after lost process events: %s", err)
            return
        for pid in pids[: identities.max_entries]:
            if pid not in identities.known:
                identities.learn(pid)

    def seconds_until_drain(self) -> float:
        """How long the event loop may sleep before the kernel path's next drain (pcap: 1 s)."""
        if self.kernel_capture is None:
            return IDLE_WAKE_S
        return self.kernel_capture.seconds_until_drain()

    def _persist_exited(self, exited: ExitedTask) -> None:
        if self.history is not None:
            self.history.add_exited((exited,))

    def _restore_running(self) -> None:
        """Processes running now continue from the counters of their last sample."""
        assert self.history is not None
        keys: list[tuple[int, int]] = []
        procfs = self.procfs
        try:
            pids = procfs.pids()
        except ProcError as err:
            log.warning("running processes not listed (%s): counters start from zero", err)
            return
        for pid in pids:
            try:
                keys.append((pid, procfs.btime(procfs.stat(pid).start_time_ticks)))
            except Exception:  # gone, denied, unreadable: nothing to restore for it
                continue
        restored = self.history.running_counters(keys)
        self.registry.restore(restored)
        if restored:
            log.info(
                "%d running processes continue from the counters of their last sample",
                len(restored),
            )

    # -- housekeeping --------------------------------------------------------------------

    def _flows_may_go(self) -> bool:
        """True when this housekeeping pass may drop flows (a sweep or a FORCE_GC).

        Tasks finished without one (ended processes, the reap) need no read
        here: the registry's ``before_finish`` hook (``_before_tasks_finish``)
        reads the sums once their processes were seen gone, and only then.
        """
        return self.sweeper.due() or self.gc_requested

    def housekeeping(self, resolved: bool = False) -> None:
        """Everything due besides counting; resolved: drain_capture just resolved and settled."""
        now_s = self.clock.wall()
        if self.kernel_capture is not None and self._flows_may_go():
            # Known sockets' sums wait in the kernel up to --sum-interval-ms: read them
            # before a sweep drops idle flows (a task finished is read for by its hook).
            resolved = self.drain_capture(force=True) or resolved
        if not resolved or self.flows.dirty or self.flows.new:
            self.resolver.settle(now_s)
            self.resolver.resolve(now_s)
        self.registry.finish_ended(now_s)
        if self.clock.monotonic() - self.last_identity_expiry_s >= IDENTITY_EXPIRY_INTERVAL_S:
            self.last_identity_expiry_s = self.clock.monotonic()
            self.identities.expire()
            self.take_exec_records()  # kept bounded also without process events
        runs_before = self.sweeper.runs
        if self.sweeper.due():
            self.sweeper.run(now_s)
            self.gc_requested = False
            self.last_reap_monotonic_s = self._in_read_phase(
                self.clock.monotonic(), REAP_INTERVAL_S
            )
        elif self.gc_requested and self.sweeper.force(now_s):
            self.gc_requested = False
        elif self.clock.monotonic() - self.last_reap_monotonic_s >= REAP_INTERVAL_S - DUE_SLACK_S:
            self.last_reap_monotonic_s = self._in_read_phase(
                self.clock.monotonic(), REAP_INTERVAL_S
            )
            self.registry.reap(now_s, REAP_TASKS_MAX)
        if self.sweeper.runs != runs_before and isinstance(self.resolver, CookieResolver):
            self.resolver.sweep_cookie_flows(
                now_s, self.options.tcp_idle_s, self.options.udp_idle_s
            )
            if self.namespaces is not None:
                self.namespaces.refresh()  # namespaces no process is in are closed
        self.exit_list.expire()
        if self.history is not None and self.history.sample_due(now_s):
            self.history.add_samples(
                now_s,
                self.options.sample_interval_s,
                self._sample_entries(),
            )
        # Publish every interval while anything is counted, else once a second
        # (a heartbeat: readers tell a live daemon from a dead one by the update time).
        since_publish_s = self.clock.monotonic() - self.last_publish_monotonic_s
        active = self.packets != self.packets_at_publish
        if since_publish_s >= (self.publish_interval_s if active else IDLE_WAKE_S) - DUE_SLACK_S:
            self.publish()

    def seconds_until_next_work(self) -> float:
        monotonic_s = self.clock.monotonic()
        wait = min(IDLE_WAKE_S, self.sweeper.seconds_until_due())
        if self.tasks.by_tgid:
            reap_s = self.last_reap_monotonic_s + REAP_INTERVAL_S - monotonic_s
            wait = min(wait, max(0.0, reap_s))
        if self.kernel is None and monotonic_s - self.last_packet_monotonic_s < RECENT_TRAFFIC_S:
            # Flows are in use: look for processes that took sockets over (forks) promptly
            # (the eBPF helper names them itself).
            wait = min(wait, self.resolver.rescan_interval_s)
        if self.gc_requested:
            wait = min(wait, self.sweeper.seconds_until_forcible())
        if self.resolver.pending:
            wait = min(wait, max(0.0, self.resolver.pending[0][0] - self.clock.wall()))
        if self.packets != self.packets_at_publish:
            next_publish = self.last_publish_monotonic_s + self.publish_interval_s
            wait = min(wait, max(0.0, next_publish - monotonic_s))
        if self.exit_list.entries:
            oldest = self.exit_list.entries[0][1]
            wait = min(wait, max(0.0, oldest + self.exit_list.lifetime_s - monotonic_s))
        return wait

    # -- the shared table ----------------------------------------------------------------

    def rows(self) -> list[TaskRow]:
        """Every live process (and thread the kernel named), then the exit list."""
        rows = self.tasks.rows(threads=True)
        rows.extend(exited.row() for exited in self.exit_list.snapshot())
        return rows

    def publish(self) -> None:
        """Write the shared table (batched: every publish interval, never per packet)."""
        monotonic_s = self.clock.monotonic()
        self.last_publish_monotonic_s = self._in_read_phase(monotonic_s, self.publish_interval_s)
        self.packets_at_publish = self.packets
        # The same rows as self.rows(), but only the tasks touched since are packed again.
        self.table.publish_tasks(self.tasks, self.exit_list.snapshot(), self.table_figures())
        metrics = self.metrics
        if metrics is not None and metrics.due(monotonic_s):
            metrics.publish(
                self.tasks.by_tgid.values(),
                self.metric_figures(),
                monotonic_s,
                self.clock.wall(),
            )

    def _in_read_phase(self, monotonic_s: float, interval_s: float) -> float:
        """When a periodic step done now counts as done, for its next due time.

        On the kernel path: at the last read of the sums when that was less
        than interval_s ago, so the step falls due with the next read (both
        come every 250 ms by default) and the loop wakes once for both, not
        once for each (a reap, a publish and a read out of phase made three
        wake-ups where one does).  Elsewhere, and after a longer gap: now.
        (A step done within DUE_SLACK_S of the interval counts as done now: it
        must not fall due again at once.)
        """
        capture = self.kernel_capture
        if capture is None:
            return monotonic_s
        read_s = capture.read_monotonic_s
        return read_s if 0.0 <= monotonic_s - read_s < interval_s - DUE_SLACK_S else monotonic_s

    def metric_figures(self) -> dict[str, object]:
        """The STATUS figures the metrics endpoint exports (metrics.catalogue)."""
        readings = StatusReadings(self)
        figures: dict[str, object] = {}
        for name in health_figures():
            value = FIELDS[name].value(readings)
            if value is not ABSENT:
                figures[name] = value
        return figures

    def _sample_entries(self) -> list[SampleEntry]:
        """Every running process for a history sample: row, uid and where it runs."""
        return [
            (task.row(), task.uid, task.cgroup, task.unit, task.container)
            for task in self.tasks.by_tgid.values()
        ]

    def _last_counts(self) -> None:
        """Count, resolve, finish and sample everything once more (close)."""
        if self.capture.lanes:
            self.drain_capture()
        now_s = self.clock.wall()
        self.resolver.resolve(now_s)  # within its time budget: a flood must not stall the stop
        self.resolver.settle(now_s)
        self.registry.sweep(now_s)
        history = self.history
        if history is not None and history.sample_interval_s is not None:
            last_s = history.last_sample_s
            history.add_samples(
                now_s,
                now_s - last_s if last_s is not None else self.options.sample_interval_s,
                self._sample_entries(),
            )

    def table_figures(self) -> dict[str, int]:
        """The STATUS figures that have a slot in the shared table."""
        return collect_table(StatusReadings(self))

    def close(self) -> None:
        """Stop: the last counters into the table and the history, then release everything.

        Everything counted is kept: what the capture still holds is counted,
        owners are looked up once more, processes that are gone are finished
        (exit list, history) and the running ones go to the history as a last
        sample; the history writer then commits all of it before it stops.
        """
        try:
            self._last_counts()
        except Exception:  # stopping goes on: the table and the history are closed below
            log.exception("the last counts before stopping failed")
        try:
            self.publish()
        finally:
            self.table.close(unlink=True)
            if self.history is not None:
                self.history.stop()
            if self.kernel is not None:
                self.kernel.close()
            if self.namespaces is not None:
                self.namespaces.close()
            self.sockdiag.close()
            self.locality.close()
            if self.process_events is not None:
                self.process_events.close()


NAMESPACES_ELSEWHERE_INTERVAL_S = 5.0  # the libpcap path's count is taken at most this often


class _Elsewhere:
    """The network namespaces other than ours holding TCP/UDP sockets, looked at now and then.

    The libpcap path counts only the namespace it runs in; STATUS says how
    many others hold sockets (namespaces.sockets_elsewhere), taken at most
    every NAMESPACES_ELSEWHERE_INTERVAL_S.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self.taken_s: float | None = None
        self.inodes: list[int] = []

    def get(self) -> list[int]:
        now_s = self.monotonic()
        if self.taken_s is None or now_s - self.taken_s >= NAMESPACES_ELSEWHERE_INTERVAL_S:
            self.inodes = sockets_elsewhere()
            self.taken_s = now_s
        return self.inodes
