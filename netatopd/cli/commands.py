"""The ``netatop`` command: thin typer commands over the library's readers.

Owns the command line (the typer app, its options and help), the exit
status and the translation of every "cannot answer" error into one sentence on
stderr.  Each command asks sources for rows (rows.TaskCounts) or figures and
prints them through format.emit, status.status_lines or top.show.  Called by
the console script ``netatop`` (main) and ``python -m netatopd.cli``.

Exit status: 0 success, 1 a process asked for is not known (query PID,
exited --pid), 2 the daemon is not running or not reachable (or its table is
stale), the control socket is not ours, the database is missing, or the
command line is wrong (a reversed --since/--until window among them).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Annotated, NoReturn

import apsw
import typer

from .. import __version__, history
from ..client import ControlClient, DaemonNotRunning, ProtocolError, run_dir_from_env
from ..defaults import DB_DEFAULT, TOP_INTERVAL_S_DEFAULT
from ..table import TableError
from . import rows, sources
from . import top as top_view
from .format import (
    Column,
    OutputFormat,
    Record,
    emit,
    format_clock,
    format_time,
    output_width,
    render_csv,
    render_json,
    terminal_width,
)
from .groups import Group, GroupBy, group_columns, group_fields, group_rows, sort_groups
from .rows import TIE_BREAK, ReportOrder, SortKey, TaskCounts
from .sources import Unavailable
from .status import status_lines

EXIT_UNKNOWN_PID = 1
EXIT_UNAVAILABLE = 2
EXIT_INTERRUPTED = 130

NO_THREAD_ROWS = (
    "no thread rows: netatopd publishes per-thread counters only while its eBPF "
    "ownership helper runs (see 'ownership' in netatop status)"
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Ask netatopd which processes use the network.\n\n"
    "\b\nExamples:\n"
    "  netatop status\n"
    "  netatop query --top 10\n"
    "  netatop query --json 1234\n"
    "  netatop top\n"
    "  netatop exited --since 2h\n"
    "  netatop report top-processes --since 1d --limit 10\n"
    "  netatop wait-exit --json",
)

RunDir = Annotated[
    str | None,
    typer.Option(
        "--run-dir",
        envvar="NETATOP_RUN_DIR",
        metavar="DIR",
        help="netatopd's run directory (default: /run/netatop)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print one JSON array of objects")]
Csv = Annotated[bool, typer.Option("--csv", help="print CSV with a header line")]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="from this time: ISO 8601 (2026-11-27T02:00), a time of day (02:00), "
        "an age (90s, 15m, 10min, 2h, 2h ago, 1d, 1w), today, yesterday or now",
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", metavar="TIME", help="up to this time (same forms as --since)"),
]
Limit = Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="at most N rows")]


def _process_id(text: str) -> int:
    """A PID from the command line; anything but a number is one sentence and status 2."""
    if isinstance(text, int):
        return text
    if not text.strip().isdigit():
        name = text.strip()
        hint = f" (pgrep {name} finds those of the command {name})" if name[:1].isalpha() else ""
        _fail(f"{text!r} is not a process id: give the number ps shows under PID{hint}")
    return int(text)


Pid = Annotated[
    int | None,
    typer.Option("--pid", metavar="PID", parser=_process_id, help="only the process with this id"),
]
SORT_HELP = (
    "largest first by bytes (sent and received), packets, sent (bytes), received, "
    f"sent-packets, received-packets, tcp or udp (bytes), or by pid (ascending); {TIE_BREAK}"
)
DbPath = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="NETATOP_DB",
        metavar="PATH",
        help="history database, opened read-only",
    ),
]


# --------------------------------------------------------------------------- errors


def _fail(message: str, code: int = EXIT_UNAVAILABLE) -> NoReturn:
    typer.echo(f"netatop: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn every "cannot answer" error into one sentence on stderr and exit status 2."""
    try:
        yield
    except Unavailable as err:
        _fail(str(err))
    except DaemonNotRunning as err:
        _fail(str(err))
    except PermissionError as err:
        _fail(str(err.strerror or err))
    except ProtocolError as err:
        _fail(f"lost the daemon: {err}")
    except (ConnectionError, TimeoutError) as err:
        _fail(f"lost the daemon: {err.strerror or err}")
    except TableError as err:
        _fail(str(err))
    except history.StoreError as err:
        _fail(str(err))


