"""docs/grpc.md: an app whose embedded sidecar also serves Dapr's gRPC API, for the
official SDKs' clients in other processes; in its own process the app publishes with
`dapr.publish`."""

# --8<-- [start:app]
import os
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

app = FastAPI()
# Dapr's gRPC API on 127.0.0.1:50001 (DAPR_GRPC_PORT, the port the SDKs are told),
# with the app's lifespan; Dapr's HTTP API on the app's own port, as always.
grpc_port = int(os.environ.get("DAPR_GRPC_PORT", "50001"))
dapr = Dapr(app, app_id="checkout", grpc_port=grpc_port)
orders: list[Any] = []


@dapr.subscribe(pubsub="pubsub", topic="orders")
async def on_order(event: CloudEvent[dict[str, Any]]) -> None:
    orders.append(event.data)


@app.post("/reorder")
async def reorder(order: dict[str, Any]) -> dict[str, Any]:
    # In the app's own event loop: the in-process API, never an SDK client (below).
    await dapr.publish("pubsub", "orders", order)
    return {"published": order}


@app.get("/orders")
async def list_orders() -> list[Any]:
    return orders


# --8<-- [end:app]
