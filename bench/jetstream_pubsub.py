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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.pubsub import Handled, fastapi_dapr_round, measure, parse_args, payload, run, write_report
from publish_deliver import environment, free_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "jetstream_pubsub.json"


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
    component = f"  type: pubsub.jetstream\n  version: v1\n  metadata:\n  - name: natsURL\n    value: {url}\n"
    return await fastapi_dapr_round(folder, component, topic, total, rate, seconds)


def main() -> int:
    args = parse_args(__doc__, RESULTS)
    env = environment()
    print(f"jetstream_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-jetstream-") as tmp, nats_server(Path(tmp)) as url:
        subjects = {
            "raw": functools.partial(raw_loop, url),
            "faststream": functools.partial(faststream, url),
            "fastapi_dapr": functools.partial(fastapi_dapr, url, folder=Path(tmp)),
        }
        results = asyncio.run(run(args, subjects))
    write_report("jetstream_pubsub", "raw nats-py loop", args, env, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
