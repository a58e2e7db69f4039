"""The metrics options' meaning: --metrics-listen and --metrics-group-by, and the defaults.

Pure: imported by config.py (to refuse bad values at start-up and in
--check), by book.py and http.py.
"""

from __future__ import annotations

# What a process's identity carries: unit and container come from its cgroup path
# (cgroups.placement_labels; "" when the path names none).
GROUP_LABELS = ("command", "user", "unit", "container")


def parse_group_by(text: str) -> tuple[str, ...]:
    """The label names of --metrics-group-by ('command,user'); ValueError with a sentence."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError("metrics-group-by: name at least one of " + ", ".join(GROUP_LABELS))
    for name in names:
        if name not in GROUP_LABELS:
            raise ValueError(
                f"metrics-group-by: unknown group {name!r}; choose from {', '.join(GROUP_LABELS)}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"metrics-group-by: a name is given twice in {text!r}")
    return names


class MetricsListenError(Exception):
    """--metrics-listen names no usable address, or the port cannot be bound."""


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT (IPv6 as [ADDR]:PORT) -> (address, port); MetricsListenError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise MetricsListenError(
            f"metrics-listen: {text!r} is not ADDR:PORT (for example 127.0.0.1:9477)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise MetricsListenError(f"metrics-listen: write an IPv6 address in brackets: [{host}]")
    return host, int(port_text)
