"""The example checkout service.

Run it from the repository's root with `uvicorn example_app.main:app` (in-memory pub/sub),
`EXAMPLE_PUBSUB=redis uvicorn example_app.main:app` (Redis Streams on 127.0.0.1:6379), or
behind a real Dapr sidecar with the same resources:
`dapr run --app-id checkout --app-port 8000 --resources-path example_app/resources/common
--resources-path example_app/resources/memory -- uvicorn example_app.main:app`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException

from fastapi_dapr import DROP, CloudEvent, Dapr, DaprAPIError

from . import billing, shipping
from .models import Order, Payment, PaymentIn
from .store import store

log = logging.getLogger("example_app")

RESOURCES = Path(__file__).parent / "resources"
PUBSUB = os.environ.get("EXAMPLE_PUBSUB", "memory")  # which folder's pubsub component
if PUBSUB not in ("memory", "redis"):
    raise RuntimeError(f"EXAMPLE_PUBSUB is 'memory' or 'redis', not {PUBSUB!r}")

app = FastAPI(title="checkout")
dapr = Dapr(app, app_id="checkout", resources_path=[RESOURCES / "common", RESOURCES / PUBSUB])
app.include_router(billing.router)
app.include_router(shipping.router)

MAX_QUANTITY = 100
# The carrier stand-in (shipping.py) is this app itself, at the fixed address of the HTTPEndpoint.
CARRIER_HINT = (
    "the example's carrier is this app itself: spec.baseUrl in "
    "example_app/resources/common/shipping.yaml must name the port the app is served on"
)


@dapr.subscribe(pubsub="pubsub", topic="orders", dead_letter_topic="orders-dead")
async def on_order(event: CloudEvent[Order]):  # type: ignore[no-untyped-def]
    """A new order. Orders too large to fill are dropped to the dead-letter topic."""
    order = event.data
    if order.quantity > MAX_QUANTITY:
        log.warning("order %s asks for %d items: dropped", order.id, order.quantity)
        return DROP
    store.add(order.id, item=order.item, quantity=order.quantity, status="accepted")
    return None


@dapr.subscribe(pubsub="pubsub", topic="orders-dead")
async def on_dead_order(event: CloudEvent) -> None:
    """Orders that could not be processed: kept for a person to look at."""
    data = event.data if isinstance(event.data, dict) else {}
    order_id = str(data.get("id", event.id))
    store.add(order_id, status="rejected", original=event.data)


@app.post("/orders", status_code=202)
async def place_order(order: Order) -> dict[str, str]:
    """Take an order: publish it, and let the `orders` subscription process it."""
    await dapr.publish("pubsub", "orders", order)
    return {"accepted": order.id}


@app.post("/orders/{order_id}/payments", status_code=202)
async def pay(order_id: str, payment: PaymentIn) -> dict[str, str]:
    """Record a payment (or a refund): the event type routes it in billing.py."""
    event_type = "payment.refunded" if payment.refund else "payment.made"
    await dapr.publish(
        "pubsub",
        "payments",
        Payment(order_id=order_id, amount=payment.amount),
        metadata={"cloudevent.type": event_type},
    )
    return {"published": event_type}


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    order = store.get(order_id)
    if order is None:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return order


@app.get("/orders/{order_id}/shipping")
async def shipping_quote(order_id: str) -> dict[str, object]:
    """Ask the carrier (the `shipping` HTTPEndpoint) what shipping the order costs."""
    order = store.get(order_id)
    if order is None or "item" not in order:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    try:
        answer = await dapr.invoke(
            "shipping",
            "quotes",
            http_method="POST",
            json={"item": order["item"], "quantity": order["quantity"]},
        )
    except DaprAPIError as exc:  # the carrier could not be reached
        raise HTTPException(status_code=502, detail=f"{exc.message}; {CARRIER_HINT}") from None
    if not answer.is_success:
        raise HTTPException(status_code=502, detail=f"the carrier answered {answer.status_code}")
    quote: dict[str, object] = answer.json()
    return {"order": order_id, **quote}
