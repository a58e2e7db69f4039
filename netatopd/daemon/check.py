"""netatopd --check: what would be used and whether it can be, without starting.

Prints the resolved options with where each came from, then checks libpcap,
the capabilities, the run directory (safe, not locked by a running daemon),
the database and atop socket directories, the sockets and the history database.
Called by main.main; returns the exit status of the first problem.
"""

from __future__ import annotations

import argparse
import fcntl
import os

from .. import __version__
from ..capture.pcap import LibpcapMissing, load_libpcap
from ..config import OPTIONS
from ..defaults import CONTROL_SOCKET_NAME
from ..history import StoreError, open_db
from ..ownership.namespaces import namespace_pids, sockets_elsewhere
from ..rundir import LOCK_NAME, RunDirError, open_directory
from ..server import ServerError, prepare_socket_path
from .exitcodes import ExitCode

CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE = 2, 12, 13, 19


def effective_capabilities() -> int:
    """The CapEff bits of this process (linux/capability.h numbering)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def lock_holder(path: str) -> str | None:
    """'pid N' when a daemon holds the lock file at path, else None (nothing is made)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return f"pid {text}" if text.isdigit() else "pid unknown"
    except OSError:
        return None
    finally:
        os.close(fd)  # also lets go of a shared lock taken
    return None


def kernel_path_checks() -> list[tuple[bool, str]]:
    """--capture kernel: whether the cgroup v2 root is there and bpf() answers.

    A one-element array map is made and closed at once (nothing stays); the
    programs themselves are only loaded by the daemon.
    """
    from ..ebpf import syscalls
    from ..ebpf.skbcount import KernelCounterError, find_cgroup2_root

    results: list[tuple[bool, str]] = []
    try:
        root = find_cgroup2_root()
    except KernelCounterError as err:
        results.append((False, f"kernel path: {err.reason}"))
        root = None
    else:
        results.append(
            (
                True,
                f"kernel path: cgroup v2 root at {root}"
                if root
                else "kernel path: no cgroup2 mount; the daemon will mount a private one",
            )
        )
    try:
        os.close(syscalls.map_create(syscalls.MapType.ARRAY, 4, 8, 1, "ntp_check"))
        results.append((True, "kernel path: bpf() creates maps"))
    except syscalls.BpfSyscallError as err:
        results.append((False, f"kernel path: bpf() refused: {err} (needs root or CAP_BPF)"))
    except OSError as err:
        results.append((False, f"kernel path: bpf() unavailable: {err}"))
    return results


def check(options: argparse.Namespace) -> int:
    """--check: print what would be used and whether it can be; no capture is started."""
    problems: list[tuple[int, str]] = []
    print(f"netatopd {__version__}: configuration")
    print(f"  configuration file: {options.config or 'none'}")
    for option in OPTIONS:
        dest = option.flag[2:].replace("-", "_")
        value = getattr(options, dest)
        shown = oct(value) if dest == "control_mode" else value
        print(f"  {option.flag[2:]:22} {shown!s:34} ({options.sources[dest]})")
    print("checks:")

    def report(ok: bool, what: str, code: int = ExitCode.ERROR) -> None:
        print(f"  {'ok     ' if ok else 'PROBLEM'} {what}")
        if not ok:
            problems.append((code, what))

    try:
        load_libpcap()
        report(True, "libpcap loads")
    except LibpcapMissing as err:
        report(False, str(err), ExitCode.NO_LIBPCAP)
    caps = effective_capabilities()
    needed = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN)
    report(
        caps & needed == needed,
        "CAP_NET_RAW and CAP_NET_ADMIN (capture, sock_diag)"
        + ("" if caps & needed == needed else ": missing; run as root or grant them"),
        ExitCode.PRIVILEGES,
    )
    proc_caps = (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH)
    if not caps & proc_caps:
        print(
            "  warning CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH missing: "
            "other users' sockets stay unowned"
        )
    run_dir = options.run_dir
    parent = run_dir if os.path.isdir(run_dir) else os.path.dirname(os.path.abspath(run_dir))
    report(
        os.access(parent, os.W_OK),
        f"run directory {run_dir} can be created and written",
        ExitCode.RUN_DIR,
    )

    def directory_of(path: str) -> str:
        return os.path.dirname(os.path.abspath(path))

    directories = [(run_dir, "--run-dir", "run directory")]
    if not options.no_history:
        directories.append((directory_of(options.db), "--db", "database directory"))
    if not options.no_atop_socket:
        atop_dir = directory_of(options.atop_socket)
        directories.append((atop_dir, "--atop-socket", "atop socket's directory"))
    for path, flag, what in directories:
        if not os.path.lexists(path):
            continue  # made at start, safe by construction
        try:
            open_directory(path, what=what, create=False).close()
            report(True, f"{what} {path} is safe for root to write in")
        except RunDirError as err:
            report(False, f"{flag}: {err}", ExitCode.RUN_DIR)
    holder = lock_holder(os.path.join(run_dir, LOCK_NAME))
    if holder is not None:
        report(False, f"--run-dir: another netatopd ({holder}) holds {run_dir}", ExitCode.RUN_DIR)
    sockets = [(os.path.join(run_dir, CONTROL_SOCKET_NAME), "control socket")]
    if not options.no_atop_socket:
        sockets.append((options.atop_socket, "atop socket"))
    for path, what in sockets:
        try:
            prepare_socket_path(path, what, remove_stale=False)
            report(True, f"{what} {path} is free")
        except ServerError as err:
            report(False, str(err), ExitCode.RUN_DIR)
    if options.no_history:
        print("  -       history off (--no-history)")
    elif os.path.exists(options.db):
        try:
            open_db(options.db, readonly=True).close()
            report(True, f"history database {options.db} opens")
        except StoreError as err:
            report(False, f"history database: {err} (netatopd would run without history)")
    else:
        directory = os.path.dirname(os.path.abspath(options.db))
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        report(os.access(existing, os.W_OK), f"history database {options.db} can be created")
    if options.ownership != "proc" and options.capture == "pcap":
        # Loading the helper is the only sure test; --check only tells what it will use.
        btf = os.path.exists("/sys/kernel/btf/vmlinux")
        tracepoints = os.path.isdir("/sys/kernel/tracing/events/sock") or os.path.isdir(
            "/sys/kernel/debug/tracing/events/sock"
        )
        print(
            "  -       eBPF helper: struct offsets from "
            + ("the kernel's BTF" if btf else "calibration (no /sys/kernel/btf/vmlinux)")
            + ("" if tracepoints else "; tracefs not mounted yet (the daemon mounts it)")
        )
    if options.capture == "kernel":
        for ok, what in kernel_path_checks():
            report(ok, what, ExitCode.NO_KERNEL_CAPTURE)
    elsewhere = sockets_elsewhere()
    seen = len(namespace_pids())
    if options.capture == "kernel":
        print(f"  -       network namespaces: {seen}, all counted (--capture kernel)")
    else:
        print(
            f"  -       network namespaces: {seen}; {len(elsewhere)} other(s) hold TCP/UDP"
            " sockets that --capture pcap does not count (--capture kernel counts them)"
        )
    if problems:
        print(f"{len(problems)} problem(s); netatopd would not start as configured")
        return problems[0][0]
    print("all checks passed")
    return ExitCode.OK
