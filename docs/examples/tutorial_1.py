from fastapi import FastAPI

from fastapi_dapr import Dapr

app = FastAPI()
dapr = Dapr(app, app_id="orders")  # the app is its own Dapr sidecar
received: list[dict] = []


@dapr.subscribe("pubsub", "orders")
async def on_order(data: dict):
    received.append(data)


@app.get("/received")
async def read_received():
    return received
