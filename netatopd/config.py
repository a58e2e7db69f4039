"""The daemon's options: one table for the command line, the environment and the file.

Owns the option table (OPTIONS), the parser built from it, and the layering
of sources: command line > environment (NETATOPD_<OPTION>, e.g.
NETATOPD_RUN_DIR) > configuration file (TOML, keys are the long options
without their dashes, e.g. ``run-dir = "/run/netatop"``) > defaults.  The
default values are defaults.py's; this module imports nothing else of ours.
Called by daemon.main.main and daemon.check; the manual page test reads
OPTIONS too.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from typing import Any, NamedTuple

from . import __version__
from .defaults import (
    ATOP_SOCKET_DEFAULT,
    BUFFER_MIB_DEFAULT,
    CAPTURE_TIMEOUT_MS_DEFAULT,
    CONFIG_DEFAULT,
    CONTROL_MODE_DEFAULT,
    DB_DEFAULT,
    EXIT_LIFETIME_S_DEFAULT,
    FLUSH_INTERVAL_S_DEFAULT,
    GC_INTERVAL_S_DEFAULT,
    HOLD_MIN_PPS,
    HOLD_MS_DEFAULT,
    HOLD_MS_WITH_KERNEL_OWNERSHIP,
    INTERFACE_DEFAULT,
    LOG_LEVEL_DEFAULT,
    MAX_FLOWS_DEFAULT,
    MAX_TASKS_DEFAULT,
    METRICS_GROUP_BY_DEFAULT,
    METRICS_IDLE_DROP_S_DEFAULT,
    METRICS_MAX_SERIES_DEFAULT,
    OWNERSHIP_DEFAULT,
    PUBLISH_INTERVAL_MS_DEFAULT,
    RESCAN_INTERVAL_S_DEFAULT,
    RETENTION_DAYS_DEFAULT,
    RUN_DIR_DEFAULT,
    SAMPLE_INTERVAL_S_DEFAULT,
    SNAPLEN_BYTES_DEFAULT,
    TABLE_CAPACITY_DEFAULT,
    TCP_IDLE_S_DEFAULT,
    UDP_IDLE_S_DEFAULT,
    UNOWNED_LIMIT_S_DEFAULT,
)
from .metrics.options import (
    MetricsListenError,
    parse_group_by,
    parse_listen,
)

ENV_PREFIX = "NETATOPD_"
DRAIN_INTERVAL_MS_DEFAULT = 10  # --capture kernel: the sums are read this often
SUM_INTERVAL_MS_DEFAULT = 250  # --capture kernel: ... when only known sockets sent


class ConfigError(Exception):
    """A configuration file, environment variable or option value that cannot be used."""


class Option(NamedTuple):
    """One long option of the daemon (the configuration file's keys mirror them)."""

    flag: str
    kind: type  # str, int, float or bool (a switch)
    default: object
    help: str
    minimum: float | None = None  # values below are refused
    choices: tuple[str, ...] = ()


OPTIONS: tuple[Option, ...] = (
    Option("--interface", str, INTERFACE_DEFAULT, "interface to capture on"),
    Option("--run-dir", str, RUN_DIR_DEFAULT, "runtime directory: control socket, shared table"),
    Option("--db", str, DB_DEFAULT, "SQLite history database"),
    Option(
        "--no-history",
        bool,
        False,
        "keep no SQLite history (finished processes stay only in the exit list)",
    ),
    Option(
        "--control-mode", str, CONTROL_MODE_DEFAULT, "permission bits of the control socket, octal"
    ),
    Option(
        "--snaplen",
        int,
        SNAPLEN_BYTES_DEFAULT,
        "bytes captured per packet of the lane for uncommon frames (the fixed"
        " lanes capture 44 or 64)",
        64,
    ),
    Option(
        "--buffer-mib",
        int,
        BUFFER_MIB_DEFAULT,
        "capture ring memory in MiB: each fixed lane gets 2/5, the other lane 1/5",
        1,
    ),
    Option(
        "--single-lane",
        bool,
        False,
        "capture with one libpcap handle and walk every frame in Python (slower;"
        " for comparison) instead of the IPv4, IPv6 and other lanes (also the"
        " fallback when libpcap refuses a lane's filter)",
    ),
    Option(
        "--capture-timeout-ms",
        int,
        CAPTURE_TIMEOUT_MS_DEFAULT,
        "libpcap block timeout: a packet is read at most this late",
        1,
    ),
    Option(
        "--hold-ms",
        int,
        HOLD_MS_DEFAULT,
        f"under sustained load ({HOLD_MIN_PPS:,} packets a second or more) leave the"
        " capture ring unread this long after each drain, so batches grow; 0: never;"
        f" -1: {HOLD_MS_WITH_KERNEL_OWNERSHIP} with the eBPF helper (owners are recorded"
        " at system-call time), 0 without it",
        -1,
    ),
    Option("--gc-interval-s", float, GC_INTERVAL_S_DEFAULT, "garbage collection interval", 0.01),
    Option(
        "--exit-lifetime-s",
        float,
        EXIT_LIFETIME_S_DEFAULT,
        "how long an unread finished process stays in the exit list",
        0.01,
    ),
    Option(
        "--unowned-limit-s",
        float,
        UNOWNED_LIMIT_S_DEFAULT,
        "a flow without owner this long is counted unidentified",
        0.01,
    ),
    Option(
        "--tcp-idle-s",
        float,
        TCP_IDLE_S_DEFAULT,
        "owned TCP flows idle this long are dropped",
        0.01,
    ),
    Option(
        "--udp-idle-s",
        float,
        UDP_IDLE_S_DEFAULT,
        "UDP flows on ports above 1024 idle this long are dropped",
        0.01,
    ),
    Option(
        "--rescan-interval-ms",
        float,
        RESCAN_INTERVAL_S_DEFAULT * 1000,
        "incremental /proc rescan interval while traffic flows (without the eBPF helper)",
        1,
    ),
    Option("--max-flows", int, MAX_FLOWS_DEFAULT, "flow table cap", 1),
    Option("--max-tasks", int, MAX_TASKS_DEFAULT, "task table cap", 1),
    Option(
        "--publish-interval-ms",
        int,
        PUBLISH_INTERVAL_MS_DEFAULT,
        "how often the shared table is rewritten",
        10,
    ),
    Option("--table-capacity", int, TABLE_CAPACITY_DEFAULT, "rows of the shared table", 1),
    Option(
        "--flush-interval-s",
        float,
        FLUSH_INTERVAL_S_DEFAULT,
        "how often samples are written to SQLite (finished processes: within 1 s)",
        0.01,
    ),
    Option(
        "--sample-interval-s",
        float,
        SAMPLE_INTERVAL_S_DEFAULT,
        "how often running processes are sampled into SQLite; 0 disables",
        0,
    ),
    Option(
        "--retention-days",
        float,
        RETENTION_DAYS_DEFAULT,
        "history older than this is deleted",
        0.001,
    ),
    Option(
        "--ownership",
        str,
        OWNERSHIP_DEFAULT,
        "who tells the owner of a flow: kernel (eBPF helper), proc (/proc and sock_diag), "
        "auto (kernel where it loads, else proc)",
        None,
        ("auto", "kernel", "proc"),
    ),
    Option(
        "--atop-socket",
        str,
        ATOP_SOCKET_DEFAULT,
        "socket atop (2.10 and later, started with -K) reads per-process counters from",
    ),
    Option("--no-atop-socket", bool, False, "serve no atop socket"),
    Option(
        "--atop-group",
        str,
        "",
        "group allowed to use the atop socket (mode 0660 instead of 0600); empty: root only",
    ),
    Option(
        "--table-group",
        str,
        "",
        "group allowed to read the shared table (mode 0640 instead of 0600); empty: root only",
    ),
    Option(
        "--control-group",
        str,
        "",
        "group allowed to use the control socket (its mode gains 0660); empty: none",
    ),
    Option(
        "--capture",
        str,
        "pcap",
        "how packets are counted: pcap (libpcap on --interface, this network namespace,"
        " one packet per GSO aggregate like the kernel module) or kernel (cgroup_skb"
        " programs at the cgroup v2 root: local traffic of every network namespace,"
        " wire segments)",
        None,
        ("pcap", "kernel"),
    ),
    Option(
        "--drain-interval-ms",
        int,
        DRAIN_INTERVAL_MS_DEFAULT,
        "--capture kernel: the sums are read at most this often when new sockets come"
        " (a new socket's packet is counted at most this late)",
        1,
    ),
    Option(
        "--sum-interval-ms",
        int,
        SUM_INTERVAL_MS_DEFAULT,
        "--capture kernel: how often the sums are read when only sockets met before"
        " sent or received (counted at most this late; a process's exit and a SYNC"
        " read them at once)",
        1,
    ),
    Option(
        "--log-level",
        str,
        LOG_LEVEL_DEFAULT,
        "log level on stderr",
        None,
        ("debug", "info", "warning", "error"),
    ),
    Option(
        "--metrics-listen",
        str,
        "",
        "serve Prometheus metrics over HTTP on ADDR:PORT, e.g. 127.0.0.1:9477 (no"
        " authentication: bind to loopback or firewall it); empty: off",
    ),
    Option(
        "--metrics-group-by",
        str,
        METRICS_GROUP_BY_DEFAULT,
        "labels the metrics group processes by: command, user, or both (comma-separated)",
    ),
    Option(
        "--metrics-top-processes",
        int,
        0,
        "also export the counters of this many busiest running processes, with pid and"
        " command labels; 0: none",
        0,
    ),
    Option(
        "--metrics-max-series",
        int,
        METRICS_MAX_SERIES_DEFAULT,
        "groups with series of their own; later groups are counted in the group 'other'",
        1,
    ),
    Option(
        "--metrics-idle-drop-s",
        float,
        METRICS_IDLE_DROP_S_DEFAULT,
        "a group with no running process that has not grown this long leaves the metrics",
        1,
    ),
    Option(
        "--process-events-netns",
        str,
        "/proc/1/ns/net",
        "network namespace file where the proc connector is opened when it refuses in the"
        " daemon's own (it answers only in the initial one); empty: never",
    ),
    Option(
        "--process-events-buffer-bytes",
        int,
        8 << 20,
        "receive queue of the proc connector's socket (about 1 KiB an event); events that"
        " do not fit are lost and /proc is read again",
        4096,
    ),
)


def _dest(option: Option) -> str:
    return option.flag[2:].replace("-", "_")


def _env_name(option: Option) -> str:
    return ENV_PREFIX + _dest(option).upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netatopd",
        description="Count every TCP and UDP packet per process, like the netatop kernel "
        "module, from user space (libpcap, sock_diag, /proc). Runs in the foreground; "
        "stop with SIGTERM or Ctrl-C. Each option can also be set in the environment "
        "(NETATOPD_RUN_DIR=...) or in the configuration file (run-dir = ...); the "
        "command line wins over the environment, which wins over the file.",
        epilog="Examples: netatopd --log-level info; netatopd --check; "
        "netatopd --config /etc/netatop/netatopd.toml",
        # Options are given whole: an abbreviation (--capt for --capture) could be
        # taken for the wrong option without a word (--capture-timeout-ms was).
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"netatopd {__version__}")
    parser.add_argument(
        "--config",
        default=None,
        help=f"TOML configuration file (default: {CONFIG_DEFAULT} if it exists)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the configuration and privileges, print what would be used, and exit",
    )
    for option in OPTIONS:
        if option.kind is bool:
            parser.add_argument(
                option.flag, action="store_true", default=argparse.SUPPRESS, help=option.help
            )
        else:
            parser.add_argument(
                option.flag,
                type=option.kind,
                default=argparse.SUPPRESS,
                choices=option.choices or None,
                help=f"{option.help} (default: {option.default})",
            )
    return parser


