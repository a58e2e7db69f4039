"""The layering of the package, checked: a lower stage never imports a higher one.

Each module of netatopd is imported in a fresh interpreter, and the modules of
ours it pulled in are grouped by unit (a top-level module, or a package such
as capture/ or ownership/).  Ground truth: ``sys.modules`` of that
interpreter.  Every unit may load only the units ALLOWED names for it; a
module that loads anything else fails here, with the units it should not
have reached.

The units, lowest first (LAYERS): the foundations (wire layouts, defaults,
the wire protocol, the STATUS registry, libc, the run directory) import
nothing of ours but defaults; the per-packet path (parse -> counting ->
flows) and the kernel boundaries (netlink, capture, procfs, ebpf) sit on
them; tasks and the exit list hold per-process state; ownership joins flows
to tasks; the readers and publishers (table, history, server, client,
config, cli) never load a counting stage; only the daemon loads everything.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import netatopd

REPO = Path(__file__).resolve().parents[2]

# Each unit with the units it may load besides itself, lowest first.  An entry may
# name only units above it in this list: that is the layering.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (unit, frozenset(allowed))
    for unit, allowed in (
        # Foundations.
        ("wire", ()),
        ("defaults", ()),
        ("protocol", ()),
        ("status", ()),
        ("libc", ()),
        ("cgroups", ()),
        ("users", ()),
        ("rundir", ("defaults",)),
        # The per-packet path.
        ("parse", ("wire",)),
        ("counting", ("parse", "wire")),
        ("flows", ("counting", "parse", "wire", "defaults")),
        # The kernel boundaries.
        ("netlink", ("libc",)),
        ("procfs", ("libc", "wire", "defaults")),
        ("ebpf", ("libc", "netlink", "wire")),
        # libpcap's lanes, and the kernel path's counter read as a capture.
        ("capture", ("ebpf", "netlink", "libc", "wire", "defaults")),
        # Local traffic or forwarded: a batch's rows against the local table and conntrack.
        ("locality", ("counting", "parse", "wire", "netlink")),
        # Per-process state.
        ("tasks", ("cgroups", "protocol", "defaults")),
        ("exitlist", ("tasks", "cgroups", "protocol", "defaults")),
        # Which process owns each flow.
        (
            "ownership",
            (
                "flows",
                "counting",
                "parse",
                "wire",
                "netlink",
                "procfs",
                "ebpf",
                "libc",
                "tasks",
                "cgroups",
                "exitlist",
                "protocol",
                "defaults",
            ),
        ),
        # Readers and publishers.
        (
            "table",
            (
                "status",
                "tasks",
                "cgroups",
                "procfs",
                "libc",
                "wire",
                "protocol",
                "rundir",
                "defaults",
            ),
        ),
        ("history", ("tasks", "cgroups", "protocol", "defaults")),
        ("server", ("exitlist", "tasks", "cgroups", "protocol", "rundir", "defaults")),
        ("client", ("protocol", "defaults")),
        # Per-group counters for Prometheus, built from finished and running tasks.
        ("metrics", ("status", "tasks", "cgroups", "protocol", "defaults")),
        # The options: their defaults, and the metrics options' meaning.
        ("config", ("metrics", "tasks", "cgroups", "protocol", "defaults")),
        (
            "cli",
            (
                "client",
                "table",
                "rundir",
                "history",
                "status",
                "tasks",
                "cgroups",
                "users",
                "procfs",
                "libc",
                "wire",
                "protocol",
                "defaults",
            ),
        ),
    )
)
# The daemon, on top, wires everything.
LAYERS += (("daemon", frozenset(unit for unit, _ in LAYERS)),)
ALLOWED = dict(LAYERS)
ORDER = [unit for unit, _ in LAYERS]
EVERYTHING = frozenset(ORDER)
# The stages that see packets or the kernel's sockets: no reader or publisher loads one.
COUNTING_STAGES = frozenset(
    {"capture", "parse", "counting", "locality", "flows", "ownership", "ebpf", "netlink"}
)
READERS = ("table", "history", "server", "client", "metrics", "config", "cli", "status")
# Runs a program when imported, not a module to check.
SKIPPED_SUFFIX = ".__main__"

PROBE = (
    "import importlib, sys; importlib.import_module(sys.argv[1]); "
    "import netatopd; print(netatopd.__file__); "
    "print(' '.join(sorted(m for m in sys.modules if m.startswith('netatopd.'))))"
)


def unit_of(module: str) -> str:
    return module.split(".")[1]


def all_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(netatopd.__path__, "netatopd.")
        if not info.name.endswith(SKIPPED_SUFFIX)
    ]
    return sorted(names)


MODULES = all_modules()


def loaded_units(module: str, loaded: dict[str, set[str]]) -> set[str]:
    return {unit_of(name) for name in loaded[module]} - {unit_of(module)}


@pytest.fixture(scope="module")
def loaded() -> Iterator[dict[str, set[str]]]:
    """For each module, the netatopd modules a fresh interpreter loaded importing it."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    processes = {
        module: subprocess.Popen(
            [sys.executable, "-c", PROBE, module],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in MODULES
    }
    result: dict[str, set[str]] = {}
    for module, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"import {module} failed:\n{err}"
        package_file, _, names = out.partition("\n")
        assert Path(package_file).resolve().is_relative_to(REPO), package_file
        result[module] = set(names.split())
    yield result


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module) for module in MODULES}
    assert units - EVERYTHING == set(), "a new unit: give it a place in LAYERS"
    assert EVERYTHING - units == set(), "LAYERS names a unit that no longer exists"


def test_layers_only_look_down() -> None:
    for index, (unit, allowed) in enumerate(LAYERS):
        below = set(ORDER[:index])
        assert allowed <= below, f"{unit} may load {sorted(allowed - below)}, not below it"


def test_readers_load_no_counting_stage() -> None:
    for unit in READERS:
        assert ALLOWED[unit] & COUNTING_STAGES == set(), unit


@pytest.mark.parametrize("module", MODULES)
def test_module_loads_only_its_allowed_units(module: str, loaded: dict[str, set[str]]) -> None:
    unit = unit_of(module)
    allowed = ALLOWED[unit]
    wrong = loaded_units(module, loaded) - allowed
    assert wrong == set(), (
        f"import {module} loads {sorted(wrong)}: {unit} may load only {sorted(allowed)}"
    )


def test_status_and_foundations_load_only_themselves(loaded: dict[str, set[str]]) -> None:
    for module in ("netatopd.status", "netatopd.wire", "netatopd.protocol", "netatopd.defaults"):
        assert loaded[module] == {module}, module
