"""The times a person types after --since and --until.

Owns :func:`parse_time`: ISO 8601 dates and times (local unless an offset is
given), a time of day today, a relative age in the forms journalctl(1) takes
("15m", "10min", "2h ago", "-1d", "1h 30min"), the days "today",
"yesterday" and "tomorrow", "now" and "@EPOCH", all turned into epoch
seconds, and :func:`finite_seconds`, the check every stored time passes.
Pure: no database, no I/O.

Callers: cli.commands (``netatop exited --since/--until`` and the ``netatop report``
window options); rows.py and writer.py (finite_seconds).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta
from datetime import time as dt_time

# Units of an age, as journalctl (systemd.time(7)) spells them; "m" is minutes.
_AGE_UNIT_S = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
}
_AGE_TERM = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_TIME_OF_DAY = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}

TIME_FORMS = (
    "ISO 8601 (2026-11-27T02:00 or 2026-11-27), a time of day today (02:00), an age"
    " (90s, 15m, 10min, 2h, 2h ago, 1d, 1w), today, yesterday, now, or @EPOCH"
)


def finite_seconds(value: float) -> float:
    """value as a float; ValueError for NaN and infinities."""
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"time {value!r} is not a finite number")
    return result


def _age_s(text: str) -> float | None:
    """Seconds of an age such as "15m", "2h ago", "-1d" or "1h 30min"; None if it is not one."""
    body = text.removeprefix("-").strip() if text.startswith("-") else text
    if body.endswith(" ago"):
        if text.startswith("-"):
            return None  # "-2h ago": which way?
        body = body.removesuffix(" ago").strip()
    total = 0.0
    position = 0
    while position < len(body):
        match = _AGE_TERM.match(body, position)
        if match is None or match.group(2) not in _AGE_UNIT_S:
            return None
        total += float(match.group(1)) * _AGE_UNIT_S[match.group(2)]
        position = match.end()
    return total if position else None


def parse_time(text: str, now_s: float | None = None) -> float:
    """Epoch seconds from ISO 8601, a time of day, a day name or a relative age.

    Accepts "2026-11-27T02:00", "2026-11-27 02:00:30", "2026-11-27" (local time
    unless an offset or Z is given), "02:00" (today, local time), an age
    (now minus it) as journalctl takes it: "90s" "15m" "10min" "2h" "1d" "1w",
    "2h ago", "-2h", "1h 30min"; "today", "yesterday" and "tomorrow" (that
    day's 00:00, local time), "now" and "@EPOCH".  Anything else is a
    ValueError.
    """
    value = text.strip()
    lowered = " ".join(value.lower().split())
    now = time.time() if now_s is None else now_s
    if lowered == "now":
        return now
    if lowered in _DAYS:
        day = datetime.fromtimestamp(now).date() + timedelta(days=_DAYS[lowered])
        return datetime.combine(day, dt_time()).timestamp()
    age = _age_s(lowered)
    if age is not None:
        return now - age
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
    raise ValueError(f"cannot read time {text!r}: use {TIME_FORMS}")
