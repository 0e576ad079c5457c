"""An app on the official Python SDK's FastAPI extension (`dapr.ext.fastapi.DaprApp`), with no
fastapi-dapr code: run by uvicorn behind the standalone sidecar (tests/sidecar/test_standalone.py)."""

from __future__ import annotations

from typing import Any

from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI, Request

from .received import record, router

app = FastAPI()
app.include_router(router)  # GET /received, for the test
dapr_app = DaprApp(app)


@dapr_app.subscribe(pubsub="pubsub", topic="orders")
async def on_order(request: Request, event: dict[str, Any] = Body(...)) -> Any:
    await record("orders", request, event)
    return {"status": "SUCCESS"}
