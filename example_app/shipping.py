"""A stand-in for a carrier's quoting API, so that the example runs on its own.

In production the `shipping` HTTPEndpoint (resources/common/shipping.yaml) points at the
carrier; here it points back at this app, under /partners/shipping. Like a real partner
API, it wants the bearer token the HTTPEndpoint adds from the secret store.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel

router = APIRouter(prefix="/partners/shipping", tags=["shipping partner"], include_in_schema=False)

EXPECTED_TOKEN = "Bearer example-carrier-token"  # what resources/common/secrets.json holds


class QuoteRequest(BaseModel):
    item: str
    quantity: int


@router.post("/quotes")
async def quote(request: QuoteRequest, authorization: str = Header("")) -> dict[str, object]:
    if authorization != EXPECTED_TOKEN:
        raise HTTPException(status_code=401, detail="unknown client")
    return {"carrier": "Parcel & Co", "price": round(4.5 + 1.25 * request.quantity, 2), "days": 2}
