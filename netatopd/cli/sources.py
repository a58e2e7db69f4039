"""Where netatop's answers come from, and which source is asked when.

Owns the fallback policy between the three sources, and turns what each
returns into rows (rows.TaskCounts):

* the shared-memory table (table.py), read without asking the daemon: query
  and top, and the table fill of status; a table not published for a while
  counts as a stuck daemon (Unavailable);
* the control socket (client.py): status, the exit list, sync, gc, the wait
  commands, and query when the daemon publishes no table; status falls back
  to the table's copy of STATUS when the socket is not ours to use;
* the history database (netatopd.history, read-only): exited --since/--until,
  and the reports, to which ``running_now`` adds the running processes of the
  table for a window that ends now.

Also owns the sentences that say where to look instead: a daemon that does
not answer (naming the run directory, --run-dir, NETATOP_RUN_DIR and the
default), a control socket that is not ours (root or netatopd's
--control-group; exited --since works without), a finished or unknown pid
(the exit list, the history).  Called by commands and top.  Raises
Unavailable (one sentence for stderr; NoPermission for the control socket)
and lets the client's, the table's and the history's errors through to
commands.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import apsw

from .. import history, procfs
from ..client import (
    CONTROL_SOCKET_NAME,
    RUN_DIR_DEFAULT,
    ControlClient,
    DaemonNotRunning,
    ProtocolError,
    run_dir_from_env,
)
from ..history.reports import RunningProcess
from ..table import Snapshot, TableError, TableMissing, TableReader, TableStale, open_table
from ..tasks import Kind
from . import rows
from .format import format_clock, format_duration
from .rows import TaskCounts

T = TypeVar("T")

# A table counts as stale (daemon alive but stuck) when its last publish is older
# than this many publish intervals, and at least STALE_MIN_S.
STALE_PUBLISHES = 20
STALE_MIN_S = 5.0


class Unavailable(Exception):
    """What the command needs is not there; the message is one sentence for stderr."""


class NoPermission(Unavailable):
    """The control socket is not ours to use (not root, not in its group)."""


# How long `exited --pid` and `query PID` suggest looking back in the history.
HISTORY_HINT_SINCE = "1d"


def history_hint(pid: int) -> str:
    return f"netatop exited --pid {pid} --since {HISTORY_HINT_SINCE} looks in the history"


def _run_dir_origin(run_dir: str | None) -> str:
    """Where the run directory came from, in words."""
    if run_dir is None:
        return "the default"
    if os.environ.get("NETATOP_RUN_DIR") == run_dir:
        return "from NETATOP_RUN_DIR"
    return "from --run-dir"


def not_running(run_dir: str | None, missing: str = CONTROL_SOCKET_NAME) -> str:
    """Why nobody answers on the control socket, naming where the run directory came from.

    missing: the file of the run directory that is not there (or not answering).
    """
    directory = run_dir_from_env(run_dir)
    origin = _run_dir_origin(run_dir)
    others = f"the default is {RUN_DIR_DEFAULT}; give another with --run-dir or NETATOP_RUN_DIR"
    if not os.path.isdir(directory):
        return (
            f"netatopd is not running, or not with this run directory: {directory} "
            f"({origin}) does not exist; {others}"
        )
    path = os.path.join(directory, missing)
    if missing != CONTROL_SOCKET_NAME:
        what = f"no {missing} at"
    elif os.path.exists(path):
        what = "nobody answers on"
    else:
        what = "no control socket at"
    if origin == "the default":
        return f"netatopd is not running ({what} {path}; run directory {directory}, the default)"
    return f"netatopd is not running ({what} {path}; run directory {directory} {origin}; {others})"


def no_permission(path: str) -> str:
    return (
        f"no permission to use {path}: run as root, or ask to be in the group netatopd gives "
        "its control socket (netatopd --control-group); netatop exited --since TIME works "
        "without it (it reads the history database, if that is readable)"
    )


OLDER_DAEMON = (
    "netatopd is older than this netatop: it answered without users, command lines, "
    "units or containers (restart netatopd to see them)"
)
_older_daemon_told = False  # said once a run (top asks again every refresh)


def call(
    run_dir: str | None, action: Callable[[ControlClient], T], timeout_s: float | None = 30.0
) -> T:
    """Run action on a fresh control connection.

    Unavailable when nobody answers (the sentence names the run directory and
    where it came from), NoPermission when the socket is not ours to use.
    """
    try:
        client = ControlClient(run_dir, timeout_s=timeout_s)
    except DaemonNotRunning as err:
        if isinstance(err.__cause__, FileNotFoundError | ConnectionRefusedError):
            raise Unavailable(not_running(run_dir)) from None
        raise
    except PermissionError as err:
        if err.errno != errno.EACCES:
            raise  # a socket we do not trust: its own sentence
        path = os.path.join(run_dir_from_env(run_dir), CONTROL_SOCKET_NAME)
        raise NoPermission(no_permission(path)) from None
    with client:
        result = action(client)
    global _older_daemon_told
    if client.without_identity and not _older_daemon_told:
        _older_daemon_told = True
        sys.stderr.write(f"netatop: {OLDER_DAEMON}\n")
    return result


# --------------------------------------------------------------------------- the table


def _stale_after_s(reader: TableReader) -> float:
    return max(STALE_MIN_S, STALE_PUBLISHES * reader.publish_interval_ms / 1000.0)


def open_reader(run_dir: str | None) -> TableReader | None:
    """The daemon's table, or None when there is none (a daemon without one, or no daemon)."""
    try:
        return open_table(run_dir_from_env(run_dir))
    except TableMissing:
        return None


