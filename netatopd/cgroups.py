"""Which systemd unit and which container a cgroup v2 path names (pure: text in, names out).

Owns the naming rules below and nothing else; no I/O.  ``placement`` takes
the path of the "0::" line of /proc/PID/cgroup (``procfs.read_identity``)
and is called by the task registry when it records who a process is.

The rules, each from the layout the tool itself creates:

* Unit: the innermost path component ending in ``.service``; without one,
  the innermost ending in ``.scope`` (``session-3.scope``, ``init.scope``,
  a container's ``docker-<id>.scope``).  systemd puts every process in one
  service or scope, so a unit is named exactly when systemd manages the path.
* Container, innermost match wins (a container inside a container is the
  inner one); an id is exactly 64 lowercase hex digits:

  - ``docker-<id>.scope`` (Docker, systemd cgroup driver),
    ``/docker/<id>`` (Docker, cgroupfs driver);
  - ``cri-containerd-<id>.scope`` (containerd's CRI plugin, systemd driver);
  - ``crio-<id>.scope`` (CRI-O; its ``crio-conmon-<id>.scope`` holds the
    monitor, not the container, and names none);
  - ``libpod-<id>.scope`` or ``/libpod_parent/libpod-<id>`` (Podman, also
    rootless under ``user@UID.service``; ``libpod-conmon-<id>.scope`` names
    none);
  - ``/kubepods/.../pod<uid>/<id>`` (Kubernetes, cgroupfs driver): the
    container of a pod, whose runtime the path does not say (``KUBERNETES``).

* Pod UID (Kubernetes): a ``kubepods...-pod<uid>.slice`` component (systemd
  driver, the UID's dashes written as underscores because a dash separates
  slice levels: turned back into dashes), or a ``pod<uid>`` directory under
  ``kubepods`` (cgroupfs driver).

Anything else names no container and no pod: the caller shows the cgroup
path instead of a guess.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import NamedTuple


class Runtime(StrEnum):
    """The container runtime a path names (the text goes into JSON, CSV and SQL)."""

    DOCKER = "docker"
    CONTAINERD = "containerd"
    CRIO = "cri-o"
    PODMAN = "podman"
    KUBERNETES = "kubernetes"  # a pod's container under the cgroupfs driver: runtime unsaid


class Placement(NamedTuple):
    """Where a cgroup path puts a process; None where the path does not say."""

    unit: str | None  # systemd unit: "nginx.service", "user@1000.service", "session-3.scope"
    container_runtime: Runtime | None
    container_id: str | None  # 64 lowercase hex digits
    pod_uid: str | None  # Kubernetes pod UID, 8-4-4-4-12 with dashes


NO_PLACEMENT = Placement(None, None, None, None)

_ID = r"([0-9a-f]{64})"
_SCOPE_RUNTIMES = {
    "docker": Runtime.DOCKER,
    "cri-containerd": Runtime.CONTAINERD,
    "crio": Runtime.CRIO,
    "libpod": Runtime.PODMAN,
}
_CONTAINER_SCOPE = re.compile(r"(docker|cri-containerd|crio|libpod)-" + _ID + r"\.scope")
_PODMAN_CGROUPFS = re.compile(r"libpod-" + _ID)
_BARE_ID = re.compile(_ID)
_UID_UNDERSCORES = r"([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})"
_UID_DASHES = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
_POD_SLICE = re.compile(r"(?:[a-z0-9_]+-)*kubepods(?:-[a-z]+)*-pod" + _UID_UNDERSCORES + r"\.slice")
_POD_DIRECTORY = re.compile(r"pod" + _UID_DASHES)
_KUBEPODS_CGROUPFS = "kubepods"
_DOCKER_CGROUPFS = "docker"
_PODMAN_CGROUPFS_PARENT = "libpod_parent"
# Distinct paths remembered (a host has far fewer cgroups than processes).
PLACEMENT_CACHE_SIZE = 4096


def _components(cgroup: str) -> list[str]:
    return [part for part in cgroup.split("/") if part not in ("", ".", "..")]


def unit_of(parts: list[str]) -> str | None:
    """The innermost ``*.service``, else the innermost ``*.scope``, of path components."""
    for suffix in (".service", ".scope"):
        for part in reversed(parts):
            if part.endswith(suffix) and len(part) > len(suffix):
                return part
    return None


def container_of(parts: list[str]) -> tuple[Runtime, str] | None:
    """(runtime, id) of the innermost container the components name."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        parent = parts[index - 1] if index > 0 else ""
        match = _CONTAINER_SCOPE.fullmatch(part)
        if match:
            return _SCOPE_RUNTIMES[match.group(1)], match.group(2)
        match = _PODMAN_CGROUPFS.fullmatch(part)
        if match and parent == _PODMAN_CGROUPFS_PARENT:
            return Runtime.PODMAN, match.group(1)
        if _BARE_ID.fullmatch(part):
            if parent == _DOCKER_CGROUPFS:
                return Runtime.DOCKER, part
            if _POD_DIRECTORY.fullmatch(parent) and _KUBEPODS_CGROUPFS in parts[:index]:
                return Runtime.KUBERNETES, part
    return None


