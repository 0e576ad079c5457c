from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The path of a command the test needs: skipped locally when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed: .ci/run installs it")
        pytest.skip(f"{name} is not installed (apt-get install -y {name})")
    return path
