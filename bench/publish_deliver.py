#!/usr/bin/env python
"""Publish-and-deliver throughput and queued-message memory of the embedded sidecar.

Three measurements, each against a baseline measured in the same run:

1. HTTP: `wrk` against uvicorn serving bench/apps/pubsub_app.py. Baseline: a
   FastAPI POST endpoint that does nothing. Subject: `POST /v1.0/publish`, and
   the end-to-end rate at which published messages are delivered to the app.
   Target: end-to-end >= 0.8 x plain endpoint.
2. In process: `await dapr.publish(...)` N times, until the handler has seen
   all N. Baseline: the subscription's route called N times through the app's
   ASGI interface. Target: >= 0.7 x direct ASGI. Median of `--rounds` rounds.
3. Memory: 100,000 messages held in the queue (the handler blocks), in a fresh
   subprocess: tracemalloc's peak, and the growth of the resident set (in a
   second subprocess without tracemalloc, whose bookkeeping would inflate it).

Prints a markdown table and writes bench/results/publish_deliver.json.
`--quick` runs everything small and short and does not judge the targets.
The exit code is 0 unless the benchmark itself breaks.

    python bench/publish_deliver.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import http.client
import json
import logging
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from apps.inprocess import PUBSUB, TOPIC, Counter, counting_app, gated_app

from fastapi_dapr.testing import DaprTest

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "publish_deliver.json"
APP_TARGET = "apps.pubsub_app:app"  # imported by uvicorn with --app-dir bench/
PUBLISH_PATH = "/v1.0/publish/pubsub/bench"
PLAIN_PATH = "/plain"
BODY = '{"n":1}'
# What the engine posts to the subscription's route, for the direct ASGI baseline.
EVENT_BODY = json.dumps(
    {
        "specversion": "1.0",
        "id": "x",
        "source": "s",
        "type": "t",
        "datacontenttype": "application/json",
        "data": {"n": 1},
    }
).encode()
E2E_TARGET = 0.8
INPROCESS_TARGET = 0.7
ENGINE_CONCURRENCY = 64  # the engine's default number of deliveries in flight
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    threads: int
    connections: int
    duration: float  # seconds of each measured wrk run
    warmup: float  # seconds of the wrk warm-up before each measured run
    messages: int  # N of the in-process runs
    rounds: int
    queued: int  # messages held in the queue for the memory figure


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_metric: str = ""
    target: float | None = None  # the minimum ratio value / baseline

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target


# -- problems seen while running: log records of the library, odd answers ----------------------


class _Recorder(logging.Handler):
    """Keeps fastapi_dapr's WARNING and above, to report them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


LIBRARY_LOG = _Recorder()
logging.getLogger("fastapi_dapr").addHandler(LIBRARY_LOG)


# -- 1. HTTP, with wrk and uvicorn ---------------------------------------------------------------

WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclasses.dataclass(frozen=True)
class WrkRun:
    requests: int
    non_2xx: int
    seconds: float
    requests_per_s: float
    latency_ms: float
    socket_errors: str

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(text: str) -> WrkRun:
    """The figures of wrk's report (wrk 4.x text output)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if total is None or rate is None:
        raise RuntimeError(f"cannot read wrk's report:\n{text}")
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\b", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:\s*(.+)", text)
    return WrkRun(
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        seconds=float(total.group(2)) * _UNITS[total.group(3)],
        requests_per_s=float(rate.group(1)),
        latency_ms=float(latency.group(1)) * _UNITS[latency.group(2)] * 1000 if latency else float("nan"),
        socket_errors=errors.group(1).strip() if errors else "",
    )


def run_wrk(url: str, script: Path, settings: Settings, seconds: float) -> WrkRun:
    command = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def delivered_so_far(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/stats")
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET /stats answered {response.status}: {body!r}")
    count: int = json.loads(body)["delivered"]
    return count


def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode} before serving")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            delivered_so_far(conn)
            return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    raise RuntimeError(f"uvicorn did not answer on port {port} within {timeout}s")


def wait_delivered(port: int, expected: int, *, poll: float = 0.01, settle: float = 0.5) -> tuple[int, float]:
    """Poll `GET /stats` until `expected` messages are delivered and no more come.

    Returns the final count and when it was first seen (`time.perf_counter()`).
    wrk does not count the requests still open when its time is up, although
    the server may have published them, so the count can exceed `expected`:
    the wait goes on until the count stops moving for `settle` seconds.
    """
    # A connection of its own: uvicorn closes keep-alive connections idle for 5s.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        last = delivered_so_far(conn)
        seen_at = time.perf_counter()
        stall_limit = 30.0  # seconds without progress before giving up
        while True:
            time.sleep(poll)
            count = delivered_so_far(conn)
            now = time.perf_counter()
            if count != last:
                last, seen_at = count, now
            elif count >= expected and now - seen_at >= settle:
                return last, seen_at
            elif now - seen_at >= stall_limit:
                raise RuntimeError(f"delivery stalled at {count} of {expected} messages")
    finally:
        conn.close()


@contextlib.contextmanager
def uvicorn_server(log_path: Path) -> Iterator[int]:
    """uvicorn serving the bench app, one worker, on a free loopback port; stopped on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        APP_TARGET,
        "--app-dir",
        str(BENCH),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH.parent)
        try:
            wait_ready(port, server)
            yield port
        finally:
            server.terminate()  # SIGTERM: uvicorn runs the lifespan shutdown
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def http_bench(settings: Settings, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """Plain endpoint and publish-with-delivery, alternated for `rounds` rounds in one
    uvicorn process; the medians are kept, since one run on a shared machine varies a lot."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    log_path = workdir / "uvicorn.log"
    problems: list[str] = []
    plains: list[WrkRun] = []
    publishes: list[WrkRun] = []
    rounds: list[dict[str, float]] = []
    with uvicorn_server(log_path) as port:
        base = f"http://127.0.0.1:{port}"
        run_wrk(base + PLAIN_PATH, script, settings, settings.warmup)
        warm = run_wrk(base + PUBLISH_PATH, script, settings, settings.warmup)
        delivered_so_far, _ = wait_delivered(port, warm.ok)
        for _ in range(settings.rounds):
            plain = run_wrk(base + PLAIN_PATH, script, settings, settings.duration)
            started = time.perf_counter()
            publish = run_wrk(base + PUBLISH_PATH, script, settings, settings.duration)
            wrk_ended = time.perf_counter()
            final, last_seen = wait_delivered(port, delivered_so_far + publish.ok)
            delivered = final - delivered_so_far
            delivered_so_far = final
            if delivered < publish.ok:
                problems.append(
                    f"HTTP: {publish.ok} publishes answered 2xx but only {delivered} were delivered"
                )
            end_to_end = delivered / (last_seen - started)
            plains.append(plain)
            publishes.append(publish)
            rounds.append(
                {
                    "plain_per_s": plain.requests_per_s,
                    "publish_per_s": publish.requests_per_s,
                    "end_to_end_per_s": end_to_end,
                    "ratio": end_to_end / plain.requests_per_s,
                    "delivered": delivered,
                    "drain_after_wrk_seconds": last_seen - wrk_ended,
                }
            )
    for runs, name in ((plains, "plain"), (publishes, "publish")):
        for run in runs:
            if run.non_2xx:
                problems.append(f"wrk {name}: {run.non_2xx} answers were not 2xx")
            if run.socket_errors:
                problems.append(f"wrk {name}: socket errors: {run.socket_errors}")
    server_log = log_path.read_text(errors="replace").strip()
    if server_log:
        problems.append("uvicorn's log:\n" + server_log)
    figures = {
        "rounds": rounds,
        "plain_per_s": statistics.median(r["plain_per_s"] for r in rounds),
        "publish_per_s": statistics.median(r["publish_per_s"] for r in rounds),
        "end_to_end_per_s": statistics.median(r["end_to_end_per_s"] for r in rounds),
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "plain_runs": [dataclasses.asdict(run) for run in plains],
        "publish_runs": [dataclasses.asdict(run) for run in publishes],
    }
    return figures, problems


# -- 2. In process: dapr.publish against direct ASGI calls --------------------------------------


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/cloudevents+json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
        "extensions": {},
    }


async def call_route(app: Any, path: str, body: bytes) -> int:
    """One POST through the whole ASGI app; returns the response status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(path, body), receive, send)
    return status


async def time_direct(app: Any, path: str, n: int) -> float:
    """Messages per second of N sequential calls of the route, through the ASGI interface."""
    gc.collect()
    failed = 0
    started = time.perf_counter()
    for _ in range(n):
        if not 200 <= await call_route(app, path, EVENT_BODY) < 300:
            failed += 1
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"direct ASGI calls: {failed} of {n} did not answer 2xx")
    return n / elapsed


async def time_publish(
    publish: Callable[[], Awaitable[None]], counter: Counter, n: int
) -> tuple[float, float]:
    """(end-to-end, publish-only) messages per second of N publishes until all are handled."""
    gc.collect()
    counter.reset(n)
    started = time.perf_counter()
    for _ in range(n):
        await publish()
    published = time.perf_counter()
    await asyncio.wait_for(counter.done.wait(), timeout=120)
    delivered = time.perf_counter()
    return n / (delivered - started), n / (published - started)


