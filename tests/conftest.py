"""Suite-wide rules.

Privileged tests (tests/privileged) need root, network namespaces and
AF_PACKET.  Without root they are skipped with a loud reason; under CI
(CI=true) or with NETATOP_REQUIRE_PRIVILEGED=1 a skipped privileged test fails
the whole run, because a suite that skipped them has not passed.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_PRIVILEGED = (
    os.environ.get("CI") == "true" or os.environ.get("NETATOP_REQUIRE_PRIVILEGED") == "1"
)
_skipped_privileged: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "tests/privileged/" in report.nodeid.replace(os.sep, "/"):
        _skipped_privileged.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_PRIVILEGED and _skipped_privileged:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"FAILED: {len(_skipped_privileged)} privileged tests were skipped, "
                "which CI does not accept:",
                red=True,
            )
            for nodeid in _skipped_privileged:
                reporter.write_line(f"  {nodeid}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
