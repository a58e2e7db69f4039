"""Capture stage: libpcap ring reader (pcap.py) and interface facts (links.py).

Stage: capture, the first stage.  Owns the libpcap handle and the link table;
hands raw cooked-v2 packet records to parse.py in batches.
Callers: the daemon loop and the privileged tests.
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
