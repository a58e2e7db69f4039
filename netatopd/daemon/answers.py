"""The daemon's answers to the control socket and the atop socket.

``Answers`` implements server.ControlBackend (probe, FORCE_GC, GETCNT_*,
LIST_*, SYNC, STATUS) and server.AtopBackend over the engine's objects; the
control and atop servers (server.ControlServer, server.AtopServer) call it
from the event loop.  STATUS is built from the registry in netatopd.status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .. import __version__
from ..procfs import ProcAccessDenied, ProcessGone
from ..protocol import COUNTER_NAMES, pack_netpertask
from ..server import AtopServer
from ..status import collect
from ..tasks import ExitedTask, TaskInfo
from .engine import Engine
from .readings import StatusReadings

SYNC_MARGIN_S = 0.02


def _record(task: TaskInfo, task_id: int | None = None) -> bytes:
    return pack_netpertask(
        task.tgid if task_id is None else task_id, task.btime, task.command, task.counters
    )


def _detail(task: TaskInfo | ExitedTask) -> dict[str, object]:
    """One object of the *_DETAIL answers (protocol.DETAIL_FIELDS)."""
    return {
        "tgid": task.tgid,
        "btime": task.btime,
        "command": task.command,
        "cmdline": task.cmdline,
        "uid": task.uid,
        "unit": task.unit,
        "container": task.container,
        "cgroup": task.cgroup,
        "first_activity": task.first_activity_s,
        "last_activity": task.last_activity_s,
        "exit_time": task.exit_time_s if isinstance(task, ExitedTask) else None,
        **dict(zip(COUNTER_NAMES, task.counters, strict=True)),
    }


def _details(tasks: Iterable[TaskInfo | ExitedTask]) -> bytes:
    return json.dumps([_detail(task) for task in tasks]).encode()


class Answers:
    """What the control socket and the atop socket are told, read from the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.atop: AtopServer | None = None  # set by the wiring when there is an atop socket

    # -- control socket ------------------------------------------------------------------

    def probe(self) -> bytes:
        return f"netatopd {__version__}".encode()

    def force_gc(self) -> object:
        """Sweep now, or as soon as the twice-a-second limit allows; the token waits for it."""
        engine = self.engine
        token = engine.sweeper.runs
        if engine.kernel_capture is not None:
            engine.drain_capture(force=True)  # known sockets' sums before tasks finish
        now_s = engine.clock.wall()
        engine.resolver.settle(now_s)
        if not engine.sweeper.force(now_s):
            engine.gc_requested = True
        return token

    def gc_done(self, token: object) -> bool:
        assert isinstance(token, int)
        return self.engine.sweeper.runs > token

    def getcnt_tgid(self, tgid: int) -> bytes | None:
        task = self.engine.tasks.get(tgid)
        return None if task is None else _record(task)

    def getcnt_pid(self, pid: int) -> bytes | None:
        """Counters of one thread; never invented.

        With the eBPF helper, a thread the kernel named as owner of a flow has its
        own counters.  Otherwise a thread is answered only when it is its process's
        single thread (then its counters are the process's); anything else is ESRCH.
        """
        engine = self.engine
        try:
            tgid = engine.procfs.tgid_of(pid)
        except (ProcessGone, ProcAccessDenied):
            # A thread that ended keeps its counters until the next sweep.
            owners = [t.tgid for t in engine.tasks.by_tgid.values() if pid in t.threads]
            if not owners:
                return None
            tgid = owners[0]
        task = engine.tasks.get(tgid)
        if task is None:
            return None
        thread = task.threads.get(pid)
        if thread is not None:
            return pack_netpertask(pid, task.btime, task.command, thread)
        try:
            if pid != tgid or engine.procfs.stat(pid).num_threads != 1:
                return None
        except (ProcessGone, ProcAccessDenied):
            return None
        return _record(task, pid)

    def pop_exited(self) -> bytes | None:
        exited = self.engine.exit_list.pop_oldest()
        if exited is None:
            return None
        return pack_netpertask(exited.tgid, exited.btime, exited.command, exited.counters)

    def pop_exited_detail(self) -> bytes | None:
        exited = self.engine.exit_list.pop_oldest()
        return None if exited is None else json.dumps(_detail(exited)).encode()

    def exit_list_length(self) -> int:
        return len(self.engine.exit_list)

    def list_tasks(self) -> bytes:
        return b"".join(_record(task) for task in self.engine.tasks.by_tgid.values())

    def list_exited(self) -> bytes:
        return b"".join(
            pack_netpertask(e.tgid, e.btime, e.command, e.counters)
            for e in self.engine.exit_list.snapshot()
        )

    def list_tasks_detail(self) -> bytes:
        return _details(self.engine.tasks.by_tgid.values())

    def list_exited_detail(self) -> bytes:
        return _details(self.engine.exit_list.snapshot())

    def start_sync(self) -> object:
        return self.engine.clock.wall()

    def sync_done(self, token: object) -> bool:
        """True once every packet captured before the SYNC request has been counted."""
        assert isinstance(token, float)
        engine = self.engine
        if engine.last_drained_s < token + 2 * engine.timeout_s + SYNC_MARGIN_S:
            if engine.kernel_capture is not None:
                engine.kernel_capture.want_sums()  # known sockets' sums too, not in 250 ms
            return False
        now_s = engine.clock.wall()
        engine.resolver.settle(now_s)
        engine.resolver.resolve(now_s, everything=True)
        return True

    def status(self) -> dict[str, object]:
        """The STATUS object (fields: netatopd.status.REGISTRY)."""
        return collect(StatusReadings(self.engine, self.atop))

    # -- atop socket ---------------------------------------------------------------------

    def atop_tasks(self) -> Iterable[TaskInfo]:
        return self.engine.tasks.by_tgid.values()
