"""ReportingService's serving figures, each against its raw baseline in the same run.

* **GetReport unary QPS** of a small completed report (default view), against a bare
  grpc.aio server (:mod:`bench.load_client` ``echo``) answering every call with as many
  bytes as the GetReport response has. The client is its own process with the same
  concurrency for both; runs alternate baseline / subject.
* **progress event latency, commit → client**, with ``subscribers`` concurrent WatchReport
  streams on the one Reporting process (a client process holding them all). This process
  appends events with :func:`reporting_svc.store.append_event` (what activities call) and
  takes the time just before COMMIT; the client takes it on receipt (CLOCK_MONOTONIC is
  shared by processes). Baseline: a bare asyncpg LISTEN connection in the same client
  process, receiving the same NOTIFYs.
* **a 5 MB component as JSON**: ``RenderReport`` (JSON, chunked) received and parsed by
  the client, against ``json.loads`` of the same component bytes; ``GetReportComponent``
  is tried too and reported in the note.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid

import grpc
import orjson

from bench.figures import Figure
from bench.stack import BenchStack, median
from reporting_svc import store
from reporting_svc.store import Event
from surveymesh.db import open_database
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb

log = logging.getLogger(__name__)
E = report_pb2.ReportEventType
S = report_pb2.ReportState


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _client(*args: str, token: str = "") -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load_client",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "BENCH_TOKEN": token},
    )


async def _qps_once(
    target: str, method: str, request: bytes, token: str, conc: int, secs: float
) -> float:
    proc = await _client(
        "qps", target, method, "--request", request.hex(), "--concurrency", str(conc),
        "--seconds", str(secs), token=token,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"qps client failed ({proc.returncode})")
    return float(json.loads(out)["qps"])


async def get_report_qps(
    stack: BenchStack,
    report_id: str,
    *,
    runs: int,
    seconds: float,
    concurrency: int,
    view: int = report_pb2.REPORT_VIEW_UNSPECIFIED,
) -> Figure:
    """GetReport QPS vs the echo server; see the module docstring."""
    message = rpb.GetReportRequest(report_id=report_id, view=view)  # type: ignore[arg-type]
    request = message.SerializeToString()
    reply = await stack.reporting.GetReport(message, metadata=stack.meta("viewer"), timeout=10)
    size = reply.ByteSize()
    echo = await _client("echo", "--size", str(size))
    assert echo.stdout is not None and echo.stdin is not None
    port = int((await echo.stdout.readline()).decode())
    token = stack.authority.mint(org=stack.org, user="bench", roles=["viewer"])
    subject: list[float] = []
    baseline: list[float] = []
    try:
        for _ in range(runs):
            baseline.append(
                await _qps_once(
                    f"localhost:{port}", "/bench.Echo/Call", request, "", concurrency, seconds
                )
            )
            subject.append(
                await _qps_once(
                    stack.address("reporting"),
                    "/surveymesh.reporting.v1.ReportingService/GetReport",
                    request,
                    token,
                    concurrency,
                    seconds,
                )
            )
    finally:
        echo.stdin.close()
        await echo.wait()
    value, base = median(subject), median(baseline)
    basic = view == report_pb2.REPORT_VIEW_BASIC
    return Figure(
        key="get_report_qps_basic" if basic else "get_report_qps",
        name=f"GetReport unary QPS, small report, {'BASIC' if basic else 'default (FULL)'} view",
        value=value,
        baseline=base,
        unit="QPS",
        baseline_name="bare grpc.aio server, same response size",
        target="at least 50%",
        met=value >= 0.5 * base,
        note=(
            f"{runs} alternating runs of {seconds:g} s, {concurrency} calls in flight from a "
            f"client process; response {size:,} B (a 100-response quick report)"
        ),
        details={"subject_qps": subject, "baseline_qps": baseline},
    )


async def watch_latency(
    stack: BenchStack, *, subscribers: int, reports: int, events: int, rate: float
) -> Figure:
    """Commit → WatchReport client latency with ``subscribers`` streams; see the docstring."""
    dsn = stack.dsn("surveymesh_reporting")
    pool = await open_database(dsn, schema=store.SCHEMA, migrations=store.MIGRATIONS)
    ids = [str(uuid.uuid4()) for _ in range(reports)]
    try:
        for rid in ids:
            await pool.execute(
                "INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,"
                " workflow_id, creator) VALUES ($1::uuid, $2, 'bench', $3, $4, '{}'::jsonb, $1::text, $1::text, 'bench')",
                rid,
                stack.org,
                report_pb2.REPORT_KIND_QUICK,
                S.REPORT_STATE_QUEUED,
            )
            await store.append(
                pool,
                rid,
                Event(
                    type=E.REPORT_EVENT_TYPE_STATE_CHANGED,
                    dedupe_key="start",
                    state=S.REPORT_STATE_RUNNING,
                ),
            )
        token = stack.authority.mint(org=stack.org, user="bench", roles=["viewer"])
        client = await _client(
            "watch", stack.address("reporting"), "--reports", ",".join(ids),
            "--per-report", str(subscribers // reports), "--listen-dsn", dsn, token=token,
        )  # fmt: skip
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), 180)
        if line.strip() != b"READY":
            raise RuntimeError(f"watch client did not get ready: {line!r}")
        committed: dict[str, float] = {}
        interval = 1.0 / rate
        start = time.monotonic()
        for i in range(events):
            rid = ids[i % reports]
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                seq = await store.append_event(
                    conn,
                    rid,
                    Event(
                        type=E.REPORT_EVENT_TYPE_PROGRESS,
                        dedupe_key=f"p{i}",
                        stage="statistics",
                        progress_percent=10 + i * 80 // events,
                        message="bench progress",
                    ),
                )
                committed[f"{rid}:{seq}"] = time.monotonic()
                await tx.commit()
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(0.5)
        for rid in ids:
            await store.append(
                pool,
                rid,
                Event(
                    type=E.REPORT_EVENT_TYPE_COMPLETED,
                    dedupe_key="done",
                    state=S.REPORT_STATE_COMPLETED,
                ),
            )
        out, _ = await asyncio.wait_for(client.communicate(), 120)
    finally:
        await pool.close()
    data = json.loads(out)
    lat = [
        (t - committed[f"{rid}:{seq}"]) * 1000
        for rid, seq, t in data["receipts"]
        if f"{rid}:{seq}" in committed
    ]
    raw = [(t - committed[p]) * 1000 for p, t in data["raw"] if p in committed]
    expected = events * (subscribers // reports)
    p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
    return Figure(
        key="watch_latency_p99",
        name=f"progress event latency commit → client, p99, {subscribers:,} WatchReport streams",
        value=p99,
        baseline=_pct(raw, 0.99),
        unit="ms",
        baseline_name="bare asyncpg LISTEN, same NOTIFYs",
        target="p99 under 20 ms",
        met=p99 < 20 and len(lat) == expected,
        note=(
            f"p50 {p50:.1f} ms, max {max(lat):.1f} ms; raw LISTEN p50 {_pct(raw, 0.5):.1f} ms; "
            f"{subscribers:,} streams on {reports} running reports, {events:,} events at "
            f"{rate:g}/s, {len(lat):,} of {expected:,} deliveries received"
        ),
        details={"p50_ms": p50, "p99_ms": p99, "deliveries": len(lat), "expected": expected},
    )


async def component_json(
    stack: BenchStack, report_id: str, *, megabytes: float, runs: int
) -> Figure:
    """A ~5 MB component through RenderReport (JSON) vs json.loads; see the docstring."""
    row = {"response_id": "r-000000", "text": "x" * 160, "score": 0.5}
    count = int(megabytes * 1024 * 1024 / len(orjson.dumps(row)))
    data = orjson.dumps({"rows": [dict(row, response_id=f"r-{i:06d}") for i in range(count)]})
    pool = await open_database(
        stack.dsn("surveymesh_reporting"), schema=store.SCHEMA, migrations=store.MIGRATIONS
    )
    try:
        await pool.execute(
            "INSERT INTO report_components (report_id, component_type, data) VALUES ($1, $2, $3)",
            report_id,
            "response_sample",
            data,
        )
    finally:
        await pool.close()
    meta = stack.meta("viewer")
    render_ms: list[float] = []
    get_ms: list[float] = []
    base_ms: list[float] = []
    get_error = ""
    for _ in range(runs):
        began = time.perf_counter()
        json.loads(data)
        base_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        chunks = [
            m.chunk
            async for m in stack.reporting.RenderReport(
                rpb.RenderReportRequest(report_id=report_id, format=report_pb2.RENDER_FORMAT_JSON),
                metadata=meta,
                timeout=60,
            )
        ]
        json.loads(b"".join(chunks))
        render_ms.append((time.perf_counter() - began) * 1000)
        if not get_error:
            began = time.perf_counter()
            try:
                reply = await stack.reporting.GetReportComponent(
                    rpb.GetReportComponentRequest(
                        report_id=report_id, component_type="response_sample"
                    ),
                    metadata=meta,
                    timeout=60,
                )
                json.loads(reply.component.data)
                get_ms.append((time.perf_counter() - began) * 1000)
            except grpc.aio.AioRpcError as err:
                get_error = f"{err.code().name}: {err.details()}"
    value, base = median(render_ms), median(base_ms)
    get_note = (
        f"GetReportComponent + json.loads median {median(get_ms):.0f} ms ({median(get_ms) / base:.2f}x)"
        if get_ms
        else f"GetReportComponent refused it: {get_error}"
    )
    return Figure(
        key="component_json",
        name=f"RenderReport JSON with a {len(data) / 1e6:.1f} MB component, received + parsed",
        value=value,
        baseline=base,
        unit="ms",
        baseline_name="json.loads of the component bytes",
        target="under 3x",
        met=value < 3 * base,
        note=f"median of {runs} alternating runs; {get_note}",
        details={"render_ms": render_ms, "get_component_ms": get_ms, "json_loads_ms": base_ms},
    )


async def run(stack: BenchStack, *, quick: bool) -> list[Figure]:
    """The three serving figures."""
    sid = await stack.survey(100, "serving")
    small = await stack.quick_report(sid)
    figures = [
        await get_report_qps(
            stack,
            small.report_id,
            runs=2 if quick else 3,
            seconds=2 if quick else 4,
            concurrency=16,
            view=view,
        )
        for view in (report_pb2.REPORT_VIEW_UNSPECIFIED, report_pb2.REPORT_VIEW_BASIC)
    ]
    figures += [
        await watch_latency(
            stack, subscribers=1000, reports=200, events=100 if quick else 600, rate=100
        ),
    ]
    other = await stack.quick_report(sid)
    figures.append(
        await component_json(stack, other.report_id, megabytes=5, runs=3 if quick else 5)
    )
    return figures
