#!/usr/bin/env python
"""The official SDK publishing over Dapr's gRPC API until delivered, against its limit.

Two server processes on loopback, each stopped by its PID:

- the limit, bench/apps/bare_grpc.py: a `grpc.aio` servicer whose `PublishEvent` answers
  `Empty` at once, nothing else (and a 204 to the SDK's HTTP health probe);
- the subject, bench/apps/grpc_publish_app.py under uvicorn (uvloop and httptools when
  installed, one worker): `Dapr(app, grpc_port=0)` with one subscription that counts, and
  `GET /delivered?reach=K` answering once K messages have been delivered.

This process is the client, on uvloop when installed: the official SDK's `dapr.aio`
`DaprClient`, one channel for each server, publishes `{"n":1}` to `pubsub`/`bench`. Three
subjects, in an order that turns round by round:

- **bare**: the SDK against the bare servicer;
- **gRPC**: the same SDK against the embedded sidecar, until the handler has counted every
  message (`GET /delivered`, asked before the first publish, answers after the last delivery);
- **HTTP**: `POST /v1.0/publish/pubsub/bench` of the same app with aiohttp (what the SDK's own
  HTTP client uses; one keep-alive session, as the SDK's opens one for each call), until delivered.

Each gets a throughput run (N messages, `--concurrency` publishes in flight) and a latency
run (publishes one at a time, p50 and p99 of each call's time). The synchronous
`DaprClient` (and http.client over HTTP) is measured for latency too, one call at a time.
Targets: gRPC throughput >= 0.6 x bare, added p50 (gRPC p50 - bare p50, median over rounds)
<= 0.3 ms.

Prints a markdown table and writes bench/results/grpc_publish.json. `--quick` runs small
and short and does not judge the targets.

    python bench/grpc_publish.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from invoke_proxy import cpu_seconds, run_loop, wait_ready
from publish_deliver import Row, environment, free_port, markdown, row_json

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "grpc_publish.json"
THROUGHPUT_TARGET = 0.6
ADDED_P50_TARGET_MS = 0.3
APP = "apps.grpc_publish_app:app"  # imported by uvicorn with --app-dir bench/
PUBSUB, TOPIC = "pubsub", "bench"
BODY = '{"n":1}'
PUBLISH_PATH = f"/v1.0/publish/{PUBSUB}/{TOPIC}"
SUBJECTS = ("bare", "grpc", "http")
LABELS = {
    "bare": "the bare grpc.aio servicer (SDK, dapr.aio)",
    "grpc": "the embedded sidecar over gRPC (SDK, dapr.aio), until delivered",
    "http": "the embedded sidecar over HTTP (aiohttp), until delivered",
}

os.environ.setdefault("DAPR_HEALTH_TIMEOUT", "20")
os.environ["DAPR_RUNTIME_HOST"] = "127.0.0.1"
os.environ.pop("DAPR_API_TOKEN", None)


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    messages: int  # N of each throughput run
    concurrency: int  # publishes in flight during a throughput run
    latency_messages: int  # calls of each latency run, one at a time
    rounds: int


# -- the servers -------------------------------------------------------------------------------


def _ready_line(
    log: Path, pattern: str, server: subprocess.Popen[bytes], timeout: float = 30.0
) -> re.Match[str]:
    """The line of the server's output matching `pattern`, once printed (start-up only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if server.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{server.args} did not start; its output:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, its output in `log`; SIGTERM by its PID at the end, SIGKILL if it lingers."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH.parent, env={**os.environ, **(env or {})}
        )
        try:
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@dataclasses.dataclass(frozen=True)
class Server:
    pid: int
    grpc_port: int
    http_port: int


@contextlib.contextmanager
def bare_server(workdir: Path, env: dict[str, str]) -> Iterator[Server]:
    log = workdir / "bare.log"
    with process([sys.executable, str(BENCH / "apps" / "bare_grpc.py")], log, env) as server:
        found = _ready_line(log, r"gRPC on (\d+), HTTP on (\d+)", server)
        yield Server(server.pid, int(found.group(1)), int(found.group(2)))


@contextlib.contextmanager
def embedded_server(workdir: Path, env: dict[str, str], target: str) -> Iterator[Server]:
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", target, "--app-dir", str(BENCH),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log = workdir / "embedded.log"
    with process(command, log, {**env, "GRPC_PORT": str(grpc_port)}) as server:
        found = _ready_line(log, r"gRPC API on 127\.0\.0\.1:(\d+)", server)
        wait_ready(port, "/delivered", server)
        yield Server(server.pid, int(found.group(1)), port)


