#!/usr/bin/env python
"""Publish-to-handler through Redis Streams: fastapi-dapr's `pubsub.redis`, FastStream's Redis
Streams subscriber, and a raw redis-py loop, on one redis-server this script starts.

1. Throughput, end to end: N messages published (100 at a time) to a trivial handler, timed
   from the first publish to the last message handled (and acknowledged).
   - raw loop (baseline): pipelined `XADD`, `XREADGROUP COUNT 100`, one `XACK` per batch;
   - FastStream 0.x: `broker.publish(..., stream=...)`, a `StreamSub` with a consumer group;
   - fastapi-dapr: `dapr.publish(...)` to a `@dapr.subscribe` handler, in process (the app's
     lifespan run as a server runs it, without the delivery reports `DaprTest` records),
     through a `pubsub.redis` component.
   Targets: fastapi-dapr at least 5 x FastStream, and at least 0.75 x the raw loop. A warm-up
   round of each comes first and is not counted; the medians of 5 rounds are compared, and
   the ratios of each round are printed too.
2. Latency at a fixed rate (`--rate`, 500/s): each message carries its publish time; the
   handler records now minus that. p50 and p99 of each.

Prints a markdown table and writes bench/results/redis_pubsub.json.

    python bench/redis_pubsub.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.pubsub import (
    Handled,
    at_rate,
    fastapi_dapr_round,
    measure,
    parse_args,
    payload,
    percentiles,
    run,
    write_report,
)
from publish_deliver import environment, free_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "redis_pubsub.json"
FASTSTREAM_TARGET = 5.0
RAW_TARGET = 0.75
CHUNK = 10  # publishes in flight at once (FastStream's client allows few connections)


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if b"Ready to accept connections" in line:
            break
    else:
        raise RuntimeError("redis-server did not start")
    try:
        yield port
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait()


# -- subjects ----------------------------------------------------------------------------------


async def raw_loop(port: int, total: int, rate: float, seconds: float) -> dict[str, Any]:
    import redis.asyncio as redis

    producer = redis.Redis(port=port, protocol=2)
    consumer = redis.Redis(port=port, protocol=2)
    stream = f"raw-{time.time_ns()}"  # a fresh stream each round
    await producer.xgroup_create(stream, "bench", id="$", mkstream=True)
    handled = Handled()
    stop = False

    async def consume() -> None:
        while not stop:
            answer: Any = await consumer.xreadgroup("bench", "c", {stream: ">"}, count=100, block=200)
            if not answer:
                continue
            ids = []
            for entry_id, fields in answer[0][1]:
                handled.saw(json.loads(fields[b"data"])["at"])
                ids.append(entry_id)
            await consumer.xack(stream, "bench", *ids)

    reader = asyncio.create_task(consume())

    async def publish_batch(numbers: range) -> None:
        async with producer.pipeline(transaction=False) as pipe:
            for n in numbers:
                pipe.xadd(stream, {"data": json.dumps(payload(n)), "metadata": "{}"})
            await pipe.execute()

    handled.expect(total)
    started = time.perf_counter()
    for start in range(0, total, CHUNK):
        await publish_batch(range(start, min(start + CHUNK, total)))
    await handled.wait()
    throughput = total / (time.perf_counter() - started)

    async def one(n: int) -> None:
        await producer.xadd(stream, {"data": json.dumps(payload(n)), "metadata": "{}"})

    handled.expect(int(rate * seconds))
    await at_rate(one, rate, seconds)
    await handled.wait()
    latency = percentiles(handled.latencies)
    stop = True
    await reader
    await producer.aclose()
    await consumer.aclose()
    return {"per_s": throughput, **latency}


async def faststream(port: int, total: int, rate: float, seconds: float) -> dict[str, Any]:
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(f"redis://127.0.0.1:{port}", logger=None)
    handled = Handled()

    stream = f"fs-{time.time_ns()}"

    @broker.subscriber(stream=StreamSub(stream, group="bench", consumer="c", last_id="$"))
    async def on_message(body: dict[str, Any]) -> None:
        handled.saw(body["at"])

    await broker.start()

    async def one(n: int) -> None:
        await broker.publish(payload(n), stream=stream)

    figures = await measure(handled, one, total, rate, seconds, in_flight=CHUNK)
    await broker.stop()
    return figures


async def fastapi_dapr(port: int, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    component = (
        "  type: pubsub.redis\n  version: v1\n  metadata:\n"
        f"  - name: redisHost\n    value: 127.0.0.1:{port}\n"
    )
    topic = f"fd-{time.time_ns()}"
    return await fastapi_dapr_round(folder, component, topic, total, rate, seconds, in_flight=CHUNK)


def main() -> int:
    args = parse_args(__doc__, RESULTS)
    env = environment()
    print(f"redis_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, redis_server(Path(tmp)) as port:
        subjects = {
            "raw": functools.partial(raw_loop, port),
            "faststream": functools.partial(faststream, port),
            "fastapi_dapr": functools.partial(fastapi_dapr, port, folder=Path(tmp)),
        }
        results = asyncio.run(run(args, subjects))
    write_report("redis_pubsub", "raw redis-py loop", args, env, results, (FASTSTREAM_TARGET, RAW_TARGET))
    return 0


if __name__ == "__main__":
    sys.exit(main())
