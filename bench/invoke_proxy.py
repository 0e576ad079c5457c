#!/usr/bin/env python
"""Service invocation through the embedded sidecar's proxy, against the upstream called directly.

uvicorn processes on loopback, one worker each: the upstream
(bench/apps/upstream_app.py, `GET /hello`) and the proxy app
(bench/apps/proxy_app.py, an HTTPEndpoint `upstream` pointing at it).
Measured in the same run, rounds alternated:

1. Throughput, `wrk` with the same settings against
   - the upstream directly (baseline),
   - `GET /v1.0/invoke/upstream/method/hello` on the proxy app (target >= 0.9 x direct),
   - the same proxy app with aiohttp's and with httpx's client in place of its own
     (`BENCH_PROXY_CLIENT`, a process each): the cost of the HTTP client alone,
     which chose the client;
   - with `--baseline DIR`, the proxy app of another checkout (its `fastapi_dapr` first
     on `sys.path`): before and after a change, in one run;
   with each server process's CPU time per request (from /proc); target: the proxy's
   CPU per request no more than the upstream's (at most 1.0 x).
2. Latency at a fixed moderate rate (`--rate`, 500 requests/s to each): an
   open-loop generator in this process sends on a schedule over keep-alive
   connections, to the upstream and through the proxy alternately, request by
   request, so that both see the same machine. p50 and p99 of each, timed from
   the write to the last byte (the JSON also has them from when each request
   was due); target: at most 0.3 ms added p50.

Prints a markdown table and writes bench/results/invoke_proxy.json. `--quick`
runs everything small and short and does not judge the targets.

    python bench/invoke_proxy.py [--quick] [--baseline /tmp/main]
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from publish_deliver import Row, environment, free_port, markdown, parse_wrk, row_json

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "invoke_proxy.json"
THROUGHPUT_TARGET = 0.9
ADDED_P50_TARGET_MS = 0.3
CPU_RATIO_TARGET = 1.0  # the proxy's CPU per request over the trivial upstream's, at most
SUBJECTS = ("direct", "proxy", "proxy_aiohttp", "proxy_httpx")
INVOKE_PATH = "/v1.0/invoke/upstream/method/hello"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    threads: int
    connections: int
    duration: float
    warmup: float
    rounds: int
    rate: float  # requests/s of the fixed-rate latency runs
    latency_seconds: float


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def wait_ready(port: int, path: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode} before serving")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not answer {path} on port {port} within {timeout}s")


@contextlib.contextmanager
def uvicorn(
    target: str, ready_path: str, log: Path, env: dict[str, str], cwd: Path = BENCH.parent
) -> Iterator[tuple[int, int]]:
    """uvicorn serving `target` (module:app in bench/apps), one worker; yields (port, pid).
    `python -m` puts `cwd` first on `sys.path`: its `fastapi_dapr` is the one imported."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", target, "--app-dir", str(BENCH),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **env}
        )
        try:
            try:
                wait_ready(port, ready_path, server)
            except RuntimeError as exc:
                out.flush()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc} ({target} in {cwd}); its log:\n{tail}") from None
            yield port, server.pid
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def run_wrk(url: str, settings: Settings, seconds: float) -> dict[str, Any]:
    command = [
        "wrk", f"-t{settings.threads}", f"-c{settings.connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "30s", "--latency", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    run = dataclasses.asdict(parse_wrk(done.stdout))
    for percent in ("50", "99"):
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\b", done.stdout, re.MULTILINE)
        if found:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]
            run[f"p{percent}_ms"] = float(found.group(1)) * scale
    return run


# -- fixed-rate latency ------------------------------------------------------------------------


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {head!r}")
    await reader.readexactly(int(length.group(1)))
    return status


