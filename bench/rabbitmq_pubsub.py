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

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
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
RESULTS = BENCH / "results" / "rabbitmq_pubsub.json"
PREFETCH = 100


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
    component = (
        "  type: pubsub.rabbitmq\n  version: v1\n  metadata:\n"
        f"  - name: connectionString\n    value: {url}\n"
        "  - name: deletedWhenUnused\n    value: 'false'\n"
    )
    topic = f"fd-{time.time_ns()}"
    return await fastapi_dapr_round(folder, component, topic, total, rate, seconds)


def main() -> int:
    args = parse_args(__doc__, RESULTS)
    env = environment()
    print(f"rabbitmq_pubsub: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp, rabbitmq_server(Path(tmp)) as port:
        url, folder = f"amqp://guest:guest@127.0.0.1:{port}/", Path(tmp)
        subjects = {
            "raw": functools.partial(raw_loop, url),
            "faststream": functools.partial(faststream, url),
            "fastapi_dapr": functools.partial(fastapi_dapr, url, folder=folder),
        }
        results = asyncio.run(run(args, subjects))
    write_report("rabbitmq_pubsub", "raw aio-pika loop", args, env, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