def _output_format(as_json: bool, as_csv: bool) -> OutputFormat:
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv exclude each other")
    return OutputFormat.JSON if as_json else OutputFormat.CSV if as_csv else OutputFormat.TABLE


def _parse_time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return history.parse_time(text)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=option) from None


def _window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """--since and --until as epoch seconds; a window that ends before it starts is refused."""
    since_s = _parse_time(since, "--since")
    until_s = _parse_time(until, "--until")
    if since_s is not None and until_s is not None and since_s >= until_s:
        raise typer.BadParameter(
            f"the window is empty: --since {since} ({format_time(since_s)}) is not before "
            f"--until {until} ({format_time(until_s)})",
            param_hint="--since/--until",
        )
    return since_s, until_s


# --------------------------------------------------------------------------- commands


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"netatop {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    pass


@app.command()
def status(
    run_dir: RunDir = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="print one JSON object: the daemon's STATUS figures"),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="also the daemon's internal figures (resolver, sweep, balance, forwarded, "
            "atop socket, process events, eBPF helper)",
        ),
    ] = False,
) -> None:
    """The daemon's figures: packets, flows, tasks, exit list, capture, table, history.

    The figures of the kernel module's /proc/netatop and what a user-space
    reader must add: packets dropped by the capture ring, resolver misses,
    table fill, history.  --verbose adds the daemon's internal figures
    (resolver, sweep, balance, forwarded, atop socket, process events, eBPF
    helper); --json prints the daemon's STATUS object, one JSON object, as it is.

    \b
    Examples:
      netatop status
      netatop status --verbose
      netatop status --json | jq .capture_dropped
    """
    with _errors():
        answer = sources.status_figures(run_dir)
        if as_json:
            if answer.from_table is not None:
                typer.echo(f"netatop: {answer.problem}; figures from the shared table", err=True)
            typer.echo(json.dumps(answer.figures, indent=1))
            return
        problem = "no table file in the run directory"
        snapshot = answer.from_table
        if snapshot is None:
            try:
                snapshot = sources.table_snapshot(run_dir)
            except (Unavailable, TableError) as err:
                snapshot, problem = None, str(err)
    width = terminal_width()
    lines = status_lines(
        answer.figures,
        snapshot,
        run_dir_from_env(run_dir),
        width,
        problem,
        verbose,
        from_table=answer.from_table is not None,
    )
    for line in lines:
        typer.echo(line)


