"""The durable history: finished processes and samples of running ones, in SQLite (apsw).

A package of five modules, each with one job:

* schema.py — :func:`open_db` (the pragmas), schema.sql and the numbered
  migrations, :class:`StoreError`, :func:`sql_dir`, and the daemon's open
  (``open_checked``: quick check, a damaged file moved aside) and read-back
  of running processes' counters (``running_sums``);
* rows.py — the column order and the upserts of ``exited`` and ``samples``,
  and the conversions between ``ExitedTask`` and a row;
* writer.py — :class:`HistoryWriter`, the background thread that commits rows;
* reports.py — the SQL report files and :func:`query_exited`;
* timeparse.py — :func:`parse_time` for --since and --until.

Callers import from here: the daemon (daemon.engine: ``HistoryWriter``,
``StoreError``; daemon.check: ``open_db``) and the netatop command
(cli.commands: ``open_db`` read-only, the reports,
``query_exited``, ``parse_time``).
"""

from .reports import (
    Report,
    add_live_tail,
    last_sample_s,
    list_reports,
    query_exited,
    reads_samples,
    reports_dir,
    run_report,
)
from .schema import (
    StoreError,
    latest_schema_version,
    open_db,
    schema_steps,
    sql_dir,
)
from .timeparse import parse_time
from .writer import HistoryWriter

__all__ = [
    "HistoryWriter",
    "Report",
    "add_live_tail",
    "last_sample_s",
    "reads_samples",
    "StoreError",
    "latest_schema_version",
    "list_reports",
    "open_db",
    "parse_time",
    "query_exited",
    "reports_dir",
    "run_report",
    "schema_steps",
    "sql_dir",
]
