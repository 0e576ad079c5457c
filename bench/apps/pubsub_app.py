"""The app uvicorn serves for the HTTP part of bench/publish_deliver.py.

`POST /plain` is the baseline: a FastAPI endpoint that does nothing. The
subject is `POST /v1.0/publish/pubsub/bench` (the embedded sidecar's publish
API) followed by the in-process delivery to `on_bench`. `GET /stats` tells the
benchmark how many messages have been delivered so far.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

# BENCH_METRICS=1 measures the cost of Dapr(metrics=True).
METRICS = os.environ.get("BENCH_METRICS") == "1"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"

app = FastAPI()
dapr = Dapr(app, app_id="bench", resources_path=str(RESOURCES), metrics=METRICS)
delivered = 0


@dapr.subscribe("pubsub", "bench")
async def on_bench(event: CloudEvent[Any]) -> None:
    global delivered
    delivered += 1


@app.post("/plain")
async def plain() -> None:
    return None


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"delivered": delivered}
