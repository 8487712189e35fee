"""Statistics at scale: SurveyMesh's statistics step against a bare numpy pass.

For each size (responses; 20 questions: ratings, NPS, numbers, single and multiple choice,
half of them with a planted plan effect) a snapshot is generated in PostgreSQL
(:mod:`bench.analytics_data`), then two programs run, each in a fresh subprocess so its
peak memory is its own:

* ``surveymesh``: :func:`worker.analytics.compute.statistics_components`, exactly what the
  statistics activity runs: basic_stats, question_stats, nps, csat and segments (default
  segments: plan and region), with every test and the Holm correction;
* ``baseline`` (DESIGN.md "Benchmarks"): the same rows read from PostgreSQL with one
  binary COPY (every answer joined to its respondent's plan and region codes) and, in
  numpy, per question: count, mean, median, standard deviation, option counts, and per
  group count and mean / option counts. No tests, no corrections, no JSON.

Reported per size and program: wall seconds, CPU seconds of the process, peak RSS (MB) and
the RSS after imports (so ``peak - imports`` is what the computation held), and the ratio
of the two wall times. The target: ``ratio <= 10`` at 1,000,000 responses.

Run: ``python -m bench.bench_analytics [--sizes 10000 100000 1000000] [--questions 20]
[--dsn postgresql://...]``; prints JSON. Without ``--dsn`` an embedded PostgreSQL is
started in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.analytics_data import PLANS, REGIONS, bench_questions, create_report, generate_snapshot
from reporting_svc import store
from surveymesh.db import create_pool, open_database


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def _surveymesh(dsn: str, report_id: str) -> dict[str, Any]:
    from surveymesh.workflow_contract import ReportOptionsInput
    from worker.analytics import compute

    pool = await create_pool(dsn, schema=store.SCHEMA, min_size=1, max_size=1, command_timeout=3600)
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT survey, copied FROM snapshots WHERE report_id = $1", report_id
            )
            assert row is not None
            survey = {**row["survey"], "response_count": int(row["copied"])}
            comps = await compute.statistics_components(
                conn, report_id, survey, ReportOptionsInput(include_incomplete=True)
            )
    finally:
        await pool.close()
    significant = sum(
        q["test"]["significant"] for s in comps["segments"]["segments"] for q in s["questions"]
    )
    return {
        "segments": [s["attribute"] for s in comps["segments"]["segments"]],
        "significant": significant,
    }


async def _baseline(dsn: str, report_id: str) -> dict[str, Any]:
    from worker.analytics.compute import copy_columns

    pool = await create_pool(dsn, schema=store.SCHEMA, min_size=1, max_size=1, command_timeout=3600)
    try:
        async with pool.acquire() as conn:
            survey = await conn.fetchval(
                "SELECT survey FROM snapshots WHERE report_id = $1", report_id
            )
            questions = survey["questions"]
            qids = [q["id"] for q in questions]
            options = sorted({o for q in questions for o in q["options"]})
            rows = await copy_columns(
                conn,
                "SELECT (array_position($2::text[], a.question_id) - 1)::int2,"
                " coalesce(a.number, (array_position($3::text[], coalesce(a.text, c.option)) - 1)::float8),"
                " (coalesce(array_position($4::text[], r.attributes->>'plan'), 0) - 1)::int2,"
                " (coalesce(array_position($5::text[], r.attributes->>'region'), 0) - 1)::int2"
                " FROM snapshot_answers a JOIN snapshot_responses r USING (report_id, response_id)"
                " LEFT JOIN LATERAL unnest(a.choices) AS c(option) ON true"
                " WHERE a.report_id = $1",
                [report_id, qids, options, list(PLANS), list(REGIONS)],
                [">i2", ">f8", ">i2", ">i2"],
            )
    finally:
        await pool.close()
    q, v, plan, region = rows["f0"], rows["f1"], rows["f2"], rows["f3"]
    order = np.argsort(q, kind="stable")
    bounds = np.searchsorted(q[order], np.arange(len(qids) + 1))
    out = []
    for i, question in enumerate(questions):
        idx = order[bounds[i] : bounds[i + 1]]
        x = v[idx]
        figures: dict[str, Any] = {"n": int(x.size)}
        for name, codes, k in (
            ("plan", plan[idx], len(PLANS)),
            ("region", region[idx], len(REGIONS)),
        ):
            if question["type"] in ("rating", "nps", "number"):
                counts = np.bincount(codes, minlength=k)
                sums = np.bincount(codes, weights=x, minlength=k)
                figures[name] = (sums / np.maximum(counts, 1)).tolist()
            else:
                cells = np.bincount(
                    codes * len(options) + x.astype(np.int64), minlength=k * len(options)
                )
                figures[name] = cells.reshape(k, len(options)).tolist()
        if question["type"] in ("rating", "nps", "number"):
            figures.update(
                mean=float(x.mean()), median=float(np.median(x)), std=float(x.std(ddof=1))
            )
        else:
            figures["options"] = np.bincount(x.astype(np.int64), minlength=len(options)).tolist()
        out.append(figures)
    return {"questions": len(out), "rows": int(q.size)}


def child(program: str, dsn: str, report_id: str) -> None:
    """Runs one program in this (fresh) process and prints its measurements as JSON."""
    import scipy.stats  # noqa: F401

    import reporting_svc.store  # noqa: F401  (imports before the RSS baseline)
    import worker.analytics.compute  # noqa: F401

    rss_imports = _rss_mb()
    fn = _surveymesh if program == "surveymesh" else _baseline
    wall, cpu = time.perf_counter(), time.process_time()
    result = asyncio.run(fn(dsn, report_id))
    print(
        json.dumps(
            {
                "wall_s": round(time.perf_counter() - wall, 3),
                "cpu_s": round(time.process_time() - cpu, 3),
                "peak_rss_mb": round(_rss_mb(), 1),
                "rss_after_imports_mb": round(rss_imports, 1),
                "result": result,
            }
        )
    )


def _measure(program: str, dsn: str, report_id: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_analytics",
            "--child",
            program,
            "--dsn",
            dsn,
            "--report",
            report_id,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{program} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["held_mb"] = round(out["peak_rss_mb"] - out["rss_after_imports_mb"], 1)
    return out


async def run(dsn: str, sizes: list[int], questions: int) -> dict[str, Any]:
    """Generates each size's snapshot and measures both programs on it."""
    pool = await open_database(dsn, schema=store.SCHEMA, migrations=store.MIGRATIONS)
    results = []
    try:
        for n in sizes:
            async with pool.acquire() as conn:
                report_id = await create_report(conn)
                t0 = time.perf_counter()
                await generate_snapshot(conn, report_id, n, bench_questions(questions))
                await conn.execute("ANALYZE snapshot_answers")
                await conn.execute("ANALYZE snapshot_responses")
                generated = time.perf_counter() - t0
            base = await asyncio.to_thread(_measure, "baseline", dsn, report_id)
            mesh = await asyncio.to_thread(_measure, "surveymesh", dsn, report_id)
            results.append(
                {
                    "responses": n,
                    "questions": questions,
                    "answer_rows": base["result"]["rows"],
                    "generate_s": round(generated, 1),
                    "baseline": base,
                    "surveymesh": mesh,
                    "ratio_wall": round(mesh["wall_s"] / base["wall_s"], 2),
                    "within_10x": mesh["wall_s"] <= 10 * base["wall_s"],
                }
            )
            # Keep the database small for the next size.
            await pool.execute("DELETE FROM reports WHERE id = $1", report_id)
    finally:
        await pool.close()
    return {"benchmark": "analytics", "sizes": results}


async def _with_embedded(sizes: list[int], questions: int) -> dict[str, Any]:
    from surveymesh.embedded import EmbeddedPostgres, free_port

    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp:
        pg = EmbeddedPostgres(Path(tmp), port=free_port())
        await pg.start()
        try:
            await pg.ensure_database("bench_analytics")
            return await run(pg.dsn("bench_analytics"), sizes, questions)
        finally:
            await pg.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line entry: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_analytics")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--child", choices=["surveymesh", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--report", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.dsn, args.report)
        return
    if args.dsn:
        out = asyncio.run(run(args.dsn, args.sizes, args.questions))
    else:
        out = asyncio.run(_with_embedded(args.sizes, args.questions))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
