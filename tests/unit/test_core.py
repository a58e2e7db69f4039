"""The counting stages without root: flows, owner resolution, the sweep, the exit list.

Fakes stand in for sock_diag and /proc so every owner, start time and inode is
chosen by the test; the ground truth is the packets the test feeds in.
"""

from __future__ import annotations

import socket
import time

import pytest

from netatopd.counting import count_packets
from netatopd.ebpf import FlowOwner, OwnerKind
from netatopd.exitlist import ExitJournal, ExitList
from netatopd.flows import Flow, FlowTable
from netatopd.netlink.sockdiag import SocketInfo
from netatopd.ownership import InodeIndex, Resolver, Sweeper, TaskRegistry
from netatopd.parse import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Direction
from netatopd.procfs import ProcessGone, ProcStat
from netatopd.tasks import ExitedTask, TaskInfo, TaskTable

LOCAL = bytes([192, 0, 2, 1])
REMOTE = bytes([198, 51, 100, 7])
HZ = 100
BOOT_S = 1_700_000_000.0


def key(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


class FakeProcFS:
    """Processes as the test declares them: pid -> (comm, start ticks, {inode: fd})."""

    boot_time_s = BOOT_S
    clock_ticks_per_s = HZ
    proc_root = "/proc"

    def __init__(self) -> None:
        self.procs: dict[int, tuple[str, int, dict[int, int]]] = {}
        self.threads: dict[int, int] = {}

    def add(self, pid: int, comm: str, start_ticks: int, inodes: dict[int, int]) -> None:
        self.procs[pid] = (comm, start_ticks, inodes)

    def _get(self, pid: int) -> tuple[str, int, dict[int, int]]:
        if pid not in self.procs:
            raise ProcessGone(pid)
        return self.procs[pid]

    def pids(self) -> list[int]:
        return sorted(self.procs)

    def stat(self, pid: int) -> ProcStat:
        comm, start, _ = self._get(pid)
        return ProcStat(pid, comm, "S", 1, self.threads.get(pid, 1), start)

    def btime(self, start_time_ticks: int) -> int:
        return int(BOOT_S + start_time_ticks // HZ)

    def fd_count(self, pid: int) -> int:
        return len(self._get(pid)[2])

    def socket_inodes(self, pid: int) -> dict[int, int]:
        return dict(self._get(pid)[2])

    def cmdline(self, pid: int) -> str:
        return self._get(pid)[0] + " --flag"

    def uid(self, pid: int) -> int:
        self._get(pid)
        return 1000


class FakeSockDiag:
    """sock_diag answers by (protocol, local port)."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[int, int], SocketInfo] = {}

    def add(
        self, protocol: int, local_port: int, inode: int, state: int = 1, remote_port: int = 9
    ) -> None:
        self.sockets[(protocol, local_port)] = SocketInfo(
            socket.AF_INET, protocol, state, LOCAL, local_port, REMOTE, remote_port, inode, 1000, 1
        )

    def lookup(
        self,
        protocol: int,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
    ) -> SocketInfo | None:
        return self.sockets.get((protocol, local_port))

    def dump(self, protocol: int, family: int, states: int = 0) -> list[SocketInfo]:
        return [s for s in self.sockets.values() if s.protocol == protocol and s.family == family]


class World:
    def __init__(self, **resolver_options: float) -> None:
        self.procfs = FakeProcFS()
        self.sockdiag = FakeSockDiag()
        self.flows = FlowTable(max_flows=100)
        self.tasks = TaskTable(max_tasks=10)
        self.exit_list = ExitList(lifetime_s=15)
        self.journal = ExitJournal()
        self.registry = TaskRegistry(self.tasks, self.procfs, self.exit_list, self.journal)  # type: ignore[arg-type]
        self.resolver = Resolver(
            self.flows,
            self.registry,
            self.sockdiag,  # type: ignore[arg-type]
            **resolver_options,
        )
        self.sweeper = Sweeper(self.flows, self.registry, self.resolver, self.sockdiag)  # type: ignore[arg-type]

    def feed(self, packets: list[tuple[int, int, bytes, int]], now_s: float | None = None) -> None:
        now = time.time() if now_s is None else now_s
        self.flows.charge(count_packets(packets), now)
        self.resolver.settle(now)
        self.resolver.resolve(now)


def test_loopback_packet_is_a_send_and_a_receive() -> None:
    flows = FlowTable()
    k = key(LOCAL, LOCAL, 40000, 80)
    flows.charge(count_packets([(Direction.LOOPBACK, PROTO_TCP, k, 100)]), 1.0)
    assert flows.count == 2
    sender = flows.tcp_flow(LOCAL, 40000, LOCAL, 80)
    receiver = flows.tcp_flow(LOCAL, 80, LOCAL, 40000)
    assert sender is not None and receiver is not None
    assert sender is not receiver
    assert (sender.local_port, sender.remote_port, sender.snd_packs, sender.snd_bytes) == (
        40000,
        80,
        1,
        100,
    )
    assert (receiver.local_port, receiver.remote_port, receiver.rcv_packs, receiver.rcv_bytes) == (
        80,
        40000,
        1,
        100,
    )
    assert flows.totals.tcp_sent == 1 and flows.totals.tcp_received == 1


def test_both_directions_of_a_connection_are_one_flow() -> None:
    flows = FlowTable()
    out = key(LOCAL, REMOTE, 40000, 443)
    back = key(REMOTE, LOCAL, 443, 40000)
    flows.charge(
        count_packets(
            [(Direction.SENT, PROTO_TCP, out, 60), (Direction.RECEIVED, PROTO_TCP, back, 1500)]
        ),
        1.0,
    )
    assert flows.count == 1
    flow = flows.tcp_flow(LOCAL, 40000, REMOTE, 443)
    assert flow is not None
    assert flow.keys == (out, back)
    assert flow.take_pending() == (1, 60, 1, 1500)


def test_udp_flows_are_local_endpoints_and_icmp_is_only_counted() -> None:
    flows = FlowTable()
    packets = [
        (Direction.RECEIVED, PROTO_UDP, key(REMOTE, LOCAL, 5000 + i, 53), 80) for i in range(5)
    ] + [(Direction.SENT, PROTO_ICMP, b"", 70)]
    flows.charge(count_packets(packets), 1.0)
    assert flows.count == 1
    local: Flow | None = flows.udp_flow(LOCAL, 53)
    assert local is not None and local.take_pending() == (0, 0, 5, 400)
    assert flows.totals.icmp_sent == 1 and flows.totals.icmp_received == 0


def test_flow_cap_refuses_and_counts_unidentified() -> None:
    flows = FlowTable(max_flows=3)
    packets = [
        (Direction.RECEIVED, PROTO_UDP, key(REMOTE, LOCAL, 9, 2000 + i), 50) for i in range(10)
    ]
    flows.charge(count_packets(packets), 1.0)
    assert flows.count == 3
    assert flows.overflow == 7
    assert flows.totals.udp_received_unidentified == 7


def test_owner_found_and_counters_settled_exactly() -> None:
    w = World()
    w.procfs.add(100, "client", 500, {7001: 3})
    w.sockdiag.add(PROTO_TCP, 40000, 7001)
    out = key(LOCAL, REMOTE, 40000, 443)
    back = key(REMOTE, LOCAL, 443, 40000)
    w.feed(
        [(Direction.SENT, PROTO_TCP, out, 60)] * 3
        + [(Direction.RECEIVED, PROTO_TCP, back, 1000)] * 2
    )
    task = w.tasks.get(100)
    assert task is not None
    assert task.counters == [3, 180, 2, 2000, 0, 0, 0, 0]
    assert (task.command, task.btime, task.uid) == ("client", int(BOOT_S + 5), 1000)
    w.feed([(Direction.SENT, PROTO_TCP, out, 60)])
    assert task.counters[:2] == [4, 240]


def test_newest_holder_of_a_shared_socket_wins() -> None:
    w = World()
    w.procfs.add(100, "parent", 500, {7001: 3})
    w.procfs.add(101, "child", 900, {7001: 3})
    w.sockdiag.add(PROTO_TCP, 8080, 7001)
    w.feed([(Direction.RECEIVED, PROTO_TCP, key(REMOTE, LOCAL, 5555, 8080), 100)])
    assert w.tasks.get(101) is not None and w.tasks.get(101).counters[2:4] == [1, 100]  # type: ignore[union-attr]
    assert w.tasks.get(100) is None


def test_socket_moves_to_a_newer_process_on_rescan() -> None:
    w = World(rescan_interval_s=0.0)
    w.procfs.add(100, "parent", 500, {7001: 3})
    w.sockdiag.add(PROTO_TCP, 8080, 7001)
    inbound = key(REMOTE, LOCAL, 5555, 8080)
    w.feed([(Direction.RECEIVED, PROTO_TCP, inbound, 100)])
    w.procfs.add(101, "child", 900, {7001: 3})  # fork: the child holds the socket too
    w.resolver.rescan(time.time())
    w.feed([(Direction.RECEIVED, PROTO_TCP, inbound, 100)] * 2)
    assert w.tasks.get(100).counters[2:4] == [1, 100]  # type: ignore[union-attr]
    assert w.tasks.get(101).counters[2:4] == [2, 200]  # type: ignore[union-attr]


def test_reused_pid_does_not_inherit_counters() -> None:
    w = World()
    w.procfs.add(100, "old", 500, {7001: 3})
    w.sockdiag.add(PROTO_UDP, 5353, 7001)
    w.feed([(Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 90)] * 4)
    old = w.tasks.get(100)
    assert old is not None and old.counters[4:6] == [4, 360]
    # pid 100 exits and a new process gets the same pid (another start time)
    w.procfs.add(100, "new", 7000, {8001: 4})
    w.sockdiag.add(PROTO_UDP, 6000, 8001)
    w.feed([(Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 6000, 53), 90)])
    new = w.tasks.get(100)
    assert new is not None and new is not old
    assert new.command == "new" and new.counters[4:6] == [1, 90]
    exited = w.exit_list.pop_oldest()
    assert exited is not None and (exited.tgid, exited.command, exited.counters[4:6]) == (
        100,
        "old",
        (4, 360),
    )


def test_finishing_a_task_fills_exit_list_and_journal_and_frees_its_flows() -> None:
    """TaskRegistry.finish is the one way out: exit list, journal, flows pending again."""
    w = World()
    w.registry.clock = lambda: 1_700_000_500.0
    w.procfs.add(100, "worker", 500, {7001: 3})
    w.sockdiag.add(PROTO_UDP, 5353, 7001)
    w.feed([(Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 90)] * 2)
    task = w.tasks.get(100)
    flow = w.flows.udp_flow(LOCAL, 5353)
    assert task is not None and flow.owner is task
    del w.procfs.procs[100]  # the process ends
    w.registry.finish([task], time.time())
    assert task.exited and w.tasks.get(100) is None
    assert flow.owner is None and w.resolver.pending_count() == 1
    (exited,) = w.exit_list.snapshot()
    assert (exited.tgid, exited.exit_time_s, exited.counters[4:6]) == (
        100,
        1_700_000_500.0,
        (2, 180),
    )
    assert w.journal.since(0) == [(1, exited)]
    # a late kernel record of the finished process does not bring it back
    assert w.registry.task_named_by_kernel(100, "worker") is None
    assert w.tasks.get(100) is None


class FakeHelper:
    """What KernelOwners drains: records handed in by the test, each drained once."""

    def __init__(self) -> None:
        self.records: list[FlowOwner] = []
        self.written = 0

    def add(self, tgid: int, port: int, time_ns: int) -> None:
        self.records.append(
            FlowOwner(PROTO_UDP, bytes(4), port, b"", 0, tgid, tgid, f"p{tgid}", time_ns,
                      OwnerKind.SEND, False)
        )  # fmt: skip
        self.written += 1

    def changes(self) -> int:
        return self.written

    def drain(self) -> list[FlowOwner]:
        records, self.records = self.records, []
        return records


def test_a_finished_owner_is_not_taken_back_for_a_flow_with_nothing_waiting() -> None:
    """A UDP port's owner ended; its record stays the port's last.  With no packet
    waiting the flow is not handed back to it, so the datagram the port's next holder
    sends later (pid 200, whose record is not in yet) is never the ended process's."""
    helper = FakeHelper()
    w = World(kernel=helper)  # type: ignore[arg-type]
    now = time.time()
    w.procfs.add(100, "first", 500, {})
    helper.add(100, 5353, time.monotonic_ns() - 2_000_000_000)
    sent = (Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 90)
    w.feed([sent], now - 2)
    first = w.tasks.get(100)
    flow = w.flows.udp_flow(LOCAL, 5353)
    assert first is not None and flow.owner is first
    del w.procfs.procs[100]
    w.registry.finish([first], now - 1)  # ended a second ago; its flow looks again
    w.resolver.resolve(now, everything=True)
    assert flow.owner is None and first.exited
    # The next holder of the port: its socket is seen by sock_diag, its record not yet.
    w.procfs.add(200, "second", 900, {7200: 3})
    w.sockdiag.add(PROTO_UDP, 5353, 7200)
    w.feed([sent], now + 0.1)
    w.resolver.settle(now + 0.1)
    assert first.counters[4:6] == [1, 90]
    second = w.tasks.get(200)
    assert second is not None and flow.owner is second and second.counters[4:6] == [1, 90]


def test_a_ports_earlier_record_does_not_name_the_owner_of_its_later_packets() -> None:
    """Pid 100 sent from UDP port 5353 and ended; 3 s later pid 200 sends from the same
    port and is gone before its packet is looked up, its record not drained yet (the
    packet was read before the helper wrote it).  pid 100's record, older than the
    packet by more than KERNEL_RECORD_STALE_S, names no one: the packet waits, and
    pid 200's record, once drained, takes it."""
    helper = FakeHelper()
    w = World(kernel=helper)  # type: ignore[arg-type]
    now = time.time()
    w.procfs.add(100, "first", 500, {})
    helper.add(100, 5353, time.monotonic_ns() - 4_000_000_000)
    sent = (Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 90)
    w.feed([sent], now - 4)
    first = w.tasks.get(100)
    flow = w.flows.udp_flow(LOCAL, 5353)
    assert first is not None and flow.owner is first
    del w.procfs.procs[100]
    w.registry.finish([first], now - 3.9)
    w.feed([sent], now)  # pid 200's datagram; pid 200 is gone already, not in sock_diag
    w.resolver.resolve(now + 0.01, everything=True)
    assert flow.owner is None and first.counters[4:6] == [1, 90]
    w.procfs.add(200, "second", 900, {})
    helper.add(200, 5353, time.monotonic_ns())
    w.resolver.resolve(now + 0.02)
    second = w.tasks.get(200)
    assert second is not None and flow.owner is second and second.counters[4:6] == [1, 90]
    assert first.counters[4:6] == [1, 90]


def test_task_of_a_process_gone_before_it_was_looked_at_comes_from_the_kernel() -> None:
    w = World()
    # Its start time is unknown: the time the kernel saw it stands for it in btime
    # (5 s after boot: BOOT_S + 5), never 0, which every such process would share.
    task = w.registry.task_named_by_kernel(4242, "brief", seen_monotonic_ns=5_000_000_000)
    assert task is not None and (task.tgid, task.command, task.btime) == (4242, "brief", BOOT_S + 5)
    assert w.registry.task(4242) is None  # not in /proc
    assert w.registry.sweep(time.time()) == [task]  # the next sweep finishes it
    assert [e.tgid for e in w.exit_list.snapshot()] == [4242]


def test_a_kernel_record_names_the_process_it_saw_not_a_later_one_on_its_pid() -> None:
    """Issue 12: a short-lived process's pid goes to a new process before the helper's
    record of it is read; the record's packets stay the ended process's."""
    w = World()
    w.procfs.add(100, "client", 500, {})  # started 5 s after boot
    old = w.registry.task(100)
    assert old is not None
    seen_ns = 6_000_000_000  # the kernel saw it 6 s after boot
    del w.procfs.procs[100]
    w.procfs.add(100, "newcomer", 700, {})  # 7 s after boot: the pid came round
    assert w.registry.task_named_by_kernel(100, "client", seen_ns) is old
    assert w.tasks.get(100) is old and not old.exited  # finished by the next reap
    assert w.registry.reap(time.time(), 10) == [old]
    # The newcomer has a task now: a record of the ended process names no one.
    newcomer = w.registry.task(100)
    assert newcomer is not None and newcomer is not old
    assert w.registry.task_named_by_kernel(100, "client", seen_ns) is None
    # A record made after the newcomer started is the newcomer's.
    assert w.registry.task_named_by_kernel(100, "newcomer", 8_000_000_000) is newcomer
    # Nothing in the table for a pid whose later process is not known yet: the ended
    # process's task is made from the record, never the newcomer's.
    w.procfs.add(200, "newcomer", 700, {})
    gone = w.registry.task_named_by_kernel(200, "brief", seen_ns)
    assert gone is not None and (gone.command, gone.start_time_ticks) == ("brief", -1)


def test_before_finish_hooks_run_once_the_processes_are_seen_gone() -> None:
    """Issue 12: the kernel path reads its sums in the hook, after the reap saw the
    process gone and before its task leaves; a task the hook's pass finished is not
    finished twice."""
    w = World()
    w.procfs.add(100, "client", 500, {})
    w.procfs.add(101, "other", 500, {})
    client, other = w.registry.task(100), w.registry.task(101)
    assert client is not None and other is not None
    seen: list[tuple[list[int], bool]] = []

    def hook(tasks: list[TaskInfo]) -> None:
        seen.append(([t.tgid for t in tasks], client.exited))
        if len(seen) == 1:
            w.registry.finish([other], time.time())  # finished during the hook's pass

    w.registry.before_finish.append(hook)
    del w.procfs.procs[100]
    del w.procfs.procs[101]
    assert w.registry.reap(time.time(), 10) == [client, other]
    assert seen[0] == ([100, 101], False)  # told before the tasks were finished
    assert sorted(e.tgid for e in w.exit_list.snapshot()) == [100, 101]  # once each


def test_flow_without_owner_is_written_off_as_unidentified() -> None:
    w = World(unowned_limit_s=60)
    k = key(REMOTE, LOCAL, 9999, 7777)
    w.feed([(Direction.RECEIVED, PROTO_UDP, k, 100)] * 3, now_s=1000.0)
    assert w.flows.count == 1 and w.flows.totals.udp_received_unidentified == 0
    w.resolver.resolve(1061.0, everything=True)
    assert w.flows.count == 0
    assert w.flows.totals.udp_received_unidentified == 3
    assert w.resolver.unowned_written_off == 1


def test_listener_gives_a_provisional_owner_until_the_socket_is_accepted() -> None:
    w = World()
    w.procfs.add(100, "server", 500, {7001: 3})
    w.sockdiag.add(PROTO_TCP, 8080, 7001, state=10, remote_port=0)  # only the listener
    inbound = key(REMOTE, LOCAL, 5555, 8080)
    w.feed([(Direction.RECEIVED, PROTO_TCP, inbound, 60)])
    assert w.tasks.get(100).counters[2:4] == [1, 60]  # type: ignore[union-attr]
    assert w.resolver.pending_count() == 1
    w.procfs.add(100, "server", 500, {7001: 3, 7002: 4})
    w.sockdiag.add(PROTO_TCP, 8080, 7002)  # accepted: established socket with its inode
    w.resolver.resolve(time.time(), everything=True)
    assert w.resolver.pending_count() == 0
    accepted = w.flows.tcp_flow(LOCAL, 8080, REMOTE, 5555)
    assert accepted is not None and accepted.inode == 7002


def test_sweep_moves_finished_processes_to_the_exit_list() -> None:
    w = World()
    w.procfs.add(100, "short", 500, {7001: 3})
    w.sockdiag.add(PROTO_UDP, 5353, 7001)
    w.feed([(Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 90)] * 2)
    del w.procfs.procs[100]
    w.sweeper.run(time.time())
    assert w.tasks.get(100) is None
    entries = w.exit_list.snapshot()
    assert [(e.tgid, e.command, e.cmdline, e.uid, e.counters) for e in entries] == [
        (100, "short", "short --flag", 1000, (0, 0, 0, 0, 2, 180, 0, 0))
    ]


def test_sweep_drops_closed_tcp_and_idle_udp_flows() -> None:
    w = World()
    w.procfs.add(100, "p", 500, {7001: 3, 7002: 4})
    w.sockdiag.add(PROTO_TCP, 40000, 7001)
    w.sockdiag.add(PROTO_UDP, 5353, 7002)
    old = time.time() - 100
    w.feed(
        [
            (Direction.SENT, PROTO_TCP, key(LOCAL, REMOTE, 40000, 443), 60),
            (Direction.SENT, PROTO_UDP, key(LOCAL, REMOTE, 5353, 53), 60),
        ],
        now_s=old,
    )
    assert w.flows.count == 2
    del w.sockdiag.sockets[(PROTO_TCP, 40000)]  # the connection closed
    w.sweeper.run(time.time())
    assert w.flows.count == 0  # TCP: not ESTABLISHED any more; UDP on port 5353 > 1024: idle 100 s


def test_exit_list_order_and_expiry() -> None:
    exits = ExitList(lifetime_s=15)
    for pid in (1, 2, 3):
        exits.entries.append((ExitedTask(pid, 0, "x", "", -1, 0, 0, 0, (0,) * 8), 100.0 + pid))
    assert exits.pop_oldest().tgid == 1  # type: ignore[union-attr]
    assert exits.expire(now_monotonic_s=117.5) == 1  # entry 2 added at 102 is 15.5 s old
    assert [e.tgid for e in exits.snapshot()] == [3]
    assert exits.expired == 1


def test_task_cap_counts_overflow() -> None:
    tasks = TaskTable(max_tasks=2)
    assert tasks.admit(TaskInfo(1, 0, 0, "a")) and tasks.admit(TaskInfo(2, 0, 0, "b"))
    assert not tasks.admit(TaskInfo(3, 0, 0, "c"))
    assert tasks.overflow == 1 and len(tasks) == 2


@pytest.mark.parametrize("udp,index", [(False, 0), (True, 4)])
def test_task_add_puts_counters_in_struct_taskcount_order(udp: bool, index: int) -> None:
    task = TaskInfo(1, 0, 0, "a")
    task.add(udp, (1, 2, 3, 4), 5.0)
    expected = [0] * 8
    expected[index : index + 4] = [1, 2, 3, 4]
    assert task.counters == expected and task.first_activity_s == 5.0


def test_budgeted_refresh_goes_on_where_it_stopped() -> None:
    """A refresh with a budget looks at one process at least: processes not seen
    before first, newest first, then a pass over the others that the next call
    goes on with.

    Ground truth: the fake /proc's holdings (pid -> inodes), declared here.
    """
    procfs = FakeProcFS()
    for pid in range(200, 210):
        procfs.add(pid, f"p{pid}", pid * 10, {9000 + pid: 3})
    index = InodeIndex(procfs)  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    for _ in range(10):
        step = index.refresh(budget_s=0.0)  # spent at once: one process a call
        assert len(step) == 1
        seen.extend(step)
    assert seen == [(pid, 9000 + pid) for pid in range(209, 199, -1)]
    assert index.refresh_queue == []
    procfs.add(300, "late", 3000, {9300: 4})
    assert index.refresh(budget_s=0.0) == [(300, 9300)]  # a new pass: the newest first
    assert index.holder(9300) == 300 and index.holder(9205) == 205
    # A process whose descriptor count changed is found by the pass, in its turn.
    procfs.add(203, "p203", 2030, {9203: 3, 9999: 5})
    steps = [index.refresh(budget_s=0.0) for _ in range(11)]
    assert [step for step in steps if step] == [[(203, 9999)]]
    assert steps.index([(203, 9999)]) == 7  # after 300 and 209..204
    # A process that starts meanwhile comes before the rest of the pass.
    procfs.add(301, "later", 3010, {9301: 4})
    assert index.refresh(budget_s=0.0) == [(301, 9301)]
    # Unbudgeted: one whole pass; nothing new to find.
    assert index.refresh() == []
    assert index.refresh_queue == []


def test_owner_latency_is_first_packet_read_to_first_owner() -> None:
    """STATUS's owner_latency_ms_*: for each new flow, from the time its first packet
    was counted (the batch time) to the moment it got its first owner.

    Ground truth: the batch times given to feed(); one flow found at once (its
    first packet counted 20 ms "ago"), one only when its process appears.
    """
    w = World()
    assert w.resolver.owner_latency_ms() == {"owner_latency_samples": 0}
    w.procfs.add(100, "client", 500, {7001: 3})
    w.sockdiag.add(PROTO_TCP, 40000, 7001)
    w.feed([(Direction.SENT, PROTO_TCP, key(LOCAL, REMOTE, 40000, 443), 60)], time.time() - 0.02)
    (first,) = w.resolver.owner_latencies_s
    assert 0.02 <= first < 1.0
    w.sockdiag.add(PROTO_TCP, 40001, 7002)  # the socket exists, no process holds it yet
    seen_s = time.time() - 0.5
    w.feed([(Direction.SENT, PROTO_TCP, key(LOCAL, REMOTE, 40001, 443), 60)], seen_s)
    assert len(w.resolver.owner_latencies_s) == 1  # pending: no owner, no sample
    w.procfs.add(101, "late", 600, {7002: 4})
    time.sleep(0.01)  # past REFRESH_MIN_INTERVAL_S: the retry looks at /proc again
    w.resolver.resolve(time.time(), everything=True)
    assert w.tasks.get(101) is not None
    assert len(w.resolver.owner_latencies_s) == 2
    assert 0.5 <= w.resolver.owner_latencies_s[1] < 1.5
    # A flow given to another owner later (a fork) adds no sample.
    w.procfs.add(102, "child", 700, {7002: 4})
    w.resolver.rescan(time.time())
    figures = w.resolver.owner_latency_ms()
    assert figures["owner_latency_samples"] == 2
    assert figures["owner_latency_ms_max"] >= 500


def test_reap_finishes_gone_processes_a_few_at_a_time() -> None:
    # Between sweeps the daemon calls reap every 0.25 s: finished processes reach the
    # exit list (and the history) within about a second, at a bounded cost a call.
    w = World()
    for pid in (11, 12, 13):
        w.procfs.add(pid, f"p{pid}", 100 + pid, {})
        assert w.registry.task(pid) is not None
    for pid in (11, 12, 13):
        del w.procfs.procs[pid]
    w.procfs.add(14, "alive", 1, {})
    assert w.registry.task(14) is not None
    assert [t.tgid for t in w.registry.reap(time.time(), limit=2)] == [11, 12]
    assert [t.tgid for t in w.registry.reap(time.time(), limit=2)] == [13]  # then 14: alive
    assert sorted(e.tgid for e in w.exit_list.snapshot()) == [11, 12, 13]
    assert list(w.tasks.by_tgid) == [14]
    w.procfs.add(14, "alive", 2, {})  # pid 14 reused by another process
    assert [t.tgid for t in w.registry.reap(time.time(), limit=10)] == [14]


def test_restored_counters_apply_to_the_same_process_only() -> None:
    w = World()
    w.procfs.add(21, "long", 300, {})
    w.procfs.add(22, "other", 400, {})
    btime_21 = w.procfs.btime(300)
    w.registry.restore({(21, btime_21): (1, 2, 3, 4, 5, 6, 7, 8), (22, 1): (9,) * 8})
    task = w.registry.task(21)
    assert task is not None and task.counters == [1, 2, 3, 4, 5, 6, 7, 8]
    other = w.registry.task(22)  # another start time than the restored (22, 1)
    assert other is not None and other.counters == [0] * 8
    assert w.registry.restored_tasks == 1
