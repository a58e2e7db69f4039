"""Capture lanes: the traffic split over a few libpcap handles by kernel filters.

Owns the handles of one capture: two *fixed* lanes whose kernel BPF filter
takes only the common TCP/UDP frames of one IP family and whose snap length
stops right after the ports, and one *other* lane for every remaining IP
frame.  Callers: the daemon's drain_capture (``filenos`` for the selector,
``lanes`` to read, ``stats``, ``close``), the privileged tests and the
benchmarks.

Why lanes: every frame of a fixed lane is captured to exactly the same length
(``LaneKind.frame_bytes``), so a batch of them is a run of equal-sized records
that Python can split and count in C (``struct.iter_unpack`` and
``collections.Counter``, see ``counting.count_fixed``) instead of walking it
record by record.  The filters partition the traffic: a frame is captured by
exactly one lane, so the lanes' counters add up.

The fixed lanes' guarantees, enforced in the kernel by filters built here
from wire.FIXED_FRAMES (members, offsets, values), the layouts the counting
code reads:

* IPv4: cooked protocol ETH_P_IP, first byte 0x45 (version 4, 20-byte header),
  not a fragment (more-fragments flag and offset 0), protocol TCP or UDP,
  tot_len >= 24 (the ports are inside the packet; a BIG TCP aggregate with
  tot_len 0 goes to the other lane).
  Every such frame is at least 48 bytes long, so 44 are always captured.
* IPv6: cooked protocol ETH_P_IPV6, version 6, next header TCP or UDP (no
  extension headers), payload_len >= 4.  At least 68 bytes, 64 captured.

A frame that claims those lengths but is shorter (a malformed frame from the
wire) is captured shorter; the reader sees that the batch is not made of equal
records and walks it the slow way, so nothing is lost or misread.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import NamedTuple

from ..defaults import (
    BUFFER_MIB_DEFAULT,
    CAPTURE_TIMEOUT_MS_DEFAULT,
    INTERFACE_DEFAULT,
    SNAPLEN_BYTES_DEFAULT,
)
from ..wire import (
    ETH_P_IP,
    ETH_P_IPV6,
    FIXED_FRAMES,
    IP_FRAGMENT_MASK,
    IPV4_FIXED,
    IPV6_FIXED,
    FixedFrame,
)
from .pcap import DEFAULT_FILTER, Capture, CaptureError, CaptureFilterError, CaptureStats

log = logging.getLogger(__name__)

# pcap-filter(7)'s primitive for a cooked protocol, also the name of its header
# (ip[n] is byte n of the IPv4 header).
_FILTER_PROTOCOL = {ETH_P_IP: "ip", ETH_P_IPV6: "ip6"}


def fixed_filter(frame: FixedFrame) -> str:
    """The pcap-filter(7) expression that takes exactly the frames of a fixed lane."""
    ip = _FILTER_PROTOCOL[frame.ethertype]
    header = frame.ip_header

    def load(member: str) -> str:
        offset, width = header.offset(member), header.width(member)
        return f"{ip}[{offset}]" if width == 1 else f"{ip}[{offset}:{width}]"

    first = load(frame.first_byte_member)
    if frame.first_byte_mask == 0xFF:
        tests = [ip, f"{first} == {frame.first_byte:#x}"]
    else:
        tests = [ip, f"{first} & {frame.first_byte_mask:#x} == {frame.first_byte:#x}"]
    if frame.fragment_member is not None:
        tests.append(f"{load(frame.fragment_member)} & {IP_FRAGMENT_MASK:#x} == 0")
    protocol = load(frame.protocol_member)
    tests.append("(" + " or ".join(f"{protocol} == {p}" for p in frame.protocols) + ")")
    tests.append(f"{load(frame.length_member)} >= {frame.length_min}")
    return " and ".join(tests)


# The fixed lanes' kernel filters and the other lane's, which takes what they do not.
IPV4_FIXED_FILTER = fixed_filter(IPV4_FIXED)
IPV6_FIXED_FILTER = fixed_filter(IPV6_FIXED)
OTHER_FILTER = f"({DEFAULT_FILTER}) and not ({IPV4_FIXED_FILTER}) and not ({IPV6_FIXED_FILTER})"

# Share of --buffer-mib each lane's ring gets (the rings add up to it).  A fixed
# lane's frames take about 112 bytes of ring each (against about 180 for a
# 64-byte datagram at snap 128), so 2/5 of the buffer holds about two thirds of
# the packets the whole did with one handle: at 200,000 a second, over a second.
FIXED_LANE_BUFFER_SHARE = 0.4
OTHER_LANE_BUFFER_SHARE = 0.2
LANE_BUFFER_BYTES_MIN = 1 << 20


class LaneKind(IntEnum):
    """Which frames a lane captures; the value is the IP version (0: any)."""

    OTHER = 0
    IPV4 = 4
    IPV6 = 6

    @property
    def frame_bytes(self) -> int:
        """The captured length of every frame of a fixed lane (0: varies)."""
        frame = FIXED_FRAMES.get(self.value)
        return 0 if frame is None else frame.frame_bytes


class Lane(NamedTuple):
    kind: LaneKind
    capture: Capture


class CaptureLanes:
    """The lanes of one capture (or one lane taking everything, with single=True).

    Where libpcap or the kernel refuses a lane's filter, the capture falls back
    to one lane (``fallback`` says why) rather than not starting: the counts
    are the same, only dearer.
    """

    def __init__(
        self,
        interface: str = INTERFACE_DEFAULT,
        snaplen_bytes: int = SNAPLEN_BYTES_DEFAULT,
        buffer_bytes: int = BUFFER_MIB_DEFAULT << 20,
        timeout_ms: int = CAPTURE_TIMEOUT_MS_DEFAULT,
        single: bool = False,
    ) -> None:
        self.interface = interface
        self.fallback = ""  # why the lanes were given up for a single handle, if they were
        self.lanes: list[Lane] = []
        try:
            self._open(interface, snaplen_bytes, buffer_bytes, timeout_ms, single)
        except CaptureFilterError as err:
            if single:
                raise
            self.fallback = str(err)
            log.warning("capture lanes not usable (%s); capturing with one handle instead", err)
            self._open(interface, snaplen_bytes, buffer_bytes, timeout_ms, True)

    def _open(
        self, interface: str, snaplen_bytes: int, buffer_bytes: int, timeout_ms: int, single: bool
    ) -> None:
        if single:
            plan = [(LaneKind.OTHER, DEFAULT_FILTER, snaplen_bytes, buffer_bytes)]
        else:
            fixed_bytes = max(LANE_BUFFER_BYTES_MIN, int(buffer_bytes * FIXED_LANE_BUFFER_SHARE))
            other_bytes = max(LANE_BUFFER_BYTES_MIN, int(buffer_bytes * OTHER_LANE_BUFFER_SHARE))
            plan = [
                (LaneKind.IPV4, IPV4_FIXED_FILTER, LaneKind.IPV4.frame_bytes, fixed_bytes),
                (LaneKind.IPV6, IPV6_FIXED_FILTER, LaneKind.IPV6.frame_bytes, fixed_bytes),
                (LaneKind.OTHER, OTHER_FILTER, snaplen_bytes, other_bytes),
            ]
        try:
            for kind, bpf_filter, snap, ring_bytes in plan:
                capture = Capture(
                    interface,
                    snaplen_bytes=snap,
                    buffer_bytes=ring_bytes,
                    timeout_ms=timeout_ms,
                    bpf_filter=bpf_filter,
                )
                self.lanes.append(Lane(kind, capture))
        except BaseException:
            self.close()
            raise
        log.info(
            "capturing on %r in %d lane%s, block timeout %d ms: %s",
            interface,
            len(plan),
            "" if len(plan) == 1 else "s",
            timeout_ms,
            ", ".join(
                f"{kind.name.lower()} ({snap} bytes a packet, {ring_bytes >> 20} MiB)"
                for kind, _, snap, ring_bytes in plan
            ),
        )

    @property
    def single(self) -> bool:
        """Whether one handle takes everything (asked for, or the lanes' fallback)."""
        return [lane.kind for lane in self.lanes] == [LaneKind.OTHER]

    def filenos(self) -> list[int]:
        """Every lane's packet socket, for the selector."""
        return [lane.capture.fileno() for lane in self.lanes]

    def stats(self) -> CaptureStats:
        """libpcap's counters summed over the lanes (each frame is in exactly one lane)."""
        if not self.lanes:
            raise CaptureError("capture is closed")
        received = dropped = interface_dropped = 0
        for lane in self.lanes:
            stats = lane.capture.stats()
            received += stats.received
            dropped += stats.dropped
            interface_dropped += stats.interface_dropped
        return CaptureStats(received, dropped, interface_dropped)

    def close(self) -> None:
        """Close every lane; safe to call twice."""
        lanes, self.lanes = self.lanes, []
        for lane in lanes:
            lane.capture.close()

    def __enter__(self) -> CaptureLanes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