# -- the clients -------------------------------------------------------------------------------


def sdk_client(server: Server, *, aio: bool) -> Any:
    """The official SDK's DaprClient for `server` (its health probe goes to `server.http_port`)."""
    from dapr.conf import settings

    settings.DAPR_HTTP_PORT = server.http_port  # read by the health probe of the constructor
    if aio:
        from dapr.aio.clients import DaprClient as AioClient

        return AioClient(address=f"127.0.0.1:{server.grpc_port}")
    from dapr.clients import DaprClient

    return DaprClient(address=f"127.0.0.1:{server.grpc_port}")


class Subjects:
    """The three subjects' publish calls, and the embedded app's count of deliveries."""

    def __init__(self, bare: Server, embedded: Server, concurrency: int) -> None:
        import aiohttp

        self.servers = {"bare": bare, "grpc": embedded, "http": embedded}
        self.clients = {"bare": sdk_client(bare, aio=True), "grpc": sdk_client(embedded, aio=True)}
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        self.watcher = aiohttp.ClientSession()  # the GET /delivered, apart from the publishers
        self.publish_url = f"http://127.0.0.1:{embedded.http_port}{PUBLISH_PATH}"
        self.delivered_url = f"http://127.0.0.1:{embedded.http_port}/delivered"
        self.published = 0  # accepted by the embedded app, so delivered in the end

    def publisher(self, name: str) -> Callable[[], Awaitable[None]]:
        if name == "http":
            post, url = self.session.post, self.publish_url
            headers = {"content-type": "application/json"}

            async def over_http() -> None:
                async with post(url, data=BODY, headers=headers) as answer:
                    if answer.status != 204:
                        raise RuntimeError(f"HTTP publish answered {answer.status}: {await answer.text()}")
                self.published += 1

            return over_http
        publish_event, counts = self.clients[name].publish_event, name == "grpc"

        async def over_grpc() -> None:
            await publish_event(PUBSUB, TOPIC, BODY, data_content_type="application/json")
            if counts:
                self.published += 1

        return over_grpc

    async def delivered(self, reach: int) -> int:
        """The count of deliveries once it is at least `reach` (the app awaits it)."""
        async with self.watcher.get(self.delivered_url, params={"reach": str(reach)}) as answer:
            body = await answer.json()
            if answer.status != 200:
                raise RuntimeError(f"GET /delivered answered {answer.status}: {body}")
            count: int = body["delivered"]
            return count

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.session.close()
        await self.watcher.close()


async def throughput(subjects: Subjects, name: str, n: int, concurrency: int) -> dict[str, float]:
    """N publishes, `concurrency` in flight; for the embedded app, until all N are delivered."""
    publish = subjects.publisher(name)
    server = subjects.servers[name]
    waiter: asyncio.Task[int] | None = None
    if name != "bare":
        await subjects.delivered(subjects.published)  # what earlier runs published is delivered
        waiter = asyncio.create_task(subjects.delivered(subjects.published + n))
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await publish()

    cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    published = time.perf_counter()
    if waiter is not None:
        await waiter
    ended = time.perf_counter()
    return {
        "messages": n,
        "per_s": n / (ended - started),
        "publish_only_per_s": n / (published - started),
        "drain_after_publish_s": ended - published,
        "server_cpu_ms_per_message": (cpu_seconds(server.pid) - cpu_before) * 1000 / n,
        "client_cpu_ms_per_message": (time.process_time() - client_before) * 1000 / n,
    }


def _percentiles(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {
        "calls": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": statistics.fmean(ordered),
    }


async def latency(subjects: Subjects, name: str, n: int) -> dict[str, float]:
    """N publishes one at a time; each call timed from its start to its answer."""
    publish = subjects.publisher(name)
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await publish()
        times.append((time.perf_counter() - began) * 1000)
    return _percentiles(times)


def sync_latency(server: Server, name: str, n: int) -> dict[str, float]:
    """The same with a synchronous client: the SDK's `DaprClient`, or http.client (keep-alive)."""
    times = []
    if name == "http":
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port)
        headers = {"content-type": "application/json"}
        try:
            for _ in range(n):
                began = time.perf_counter()
                conn.request("POST", PUBLISH_PATH, BODY, headers)
                answer = conn.getresponse()
                answer.read()
                times.append((time.perf_counter() - began) * 1000)
                if answer.status != 204:
                    raise RuntimeError(f"HTTP publish answered {answer.status}")
        finally:
            conn.close()
        return _percentiles(times)
    client = sdk_client(server, aio=False)
    try:
        for _ in range(n):
            began = time.perf_counter()
            client.publish_event(PUBSUB, TOPIC, BODY, data_content_type="application/json")
            times.append((time.perf_counter() - began) * 1000)
    finally:
        client.close()
    return _percentiles(times)


