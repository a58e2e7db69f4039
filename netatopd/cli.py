"""The ``netatop`` command: thin typer commands over the control client.

Stage: interfaces.  Owns nothing but formatting; every answer comes from the
daemon through client.py.  One row model (a dict whose keys are the counter
names plus pid, tgid, kind, btime, command) is rendered as a table or JSON.
Exit status: 0 success, 1 a process asked for is not known, 2 the daemon is
not running or not reachable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import typer

from .client import ControlClient, DaemonNotRunning, ProtocolError, TaskCounters
from .protocol import COUNTER_NAMES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Ask netatopd which processes use the network.\n\n"
    "Examples:\n\n  netatop status\n\n  netatop query --json 1234\n\n  netatop wait-exit",
)

RunDir = Annotated[
    str | None,
    typer.Option(
        "--run-dir",
        envvar="NETATOP_RUN_DIR",
        help="netatopd's run directory (default: /run/netatop)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print one JSON array of objects")]
T = TypeVar("T")


def _call(
    run_dir: str | None, action: Callable[[ControlClient], T], timeout_s: float | None = 30.0
) -> T:
    """Run action on a fresh connection; a daemon that is not there is one sentence and exit 2."""
    try:
        with ControlClient(run_dir, timeout_s=timeout_s) as client:
            return action(client)
    except DaemonNotRunning as err:
        typer.echo(f"netatop: {err}", err=True)
        raise typer.Exit(2) from None
    except PermissionError as err:
        typer.echo(f"netatop: {err.strerror}", err=True)
        raise typer.Exit(2) from None
    except (ProtocolError, ConnectionError, TimeoutError) as err:
        typer.echo(f"netatop: lost the daemon: {err}", err=True)
        raise typer.Exit(2) from None


def task_row(record: TaskCounters, kind: str = "process") -> dict[str, Any]:
    row: dict[str, Any] = {
        "pid": record.id,
        "tgid": record.id,
        "kind": kind,
        "btime": record.btime,
        "command": record.command,
    }
    row.update(record.as_dict())
    return row


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    header = (
        "PID",
        "COMMAND",
        "TCPSND",
        "TCPSNDB",
        "TCPRCV",
        "TCPRCVB",
        "UDPSND",
        "UDPSNDB",
        "UDPRCV",
        "UDPRCVB",
    )
    lines = [header]
    for row in rows:
        lines.append(
            (str(row["pid"]), row["command"][:15], *(str(row[name]) for name in COUNTER_NAMES))
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [line[0].rjust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        typer.echo("  ".join(cells).rstrip())


def _sorted(records: Iterable[TaskCounters]) -> list[TaskCounters]:
    return sorted(
        records,
        key=lambda r: (-(r.counters[1] + r.counters[3] + r.counters[5] + r.counters[7]), r.id),
    )


@app.command()
def status(run_dir: RunDir = None, as_json: Json = False) -> None:
    """The daemon's figures: packets per protocol, unidentified, flows, tasks, drops."""
    figures = _call(run_dir, lambda c: c.status())
    if as_json:
        typer.echo(json.dumps(figures, indent=1))
        return
    for name, value in figures.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        typer.echo(f"{name:28} {value}")


@app.command()
def query(
    pids: Annotated[
        list[int] | None, typer.Argument(help="process ids (default: every process)")
    ] = None,
    run_dir: RunDir = None,
    as_json: Json = False,
) -> None:
    """Counters of running processes (all of them, or the PIDs given)."""

    def ask(client: ControlClient) -> tuple[list[TaskCounters], list[int]]:
        if not pids:
            return _sorted(client.list_tasks()), []
        found, missing = [], []
        for pid in pids:
            try:
                found.append(client.getcnt_tgid(pid))
            except ProcessLookupError:
                missing.append(pid)
        return found, missing

    found, missing = _call(run_dir, ask)
    _print_rows([task_row(r) for r in found], as_json)
    for pid in missing:
        typer.echo(f"netatop: process {pid} is not known to netatopd", err=True)
    if missing:
        raise typer.Exit(1)


@app.command()
def exited(run_dir: RunDir = None, as_json: Json = False) -> None:
    """Finished processes in the daemon's exit list (read, not consumed)."""
    records = _call(run_dir, lambda c: c.list_exited())
    _print_rows([task_row(r, "exited") for r in records], as_json)


@app.command()
def sync(run_dir: RunDir = None) -> None:
    """Return once every packet captured before this command has been counted."""
    _call(run_dir, lambda c: c.sync())


@app.command()
def gc(run_dir: RunDir = None) -> None:
    """Run the garbage collector now (finished processes go to the exit list)."""
    _call(run_dir, lambda c: c.force_gc())


@app.command("wait-exit")
def wait_exit(
    run_dir: RunDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    count: Annotated[
        int, typer.Option("--count", help="stop after this many (0: until interrupted)")
    ] = 0,
) -> None:
    """Print finished processes as they arrive, taking them from the exit list (GETCNT_EXIT)."""

    def loop(client: ControlClient) -> None:
        seen = 0
        while count == 0 or seen < count:
            row = task_row(client.getcnt_exit(), "exited")
            if as_json:
                typer.echo(json.dumps(row))
            else:
                typer.echo(" ".join(f"{k}={v}" for k, v in row.items()))
            sys.stdout.flush()
            seen += 1

    try:
        _call(run_dir, loop, timeout_s=None)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("wait-empty")
def wait_empty(run_dir: RunDir = None) -> None:
    """Return once the exit list is empty (EMPTY_EXIT)."""
    _call(run_dir, lambda c: c.empty_exit(), timeout_s=None)


def main() -> None:
    app()
