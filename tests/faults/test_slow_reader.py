"""Fault 8: slow WatchReport readers while thousands of events are produced.

The events are appended with the same function the activities use (``store.append``,
one transaction per event with its NOTIFY), as fast as PostgreSQL takes them, while five
readers take one message per second. The Reporting process must not buffer what the
readers have not taken (its memory stays flat), and every reader still gets the whole
log in order, without a gap or a repeat, up to the one terminal event.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import psutil
import pytest

from reporting_svc import store
from surveymesh.db import create_pool
from surveymesh.reporting.v1 import report_pb2
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import Md, Watcher, log

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
E = report_pb2.ReportEventType
EVENTS = 5000
READERS = 5
PER_COMMIT = 10  # events per transaction, as a busy pipeline commits them
SLOW_SECONDS = 12.0
MAX_GROWTH_MB = 40.0


async def test_slow_readers_thousands_of_events(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(workers=0)
    mesh = stack.mesh
    pool = await create_pool(stack.dsns["reporting"], schema=store.SCHEMA, max_size=4)
    try:
        report_id = str(uuid.uuid4())
        await pool.execute(
            "INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,"
            " workflow_id, creator) VALUES ($1, $2, 'survey-x', $3, $4, '{}'::jsonb, $5, $6,"
            " 'alice')",
            report_id, org, report_pb2.REPORT_KIND_QUICK, S.REPORT_STATE_QUEUED,
            uuid.uuid4().hex, f"report/{org}/slow",
        )  # fmt: skip
        server = psutil.Process(mesh.procs["reporting"].pid)
        md = token_for(org, role="viewer")
        readers = [Watcher(mesh, md, report_id, pace=1.0).start() for _ in range(READERS)]
        await asyncio.sleep(1.0)
        baseline = server.memory_info().rss

        async def produce() -> float:
            started = time.monotonic()
            for first in range(1, EVENTS + 1, PER_COMMIT):
                await store.append(
                    pool,
                    report_id,
                    *(
                        store.Event(
                            type=E.REPORT_EVENT_TYPE_PROGRESS,
                            dedupe_key=f"progress:load:{i}",
                            stage="load",
                            progress_percent=min(99, i * 100 // EVENTS),
                            items_done=i,
                            items_total=EVENTS,
                            message=f"event {i} of a long report " + "x" * 100,
                        )
                        for i in range(first, min(EVENTS, first + PER_COMMIT - 1) + 1)
                    ),
                )
            await store.append(
                pool,
                report_id,
                store.Event(
                    type=E.REPORT_EVENT_TYPE_COMPLETED,
                    dedupe_key="terminal",
                    state=S.REPORT_STATE_COMPLETED,
                    progress_percent=100,
                ),
            )
            return time.monotonic() - started

        producer = asyncio.ensure_future(produce())
        peak = baseline
        slow_until = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < slow_until or not producer.done():
            peak = max(peak, server.memory_info().rss)
            await asyncio.sleep(0.2)
        produced_in = await producer
        got_slowly = min(len(r.events) for r in readers)
        log(
            f"8 slow readers: {EVENTS + 1} events produced in {produced_in:.1f}s; readers had"
            f" {got_slowly} after {SLOW_SECONDS:.0f}s; reporting RSS {baseline / 2**20:.0f} MB"
            f" -> peak {peak / 2**20:.0f} MB"
        )
        assert got_slowly < 100, "the readers were meant to be slow"
        assert (peak - baseline) / 2**20 < MAX_GROWTH_MB
        for r in readers:
            r.pace = 0.0  # the readers catch up
        for r in readers:
            events = await r.result(within=90)
            r.check()
            assert len(events) == EVENTS + 1
            assert events[-1].type == E.REPORT_EVENT_TYPE_COMPLETED
            assert r.reconnects == 0
    finally:
        await pool.close()
