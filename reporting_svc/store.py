"""The reporting database: reports, their components and their progress events.

Every change a pipeline step makes is one transaction that writes the component and its
events together and ``NOTIFY``s; events are numbered per report without gaps under the
report row's lock, and each carries a ``dedupe_key`` so a retried step records it once.
Once a report has a terminal event, nothing more is appended: the terminal event is
always the last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from surveymesh.reporting.v1 import report_pb2

log = logging.getLogger(__name__)

SCHEMA = "reporting"
MIGRATIONS = Path(__file__).parent / "migrations"
# One channel for every report; the payload is "<report_id>:<sequence>".
EVENTS_CHANNEL = "surveymesh_report_events"

S = report_pb2.ReportState
E = report_pb2.ReportEventType
TERMINAL_STATES = frozenset(
    {S.REPORT_STATE_COMPLETED, S.REPORT_STATE_FAILED, S.REPORT_STATE_CANCELLED}
)
TERMINAL_EVENTS = frozenset(
    {E.REPORT_EVENT_TYPE_COMPLETED, E.REPORT_EVENT_TYPE_FAILED, E.REPORT_EVENT_TYPE_CANCELLED}
)


@dataclass(frozen=True)
class Event:
    """A progress event to append to a report's log.

    Attributes:
        type: A ``ReportEventType`` number.
        dedupe_key: Names the logical event (e.g. ``component:basic_stats``); appending the
            same key twice is a no-op, which makes retried steps safe.
        state: The report's new state, or None to keep it.
        progress_percent: The report's new overall progress, or None to keep it.
    """

    type: int
    dedupe_key: str
    state: int | None = None
    stage: str = ""
    component_type: str = ""
    progress_percent: int | None = None
    items_done: int = 0
    items_total: int = 0
    message: str = ""
    error: dict[str, str] | None = None


async def append_event(conn: asyncpg.Connection, report_id: str, event: Event) -> int | None:
    """Appends ``event`` inside the caller's open transaction and notifies listeners on commit.

    Returns:
        The event's sequence, or None when it was a duplicate or the report already ended.
    """
    row = await conn.fetchrow(
        "SELECT state, last_sequence, progress_percent FROM reports WHERE id = $1 FOR UPDATE",
        report_id,
    )
    if row is None:
        raise LookupError(f"report {report_id} does not exist")
    if row["state"] in TERMINAL_STATES:
        return None
    exists = await conn.fetchval(
        "SELECT 1 FROM report_events WHERE report_id = $1 AND dedupe_key = $2",
        report_id,
        event.dedupe_key,
    )
    if exists:
        return None
    state = row["state"] if event.state is None else event.state
    progress = row["progress_percent"] if event.progress_percent is None else event.progress_percent
    sequence = row["last_sequence"] + 1
    terminal = state in TERMINAL_STATES
    await conn.execute(
        """
        UPDATE reports SET
            last_sequence = $2,
            state = $3,
            progress_percent = $4,
            current_stage = CASE WHEN $6 THEN '' WHEN $5 <> '' THEN $5 ELSE current_stage END,
            -- typed: an untyped $3 = $7 would make PostgreSQL deduce text for $3
            start_time = CASE WHEN $3::smallint = $7::smallint AND start_time IS NULL
                THEN now() ELSE start_time END,
            end_time = CASE WHEN $6 THEN now() ELSE end_time END,
            error = COALESCE($8::jsonb, error)
        WHERE id = $1
        """,
        report_id,
        sequence,
        state,
        progress,
        event.stage,
        terminal,
        S.REPORT_STATE_RUNNING,
        event.error,
    )
    await conn.execute(
        """
        INSERT INTO report_events (report_id, sequence, type, state, stage, component_type,
            progress_percent, items_done, items_total, message, error, dedupe_key)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        """,
        report_id,
        sequence,
        event.type,
        state,
        event.stage,
        event.component_type,
        progress,
        event.items_done,
        event.items_total,
        event.message,
        event.error,
        event.dedupe_key,
    )
    await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, f"{report_id}:{sequence}")
    return sequence


async def append(pool: asyncpg.Pool, report_id: str, *events: Event) -> list[int | None]:
    """Appends ``events`` in one transaction (see :func:`append_event`)."""
    async with pool.acquire() as conn, conn.transaction():
        return [await append_event(conn, report_id, e) for e in events]


async def store_component(
    pool: asyncpg.Pool,
    report_id: str,
    component_type: str,
    data: bytes,
    *events: Event,
    schema_version: int = 1,
) -> bool:
    """Stores a component and its events in one transaction.

    The component row is keyed by ``(report_id, component_type)``: when a retried step
    stores it again, the first stored version stays and no event is added twice.

    Returns:
        True if this call stored the component, False if it was already there.
    """
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """
            INSERT INTO report_components (report_id, component_type, data, schema_version)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (report_id, component_type) DO NOTHING
            RETURNING true
            """,
            report_id,
            component_type,
            data,
            schema_version,
        )
        ready = Event(
            type=E.REPORT_EVENT_TYPE_COMPONENT_READY,
            dedupe_key=f"component:{component_type}",
            component_type=component_type,
            message=f"{component_type} is ready",
        )
        for event in (ready, *events):
            await append_event(conn, report_id, event)
        return bool(inserted)


def row_to_dict(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """A record as a plain dict (None stays None)."""
    return None if row is None else dict(row)
