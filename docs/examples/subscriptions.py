from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import BulkEntry, BulkSubscribe


class Order(BaseModel):
    id: str
    quantity: int


class Invoice(BaseModel):
    id: str
    total: float


app = FastAPI()
seen: list[object] = []

# --8<-- [start:declaring]
from fastapi_dapr import Dapr, DaprRouter

dapr = Dapr(app, app_id="checkout")


@dapr.subscribe("pubsub", "orders")
async def on_order(order: Order):  # the event's data alone, validated
    seen.append(order)


billing = DaprRouter(prefix="/billing")  # an APIRouter, for modular apps


@billing.subscribe("pubsub", "invoices", match='event.type == "invoice.paid"')
async def paid(invoice: Invoice):
    seen.append(invoice)


app.include_router(billing)
# --8<-- [end:declaring]


# --8<-- [start:raw]
@dapr.subscribe("pubsub", "sensor", raw_payload=True)
async def on_reading(data: bytes):  # the published bytes, as they were
    seen.append(data)


# --8<-- [end:raw]


# --8<-- [start:bulk]
from fastapi_dapr import DROP, SUCCESS


@dapr.subscribe("pubsub", "big-orders", bulk=BulkSubscribe(max_messages_count=50))
async def on_orders(entries: list[BulkEntry[Order]]):
    # an entry left out of the answer is retried, as daprd does
    return {e.entry_id: DROP if e.event.data.quantity > 100 else SUCCESS for e in entries}


# --8<-- [end:bulk]
