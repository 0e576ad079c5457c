#!/usr/bin/env python
"""Runs every benchmark in bench/ and writes the report that docs/benchmarks.md includes.

    python bench/run.py                      # normal mode, about 11 minutes on a quiet machine
    python bench/run.py --quick              # CI: every script small and short, targets not judged
    python bench/run.py --only invoke_proxy  # one benchmark again; the others' last results stay
    python bench/run.py --report-only        # the report again from the results already there
    python bench/run.py --baseline /tmp/main # also measure another checkout where a script can

Each script runs in turn as a subprocess of this interpreter (`--quick` passed on) and writes
its JSON into the output directory; the report is built from every benchmark's JSON found
there, so `--only` replaces one benchmark's figures and keeps the others'. Written:

- `<output>/report.md`: a table per benchmark (subject, value, baseline, ratio, target,
  met or missed), its other figures, and the environment of the run;
- the chart of every ratio against its target (PNG, matplotlib's Agg backend);
- `<output>/<benchmark>.json`: each script's results, with the runner's `run` record added.

Normal mode writes `bench/report/` and `docs/img/bench-ratios.png`, both committed: the docs
show the last normal run. Quick mode writes `bench/results/quick/` (git-ignored), chart
included, so CI never touches the committed report.

A script that fails (non-zero exit, or no JSON) makes the runner exit 1 with the script's
name and the tail of its stderr, after the other scripts have run; the report is then not
written. A missed target is reported, not an error: the exit code stays 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Every benchmark script in bench/, in the order they run (tests check that none is missing).
BENCHMARKS = (
    "publish_deliver", "invoke_proxy", "http1_parser", "redis_pubsub", "rabbitmq_pubsub", "kafka_pubsub",
    "jetstream_pubsub", "metrics_overhead", "grpc_publish",
)  # fmt: skip
TAKE_BASELINE = ("invoke_proxy", "metrics_overhead")  # run another checkout too, with --baseline
NORMAL_OUTPUT = BENCH / "report"
NORMAL_CHART = ROOT / "docs" / "img" / "bench-ratios.png"
QUICK_OUTPUT = BENCH / "results" / "quick"
STDERR_TAIL_LINES = 40
TIMEOUT_S = {"normal": 1800.0, "quick": 600.0}  # per script; far above their usual time
PACKAGES = (
    "fastapi-dapr", "fastapi", "starlette", "pydantic", "uvicorn", "httptools", "uvloop",
    "redis", "hiredis", "aio-pika", "aiormq", "aiokafka", "nats-py", "faststream", "aiohttp", "httpx",
    "grpcio", "protobuf", "dapr",
)  # fmt: skip

MET, MISSED, NOT_JUDGED, NO_TARGET = "met", "missed", "not judged (quick)", "—"


# -- running the scripts -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    name: str
    reason: str
    stderr_tail: str


def _stop(process: subprocess.Popen[str]) -> None:
    """Stops the script and what it started: its own process group, made at its start. Once
    the script has exited, what is left in its group (a server a crash left behind) gets a
    SIGTERM; usually nothing is left, and the group is gone."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_script(
    name: str, script: Path, quick: bool, output: Path, timeout: float, baseline: Path | None = None
) -> Failure | None:
    """Runs one script; its stdout goes through, its stderr too and its tail is kept.
    The JSON is written to `<output>.new` and moved into place only when the script succeeds."""
    pending = output.with_name(output.name + ".new")
    pending.unlink(missing_ok=True)
    extra = [*(["--quick"] if quick else []), *(["--baseline", str(baseline)] if baseline else [])]
    command = [sys.executable, str(script), *extra, "--output", str(pending)]
    shown = " ".join(["python", f"bench/{script.name}", *extra])
    print(f"\n== {name}: {shown}", file=sys.stderr, flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
    )
    assert process.stderr is not None

    def pump(stream: Iterable[str]) -> None:
        for line in stream:
            sys.stderr.write(line)
            tail.append(line)

    reader = threading.Thread(target=pump, args=(process.stderr,), daemon=True)
    reader.start()
    started = time.monotonic()
    reason = ""
    try:
        code = process.wait(timeout=timeout)
        if code != 0:
            reason = f"exited with {code}"
    except subprocess.TimeoutExpired:
        reason = f"still running after {timeout:.0f} s, stopped"
    finally:
        _stop(process)  # on a timeout or Ctrl-C; a no-op once it has exited
        reader.join(timeout=5)
        process.stderr.close()
    seconds = time.monotonic() - started
    if not reason:
        try:
            results = json.loads(pending.read_text())
        except (OSError, ValueError) as error:
            reason = f"wrote no readable JSON ({error})"
    if reason:
        pending.unlink(missing_ok=True)
        return Failure(name, reason, "".join(tail))
    results["run"] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "command": shown,
        "environment": runner_environment(),
    }
    output.write_text(json.dumps(results, indent=2) + "\n")
    pending.unlink()
    print(f"== {name}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return None


# -- the environment ---------------------------------------------------------------------------


def _tool_version(command: Sequence[str], pattern: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def runner_environment() -> dict[str, Any]:
    packages = {}
    for package in PACKAGES:
        try:
            packages[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            packages[package] = "not installed"
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--", "fastapi_dapr", "bench", ":(exclude)bench/report"):
        commit += " with local changes"
    return {
        "cpus": os.cpu_count(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "packages": packages,
        "tools": {
            "wrk": _tool_version(["wrk", "-v"], r"wrk\s+(?:debian/)?([\w.\-+~]+)"),
            "redis-server": _tool_version(["redis-server", "--version"], r"v=([\w.]+)"),
            "nats-server": _tool_version(
                [shutil.which("nats-server") or "/usr/sbin/nats-server", "--version"], r"v([\w.]+)"
            ),
        },
        "commit": commit or "unknown",
    }


# -- the report --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A figure against its baseline; `target` is the minimum ratio, if the figure has one."""

    benchmark: str
    subject: str
    value: float
    unit: str
    baseline: float
    baseline_subject: str
    ratio: float
    target: float | None
    verdict: str


@dataclasses.dataclass(frozen=True)
class Limit:
    """A figure with a maximum (the proxy's added latency): lower is better."""

    benchmark: str
    subject: str
    value: float
    unit: str
    target_max: float
    verdict: str


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    mode: str
    results: dict[str, Any]
    ratios: list[Ratio]
    limits: list[Limit]
    others: list[dict[str, Any]]  # rows without a baseline: absolute figures

    @property
    def judged(self) -> list[Ratio | Limit]:
        return [*self.ratios, *self.limits]


def _verdict(ok: bool | None, mode: str) -> str:
    if ok is None:
        return NO_TARGET
    if mode != "normal":
        return NOT_JUDGED
    return MET if ok else MISSED


def read_benchmark(name: str, results: dict[str, Any]) -> Benchmark:
    mode = str(results.get("mode", "normal"))
    ratios: list[Ratio] = []
    others: list[dict[str, Any]] = []
    for row in results.get("rows", []):
        baseline = row.get("baseline")
        if not baseline:
            others.append(row)
            continue
        ratio = row.get("ratio")
        ratio = float(ratio) if ratio is not None else row["value"] / baseline
        target = row.get("target")
        ratios.append(
            Ratio(
                benchmark=name,
                subject=row["metric"],
                value=float(row["value"]),
                unit=row.get("unit", ""),
                baseline=float(baseline),
                baseline_subject=row.get("baseline_metric", ""),
                ratio=ratio,
                target=target,
                verdict=_verdict(None if target is None else ratio >= target, mode),
            )
        )
    limits = [
        Limit(
            benchmark=name,
            subject=limit["metric"],
            value=float(limit["value"]),
            unit=limit.get("unit", ""),
            target_max=float(limit["target_max"]),
            verdict=_verdict(float(limit["value"]) <= float(limit["target_max"]), mode),
        )
        for limit in results.get("limits", [])
    ]
    return Benchmark(name, mode, results, ratios, limits, others)


def load_benchmarks(folder: Path, names: Sequence[str] = BENCHMARKS) -> list[Benchmark]:
    """Every benchmark whose JSON is in `folder`, in the order they run."""
    found = []
    for name in names:
        path = folder / f"{name}.json"
        if path.exists():
            found.append(read_benchmark(name, json.loads(path.read_text())))
    return found


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _when(benchmark: Benchmark) -> str:
    run = benchmark.results.get("run", {})
    started = run.get("started")
    when = "date unknown"
    if started:
        when = datetime.datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M UTC")
    seconds = run.get("seconds")
    took = f", {seconds:.0f} s" if seconds is not None else ""
    load = run.get("environment", {}).get("load_average")
    loaded = f", load average {load[0]:.2f} at its start" if load else ""
    return f"{benchmark.mode} mode, {when}{took}{loaded}"


def _environment_table(environment: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in environment.get("packages", {}).items())
    tools = ", ".join(f"{name} {version}" for name, version in environment.get("tools", {}).items())
    rows = [
        ("CPUs", str(environment.get("cpus", "unknown"))),
        ("Python", environment.get("python", "unknown")),
        ("platform", environment.get("platform", "unknown")),
        ("packages", packages or "unknown"),
        ("tools", tools or "unknown"),
        ("commit", environment.get("commit", "unknown")),
    ]
    return ["| environment | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows)]


def report_markdown(benchmarks: Sequence[Benchmark], chart: str = "", note: str = "") -> str:
    """The report: a heading-level-3 section per benchmark, to be included in a docs page."""
    runs = [b.results["run"] for b in benchmarks if "run" in b.results]
    latest: dict[str, Any] = max(runs, key=lambda run: run.get("started", ""), default={})
    modes = sorted({b.mode for b in benchmarks})
    lines = [
        "<!-- Written by bench/run.py from the JSON next to this file: rerun it, do not edit."
        + (f" The chart: {chart}." if chart else "")
        + " -->",
        "",
    ]
    if note:
        lines += [f"> **{note}**", ""]
    total = sum(run.get("seconds", 0.0) for run in runs)
    started = latest.get("started")
    date = datetime.datetime.fromisoformat(started).strftime("%Y-%m-%d") if started else "date unknown"
    lines += [
        f"Last run: {date}, {' and '.join(modes) or 'no'} mode, {len(benchmarks)} benchmarks"
        + (f", {total / 60:.1f} minutes of benchmarks." if total else "."),
        "Ratios are each subject's figure over its baseline's, measured in the same run.",
        "",
        *_environment_table(latest.get("environment", {})),
    ]
    missing = [name for name in BENCHMARKS if name not in {b.name for b in benchmarks}]
    if missing:
        lines += ["", f"Not in this report (no results): {', '.join(missing)}."]
    for benchmark in benchmarks:
        lines += ["", f"### `{benchmark.name}.py`", "", f"Run in {_when(benchmark)}.", ""]
        if benchmark.ratios or benchmark.limits:
            lines += [
                "| subject | value | baseline | ratio | target | result |",
                "|---|---:|---|---:|---:|---|",
            ]
        for r in benchmark.ratios:
            target = f"≥ {r.target:.2f}" if r.target is not None else "—"
            baseline = f"{_number(r.baseline)} ({r.baseline_subject})"
            lines.append(
                f"| {_cell(r.subject)} | {_number(r.value)} {r.unit} | {_cell(baseline)} "
                f"| **{r.ratio:.2f}** | {target} | {r.verdict} |"
            )
        for limit in benchmark.limits:
            lines.append(
                f"| {_cell(limit.subject)} | **{limit.value:.2f} {limit.unit}** | — | — "
                f"| ≤ {limit.target_max:.2f} {limit.unit} | {limit.verdict} |"
            )
        round_ratios = benchmark.results.get("round_ratios", {})
        for baseline_name, values in round_ratios.items():
            if values:
                lines += [
                    "",
                    f"Round by round, the ratio to `{baseline_name}`: "
                    + ", ".join(f"{value:.2f}" for value in values)
                    + ".",
                ]
        if benchmark.others:
            lines += ["", "| other figures | value |", "|---|---:|"]
            lines += [
                f"| {_cell(row['metric'])} | {_number(row['value'])} {row.get('unit', '')} |"
                for row in benchmark.others
            ]
        problems = benchmark.results.get("problems", [])
        if problems:
            lines += ["", "The script reported problems during the run (details in its JSON):", ""]
            for problem in problems[:10]:
                first, *rest = str(problem).splitlines() or [""]
                more = f" (+{len(rest)} lines)" if rest else ""
                lines.append(f"- {_cell(textwrap.shorten(first, 200))}{more}")
            if len(problems) > 10:
                lines.append(f"- and {len(problems) - 10} more")
    return "\n".join(lines) + "\n"


_COLOURS = {MET: "#2e7d32", MISSED: "#c62828", NOT_JUDGED: "#1565c0", NO_TARGET: "#9e9e9e"}


def _label(text: str, width: int = 44) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def draw_chart(benchmarks: Sequence[Benchmark], path: Path, title: str = "") -> None:
    """Horizontal bars: every ratio, a panel per benchmark, the target as a black tick; then
    the figures with a maximum (lower is better) in their unit. Agg backend, no pyplot."""
    from matplotlib.artist import Artist
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels: list[tuple[str, Sequence[Ratio | Limit]]] = [
        (f"{b.name}.py: ratio to the baseline (higher is better)", b.ratios) for b in benchmarks if b.ratios
    ]
    limits = [limit for b in benchmarks for limit in b.limits]
    if limits:
        panels.append(("at most a target (lower is better)", limits))
    if not panels:
        panels = [("no results", [])]
    heights = [max(1, len(bars)) * 0.55 + 0.6 for _, bars in panels]
    figure = Figure(figsize=(10, sum(heights) + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    ratio_values = [x for b in benchmarks for r in b.ratios for x in (r.ratio, r.target or 0.0)]
    ratio_max = max([1.0, *ratio_values]) * 1.15
    for ax, (heading, bars) in zip(axes, panels, strict=True):
        ys = list(range(len(bars)))[::-1]
        for y, bar in zip(ys, bars, strict=True):
            if isinstance(bar, Ratio):
                value, target, text = bar.ratio, bar.target, f"{bar.ratio:.2f}"
                subject = re.sub(r"\s*\(median\)$", "", bar.subject)
                vs = "" if " vs " in subject else f" vs {bar.baseline_subject}"
                label = f"{subject}{vs}"
            else:
                value, target, text = bar.value, bar.target_max, f"{bar.value:.2f} {bar.unit}"
                label = f"{bar.benchmark}.py: {bar.subject}"
            ax.barh(y, value, height=0.6, color=_COLOURS[bar.verdict])
            if target is not None:
                ax.plot([target, target], [y - 0.42, y + 0.42], color="black", linewidth=2.5)
            ax.annotate(
                text, (max(value, target or 0.0), y), xytext=(5, 0), textcoords="offset points",
                va="center", fontsize=8,
            )  # fmt: skip
            ax.annotate(
                _label(label), (0, y), xytext=(-6, 0), textcoords="offset points",
                ha="right", va="center", fontsize=8, annotation_clip=False,
            )  # fmt: skip
        ax.set_yticks([])
        ax.set_ylim(-0.7, max(len(bars), 1) - 0.3)
        ax.set_title(heading, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        if bars and isinstance(bars[0], Ratio):
            ax.set_xlim(0, ratio_max)
            ax.axvline(1.0, color="#616161", linestyle=":", linewidth=1)
        elif bars:
            most = max(max(b.value, b.target_max) for b in bars if isinstance(b, Limit))
            ax.set_xlim(0, most * 1.3)
            ax.set_xlabel(bars[0].unit, fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    verdicts = [v for v in (MET, MISSED, NOT_JUDGED, NO_TARGET) if any(
        bar.verdict == v for b in benchmarks for bar in b.judged)]  # fmt: skip
    handles: list[Artist] = [
        Patch(color=_COLOURS[v], label=v if v != NO_TARGET else "no target") for v in verdicts
    ]
    handles.append(Line2D([], [], color="black", linewidth=2.5, label="target"))
    handles.append(Line2D([], [], color="#616161", linestyle=":", label="equal to the baseline"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title or "Benchmarks: ratios against their baselines", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})


def write_report(
    benchmarks: Sequence[Benchmark], report: Path, chart: Path, note: str = "", chart_ref: str = ""
) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(report_markdown(benchmarks, chart_ref or str(chart), note))
    modes = sorted({b.mode for b in benchmarks})
    runs = [b.results.get("run", {}).get("started", "")[:10] for b in benchmarks]
    runs = [day for day in runs if day]
    title = f"Benchmarks, {' and '.join(modes)} mode" + (f", {max(runs)}" if runs else "")
    if note:
        title += f" ({note.split(':')[0].lower()})"
    draw_chart(benchmarks, chart, title)


# -- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="every script small and short; targets not judged"
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"only these: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"the JSON and report.md ({NORMAL_OUTPUT.relative_to(ROOT)}; "
        f"quick: {QUICK_OUTPUT.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        help=f"the PNG ({NORMAL_CHART.relative_to(ROOT)}; with --quick or --output: <output>/ratios.png)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: the report from the JSON there"
    )
    parser.add_argument(
        "--note", default="", help="a line at the top of the report (e.g. 'Provisional: ...')"
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds allowed to each script (normal 1800, quick 600)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help=f"another checkout, measured beside this one by {', '.join(TAKE_BASELINE)}",
    )
    args = parser.parse_args(argv)

    output: Path = args.output or (QUICK_OUTPUT if args.quick else NORMAL_OUTPUT)
    default_chart = NORMAL_CHART if args.output is None and not args.quick else output / "ratios.png"
    chart: Path = args.chart or default_chart
    output.mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    if not args.report_only:
        timeout = args.timeout or TIMEOUT_S["quick" if args.quick else "normal"]
        started = time.monotonic()
        for name in args.only or BENCHMARKS:
            baseline = args.baseline if name in TAKE_BASELINE else None
            failure = run_script(
                name, BENCH / f"{name}.py", args.quick, output / f"{name}.json", timeout, baseline
            )
            if failure:
                failures.append(failure)
        print(f"\n== all scripts: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failures:
        for failure in failures:
            print(f"\n== FAILED: {failure.name} {failure.reason}; the tail of its stderr:", file=sys.stderr)
            print(textwrap.indent(failure.stderr_tail.rstrip() or "(nothing)", "    "), file=sys.stderr)
        print(f"\nthe report was not written ({output / 'report.md'} is as it was)", file=sys.stderr)
        return 1
    benchmarks = load_benchmarks(output)
    if not benchmarks:
        print(f"no results in {output}", file=sys.stderr)
        return 1
    try:
        chart_ref = str(chart.resolve().relative_to(ROOT))
    except ValueError:
        chart_ref = str(chart)
    write_report(benchmarks, output / "report.md", chart, args.note, chart_ref)
    missed = [f"{r.benchmark}: {r.subject}" for b in benchmarks for r in b.judged
              if r.verdict == MISSED]  # fmt: skip
    print(f"\nwritten: {output / 'report.md'} and {chart}", file=sys.stderr)
    if missed:
        print("targets missed (not an error):\n  " + "\n  ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
