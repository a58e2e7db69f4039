"""Waiting until eBPF programs and maps of ours are gone (test_skbcount, test_kernel_path)."""

from __future__ import annotations

import os
import time

from netatopd.ebpf import loaded_object_ids
from netatopd.ebpf.syscalls import AttachType, prog_query

FREE_WAIT_S = 5.0  # maps are freed after an RCU grace period


def wait_gone(prog_ids: list[int], map_ids: list[int], cgroup: str) -> None:
    """Bounded wait until none of these ids is loaded, or attached at cgroup."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + FREE_WAIT_S
        while True:
            attached = set(prog_query(fd, AttachType.CGROUP_INET_INGRESS)) | set(
                prog_query(fd, AttachType.CGROUP_INET_EGRESS)
            )
            loaded_progs, loaded_maps = loaded_object_ids()
            left = (set(prog_ids) & (attached | set(loaded_progs))) | (
                set(map_ids) & set(loaded_maps)
            )
            if not left:
                return
            assert time.monotonic() < deadline, f"still loaded or attached: {sorted(left)}"
            time.sleep(0.02)
    finally:
        os.close(fd)
