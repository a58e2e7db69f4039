"""netatopd's exit status, declared once (netatopd(8), EXIT STATUS).

Used by the wiring and main (main.py), the event loop (loop.py) and --check
(check.py).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # clean stop; --check: every check passed
    ERROR = 1  # an unexpected error (capture failed, ...)
    USAGE = 2  # bad options or configuration file
    NO_LIBPCAP = 3  # libpcap cannot be loaded
    PRIVILEGES = 4  # missing privileges (capture, sock_diag)
    RUN_DIR = 5  # the run directory or a socket is unusable
    NO_KERNEL_OWNERSHIP = 6  # --ownership kernel and the eBPF helper did not load
    NO_KERNEL_CAPTURE = 7  # --capture kernel and the cgroup_skb programs did not load
