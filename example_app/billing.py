"""Billing: a module with its own router, mounted under /billing by main.py."""

from __future__ import annotations

import logging

from fastapi_dapr import RETRY, CloudEvent, DaprRouter

from .models import Payment
from .store import store

log = logging.getLogger("example_app.billing")

router = DaprRouter(prefix="/billing", tags=["billing"])


@router.subscribe("pubsub", "payments", match='event.type == "payment.refunded"', priority=0)
async def on_refund(payment: Payment) -> None:
    """Routed by daprd (or the embedded sidecar) with a CEL rule on the event type."""
    store.set_status(payment.order_id, "refunded")


@router.subscribe("pubsub", "payments")
async def on_payment(event: CloudEvent[Payment]):  # type: ignore[no-untyped-def]
    """Every other payment event: the topic's default route."""
    if store.get(event.data.order_id) is None:
        # The order event may not have arrived yet: ask for a redelivery.
        log.info("payment %s arrived before its order; retrying", event.id)
        return RETRY
    store.set_status(event.data.order_id, "paid")
    return None
