"""What the fault tests of every broker share: an app publishing and consuming numbered
messages while a fault happens, replicas in processes of their own (`tests/apps/*_replica.py`),
the count of what they handled, and the lines reported under "what the fault tests counted"."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr, DaprAPIError
from fastapi_dapr.testing import DaprTest

from ..processes import ChildProcess

ROOT = Path(__file__).resolve().parents[2]


# -- the broker restarted, crashed or paused while an app publishes and consumes ----------------


async def publish_until_taken(dapr: Dapr, n: int, refusals: list[tuple[int, str]]) -> None:
    """Publish message `n`; while the broker is away the publish fails, and the caller tries again."""
    while True:
        try:
            await dapr.publish("pubsub", "load", {"n": n})
            return
        except DaprAPIError as exc:
            refusals.append((exc.status_code, exc.error_code))
            await asyncio.sleep(0.05)  # the publisher's own back-off


async def run_fault(
    app: FastAPI, dapr: Dapr, fault: Callable[[], Any], report: Any, during: str = "the fault"
) -> dict[int, int]:
    """Publish and deliver numbered messages to topic `load` before, during and after `fault`:
    every one taken must be delivered at least once. Duplicates are counted and reported."""
    counts: dict[int, int] = {}
    arrived = asyncio.Condition()

    @dapr.subscribe("pubsub", "load")
    async def on_load(event: CloudEvent[dict[str, int]]) -> None:
        counts[event.data["n"]] = counts.get(event.data["n"], 0) + 1
        async with arrived:
            arrived.notify_all()

    refusals: list[tuple[int, str]] = []
    async with DaprTest(app):
        n = 0
        for n in range(50):
            await publish_until_taken(dapr, n, refusals)
        faulting = asyncio.create_task(fault())  # while publishing and delivering go on
        while not faulting.done():
            n += 1
            await publish_until_taken(dapr, n, refusals)
        await faulting
        last = n + 50
        while n < last:
            n += 1
            await publish_until_taken(dapr, n, refusals)
        total = n + 1
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: len(counts) == total), 60)
    assert sorted(counts) == list(range(total))
    assert set(refusals) <= {(500, "ERR_PUBSUB_PUBLISH_MESSAGE")}
    duplicates = sum(count - 1 for count in counts.values())
    report(f"{total} messages, {len(refusals)} publishes refused during {during}, {duplicates} duplicates")
    return counts


def paused(server: Any, seconds: float) -> Callable[[], Awaitable[None]]:
    """The fault of a broker paused (SIGSTOP) for `seconds`, then resumed."""

    async def pause() -> None:
        server.pause()
        try:
            await asyncio.sleep(seconds)  # the fault's length
        finally:
            server.resume()

    return pause


# -- replicas in processes of their own, killed with SIGKILL -------------------------------------


class Replica(ChildProcess):
    """`tests/apps/<broker>_replica.py` under uvicorn, in its own process: `address` names the
    broker to it in the environment variable `variable`."""

    def __init__(self, broker: str, variable: str, address: str, resources: Path, work: float = 0.05) -> None:
        environment = {
            **os.environ,
            variable: address,
            "FASTAPI_DAPR_TEST_RESOURCES": str(resources),
            "FASTAPI_DAPR_TEST_WORK": str(work),
        }
        argv = [sys.executable, "-m", "uvicorn", f"tests.apps.{broker}_replica:app", "--port", "0"]
        # Ready once the lifespan, and so the consumers (Kafka: their partitions assigned), started.
        super().__init__(argv, ready=b"Application startup complete", env=environment, cwd=ROOT)


@contextlib.asynccontextmanager
async def replicas(count: int, make: Callable[[], Replica]) -> AsyncIterator[list[Replica]]:
    started = [make() for _ in range(count)]
    try:
        yield started
    finally:
        for replica in started:
            await replica.stop()


class Tally:
    """How often each message was handled, and by which replica (the records `{"n", "pid"}` the
    replicas write to a log of the broker's)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self.by_pid: collections.Counter[int] = collections.Counter()

    def count(self, record: dict[str, Any]) -> None:
        self.counts[record["n"]] += 1
        self.by_pid[record["pid"]] += 1

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.counts.values())


def numbered_event(n: int) -> bytes:
    """The CloudEvent of message `n`, as a publisher other than the replicas sends it."""
    envelope = {
        "specversion": "1.0", "id": str(n), "source": "test", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "data": {"n": n},
    }  # fmt: skip
    return json.dumps(envelope).encode()


def restarted_line(total: int, handled_before: int, duplicates: int) -> str:
    """The report of a replica killed, then started again."""
    return f"{total} messages; {handled_before} handled before the kill; {duplicates} handled twice"


def survived_line(total: int, handled_before: int, duplicates: int) -> str:
    """The report of one of two replicas killed."""
    return f"{total} messages; the killed replica handled {handled_before}; {duplicates} handled twice"