@app.command()
def query(
    pids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="PID", parser=_process_id, help="process ids (default: every process)"
        ),
    ] = None,
    threads: Annotated[
        bool, typer.Option("--threads", help="thread rows (tid) instead of process rows")
    ] = False,
    sort: Annotated[
        SortKey | None,
        typer.Option(
            "--sort",
            help=SORT_HELP + " (default: bytes; the order given when PIDs are given)",
        ),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, metavar="N", help="only the first N rows")
    ] = None,
    cmdline: Annotated[
        bool,
        typer.Option(
            "--cmdline",
            help="show the CMDLINE column even when the terminal is narrow (it is cut to fit, "
            "ending with …); without it, the column is shown when 20 characters of it fit",
        ),
    ] = False,
    as_json: Json = False,
    as_csv: Csv = False,
    run_dir: RunDir = None,
    by: Annotated[
        GroupBy | None,
        typer.Option(
            "--by",
            help="one row per command, user, unit or container: its processes' counters "
            "summed, finished ones still in the exit list included (--sort pid: by the group)",
        ),
    ] = None,
    db: DbPath = DB_DEFAULT,
) -> None:
    """Counters of running processes (all of them, or the PIDs given).

    Read from the shared table the daemon publishes every 250 ms, without
    asking the daemon; run 'netatop sync' first for counters that include
    every packet sent so far.  A PID that is not known is reported on stderr
    and the exit status is 1 (the others are still printed); one that has
    finished and is still in the exit list is printed with its final
    counters, marked <exited> (kind exited), and a note on stderr.  One
    that has left the exit list is looked up in the history (--db): its
    last exit is printed the same way; else the message points to
    netatop exited --pid PID --since TIME.

    Each row names the process's user and, where the terminal is wide
    enough (or with --cmdline), its command line, cut to fit with a final
    "…".  Piped to another program nothing is cut (unless COLUMNS is set).
    --json and --csv always carry uid, user, cmdline, unit, container and
    cgroup.

    \b
    Examples:
      netatop query
      netatop query --cmdline
      netatop query --sort sent --top 5
      netatop query --json 1234 5678
      netatop query --csv > counters.csv
      netatop query --threads 1234
      netatop query --by container --json
    """
    output = _output_format(as_json, as_csv)
    wanted = list(pids or [])
    if by is not None and threads:
        raise typer.BadParameter("groups are made of processes, not threads", param_hint="--by")
    with _errors():
        found, complaints, no_threads, notes = sources.query(
            run_dir, wanted, threads, with_exited=by is not None
        )
    if by is not None:
        groups = sort_groups(group_rows(found, by), sort or SortKey.BYTES)
        emit(
            groups[:top] if top else groups,
            output,
            group_columns(by),
            group_fields(by),
            Group.record,
        )
        for complaint in [*notes, *complaints]:
            typer.echo(f"netatop: {complaint}", err=True)
        if complaints:
            raise typer.Exit(EXIT_UNKNOWN_PID)
        return
    if wanted and not threads:
        # A PID that left the exit list: its last exit in the history (--db), if any.
        shown = {row.pid for row in found}
        for pid in dict.fromkeys(pid for pid in wanted if pid not in shown):
            last = sources.last_exit_in_history(db, pid)
            if last is not None:
                found.append(last)
                complaints.remove(sources.unknown_pid(pid))
                notes.append(sources.history_note(last))
    if sort is not None or not wanted:
        found = rows.sort_rows(found, sort or SortKey.BYTES)
    if top is not None:
        found = found[:top]
    width = output_width()
    columns, dropped = rows.query_columns(found, threads, width, cmdline)
    emit(found, output, columns, rows.TASK_FIELDS, TaskCounts.record)
    if not found and not wanted and not threads:
        with _errors():
            typer.echo(f"netatop: {sources.nothing_yet(run_dir)}", err=True)
    if dropped and output is OutputFormat.TABLE:
        typer.echo(
            f"netatop: {', '.join(dropped)} left out to fit {width} columns "
            "(a wider terminal, --json or --csv shows them)",
            err=True,
        )
    if no_threads:
        typer.echo(f"netatop: {NO_THREAD_ROWS}", err=True)
    for complaint in [*notes, *complaints]:
        typer.echo(f"netatop: {complaint}", err=True)
    if complaints:
        raise typer.Exit(EXIT_UNKNOWN_PID)


