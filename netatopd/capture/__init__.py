"""Capture: where packets enter, as batches of raw cooked-v2 records.

``pcap`` owns one libpcap handle (the only contact with libpcap), ``lanes``
splits the traffic over a few handles by kernel filter (``CaptureLanes``),
``links`` knows each interface's link header and MTU (``LinkTable``).  The
batches go to counting.py.  Callers: the daemon (daemon.main opens the
lanes, daemon.engine drains them, daemon.check loads libpcap), the
privileged tests and the benchmarks.
"""

from netatopd.capture.links import LinkTable
from netatopd.capture.pcap import (
    DEFAULT_FILTER,
    Batch,
    Capture,
    CaptureError,
    CapturePermissionError,
    CaptureStats,
    LibpcapMissing,
)

__all__ = [
    "DEFAULT_FILTER",
    "Batch",
    "Capture",
    "CaptureError",
    "CapturePermissionError",
    "CaptureStats",
    "LibpcapMissing",
    "LinkTable",
]
