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

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from publish_deliver import Row, environment, free_port, markdown, row_json

from fastapi_dapr import CloudEvent, Dapr

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


class Handled:
    """Counts what a handler saw, and when the count reaches a number."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self._target = 0
        self._done: asyncio.Event = asyncio.Event()

    def expect(self, total: int) -> None:
        self.count, self._target = 0, total
        self.latencies = []
        self._done = asyncio.Event()

    def saw(self, sent_at: float | None = None) -> None:
        self.count += 1
        if sent_at is not None:
            self.latencies.append((time.time() - sent_at) * 1000)
        if self.count >= self._target:
            self._done.set()

    async def wait(self, timeout: float = 300) -> None:
        await asyncio.wait_for(self._done.wait(), timeout)


async def publish_all(publish: Callable[[int], Awaitable[Any]], total: int) -> None:
    for start in range(0, total, CHUNK):
        await asyncio.gather(*(publish(n) for n in range(start, min(start + CHUNK, total))))


async def at_rate(publish: Callable[[int], Awaitable[Any]], rate: float, seconds: float) -> int:
    total = int(rate * seconds)
    begin = time.perf_counter()
    tasks = []
    for n in range(total):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(publish(n)))
    await asyncio.gather(*tasks)
    return total


async def measure(
    handled: Handled, one: Callable[[int], Awaitable[Any]], total: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Throughput of `total` publishes until handled, then latency at a fixed rate."""
    handled.expect(total)
    started = time.perf_counter()
    await publish_all(one, total)
    await handled.wait()
    throughput = total / (time.perf_counter() - started)
    handled.expect(int(rate * seconds))
    await at_rate(one, rate, seconds)
    await handled.wait()
    return {"per_s": throughput, **percentiles(handled.latencies)}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "at": time.time()}


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

    figures = await measure(handled, one, total, rate, seconds)
    await broker.stop()
    return figures


async def fastapi_dapr(port: int, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.redis\n  version: v1\n  metadata:\n"
        f"  - name: redisHost\n    value: 127.0.0.1:{port}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="bench", resources_path=resources)
    handled = Handled()

    topic = f"fd-{time.time_ns()}"

    @dapr.subscribe("pubsub", topic)
    async def on_message(event: CloudEvent[dict[str, Any]]) -> None:
        handled.saw(event.data["at"])

    async with app.router.lifespan_context(app):  # the app as a server runs it: no test observers

        async def one(n: int) -> None:
            await dapr.publish("pubsub", topic, payload(n))

        return await measure(handled, one, total, rate, seconds)


async def run(args: argparse.Namespace, port: int, folder: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"raw": [], "faststream": [], "fastapi_dapr": []}
    # A warm-up round of each, not counted: the first round ran slower for all three.
    warm = (max(500, args.messages // 10), args.rate, 0.2)
    await raw_loop(port, *warm)
    await faststream(port, *warm)
    await fastapi_dapr(port, *warm, folder)
    for _ in range(args.rounds):
        results["raw"].append(await raw_loop(port, args.messages, args.rate, args.seconds))
        results["faststream"].append(await faststream(port, args.messages, args.rate, args.seconds))
        results["fastapi_dapr"].append(
            await fastapi_dapr(port, args.messages, args.rate, args.seconds, folder)
        )
    return results


def round_ratios(results: dict[str, list[dict[str, Any]]], baseline: str) -> list[float]:
    """fastapi-dapr's throughput over the baseline's, round by round (same machine state)."""
    return [
        ours["per_s"] / theirs["per_s"]
        for ours, theirs in zip(results["fastapi_dapr"], results[baseline], strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short, for CI; targets not judged")
    parser.add_argument("--messages", type=int, help="messages per throughput run (20000; quick 1000)")
    parser.add_argument("--rounds", type=int, help="rounds, the median is kept (5; quick 1)")
    parser.add_argument("--rate", type=float, default=500.0, help="messages/s of the latency runs (500)")
    parser.add_argument("--seconds", type=float, help="seconds of each latency run (5; quick 1)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.messages = args.messages or (1000 if args.quick else 20000)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    logging.getLogger("fastapi_dapr").setLevel(logging.ERROR)
    env = environment()
    print(f"redis_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, redis_server(Path(tmp)) as port:
        results = asyncio.run(run(args, port, Path(tmp)))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    raw, fs, ours = (median(name, "per_s") for name in ("raw", "faststream", "fastapi_dapr"))
    rate = f"at {args.rate:.0f}/s"
    rows = [
        Row("raw redis-py loop, end to end", raw, "msg/s"),
        Row("FastStream, end to end", fs, "msg/s"),
        Row("fastapi-dapr vs FastStream", ours, "msg/s", fs, "FastStream", FASTSTREAM_TARGET),
        Row("fastapi-dapr vs raw loop", ours, "msg/s", raw, "raw loop", RAW_TARGET),
    ]
    for name, label in (("raw", "raw loop"), ("faststream", "FastStream"), ("fastapi_dapr", "fastapi-dapr")):
        rows.append(Row(f"{label} p50, {rate}", median(name, "p50_ms"), "ms"))
        rows.append(Row(f"{label} p99, {rate}", median(name, "p99_ms"), "ms"))
    print(markdown(rows, args.quick))
    paired = {name: round_ratios(results, name) for name in ("faststream", "raw")}
    for name, label in (("faststream", "FastStream"), ("raw", "the raw loop")):
        ratios = ", ".join(f"{ratio:.2f}" for ratio in paired[name])
        print(f"round by round, fastapi-dapr / {label}: {ratios}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "redis_pubsub",
                "mode": "quick" if args.quick else "normal",
                "environment": env,
                "rows": [row_json(row, args.quick) for row in rows],
                "round_ratios": paired,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