def snapshot(reader: TableReader) -> Snapshot:
    """A fresh snapshot; Unavailable when the daemon is gone or has stopped publishing."""
    try:
        taken = reader.snapshot()
    except TableStale as err:
        age_s = max(0.0, time.time() - err.updated_s)
        raise Unavailable(
            f"netatopd is not running (table last updated {format_clock(err.updated_s)}, "
            f"{age_s:.0f} s ago)"
        ) from None
    age_s = time.time() - taken.updated_s
    if age_s > _stale_after_s(reader):
        raise Unavailable(
            f"netatopd (pid {taken.daemon_pid}) has not updated its table for "
            f"{age_s:.0f} s (last update {format_clock(taken.updated_s)}); it may be stuck"
        )
    return taken


def table_snapshot(run_dir: str | None) -> Snapshot | None:
    """One fresh snapshot of the table, or None when the daemon publishes none."""
    reader = open_reader(run_dir)
    if reader is None:
        return None
    with reader:
        return snapshot(reader)


# --------------------------------------------------------------------------- status


class Figures(NamedTuple):
    """STATUS figures, and the table snapshot they come from when the socket was not ours."""

    figures: dict[str, Any]
    from_table: Snapshot | None = None
    problem: str = ""  # why the control socket did not answer


def status_figures(run_dir: str | None) -> Figures:
    """STATUS from the control socket; from the table when the socket is not ours to use."""
    try:
        return Figures(call(run_dir, lambda c: c.status()))
    except NoPermission as err:
        try:
            taken = table_snapshot(run_dir)
        except TableError:
            taken = None
        if taken is None:
            raise
        return Figures(dict(taken.status), taken, str(err))


# --------------------------------------------------------------------------- query


class Answer(NamedTuple):
    """What query prints: rows, complaints about pids, whether no thread row exists, notes."""

    rows: list[TaskCounts]
    complaints: list[str]
    no_threads: bool = False
    notes: list[str] = []


def finished_note(pid: int) -> str:
    return f"process {pid} has finished: its final counters, from the exit list (kind exited)"


def unknown_pid(pid: int) -> str:
    return (
        f"process {pid} is not known to netatopd (no traffic seen, or it finished "
        f"and left the exit list: {history_hint(pid)})"
    )


