#!/usr/bin/env python
"""Publish-to-handler through RabbitMQ: fastapi-dapr's `pubsub.rabbitmq`, FastStream's RabbitMQ
subscriber, and a raw aio-pika loop, on one private rabbitmq-server this script starts.

1. Throughput, end to end: N messages published (100 in flight) to a trivial handler, timed from
   the first publish to the last message handled (and acknowledged). All three publish
   persistent messages to a durable fanout exchange with publisher confirms, and consume a
   durable queue with manual acks and a prefetch of 100 (fastapi-dapr's defaults):
   - raw loop (baseline): aio-pika's `exchange.publish(Message(...))` on a confirming
     channel, `queue.consume(callback)` acking each message;
   - FastStream 0.x: `broker.publish(..., exchange=..., persist=True)`, a `@broker.subscriber`
     on the same kind of exchange and queue;
   - fastapi-dapr: `dapr.publish(...)` to a `@dapr.subscribe` handler, in process (the app's
     lifespan run as a server runs it, without the delivery reports `DaprTest` records),
     through a `pubsub.rabbitmq` component.
   Targets: fastapi-dapr at least 2 x FastStream, and at least 0.5 x the raw loop. A warm-up
   round of each comes first and is not counted; the medians of 5 rounds are compared, and
   the ratios of each round are printed too.
2. Latency at a fixed rate (`--rate`, 500/s): each message carries its publish time; the
   handler records now minus that. p50 and p99 of each.

Prints a markdown table and writes bench/results/rabbitmq_pubsub.json.

    python bench/rabbitmq_pubsub.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
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
RESULTS = BENCH / "results" / "rabbitmq_pubsub.json"
FASTSTREAM_TARGET = 2.0
RAW_TARGET = 0.5
PREFETCH = 100
IN_FLIGHT = 100  # publishes awaiting their confirm at once: a confirm waits for RabbitMQ's fsync


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


def _server_script() -> str:
    wrapper = shutil.which("rabbitmq-server")
    if wrapper is None:
        raise RuntimeError("rabbitmq-server is not installed: apt-get install -y rabbitmq-server")
    real = os.path.realpath(wrapper)  # Debian's wrapper runs it as the rabbitmq user: run it itself
    if os.path.basename(real) == "rabbitmq-script-wrapper":
        real = os.path.join(os.path.dirname(real), "rabbitmq-server")
    return real


def _until(process: subprocess.Popen[bytes], text: bytes) -> None:
    """Read its output until `text`, then go on reading it in a thread (a full pipe blocks it)."""
    assert process.stdout is not None
    for line in process.stdout:
        if text in line:
            break
    else:
        raise RuntimeError(f"{process.args!r} exited before printing {text!r}")
    threading.Thread(target=lambda: process.stdout and process.stdout.read(), daemon=True).start()


@contextlib.contextmanager
def rabbitmq_server(folder: Path) -> Iterator[int]:
    """A node of its own: its ports, its epmd, its folders; stopped by its PID."""
    port, epmd_port = free_port(), free_port()
    (folder / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\ndisk_free_limit.absolute = 1MB\n"
        "log.console = true\nlog.console.level = warning\n"
    )
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "env.conf").write_text("")
    (folder / "home").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder / "home"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "env.conf"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(folder / "data"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_NODENAME": f"bench{secrets.token_hex(4)}@localhost",
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_ALLOW_INPUT": "1",  # the script execs the VM: its PID is the broker's
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-noinput -start_epmd false",
    }
    epmd = subprocess.Popen(
        ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1", "-d"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        _until(epmd, b"epmd running")
        server = subprocess.Popen(
            [_server_script()], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        _until(server, b"completed with 0 plugins")
        yield port
    finally:
        for process in (server, epmd):
            if process is not None:
                os.kill(process.pid, signal.SIGTERM)
                process.wait()


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "at": time.time()}


# -- subjects ----------------------------------------------------------------------------------


async def raw_loop(url: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(url)
    consuming = await aio_pika.connect(url)
    name = f"raw-{time.time_ns()}"  # a fresh exchange and queue each round
    publishing = await connection.channel(publisher_confirms=True)
    exchange = await publishing.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
    channel = await consuming.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(name, routing_key="")
    handled = Handled()

    async def on_message(message: Any) -> None:
        handled.saw(json.loads(message.body)["at"])
        await message.ack()

    await queue.consume(on_message)

    async def one(n: int) -> None:
        body = json.dumps(payload(n)).encode()
        await exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "")

    figures = await measure(handled, one, total, rate, seconds)
    await consuming.close()
    await connection.close()
    return figures


async def faststream(url: str, total: int, rate: float, seconds: float) -> dict[str, Any]:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    broker = RabbitBroker(url, logger=None)
    handled = Handled()
    name = f"fs-{time.time_ns()}"
    exchange = RabbitExchange(name, type=ExchangeType.FANOUT, durable=True)

    @broker.subscriber(RabbitQueue(name, durable=True), exchange)
    async def on_message(body: dict[str, Any]) -> None:
        handled.saw(body["at"])

    await broker.start()

    async def one(n: int) -> None:
        await broker.publish(payload(n), exchange=exchange, persist=True)

    figures = await measure(handled, one, total, rate, seconds)
    await broker.stop()
    return figures


async def fastapi_dapr(url: str, total: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.rabbitmq\n  version: v1\n  metadata:\n"
        f"  - name: connectionString\n    value: {url}\n"
        "  - name: deletedWhenUnused\n    value: 'false'\n"
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
    print(f"rabbitmq_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp, rabbitmq_server(Path(tmp)) as port:
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        results = asyncio.run(run(args, url, Path(tmp)))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    raw, fs, ours = (median(name, "per_s") for name in ("raw", "faststream", "fastapi_dapr"))
    rate = f"at {args.rate:.0f}/s"
    rows = [
        Row("raw aio-pika loop, end to end", raw, "msg/s"),
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
                "benchmark": "rabbitmq_pubsub",
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
