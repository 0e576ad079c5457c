"""A replica of an app, run by uvicorn in a process of its own by the Kafka fault tests.

Each message it handles is recorded, before the handler returns (and so before its offset
can be committed), in the topic `handled` of the same broker (its number and this process's
id, written with acks=all and awaited), so that what a process did is still counted after it
is killed. Set by the test: FASTAPI_DAPR_TEST_RESOURCES (the resources folder),
FASTAPI_DAPR_TEST_KAFKA (the broker's host:port), FASTAPI_DAPR_TEST_WORK (seconds each
message takes to handle).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

brokers = os.environ["FASTAPI_DAPR_TEST_KAFKA"]
work = float(os.environ.get("FASTAPI_DAPR_TEST_WORK", "0"))

app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=Path(os.environ["FASTAPI_DAPR_TEST_RESOURCES"]))
_record: dict[str, Any] = {}
_opening = asyncio.Lock()


async def record(n: int) -> None:
    async with _opening:
        if "producer" not in _record:
            producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
            await producer.start()
            _record["producer"] = producer
    body = json.dumps({"n": n, "pid": os.getpid()}).encode()
    await _record["producer"].send_and_wait("handled", body, partition=0)


@dapr.subscribe("pubsub", "jobs")
async def on_job(event: CloudEvent[dict[str, int]]) -> None:
    await asyncio.sleep(work)  # the work a message takes: many are in flight at any moment
    await record(event.data["n"])
