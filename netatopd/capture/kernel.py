"""The kernel counting path (``--capture kernel``) where the libpcap lanes would stand.

Owns the ``KernelCounter`` (ebpf/skbcount.py: the cgroup_skb programs at the
cgroup v2 root and their maps) and the drain schedule.  Gives the daemon's
engine what it needs from a capture: the descriptor to watch (``filenos``:
the programs' wake ring, readable when they met a new socket; empty where
the kernel has no ring, and the event loop then wakes every drain interval),
the loop's timer (``seconds_until_drain``), ``stats`` for STATUS, ``close``;
and, instead of
batches of frames, ``drain``: the per-socket sums since the last drain with
their wire bytes, ready for ``FlowTable.charge_sockets``.  Called by the
daemon's main (open, close) and engine (drain, stats).

Two rates.  A drain looks at the programs' news counters first (a memory
read): nothing is done when no entry was made; the sums are read (map switch
+ walk) when a socket was met for the first time, so its owner is looked for
while it is still there; when only sockets met before sent or received, their
sums are left in the kernel until the sum interval (250 ms) is up, or until
the engine asks for them (``force``: a process with counters exits;
``want_sums``: a SYNC request waits).  A drain is due when the wake ring
said a new socket came (at most one per drain interval, 10 ms, apart), at
the sum interval, or, without a ring, every drain interval.  Nothing
is lost meanwhile: the counts stay in the kernel's map until read.

Bytes on this path: the programs give IP bytes per socket, a GSO/GRO
aggregate already counted as the segments the wire carries with one set of
network and transport headers per segment; ``skbcount.wire_bytes`` adds
the link header and CRC per segment.  The programs do not see the interface,
so the link header is taken to be 14 bytes (Ethernet and loopback) for
every packet.
"""

from __future__ import annotations

import logging
import time

from ..ebpf.skbcount import KernelCounter, KernelCounterError, wire_bytes
from .pcap import CaptureError, CaptureStats

log = logging.getLogger(__name__)

LINK_HEADER_BYTES = 14  # Ethernet and loopback: the programs do not see the interface
SUM_INTERVAL_S_DEFAULT = 0.25  # known sockets' sums are read this often (--sum-interval-ms)


class KernelCapture:
    """The kernel path's counter, drained on an interval."""

    lanes: tuple[()] = ()  # no libpcap lanes
    fallback = ""

    def __init__(
        self,
        counter: KernelCounter,
        drain_interval_s: float,
        sum_interval_s: float = SUM_INTERVAL_S_DEFAULT,
    ) -> None:
        self.counter = counter
        self.drain_interval_s = drain_interval_s
        self.sum_interval_s = max(sum_interval_s, drain_interval_s)
        self.next_drain_monotonic_s = 0.0
        self.next_sums_monotonic_s = 0.0
        self.read_monotonic_s = 0.0  # when the last read of the sums began (time.monotonic)
        self.sums_wanted = False
        self.wake_fd = counter.wake_fileno()
        self.new_socket_woke = False  # the wake ring said a new socket came: drain soon
        self.drains = 0
        self.deferred = 0  # checks that left known sockets' sums for the sum interval
        self.packets = 0  # segments counted, every protocol

    @classmethod
    def open(
        cls,
        drain_interval_s: float,
        run_stats: bool = False,
        sum_interval_s: float = SUM_INTERVAL_S_DEFAULT,
    ) -> KernelCapture:
        """Load and attach the programs; CaptureError says why they cannot be."""
        try:
            counter = KernelCounter.open(run_stats=run_stats)
        except KernelCounterError as err:
            raise CaptureError(f"the kernel counting path cannot load: {err.reason}") from err
        return cls(counter, drain_interval_s, sum_interval_s)

    def filenos(self) -> list[int]:
        """The wake ring's fd (readable on a new socket), or none: then poll."""
        return [] if self.wake_fd is None else [self.wake_fd]

    def _next_due_monotonic_s(self) -> float:
        if self.wake_fd is None:
            return self.next_drain_monotonic_s
        if self.counter.take_wake():
            self.new_socket_woke = True
        if self.new_socket_woke or self.sums_wanted:
            return self.next_drain_monotonic_s  # one drain interval after the last
        return self.next_sums_monotonic_s

    def seconds_until_drain(self) -> float:
        return max(0.0, self._next_due_monotonic_s() - time.monotonic())

    def due(self) -> bool:
        return time.monotonic() >= self._next_due_monotonic_s()

    def want_sums(self) -> None:
        """Read the sums at the next drain even when no new socket is there (a SYNC waits)."""
        self.sums_wanted = True

    def drain(
        self, force: bool = False
    ) -> list[tuple[int, int, int, int, int, int, int, int]] | None:
        """Per socket since the last drain: (cookie, netns cookie, protocol, family,
        sent packets, sent wire bytes, received packets, received wire bytes).

        None when only sockets met before have counts and neither the sum
        interval is up, nor ``force``, nor ``want_sums``: they stay in the
        kernel for a later drain (everything up to now is counted only when
        a list, maybe empty, is returned).
        """
        now = time.monotonic()
        self.next_drain_monotonic_s = now + self.drain_interval_s
        self.new_socket_woke = False
        try:
            anything, new_socket = self.counter.changes()
            if (
                anything
                and not new_socket
                and not force
                and not self.sums_wanted
                and now < self.next_sums_monotonic_s
            ):
                self.deferred += 1
                return None
            # Nothing moved since the last switch: the map in use is empty, no read.
            counts = self.counter.drain() if anything else {}
        except KernelCounterError as err:
            raise CaptureError(str(err)) from err
        self.sums_wanted = False
        self.read_monotonic_s = now
        self.next_sums_monotonic_s = now + self.sum_interval_s
        self.drains += 1
        if not counts:
            return []
        link = LINK_HEADER_BYTES
        sums = []
        for c in counts.values():
            self.packets += c.sent_packets + c.recv_packets
            sums.append(
                (
                    c.cookie,
                    c.netns_cookie,
                    c.protocol,
                    c.family,
                    c.sent_packets,
                    wire_bytes(c.sent_ip_bytes, c.sent_packets, link),
                    c.recv_packets,
                    wire_bytes(c.recv_ip_bytes, c.recv_packets, link),
                )
            )
        return sums

    def stats(self) -> CaptureStats:
        """Segments counted; dropped: segments the full socket map could not record."""
        try:
            _, lost_packets = self.counter.lost()
        except KernelCounterError:
            lost_packets = 0
        return CaptureStats(self.packets, lost_packets, 0)

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """Program name -> (runs, ns), when the kernel's BPF statistics are on."""
        return self.counter.run_stats()

    def close(self) -> None:
        self.counter.close()
