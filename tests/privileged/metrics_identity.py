"""Run an actor (actors.py) under another command name and user, for the metrics tests.

Usage: python metrics_identity.py COMMAND UID PYTHON -u actors.py ROLE JSON-ARGS.
Sets the process's command name (prctl PR_SET_NAME, what /proc/PID/comm shows)
and drops to UID (with its group, no supplementary groups) before the actor
opens a socket, then runs the actor's code (read first) in this same process.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_NAME = 15

command, uid = sys.argv[1], int(sys.argv[2])
actor_argv = sys.argv[3:]
script = next(arg for arg in actor_argv if arg.endswith(".py"))
with open(script) as source:  # read while still root: the checkout may not be nobody's to read
    code = compile(source.read(), script, "exec")
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_NAME, command.encode()[:15], 0, 0, 0) != 0:
    raise SystemExit(f"prctl(PR_SET_NAME) failed: errno {ctypes.get_errno()}")
if uid != os.getuid():
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
sys.argv = actor_argv[actor_argv.index(script) :]
exec(code, {"__name__": "__main__", "__file__": script})
