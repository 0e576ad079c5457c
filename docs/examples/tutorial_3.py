from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from fastapi_dapr import Dapr


class Order(BaseModel):
    id: str
    item: str
    quantity: int = Field(gt=0)


app = FastAPI()
dapr = Dapr(app, app_id="orders")  # the app is its own Dapr sidecar
orders: dict[str, dict] = {}


@dapr.subscribe("pubsub", "orders")
async def on_order(order: Order):
    orders[order.id] = {**order.model_dump(), "status": "accepted"}


@app.get("/orders/{order_id}")
async def read_order(order_id: str):
    if order_id not in orders:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return orders[order_id]
