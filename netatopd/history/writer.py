"""The history writer: a background thread that persists processes to SQLite.

Owns :class:`HistoryWriter`: the queue the capture thread hands records to,
the in-memory backlog of rows waiting for a commit (bounded by
``max_pending``), the per-process bases that turn cumulative counters into
sample deltas, the batched transactions, the retention prune and the
counters behind ``netatop status``.  Only the writer thread touches the
writer's connection; a failed or skipped write keeps its rows for the next
interval.

When rows are written: finished processes within ``exited_flush_s`` (1 s)
of their handing over, so that a daemon killed with SIGKILL loses at most
about a second of them; samples and retries of failed writes every
``flush_interval_s``.  Each cycle first checks that the file at ``path`` is
still the one open (device and inode): a database deleted or replaced under
the daemon is reopened (created anew), logged and counted (``reopened``).

Callers: daemon.engine.Engine creates one HistoryWriter, reads back the
counters of processes still running (``running_counters``) before
``start``, calls ``add_exited`` from the exit-list sweep and ``add_samples``
when ``sample_due`` says so (neither waits for the disk), reads ``stats`` for
STATUS and calls ``stop`` on shutdown.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import apsw

from ..defaults import FLUSH_INTERVAL_S_DEFAULT, RETENTION_DAYS_DEFAULT, SAMPLE_INTERVAL_S_DEFAULT
from ..tasks import ExitedTask, Kind, TaskRow
from .rows import (
    EXITED_INSERT,
    SAMPLES_INSERT,
    ExitedRow,
    SampleRow,
    clamp_counters,
    clean_text,
    exited_row,
    place_values,
)
from .schema import StoreError, open_checked, running_sums
from .timeparse import finite_seconds

log = logging.getLogger(__name__)

ROWS_PER_TRANSACTION = 10_000  # a catch-up after a long outage commits in slices
# Rows per INSERT statement: json.dumps holds the GIL (the capture thread waits) for
# about 1 ms per 500 rows; SQLite then runs the statement with the GIL released.
ROWS_PER_STATEMENT = 500
PRUNE_ROWS_PER_TRANSACTION = 1000  # retention deletes hold the write lock this long only
PRUNE_MAX_TRANSACTIONS = 200  # per writer cycle; the rest waits for the next cycle
PRUNE_INTERVAL_S = 600.0
PREVIOUS_SAMPLE_GRACE = 3  # samples a process may be missing before its base is forgotten
ERROR_LOG_INTERVAL_S = 300.0  # the same write error is logged again after this long
EXITED_FLUSH_S = 1.0  # finished processes are committed at most this long after they came
SECONDS_PER_DAY = 86400.0


# A running process in a sample: (row, uid), or (row, uid, cgroup, unit, container).
SampleEntry = tuple[TaskRow, int] | tuple[TaskRow, int, str, str, str]


class _SampleBatch(NamedTuple):
    time_s: float
    interval_s: float
    rows: list[SampleEntry]


class _Previous(NamedTuple):
    counters: tuple[int, ...]
    sample_number: int


def _default_free_fraction(path: str) -> float:
    """Free fraction of the filesystem holding path (blocks available to the caller)."""
    stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    if stat.f_blocks == 0:
        return 1.0
    return stat.f_bavail / stat.f_blocks


class HistoryWriter:
    """Persists finished processes and samples from a background thread.

    ``add_exited`` and ``add_samples`` only append to a list under a lock held for
    microseconds; the writer thread turns what arrived into rows every
    ``flush_interval_s`` and commits them.  Records that could not be written
    (disk nearly full, any SQLite error) stay in memory and are retried; past
    ``max_pending`` records new ones are dropped and counted.

    ``free_fraction`` (path -> free fraction of its filesystem) replaces os.statvfs
    in tests; ``on_persist`` is called from the writer thread with the (tgid, btime)
    keys of finished processes right after the transaction holding them committed.
    """

    def __init__(
        self,
        path: str,
        flush_interval_s: float = FLUSH_INTERVAL_S_DEFAULT,
        sample_interval_s: float | None = SAMPLE_INTERVAL_S_DEFAULT,
        retention_days: float = RETENTION_DAYS_DEFAULT,
        max_pending: int = 100_000,
        min_free_fraction: float = 0.05,
        *,
        exited_flush_s: float = EXITED_FLUSH_S,
        free_fraction: Callable[[str], float] | None = None,
        on_persist: Callable[[list[tuple[int, int]]], None] | None = None,
    ) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.exited_flush_s = min(exited_flush_s, flush_interval_s)
        self.sample_interval_s = sample_interval_s
        self.retention_days = retention_days
        self.max_pending = max_pending
        self.min_free_fraction = min_free_fraction
        self._free_fraction = free_fraction or _default_free_fraction
        self._on_persist = on_persist
        self._stats: dict[str, int] = {
            "persisted_exited": 0,
            "persisted_samples": 0,
            "dropped": 0,
            "rejected": 0,
            "disk_full_skips": 0,
            "write_errors": 0,
            # SQLite extended result code and OS errno of the last failed write; 0 after a success
            "last_error": 0,
            "last_errno": 0,
            "pruned": 0,
            "last_commit_time": 0,  # epoch seconds
            "reopened": 0,  # database file gone or replaced under us: opened anew
            "corrupt_moved": 0,  # damaged database files moved aside (name.corrupt-TIME)
        }
        self._conn: apsw.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._check_needed = True  # run PRAGMA quick_check at the next open

        # Shared with the callers, under _lock (never held during I/O).
        self._lock = threading.Lock()
        self._incoming: list[ExitedTask | _SampleBatch] = []
        self._incoming_records = 0
        self._incoming_exits = 0  # finished processes among them: a commit is due soon
        self._backlog_records = 0  # published copy of the writer's backlog size
        self._closed = False

        # Writer-owned (writer thread, or the caller of flush() before start()).
        self._exit_rows: dict[tuple[int, int], ExitedRow] = {}
        self._sample_rows: dict[tuple[float, int, int], SampleRow] = {}
        self._previous: dict[tuple[int, int], _Previous] = {}
        # Bases of processes that were running at the last stop (running_counters):
        # their counters continue from these, so their next delta starts here.
        self._restored_bases: dict[tuple[int, int], tuple[int, ...]] = {}
        self._sample_number = 0
        self._last_sample_time_s: float | None = None
        self._last_sample_added_s: float | None = None
        self._disk_low = False
        self._next_prune_s = 0.0
        self._last_error_logged: tuple[int, float] = (0, 0.0)

        # Flush hand-shake with the writer thread.
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._flush_requested = 0
        self._flush_done = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._open()  # start-up errors reach the caller

    # ---- the database file -------------------------------------------------------------

    def _open(self) -> apsw.Connection:
        """Open (or create) the database; a damaged one is moved aside first (open_checked)."""
        conn, moved_to = open_checked(self.path, check=self._check_needed)
        self._check_needed = False
        if moved_to:
            with self._lock:
                self._stats["corrupt_moved"] += 1
        self._conn = conn
        try:
            stat = os.stat(self.path)
            self._identity = (stat.st_dev, stat.st_ino)
        except OSError:
            self._identity = None
        return conn

    def _file_replaced(self) -> str:
        """Why the file at path is not the database open ('' when it is)."""
        if self._conn is None or self._identity is None:
            return ""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError as err:
            return f"not readable ({err.strerror})"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return "replaced by another file"
        return ""

    def _check_file(self) -> None:
        """Reopen the database when its file was deleted or replaced since it was opened.

        Rows committed to the old file are wherever the old file went; what is
        still in memory goes to the new one.
        """
        why = self._file_replaced()
        if not why:
            return
        log.error(
            "%s: history database %s while in use: opening it anew"
            " (rows written before are not in the new file)",
            self.path,
            why,
        )
        with self._lock:
            self._stats["reopened"] += 1
        try:
            assert self._conn is not None
            self._conn.close()
        except apsw.Error as err:
            log.debug("%s: closing the old database: %s", self.path, err)
        self._conn = None
        self._identity = None
        self._previous.clear()  # bases were deltas of the old file's samples
        try:
            self._open()
        except StoreError as err:
            self._write_failed(err)

    def running_counters(
        self, keys: Iterable[tuple[int, int]]
    ) -> dict[tuple[int, int], tuple[int, ...]]:
        """Cumulative counters of processes (tgid, btime) from their samples; before start().

        For processes running when the daemon starts: what their samples add up
        to (their last sample's cumulative counters) unless they have an exited
        row.  Their next sample's delta, and their exit's last interval, start
        from these.
        """
        if self._conn is None:
            return {}
        try:
            found = running_sums(self._conn, list(keys))
        except apsw.Error as err:
            log.warning("%s: counters of running processes not read back: %s", self.path, err)
            return {}
        self._restored_bases.update(found)
        return found

    # ---- producer side (capture thread) -------------------------------------------

    def _admit(self, items: list[ExitedTask] | list[_SampleBatch], records: int) -> int:
        """Queue items unless past max_pending; returns how many records were dropped."""
        with self._lock:
            room = self.max_pending - self._incoming_records - self._backlog_records
            if self._closed or room < records:
                self._stats["dropped"] += records
                return records
            self._incoming.extend(items)
            self._incoming_records += records
            return 0

    def add_exited(self, records: Iterable[ExitedTask]) -> None:
        """Queue finished processes; never waits for the disk."""
        batch = list(records)
        if not batch:
            return
        with self._lock:
            room = self.max_pending - self._incoming_records - self._backlog_records
            if self._closed:
                room = 0
            accepted = batch if room >= len(batch) else batch[: max(room, 0)]
            self._incoming.extend(accepted)
            self._incoming_records += len(accepted)
            self._incoming_exits += len(accepted)
            self._stats["dropped"] += len(batch) - len(accepted)

    def add_samples(self, time_s: float, interval_s: float, rows: Iterable[SampleEntry]) -> None:
        """Queue one sample of running processes: (row, uid) with cumulative counters,
        or (row, uid, cgroup, unit, container).

        Ignored when sampling is disabled.  Threads (Kind.THREAD) are left out.
        """
        if self.sample_interval_s is None:
            return
        batch = [entry for entry in rows if entry[0].kind == Kind.PROCESS]
        self._last_sample_added_s = time_s
        self._admit([_SampleBatch(float(time_s), float(interval_s), batch)], len(batch))

    def sample_due(self, now_s: float) -> bool:
        """Whether the daemon should take a sample now (sampling on, interval elapsed)."""
        if self.sample_interval_s is None:
            return False
        last = self._last_sample_added_s
        return last is None or now_s - last >= self.sample_interval_s

    @property
    def last_sample_s(self) -> float | None:
        """Epoch seconds of the last sample handed over (None: none yet)."""
        return self._last_sample_added_s

    def stats(self) -> dict[str, int]:
        """Counters for `netatop status`: persisted, dropped, pending, errors ..."""
        with self._lock:
            result = dict(self._stats)
            result["pending"] = self._incoming_records + self._backlog_records
        return result

    # ---- control ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="netatop-history", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float | None = None) -> int:
        """Write what is pending now; returns the rows committed while it waited.

        With the writer thread running, asks it for a cycle and waits (at most
        timeout_s); otherwise runs the cycle in the calling thread.
        """
        if self._closed:
            return 0
        if self._thread is None or not self._thread.is_alive():
            return self._cycle()
        with self._cond:
            before = self._stats["persisted_exited"] + self._stats["persisted_samples"]
            self._flush_requested += 1
            ticket = self._flush_requested
            self._wake.set()
            self._cond.wait_for(lambda: self._flush_done >= ticket, timeout_s)
            return self._stats["persisted_exited"] + self._stats["persisted_samples"] - before

    def stop(self) -> None:
        """Final flush, stop the thread, close the database.

        Records handed over after stop() began are dropped (and counted).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            with self._cond:
                self._stopping = True
                self._wake.set()
            thread.join()
        else:
            self._cycle()
        with self._lock:
            lost = self._incoming_records + self._backlog_records
        if lost:
            log.warning("%s: %d records could not be written before shutdown", self.path, lost)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        # Wake every exited_flush_s; a cycle runs when asked (flush, stop), when
        # finished processes came, and every flush_interval_s.
        last_cycle_s = time.monotonic()
        while True:
            asked = self._wake.wait(self.exited_flush_s)
            self._wake.clear()
            with self._cond:
                ticket = self._flush_requested
                stopping = self._stopping
            with self._lock:
                exits = self._incoming_exits
            now_s = time.monotonic()
            if asked or exits or now_s - last_cycle_s >= self.flush_interval_s:
                last_cycle_s = now_s
                try:
                    self._cycle()
                except Exception:  # the writer must outlive any bug in one cycle
                    log.exception("%s: history writer cycle failed", self.path)
            with self._cond:
                self._flush_done = ticket
                self._cond.notify_all()
            if stopping:
                return

    def _cycle(self) -> int:
        """Check the file, take what arrived, write the backlog, prune when due; rows committed."""
        self._check_file()
        self._take_incoming()
        written = self._write_backlog()
        now = time.time()
        if self.retention_days > 0 and now >= self._next_prune_s and not self._disk_low:
            self._next_prune_s = now + PRUNE_INTERVAL_S
            self.prune(now)
        return written

    def _take_incoming(self) -> None:
        with self._lock:
            items = self._incoming
            taken = self._incoming_records
            self._incoming = []
            self._incoming_exits = 0
        rejected = 0
        for item in items:
            try:
                if isinstance(item, _SampleBatch):
                    rejected += self._add_sample_rows(item)
                else:
                    self._add_exit_row(item)
            except (TypeError, ValueError, OverflowError) as err:
                rejected += 1
                log.warning("%s: record refused: %s (%r)", self.path, err, item)
        dropped = self._enforce_bound()
        with self._lock:
            self._incoming_records -= taken
            self._backlog_records = len(self._exit_rows) + len(self._sample_rows)
            self._stats["rejected"] += rejected
            self._stats["dropped"] += dropped

    def _add_exit_row(self, task: ExitedTask) -> None:
        row = exited_row(task)
        key = (int(task.tgid), int(task.btime))
        self._exit_rows[key] = row
        previous = self._previous.pop(key, None)
        restored = self._restored_bases.pop(key, None)
        if self.sample_interval_s is None:
            return
        # The process's last interval: from its last sample to its exit.
        base = previous.counters if previous is not None else restored
        delta = _delta(clamp_counters(task.counters), base)
        if not any(delta):
            return
        exit_time_s = finite_seconds(task.exit_time_s)
        if self._last_sample_time_s is not None:
            interval_s = exit_time_s - self._last_sample_time_s
        elif task.first_activity_s > 0:
            interval_s = exit_time_s - finite_seconds(task.first_activity_s)
        else:
            interval_s = 0.0
        self._sample_rows[(exit_time_s, key[0], key[1])] = (
            exit_time_s,
            max(0.0, interval_s),
            key[0],
            key[1],
            clean_text(task.command),
            int(task.uid) if task.uid >= 0 else None,
            *delta,
            *place_values(task.cgroup, task.unit, task.container),
        )

    def _add_sample_rows(self, batch: _SampleBatch) -> int:
        """Deltas of one sample into the backlog; returns the rows refused."""
        time_s = finite_seconds(batch.time_s)
        interval_s = finite_seconds(batch.interval_s)
        self._sample_number += 1
        number = self._sample_number
        rejected = 0
        for task, uid, *where in batch.rows:
            try:
                key = (int(task.tgid), int(task.btime))
                counters = clamp_counters(task.counters)
                row_tail = (clean_text(task.command), int(uid) if uid >= 0 else None)
                place = place_values(*where) if where else (None, None, None)
            except (TypeError, ValueError, OverflowError) as err:
                rejected += 1
                log.warning("%s: sample row refused: %s (%r)", self.path, err, task)
                continue
            previous = self._previous.get(key)
            if previous is not None:
                base: tuple[int, ...] | None = previous.counters
            else:
                base = self._restored_bases.pop(key, None)
            delta = _delta(counters, base)
            self._previous[key] = _Previous(counters, number)
            if any(delta):
                self._sample_rows[(time_s, key[0], key[1])] = (
                    time_s,
                    interval_s,
                    key[0],
                    key[1],
                    *row_tail,
                    *delta,
                    *place,
                )
        self._last_sample_time_s = time_s
        # Forget bases of processes missing from several samples (their exit never came).
        stale = [
            k
            for k, p in self._previous.items()
            if number - p.sample_number >= PREVIOUS_SAMPLE_GRACE
        ]
        for key in stale:
            del self._previous[key]
        return rejected

    def _enforce_bound(self) -> int:
        """Drop the oldest samples, then the newest exits, past max_pending."""
        excess = len(self._exit_rows) + len(self._sample_rows) - self.max_pending
        dropped = 0
        while excess > 0 and self._sample_rows:
            del self._sample_rows[next(iter(self._sample_rows))]
            excess -= 1
            dropped += 1
        while excess > 0 and self._exit_rows:
            self._exit_rows.popitem()
            excess -= 1
            dropped += 1
        return dropped

    def _disk_has_room(self) -> bool:
        try:
            free = self._free_fraction(self.path)
        except OSError as err:
            log.debug("%s: statvfs failed: %s", self.path, err.strerror)
            return True
        if free < self.min_free_fraction:
            if not self._disk_low:
                log.warning(
                    "%s: filesystem %.1f%% free (below %.1f%%): history writes paused,"
                    " records kept in memory (at most %d)",
                    self.path,
                    free * 100.0,
                    self.min_free_fraction * 100.0,
                    self.max_pending,
                )
            self._disk_low = True
            with self._lock:
                self._stats["disk_full_skips"] += 1
            return False
        if self._disk_low:
            log.warning(
                "%s: filesystem %.1f%% free again: writing %d waiting records",
                self.path,
                free * 100.0,
                len(self._exit_rows) + len(self._sample_rows),
            )
            self._disk_low = False
        return True

    def _write_backlog(self) -> int:
        if not self._exit_rows and not self._sample_rows:
            return 0
        if not self._disk_has_room():
            return 0
        written = 0
        while self._exit_rows or self._sample_rows:
            exit_keys = list(self._exit_rows)[:ROWS_PER_TRANSACTION]
            sample_keys = list(self._sample_rows)[: ROWS_PER_TRANSACTION - len(exit_keys)]
            if not self._commit(exit_keys, sample_keys):
                break
            written += len(exit_keys) + len(sample_keys)
        return written

    def _commit(
        self, exit_keys: list[tuple[int, int]], sample_keys: list[tuple[float, int, int]]
    ) -> bool:
        """One transaction; on success the rows leave the backlog."""
        try:
            conn = self._conn if self._conn is not None else self._open()
            exit_rows = [self._exit_rows[k] for k in exit_keys]
            sample_rows = [self._sample_rows[k] for k in sample_keys]

            def write(conn: apsw.Connection) -> int:
                for statement, rows in (
                    (EXITED_INSERT, exit_rows),
                    (SAMPLES_INSERT, sample_rows),
                ):
                    for start in range(0, len(rows), ROWS_PER_STATEMENT):
                        chunk = rows[start : start + ROWS_PER_STATEMENT]
                        conn.execute(statement, (json.dumps(chunk, ensure_ascii=False),))
                return len(exit_rows) + len(sample_rows)

            _in_transaction(conn, write)
        except (apsw.Error, StoreError) as err:
            self._write_failed(err)
            return False
        self._last_error_logged = (0, 0.0)  # the next failure is news again
        for exit_key in exit_keys:
            del self._exit_rows[exit_key]
        for sample_key in sample_keys:
            del self._sample_rows[sample_key]
        with self._lock:
            self._stats["persisted_exited"] += len(exit_keys)
            self._stats["persisted_samples"] += len(sample_keys)
            self._stats["last_error"] = 0
            self._stats["last_errno"] = 0
            self._stats["last_commit_time"] = int(time.time())
            self._backlog_records = len(self._exit_rows) + len(self._sample_rows)
        if exit_keys and self._on_persist is not None:
            try:
                self._on_persist(exit_keys)
            except Exception:
                log.exception("%s: on_persist callback failed", self.path)
        return True

    def _write_failed(self, err: apsw.Error | StoreError) -> None:
        """Log (not too often), count, and drop the connection so the next try reopens."""
        if isinstance(err, StoreError):
            code = err.code or 0
            cause = err.__cause__
        else:
            code = int(getattr(err, "extendedresult", 0) or 0)
            cause = err
        os_errno = 0
        if self._conn is not None:
            try:
                os_errno = int(self._conn.system_errno)
            except apsw.Error:
                os_errno = 0
        os_error = (
            f", errno {os_errno} {errno.errorcode.get(os_errno, '?')}: {os.strerror(os_errno)}"
            if os_errno
            else ""
        )
        now = time.monotonic()
        last_code, last_time = self._last_error_logged
        if code != last_code or now - last_time >= ERROR_LOG_INTERVAL_S:
            log.error(
                "%s: history write failed, %d records kept for the next try: %s (SQLite code %d%s)",
                self.path,
                len(self._exit_rows) + len(self._sample_rows),
                err,
                code,
                os_error,
            )
            self._last_error_logged = (code, now)
        else:
            log.debug("%s: history write failed again: %s", self.path, cause)
        with self._lock:
            self._stats["write_errors"] += 1
            self._stats["last_error"] = code
            self._stats["last_errno"] = os_errno
        if code & 0xFF == apsw.SQLITE_CORRUPT:
            self._check_needed = True  # the reopen checks the file, moves it aside if damaged
        if not isinstance(err, apsw.BusyError) and self._conn is not None:
            try:
                self._conn.close()
            except apsw.Error:
                pass
            self._conn = None

    def prune(self, now_s: float | None = None) -> int:
        """Delete rows older than retention_days, in small transactions; rows deleted.

        Runs in the writer thread; call it directly only before start().
        """
        if self.retention_days <= 0:
            return 0
        now = time.time() if now_s is None else now_s
        cutoff = now - self.retention_days * SECONDS_PER_DAY
        deleted = 0
        statements = (
            "DELETE FROM exited WHERE rowid IN"
            " (SELECT rowid FROM exited WHERE exit_time < ? LIMIT ?)",
            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE time < ? LIMIT ?)",
        )
        transactions = 0
        try:
            conn = self._conn if self._conn is not None else self._open()
            for statement in statements:
                while transactions < PRUNE_MAX_TRANSACTIONS:

                    def delete(conn: apsw.Connection, statement: str = statement) -> int:
                        conn.execute(statement, (cutoff, PRUNE_ROWS_PER_TRANSACTION))
                        return conn.changes()

                    changed = _in_transaction(conn, delete)
                    transactions += 1
                    deleted += changed
                    if changed < PRUNE_ROWS_PER_TRANSACTION:
                        break
        except (apsw.Error, StoreError) as err:
            self._write_failed(err)
        if transactions >= PRUNE_MAX_TRANSACTIONS:
            self._next_prune_s = 0.0  # more to delete: again next cycle
        with self._lock:
            self._stats["pruned"] += deleted
        if deleted:
            log.info(
                "%s: %d rows older than %g days pruned", self.path, deleted, self.retention_days
            )
        return deleted


def _in_transaction(conn: apsw.Connection, work: Callable[[apsw.Connection], int]) -> int:
    """Run work inside BEGIN IMMEDIATE ... COMMIT; roll back if it raises.

    Not ``with conn``: SQLite rolls a transaction back by itself on SQLITE_FULL and
    some I/O errors, and the savepoint release would then hide the real error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            try:
                conn.execute("ROLLBACK")
            except apsw.Error as err:
                log.debug("rollback after a failed write: %s", err)
        raise
    return result


def _delta(counters: tuple[int, ...], base: tuple[int, ...] | None) -> tuple[int, ...]:
    """counters - base; the full counters when there is no base or a counter went down."""
    if base is None or any(c < b for c, b in zip(counters, base, strict=True)):
        return counters
    return tuple(c - b for c, b in zip(counters, base, strict=True))
