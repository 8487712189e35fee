"""The SQL of ReportingService's RPCs: creating report rows and reading reports and events.

Writes of pipeline progress (components, events) live in :mod:`reporting_svc.store`, which
the worker shares. Every read here is scoped by organization, and by the caller's roles
where a report restricts readers with ``required_roles``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from reporting_svc.store import EVENTS_CHANNEL, E, S

# A report is visible to a caller of its org when it restricts nothing or the caller holds
# one of its roles; used by every read so that hidden reports look exactly like missing ones.
_VISIBLE = "(cardinality(r.required_roles) = 0 OR r.required_roles && $2::text[])"
REPORT_COLUMNS = """
    r.id::text AS id, r.org_id, r.survey_id, r.kind, r.state, r.options, r.request_id,
    r.workflow_id, r.creator, r.batch_id::text AS batch_id, r.required_roles,
    r.progress_percent, r.current_stage, r.response_count, r.error, r.last_sequence,
    r.create_time, r.start_time, r.end_time
"""


@dataclass(frozen=True)
class NewReport:
    """One report row to create."""

    id: str
    survey_id: str
    request_id: str
    workflow_id: str


async def create_reports(
    conn: asyncpg.Connection,
    org: str,
    reports: Sequence[NewReport],
    *,
    kind: int,
    options: dict[str, Any],
    creator: str,
    required_roles: Sequence[str],
    batch_id: str | None,
) -> None:
    """Inserts report rows (state QUEUED) with their first event, skipping existing request ids.

    One statement for any number of reports: rows whose ``(org_id, request_id)`` exists are
    left alone (the idempotent retry), and each new row gets event 1, ``STATE_CHANGED`` to
    QUEUED, with the same dedupe key the event-log writer would use, and its ``NOTIFY``.
    """
    await conn.execute(
        """
        WITH ins AS (
            INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,
                workflow_id, creator, batch_id, required_roles, last_sequence)
            SELECT u.id, $1, u.survey_id, $6, $7, $8::jsonb, u.request_id, u.workflow_id, $9,
                $10::uuid, $11::text[], 1
            FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[])
                AS u (id, survey_id, request_id, workflow_id)
            ON CONFLICT (org_id, request_id) DO NOTHING
            RETURNING id
        ), ev AS (
            INSERT INTO report_events (report_id, sequence, type, state, message, dedupe_key)
            SELECT id, 1, $12, $7, 'queued', 'state:queued' FROM ins
            RETURNING report_id
        )
        SELECT count(pg_notify($13, report_id::text || ':1')) FROM ev
        """,
        org,
        [r.id for r in reports],
        [r.survey_id for r in reports],
        [r.request_id for r in reports],
        [r.workflow_id for r in reports],
        kind,
        S.REPORT_STATE_QUEUED,
        options,
        creator,
        batch_id,
        list(required_roles),
        E.REPORT_EVENT_TYPE_STATE_CHANGED,
        EVENTS_CHANNEL,
    )


async def reports_by_request_id(
    conn: asyncpg.Connection | asyncpg.Pool, org: str, request_ids: Sequence[str]
) -> dict[str, asyncpg.Record]:
    """The org's reports with these request ids, keyed by request id (no role filter)."""
    rows = await conn.fetch(
        f"SELECT {REPORT_COLUMNS} FROM reports r WHERE r.org_id = $1 AND r.request_id = ANY($2::text[])",
        org,
        list(request_ids),
    )
    return {r["request_id"]: r for r in rows}


async def get_report(
    conn: asyncpg.Connection | asyncpg.Pool, org: str, roles: Sequence[str], report_id: str
) -> asyncpg.Record | None:
    """One report of ``org`` visible with ``roles``, or None."""
    return await conn.fetchrow(
        f"SELECT {REPORT_COLUMNS} FROM reports r WHERE r.org_id = $1 AND {_VISIBLE} AND r.id = $3",
        org,
        list(roles),
        report_id,
    )


# A component as the API serves it; its create_time is renamed so that it can sit beside the
# report's columns in one row.
_COMPONENT_COLUMNS = """
    c.component_type, {data} AS data, octet_length(c.data) AS size_bytes, c.schema_version,
    c.create_time AS component_create_time
"""


