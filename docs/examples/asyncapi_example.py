from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import CloudEvent, Dapr


class LineItem(BaseModel):
    sku: str
    quantity: int = 1


class Order(BaseModel):
    """An order placed in the shop."""

    id: str
    items: list[LineItem]


class Cancellation(BaseModel):
    order_id: str
    reason: str | None = None


class Invoice(BaseModel):
    order_id: str
    total_cents: int


app = FastAPI(title="Checkout", version="1.4.0")
dapr = Dapr(app, app_id="checkout")  # serves /asyncapi.json and /asyncapi

# --8<-- [start:publisher]
invoices = dapr.publisher(
    "pubsub",
    "invoices",
    Invoice,
    description="One invoice per order taken.",
)


@dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-failed")
async def take_order(order: Order) -> None:
    """Take an order and invoice it."""
    total = 100 * len(order.items)
    await invoices.publish(Invoice(order_id=order.id, total_cents=total))
    # --8<-- [end:publisher]


@dapr.subscribe(
    "pubsub",
    "orders",
    match='event.type == "order.cancelled"',
    priority=1,
)
async def cancel_order(event: CloudEvent[Cancellation]) -> None:
    """Cancel an order."""
