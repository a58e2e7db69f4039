"""Wire formats shared by the daemon and its clients.

Definitions only.  Owns the counter names of the kernel module's ``struct
taskcount``, the C layout of ``struct netpertask``, the command numbers and
the control socket's request and reply frames.  Imported by server.py,
client.py, tasks.py, table.py, the history rows, the CLI and the tests;
imports nothing of the package.
"""

from __future__ import annotations

import struct
from enum import IntEnum

# The counters of struct taskcount (netatop.h), in their C order.
COUNTER_NAMES: tuple[str, ...] = (
    "tcpsndpacks",
    "tcpsndbytes",
    "tcprcvpacks",
    "tcprcvbytes",
    "udpsndpacks",
    "udpsndbytes",
    "udprcvpacks",
    "udprcvbytes",
)

# struct netpertask (netatop.h), x86-64 layout, 96 bytes:
#   pid_t id;              int32
#   (padding)              4 bytes
#   unsigned long btime;   uint64   process start, seconds since the epoch
#   char command[16];      NUL padded
#   struct taskcount tc;   8 x uint64 (COUNTER_NAMES)
NETPERTASK = struct.Struct("=i4xQ16s8Q")
NETPERTASK_SIZE = 96


class Command(IntEnum):
    """The getsockopt command numbers of the kernel module (netatop.h: NETATOP_BASE_CTL
    15661 and up); the control socket keeps them and adds its own from 15661 + 16."""

    PROBE = 15661
    FORCE_GC = 15662
    EMPTY_EXIT = 15663
    GETCNT_EXIT = 15664
    GETCNT_TGID = 15665
    GETCNT_PID = 15666
    STATUS = 15677  # JSON object: the /proc/netatop figures and ours
    SYNC = 15678  # answers once every packet captured before it is counted
    LIST_TASKS = 15679  # every live process: netpertask records
    LIST_EXIT = 15680  # the exit list, not consumed: netpertask records
    # The same with each process's identity, as JSON (DETAIL_FIELDS):
    LIST_TASKS_DETAIL = 15681  # array of every live process
    LIST_EXIT_DETAIL = 15682  # array of the exit list, not consumed
    GETCNT_EXIT_DETAIL = 15683  # one object: the oldest finished process, taken (blocks)


# Keys of the objects the *_DETAIL commands answer: who the process is, then the
# counters (COUNTER_NAMES).  Times are epoch seconds; uid -1 and "" mean unknown
# or none; exit_time is null for a live process.
DETAIL_FIELDS: tuple[str, ...] = (
    "tgid",
    "btime",
    "command",
    "cmdline",
    "uid",
    "unit",
    "container",
    "cgroup",
    "first_activity",
    "last_activity",
    "exit_time",
    *COUNTER_NAMES,
)


# Request, 16 bytes:
#   uint32 magic      REQUEST_MAGIC
#   uint32 command    Command
#   int32  id         pid or tgid for GETCNT_PID / GETCNT_TGID, else 0
#   uint32 reserved   0
REQUEST = struct.Struct("=IIiI")
REQUEST_MAGIC = 0x4E545251  # "QRTN" in memory on little endian: "NTRQ"

# Reply header, 16 bytes, followed by payload_bytes of payload:
#   uint32 magic          REPLY_MAGIC
#   uint32 command        the request's command
#   int32  error          0, or a positive errno (ESRCH, EINVAL, ...)
#   uint32 payload_bytes  length of what follows
REPLY = struct.Struct("=IIiI")
REPLY_MAGIC = 0x4E545250  # "NTRP"


def pack_netpertask(
    task_id: int, btime: int, command: str, counters: list[int] | tuple[int, ...]
) -> bytes:
    """One C ``struct netpertask``: the command is cut to 15 bytes and NUL padded."""
    name = command.encode("utf-8", "replace")[:15]
    return NETPERTASK.pack(task_id, btime, name, *counters)


def unpack_netpertask(record: bytes | memoryview) -> tuple[int, int, str, tuple[int, ...]]:
    """(id, btime, command, counters) from one 96-byte record."""
    fields = NETPERTASK.unpack(record)
    command = fields[2].split(b"\0", 1)[0].decode("utf-8", "replace")
    return fields[0], fields[1], command, tuple(fields[3:])
