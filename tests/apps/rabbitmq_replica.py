"""A replica of an app, run by uvicorn in a process of its own by the RabbitMQ fault tests.

Each message it handles is recorded, before the handler returns (and so before its ack), in
the durable queue `handled` of the same RabbitMQ (its number and this process's id, persistent
and confirmed), so that what a process did is still counted after it is killed. Set by the
test: FASTAPI_DAPR_TEST_RESOURCES (the resources folder), FASTAPI_DAPR_TEST_RABBITMQ (the AMQP
URL), FASTAPI_DAPR_TEST_WORK (seconds each message takes to handle).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aio_pika
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

url = os.environ["FASTAPI_DAPR_TEST_RABBITMQ"]
work = float(os.environ.get("FASTAPI_DAPR_TEST_WORK", "0"))

app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=Path(os.environ["FASTAPI_DAPR_TEST_RESOURCES"]))
_record: dict[str, Any] = {}
_opening = asyncio.Lock()


async def record(n: int) -> None:
    async with _opening:
        if "channel" not in _record:
            _record["connection"] = await aio_pika.connect(url)
            _record["channel"] = await _record["connection"].channel(publisher_confirms=True)
    body = json.dumps({"n": n, "pid": os.getpid()}).encode()
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await _record["channel"].default_exchange.publish(message, routing_key="handled")


@dapr.subscribe("pubsub", "jobs")
async def on_job(event: CloudEvent[dict[str, int]]) -> None:
    await asyncio.sleep(work)  # the work a message takes: many are in flight at any moment
    await record(event.data["n"])