async def inprocess_bench(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    app, dapr, counter = counting_app()
    path = f"/events/{PUBSUB}/{TOPIC}"

    async def publish() -> None:
        await dapr.publish(PUBSUB, TOPIC, {"n": 1})

    direct: list[float] = []
    subject: list[float] = []
    publish_only: list[float] = []
    warmup = max(200, settings.messages // 10)
    async with DaprTest(app) as dapr_test:
        await time_direct(app, path, warmup)
        await time_publish(publish, counter, warmup)
        # Alternate baseline and subject, so that a slower patch of the machine hurts both.
        for _ in range(settings.rounds):
            direct.append(await time_direct(app, path, settings.messages))
            end_to_end, only_publish = await time_publish(publish, counter, settings.messages)
            subject.append(end_to_end)
            publish_only.append(only_publish)
        outcomes: dict[str, int] = {}
        for report in dapr_test.reports:
            outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1
    problems = []
    if set(outcomes) != {"delivered"}:
        problems.append(f"in-process delivery outcomes: {outcomes}")
    figures = {
        "direct_asgi_per_s": direct,
        "publish_end_to_end_per_s": subject,
        "publish_only_per_s": publish_only,
        "delivery_outcomes": outcomes,
    }
    return figures, problems


# -- 3. Memory of queued messages, in a fresh subprocess ----------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current VmRSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


async def memory_child(n: int, trace: bool) -> dict[str, Any]:
    """Publish N messages that stay queued (the handler blocks); measure the memory they take."""
    app, dapr, gate = gated_app()
    gate.expect = min(ENGINE_CONCURRENCY, n)
    async with DaprTest(app):
        # One message through the whole path first, so that what the first delivery
        # imports or caches (celpy, pydantic's validators...) is not counted.
        gate.release.set()
        await dapr.publish(PUBSUB, TOPIC, {"n": -1})
        await asyncio.wait_for(gate.idle.wait(), timeout=10)
        gate.release.clear()
        gc.collect()
        hwm_reset = _reset_peak_rss()
        rss_before = _proc_status_kib("VmRSS")
        if trace:
            tracemalloc.start()
            tracemalloc.reset_peak()
        started = time.perf_counter()
        for i in range(n):
            await dapr.publish(PUBSUB, TOPIC, {"n": i})
        publish_seconds = time.perf_counter() - started
        # Let the engine take its share in flight, so that its tasks count too.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(gate.held.wait(), timeout=10)
        in_flight = gate.entered - gate.finished
        traced_current = traced_peak = 0
        if trace:
            traced_current, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        rss_after = _proc_status_kib("VmRSS")
        hwm_after = _proc_status_kib("VmHWM")
        # Let the held deliveries finish; leaving DaprTest stops the engine, and the
        # messages still queued go with the in-memory broker.
        gate.release.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(gate.idle.wait(), timeout=10)
    return {
        "messages": n,
        "traced": trace,
        "in_flight": in_flight,
        "publish_seconds": publish_seconds,
        "traced_current_bytes": traced_current,
        "traced_peak_bytes": traced_peak,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "hwm_after_kib": hwm_after,
        "hwm_was_reset": hwm_reset,
        "library_log": LIBRARY_LOG.messages[:20],
    }


def run_memory_child(n: int, trace: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n)]
    if trace:
        command.append("--trace")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory subprocess failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr.strip()
    return result


def memory_bench(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    traced = run_memory_child(settings.queued, trace=True)
    plain = run_memory_child(settings.queued, trace=False)
    problems = [f"memory subprocess: {line}" for line in traced["library_log"] + plain["library_log"]]
    for result in (traced, plain):
        if result["stderr"]:
            problems.append("memory subprocess stderr:\n" + result["stderr"])
    return {"tracemalloc": traced, "rss": plain}, problems


# -- report ------------------------------------------------------------------------------------


def build_rows(
    settings: Settings, http: dict[str, Any], inproc: dict[str, Any], memory: dict[str, Any]
) -> list[Row]:
    plain_rps = http["plain_per_s"]
    direct = statistics.median(inproc["direct_asgi_per_s"])
    traced = memory["tracemalloc"]
    rss = memory["rss"]
    n = settings.queued
    rss_growth = (rss["hwm_after_kib"] - rss["rss_before_kib"]) * 1024
    return [
        Row("HTTP plain endpoint (POST /plain, median)", plain_rps, "req/s"),
        Row(
            "HTTP publish (POST /v1.0/publish, median)",
            http["publish_per_s"],
            "req/s",
            plain_rps,
            "plain endpoint",
        ),
        Row(
            "HTTP publish-and-deliver, end to end (median)",
            http["end_to_end_per_s"],
            "msg/s",
            plain_rps,
            "plain endpoint",
            E2E_TARGET,
        ),
        Row("In-process direct ASGI call of the route (median)", direct, "msg/s"),
        Row(
            "In-process dapr.publish until delivered (median)",
            statistics.median(inproc["publish_end_to_end_per_s"]),
            "msg/s",
            direct,
            "direct ASGI",
            INPROCESS_TARGET,
        ),
        Row(
            "In-process dapr.publish alone (median)",
            statistics.median(inproc["publish_only_per_s"]),
            "msg/s",
            direct,
            "direct ASGI",
        ),
        Row(f"Queued {n:,} messages: tracemalloc peak", traced["traced_peak_bytes"] / MIB, "MiB"),
        Row(f"Queued {n:,} messages: traced bytes per message", traced["traced_peak_bytes"] / n, "B/msg"),
        Row(f"Queued {n:,} messages: RSS growth (VmHWM - VmRSS)", rss_growth / MIB, "MiB"),
        Row(f"Queued {n:,} messages: RSS bytes per message", rss_growth / n, "B/msg"),
    ]


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def markdown(rows: list[Row], quick: bool) -> str:
    lines = [
        "| metric | value | baseline | ratio | target | pass/fail |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        baseline = f"{_number(row.baseline)} ({row.baseline_metric})" if row.baseline is not None else "—"
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "—"
        target = f"≥ {row.target:.2f}" if row.target is not None else "—"
        if row.passed is None:
            verdict = "—"
        elif quick:
            verdict = "not judged (--quick)"
        else:
            verdict = "pass" if row.passed else "FAIL"
        lines.append(
            f"| {row.metric} | {_number(row.value)} {row.unit} | {baseline} | {ratio} | {target} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def row_json(row: Row, quick: bool) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    data["ratio"] = row.ratio
    data["passed"] = None if quick else row.passed
    return data


def settings_from(args: argparse.Namespace) -> Settings:
    quick: bool = args.quick

    def pick(value: Any, normal: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else normal)

    return Settings(
        quick=quick,
        threads=pick(args.threads, 1, 1),
        connections=pick(args.connections, 32, 32),
        duration=pick(args.duration, 5.0, 2.0),
        warmup=pick(args.warmup, 2.0, 1.0),
        messages=pick(args.messages, 20_000, 2_000),
        rounds=pick(args.rounds, 3, 1),
        queued=pick(args.queued, 100_000, 10_000),
    )


def environment() -> dict[str, Any]:
    import fastapi
    import starlette
    import uvicorn

    def has(module: str) -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    return {
        "python": sys.version.split()[0],
        "fastapi": fastapi.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__,
        "uvicorn_http": "httptools" if has("httptools") else "h11",
        "uvicorn_loop": "uvloop" if has("uvloop") else "asyncio",
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short, for CI; targets not judged")
    parser.add_argument("--threads", type=int, help="wrk threads (1)")
    parser.add_argument("--connections", type=int, help="wrk connections (32)")
    parser.add_argument("--duration", type=float, help="seconds of each measured wrk run (5; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each run (2; quick 1)")
    parser.add_argument("--messages", type=int, help="N of the in-process runs (20000; quick 2000)")
    parser.add_argument(
        "--rounds", type=int, help="rounds of each measurement, the median is kept (3; quick 1)"
    )
    parser.add_argument(
        "--queued", type=int, help="messages held for the memory figure (100000; quick 10000)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        print(json.dumps(asyncio.run(memory_child(args.memory_child, args.trace))))
        return 0

    settings = settings_from(args)
    env = environment()
    print(f"publish_deliver: {'quick' if settings.quick else 'normal'} mode, {env}", file=sys.stderr)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        print("1/3 HTTP (wrk + uvicorn)...", file=sys.stderr)
        http, found = http_bench(settings, Path(tmp))
        problems += found
    print("2/3 in process (dapr.publish vs direct ASGI)...", file=sys.stderr)
    inproc, found = asyncio.run(inprocess_bench(settings))
    problems += found
    print("3/3 memory of queued messages (subprocesses)...", file=sys.stderr)
    memory, found = memory_bench(settings)
    problems += found
    problems += LIBRARY_LOG.messages

    rows = build_rows(settings, http, inproc, memory)
    table = markdown(rows, settings.quick)
    print(table)
    if problems:
        print("\nProblems seen during the run:")
        for problem in problems:
            print(f"- {problem}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "publish_deliver",
        "mode": "quick" if settings.quick else "normal",
        "settings": dataclasses.asdict(settings),
        "environment": env,
        "rows": [row_json(row, settings.quick) for row in rows],
        "http": http,
        "inprocess": inproc,
        "memory": memory,
        "problems": problems,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
