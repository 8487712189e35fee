"""Stores a realistic report directly, as the worker's activities would.

The component data comes from :func:`bench.report_components.demo_components` (the demo
survey pushed through the worker's own analytics), written with ``reporting_svc.store``
exactly as the activities write it: each component with its events in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from reporting_svc import store
from surveymesh.reporting.v1 import report_pb2

S = report_pb2.ReportState
E = report_pb2.ReportEventType
ORDER = (
    "basic_stats",
    "question_stats",
    "nps",
    "csat",
    "segments",
    "sentiment",
    "themes",
    "visualizations",
    "summary",
)
TITLE = "Customer Experience — Q4"


def encode(data: Any) -> bytes:
    """Component data as the worker encodes it."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


async def start(pool: asyncpg.Pool, report_id: str, *, title: str = TITLE) -> None:
    """Marks the report RUNNING and records the snapshot's survey (its title)."""
    await pool.execute(
        "INSERT INTO snapshots (report_id, snapshot_watermark, survey, done)"
        " VALUES ($1, 0, $2::jsonb, true) ON CONFLICT (report_id) DO NOTHING",
        report_id,
        {"title": title, "questions": []},
    )
    await store.append(
        pool,
        report_id,
        store.Event(
            type=E.REPORT_EVENT_TYPE_STATE_CHANGED,
            dedupe_key="state:running",
            state=S.REPORT_STATE_RUNNING,
            progress_percent=5,
            message="running",
        ),
    )


async def store_components(
    pool: asyncpg.Pool,
    report_id: str,
    components: dict[str, Any],
    names: Iterable[str],
) -> None:
    """Stores the named components, one transaction each, with a progress event."""
    for name in names:
        percent = 10 + 85 * (ORDER.index(name) + 1) // len(ORDER) if name in ORDER else 50
        await store.store_component(
            pool,
            report_id,
            name,
            encode(components[name]),
            store.Event(
                type=E.REPORT_EVENT_TYPE_PROGRESS,
                dedupe_key=f"progress:{name}",
                stage=name,
                progress_percent=percent,
                message=f"{name} computed",
            ),
        )


async def complete(pool: asyncpg.Pool, report_id: str) -> None:
    """The terminal COMPLETED event, as the compile step appends it."""
    await store.append(
        pool,
        report_id,
        store.Event(
            type=E.REPORT_EVENT_TYPE_COMPLETED,
            dedupe_key="terminal",
            state=S.REPORT_STATE_COMPLETED,
            progress_percent=100,
            message="the report is complete",
        ),
    )


async def store_report(pool: asyncpg.Pool, report_id: str, components: dict[str, Any]) -> None:
    """A whole COMPLETED report: snapshot title, every component, the terminal event."""
    await start(pool, report_id)
    await store_components(pool, report_id, components, [n for n in ORDER if n in components])
    extra = [n for n in components if n not in ORDER]
    await store_components(pool, report_id, components, extra)
    await complete(pool, report_id)
