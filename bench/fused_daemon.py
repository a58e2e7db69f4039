"""netatopd with the fused per-packet path proposed for Engine.drain_capture; not a test.

bench_daemon.py --fused starts the daemon through this file: it replaces
Engine.drain_capture with the version below (parse and account in one walk,
``FlowTable.account_records``) and runs ``netatopd.daemon.main``.  The only
difference from daemon.py's loop is the one call; once daemon.py makes that
call itself this wrapper changes nothing.

Usage: python bench/fused_daemon.py [netatopd options]
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netatopd import daemon  # noqa: E402


def drain_capture(self: daemon.Engine) -> None:
    """Read the capture ring dry, batch by batch, and count every packet."""
    while True:
        started_s = time.time()
        batch = self.capture.read_batch(daemon.BATCH_PACKETS)
        if batch.count:
            now_s = time.time()
            self.flows.account_records(batch.records, self.links, self.rejects, now_s)
            self.resolver.settle(now_s)
            self.resolver.resolve(now_s)
            self.packets += batch.count
            self.batches += 1
        if batch.count < daemon.BATCH_PACKETS:
            self.last_drained_s = started_s
            return


if "account_records" not in inspect.getsource(daemon.Engine.drain_capture):
    daemon.Engine.drain_capture = drain_capture  # type: ignore[method-assign]

if __name__ == "__main__":
    daemon.main()
