"""The service the testing examples test (docs/testing.md)."""

from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import RETRY, Dapr, RetryPolicy


class Order(BaseModel):
    id: str
    quantity: int


app = FastAPI()
dapr = Dapr(
    app,
    app_id="orders",
    retry=RetryPolicy(policy="constant", duration=1.0, max_retries=5),
)
orders: dict[str, dict[str, object]] = {}
flaky_attempts: list[int] = []


@dapr.subscribe("pubsub", "orders")
async def on_order(order: Order) -> None:
    orders[order.id] = {**order.model_dump(), "status": "accepted"}
    # Billing's topic: nothing in this app subscribes to it.
    await dapr.publish(
        "pubsub", "invoices", {"order": order.id, "quantity": order.quantity}
    )


@dapr.subscribe("pubsub", "flaky")
async def on_flaky(data: dict[str, int]):
    flaky_attempts.append(data["n"])
    return RETRY if len(flaky_attempts) % 3 else None  # the third attempt succeeds


@app.post("/orders", status_code=202)
async def place_order(order: Order) -> dict[str, str]:
    await dapr.publish("pubsub", "orders", order)
    return {"accepted": order.id}


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    return orders.get(order_id, {})
