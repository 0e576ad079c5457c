"""docs/grpc.md, checked: its examples run as the page shows them (the app of
docs/examples/grpc_embedded.py, the official SDK's docs/examples/grpc_client.py in a process
of its own), and its warning holds: an SDK client built in the embedded app's own event loop
blocks that loop until its health check gives up, while one built in a worker thread works."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest

from fastapi_dapr.testing import DaprTest

from ..processes import ChildProcess
from ..servers import serve
from ..sidecar.test_standalone import ROOT, environment, free_port, running
from .kit import run_sdk

pytestmark = pytest.mark.process

EXAMPLES = ROOT / "docs" / "examples"
HEALTH_TIMEOUT = 2  # DAPR_HEALTH_TIMEOUT for the SDK clients built inside the app


@pytest.fixture
def grpc_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, int]]:
    """docs/examples/grpc_embedded.py imported afresh, its gRPC API on a free DAPR_GRPC_PORT."""
    port = free_port()
    monkeypatch.setenv("DAPR_GRPC_PORT", str(port))
    sys.modules.pop("docs.examples.grpc_embedded", None)
    yield importlib.import_module("docs.examples.grpc_embedded"), port
    sys.modules.pop("docs.examples.grpc_embedded", None)


async def test_the_sdk_example_publishes_to_the_embedded_example_app(
    grpc_example: tuple[ModuleType, int],
) -> None:
    example, grpc_port = grpc_example
    async with DaprTest(example.app) as test, serve(example.app) as base_url:
        assert example.dapr.grpc_port == grpc_port
        http_port = int(base_url.rsplit(":", 1)[1])
        code = (EXAMPLES / "grpc_client.py").read_text()
        printed = await run_sdk(code, http_port=http_port, grpc_port=grpc_port)
        assert printed["app_id"] == "checkout"
        assert "pubsub" in printed["components"]
        assert (await test.wait_for_delivery(topic="orders")).outcome == "delivered"
        # In process: `await dapr.publish`, as the example's route does.
        answer = await test.client.post("/reorder", json={"id": "o-2", "quantity": 1})
        assert answer.status_code == 200
        assert (await test.wait_for_delivery(topic="orders")).outcome == "delivered"
    assert example.orders == [{"id": "o-1", "quantity": 2}, {"id": "o-2", "quantity": 1}]


class InLoopApp(ChildProcess):
    """tests/grpc/sdk_in_loop_app.py under uvicorn; the SDK inside it told to use its ports."""

    def __init__(self) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        argv = [sys.executable, "-m", "uvicorn", "tests.grpc.sdk_in_loop_app:app"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        env = environment(
            DAPR_HTTP_ENDPOINT=f"http://127.0.0.1:{self.port}",  # not DAPR_HTTP_PORT: remote mode
            DAPR_GRPC_PORT=str(self.grpc_port),
            DAPR_HEALTH_TIMEOUT=str(HEALTH_TIMEOUT),
            PYTHONUNBUFFERED="1",  # the SDK's own print of the failed probe
        )
        super().__init__(argv, ready=b"Uvicorn running on", env=env, cwd=ROOT)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=HEALTH_TIMEOUT * 10)


@pytest.mark.parametrize(
    ("route", "building"), [("/sync-in-loop", b"a DaprClient"), ("/aio-in-loop", b"a dapr.aio DaprClient")]
)
async def test_an_sdk_client_built_in_the_apps_event_loop_blocks_it(route: str, building: bytes) -> None:
    app = InLoopApp()
    async with running(app), app.client() as client:
        stuck = asyncio.ensure_future(client.post(route))
        await app.printed(b"building " + building)
        # The loop is held by the constructor's blocking health check: nothing is answered,
        # not even the health check itself, until it gives up after DAPR_HEALTH_TIMEOUT.
        ping = (await client.get("/ping")).json()
        answer = (await stuck).json()
        assert ping["pong"] >= answer["ended"]  # the ping, sent meanwhile, was answered only after
        after = (await client.post("/publish")).json()
    assert answer["ok"] is False
    assert "Dapr health check timed out" in answer["error"]
    assert answer["seconds"] >= HEALTH_TIMEOUT
    assert after["ok"] is True  # the app serves again, and `await dapr.publish` never blocks
    assert f"Health check on http://127.0.0.1:{app.port}/v1.0/healthz/outbound failed: timed out" in app.text


async def test_an_sdk_client_built_in_a_worker_thread_works() -> None:
    app = InLoopApp()
    async with running(app), app.client() as client:
        answer = (await client.post("/sync-in-thread")).json()
    assert (answer["ok"], answer["value"]) == (True, "inloop")
    assert answer["seconds"] < HEALTH_TIMEOUT
