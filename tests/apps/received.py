"""What the test apps behind the standalone sidecar received, and `GET /received` to read it.

`GET /received?count=N&kind=K` answers once N records (of kind K) are there, or after 10 s,
so a test awaits what it expects from another process instead of polling for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()
received: list[dict[str, Any]] = []
subscribe_headers: list[dict[str, str]] = []
_arrived = asyncio.Condition()


async def record(kind: str, request: Request, body: Any) -> None:
    async with _arrived:
        received.append(
            {
                "kind": kind,
                "path": request.url.path,
                "headers": dict(request.headers),
                "header_list": request.headers.items(),  # repeated names too
                "body": body,
            }
        )
        _arrived.notify_all()


@router.get("/received")
async def get_received(count: int = 0, kind: str = "") -> Any:
    def matching() -> list[dict[str, Any]]:
        return [item for item in received if not kind or item["kind"] == kind]

    async with _arrived:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_arrived.wait_for(lambda: len(matching()) >= count), 10)
        return {"received": matching(), "subscribe_headers": subscribe_headers}