@app.command()
def exited(
    as_json: Json = False,
    as_csv: Csv = False,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    pid: Pid = None,
    db: DbPath = DB_DEFAULT,
    run_dir: RunDir = None,
) -> None:
    """Finished processes, oldest first.

    Without --since and --until: the daemon's exit list (read, not consumed;
    an entry stays there for 15 s; root or netatopd's --control-group).
    With either: the history database (read-only, for anyone who may read
    it).  Both give the user, exit time and command line of each process
    (the command line is cut to fit the terminal, ending with "…"; piped to
    another program it is never cut, unless COLUMNS is set); --json and --csv
    also give uid, unit, container and cgroup.  --pid keeps the process with
    that id; when it has none, the exit status is 1.

    \b
    Examples:
      netatop exited
      netatop exited --since 2h
      netatop exited --pid 1234 --since yesterday
      netatop exited --since 2026-11-27T02:00 --until 2026-11-27T03:00 --csv
      netatop exited --since 1d --limit 20 --db /srv/netatop.db
    """
    output = _output_format(as_json, as_csv)
    since_s, until_s = _window(since, until)
    with _errors():
        if since_s is None and until_s is None:
            finished = sources.exit_list(run_dir, pid)
            emit(
                finished[:limit] if limit else finished,
                output,
                rows.EXIT_LIST_COLUMNS,
                rows.EXITED_FIELDS,
                lambda row: row.record(rows.EXITED_FIELDS),
            )
            if pid is not None and not finished:
                _fail(
                    f"process {pid} is not in the exit list (it keeps a finished process "
                    f"for 15 s); {sources.history_hint(pid)}",
                    EXIT_UNKNOWN_PID,
                )
            return
        finished = sources.history_exited(db, since_s, until_s, limit, pid)
    emit(
        finished,
        output,
        rows.EXITED_COLUMNS,
        rows.EXITED_FIELDS,
        lambda row: row.record(rows.EXITED_FIELDS),
    )
    if pid is not None and not finished:
        _fail(f"no exit of process {pid} in the history in that window", EXIT_UNKNOWN_PID)


def _report_cell(column: str, shown_as: str) -> Callable[[Record], str]:
    return lambda row: rows.cell_text(shown_as, row[column])


def _add_running_processes(
    conn: apsw.Connection, name: str, until_s: float | None, run_dir: str | None
) -> str:
    """For a report that sums samples over a window that ends now: add each running
    process's counts since its last sample, from the daemon's table; returns the note
    that says where the figures come from ('' for a report that reads no samples)."""
    if not history.reads_samples(name):
        return ""
    last_s = history.last_sample_s(conn)
    sampled = (
        "the history's samples (none yet)"
        if last_s is None
        else f"the history's samples (the last at {format_clock(last_s)})"
    )
    if until_s is not None and until_s <= time.time():
        return f"figures from {sampled}"
    live = sources.running_now(run_dir)
    if isinstance(live, str):
        return (
            f"figures from {sampled} only ({live}): running processes lack their counts "
            "since their last sample"
        )
    if until_s is not None and until_s <= live.updated_s:
        return f"figures from {sampled}"
    history.add_live_tail(conn, live.updated_s, live.processes, live.uid_of)
    return (
        f"figures from {sampled}, and for running processes their counts since, "
        f"from netatopd's table at {format_clock(live.updated_s)}"
    )


