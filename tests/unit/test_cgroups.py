"""Unit and container from cgroup v2 paths (pure, no root).

Ground truth: the paths each tool creates, written the way /proc/PID/cgroup
shows them on hosts running them (systemd and cgroupfs drivers), and the ids
they were built with here.  Negative cases must name no container.
"""

from __future__ import annotations

import pytest

from netatopd.cgroups import NO_PLACEMENT, Placement, Runtime, placement

ID = "4f1d3e0c5b6a79888d2e1f0a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "8c6e2b1a-3d4f-4e5a-9b7c-0d1e2f3a4b5c"
POD_ = POD.replace("-", "_")
assert len(ID) == len(ID2) == 64


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        # --- systemd units, no container
        ("/system.slice/nginx.service", Placement("nginx.service", None, None, None)),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.socket",
            Placement("user@1000.service", None, None, None),
        ),
        (
            "/user.slice/user-1000.slice/session-3.scope",
            Placement("session-3.scope", None, None, None),
        ),
        ("/init.scope", Placement("init.scope", None, None, None)),
        (
            "/system.slice/system-getty.slice/getty@tty1.service",
            Placement("getty@tty1.service", None, None, None),
        ),
        (
            # a service inside a scope: the service is the innermost unit
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope",
            Placement("user@1000.service", None, None, None),
        ),
        # --- Docker
        (
            f"/system.slice/docker-{ID}.scope",
            Placement(f"docker-{ID}.scope", Runtime.DOCKER, ID, None),
        ),
        (f"/docker/{ID}", Placement(None, Runtime.DOCKER, ID, None)),
        (  # docker in docker: the inner container
            f"/docker/{ID}/docker/{ID2}",
            Placement(None, Runtime.DOCKER, ID2, None),
        ),
        (  # systemd running inside a container
            f"/system.slice/docker-{ID}.scope/system.slice/nginx.service",
            Placement("nginx.service", Runtime.DOCKER, ID, None),
        ),
        # --- containerd, CRI-O, Podman
        (
            f"/system.slice/cri-containerd-{ID}.scope",
            Placement(f"cri-containerd-{ID}.scope", Runtime.CONTAINERD, ID, None),
        ),
        (
            f"/machine.slice/crio-{ID}.scope",
            Placement(f"crio-{ID}.scope", Runtime.CRIO, ID, None),
        ),
        (
            f"/machine.slice/libpod-{ID}.scope",
            Placement(f"libpod-{ID}.scope", Runtime.PODMAN, ID, None),
        ),
        (  # rootless podman: inside the user's systemd, a sub-cgroup of the scope
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
            Placement("user@1000.service", Runtime.PODMAN, ID, None),
        ),
        (f"/libpod_parent/libpod-{ID}", Placement(None, Runtime.PODMAN, ID, None)),
        # --- Kubernetes, systemd driver
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice"
            f"/cri-containerd-{ID}.scope",
            Placement(f"cri-containerd-{ID}.scope", Runtime.CONTAINERD, ID, POD),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice"
            f"/crio-{ID}.scope",
            Placement(f"crio-{ID}.scope", Runtime.CRIO, ID, POD),
        ),
        (  # guaranteed QoS: the pod slice sits right under kubepods.slice
            f"/kubepods.slice/kubepods-pod{POD_}.slice/docker-{ID}.scope",
            Placement(f"docker-{ID}.scope", Runtime.DOCKER, ID, POD),
        ),
        (  # kind: the node's kubelet nests kubepods in its own slice
            f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
            f"/kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope",
            Placement(f"cri-containerd-{ID}.scope", Runtime.CONTAINERD, ID, POD),
        ),
        (  # the pod slice itself: a pod, no container yet
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice",
            Placement(None, None, None, POD),
        ),
        # --- Kubernetes, cgroupfs driver
        (
            f"/kubepods/burstable/pod{POD}/{ID}",
            Placement(None, Runtime.KUBERNETES, ID, POD),
        ),
        (f"/kubepods/pod{POD}/{ID}", Placement(None, Runtime.KUBERNETES, ID, POD)),
        # --- a cgroup namespace shows paths relative to the reader's root
        (
            f"/../../system.slice/docker-{ID}.scope",
            Placement(f"docker-{ID}.scope", Runtime.DOCKER, ID, None),
        ),
    ],
)
def test_known_layouts(cgroup: str, expected: Placement) -> None:
    assert placement(cgroup) == expected


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("/system.slice/docker.service", "docker.service"),  # the daemon, not a container
        ("/system.slice/containerd.service", "containerd.service"),
        (f"/system.slice/docker-{ID[:63]}.scope", f"docker-{ID[:63]}.scope"),  # 63 hex digits
        (f"/system.slice/docker-{ID}0.scope", f"docker-{ID}0.scope"),  # 65 hex digits
        (f"/system.slice/docker-{ID.upper()}.scope", f"docker-{ID.upper()}.scope"),
        (f"/machine.slice/crio-conmon-{ID}.scope", f"crio-conmon-{ID}.scope"),  # the monitor
        (f"/machine.slice/libpod-conmon-{ID}.scope", f"libpod-conmon-{ID}.scope"),
        (f"/system.slice/lxc-{ID}.scope", f"lxc-{ID}.scope"),  # a runtime not listed
        (f"/system.slice/docker-{ID}.scope.old/x.service", "x.service"),
        ("/user.slice/user-1000.slice", None),
        ("/", None),
        ("", None),
        (f"/docker/{ID[:63]}", None),
        (f"/something/{ID}", None),  # a bare id under an unknown parent
        (f"/docker/{ID}x", None),
        (f"/libpod-{ID}", None),  # cgroupfs podman only under libpod_parent
    ],
)
def test_no_container_is_guessed(cgroup: str, unit: str | None) -> None:
    result = placement(cgroup)
    assert (result.container_runtime, result.container_id, result.pod_uid) == (None, None, None)
    assert result.unit == unit


@pytest.mark.parametrize(
    "cgroup",
    [
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice",  # dashes
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_[:-1]}.slice",
        f"/system.slice/pod{POD_}.slice",  # no kubepods
        f"/pods/pod{POD}/{ID}",  # cgroupfs shape, not under kubepods
        "/kubepods.slice/kubepods-burstable.slice",
    ],
)
def test_no_pod_is_guessed(cgroup: str) -> None:
    result = placement(cgroup)
    assert result.pod_uid is None
    assert result.container_runtime is None


def test_empty_path_and_root_name_nothing() -> None:
    assert placement("") == NO_PLACEMENT
    assert placement("/") == NO_PLACEMENT


def test_runtime_names_are_text_for_json() -> None:
    assert [str(runtime) for runtime in Runtime] == [
        "docker",
        "containerd",
        "cri-o",
        "podman",
        "kubernetes",
    ]
