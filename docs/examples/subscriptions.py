# --8<-- [start:declaring]
from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import Dapr, DaprRouter


class Order(BaseModel):
    id: str
    quantity: int


class Invoice(BaseModel):
    id: str
    total: float


app = FastAPI()
dapr = Dapr(app, app_id="checkout")
seen: list[object] = []  # what the handlers received


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
from fastapi_dapr import DROP, SUCCESS, BulkEntry, BulkSubscribe


@dapr.subscribe("pubsub", "big-orders", bulk=BulkSubscribe(max_messages_count=50))
async def on_orders(entries: list[BulkEntry[Order]]):
    statuses = {}
    for entry in entries:
        too_many = entry.event.data.quantity > 100
        statuses[entry.entry_id] = DROP if too_many else SUCCESS
    return statuses  # an entry left out of the answer is retried, as daprd does


# --8<-- [end:bulk]