async def report_with_components(
    conn: asyncpg.Connection | asyncpg.Pool,
    org: str,
    roles: Sequence[str],
    report_id: str,
    *,
    with_data: bool,
) -> list[asyncpg.Record]:
    """One visible report joined with its components, in type order; [] when not visible.

    One row per component, each with the report's columns and the component's
    (``component_type``, ``data``, ``size_bytes``, ``schema_version``,
    ``component_create_time``); a report without components is one row whose component
    columns are NULL. ``data`` is empty bytes unless asked for. A single statement reads one
    snapshot, so report and components agree without a transaction, in one round trip.
    """
    columns = _COMPONENT_COLUMNS.format(data="c.data" if with_data else "''::bytea")
    return await conn.fetch(
        f"""
        SELECT {REPORT_COLUMNS}, {columns}
        FROM reports r LEFT JOIN report_components c ON c.report_id = r.id
        WHERE r.org_id = $1 AND {_VISIBLE} AND r.id = $3
        ORDER BY c.component_type
        """,
        org,
        list(roles),
        report_id,
    )


async def visible_component(
    conn: asyncpg.Connection | asyncpg.Pool,
    org: str,
    roles: Sequence[str],
    report_id: str,
    component_type: str,
) -> asyncpg.Record | None:
    """One stored component with its data, of a report visible to the caller.

    None when the report is not visible; a row whose component columns are NULL when the
    report is visible but has no such component (yet).
    """
    columns = _COMPONENT_COLUMNS.format(data="c.data")
    return await conn.fetchrow(
        f"""
        SELECT {columns}
        FROM reports r
        LEFT JOIN report_components c ON c.report_id = r.id AND c.component_type = $4
        WHERE r.org_id = $1 AND {_VISIBLE} AND r.id = $3
        """,
        org,
        list(roles),
        report_id,
        component_type,
    )


async def component_data(
    conn: asyncpg.Connection | asyncpg.Pool, report_id: str, component_types: Sequence[str]
) -> list[asyncpg.Record]:
    """The bytes of some of a report's components (``component_type``, ``data``,
    ``component_create_time``); the caller has already read the report as visible."""
    return await conn.fetch(
        """
        SELECT c.component_type, c.data, c.create_time AS component_create_time
        FROM report_components c WHERE c.report_id = $1 AND c.component_type = ANY($2::text[])
        """,
        report_id,
        list(component_types),
    )


async def report_progress(pool: asyncpg.Pool, report_id: str) -> asyncpg.Record | None:
    """A report's state and last sequence (for a watcher that found nothing new)."""
    return await pool.fetchrow("SELECT state, last_sequence FROM reports WHERE id = $1", report_id)


async def components(
    conn: asyncpg.Connection | asyncpg.Pool, report_id: str, *, with_data: bool
) -> list[asyncpg.Record]:
    """A report's stored components in type order; ``data`` is empty bytes unless asked for."""
    data = "c.data" if with_data else "''::bytea AS data"
    return await conn.fetch(
        f"""
        SELECT c.component_type, {data}, octet_length(c.data) AS size_bytes,
               c.schema_version, c.create_time
        FROM report_components c WHERE c.report_id = $1 ORDER BY c.component_type
        """,
        report_id,
    )


async def list_reports(
    pool: asyncpg.Pool,
    org: str,
    roles: Sequence[str],
    *,
    survey_id: str,
    state: int,
    batch_id: str,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of the org's visible reports, newest first, after the keyset position ``after``."""
    return await pool.fetch(
        f"""
        SELECT {REPORT_COLUMNS} FROM reports r
        WHERE r.org_id = $1 AND {_VISIBLE}
          AND ($3 = '' OR r.survey_id = $3)
          AND ($4 = 0 OR r.state = $4)
          AND ($5::uuid IS NULL OR r.batch_id = $5::uuid)
          AND ($6::timestamptz IS NULL OR (r.create_time, r.id) < ($6::timestamptz, $7::uuid))
        ORDER BY r.create_time DESC, r.id DESC
        LIMIT $8
        """,
        org,
        list(roles),
        survey_id,
        state,
        batch_id or None,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def events_after(
    pool: asyncpg.Pool, report_id: str, after_sequence: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` events of a report with a sequence above ``after_sequence``, in order."""
    return await pool.fetch(
        """
        SELECT sequence, type, state, stage, component_type, progress_percent, items_done,
               items_total, message, error, create_time
        FROM report_events WHERE report_id = $1 AND sequence > $2
        ORDER BY sequence LIMIT $3
        """,
        report_id,
        after_sequence,
        limit,
    )


async def survey_title(conn: asyncpg.Connection | asyncpg.Pool, report_id: str) -> str:
    """The survey's title as the report's snapshot recorded it ('' before the snapshot)."""
    title = await conn.fetchval(
        "SELECT survey->>'title' FROM snapshots WHERE report_id = $1", report_id
    )
    return title or ""
