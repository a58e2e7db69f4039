"""The times a person types after --since and --until.

Owns :func:`parse_time`: ISO 8601 dates and times (local unless an offset is
given), a time of day today, a relative age ("15m", "2h"), "now" and
"@EPOCH", all turned into epoch seconds, and :func:`finite_seconds`, the
check every stored time passes.  Pure: no database, no I/O.

Callers: cli.commands (``netatop exited --since/--until`` and the ``netatop report``
window options); rows.py and writer.py (finite_seconds).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from datetime import time as dt_time

_RELATIVE_TIME = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_TIME_OF_DAY = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_RELATIVE_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def finite_seconds(value: float) -> float:
    """value as a float; ValueError for NaN and infinities."""
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"time {value!r} is not a finite number")
    return result


def parse_time(text: str, now_s: float | None = None) -> float:
    """Epoch seconds from ISO 8601, a time of day, or a relative age.

    Accepts "2026-11-27T02:00", "2026-11-27 02:00:30", "2026-11-27" (local time
    unless an offset or Z is given), "02:00" (today, local time), "90s" "15m" "2h"
    "1d" "1w" (now minus that), "now" and "@EPOCH".  Anything else is a ValueError.
    """
    value = text.strip()
    now = time.time() if now_s is None else now_s
    if value.lower() == "now":
        return now
    match = _RELATIVE_TIME.match(value.lower())
    if match is not None:
        return now - float(match.group(1)) * _RELATIVE_UNIT_S[match.group(2)]
    if value.startswith("@"):
        try:
            return finite_seconds(float(value[1:]))
        except ValueError:
            pass
    elif _TIME_OF_DAY.match(value):
        try:
            of_day = dt_time.fromisoformat(value)
            return datetime.combine(datetime.fromtimestamp(now).date(), of_day).timestamp()
        except ValueError:
            pass
    else:
        try:
            return datetime.fromisoformat(value).timestamp()  # naive: local time
        except ValueError:
            pass
    raise ValueError(
        f"cannot read time {text!r}: use ISO 8601 (2026-11-27T02:00 or 2026-11-27),"
        " a time of day today (02:00), a relative age (90s, 15m, 2h, 1d, 1w), now, or @EPOCH"
    )
