"""SQL of DeliveryService: every query of the ``delivery`` schema lives here.

Every survey query is scoped by the caller's organization, so a foreign survey id is
indistinguishable from a missing one. Response queries take a survey id that the caller
has already looked up through an org-scoped query.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pgproto import pgproto

SCHEMA = "delivery"
MIGRATIONS = Path(__file__).parent / "migrations"

_SURVEY_COLUMNS = (
    "id, org_id, title, description, questions, creator, create_time, response_count, last_seq"
)


_RESPONSE_COLUMNS = ("survey_id", "id", "seq", "completed", "payload")


@dataclass(frozen=True, slots=True)
class SurveyRow:
    """A stored survey, as read from the database."""

    id: uuid.UUID
    org_id: str
    title: str
    description: str
    questions: list[dict[str, Any]]
    creator: str
    create_time: datetime
    response_count: int
    last_seq: int

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> SurveyRow:
        """Builds a row from a record holding :data:`_SURVEY_COLUMNS`."""
        return cls(
            id=r["id"],
            org_id=r["org_id"],
            title=r["title"],
            description=r["description"],
            questions=r["questions"],
            creator=r["creator"],
            create_time=r["create_time"],
            response_count=r["response_count"],
            last_seq=r["last_seq"],
        )


def _records(
    survey_id: uuid.UUID,
    seq: int,
    ids: Sequence[str],
    completed: Sequence[bool],
    payloads: Sequence[bytes],
) -> list[tuple[Any, ...]]:
    """``responses`` records in :data:`_RESPONSE_COLUMNS` order from the batch's columns."""
    n = len(ids)
    return list(zip(repeat(survey_id, n), ids, repeat(seq, n), completed, payloads, strict=True))


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one committed import batch did."""

    inserted: int
    duplicates: int


class DeliveryRepository:
    """The delivery database.

    Args:
        pool: A pool whose search path starts with the ``delivery`` schema.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- surveys ---------------------------------------------------------------------

    async def insert_survey(
        self,
        *,
        survey_id: uuid.UUID,
        org: str,
        title: str,
        description: str,
        questions: list[dict[str, Any]],
        creator: str,
        request_id: str | None,
    ) -> SurveyRow:
        """Stores a new survey, or returns the one an earlier call with ``request_id`` stored."""
        async with self._pool.acquire() as conn:
            record = await conn.fetchrow(
                f"""
                INSERT INTO surveys (id, org_id, title, description, questions, creator, request_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (org_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
                RETURNING {_SURVEY_COLUMNS}
                """,
                survey_id,
                org,
                title,
                description,
                questions,
                creator,
                request_id,
            )
            if record is None:
                # The key was used before (possibly by a concurrent call that just won).
                record = await conn.fetchrow(
                    f"SELECT {_SURVEY_COLUMNS} FROM surveys WHERE org_id = $1 AND request_id = $2",
                    org,
                    request_id,
                )
        assert record is not None
        return SurveyRow.from_record(record)

    async def get_survey(self, org: str, survey_id: uuid.UUID) -> SurveyRow | None:
        """The survey ``survey_id`` of ``org``, or None (also when it belongs to another org)."""
        record = await self._pool.fetchrow(
            f"SELECT {_SURVEY_COLUMNS} FROM surveys WHERE id = $1 AND org_id = $2", survey_id, org
        )
        return SurveyRow.from_record(record) if record else None

    async def list_surveys(
        self, org: str, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[SurveyRow]:
        """Up to ``limit`` surveys of ``org``, newest first, strictly after the ``after`` key."""
        if after is None:
            records = await self._pool.fetch(
                f"SELECT {_SURVEY_COLUMNS} FROM surveys WHERE org_id = $1"
                " ORDER BY create_time DESC, id DESC LIMIT $2",
                org,
                limit,
            )
        else:
            records = await self._pool.fetch(
                f"SELECT {_SURVEY_COLUMNS} FROM surveys WHERE org_id = $1"
                " AND (create_time, id) < ($2, $3)"
                " ORDER BY create_time DESC, id DESC LIMIT $4",
                org,
                after[0],
                after[1],
                limit,
            )
        return [SurveyRow.from_record(r) for r in records]

    # -- responses -------------------------------------------------------------------

    async def import_batch(
        self, survey_id: uuid.UUID, rows: Sequence[tuple[str, bool, bytes]]
    ) -> BatchOutcome:
        """Stores one batch of valid rows ``(id, completed, payload)`` in one transaction.

        An id stored before, or earlier in the same batch, is counted as a duplicate and
        never stored twice. All rows of a batch get the same ``seq``: they become visible
        together, at its commit.

        The survey row is locked first: imports to one survey then run one at a time and
        commit in ``seq`` order, so the survey's ``last_seq`` (the watermark StreamResponses
        serves) never lies above a ``seq`` that is still to commit, and no other import can
        insert one of this batch's ids meanwhile. That makes the fast path safe: rows are
        COPYed (binary) straight into ``responses``, every column given, so PostgreSQL
        inserts them in bulk. Only if an id turns out to be stored already is the batch
        written again, through a staging table and ``INSERT ... ON CONFLICT DO NOTHING``.
        """
        if not rows:
            return BatchOutcome(0, 0)
        # Columns, built in C rather than row by row in Python.
        ids, completed, payloads = zip(*rows, strict=True)
        if len(set(ids)) < len(ids):
            unique: dict[str, tuple[str, bool, bytes]] = {}
            for row in rows:
                # The first of several rows with one id wins, as ON CONFLICT would have it.
                unique.setdefault(row[0], row)
            ids, completed, payloads = zip(*unique.values(), strict=True)
        # asyncpg's own UUID type is copied as is; a uuid.UUID is converted once per row.
        sid = pgproto.UUID(survey_id.bytes)
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    # One statement locks the survey, takes the batch's seq (evaluated
                    # once the lock is held, so above every committed seq) and counts the
                    # rows, assuming they are all new; a stored id fails the COPY and
                    # rolls all of it back.
                    seq = await conn.fetchval(
                        "UPDATE surveys SET response_count = response_count + $2,"
                        " last_seq = nextval('response_seq') WHERE id = $1 RETURNING last_seq",
                        survey_id,
                        len(ids),
                    )
                    await conn.copy_records_to_table(
                        "responses",
                        records=_records(sid, seq, ids, completed, payloads),
                        columns=_RESPONSE_COLUMNS,
                    )
                inserted = len(ids)
            except asyncpg.UniqueViolationError:
                inserted = await self._insert_new(conn, sid, ids, completed, payloads)
        return BatchOutcome(inserted=inserted, duplicates=len(rows) - inserted)

    @staticmethod
    async def _insert_new(
        conn: asyncpg.Connection,
        survey_id: uuid.UUID,
        ids: Sequence[str],
        completed: Sequence[bool],
        payloads: Sequence[bytes],
    ) -> int:
        """Inserts the rows whose id is not stored yet, in one transaction; returns how many."""
        async with conn.transaction():
            seq = await conn.fetchval(
                "SELECT nextval('response_seq') FROM surveys WHERE id = $1 FOR NO KEY UPDATE",
                survey_id,
            )
            # Made once per pooled connection; its rows vanish at every commit or rollback.
            # (ON COMMIT DROP would churn the catalog once per batch.)
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS import_staging (survey_id uuid,"
                ' id text COLLATE "C", seq bigint, completed boolean, payload bytea)'
                " ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table(
                "import_staging",
                records=_records(survey_id, seq, ids, completed, payloads),
                columns=_RESPONSE_COLUMNS,
            )
            status = await conn.execute(
                "INSERT INTO responses (survey_id, id, seq, completed, payload)"
                " SELECT survey_id, id, seq, completed, payload FROM import_staging"
                " ON CONFLICT (survey_id, id) DO NOTHING"
            )
            inserted = int(status.rsplit(" ", 1)[1])
            if inserted:
                await conn.execute(
                    "UPDATE surveys SET response_count = response_count + $2,"
                    " last_seq = greatest(last_seq, $3) WHERE id = $1",
                    survey_id,
                    inserted,
                    seq,
                )
        return inserted

    async def count_responses(
        self, survey_id: uuid.UUID, watermark: int, completed_only: bool
    ) -> int:
        """How many responses of the snapshot ``seq <= watermark`` there are."""
        count = await self._pool.fetchval(
            "SELECT count(*) FROM responses WHERE survey_id = $1 AND seq <= $2"
            + (" AND completed" if completed_only else ""),
            survey_id,
            watermark,
        )
        return int(count)

    async def fetch_payloads(
        self,
        survey_id: uuid.UUID,
        watermark: int,
        after_id: str,
        limit: int,
        completed_only: bool,
    ) -> list[tuple[str, bytes]]:
        """The next ``limit`` responses ``(id, payload)`` of the snapshot after ``after_id``.

        Keyset pagination on the primary key (survey_id, id): each batch is one short
        query, so a slow reader never holds a transaction or a connection open.
        """
        records = await self._pool.fetch(
            "SELECT id, payload FROM responses WHERE survey_id = $1 AND id > $2 AND seq <= $3"
            + (" AND completed" if completed_only else "")
            + " ORDER BY id LIMIT $4",
            survey_id,
            after_id,
            watermark,
            limit,
        )
        return [(r[0], r[1]) for r in records]
