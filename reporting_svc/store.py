"""The reporting database: reports, their components and their progress events.

Every change a pipeline step makes is one transaction that writes the component and its
events together and ``NOTIFY``s; events are numbered per report without gaps under the
report row's lock, and each carries a ``dedupe_key`` so a retried step records it once.
Once a report has a terminal event, nothing more is appended: the terminal event is
always the last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    return (await append_events(conn, report_id, [event]))[0]


async def append_events(
    conn: asyncpg.Connection, report_id: str, events: Sequence[Event]
) -> list[int | None]:
    """Appends ``events`` in order inside the caller's open transaction, in three round trips.

    Each event in turn: a duplicate (its ``dedupe_key`` already stored) or an event after
    a terminal one is skipped; otherwise it takes the next sequence and its state,
    progress, stage and error become the report's. The report row is locked and read once,
    the dedupe keys are looked up at once and the events are written, the report updated
    and listeners notified in one statement. One notification names the last sequence:
    it tells listeners that the events up to it exist.

    Returns:
        Each event's sequence, or None where it was skipped.
    """
    if not events:
        return []
    row = await conn.fetchrow(
        "SELECT state, last_sequence, progress_percent FROM reports WHERE id = $1 FOR UPDATE",
        report_id,
    )
    if row is None:
        raise LookupError(f"report {report_id} does not exist")
    if row["state"] in TERMINAL_STATES:
        return [None] * len(events)
    seen = {
        r["dedupe_key"]
        for r in await conn.fetch(
            "SELECT dedupe_key FROM report_events"
            " WHERE report_id = $1 AND dedupe_key = ANY($2::text[])",
            report_id,
            [e.dedupe_key for e in events],
        )
    }
    state, progress, sequence = row["state"], row["progress_percent"], row["last_sequence"]
    stage, running, error = "", False, None
    sequences: list[int | None] = []
    rows: list[tuple[Any, ...]] = []
    for event in events:
        if state in TERMINAL_STATES or event.dedupe_key in seen:
            sequences.append(None)
            continue
        seen.add(event.dedupe_key)
        sequence += 1
        state = state if event.state is None else event.state
        progress = progress if event.progress_percent is None else event.progress_percent
        running = running or state == S.REPORT_STATE_RUNNING
        stage = event.stage or stage
        error = event.error if event.error is not None else error
        sequences.append(sequence)
        rows.append(
            (
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
        )
    if not rows:
        return sequences
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        """
        WITH appended AS (
            INSERT INTO report_events (report_id, sequence, type, state, stage,
                component_type, progress_percent, items_done, items_total, message, error,
                dedupe_key)
            SELECT $1::uuid, * FROM unnest($11::bigint[], $12::smallint[], $13::smallint[],
                $14::text[], $15::text[], $16::int[], $17::bigint[], $18::bigint[],
                $19::text[], $20::jsonb[], $21::text[])
        ), updated AS (
            UPDATE reports SET
                last_sequence = $2,
                state = $3,
                progress_percent = $4,
                current_stage = CASE WHEN $6 THEN '' WHEN $5 <> '' THEN $5
                    ELSE current_stage END,
                start_time = CASE WHEN $7 AND start_time IS NULL THEN now() ELSE start_time END,
                end_time = CASE WHEN $6 THEN now() ELSE end_time END,
                error = COALESCE($8::jsonb, error)
            WHERE id = $1
        )
        SELECT pg_notify($9, $10)
        """,
        report_id,
        sequence,
        state,
        progress,
        stage,
        state in TERMINAL_STATES,
        running,
        error,
        EVENTS_CHANNEL,
        f"{report_id}:{sequence}",
        *(list(c) for c in columns),
    )
    return sequences


async def append(pool: asyncpg.Pool, report_id: str, *events: Event) -> list[int | None]:
    """Appends ``events`` in one transaction (see :func:`append_events`)."""
    async with pool.acquire() as conn, conn.transaction():
        return await append_events(conn, report_id, events)


@dataclass(frozen=True)
class Component:
    """A component to store, with the events that follow its COMPONENT_READY event."""

    type: str
    data: bytes
    events: Sequence[Event] = ()
    schema_version: int = 1


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
    stored = await store_components(
        pool, report_id, [Component(component_type, data, events, schema_version)]
    )
    return component_type in stored


async def store_components(
    pool: asyncpg.Pool, report_id: str, components: Sequence[Component]
) -> set[str]:
    """Stores several components and their events in one transaction (see
    :func:`store_component`); each component's COMPONENT_READY event comes first.

    Returns:
        The types of the components this call stored (the others were already there).
    """
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetch(
            """
            INSERT INTO report_components (report_id, component_type, data, schema_version)
            SELECT $1::uuid, * FROM unnest($2::text[], $3::bytea[], $4::int[])
            ON CONFLICT (report_id, component_type) DO NOTHING
            RETURNING component_type
            """,
            report_id,
            [c.type for c in components],
            [c.data for c in components],
            [c.schema_version for c in components],
        )
        events = [
            event
            for c in components
            for event in (
                Event(
                    type=E.REPORT_EVENT_TYPE_COMPONENT_READY,
                    dedupe_key=f"component:{c.type}",
                    component_type=c.type,
                    message=f"{c.type} is ready",
                ),
                *c.events,
            )
        ]
        await append_events(conn, report_id, events)
    return {r["component_type"] for r in inserted}


def row_to_dict(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """A record as a plain dict (None stays None)."""
    return None if row is None else dict(row)
