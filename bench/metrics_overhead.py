#!/usr/bin/env python
"""The cost of `Dapr(app, metrics=True)` on the in-process hot path.

Each run is a fresh process: N sequential `await dapr.publish(...)` to a handler that
only counts, timed in CPU time (this process's, so that other load on a shared machine
counts less) until the handler has seen all N. `--baseline DIR` also runs another
checkout's `fastapi_dapr` (put first on `sys.path`), e.g. main's, to show that metrics
off cost nothing. Rounds alternate the variants; the medians of the paired ratios are
printed.

    python bench/metrics_overhead.py [--quick] [--rounds 9] [--messages 20000] [--baseline /tmp/main]

Writes bench/results/metrics_overhead.json (`--output`), which bench/run.py reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTest


def child(messages: int, metrics: bool) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="bench", **({"metrics": True} if metrics else {}))
    state = {"count": 0, "target": 0}
    done = asyncio.Event()

    @dapr.subscribe("pubsub", "bench")
    async def on_bench(event: CloudEvent[Any]) -> None:
        state["count"] += 1
        if state["count"] == state["target"]:
            done.set()

    async def run(n: int) -> float:
        state["count"], state["target"] = 0, n
        done.clear()
        started = time.process_time()
        for i in range(n):
            await dapr.publish("pubsub", "bench", {"n": i})
        await done.wait()
        return n / (time.process_time() - started)

    async def main() -> None:
        async with DaprTest(app):
            await run(2000)  # warm-up
            print(f"{await run(messages):.1f}")

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3,000 messages, for CI")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--messages", type=int)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "metrics_overhead.json"
    )
    parser.add_argument("--baseline", help="a folder holding another fastapi_dapr package")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rounds is None:
        arguments.rounds = 2 if arguments.quick else 9
    if arguments.messages is None:
        arguments.messages = 3000 if arguments.quick else 20000
    if arguments.child:
        child(arguments.messages, arguments.child == "on")
        return 0
    variants: dict[str, tuple[str, dict[str, str]]] = {"off": ("off", {}), "on": ("on", {})}
    if arguments.baseline:
        path = os.pathsep.join(filter(None, [arguments.baseline, os.environ.get("PYTHONPATH")]))
        variants["baseline"] = ("off", {"PYTHONPATH": path})
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(arguments.rounds):
        for name, (mode, env) in variants.items():
            argv = [sys.executable, __file__, "--child", mode, "--messages", str(arguments.messages)]
            out = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=True)
            rates[name].append(float(out.stdout.strip()))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f} msg/s per CPU second")
    on_off = statistics.median(b / a for a, b in zip(rates["off"], rates["on"], strict=True))
    print(f"metrics on / off (paired median): {on_off:.3f}")
    rows = [
        {
            "metric": "in-process publish until delivered, metrics on (paired median)",
            "value": statistics.median(rates["on"]),
            "unit": "msg/s per CPU second",
            "baseline": statistics.median(rates["off"]),
            "baseline_metric": "metrics off",
            "ratio": on_off,
            "target": None,
        }
    ]
    if "baseline" in rates:
        off_base = statistics.median(b / a for a, b in zip(rates["baseline"], rates["off"], strict=True))
        print(f"metrics off / baseline (paired median): {off_base:.3f}")
        rows.append(
            {
                "metric": "metrics off (paired median)",
                "value": statistics.median(rates["off"]),
                "unit": "msg/s per CPU second",
                "baseline": statistics.median(rates["baseline"]),
                "baseline_metric": f"the package of {arguments.baseline}",
                "ratio": off_base,
                "target": None,
            }
        )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "metrics_overhead",
        "mode": "quick" if arguments.quick else "normal",
        "rounds": arguments.rounds,
        "messages": arguments.messages,
        "rates": rates,
        "rows": rows,
    }
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
