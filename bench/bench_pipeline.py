"""The report pipeline's figures: history size, end-to-end latency, large reports, memory.

On a :class:`~bench.stack.BenchStack` (every part its own process, as in production):

* **history bytes** of a quick report at each size against the same at 100 responses
  (serialized ``History`` protobuf, what the server stores);
* **end-to-end latency at 1k**: ``GenerateReport`` sent → workflow result received, against
  the sum of the activities' own times (the worker's ``surveymesh_report_stage_duration_seconds``
  over the same report, local activities included), so the difference is what orchestration
  adds;
* **end-to-end at the large size** against :mod:`bench.numpy_baseline` (one COPY + numpy
  in one process), runs alternating baseline / subject;
* **worker peak memory**: VmHWM of a freshly started worker process after one report at
  the large size, against the same after one report at 1k.
"""

from __future__ import annotations

import logging

from bench.figures import Figure
from bench.numpy_baseline import run as numpy_run
from bench.stack import BenchStack, QuickRun, median

log = logging.getLogger(__name__)
MB = 1024 * 1024


async def run(
    stack: BenchStack,
    *,
    history_sizes: list[int],
    latency_runs: int,
    big_n: int,
    big_runs: int,
) -> list[Figure]:
    """Measures the four figures; see the module docstring."""
    history: dict[int, int] = {}
    surveys: dict[int, str] = {}
    for n in sorted({100, 1000, *history_sizes, big_n}):
        log.info("importing %d responses", n)
        surveys[n] = await stack.survey(n, f"pipeline {n}")

    # Peak memory at 1k: a fresh worker, one report.
    await stack.restart_worker()
    first = await stack.quick_report(surveys[1000])
    rss_small = stack.peak_rss_bytes(stack.worker)

    # Latency at 1k on the now warm worker.
    runs: list[QuickRun] = [await stack.quick_report(surveys[1000]) for _ in range(latency_runs)]
    history[1000] = first.history_bytes
    for n in sorted(set(history_sizes) - {1000, big_n} | {100}):
        history[n] = (await stack.quick_report(surveys[n])).history_bytes

    # The large size, alternating baseline and subject; the first subject run on a fresh
    # worker gives the peak memory.
    dsn = stack.dsn("surveymesh_delivery")
    base_s: list[float] = []
    big_s: list[float] = []
    big_runs_out: list[QuickRun] = []
    rss_big = 0
    for i in range(big_runs):
        seconds, stats = await numpy_run(dsn, surveys[big_n])
        base_s.append(seconds)
        if i == 0:
            await stack.restart_worker()
        r = await stack.quick_report(surveys[big_n])
        if i == 0:
            rss_big = stack.peak_rss_bytes(stack.worker)
        big_runs_out.append(r)
        big_s.append(r.e2e_s)
        history[big_n] = r.history_bytes
    seconds, _ = await numpy_run(dsn, surveys[big_n])
    base_s.append(seconds)

    figures: list[Figure] = []
    base_bytes = history[100]
    worst = max(history.values())
    spread = max(abs(b / base_bytes - 1) for b in history.values())
    figures.append(
        Figure(
            key="history_bytes",
            name=f"Temporal history bytes per quick report ({max(history):,} responses)",
            value=history[max(history)],
            baseline=base_bytes,
            unit="B",
            baseline_name="same at 100 responses",
            target="within 5% from 100 up, under 64 KB",
            met=spread <= 0.05 and worst < 64 * 1024,
            note=(
                "sizes "
                + ", ".join(f"{n:,}: {b:,} B" for n, b in sorted(history.items()))
                + f"; largest deviation from 100 responses {100 * spread:.2f}%"
            ),
            details={"bytes_by_size": history},
        )
    )

    e2e = median([r.e2e_s for r in runs]) * 1000
    acts = median([r.activities_s for r in runs]) * 1000
    count = runs[0].activity_count
    allowed = 150 + 25 * count
    overhead = median([(r.e2e_s - r.activities_s) * 1000 for r in runs])
    figures.append(
        Figure(
            key="e2e_1k",
            name="end-to-end quick report, 1k responses",
            value=e2e,
            baseline=acts,
            unit="ms",
            baseline_name=f"sum of the {count} activities' own time",
            target=f"overhead < 150 + 25x{count} = {allowed} ms",
            met=overhead < allowed,
            note=(
                f"median of {len(runs)}; overhead (e2e - activities) {overhead:.0f} ms vs "
                f"{allowed} ms allowed; activity times from the worker's "
                "surveymesh_report_stage_duration_seconds (local activities included); "
                f"per activity (last run, s): {runs[-1].per_activity_s}"
            ),
            details={
                "e2e_ms": [round(r.e2e_s * 1000, 1) for r in runs],
                "activities_ms": [round(r.activities_s * 1000, 1) for r in runs],
            },
        )
    )

    big = median(big_s)
    base = median(base_s)
    figures.append(
        Figure(
            key="e2e_big",
            name=f"end-to-end quick report, {big_n:,} responses",
            value=big,
            baseline=base,
            unit="s",
            baseline_name="one COPY + numpy statistics, one process",
            target="under 2x",
            met=big < 2 * base,
            note=(
                f"{len(big_s)} subject / {len(base_s)} baseline runs alternating; per activity "
                f"(s): {big_runs_out[0].per_activity_s}; baseline computes completion, trend, "
                f"numeric summaries, distributions, choices, NPS, CSAT ({stats['completed']:,} "
                "completed responses)"
            ),
            details={"subject_s": big_s, "baseline_s": base_s},
        )
    )
    figures.append(
        Figure(
            key="worker_memory",
            name=f"worker peak memory, {big_n:,} responses",
            value=rss_big / MB,
            baseline=rss_small / MB,
            unit="MB",
            baseline_name="same at 1k",
            target="under 1.5x",
            met=rss_big < 1.5 * rss_small,
            note="VmHWM of a freshly started worker process after one quick report",
        )
    )
    return figures
