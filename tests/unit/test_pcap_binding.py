"""Unit tests of the libpcap binding and the link table (no root needed).

Ground truth: the C sizeof of each structure on x86-64 Linux, libpcap's own
version string, and /sys/class/net for the loopback interface.
"""

from __future__ import annotations

import ctypes
import socket
from pathlib import Path

import pytest

from netatopd.capture import links, pcap
from netatopd.capture.links import LinkTable
from netatopd.capture.pcap import CaptureError, LibpcapMissing, load_libpcap


def test_libpcap_loads_and_reports_its_version() -> None:
    lib = load_libpcap()
    version = lib.pcap_lib_version().decode()
    assert version.startswith("libpcap version 1.")
    assert load_libpcap() is lib  # loaded once


def test_every_call_has_a_prototype() -> None:
    lib = load_libpcap()
    for name in (
        "pcap_create",
        "pcap_set_snaplen",
        "pcap_set_buffer_size",
        "pcap_set_timeout",
        "pcap_activate",
        "pcap_set_datalink",
        "pcap_compile",
        "pcap_setfilter",
        "pcap_freecode",
        "pcap_setnonblock",
        "pcap_get_selectable_fd",
        "pcap_stats",
        "pcap_geterr",
        "pcap_close",
        "pcap_dispatch",
        "pcap_dump_fopen",
        "pcap_dump_close",
    ):
        assert getattr(lib, name).argtypes is not None, name


def test_missing_library_gives_libpcap_missing() -> None:
    with pytest.raises(LibpcapMissing) as caught:
        load_libpcap(["libpcap-does-not-exist.so.99"])
    assert "apt-get install libpcap0.8" in str(caught.value)
    assert isinstance(caught.value, CaptureError)


def test_library_without_libpcap_calls_gives_libpcap_missing() -> None:
    with pytest.raises(LibpcapMissing, match="libpcap0.8"):
        load_libpcap(["libc.so.6"])


def test_capture_without_libpcap_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap, "_libpcap", None)
    monkeypatch.setattr(pcap, "LIBPCAP_FALLBACK_NAME", "libpcap-does-not-exist.so.99")
    monkeypatch.setattr(pcap.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(LibpcapMissing):
        pcap.Capture()


def test_status_names_match_libpcap() -> None:
    lib = load_libpcap()
    # pcap_statustostr knows every number we name, and words these two as below.
    for status in (s for s in pcap.PcapStatus if s != pcap.PcapStatus.OK):
        assert not lib.pcap_statustostr(status).startswith(b"Unknown"), status
    assert lib.pcap_statustostr(-13).startswith(b"Unknown")
    text = lib.pcap_statustostr(pcap.PcapStatus.ERROR_PERM_DENIED)
    assert text.startswith(b"You don't have permission")
    assert lib.pcap_statustostr(pcap.PcapStatus.ERROR_NO_SUCH_DEVICE) == b"No such device exists"


def test_struct_sizes_match_c_sizeof() -> None:
    # sizeof on x86-64: struct bpf_program 16, struct pcap_stat 12 (Linux),
    # struct timeval 16, struct pcap_pkthdr 24, struct pcap_file_header 24,
    # struct pcap_sf_pkthdr 16, struct ifreq 40.
    assert ctypes.sizeof(pcap.bpf_program) == 16
    assert ctypes.sizeof(pcap.pcap_stat) == 12
    assert ctypes.sizeof(pcap.timeval) == 16
    assert ctypes.sizeof(pcap.pcap_pkthdr) == 24
    assert pcap.PCAP_FILE_HEADER.size == 24
    assert links.IFREQ.size == 40
    assert links.IFREQ_INT.size == 40
    assert links.IFREQ_HWADDR.size == 40


def test_link_table_loopback() -> None:
    table = LinkTable()
    try:
        lo = socket.if_nametoindex("lo")
        mtu = int(Path("/sys/class/net/lo/mtu").read_text())
        assert table[lo] == (14, mtu)
        assert lo in table  # cached
        table.forget(lo)
        assert lo not in table
        assert table[lo] == (14, mtu)
        table.clear()
        assert len(table) == 0
    finally:
        table.close()


def test_link_table_vanished_ifindex_is_not_cached() -> None:
    table = LinkTable()
    try:
        missing = 2**31 - 7
        assert table[missing] == (0, 65536)
        assert missing not in table
        assert table.lookup(missing) is None
    finally:
        table.close()
