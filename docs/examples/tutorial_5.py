from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from fastapi_dapr import DROP, RETRY, Dapr


class Order(BaseModel):
    id: str
    item: str
    quantity: int = Field(gt=0)


class Payment(BaseModel):
    order_id: str
    amount: float


app = FastAPI()
dapr = Dapr(app, app_id="orders")  # the app is its own Dapr sidecar
orders: dict[str, dict] = {}


@dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
async def on_order(order: Order):
    if order.quantity > 100:
        return DROP  # more than can ever be shipped: to the dead-letter topic
    orders[order.id] = {**order.model_dump(), "status": "accepted"}


@dapr.subscribe("pubsub", "orders-dead")
async def on_rejected_order(order: Order):
    orders[order.id] = {**order.model_dump(), "status": "rejected"}


@dapr.subscribe("pubsub", "payments")
async def on_payment(payment: Payment):
    if payment.order_id not in orders:
        return RETRY  # its order has not arrived yet: deliver it again later
    orders[payment.order_id]["status"] = "paid"


@app.get("/orders/{order_id}")
async def read_order(order_id: str):
    if order_id not in orders:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return orders[order_id]


@app.post("/orders", status_code=202)
async def place_order(order: Order):
    await dapr.publish("pubsub", "orders", order)
    return {"accepted": order.id}
