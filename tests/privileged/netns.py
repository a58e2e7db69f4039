"""Entering a network namespace from a privileged test, through netatopd.libc.

Owns the two ways the tests use a namespace made by the make_netns fixture
(conftest.py) or by ``ip netns add``: ``inside(name)`` moves the calling
thread in for the body of a ``with`` and back out after it, and
``in_namespace(name, body)`` runs ``body`` in a new thread that entered the
namespace and hands back its value (or its exception).  Called by
test_capture, test_sockdiag, test_skbcount, test_rtnetlink_kernel and
test_conntrack_kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from netatopd.libc import libc

CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_DIR = "/run/netns"  # where ip netns add mounts a namespace
THREAD_JOIN_S = 60.0  # the longest a namespace thread may run

T = TypeVar("T")


def _setns(fd: int) -> None:
    if libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _enter(name: str) -> None:
    namespace_fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(namespace_fd)
    finally:
        os.close(namespace_fd)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name``, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def in_namespace(name: str, body: Callable[[], T], timeout_s: float = THREAD_JOIN_S) -> T:
    """Run ``body`` in a thread that entered network namespace ``name``; its value."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            _enter(name)
            outcome["value"] = body()
        except BaseException as err:  # handed to the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"namespace thread did not finish in {timeout_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
