"""A replica of an app, run by uvicorn in a process of its own by the Redis fault tests.

Each message it handles is recorded in the `handled` stream of the same Redis (its number
and this process's id), so that what a process did is still counted after it is killed.
Set by the test: FASTAPI_DAPR_TEST_RESOURCES (the resources folder), FASTAPI_DAPR_TEST_REDIS
(host:port), FASTAPI_DAPR_TEST_WORK (seconds each message takes to handle).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import redis.asyncio as redis
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

host, _, port = os.environ["FASTAPI_DAPR_TEST_REDIS"].rpartition(":")
work = float(os.environ.get("FASTAPI_DAPR_TEST_WORK", "0"))
record = redis.Redis(host=host, port=int(port))

app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=Path(os.environ["FASTAPI_DAPR_TEST_RESOURCES"]))


@dapr.subscribe("pubsub", "jobs")
async def on_job(event: CloudEvent[dict[str, int]]) -> None:
    await asyncio.sleep(work)  # the work a message takes: many are in flight at any moment
    await record.xadd("handled", {"n": event.data["n"], "pid": os.getpid()})
