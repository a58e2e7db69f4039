"""Unit tests: engines built here never subscribe to the kernel's process events."""

from __future__ import annotations

import pytest

from netatopd.daemon.engine import SIMULATE_CONNECTOR_FAILURE_ENV


@pytest.fixture(autouse=True)
def _no_proc_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATE_CONNECTOR_FAILURE_ENV, "1")