def _query_table(
    taken: Snapshot, pids: Sequence[int], threads: bool, with_exited: bool = False
) -> Answer:
    """Rows and complaints about pids from one table snapshot (and the exit list if with_exited)."""
    kind = Kind.THREAD if threads else Kind.PROCESS
    candidates = [task for task in taken.rows if task.kind == kind]
    no_threads = threads and not candidates
    if not pids:
        if with_exited:
            candidates += [task for task in taken.rows if task.kind == Kind.EXITED]
        return Answer([rows.from_table(task) for task in candidates], [], no_threads)
    found: list[TaskCounts] = []
    seen: set[tuple[int, int]] = set()
    complaints: list[str] = []
    notes: list[str] = []
    for pid in pids:
        if threads:
            matches = [task for task in candidates if pid in (task.id, task.tgid)]
        else:
            matches = [task for task in candidates if task.id == pid]
        for task in matches:
            if (task.id, task.tgid) not in seen:
                seen.add((task.id, task.tgid))
                found.append(rows.from_table(task))
        if matches:
            continue
        finished = [task for task in taken.rows if task.kind == Kind.EXITED and task.id == pid]
        if threads:
            complaints.append(f"no thread rows for {pid}")
        elif finished:
            found += [rows.from_table(task) for task in finished]
            notes.append(finished_note(pid))
        else:
            complaints.append(unknown_pid(pid))
    return Answer(found, complaints, no_threads, notes)


def _query_socket(run_dir: str | None, pids: Sequence[int], with_exited: bool = False) -> Answer:
    """The same from the control socket, for a daemon that publishes no table."""

    def ask(client: ControlClient) -> Answer:
        running = [rows.from_detail(detail) for detail in client.list_tasks_detail()]
        if not pids:
            found = list(running)
            if with_exited:
                found += [rows.from_detail(d, Kind.EXITED) for d in client.list_exited_detail()]
            return Answer(found, [])
        by_pid = {row.pid: row for row in running}
        found, complaints, notes = [], [], []
        exit_list: list[TaskCounts] | None = None
        for pid in pids:
            if pid in by_pid:
                found.append(by_pid[pid])
                continue
            if exit_list is None:
                exit_list = [
                    rows.from_detail(detail, Kind.EXITED) for detail in client.list_exited_detail()
                ]
            finished = [row for row in exit_list if row.pid == pid]
            if finished:
                found += finished
                notes.append(finished_note(pid))
            else:
                complaints.append(unknown_pid(pid))
        return Answer(found, complaints, notes=notes)

    return call(run_dir, ask)


def query(
    run_dir: str | None, pids: Sequence[int], threads: bool, with_exited: bool = False
) -> Answer:
    """Running tasks: from the table, else (a daemon without one) the control socket.

    Thread rows exist only in the table: without it every pid gets a complaint.
    with_exited: without pids, the processes of the exit list too (query --by).
    """
    taken = table_snapshot(run_dir)
    if taken is not None:
        return _query_table(taken, pids, threads, with_exited)
    if threads:
        call(run_dir, lambda c: c.probe())  # not running: say that, not "no threads"
        return Answer([], [f"no thread rows for {pid}" for pid in pids], True)
    return _query_socket(run_dir, pids, with_exited)


# A daemon up for less than this is "just started" when query finds no process.
JUST_STARTED_S = 10.0


def daemon_uptime_s(run_dir: str | None, taken: Snapshot | None) -> float | None:
    """How long the daemon has run: STATUS uptime_s from the control socket, else the
    start of the table's daemon_pid in /proc (for users who may not use the socket)."""
    try:
        uptime = call(run_dir, lambda c: c.status(), timeout_s=5.0)["uptime_s"]
        if isinstance(uptime, int | float):
            return float(uptime)
    except (Unavailable, ProtocolError, OSError, KeyError, TypeError, ValueError):
        pass
    if taken is None or taken.daemon_pid <= 0:
        return None
    try:
        proc = procfs.ProcFS()
        started_s = proc.btime(proc.stat(taken.daemon_pid).start_time_ticks)
    except procfs.ProcError:
        return None
    return max(0.0, time.time() - started_s)


