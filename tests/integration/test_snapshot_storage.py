"""The snapshot tables' guarantees after migration 003 (no per-row foreign keys).

Deleting a report must still delete its copied responses and answers (the trigger that
replaced ``ON DELETE CASCADE``), and only that report's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from bench.analytics_data import create_report, generate_snapshot, planted_questions
from reporting_svc import store
from surveymesh.db import open_database


async def _counts(conn: asyncpg.Connection, report_id: str) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM snapshot_responses WHERE report_id = $1) AS responses,"
        " (SELECT count(*) FROM snapshot_answers WHERE report_id = $1) AS answers,"
        " (SELECT count(*) FROM snapshots WHERE report_id = $1) AS snapshots",
        report_id,
    )
    assert row is not None
    return int(row["responses"]), int(row["answers"]), int(row["snapshots"])


async def test_deleting_a_report_deletes_its_snapshot_only(
    new_database: Callable[[str], Awaitable[str]],
) -> None:
    pool = await open_database(
        await new_database("snapstore"), schema=store.SCHEMA, migrations=store.MIGRATIONS
    )
    try:
        async with pool.acquire() as conn:
            doomed = await create_report(conn)
            kept = await create_report(conn)
            for report_id in (doomed, kept):
                await generate_snapshot(conn, report_id, 50, planted_questions())
            before = await _counts(conn, kept)
            assert before[0] == 50 and before[1] > 50 and before[2] == 1
            assert await _counts(conn, doomed) == before

            await conn.execute("DELETE FROM reports WHERE id = $1", doomed)

            assert await _counts(conn, doomed) == (0, 0, 0)
            assert await _counts(conn, kept) == before
    finally:
        await pool.close()
