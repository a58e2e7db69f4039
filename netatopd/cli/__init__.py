"""The ``netatop`` command line: the package a person or a script talks to.

Its modules, from the bottom up: format (units and the table, JSON and CSV
renderers), rows (TaskCounts, the one row of query, exited and top, built
from each source), sources (shared table, control socket or history database,
and which one answers), status (the status screen), top (the live view) and
commands (the typer app).  Only this package prints.  ``main`` is the console
script ``netatop``; ``python -m netatopd.cli`` runs it too (__main__).
"""

from __future__ import annotations

from .commands import app, main

__all__ = ["app", "main"]