def nothing_yet(run_dir: str | None) -> str:
    """Why query found no process: the daemon just started, or nothing used the network."""
    try:
        taken = table_snapshot(run_dir)
    except (Unavailable, TableError):
        taken = None
    finished = sum(1 for task in taken.rows if task.kind == Kind.EXITED) if taken else 0
    gone = f"; {finished} finished ones are in the exit list (netatop exited)" if finished else ""
    uptime_s = daemon_uptime_s(run_dir, taken)
    if uptime_s is None:
        return f"no process yet: none has sent or received TCP or UDP{gone}"
    if uptime_s < JUST_STARTED_S:
        return (
            f"no process yet: netatopd started only {uptime_s:.0f} s ago; a process "
            f"appears once it sends or receives TCP or UDP{gone}"
        )
    started = format_clock(time.time() - uptime_s)
    return (
        f"no process yet: none has sent or received TCP or UDP since netatopd started "
        f"at {started} ({format_duration(uptime_s)} ago){gone}"
    )


# --------------------------------------------------------------------------- finished


def exit_list(run_dir: str | None, pid: int | None = None) -> list[TaskCounts]:
    """The daemon's exit list (only process pid's entries if given), read and not consumed."""
    details = call(run_dir, lambda c: c.list_exited_detail())
    return [
        rows.from_detail(detail, Kind.EXITED)
        for detail in details
        if pid is None or detail["tgid"] == pid
    ]


def take_exited(client: ControlClient) -> TaskCounts:
    """The oldest finished process, taken off the exit list (waits for one)."""
    return rows.from_detail(client.getcnt_exit_detail(), Kind.EXITED)


def history_exited(
    db: str,
    since_s: float | None,
    until_s: float | None,
    limit: int | None,
    pid: int | None = None,
) -> list[TaskCounts]:
    """Finished processes with exit_time in [since_s, until_s) from the history database."""
    conn = history.open_db(db, readonly=True)
    try:
        tasks = history.query_exited(conn, since_s, until_s, limit, pid)
    finally:
        conn.close()
    return [rows.from_history(task) for task in tasks]


def last_exit_in_history(db: str, pid: int) -> TaskCounts | None:
    """The last finished process with this pid in the history database, for query PID
    once it has left the exit list; None when there is none or the database cannot be
    read (query then points to the history instead)."""
    try:
        found = history_exited(db, None, None, None, pid)
    except (history.StoreError, apsw.Error, OSError):
        return None
    return found[-1] if found else None


def history_note(row: TaskCounts) -> str:
    exited_at = "" if row.exit_time is None else f" at {format_clock(row.exit_time)}"
    return (
        f"process {row.pid} has finished{exited_at} and left the exit list: its final "
        "counters, from the history (kind exited)"
    )


# --------------------------------------------------------------------------- reports


class RunningNow(NamedTuple):
    """The running processes of the table, for a report whose window ends now."""

    updated_s: float  # the publish the counters come from
    processes: list[RunningProcess]
    uid_of: dict[int, int]  # from /proc, for processes that have no sample yet


def running_now(run_dir: str | None) -> RunningNow | str:
    """The table's running processes with their cumulative counters, or why there are
    none to add (no daemon publishes a table here, it is stale, or not ours to read)."""
    directory = run_dir_from_env(run_dir)
    try:
        taken = table_snapshot(run_dir)
    except (Unavailable, TableError) as err:
        return str(err)
    if taken is None:
        return f"no table of a running netatopd in {directory}"
    processes = [
        (task.tgid, task.btime, task.command, tuple(task.counters))
        for task in taken.rows
        if task.kind == Kind.PROCESS
    ]
    uid_of: dict[int, int] = {}
    for tgid, *_ in processes:
        try:
            uid_of[tgid] = os.stat(f"/proc/{tgid}").st_uid
        except OSError:
            pass
    return RunningNow(taken.updated_s, processes, uid_of)
