"""netatopd.ebpf.skbcount without root: layouts, mountinfo parsing, program assembly."""

from __future__ import annotations

from pathlib import Path

from netatopd.ebpf.asm import assemble, instruction_count
from netatopd.ebpf.skbcount import (
    ARRAY_KEY,
    SOCK_COUNTS,
    SOCKET_KEY,
    STACK_SCRATCH,
    STACK_VALUE,
    STATS,
    cgroup2_mounts,
    count_program,
    find_cgroup2_root,
    wire_bytes,
)
from netatopd.ebpf.syscalls import (
    BPF_ATTR_LINK_CREATE,
    BPF_ATTR_PROG_ATTACH,
    BPF_ATTR_PROG_QUERY,
    AttachType,
)

HYBRID = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n"
# A bind mount of a sub-cgroup (root field not "/") and a mount point with a space.
OTHERS = (
    "40 25 0:26 /system.slice /mnt/slice rw - cgroup2 cgroup2 rw\n"
    "41 25 0:26 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
)


def test_struct_sizes_match_the_c_layouts() -> None:
    assert SOCKET_KEY.size == 8  # __u64 cookie
    assert SOCK_COUNTS.size == 48  # struct sock_counts
    assert STATS.size == 16
    assert ARRAY_KEY.size == 4
    assert BPF_ATTR_PROG_ATTACH.size == 20
    assert BPF_ATTR_PROG_QUERY.size == 32
    assert BPF_ATTR_LINK_CREATE.size == 16


def test_cgroup2_mount_points() -> None:
    assert cgroup2_mounts(HYBRID) == ["/sys/fs/cgroup/unified"]
    assert cgroup2_mounts(UNIFIED) == ["/sys/fs/cgroup"]
    assert cgroup2_mounts(OTHERS) == ["/mnt/my cgroup"]
    assert cgroup2_mounts("22 1 0:21 / /proc rw - proc proc rw\n") == []


def test_find_cgroup2_root_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(HYBRID)
    assert find_cgroup2_root(path) == "/sys/fs/cgroup/unified"
    path.write_text("")
    assert find_cgroup2_root(path) is None


def test_wire_bytes_adds_link_header_and_crc_per_segment() -> None:
    # 10 UDP datagrams of 100 bytes over IPv4: 128 IP bytes each, + 14 + 4.
    assert wire_bytes(1280, 10, 14) == 10 * (128 + 14 + 4)
    assert wire_bytes(0, 0, 14) == 0


def test_programs_assemble_and_fit_the_stack() -> None:
    for attach_type in AttachType:
        items = count_program(attach_type, 3, 4, 5, 6)
        code = assemble(items)
        assert len(code) == 8 * instruction_count(items)
    assert STACK_VALUE + SOCK_COUNTS.size <= -8  # below the cookie key
    assert STACK_SCRATCH + 16 <= STACK_VALUE - 8  # scratch below the value and array key
    assert STACK_SCRATCH >= -512


def test_ingress_and_egress_add_to_different_counters() -> None:
    ingress = assemble(count_program(AttachType.CGROUP_INET_INGRESS, 3, 4, 5, 6))
    egress = assemble(count_program(AttachType.CGROUP_INET_EGRESS, 3, 4, 5, 6))
    assert ingress != egress
    assert len(ingress) == len(egress)