# -- the run -----------------------------------------------------------------------------------


async def measure(settings: Settings, bare: Server, embedded: Server) -> dict[str, Any]:
    subjects = Subjects(bare, embedded, settings.concurrency)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SUBJECTS}
    latencies: dict[str, list[dict[str, float]]] = {name: [] for name in SUBJECTS}
    sync: dict[str, list[dict[str, float]]] = {name: [] for name in SUBJECTS}
    try:
        for name in SUBJECTS:  # warm-up: connections, caches, the first delivery
            await throughput(subjects, name, max(200, settings.messages // 10), settings.concurrency)
            await latency(subjects, name, max(50, settings.latency_messages // 10))
        for round_number in range(settings.rounds):
            turn = round_number % len(SUBJECTS)
            order = [*SUBJECTS[turn:], *SUBJECTS[:turn]]
            for name in order:
                runs[name].append(await throughput(subjects, name, settings.messages, settings.concurrency))
            for name in order:
                latencies[name].append(await latency(subjects, name, settings.latency_messages))
            for name in order:
                server = subjects.servers[name]
                sync[name].append(
                    await asyncio.to_thread(sync_latency, server, name, settings.latency_messages)
                )
                if name != "bare":
                    subjects.published += settings.latency_messages
        await subjects.delivered(subjects.published)
    finally:
        await subjects.close()
    return {"throughput": runs, "latency": latencies, "sync_latency": sync}


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    runs, latencies, sync = measured["throughput"], measured["latency"], measured["sync_latency"]

    def median(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(value[key] for value in values)

    figures: dict[str, Any] = {}
    for name in SUBJECTS:
        figures[f"{name}_per_s"] = median(runs[name], "per_s")
        figures[f"{name}_publish_only_per_s"] = median(runs[name], "publish_only_per_s")
        figures[f"{name}_server_cpu_ms_per_message"] = median(runs[name], "server_cpu_ms_per_message")
        figures[f"{name}_client_cpu_ms_per_message"] = median(runs[name], "client_cpu_ms_per_message")
        for kind, found in (("", latencies), ("sync_", sync)):
            figures[f"{name}_{kind}p50_ms"] = median(found[name], "p50_ms")
            figures[f"{name}_{kind}p99_ms"] = median(found[name], "p99_ms")

    def paired(found: dict[str, list[dict[str, float]]], name: str, key: str, ratio: bool) -> list[float]:
        pairs = zip(found[name], found["bare"], strict=True)
        return [run[key] / bare[key] if ratio else run[key] - bare[key] for run, bare in pairs]

    figures["round_ratios"] = {name: paired(runs, name, "per_s", True) for name in ("grpc", "http")}
    for name in ("grpc", "http"):
        figures[f"{name}_ratio"] = statistics.median(figures["round_ratios"][name])
        figures[f"{name}_added_p50_ms"] = statistics.median(paired(latencies, name, "p50_ms", False))
        figures[f"{name}_sync_added_p50_ms"] = statistics.median(paired(sync, name, "p50_ms", False))
    return figures


def build_rows(settings: Settings, figures: dict[str, Any]) -> list[Row]:
    bare = figures["bare_per_s"]
    flight = f"{settings.concurrency} in flight"
    rows = [
        Row(f"bare grpc.aio servicer, SDK dapr.aio, {flight}", bare, "msg/s"),
        Row(
            f"SDK over gRPC until delivered, {flight}",
            figures["grpc_per_s"],
            "msg/s",
            bare,
            "bare servicer",
            THROUGHPUT_TARGET,
        ),
        Row(
            f"HTTP publish (aiohttp) until delivered, {flight}",
            figures["http_per_s"],
            "msg/s",
            bare,
            "bare servicer",
        ),
        Row(
            "SDK over gRPC vs HTTP publish, until delivered",
            figures["grpc_per_s"],
            "msg/s",
            figures["http_per_s"],
            "HTTP publish",
        ),
        Row("SDK over gRPC, publish calls alone", figures["grpc_publish_only_per_s"], "msg/s"),
    ]
    for kind, client in (("", "dapr.aio / aiohttp"), ("sync_", "sync DaprClient / http.client")):
        for name, label in (("bare", "bare servicer"), ("grpc", "gRPC"), ("http", "HTTP")):
            rows.append(Row(f"p50, one at a time, {label} ({client})", figures[f"{name}_{kind}p50_ms"], "ms"))
            rows.append(Row(f"p99, one at a time, {label} ({client})", figures[f"{name}_{kind}p99_ms"], "ms"))
    rows += [
        Row("added p50 over HTTP (aiohttp) vs the bare servicer", figures["http_added_p50_ms"], "ms"),
        Row("added p50 over gRPC, sync DaprClient", figures["grpc_sync_added_p50_ms"], "ms"),
        Row("added p50 over HTTP, http.client", figures["http_sync_added_p50_ms"], "ms"),
    ]
    for name, label in (("bare", "bare servicer"), ("grpc", "embedded, gRPC"), ("http", "embedded, HTTP")):
        rows.append(
            Row(f"server CPU per message, {label}", figures[f"{name}_server_cpu_ms_per_message"], "ms")
        )
        rows.append(
            Row(f"client CPU per message, {label}", figures[f"{name}_client_cpu_ms_per_message"], "ms")
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short, for CI; targets not judged")
    parser.add_argument("--messages", type=int, help="N of each throughput run (20000; quick 2000)")
    parser.add_argument("--concurrency", type=int, help="publishes in flight (32)")
    parser.add_argument("--latency-messages", type=int, help="calls of each latency run (2000; quick 200)")
    parser.add_argument("--rounds", type=int, help="rounds, medians kept (5; quick 1)")
    parser.add_argument(
        "--profile", type=Path, help="a folder: both servers run under cProfile, stats written there"
    )
    parser.add_argument("--app", default=APP, help=f"the embedded app, module:attribute ({APP}), a variant")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    args = parser.parse_args()

    def pick(value: Any, normal: Any, short: Any) -> Any:
        return value if value is not None else (short if args.quick else normal)

    settings = Settings(
        quick=args.quick,
        messages=pick(args.messages, 20_000, 2_000),
        concurrency=pick(args.concurrency, 32, 32),
        latency_messages=pick(args.latency_messages, 2_000, 200),
        rounds=pick(args.rounds, 5, 1),
    )
    env = environment()
    print(f"grpc_publish: {'quick' if settings.quick else 'normal'} mode, {env}", file=sys.stderr)
    profiles = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profiles = {
            name: {"BENCH_PROFILE": str(args.profile.resolve() / f"{name}.prof")}
            for name in ("bare", "embedded")
        }
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        workdir = Path(tmp)
        bare_env, app_env = profiles.get("bare", {}), profiles.get("embedded", {})
        with bare_server(workdir, bare_env) as bare, embedded_server(workdir, app_env, args.app) as embedded:
            measured = run_loop(measure(settings, bare, embedded))
        for log in sorted(workdir.glob("*.log")):
            text = log.read_text(errors="replace").strip()
            text = "\n".join(
                line for line in text.splitlines() if "gRPC on" not in line and "gRPC API on" not in line
            )
            if text:
                problems.append(f"{log.name}:\n{text}")
    figures = summarize(measured)
    rows = build_rows(settings, figures)
    print(markdown(rows, settings.quick))
    added = figures["grpc_added_p50_ms"]
    judged = None if settings.quick else added <= ADDED_P50_TARGET_MS
    verdict = "not judged (--quick)" if judged is None else ("pass" if judged else "FAIL")
    print(f"\nAdded p50 over gRPC (dapr.aio): {added:.3f} ms (target ≤ {ADDED_P50_TARGET_MS} ms): {verdict}")
    if problems:
        print("\nProblems seen during the run:")
        for problem in problems:
            print(f"- {problem}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "grpc_publish",
        "mode": "quick" if settings.quick else "normal",
        "settings": dataclasses.asdict(settings),
        "environment": env,
        "rows": [row_json(row, settings.quick) for row in rows],
        "limits": [
            {
                "metric": "added p50 over gRPC (SDK dapr.aio), one at a time",
                "value": added,
                "unit": "ms",
                "target_max": ADDED_P50_TARGET_MS,
                "passed": judged,
            }
        ],
        "round_ratios": {"bare servicer (gRPC)": figures["round_ratios"]["grpc"]},
        "figures": figures,
        "measured": measured,
        "problems": problems,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
