"""An app written as Dapr's docs show, with no fastapi-dapr code at all: run by uvicorn in a
process of its own, behind the standalone sidecar (tests/test_standalone.py).

It advertises its subscriptions on `GET /dapr/subscribe` (v1 `route`, v2 `routes`, a
dead-letter topic), answers deliveries with `{"status": ...}`, and has an invocable route.
Everything it receives is recorded; `GET /received?count=N` waits until N records are
there (or 10 s), so the test awaits what it expects instead of polling.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastapi import FastAPI, Request

app = FastAPI()
received: list[dict[str, Any]] = []
arrived = asyncio.Condition()
attempts: dict[str, int] = {}
subscribe_headers: list[dict[str, str]] = []


async def record(kind: str, request: Request, body: Any) -> None:
    async with arrived:
        received.append({"kind": kind, "path": request.url.path, "headers": dict(request.headers), "body": body})
        arrived.notify_all()


@app.get("/dapr/subscribe")
async def subscribe(request: Request) -> Any:
    subscribe_headers.append(dict(request.headers))
    if os.environ.get("PLAIN_APP_SUBSCRIBE") == "broken":
        return [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders", "metadata": {"rawPayload": True}}]
    return [
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {"pubsubname": "pubsub", "topic": "flaky", "route": "/flaky"},
        {"pubsubname": "pubsub", "topic": "poison", "route": "/poison", "deadLetterTopic": "poison-dead"},
        {"pubsubname": "pubsub", "topic": "poison-dead", "route": "/dead-letters"},
        {
            "pubsubname": "pubsub",
            "topic": "widgets",
            "routes": {
                "rules": [{"match": 'event.data.size == "big"', "path": "/widgets/big"}],
                "default": "/widgets/other",
            },
        },
    ]


@app.post("/orders")
async def orders(request: Request) -> Any:
    await record("orders", request, await request.json())
    return {"status": "SUCCESS"}


@app.post("/flaky")
async def flaky(request: Request) -> Any:
    event = await request.json()
    attempts[event["id"]] = attempts.get(event["id"], 0) + 1
    if attempts[event["id"]] == 1:
        return {"status": "RETRY"}
    await record("flaky", request, {"event": event, "attempt": attempts[event["id"]]})
    return {"status": "SUCCESS"}


@app.post("/poison")
async def poison(request: Request) -> Any:
    await record("poison", request, await request.json())
    return {"status": "DROP"}


@app.post("/dead-letters")
async def dead_letters(request: Request) -> Any:
    await record("dead-letters", request, await request.json())
    return {"status": "SUCCESS"}


@app.post("/widgets/big")
async def big_widgets(request: Request) -> Any:
    await record("widgets-big", request, await request.json())
    return {"status": "SUCCESS"}


@app.post("/widgets/other")
async def other_widgets(request: Request) -> Any:
    await record("widgets-other", request, await request.json())
    return {"status": "SUCCESS"}


@app.api_route("/hello/{name}", methods=["GET", "POST"])
async def hello(name: str, request: Request) -> Any:
    body = await request.body()
    await record("hello", request, body.decode())
    return {
        "hello": name,
        "app": os.environ.get("PLAIN_APP_NAME", ""),
        "query": request.url.query,
        "body": json.loads(body) if body else None,
        "caller": request.headers.get("dapr-caller-app-id"),
        "callee": request.headers.get("dapr-callee-app-id"),
        "token": request.headers.get("dapr-api-token"),
    }


@app.get("/received")
async def get_received(count: int = 0, kind: str = "") -> Any:
    def matching() -> list[dict[str, Any]]:
        return [item for item in received if not kind or item["kind"] == kind]

    async with arrived:
        try:
            await asyncio.wait_for(arrived.wait_for(lambda: len(matching()) >= count), 10)
        except asyncio.TimeoutError:
            pass
        return {"received": matching(), "subscribe_headers": subscribe_headers}
