#!/usr/bin/env python
"""Publish-to-handler through NATS JetStream: fastapi-dapr's `pubsub.jetstream`, FastStream's
JetStream subscriber, and a raw nats-py loop, on one private `nats-server -js` this script starts.

1. Throughput, end to end: N messages published (100 in flight) to a trivial handler, timed from
   the first publish to the last message handled (and acknowledged). All three publish with
   JetStream's acknowledgement (the stream stored it) to a stream with file storage made for
   the round, and consume a durable push consumer with explicit acks, one message at a time
   (daprd's `concurrencyMode: single`, FastStream's one worker, the raw loop's callback):
   - raw loop (baseline): nats-py's `js.publish(...)`, a queue subscription to the consumer's
     deliver subject acking each message (`+ACK`);
   - FastStream 0.x: `broker.publish(..., stream=...)`, a `@broker.subscriber(..., durable=...)`;
   - fastapi-dapr: `dapr.publish(...)` to a `@dapr.subscribe` handler, in process (the app's
     lifespan run as a server runs it, without the delivery reports `DaprTest` records),
     through a `pubsub.jetstream` component with daprd's defaults.
   Targets: fastapi-dapr at least 2 x FastStream, and at least 0.5 x the raw loop. A warm-up
   round of each comes first and is not counted; the medians of 5 rounds are compared, and
   the ratios of each round are printed too.
2. Latency at a fixed rate (`--rate`, 500/s): each message carries its publish time; the
   handler records now minus that. p50 and p99 of each.

Prints a markdown table and writes bench/results/jetstream_pubsub.json.

    python bench/jetstream_pubsub.py [--quick]
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
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from publish_deliver import Row, environment, free_port, markdown, row_json
from redis_pubsub import Handled, at_rate, percentiles

from fastapi_dapr import CloudEvent, Dapr

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "jetstream_pubsub.json"
FASTSTREAM_TARGET = 2.0
RAW_TARGET = 0.5
IN_FLIGHT = 100  # publishes awaiting the stream's acknowledgement at once


async def publish_all(publish: Callable[[int], Awaitable[Any]], total: int) -> None:
    for start in range(0, total, IN_FLIGHT):
        await asyncio.gather(*(publish(n) for n in range(start, min(start + IN_FLIGHT, total))))


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


@contextlib.contextmanager
def nats_server(folder: Path) -> Iterator[str]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("nats-server is not installed: apt-get install -y nats-server")
    port = free_port()
    argv = [binary, "-js", "-sd", str(folder / "store"), "-a", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    for line in process.stdout:
        if b"Server is ready" in line:
            break
    else:
        raise RuntimeError("nats-server did not start")
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait()


async def fresh_stream(url: str, prefix: str) -> str:
    """A stream of its own for a round, taking the subject of the same name (a user's stream)."""
    import nats
    from nats.js.api import StreamConfig

    name = f"{prefix}-{time.time_ns()}"
    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(StreamConfig(name=name, subjects=[name]))
    finally:
        await client.close()
    return name


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "at": time.time()}


# -- subjects ----------------------------------------------------------------------------------


async def raw_loop(url: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    import nats
    from nats.js.api import ConsumerConfig

    subject = await fresh_stream(url, "raw")
    producer = await nats.connect(url)
    consumer = await nats.connect(url)
    js = producer.jetstream()
    inbox = consumer.new_inbox()
    config = ConsumerConfig(
        durable_name="bench", deliver_subject=inbox, deliver_group="bench", ack_policy="explicit"
    )
    await js.add_consumer(subject, config)
    handled = Handled()

    async def on_message(msg: Any) -> None:
        handled.saw(json.loads(msg.data)["at"])
        await consumer.publish(msg.reply, b"+ACK")

    await consumer.subscribe(inbox, queue="bench", cb=on_message)

    async def one(n: int) -> None:
        await js.publish(subject, json.dumps(payload(n)).encode())

    figures = await measure(handled, one, total, rate, seconds)
    await consumer.close()
    await producer.close()
    return figures


async def faststream(url: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    from faststream.nats import JStream, NatsBroker

    subject = await fresh_stream(url, "fs")
    broker = NatsBroker(url, logger=None)
    handled = Handled()
    stream = JStream(subject, declare=False)

    async def on_message(body: dict[str, Any]) -> None:
        handled.saw(body["at"])

    with warnings.catch_warnings():  # its advice to pull instead: the three push here, as daprd
        warnings.simplefilter("ignore", RuntimeWarning)
        broker.subscriber(subject, queue="bench", stream=stream, durable="bench")(on_message)

    await broker.start()

    async def one(n: int) -> None:
        await broker.publish(payload(n), subject, stream=subject)

    figures = await measure(handled, one, total, rate, seconds)
    await broker.stop()
    return figures


async def fastapi_dapr(url: str, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    topic = await fresh_stream(url, "fd")
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.jetstream\n  version: v1\n  metadata:\n"
        f"  - name: natsURL\n    value: {url}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="bench", resources_path=resources)
    handled = Handled()

    @dapr.subscribe("pubsub", topic)
    async def on_message(event: CloudEvent[dict[str, Any]]) -> None:
        handled.saw(event.data["at"])

    async with app.router.lifespan_context(app):  # the app as a server runs it: no test observers

        async def one(n: int) -> None:
            await dapr.publish("pubsub", topic, payload(n))

        return await measure(handled, one, total, rate, seconds)


async def run(args: argparse.Namespace, url: str, folder: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"raw": [], "faststream": [], "fastapi_dapr": []}
    # A warm-up round of each, not counted.
    warm = (max(500, args.messages // 10), args.rate, 0.2)
    await raw_loop(url, *warm)
    await faststream(url, *warm)
    await fastapi_dapr(url, *warm, folder)
    for _ in range(args.rounds):
        results["raw"].append(await raw_loop(url, args.messages, args.rate, args.seconds))
        results["faststream"].append(await faststream(url, args.messages, args.rate, args.seconds))
        results["fastapi_dapr"].append(
            await fastapi_dapr(url, args.messages, args.rate, args.seconds, folder)
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
    print(f"jetstream_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-jetstream-") as tmp, nats_server(Path(tmp)) as url:
        results = asyncio.run(run(args, url, Path(tmp)))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    raw, fs, ours = (median(name, "per_s") for name in ("raw", "faststream", "fastapi_dapr"))
    rate = f"at {args.rate:.0f}/s"
    rows = [
        Row("raw nats-py loop, end to end", raw, "msg/s"),
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
                "benchmark": "jetstream_pubsub",
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