async def fixed_rate(
    targets: list[tuple[str, int, str]], rate: float, seconds: float, connections: int = 16
) -> dict[str, dict[str, Any]]:
    """Open loop over `targets` (name, port, path), interleaved request by request so that
    each sees the same machine: each gets `rate` requests/s, due on a fixed schedule."""
    pools: dict[str, asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
    requests: dict[str, bytes] = {}
    for name, port, path in targets:
        pools[name] = asyncio.Queue()
        for _ in range(connections):
            pools[name].put_nowait(await asyncio.open_connection("127.0.0.1", port))
        requests[name] = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies: dict[str, list[float]] = {name: [] for name in pools}  # from write to last byte
    from_due: dict[str, list[float]] = {name: [] for name in pools}  # from when it was due
    failures = dict.fromkeys(pools, 0)

    async def one(name: str, due: float) -> None:
        reader, writer = await pools[name].get()
        try:
            sent = time.perf_counter()
            writer.write(requests[name])
            status = await _read_answer(reader)
        finally:
            pools[name].put_nowait((reader, writer))
        done = time.perf_counter()
        if status != 200:
            failures[name] += 1
        latencies[name].append((done - sent) * 1000)
        from_due[name].append((done - due) * 1000)

    names = list(pools)
    total = int(rate * seconds) * len(names)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / (rate * len(names))
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(names[i % len(names)], due)))
    await asyncio.gather(*tasks)
    for pool in pools.values():
        while not pool.empty():
            _, writer = pool.get_nowait()
            writer.close()

    def p99(values: list[float]) -> float:
        return float(sorted(values)[min(len(values) - 1, int(len(values) * 0.99))])

    return {
        name: {
            "requests": len(latencies[name]),
            "failures": failures[name],
            "p50_ms": statistics.median(latencies[name]),
            "p99_ms": p99(latencies[name]),
            "mean_ms": statistics.fmean(latencies[name]),
            "p50_from_due_ms": statistics.median(from_due[name]),
            "p99_from_due_ms": p99(from_due[name]),
        }
        for name in names
    }


