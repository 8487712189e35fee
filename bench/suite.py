"""The benchmark suite: every figure of issue 11 beside its baseline, in one run.

``python -m bench`` (or ``surveymesh bench``) starts the embedded mesh
(:class:`bench.stack.BenchStack`: PostgreSQL, the Temporal dev server, the three services
and a worker, each its own process as in production), measures each figure and its
baseline side by side (alternating runs, medians), and writes ``bench/results/latest.json``
and ``bench/results/latest.md``. ``--quick`` runs small sizes and few runs (for CI, where
results are checked for sanity, never for speed).

The import benchmark (:mod:`bench.bench_import`) and the notification benchmark
(:mod:`bench.bench_notifications`) start their own PostgreSQL and service process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bench_import, bench_notifications, bench_pipeline, bench_serving, bench_throughput
from bench.figures import Figure, markdown
from bench.stack import BenchStack

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Plan:
    """Sizes and run counts of one mode."""

    mode: str
    import_n: int
    import_runs: int
    history_sizes: tuple[int, ...]
    latency_runs: int
    big_n: int
    big_runs: int
    throughput_count: int
    throughput_runs: int
    notifications: tuple[int, int, int]  # latency count, throughput count, concurrency


QUICK = Plan("quick", 20_000, 3, (100, 1000, 10_000), 3, 10_000, 1, 8, 1, (100, 600, 16))
FULL = Plan(
    "full", 100_000, 5, (100, 1000, 10_000, 100_000), 5, 1_000_000, 1, 20, 2, (300, 2000, 32)
)


def _import_figure(r: dict[str, Any]) -> Figure:
    value, base = float(r["import_rows_per_s"]), float(r["baseline_copy_rows_per_s"])
    return Figure(
        key="import_rows_per_s",
        name=f"ImportResponses, {r['n']:,} responses",
        value=value,
        baseline=base,
        unit="rows/s",
        baseline_name="asyncpg copy_records_to_table, same rows",
        target="at least 50%",
        met=value >= 0.5 * base,
        note=(
            f"median of {r['runs']} alternating runs, {r['batch_size']} rows per message, "
            f"{r['avg_response_bytes']} B per response; export (StreamResponses) "
            f"{r['stream_rows_per_s']:,} rows/s"
        ),
        details=r,
    )


def _notification_figure(r: dict[str, Any]) -> Figure:
    s = r["send_in_app"]
    value, base = float(s["per_second"]), float(s["baseline_raw_asyncpg_insert_per_second"])
    lat = r["webhook_latency_send_to_received"]
    return Figure(
        key="notifications_per_s",
        name="SendNotification (in-app) per second (extra, issue 5)",
        value=value,
        baseline=base,
        unit="/s",
        baseline_name="one-row asyncpg INSERT transactions",
        target="— (informational)",
        met=True,
        note=(
            f"{s['notifications']:,} notifications, {s['concurrency']} concurrent callers; webhook "
            f"send → received p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms"
        ),
        details=r,
    )


async def _render_extra() -> dict[str, Any]:
    """bench.bench_render's figures (no baseline: reported as details only)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_render", "--runs", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return {"error": f"bench.bench_render exited with {proc.returncode}"}
    result: dict[str, Any] = json.loads(out)
    return result


GROUPS = ("import", "pipeline", "serving", "throughput", "notifications", "render")


async def run(
    plan: Plan, *, keep_logs: Path | None = None, only: frozenset[str] = frozenset(GROUPS)
) -> dict[str, Any]:
    """Runs the benchmarks of ``plan`` in the groups ``only``; returns the results document."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    figures: list[Figure] = []

    def lap(name: str, since: float) -> None:
        timings[name] = round(time.monotonic() - since, 1)
        log.info("%s done in %.0fs", name, timings[name])

    if "import" in only:
        t = time.monotonic()
        result = await bench_import.run(plan.import_n, batch=2000, runs=plan.import_runs)
        figures.append(_import_figure(result))
        lap("import", t)
    if only & {"pipeline", "serving", "throughput"}:
        async with BenchStack(keep_logs=keep_logs) as stack:
            timings["stack_start"] = round(stack.mesh.ready_seconds, 1)
            if "pipeline" in only:
                t = time.monotonic()
                figures += await bench_pipeline.run(
                    stack,
                    history_sizes=list(plan.history_sizes),
                    latency_runs=plan.latency_runs,
                    big_n=plan.big_n,
                    big_runs=plan.big_runs,
                )
                lap("pipeline", t)
            if "serving" in only:
                t = time.monotonic()
                figures += await bench_serving.run(stack, quick=plan.mode == "quick")
                lap("serving", t)
            if "throughput" in only:
                t = time.monotonic()
                figures += await bench_throughput.run(
                    stack, count=plan.throughput_count, runs=plan.throughput_runs
                )
                lap("throughput", t)
    if "notifications" in only:
        t = time.monotonic()
        figures.append(_notification_figure(await bench_notifications.run(*plan.notifications)))
        lap("notifications", t)
    extras: dict[str, Any] = {}
    if plan.mode == "full" and "render" in only:
        t = time.monotonic()
        extras["render"] = await _render_extra()
        lap("render", t)
    order = [
        "history_bytes", "e2e_1k", "e2e_big", "import_rows_per_s", "get_report_qps",
        "get_report_qps_basic", "watch_latency_p99", "component_json", "reports_per_minute",
        "worker_scaling", "worker_memory", "notifications_per_s",
    ]  # fmt: skip
    figures.sort(key=lambda f: order.index(f.key) if f.key in order else len(order))
    return {
        "mode": plan.mode,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "timings_s": timings,
        "figures": [f.to_json() for f in figures],
        "extras": extras,
        "markdown": markdown(figures),
    }


def write(results: dict[str, Any], directory: Path = RESULTS) -> tuple[Path, Path]:
    """Writes ``latest.json`` and ``latest.md``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    js, md = directory / "latest.json", directory / "latest.md"
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    head = (
        f"# SurveyMesh benchmark ({results['mode']} mode)\n\n"
        f"{results['finished']}, {results['machine']['cpus']} CPUs, Python "
        f"{results['machine']['python']}, {results['seconds']:.0f} s in all. Every baseline was "
        'measured in the same run on the same machine (see DESIGN.md, "Benchmarks").\n\n'
    )
    md.write_text(head + results["markdown"])
    return js, md
