"""An app with the embedded sidecar serving Dapr's gRPC API too (`Dapr(app, grpc_port=...)`), run
by uvicorn in a process of its own (tests/grpc): the official SDKs' gRPC clients, in processes
of their own, call it. It prints the gRPC port once it listens, records what its subscriptions
receive (`GET /received`, tests/apps/received.py), and has an invocable route.

Environment: RESOURCES (a resources folder, optional), GRPC_PORT (the gRPC port; 0 or unset: any
free one), APP_API_TOKEN and DAPR_API_TOKEN as usual.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response

from fastapi_dapr import Dapr, Status

from .received import record, router


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print(f"grpc app: gRPC API on 127.0.0.1:{dapr.grpc_port}", flush=True)
    yield


app = FastAPI(lifespan=lifespan)
app.include_router(router)
dapr = Dapr(
    app,
    app_id="grpcapp",
    grpc_port=int(os.environ.get("GRPC_PORT") or 0),  # the test's choice (tests/grpc/kit.py), else any
    resources_path=os.environ.get("RESOURCES") or None,
)
_attempts: dict[str, int] = {}


@dapr.subscribe("pubsub", "orders")
async def orders(request: Request) -> None:
    await record("orders", request, await request.json())


@dapr.subscribe("pubsub", "raw", raw_payload=True)
async def raw(request: Request) -> None:
    await record("raw", request, (await request.body()).decode("latin-1"))


@dapr.subscribe("pubsub", "flaky")
async def flaky(request: Request) -> Status:
    """RETRY on each message's first attempt, SUCCESS on the next."""
    event = await request.json()
    _attempts[event["id"]] = _attempts.get(event["id"], 0) + 1
    await record("flaky", request, {**event, "attempt": _attempts[event["id"]]})
    return Status.SUCCESS if _attempts[event["id"]] > 1 else Status.RETRY


@app.api_route("/echo/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def echo(request: Request, rest: str) -> Response:
    """What it was called with, as JSON; `?status=N` answers with that status."""
    import json

    body = await request.body()
    answer = {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": dict(request.headers),
        "body": body.decode("latin-1"),
    }
    status = int(request.query_params.get("status", "200"))
    return Response(json.dumps(answer), status_code=status, media_type="application/json")


@app.get("/hello")
async def hello() -> Any:
    return {"hello": "grpc"}
