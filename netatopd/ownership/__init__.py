"""Ownership: which process (taskinfo) each flow (sockinfo) belongs to.

The modules, each owning one part:

* ``registry`` — ``TaskRegistry``: makes a task from /proc (or from the
  kernel's record of a process already gone), applies the identity rule
  (``procfs.same_process``: pid plus start time) and finishes tasks onto the
  exit list and the atop journal.
* ``inodes`` — ``InodeIndex``: socket inode -> the processes holding it.
* ``kernel`` — ``KernelOwners``: the eBPF helper's owner records joined by tuple.
* ``resolver`` — ``Resolver``: finds and keeps each flow's owner, settles the
  flows' counters into their tasks.
* ``sweep`` — ``Sweeper``: the garbage collector for flows and tasks.

The per-task data (``TaskInfo``, ``TaskTable``, the row records) stays in
``netatopd.tasks`` and the exit list in ``netatopd.exitlist``: the table,
the history and the servers read those without importing this package.  The
daemon builds everything here; nothing below the daemon imports it.
"""

from .inodes import InodeIndex
from .kernel import KernelOwner, KernelOwners
from .registry import TaskRegistry
from .resolver import Resolver
from .sweep import Sweeper

__all__ = [
    "InodeIndex",
    "KernelOwner",
    "KernelOwners",
    "Resolver",
    "Sweeper",
    "TaskRegistry",
]
