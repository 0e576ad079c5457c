"""An app with the embedded sidecar (`Dapr(app)`), run by uvicorn in a process of its own
(tests/sidecar/test_sidecar_surface.py): it prints a line when its own lifespan starts and ends, so
that the test sees the app stop gracefully, not die."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import Dapr


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print("embedded app: lifespan started", flush=True)
    yield
    print("embedded app: lifespan ended", flush=True)


app = FastAPI(lifespan=lifespan)
dapr = Dapr(app, app_id="embedded")


@app.get("/hello")
async def hello() -> Any:
    return {"hello": "embedded"}
