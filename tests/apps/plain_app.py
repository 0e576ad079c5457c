"""An app written as Dapr's docs show, with no fastapi-dapr code at all: run by uvicorn in a
process of its own, behind the standalone sidecar (tests/sidecar/test_standalone.py).

It advertises its subscriptions on `GET /dapr/subscribe` (v1 `route`, v2 `routes`, a
dead-letter topic), answers deliveries with `{"status": ...}`, and has an invocable route.
Everything it receives is recorded, for the test to read (`tests/apps/received.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastapi import FastAPI, Request

from .received import record, router, subscribe_headers

app = FastAPI()
app.include_router(router)  # GET /received, for the test
attempts: dict[str, int] = {}


@app.get("/dapr/subscribe")
async def subscribe(request: Request) -> Any:
    subscribe_headers.append(dict(request.headers))
    if os.environ.get("PLAIN_APP_SUBSCRIBE") == "broken":
        return [
            {"pubsubname": "pubsub", "topic": "orders", "route": "/orders", "metadata": {"rawPayload": True}}
        ]
    return [
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {"pubsubname": "pubsub", "topic": "flaky", "route": "/flaky"},
        {"pubsubname": "pubsub", "topic": "poison", "route": "/poison", "deadLetterTopic": "poison-dead"},
        {"pubsubname": "pubsub", "topic": "poison-dead", "route": "/dead-letters"},
        {"pubsubname": "pubsub", "topic": "slow", "route": "/slow"},
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


@app.api_route("/slow", methods=["GET", "POST"])
async def slow(request: Request, seconds: float = 0.5) -> Any:
    """Takes `seconds` (a delivery: its event's `data.seconds`): in flight for that long."""
    if request.method == "POST":
        seconds = float((await request.json())["data"]["seconds"])
    await record(f"slow-{request.method}-start", request, None)
    await asyncio.sleep(seconds)
    await record(f"slow-{request.method}-done", request, None)
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
