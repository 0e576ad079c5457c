"""Importing `fastapi_dapr.testing` raises no warning, in a fresh interpreter with warnings as errors.

Starlette 1.x's `starlette.testclient` wants `httpx2` and warns when it falls back to
`httpx`: `DaprTestClient` (a `TestClient`) is loaded only when it is used, and the
`testing` extra installs `httpx2`. CI's wheel check (scripts/wheel) imports it again in a
fresh venv that has the package's own dependencies and the `testing` extra, nothing else.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # a fresh interpreter each

# Starlette before 1.0 (CI's oldest-versions run) imports an alias that anyio deprecates:
# Starlette's warning, not ours, as .ci/run says.
OLD_STARLETTE = ["-W", "ignore:The anyio.abc.BlockingPortal alias:DeprecationWarning"]


def run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", *flags, "-c", code], capture_output=True, text=True, check=False
    )


def test_importing_it_without_httpx2_raises_no_warning() -> None:
    # As with the package's own dependencies alone: httpx, and no httpx2.
    done = run(
        "import sys\n"
        "sys.modules['httpx2'] = None\n"
        "import fastapi_dapr.testing\n"
        "from fastapi_dapr.testing import DaprTest, FakeClock, PublishedMessage, DeliveryReport, Attempt\n"
        "print('starlette.testclient' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_test_client_raises_no_warning_with_httpx2() -> None:
    # What the `testing` extra installs (httpx2), as this environment has it.
    done = run(
        "from fastapi import FastAPI\n"
        "from fastapi_dapr import Dapr\n"
        "from fastapi_dapr.testing import DaprTestClient\n"
        "app = FastAPI()\n"
        "Dapr(app, app_id='a')\n"
        "with DaprTestClient(app) as client:\n"
        "    assert client.post('/v1.0/publish/pubsub/t', json={}).status_code == 204\n"
        "    assert [m.topic for m in client.published()] == ['t']\n",
        *OLD_STARLETTE,
    )
    assert done.returncode == 0, done.stderr
