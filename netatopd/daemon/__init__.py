"""netatopd, the daemon: counts every packet for the process that sent or received it.

The package, in the order a start walks it:

* ``main``: options, logging, the wiring of capture, engine and sockets;
  ``main.main`` is the ``netatopd`` command (and ``python -m netatopd.daemon``);
* ``check``: ``netatopd --check``;
* ``engine``: every counting stage wired together, the counting pass and
  housekeeping, with an injectable clock;
* ``hold``: the --hold-ms decision and state;
* ``answers``: the control and atop sockets' answers, STATUS among them;
* ``readings``: what the STATUS registry (netatopd.status) reads;
* ``loop``: the selector, the signals and the hold applied to the capture;
* ``exitcodes``: the exit status, declared once.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
