"""Apps that bench/publish_deliver.py builds and runs in its own process.

Each factory makes a fresh FastAPI app with the embedded sidecar (the
in-memory pub/sub of bench/resources) and one subscription to `bench` on
`pubsub`, and returns the small mutable record its handler updates, which the
benchmark reads and resets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr

# BENCH_METRICS=1 measures the cost of Dapr(metrics=True).
METRICS = os.environ.get("BENCH_METRICS") == "1"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
PUBSUB = "pubsub"
TOPIC = "bench"


@dataclasses.dataclass
class Counter:
    """How many events the handler has seen; `done` is set when `count` reaches `target`."""

    target: int = 0
    count: int = 0
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def reset(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()


@dataclasses.dataclass
class Gate:
    """Holds every delivery in its handler while `release` is not set.

    `held` is set once `expect` deliveries wait in the handler at the same
    time, `idle` whenever every delivery that entered has finished.
    """

    expect: int = 1
    entered: int = 0
    finished: int = 0
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    held: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def counting_app() -> tuple[FastAPI, Dapr, Counter]:
    """An app whose handler only counts what it is given."""
    app = FastAPI()
    dapr = Dapr(app, app_id="bench", resources_path=str(RESOURCES), metrics=METRICS)
    counter = Counter()

    @dapr.subscribe(PUBSUB, TOPIC)
    async def on_bench(event: CloudEvent[Any]) -> None:
        counter.count += 1
        if counter.count == counter.target:
            counter.done.set()

    return app, dapr, counter


def gated_app() -> tuple[FastAPI, Dapr, Gate]:
    """An app whose handler blocks until the gate opens, so that messages stay queued."""
    app = FastAPI()
    dapr = Dapr(app, app_id="bench", resources_path=str(RESOURCES), metrics=METRICS)
    gate = Gate()

    @dapr.subscribe(PUBSUB, TOPIC)
    async def on_bench(event: CloudEvent[Any]) -> None:
        gate.entered += 1
        gate.idle.clear()
        if gate.entered - gate.finished >= gate.expect:
            gate.held.set()
        await gate.release.wait()
        gate.finished += 1
        if gate.finished == gate.entered:
            gate.idle.set()

    return app, dapr, gate
