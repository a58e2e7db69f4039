"""netatopd: the netatop kernel module's per-process network accounting, in user space.

A packet's way through the package, each step a module or package that
imports only the ones before it (tests/unit/test_layering.py checks this):

    capture/ (libpcap lanes) -> counting (sums per batch; parse for odd frames,
    wire for every layout) -> flows (sockinfo) -> ownership/ (which process:
    procfs, netlink/ sock_diag, ebpf/) -> tasks (taskinfo) -> exitlist

and out again: table (shared memory), history/ (SQLite), server (control and
atop sockets), read by client and cli/ (the ``netatop`` command).  daemon/
wires it all together (``netatopd``); defaults, config, status (the STATUS
registry), protocol and rundir serve every step.  The README tells the story.
"""

__version__ = "0.1.0"