@app.command()
def report(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="report to run (see --list)")
    ] = None,
    list_reports: Annotated[
        bool, typer.Option("--list", help="list the reports with a one-line description")
    ] = False,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    command: Annotated[
        str | None,
        typer.Option("--command", metavar="COMM", help="only processes with this command name"),
    ] = None,
    pid: Pid = None,
    order: Annotated[
        ReportOrder | None,
        typer.Option(
            "--order",
            help="largest first by bytes (sent and received), packets, sent (bytes), "
            "received, sent-packets or received-packets (default: the report's own order; "
            f"{TIE_BREAK})",
        ),
    ] = None,
    db: DbPath = DB_DEFAULT,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table (with units), csv or json")
    ] = OutputFormat.TABLE,
    by: Annotated[
        GroupBy | None,
        typer.Option(
            "--by",
            help="the group of top-groups and top-exited-groups (their key column): "
            "command (default), user, unit or container",
        ),
    ] = None,
    run_dir: RunDir = None,
) -> None:
    """Run one of the SQL reports (sql/reports/NAME.sql) on the history database.

    The database is opened read-only and works while netatopd writes.  In
    table format byte counts get units, times are local (2026-11-27 02:00:00)
    and users are names; csv and json give the numbers as stored (times in
    epoch seconds).  Over a window that ends now, a report on the samples
    also counts the running processes up to now, from netatopd's table
    (--run-dir); a note on stderr says where the figures come from.

    \b
    Examples:
      netatop report --list
      netatop report top-processes --since 1d --limit 10
      netatop report top-processes --since 10min --order sent --limit 1
      netatop report top-exited --pid 1234 --since yesterday
      netatop report by-command --since 02:00 --until 03:00
      netatop report hourly --since 1w --format csv
      netatop report recent-exits --command curl --format json
      netatop report by-container --since 1h
      netatop report top-exited-groups --by unit --since 1d
    """
    with _errors():
        if list_reports:
            reports = history.list_reports()
            listed: list[Record] = [
                {"name": r.name, "description": r.description, "params": list(r.params)}
                for r in reports
            ]
            if output is OutputFormat.TABLE:
                width = max((len(r.name) for r in reports), default=0)
                for item in reports:
                    typer.echo(f"{item.name:<{width}}  {item.description}")
            elif output is OutputFormat.CSV:
                flat = [{**row, "params": " ".join(row["params"])} for row in listed]
                typer.echo(render_csv(flat, ("name", "description", "params")))
            else:
                typer.echo(render_json(listed))
            return
        if name is None:
            raise typer.BadParameter("give a report NAME, or --list to see them", param_hint="NAME")
        since_s, until_s = _window(since, until)
        params = {
            "since": since_s,
            "until": until_s,
            "limit": limit,
            "command": command,
            "pid": pid,
            "order": None if order is None else order.value,
            "by": None if by is None else by.value,
        }
        conn = history.open_db(db, readonly=True)
        try:
            note = _add_running_processes(conn, name, until_s, run_dir)
            try:
                columns, values = history.run_report(conn, name, params)
            except ValueError as err:
                raise Unavailable(str(err)) from None
        finally:
            conn.close()
    records: list[Record] = [dict(zip(columns, row, strict=True)) for row in values]
    as_text = rows.TIME_FIELDS | {"uid"}  # shown as local times and user names
    numeric = {
        column: any(isinstance(r[column], int | float) for r in records)
        and all(isinstance(r[column], int | float) or r[column] is None for r in records)
        for column in columns
    }
    # The key of a report grouped --by user is a uid: shown as a user name.
    shown_as = {c: "uid" if c == "key" and by is GroupBy.USER else c for c in columns}
    flex = next((c for c in ("cmdline", "command", "key", "unit", "container") if c in columns), "")
    table_columns = [
        Column(
            rows.header(column),
            _report_cell(column, shown_as[column]),
            right=numeric[column] and shown_as[column] not in as_text,
            flex=column == flex,
        )
        for column in columns
    ]
    emit(records, output, table_columns, columns, lambda record: record)
    if note:
        typer.echo(f"netatop: {note}", err=True)


@app.command()
def sync(run_dir: RunDir = None) -> None:
    """Return once every packet captured before this command has been counted.

    \b
    Examples:
      netatop sync && netatop query 1234
    """
    with _errors():
        sources.call(run_dir, lambda c: c.sync())


@app.command()
def gc(run_dir: RunDir = None) -> None:
    """Run the garbage collector now (finished processes go to the exit list).

    \b
    Examples:
      netatop gc && netatop exited
    """
    with _errors():
        sources.call(run_dir, lambda c: c.force_gc())


def _pair_value(value: object) -> str:
    """A value of wait-exit's name=value lines: '-' if unknown, quoted (JSON) if it has
    spaces, quotes or control characters, so each line splits back into its pairs."""
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=" or not c.isprintable() for c in text):
        return json.dumps(text)
    return text


