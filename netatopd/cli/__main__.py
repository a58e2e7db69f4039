"""``python -m netatopd.cli``: the netatop command, as the console script runs it."""

from __future__ import annotations

from .commands import main

main()
