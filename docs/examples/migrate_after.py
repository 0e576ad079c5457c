"""The same subscriber with fastapi-dapr (the "after" of docs/migrating.md)."""

from fastapi import FastAPI
from pydantic import BaseModel, Field

from fastapi_dapr import DROP, CloudEvent, Dapr


class Order(BaseModel):
    id: str
    quantity: int = Field(gt=0)


app = FastAPI()
dapr = Dapr(app)
orders: list[Order] = []


@dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
async def on_order(event: CloudEvent[Order]):
    if event.data.quantity > 100:
        return DROP
    orders.append(event.data)
    return None  # SUCCESS, as falling off the end; an exception: RETRY
