"""The harness of the broker benchmarks (`redis_pubsub`, `rabbitmq_pubsub`, `jetstream_pubsub`,
`kafka_pubsub`): three subjects (a raw client loop, FastStream, fastapi-dapr) measured round by
round on one broker, then one markdown table and one JSON file of the same shape for each.

A subject is `(total, rate, seconds) -> figures`: `total` messages published and handled
(the throughput), then `rate * seconds` at a fixed rate (the latencies). Each script binds its
broker's address into its subjects and calls `main`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from publish_deliver import Row, markdown, row_json

from fastapi_dapr import CloudEvent, Dapr

__all__ = [
    "Handled", "Subject", "at_rate", "fastapi_dapr_round", "measure", "parse_args", "payload",
    "percentiles", "run", "write_report",
]  # fmt: skip

IN_FLIGHT = 100  # publishes awaiting the broker's acknowledgement (RabbitMQ: its fsync) at once
TARGETS = (2.0, 0.5)  # fastapi-dapr's throughput over FastStream's, and over the raw loop's
SUBJECTS = ("raw", "faststream", "fastapi_dapr")

Subject = Callable[[int, float, float], Awaitable[dict[str, Any]]]
Results = dict[str, list[dict[str, Any]]]


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


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "at": time.time()}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def publish_all(publish: Callable[[int], Awaitable[Any]], total: int, in_flight: int) -> None:
    for start in range(0, total, in_flight):
        await asyncio.gather(*(publish(n) for n in range(start, min(start + in_flight, total))))


async def at_rate(publish: Callable[[int], Awaitable[Any]], rate: float, seconds: float) -> int:
    """`rate * seconds` publishes, each started at its time (not waiting for the one before)."""
    total = int(rate * seconds)
    begin = time.perf_counter()
    tasks = []
    for n in range(total):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the fixed rate's pace
        tasks.append(asyncio.ensure_future(publish(n)))
    await asyncio.gather(*tasks)
    return total


async def measure(
    handled: Handled,
    one: Callable[[int], Awaitable[Any]],
    total: int,
    rate: float,
    seconds: float,
    *,
    first: bool = False,
    in_flight: int = IN_FLIGHT,
) -> dict[str, Any]:
    """Throughput of `total` publishes (`in_flight` at once) until handled, then latency at a
    fixed rate. With `first`, one message first, handled before the clock starts (a consumer
    that joins a group late)."""
    if first:
        handled.expect(1)
        await one(-1)
        await handled.wait()
    handled.expect(total)
    started = time.perf_counter()
    await publish_all(one, total, in_flight)
    await handled.wait()
    throughput = total / (time.perf_counter() - started)
    handled.expect(int(rate * seconds))
    await at_rate(one, rate, seconds)
    await handled.wait()
    return {"per_s": throughput, **percentiles(handled.latencies)}


async def fastapi_dapr_round(
    folder: Path,
    component: str,
    topic: str,
    total: int,
    rate: float,
    seconds: float,
    *,
    first: bool = False,
    in_flight: int = IN_FLIGHT,
) -> dict[str, Any]:
    """The fastapi-dapr subject: `dapr.publish(...)` to a `@dapr.subscribe` handler of `topic`,
    in process, through the component `pubsub` of `component` (its `type:` line and metadata)."""
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n" + component
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

        return await measure(handled, one, total, rate, seconds, first=first, in_flight=in_flight)


async def run(args: argparse.Namespace, subjects: dict[str, Subject]) -> Results:
    """A warm-up round of each subject, not counted (the first round runs slower for all three),
    then `args.rounds` rounds of the three."""
    results: Results = {name: [] for name in SUBJECTS}
    warm = (max(500, args.messages // 10), args.rate, 0.2)
    for name in SUBJECTS:
        await subjects[name](*warm)
    for _ in range(args.rounds):
        for name in SUBJECTS:
            results[name].append(await subjects[name](args.messages, args.rate, args.seconds))
    return results


def round_ratios(results: Results, baseline: str) -> list[float]:
    """fastapi-dapr's throughput over the baseline's, round by round (same machine state)."""
    return [
        ours["per_s"] / theirs["per_s"]
        for ours, theirs in zip(results["fastapi_dapr"], results[baseline], strict=True)
    ]


def parse_args(doc: str | None, output: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and short, for CI; targets not judged")
    parser.add_argument("--messages", type=int, help="messages per throughput run (20000; quick 1000)")
    parser.add_argument("--rounds", type=int, help="rounds, the median is kept (5; quick 1)")
    parser.add_argument("--rate", type=float, default=500.0, help="messages/s of the latency runs (500)")
    parser.add_argument("--seconds", type=float, help="seconds of each latency run (5; quick 1)")
    parser.add_argument("--output", type=Path, default=output)
    args = parser.parse_args()
    args.messages = args.messages or (1000 if args.quick else 20000)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    logging.getLogger("fastapi_dapr").setLevel(logging.ERROR)
    return args


def write_report(
    benchmark: str,
    raw_label: str,
    args: argparse.Namespace,
    env: dict[str, Any],
    results: Results,
    targets: tuple[float, float] = TARGETS,
) -> None:
    """Prints the table and the round-by-round ratios, and writes `args.output`'s JSON;
    `targets` are fastapi-dapr's over FastStream and over the raw loop."""

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    raw, fs, ours = (median(name, "per_s") for name in SUBJECTS)
    rate = f"at {args.rate:.0f}/s"
    rows = [
        Row(f"{raw_label}, end to end", raw, "msg/s"),
        Row("FastStream, end to end", fs, "msg/s"),
        Row("fastapi-dapr vs FastStream", ours, "msg/s", fs, "FastStream", targets[0]),
        Row("fastapi-dapr vs raw loop", ours, "msg/s", raw, "raw loop", targets[1]),
    ]
    for name, label in zip(SUBJECTS, ("raw loop", "FastStream", "fastapi-dapr"), strict=True):
        rows.append(Row(f"{label} p50, {rate}", median(name, "p50_ms"), "ms"))
        rows.append(Row(f"{label} p99, {rate}", median(name, "p99_ms"), "ms"))
    print(markdown(rows, args.quick))
    paired = {name: round_ratios(results, name) for name in ("faststream", "raw")}
    for name, label in (("faststream", "FastStream"), ("raw", "the raw loop")):
        ratios = ", ".join(f"{ratio:.2f}" for ratio in paired[name])
        print(f"round by round, fastapi-dapr / {label}: {ratios}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": benchmark,
        "mode": "quick" if args.quick else "normal",
        "environment": env,
        "rows": [row_json(row, args.quick) for row in rows],
        "round_ratios": paired,
        "runs": results,
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
