"""Render times of the demo report (HTML, PDF, CSV, JSON) and the event loop while rendering.

The report is the demo survey's FULL report (3,000 responses by default) computed with the
worker's analytics (:mod:`bench.report_components`): the components the pipeline stores for
``surveymesh up --demo``. Measured in this process, median of ``--runs``:

* ``html_cold_s``: the first HTML rendering in a fresh process (imports, the chart engine's
  start, every chart drawn);
* ``html_s``: HTML with every chart drawn again (the SVG cache cleared), ``html_cached_s``
  with the charts cached (the second format of the same report in the same process);
* ``pdf_s``: HTML with charts drawn plus WeasyPrint's layout and PDF output;
* ``csv_s``, ``json_s``; wall and CPU seconds for each.

``large`` repeats HTML, PDF, CSV and JSON for the same report plus a ~5 MB component of an
unknown type (shown as a capped table; whole in CSV and JSON). ``event_loop`` renders the
PDF through :class:`~reporting_svc.render.pool.RenderPool` (one worker process, as the
server does) and, for contrast, in a thread, while a 10 ms ticker measures how late the
event loop runs: the worst and the 99th percentile lag.

Run: ``python -m bench.bench_render [--responses 3000] [--runs 3]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.report_components import demo_components
from reporting_svc.render import ReportDocument, StoredComponent, render
from reporting_svc.render.charts import _svg_cached
from reporting_svc.render.pool import RenderPool

TICK = 0.01


def document(components: dict[str, Any]) -> ReportDocument:
    """The stored form of ``components`` as a COMPLETED FULL report."""
    encoded = [
        StoredComponent(
            k, orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        )
        for k, v in components.items()
    ]
    return ReportDocument(
        report={
            "id": "00000000-0000-4000-8000-00000000bench",
            "state": "REPORT_STATE_COMPLETED",
            "kind": "REPORT_KIND_FULL",
            "survey_id": "demo",
            "response_count": str(components["basic_stats"]["responses"]),
            "create_time": "2026-11-28T10:00:00Z",
            "end_time": "2026-11-28T10:01:00Z",
        },
        components=encoded,
        title="Customer Experience — Q4",
    )


def timed(fn: Callable[[], Any], runs: int, *, clear_charts: bool) -> dict[str, float]:
    """Median wall and CPU seconds of ``fn`` over ``runs`` calls (and the output size)."""
    walls, cpus, size = [], [], 0
    for _ in range(runs):
        if clear_charts:
            _svg_cached.cache_clear()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        size = len(out.body)
    return {
        "wall_s": round(statistics.median(walls), 3),
        "cpu_s": round(statistics.median(cpus), 3),
        "bytes": size,
    }


async def loop_lag(pool: RenderPool, doc: ReportDocument) -> dict[str, float]:
    """Renders the PDF through ``pool`` while a ticker measures the event loop's lateness."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            start = loop.time()
            await asyncio.sleep(TICK)
            lags.append(loop.time() - start - TICK)

    await pool.run(render, doc, "html")  # warm the worker (imports, chart engine)
    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await pool.run(render, doc, "pdf")
    wall = time.perf_counter() - start
    stop.set()
    await task
    await pool.close()
    lags.sort()
    return {
        "pdf_wall_s": round(wall, 3),
        "max_lag_ms": round(1000 * lags[-1], 1),
        "p99_lag_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 1),
        "ticks": len(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large-mb", type=float, default=5.0)
    args = parser.parse_args()

    components = demo_components(args.responses)
    doc = document(components)
    result: dict[str, Any] = {
        "responses": args.responses,
        "components_bytes": sum(c.size_bytes for c in doc.components),
        "charts": len(components["visualizations"]["charts"]),
    }
    w, c = time.perf_counter(), time.process_time()
    render(doc, "html")
    result["html_cold_s"] = {
        "wall_s": round(time.perf_counter() - w, 3),
        "cpu_s": round(time.process_time() - c, 3),
    }
    result["html_s"] = timed(lambda: render(doc, "html"), args.runs, clear_charts=True)
    result["html_cached_s"] = timed(lambda: render(doc, "html"), args.runs, clear_charts=False)
    result["pdf_s"] = timed(lambda: render(doc, "pdf"), args.runs, clear_charts=True)
    result["csv_s"] = timed(lambda: render(doc, "csv"), args.runs, clear_charts=False)
    result["json_s"] = timed(lambda: render(doc, "json"), args.runs, clear_charts=False)

    # ~200-byte rows until the extra component reaches the wanted size.
    row = {"response_id": "r-000000", "text": "x" * 160, "score": 0.5}
    rows = int(args.large_mb * 1024 * 1024 / len(orjson.dumps(row)))
    big = dict(components)
    big["response_sample"] = {"rows": [dict(row, response_id=f"r-{i:06d}") for i in range(rows)]}
    large = document(big)
    result["large"] = {
        "components_bytes": sum(c.size_bytes for c in large.components),
        **{
            fmt: timed(lambda fmt=fmt: render(large, fmt), 1, clear_charts=fmt in ("html", "pdf"))  # type: ignore[misc]
            for fmt in ("html", "pdf", "csv", "json")
        },
    }
    result["event_loop"] = {
        "process_pool": asyncio.run(loop_lag(RenderPool(1), doc)),
        "thread": asyncio.run(loop_lag(RenderPool(0), doc)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