def _convert(option: Option, value: Any, source: str) -> Any:
    """A value from the environment (text) or the file (TOML types), checked."""
    where = f"{source}: {option.flag[2:]}"
    if option.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: {value!r} is not true or false")
    if option.kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not text")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number")
    try:
        if option.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if option.kind is int else "a number"
        raise ConfigError(f"{where}: {value!r} is not {kind}") from None


def read_config_file(path: str) -> dict[str, Any]:
    """The file's settings by option dest; unknown keys and bad values are errors."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"configuration file {path} is not valid TOML: {err}") from err
    known = {option.flag[2:]: option for option in OPTIONS}
    settings: dict[str, Any] = {}
    for key, value in data.items():
        option = known.get(key) or known.get(key.replace("_", "-"))
        if option is None:
            raise ConfigError(
                f"configuration file {path}: unknown key {key!r} "
                f"(keys are the long options without dashes, e.g. run-dir)"
            )
        settings[_dest(option)] = _convert(option, value, path)
    return settings


def resolve(
    argv: list[str] | None = None, environ: dict[str, str] | None = None
) -> argparse.Namespace:
    """Options from every source, with each value's source in ``options.sources``.

    Raises ConfigError for an unusable file or environment value; argparse
    itself reports bad command-line values (exit status 2).
    """
    env = os.environ if environ is None else environ
    parser = build_parser()
    given = parser.parse_args(argv)
    config_path = given.config or env.get(ENV_PREFIX + "CONFIG")
    from_file: dict[str, Any] = {}
    if config_path:
        from_file = read_config_file(config_path)
    elif os.path.exists(CONFIG_DEFAULT):
        config_path = CONFIG_DEFAULT
        from_file = read_config_file(CONFIG_DEFAULT)
    options = argparse.Namespace(check=given.check, config=config_path)
    sources: dict[str, str] = {}
    for option in OPTIONS:
        dest = _dest(option)
        if hasattr(given, dest):
            value, source = getattr(given, dest), "command line"
        elif _env_name(option) in env:
            value = _convert(option, env[_env_name(option)], f"environment {_env_name(option)}")
            source = f"environment {_env_name(option)}"
        elif dest in from_file:
            value, source = from_file[dest], f"file {config_path}"
        else:
            value, source = option.default, "default"
        if option.choices and value not in option.choices:
            allowed = ", ".join(option.choices)
            raise ConfigError(
                f"{source}: {option.flag[2:]} must be one of {allowed}, not {value!r}"
            )
        if option.minimum is not None and value < option.minimum:
            raise ConfigError(
                f"{source}: {option.flag[2:]} must be at least {option.minimum}, not {value}"
            )
        setattr(options, dest, value)
        sources[dest] = source
    try:
        options.control_mode = int(options.control_mode, 8)
    except ValueError:
        raise ConfigError(
            f"{sources['control_mode']}: control-mode {options.control_mode!r} "
            "is not an octal mode like 0600"
        ) from None
    try:
        parse_group_by(options.metrics_group_by)
    except ValueError as err:
        raise ConfigError(f"{sources['metrics_group_by']}: {err}") from None
    if options.metrics_listen:
        try:
            parse_listen(options.metrics_listen)
        except MetricsListenError as err:
            raise ConfigError(f"{sources['metrics_listen']}: {err}") from None
    options.sources = sources
    return options