def run_loop(coroutine: Any) -> Any:
    """uvloop when installed: the generator's own overhead is then smaller."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- the run -----------------------------------------------------------------------------------


def bench(settings: Settings, workdir: Path, baseline: Path | None) -> tuple[dict[str, Any], list[str]]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    problems: list[str] = []
    subjects = (*SUBJECTS, "proxy_baseline") if baseline is not None else SUBJECTS
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in subjects}
    latency: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    if baseline is not None:
        latency["proxy_baseline"] = []
    logs = {name: workdir / f"{name}.log" for name in subjects}
    with contextlib.ExitStack() as stack:
        up_port, up_pid = stack.enter_context(uvicorn("apps.upstream_app:app", "/hello", logs["direct"], {}))
        upstream_url = f"http://127.0.0.1:{up_port}"
        servers = {"direct": (up_port, up_pid, "/hello")}
        proxies = [("proxy", ""), ("proxy_aiohttp", "aiohttp"), ("proxy_httpx", "httpx")]
        if baseline is not None:
            proxies.append(("proxy_baseline", ""))
        for name, client in proxies:
            env = {"BENCH_UPSTREAM_URL": upstream_url, "BENCH_PROXY_CLIENT": client}
            cwd = baseline if name == "proxy_baseline" and baseline is not None else BENCH.parent
            server = uvicorn("apps.proxy_app:app", INVOKE_PATH, logs[name], env, cwd)
            port, pid = stack.enter_context(server)
            servers[name] = (port, pid, INVOKE_PATH)
        for name in subjects:
            port, _, path = servers[name]
            run_wrk(f"http://127.0.0.1:{port}{path}", settings, settings.warmup)
        for round_number in range(settings.rounds):
            # Beside the baseline the machine is most alike: the proxy and the baseline's right
            # after it, in turns (this virtual machine's speed drifts within a round).
            pair_first = ["proxy", "proxy_baseline"] if baseline is not None else ["proxy"]
            if round_number % 2:
                pair_first.reverse()
            order = [
                "direct",
                *pair_first,
                *(name for name in subjects if name.startswith("proxy_") and name != "proxy_baseline"),
            ]
            for name in order:
                port, pid, path = servers[name]
                before = cpu_seconds(pid)
                run = run_wrk(f"http://127.0.0.1:{port}{path}", settings, settings.duration)
                run["cpu_ms_per_request"] = (cpu_seconds(pid) - before) * 1000 / max(1, run["requests"])
                runs[name].append(run)
            pair = [(name, servers[name][0], servers[name][2]) for name in latency]
            measured = run_loop(fixed_rate(pair, settings.rate, settings.latency_seconds))
            for name, stats in measured.items():
                latency[name].append(stats)
    for name, name_runs in runs.items():
        for run in name_runs:
            if run["non_2xx"]:
                problems.append(f"wrk {name}: {run['non_2xx']} answers were not 2xx")
            if run["socket_errors"]:
                problems.append(f"wrk {name}: socket errors: {run['socket_errors']}")
    for name, name_runs in latency.items():
        if any(run["failures"] for run in name_runs):
            problems.append(f"fixed rate {name}: some answers were not 200")
    for log in logs.values():
        text = log.read_text(errors="replace").strip()
        if text:
            problems.append(f"{log.name}:\n{text}")

    def median(values: list[dict[str, Any]], key: str) -> float:
        return statistics.median(run[key] for run in values)

    figures: dict[str, Any] = {"wrk": runs, "fixed_rate": latency}
    for name in subjects:
        figures[f"{name}_per_s"] = median(runs[name], "requests_per_s")
        figures[f"{name}_cpu_ms_per_request"] = median(runs[name], "cpu_ms_per_request")
        figures[f"{name}_wrk_p50_ms"] = median(runs[name], "p50_ms")
        figures[f"{name}_wrk_p99_ms"] = median(runs[name], "p99_ms")
    for name in latency:
        figures[f"{name}_p50_ms"] = median(latency[name], "p50_ms")
        figures[f"{name}_p99_ms"] = median(latency[name], "p99_ms")

    def paired(subject: str, measure: Callable[[dict[str, Any], dict[str, Any]], float], kind: str) -> float:
        """The median over rounds of `measure(subject's run, direct's run)`."""
        found = runs if kind == "wrk" else latency
        return statistics.median(
            measure(run, direct) for run, direct in zip(found[subject], found["direct"], strict=True)
        )

    def ratio(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
        return lambda run, direct: float(run[key] / direct[key])

    def added(run: dict[str, Any], direct: dict[str, Any]) -> float:
        return float(run["p50_ms"] - direct["p50_ms"])

    prefixes = {"proxy": "", "proxy_baseline": "baseline_"} if baseline is not None else {"proxy": ""}
    for subject, prefix in prefixes.items():
        figures[f"{prefix}throughput_ratio"] = paired(subject, ratio("requests_per_s"), "wrk")
        figures[f"{prefix}added_p50_ms"] = paired(subject, added, "fixed rate")
        figures[f"{prefix}cpu_ratio"] = paired(subject, ratio("cpu_ms_per_request"), "wrk")
    return figures, problems


def build_rows(settings: Settings, figures: dict[str, Any]) -> list[Row]:
    direct = figures["direct_per_s"]
    rate = f"at {settings.rate:.0f}/s"
    before = []
    if "proxy_baseline_per_s" in figures:
        before = [
            Row(
                "the baseline checkout's proxy (wrk)",
                figures["proxy_baseline_per_s"],
                "req/s",
                direct,
                "direct",
            ),
            Row(f"p50 through the baseline's proxy, {rate}", figures["proxy_baseline_p50_ms"], "ms"),
            Row("added p50 through the baseline's proxy", figures["baseline_added_p50_ms"], "ms"),
            Row("CPU per request, the baseline's proxy", figures["proxy_baseline_cpu_ms_per_request"], "ms"),
            Row("the baseline's proxy CPU / upstream CPU", figures["baseline_cpu_ratio"], "x"),
        ]
    return [
        Row("direct to the upstream (wrk)", direct, "req/s"),
        Row("through the proxy (wrk)", figures["proxy_per_s"], "req/s", direct, "direct", THROUGHPUT_TARGET),
        Row("the same proxy on aiohttp (wrk)", figures["proxy_aiohttp_per_s"], "req/s", direct, "direct"),
        Row("the same proxy on httpx (wrk)", figures["proxy_httpx_per_s"], "req/s", direct, "direct"),
        Row(f"p50 direct, {rate}", figures["direct_p50_ms"], "ms"),
        Row(f"p50 through the proxy, {rate}", figures["proxy_p50_ms"], "ms"),
        Row(f"p99 direct, {rate}", figures["direct_p99_ms"], "ms"),
        Row(f"p99 through the proxy, {rate}", figures["proxy_p99_ms"], "ms"),
        Row("CPU per request, upstream (direct run)", figures["direct_cpu_ms_per_request"], "ms"),
        Row("CPU per request, proxy process", figures["proxy_cpu_ms_per_request"], "ms"),
        Row("CPU per request, proxy on aiohttp", figures["proxy_aiohttp_cpu_ms_per_request"], "ms"),
        Row("CPU per request, proxy on httpx", figures["proxy_httpx_cpu_ms_per_request"], "ms"),
        *before,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short, for CI; targets not judged")
    parser.add_argument("--threads", type=int, help="wrk threads (1)")
    parser.add_argument("--connections", type=int, help="wrk connections (32)")
    parser.add_argument("--duration", type=float, help="seconds of each measured wrk run (5; quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of wrk warm-up per subject (2; quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds, the median is kept (5; quick 1)")
    parser.add_argument("--rate", type=float, help="requests/s of the fixed-rate latency runs (500)")
    parser.add_argument("--latency-seconds", type=float, help="seconds of each fixed-rate run (5; quick 1)")
    parser.add_argument("--baseline", type=Path, help="another checkout whose proxy runs too (before/after)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    args = parser.parse_args()

    def pick(value: Any, normal: Any, short: Any) -> Any:
        return value if value is not None else (short if args.quick else normal)

    settings = Settings(
        quick=args.quick,
        threads=pick(args.threads, 1, 1),
        connections=pick(args.connections, 32, 32),
        duration=pick(args.duration, 5.0, 1.0),
        warmup=pick(args.warmup, 2.0, 1.0),
        rounds=pick(args.rounds, 5, 1),
        rate=pick(args.rate, 500.0, 500.0),
        latency_seconds=pick(args.latency_seconds, 5.0, 1.0),
    )
    env = environment()
    print(f"invoke_proxy: {'quick' if settings.quick else 'normal'} mode, {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-invoke-") as tmp:
        figures, problems = bench(settings, Path(tmp), args.baseline)
    rows = build_rows(settings, figures)
    print(markdown(rows, settings.quick))
    added = figures["added_p50_ms"]
    verdict = (
        "not judged (--quick)" if settings.quick else ("pass" if added <= ADDED_P50_TARGET_MS else "FAIL")
    )
    print(
        f"\nAdded p50 latency at {settings.rate:.0f} requests/s: {added:.3f} ms "
        f"(target ≤ {ADDED_P50_TARGET_MS} ms): {verdict}"
    )
    if problems:
        print("\nProblems seen during the run:")
        for problem in problems:
            print(f"- {problem}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "invoke_proxy",
        "mode": "quick" if settings.quick else "normal",
        "settings": dataclasses.asdict(settings),
        "environment": env,
        "rows": [row_json(row, settings.quick) for row in rows],
        "added_p50_ms": added,
        "added_p50_passed": None if settings.quick else added <= ADDED_P50_TARGET_MS,
        "limits": [  # figures with a maximum, for bench/run.py's report
            {
                "metric": f"added p50 through the proxy, at {settings.rate:.0f}/s",
                "value": added,
                "unit": "ms",
                "target_max": ADDED_P50_TARGET_MS,
                "passed": None if settings.quick else added <= ADDED_P50_TARGET_MS,
            },
            {
                "metric": "the proxy's CPU per request / the upstream's (wrk)",
                "value": figures["cpu_ratio"],
                "unit": "x",
                "target_max": CPU_RATIO_TARGET,
                "passed": None if settings.quick else figures["cpu_ratio"] <= CPU_RATIO_TARGET,
            },
        ],
        "figures": figures,
        "problems": problems,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
