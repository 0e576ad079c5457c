"""The subject of bench/grpc_publish.py: an app with the embedded sidecar serving Dapr's gRPC
API (`Dapr(app, grpc_port=...)`, the port in GRPC_PORT: the benchmark picks it, as a port the
app bound itself before uvicorn binds the HTTP port could be that very port) and one
subscription that counts, run by uvicorn.

The official SDK publishes to `pubsub`/`bench` over gRPC (and a client over HTTP, to
`POST /v1.0/publish/pubsub/bench` on the same port); `GET /delivered?reach=K` answers with
the number of messages delivered so far once it is at least K, awaited, not polled: the
benchmark asks before it publishes, and the answer marks the last delivery. The gRPC port is
printed once it listens. With BENCH_PROFILE=PATH the app runs under cProfile while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException

from fastapi_dapr import CloudEvent, Dapr

METRICS = os.environ.get("BENCH_METRICS") == "1"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
WAIT_LIMIT_S = 120.0
PROFILE = os.environ.get("BENCH_PROFILE")  # a path: the app's cProfile stats, written at its stop


class Delivered:
    """The count of deliveries, and the futures waiting for it to reach a number."""

    def __init__(self) -> None:
        self.count = 0
        self.waiters: list[tuple[int, asyncio.Future[int]]] = []
        self.next_wake = 0  # the lowest number waited for; 0: none

    def add(self) -> None:
        self.count += 1
        if self.next_wake and self.count >= self.next_wake:
            self._wake()

    def _wake(self) -> None:
        waiting = []
        for reach, future in self.waiters:
            if self.count >= reach:
                if not future.done():
                    future.set_result(self.count)
            else:
                waiting.append((reach, future))
        self.waiters = waiting
        self.next_wake = min((reach for reach, _ in waiting), default=0)

    async def reached(self, reach: int) -> int:
        if self.count >= reach:
            return self.count
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters.append((reach, future))
        self.next_wake = min(self.next_wake or reach, reach)
        return await future


delivered = Delivered()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print(f"grpc publish app: gRPC API on 127.0.0.1:{dapr.grpc_port}", flush=True)
    if not PROFILE:
        yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(PROFILE)


app = FastAPI(lifespan=lifespan)
GRPC_PORT = int(os.environ.get("GRPC_PORT") or 0)  # 0 or unset: any free one
dapr = Dapr(app, app_id="bench", grpc_port=GRPC_PORT, resources_path=str(RESOURCES), metrics=METRICS)


@dapr.subscribe("pubsub", "bench")
async def on_bench(event: CloudEvent[Any]) -> None:
    delivered.add()


@app.get("/delivered")
async def reached(reach: int = 0) -> dict[str, int]:
    try:
        count = await asyncio.wait_for(delivered.reached(reach), WAIT_LIMIT_S)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"{delivered.count} delivered, {reach} awaited") from None
    return {"delivered": count}
