"""netatopd: the netatop kernel module's per-process network accounting, in user space.

A packet travels through the package in this order (one module a stage):
capture/ -> parse -> flows (sockinfo) -> attribution (netlink/, procfs)
-> tasks (taskinfo) -> exitlist -> table / store -> server -> daemon / cli.
"""

__version__ = "0.1.0"
