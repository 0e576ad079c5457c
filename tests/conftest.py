from __future__ import annotations

import os
import shutil
from typing import Any, NoReturn

import pytest


def missing(in_ci: str, locally: str) -> NoReturn:
    """What a test needs is not there: a failure in CI (`in_ci`), skipped locally (`locally`)."""
    if os.environ.get("CI") == "true":
        pytest.fail(in_ci)
    pytest.skip(locally)


def require_tool(name: str) -> str:
    """The path of a command the test needs: skipped locally when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        missing(
            f"{name} is not installed: .ci/run installs it",
            f"{name} is not installed (apt-get install -y {name})",
        )
    return path


_FAULT_REPORTS = pytest.StashKey[list[str]]()


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Any:
    """Record one line of what a fault test counted (messages, refusals, duplicates); the
    lines are printed at the end of the run, so that duplicates are reported, not hidden."""
    lines = request.config.stash.setdefault(_FAULT_REPORTS, [])

    def report(line: str) -> None:
        lines.append(f"{request.node.name}: {line}")

    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_FAULT_REPORTS, [])
    if lines:
        terminalreporter.section("what the fault tests counted")
        for line in lines:
            terminalreporter.write_line(line)
