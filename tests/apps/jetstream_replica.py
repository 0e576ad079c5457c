"""A replica of an app, run by uvicorn in a process of its own by the JetStream fault tests.

Each message it handles is recorded in the `HANDLED` stream of the same NATS server (its
number and this process's id), published and acknowledged by the stream before the handler
returns, so that what a process did is still counted after it is killed. Set by the test:
FASTAPI_DAPR_TEST_RESOURCES (the resources folder), FASTAPI_DAPR_TEST_NATS (the server's
URL), FASTAPI_DAPR_TEST_WORK (seconds each message takes to handle).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import nats
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

url = os.environ["FASTAPI_DAPR_TEST_NATS"]
work = float(os.environ.get("FASTAPI_DAPR_TEST_WORK", "0"))
recorder: dict[str, Any] = {}
connecting = asyncio.Lock()

app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=Path(os.environ["FASTAPI_DAPR_TEST_RESOURCES"]))


async def record(n: int) -> None:
    async with connecting:
        if "js" not in recorder:
            recorder["js"] = (await nats.connect(url)).jetstream()
    await recorder["js"].publish("handled", json.dumps({"n": n, "pid": os.getpid()}).encode())


@dapr.subscribe("pubsub", "jobs")
async def on_job(event: CloudEvent[dict[str, int]]) -> None:
    await asyncio.sleep(work)  # the work a message takes: many are in flight at any moment
    await record(event.data["n"])
