"""An embedded app whose routes build the official SDK's clients themselves (docs/grpc.md's
warning, tests/grpc/test_grpc_docs.py): in the app's own event loop (`async def` routes),
where the client's start-up health check, `GET /v1.0/healthz/outbound` on this very app,
cannot be answered; and in a worker thread (a `def` route), where it can.

Run by uvicorn in a process of its own, with DAPR_HTTP_ENDPOINT (this app's port),
DAPR_GRPC_PORT (the port it serves gRPC on) and DAPR_HEALTH_TIMEOUT set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import Dapr

app = FastAPI()
dapr = Dapr(app, app_id="inloop", grpc_port=int(os.environ["DAPR_GRPC_PORT"]))


def _answer(began: float, value: Any = None, error: BaseException | None = None) -> dict[str, Any]:
    outcome = {"ok": True, "value": value} if error is None else {"ok": False, "error": repr(error)}
    return {**outcome, "seconds": time.monotonic() - began, "ended": time.monotonic()}


def _sync_app_id() -> str:
    from dapr.clients import DaprClient

    with DaprClient() as client:
        app_id: str = client.get_metadata().application_id
        return app_id


@app.post("/sync-in-loop")
async def sync_in_loop() -> dict[str, Any]:
    print("building a DaprClient in the event loop", flush=True)
    began = time.monotonic()
    try:
        return _answer(began, _sync_app_id())
    except Exception as exc:
        return _answer(began, error=exc)


@app.post("/aio-in-loop")
async def aio_in_loop() -> dict[str, Any]:
    from dapr.aio.clients import DaprClient

    print("building a dapr.aio DaprClient in the event loop", flush=True)
    began = time.monotonic()
    try:
        async with DaprClient() as client:
            return _answer(began, (await client.get_metadata()).application_id)
    except Exception as exc:
        return _answer(began, error=exc)


@app.post("/sync-in-thread")
def sync_in_thread() -> dict[str, Any]:
    """A `def` route: FastAPI runs it in a worker thread, so the loop answers the health check."""
    began = time.monotonic()
    try:
        return _answer(began, _sync_app_id())
    except Exception as exc:
        return _answer(began, error=exc)


@app.post("/publish")
async def publish() -> dict[str, Any]:
    began = time.monotonic()
    await dapr.publish("pubsub", "orders", {"via": "dapr.publish"})
    return _answer(began, "published")


@app.get("/ping")
async def ping() -> dict[str, Any]:
    return {"pong": time.monotonic()}
