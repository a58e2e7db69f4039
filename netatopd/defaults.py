"""Every default value and every path of netatopd and netatop, declared once.

Owns the defaults of the daemon's options (config.OPTIONS builds its table
from them), the defaults of the netatop command's options, and where the
files live: the run directory and the names in it, the history database, the
atop socket, the configuration file.  The stages that take one of these as a
keyword default (FlowTable, TaskTable, ExitList, Resolver, Sweeper, Capture,
Lanes, HistoryWriter, the table and the clients) import it from here, so a
default changes in one line.  Imports nothing of the package: config.py, the
CLI and the clients read it without loading a counting stage (the layering
test, tests/unit/test_layering.py, checks that).
"""

from __future__ import annotations

# Paths.
RUN_DIR_DEFAULT = "/run/netatop"  # --run-dir; NETATOP_RUN_DIR for the netatop command
CONTROL_SOCKET_NAME = "control"  # in the run directory
TABLE_FILE_NAME = "table"  # the shared table, in the run directory
LOCK_NAME = "lock"  # the daemon's flock, in the run directory
DB_DEFAULT = "/var/lib/netatop/netatop.db"  # --db
ATOP_SOCKET_DEFAULT = "/run/netatop-bpf-socket"  # --atop-socket (atop 2.10 and later)
CONFIG_DEFAULT = "/etc/netatop/netatopd.toml"  # --config, read if it exists
PROC_ROOT_DEFAULT = "/proc"

# Capture.
INTERFACE_DEFAULT = "any"
SNAPLEN_BYTES_DEFAULT = 128  # --snaplen: the lane for uncommon frames
BUFFER_MIB_DEFAULT = 64
CAPTURE_TIMEOUT_MS_DEFAULT = 10
HOLD_MIN_PPS = 20_000  # --hold-ms applies from this counted rate
HOLD_MS_DEFAULT = -1  # decide by the ownership source: HOLD_MS_WITH_KERNEL_OWNERSHIP or 0
# --hold-ms -1 with the eBPF helper.  The helper records each flow's owner when the
# process sends or receives, so reading packets later loses no owner; without it a
# later read finds fewer short-lived processes in /proc, so there is no hold then.
HOLD_MS_WITH_KERNEL_OWNERSHIP = 50

# Flows, tasks and their garbage collection.
MAX_FLOWS_DEFAULT = 200_000
MAX_TASKS_DEFAULT = 100_000
GC_INTERVAL_S_DEFAULT = 15.0
EXIT_LIFETIME_S_DEFAULT = 15.0  # an unread finished process stays this long in the exit list
UNOWNED_LIMIT_S_DEFAULT = 60.0  # a flow with no owner this long is written off
RESCAN_INTERVAL_S_DEFAULT = 0.25  # incremental /proc refresh while traffic flows
TCP_IDLE_S_DEFAULT = 1800.0
UDP_IDLE_S_DEFAULT = 16.0
OWNERSHIP_DEFAULT = "auto"  # kernel where the eBPF helper loads, else proc

# Publishing: the shared table, the sockets and the history.
PUBLISH_INTERVAL_MS_DEFAULT = 250
TABLE_CAPACITY_DEFAULT = MAX_TASKS_DEFAULT + 20_000  # rows: running tasks plus the exit list
CONTROL_MODE_DEFAULT = "0600"
FLUSH_INTERVAL_S_DEFAULT = 5.0
SAMPLE_INTERVAL_S_DEFAULT = 60.0
RETENTION_DAYS_DEFAULT = 30.0
LOG_LEVEL_DEFAULT = "warning"

# The netatop command.
TOP_INTERVAL_S_DEFAULT = 2.0

# The metrics endpoint (--metrics-*): labels of a group, series cap, idle groups dropped.
METRICS_GROUP_BY_DEFAULT = "command,user"
METRICS_MAX_SERIES_DEFAULT = 10_000
METRICS_IDLE_DROP_S_DEFAULT = 3600.0
