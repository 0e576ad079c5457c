from __future__ import annotations

from pydantic import BaseModel, Field


class Order(BaseModel):
    """What the `orders` topic carries."""

    id: str
    item: str
    quantity: int = Field(gt=0)


class Payment(BaseModel):
    """What the `payments` topic carries; the event type says what happened."""

    order_id: str
    amount: float


class PaymentIn(BaseModel):
    """The body of POST /orders/{id}/payments."""

    amount: float
    refund: bool = False