def pod_uid_of(parts: list[str]) -> str | None:
    """The Kubernetes pod UID (with dashes) the components name."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        match = _POD_SLICE.fullmatch(part)
        if match:
            return match.group(1).replace("_", "-")
        match = _POD_DIRECTORY.fullmatch(part)
        if match and _KUBEPODS_CGROUPFS in parts[:index]:
            return match.group(1)
    return None


@functools.lru_cache(maxsize=PLACEMENT_CACHE_SIZE)
def placement(cgroup: str) -> Placement:
    """Unit, container and pod of a cgroup v2 path; None for what it does not name."""
    parts = _components(cgroup)
    if not parts:
        return NO_PLACEMENT
    container = container_of(parts)
    return Placement(
        unit=unit_of(parts),
        container_runtime=container[0] if container else None,
        container_id=container[1] if container else None,
        pod_uid=pod_uid_of(parts),
    )


@functools.lru_cache(maxsize=PLACEMENT_CACHE_SIZE)
def placement_labels(cgroup: str) -> tuple[str, str]:
    """(unit, container) of a cgroup v2 path as the rows show them; "" for what it does not name.

    container is "runtime:id" (``docker:<64 hex>``), else "pod:UID" for a
    Kubernetes pod whose container the path does not name, else "".
    """
    if not cgroup:
        return "", ""
    where = placement(cgroup)
    if where.container_runtime is not None and where.container_id is not None:
        container = f"{where.container_runtime.value}:{where.container_id}"
    elif where.pod_uid is not None:
        container = f"pod:{where.pod_uid}"
    else:
        container = ""
    return where.unit or "", container


# --------------------------------------------------------------------------- groups

# The groups of "--by unit" and "--by container" (netatop query, the reports)
# that are not a unit or a container.  A process whose cgroup path is known but
# of a layout these rules do not name is grouped by that path: never a guess.
# The unit and container decide first (a reader that has them without the
# path groups alike); the path only when they say nothing.
NO_UNIT = "(no unit)"  # the root cgroup, or a container's cgroup a runtime made without systemd
NO_CONTAINER = "(no container)"  # the root cgroup, a .service, init.scope or session-N.scope
UNKNOWN_PLACE = "(unknown)"  # the cgroup could not be read (or a row older than the column)
_NOT_CONTAINER_SCOPE = re.compile(r"init\.scope|session-[0-9a-z]+\.scope")


def unit_group(cgroup: str | None, unit: str | None, container: str | None) -> str:
    """The group of a process by unit: its unit, NO_UNIT, UNKNOWN_PLACE or its cgroup path."""
    if unit:
        return unit
    if container:
        return NO_UNIT
    if not cgroup:
        return UNKNOWN_PLACE
    return cgroup if _components(cgroup) else NO_UNIT


def container_group(cgroup: str | None, unit: str | None, container: str | None) -> str:
    """The group of a process by container: its container, NO_CONTAINER, UNKNOWN_PLACE or path."""
    if container:
        return container
    if unit and (unit.endswith(".service") or _NOT_CONTAINER_SCOPE.fullmatch(unit)):
        return NO_CONTAINER
    if not cgroup:
        return UNKNOWN_PLACE
    return cgroup if _components(cgroup) else NO_CONTAINER
