#!/usr/bin/env python
"""The invocation client's answer parsing: llhttp (httptools) against the hand-written parser
it replaced, on the same answers, in the same process.

The old parser is read from git (`fastapi_dapr/_http1.py` at `BASELINE_COMMIT`, the last
commit that had it) into a module of its own; nothing of it is kept in the package. Each
parser's connection object is fed whole answers through `data_received`, as from a socket,
and its answer (status, headers, body) read back; a round parses N answers of one kind,
rounds alternate the parsers, and the median of each is kept.

Answers: the upstream's answer of `bench/invoke_proxy.py` (uvicorn's, a small JSON body
with a length), a chunked answer of three chunks, and a head of 20 headers.

    python bench/http1_parser.py [--quick] [--baseline-commit C]

Writes bench/results/http1_parser.json (`--output`), which bench/run.py reports. Without
git or that commit (a shallow clone), only llhttp's figures are written.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from publish_deliver import Row, environment, markdown, row_json

from fastapi_dapr.sidecar import http1 as _http1

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "http1_parser.json"
BASELINE_COMMIT = "8a6e941"  # the hand-written parser's last commit

ANSWERS = {
    "uvicorn's JSON answer": (
        b"HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 13:44:00 GMT\r\nserver: uvicorn\r\n"
        b'content-length: 17\r\ncontent-type: application/json\r\n\r\n{"hello":"world"}'
    ),
    "a chunked answer": (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n"
    ),
    "a head of 20 headers": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"x-header-%02d: some value of a header %02d\r\n" % (i, i) for i in range(20))
        + b"content-length: 2\r\n\r\nok"
    ),
}


class _Transport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def load_baseline(commit: str) -> ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:fastapi_dapr/_http1.py"],
            cwd=BENCH.parent,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    folder = Path(tempfile.mkdtemp(prefix="bench-http1-"))
    path = folder / "hand_written_http1.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("hand_written_http1", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_connection(module: ModuleType) -> Any:
    if module is _http1:
        return _http1._Connection(_http1.Limits(), "bench")
    return module._Connection()


def parse(module: ModuleType, answer: bytes, count: int) -> float:
    """Answers parsed a second: `count` exchanges on one connection, each fed whole."""
    connection = new_connection(module)
    connection.connection_made(_Transport())
    started = time.perf_counter()
    for _ in range(count):
        head = connection.start(False)
        connection.data_received(answer)
        status, _headers = head.result()
        body = b"".join(connection._body)
        connection._body.clear()
        if status != 200 or not body or not connection._body_done:
            raise RuntimeError(f"{module.__name__} did not read the answer whole")
    return count / (time.perf_counter() - started)


async def measure(baseline: ModuleType | None, count: int, rounds: int) -> dict[str, dict[str, float]]:
    modules = {"llhttp": _http1, **({"hand-written": baseline} if baseline is not None else {})}
    figures: dict[str, dict[str, float]] = {}
    for name, answer in ANSWERS.items():
        runs: dict[str, list[float]] = {parser: [] for parser in modules}
        for module in modules.values():
            parse(module, answer, count // 10)  # warm-up
        for _ in range(rounds):
            for parser, module in modules.items():
                runs[parser].append(parse(module, answer, count))
        figures[name] = {parser: statistics.median(values) for parser, values in runs.items()}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short, for CI")
    parser.add_argument("--count", type=int, help="answers a round (100,000; quick 5,000)")
    parser.add_argument("--rounds", type=int, help="rounds, the median is kept (7; quick 1)")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT, help="git commit of the old parser")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    args = parser.parse_args()
    count = args.count or (5_000 if args.quick else 100_000)
    rounds = args.rounds or (1 if args.quick else 7)
    env = environment()
    print(f"http1_parser: {'quick' if args.quick else 'normal'} mode, {env}", file=sys.stderr)
    baseline = load_baseline(args.baseline_commit)
    figures = asyncio.run(measure(baseline, count, rounds))
    rows = []
    for name, values in figures.items():
        old = values.get("hand-written")
        rows.append(Row(f"llhttp: {name}", values["llhttp"], "answers/s", old, "hand-written" if old else ""))
    for name, values in figures.items():
        if "hand-written" in values:
            rows.append(Row(f"hand-written parser: {name}", values["hand-written"], "answers/s"))
    print(markdown(rows, args.quick))
    if baseline is None:
        print(
            f"\nthe hand-written parser ({args.baseline_commit}) could not be read from git", file=sys.stderr
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "http1_parser",
        "mode": "quick" if args.quick else "normal",
        "settings": {"count": count, "rounds": rounds, "baseline_commit": args.baseline_commit},
        "environment": env,
        "rows": [row_json(row, args.quick) for row in rows],
        "figures": figures,
        "problems": [] if baseline is not None else ["the hand-written parser could not be read from git"],
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