@app.command("wait-exit")
def wait_exit(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    count: Annotated[
        int, typer.Option("--count", min=0, metavar="N", help="stop after N (0: until interrupted)")
    ] = 0,
    run_dir: RunDir = None,
) -> None:
    """Print finished processes as they arrive, taking them from the exit list (GETCNT_EXIT).

    Each process is taken from the exit list (consumed, as atop's netatopd
    did) and printed at once: one line of name=value pairs (a value with
    spaces in double quotes, JSON style; '-' for unknown), or one JSON
    object a line, with the fields of exited.  Runs until interrupted, or until N processes.

    \b
    Examples:
      netatop wait-exit
      netatop wait-exit --json --count 1
    """

    def loop(client: ControlClient) -> None:
        seen = 0
        while count == 0 or seen < count:
            record = sources.take_exited(client).record(rows.EXITED_FIELDS)
            if as_json:
                typer.echo(json.dumps(record))
            else:
                typer.echo(" ".join(f"{k}={_pair_value(v)}" for k, v in record.items()))
            sys.stdout.flush()
            seen += 1

    try:
        with _errors():
            sources.call(run_dir, loop, timeout_s=None)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command("wait-empty")
def wait_empty(run_dir: RunDir = None) -> None:
    """Return once the exit list is empty (EMPTY_EXIT).

    \b
    Examples:
      netatop wait-empty; echo every finished process has been read
    """
    try:
        with _errors():
            sources.call(run_dir, lambda c: c.empty_exit(), timeout_s=None)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def top(
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=top_view.TOP_INTERVAL_S_MIN,
            metavar="SECONDS",
            help="refresh interval; rates are averages over it",
        ),
    ] = TOP_INTERVAL_S_DEFAULT,
    sort: Annotated[
        SortKey,
        typer.Option("--sort", help=f"first order, {SORT_HELP} (keys b p s r S R t u n switch it)"),
    ] = SortKey.BYTES,
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations", min=0, metavar="N", help="draw N frames, then exit (0: until q)"
        ),
    ] = 0,
    bits: Annotated[
        bool,
        typer.Option("--bits", help="rates in bits per second, decimal units (key m switches)"),
    ] = False,
    cmdline: Annotated[
        bool,
        typer.Option(
            "--cmdline",
            help="always a command line column (PID, S and COMMAND alone go before it; "
            "a cut one ends with a marker)",
        ),
    ] = False,
    run_dir: RunDir = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="one JSON object a frame, a line each: time, interval_s and its rows "
            "(counters per second, identity, total_bytes)",
        ),
    ] = False,
    as_csv: Annotated[
        bool,
        typer.Option("--csv", help="CSV: a header line, then a line a row, its time first"),
    ] = False,
    by: Annotated[
        GroupBy | None,
        typer.Option(
            "--by",
            help="one row per command, user, unit or container: its processes' rates "
            "summed (key g cycles)",
        ),
    ] = None,
) -> None:
    """A live view of the processes using the network, like top or nethogs.

    Per process: its state (R running, X finished: the row leaves 5 s
    later), user, command, bytes and packets per second sent and received,
    TCP and UDP bytes per second (from two snapshots of the shared table one
    interval apart), its lifetime bytes, a sparkline of its last minute and,
    where there is room, its command line; a totals line above.  Columns that
    do not fit are left out whole, least useful first, and the header ends
    with +N for N left out.  Keys: b p s r S R t u n sort by bytes, packets,
    sent, received, sent-packets, received-packets, tcp, udp or pid; m
    switches bytes and bits; g groups the rows by command, user, unit,
    container, then none; q or Ctrl-C quits and restores the terminal.
    Sent and received are coloured on a terminal, unless NO_COLOR is set.
    Piped, it prints one frame after the other with every column, without
    key help, colour or escape sequences.  --json and --csv print each
    interval's rows with uid, user, cmdline, unit, container and cgroup.

    \b
    Examples:
      netatop top
      netatop top --interval 5 --sort sent --bits
      netatop top --cmdline
      netatop top --iterations 3 > frames.txt
      netatop top --by container
      netatop top --json --iterations 1
    """
    output = _output_format(as_json, as_csv)
    with _errors():
        top_view.show(run_dir, interval, sort, iterations, bits, cmdline, output, by)


def main() -> None:
    app(prog_name="netatop")
