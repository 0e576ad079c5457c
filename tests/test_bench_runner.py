"""bench/run.py: the report and chart built from benchmark JSON (no benchmark is run), and a
failing script reported by name with its stderr."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def runner() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_run"]


def row(
    metric: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    baseline_metric: str = "",
    target: float | None = None,
) -> dict[str, Any]:
    """A row as the scripts write it (publish_deliver.row_json)."""
    ratio = value / baseline if baseline else None
    passed = None if target is None or ratio is None else ratio >= target
    return {
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_metric": baseline_metric,
        "target": target,
        "ratio": ratio,
        "passed": passed,
    }


def sample(mode: str = "normal") -> dict[str, dict[str, Any]]:
    run = {
        "started": "2025-01-02T03:04:05+00:00",
        "seconds": 61.0,
        "command": "python bench/x.py",
        "environment": {
            "cpus": 2,
            "python": "3.11.2 (CPython)",
            "packages": {"fastapi": "0.165.0"},
            "tools": {"wrk": "4.1.0"},
            "load_average": [0.5, 0.4, 0.3],
            "commit": "abc1234",
        },
    }
    return {
        "publish_deliver": {
            "benchmark": "publish_deliver",
            "mode": mode,
            "rows": [
                row("HTTP plain endpoint (POST /plain, median)", 5726.0, "req/s"),
                row(
                    "HTTP publish-and-deliver, end to end (median)",
                    8178.0,
                    "msg/s",
                    5726.0,
                    "plain endpoint",
                    0.8,
                ),
                row("Queued 100,000 messages: tracemalloc peak", 45.2, "MiB"),
            ],
            "problems": ["wrk publish: 3 answers were not 2xx"],
            "run": run,
        },
        "invoke_proxy": {
            "benchmark": "invoke_proxy",
            "mode": mode,
            "rows": [
                row("direct to the upstream (wrk)", 5000.0, "req/s"),
                row("through the proxy (wrk)", 2500.0, "req/s", 5000.0, "direct", 0.6),  # missed: 0.50
                row("the same proxy on httpx (wrk)", 200.0, "req/s", 5000.0, "direct"),
            ],
            "limits": [
                {
                    "metric": "added p50 through the proxy, at 500/s",
                    "value": 0.47,
                    "unit": "ms",
                    "target_max": 0.5,
                    "passed": True,
                }
            ],
            "run": {**run, "started": "2025-01-02T03:06:05+00:00"},
        },
        "redis_pubsub": {
            "benchmark": "redis_pubsub",
            "mode": mode,
            "rows": [row("fastapi-dapr vs FastStream", 9240.0, "msg/s", 2258.0, "FastStream", 2.0)],
            "round_ratios": {"faststream": [3.27, 4.82]},
            "run": run,
        },
    }


def write_sample(folder: Path, results: dict[str, dict[str, Any]]) -> None:
    for name, data in results.items():
        (folder / f"{name}.json").write_text(json.dumps(data))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_script_in_bench_is_run(runner: ModuleType) -> None:
    scripts = {path.stem for path in BENCH.glob("*.py")} - {"run"}
    assert set(runner.BENCHMARKS) == scripts


@pytest.mark.process  # matplotlib runs fc-list the first time it looks for fonts
def test_report_rows_and_ratios_come_from_the_json(runner: ModuleType, tmp_path: Path) -> None:
    write_sample(tmp_path, sample())
    report, chart = tmp_path / "report.md", tmp_path / "img" / "ratios.png"
    assert runner.main(["--report-only", "--output", str(tmp_path), "--chart", str(chart)]) == 0
    text = report.read_text()
    lines = text.splitlines()
    assert (
        "| HTTP publish-and-deliver, end to end (median) | 8,178 msg/s | 5,726 (plain endpoint) "
        "| **1.43** | ≥ 0.80 | met |"
    ) in lines
    assert "| through the proxy (wrk) | 2,500 req/s | 5,000 (direct) | **0.50** | ≥ 0.60 | missed |" in lines
    assert "| the same proxy on httpx (wrk) | 200 req/s | 5,000 (direct) | **0.04** | — | — |" in lines
    assert "| added p50 through the proxy, at 500/s | **0.47 ms** | — | — | ≤ 0.50 ms | met |" in lines
    assert (
        "| fastapi-dapr vs FastStream | 9,240 msg/s | 2,258 (FastStream) | **4.09** | ≥ 2.00 | met |" in lines
    )
    assert "| Queued 100,000 messages: tracemalloc peak | 45.20 MiB |" in lines
    assert "Round by round, the ratio to `faststream`: 3.27, 4.82." in lines
    assert "- wrk publish: 3 answers were not 2xx" in lines
    assert [line for line in lines if line.startswith("### ")] == [
        "### `publish_deliver.py`",
        "### `invoke_proxy.py`",
        "### `redis_pubsub.py`",
    ]
    assert "| CPUs | 2 |" in lines
    assert "| packages | fastapi 0.165.0 |" in lines
    assert "Last run: 2025-01-02, normal mode, 3 benchmarks, 3.0 minutes of benchmarks." in lines
    width, height = png_size(chart)
    assert width >= 800
    assert height >= 400


def test_quick_mode_judges_nothing(runner: ModuleType, tmp_path: Path) -> None:
    write_sample(tmp_path, sample("quick"))
    benchmarks = runner.load_benchmarks(tmp_path)
    verdicts = {bar.verdict for benchmark in benchmarks for bar in benchmark.judged}
    assert verdicts == {runner.NOT_JUDGED, runner.NO_TARGET}
    text = runner.report_markdown(benchmarks, note="Provisional: not a run")
    assert "> **Provisional: not a run**" in text
    assert "missed" not in text


def test_missing_results_are_named(runner: ModuleType, tmp_path: Path) -> None:
    results = sample()
    del results["redis_pubsub"]
    write_sample(tmp_path, results)
    text = runner.report_markdown(runner.load_benchmarks(tmp_path))
    missing = ", ".join(runner.BENCHMARKS[2:])  # every one after the two the sample has
    assert f"Not in this report (no results): {missing}." in text


@pytest.mark.process
def test_a_failing_script_is_named_with_its_stderr(runner: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        textwrap.dedent("""\
        import sys
        print("setting up", file=sys.stderr)
        sys.exit("redis-server is not installed")
    """)
    )
    output = tmp_path / "broken.json"
    failure = runner.run_script("broken", script, True, output, timeout=60)
    assert failure.name == "broken"
    assert failure.reason == "exited with 1"
    assert "setting up\nredis-server is not installed" in failure.stderr_tail
    assert not output.exists()
    assert not (tmp_path / "broken.json.new").exists()


@pytest.mark.process
@pytest.mark.redis  # redis-server --version
def test_a_script_s_json_gets_the_run_record(runner: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "fine.py"
    script.write_text(
        textwrap.dedent("""\
        import json, sys
        output = sys.argv[sys.argv.index("--output") + 1]
        mode = "quick" if "--quick" in sys.argv else "normal"
        json.dump({"benchmark": "fine", "mode": mode, "rows": []}, open(output, "w"))
    """)
    )
    output = tmp_path / "fine.json"
    assert runner.run_script("fine", script, True, output, timeout=60) is None
    results = json.loads(output.read_text())
    assert results["mode"] == "quick"
    assert results["run"]["command"] == "python bench/fine.py --quick"
    assert results["run"]["environment"]["cpus"]


@pytest.mark.process
def test_a_script_over_its_time_is_stopped_with_what_it_started(runner: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent("""\
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"child {child.pid}", file=sys.stderr, flush=True)
        time.sleep(60)
    """)
    )
    failure = runner.run_script("stuck", script, False, tmp_path / "stuck.json", timeout=1.5)
    assert failure.reason == "still running after 2 s, stopped"
    child = int(failure.stderr_tail.split("child ")[1].split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # stopped, not yet reaped by whoever adopted it
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the script's child {child} is still running")
