"""An app whose messages are dropped, to see what the package writes under uvicorn
(tests/sidecar/test_uvicorn_feedback.py): `POST /publish` publishes one to `orders`."""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_dapr import DROP, CloudEvent, Dapr, Status

app = FastAPI()
dapr = Dapr(app, app_id="feedback")


@dapr.subscribe("pubsub", "orders")
async def on_order(event: CloudEvent) -> Status:
    return DROP


@app.post("/publish", status_code=204, response_model=None)
async def publish() -> None:
    await dapr.publish("pubsub", "orders", {"n": 1})
