"""SQL of NotificationService. Every query that serves a request is scoped by organization.

The dispatcher's queries (claim, finish, release) work across organizations on purpose:
they move rows of the outbox, each of which already carries its organization.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

# NOTIFY channels. In-app payload: {"o": org, "u": user, "s": sequence}.
IN_APP_CHANNEL = "surveymesh_notification_inapp"
# Payload-less: "the outbox has new rows", wakes dispatchers of every replica.
DELIVERY_CHANNEL = "surveymesh_notification_delivery"

PENDING, SUCCEEDED, RETRYING, FAILED = 1, 2, 3, 4
CHANNEL_IN_APP, CHANNEL_EMAIL, CHANNEL_WEBHOOK = 1, 2, 3

_NOTIFICATION_COLUMNS = (
    "id, org_id, user_id, type, title, body, link, metadata, channels, email, "
    "idempotency_key, sequence, create_time, read_time"
)
_ENDPOINT_COLUMNS = "id, org_id, url, event_types, description, secret, create_time, position"
_ATTEMPT_COLUMNS = (
    "id, notification_id, channel, endpoint_id, message_id, attempt_number, status, "
    "response_code, latency_ms, error, attempt_time, next_attempt_time, position"
)


# Stores a notification in one round trip: allocates the recipient's next in-app sequence
# (unless the key was used before), inserts the row and NOTIFYs the in-app channel. The
# sequence row stays locked until commit, so one user's sequences commit in order.
# $12: whether the notification is in-app.
_INSERT_NOTIFICATION = f"""
WITH seq AS (
    INSERT INTO user_sequences (org_id, user_id, last_sequence)
    SELECT $2, $3, 1
    WHERE $12::bool AND NOT EXISTS (
        SELECT 1 FROM notifications WHERE org_id = $2 AND idempotency_key = $11)
    ON CONFLICT (org_id, user_id)
    DO UPDATE SET last_sequence = user_sequences.last_sequence + 1
    RETURNING last_sequence
), ins AS (
    INSERT INTO notifications (id, org_id, user_id, type, title, body, link, metadata,
                               channels, email, idempotency_key, sequence)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce((SELECT last_sequence FROM seq), 0)
    ON CONFLICT (org_id, idempotency_key) DO NOTHING
    RETURNING {_NOTIFICATION_COLUMNS}
)
SELECT ins.*,
       CASE WHEN ins.sequence > 0 THEN pg_notify(
           '{IN_APP_CHANNEL}',
           json_build_object('o', ins.org_id, 'u', ins.user_id, 's', ins.sequence)::text)
       END AS notified
FROM ins
"""


@dataclass(frozen=True)
class NewNotification:
    """A notification to store, as validated from a request."""

    org_id: str
    user_id: str
    type: str
    title: str
    body: str
    link: str
    metadata: dict[str, str]
    channels: list[int]
    email: str
    idempotency_key: str


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery with everything needed to attempt it."""

    delivery_id: uuid.UUID
    org_id: str
    notification_id: uuid.UUID
    channel: int
    endpoint_id: uuid.UUID | None
    message_id: str
    attempt_number: int
    user_id: str
    type: str
    title: str
    body: str
    link: str
    metadata: dict[str, str]
    email: str
    create_time: dt.datetime
    url: str | None
    # The endpoint's live signing secrets as stored: encrypted (notification_svc.secretbox)
    # or, for rows written before encryption at rest, plain. The current one first.
    secrets: tuple[str, ...]
    endpoint_deleted: bool


@dataclass(frozen=True)
class PurgedBatch:
    """What one retention batch deleted."""

    deliveries: int
    attempts: int
    eml_paths: list[str]


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt, as stored."""

    status: int
    response_code: int
    latency_ms: float
    error: str
    attempt_time: dt.datetime
    next_attempt_time: dt.datetime | None


class _Duplicate(Exception):
    """The idempotency key was used before; roll our transaction back."""


class Repository:
    """Data access for notifications, endpoints, deliveries and attempts.

    Args:
        pool: A pool whose search path starts with the ``notification`` schema.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- notifications -----------------------------------------------------------------

    async def create_notification(
        self, new: NewNotification, *, type_matches: Any
    ) -> tuple[asyncpg.Record, bool, int]:
        """Stores a notification and its outbox rows in one transaction.

        A key used before returns the first notification and writes nothing. (Only when two
        in-app-only calls with one key race, the loser may consume a sequence number: the
        stream then has a gap, which readers never wait on.)

        Args:
            new: The notification.
            type_matches: ``(filters, type) -> bool`` choosing the webhook endpoints.

        Returns:
            ``(row, created, deliveries)``: ``created`` is False when the idempotency key
            was already used (``row`` is then the first notification).
        """
        if CHANNEL_EMAIL not in new.channels and CHANNEL_WEBHOOK not in new.channels:
            # In-app only: one statement, no explicit transaction (the common, fast path).
            row = await self.pool.fetchrow(_INSERT_NOTIFICATION, *self._insert_args(new))
            if row is not None:
                return row, True, 0
            return await self._first(new), False, 0
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._insert_with_deliveries(conn, new, type_matches)
        except _Duplicate:
            return await self._first(new), False, 0

    async def _first(self, new: NewNotification) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE org_id = $1 AND idempotency_key = $2",
            new.org_id,
            new.idempotency_key,
        )
        assert row is not None  # our insert gave way to it, so it is committed
        return row

    @staticmethod
    def _insert_args(new: NewNotification) -> tuple[Any, ...]:
        return (
            uuid.uuid4(),
            new.org_id,
            new.user_id,
            new.type,
            new.title,
            new.body,
            new.link,
            new.metadata,
            new.channels,
            new.email,
            new.idempotency_key,
            CHANNEL_IN_APP in new.channels,
        )

    async def _insert_with_deliveries(
        self, conn: asyncpg.Connection, new: NewNotification, type_matches: Any
    ) -> tuple[asyncpg.Record, bool, int]:
        row = await conn.fetchrow(_INSERT_NOTIFICATION, *self._insert_args(new))
        if row is None:
            # Used before (or concurrently): roll back, so the sequence is not consumed.
            raise _Duplicate
        targets: list[tuple[int, uuid.UUID | None]] = []
        if CHANNEL_EMAIL in new.channels:
            targets.append((CHANNEL_EMAIL, None))
        if CHANNEL_WEBHOOK in new.channels:
            endpoints = await conn.fetch(
                "SELECT id, event_types FROM webhook_endpoints"
                " WHERE org_id = $1 AND delete_time IS NULL ORDER BY position",
                new.org_id,
            )
            targets += [
                (CHANNEL_WEBHOOK, e["id"])
                for e in endpoints
                if type_matches(e["event_types"], new.type)
            ]
        if targets:
            rows = []
            for channel, endpoint in targets:
                delivery_id = uuid.uuid4()
                rows.append(
                    (
                        delivery_id,
                        new.org_id,
                        row["id"],
                        channel,
                        endpoint,
                        f"msg_{delivery_id.hex}",
                    )
                )
            await conn.executemany(
                "INSERT INTO deliveries (id, org_id, notification_id, channel, endpoint_id,"
                " message_id) VALUES ($1, $2, $3, $4, $5, $6)",
                rows,
            )
            await conn.execute("SELECT pg_notify($1, '')", DELIVERY_CHANNEL)
        return row, True, len(targets)

    async def list_notifications(
        self, org: str, user: str, *, unread_only: bool, before_sequence: int | None, limit: int
    ) -> list[asyncpg.Record]:
        """The user's in-app notifications, newest first, below ``before_sequence``."""
        return await self.pool.fetch(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE org_id = $1 AND user_id = $2 AND sequence > 0"
            " AND ($3::bool IS FALSE OR read_time IS NULL)"
            " AND ($4::bigint IS NULL OR sequence < $4)"
            " ORDER BY sequence DESC LIMIT $5",
            org,
            user,
            unread_only,
            before_sequence,
            limit,
        )

    async def unread_count(self, org: str, user: str) -> int:
        """How many in-app notifications of the user are unread."""
        count = await self.pool.fetchval(
            "SELECT count(*) FROM notifications"
            " WHERE org_id = $1 AND user_id = $2 AND sequence > 0 AND read_time IS NULL",
            org,
            user,
        )
        return int(count)

    async def notifications_after(
        self, org: str, user: str, after_sequence: int, limit: int
    ) -> list[asyncpg.Record]:
        """The user's in-app notifications after ``after_sequence``, oldest first."""
        return await self.pool.fetch(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE org_id = $1 AND user_id = $2 AND sequence > $3"
            " ORDER BY sequence LIMIT $4",
            org,
            user,
            after_sequence,
            limit,
        )

    async def mark_read(
        self, org: str, user: str, notification_id: uuid.UUID
    ) -> asyncpg.Record | None:
        """Marks the user's notification read (keeping the first read time)."""
        return await self.pool.fetchrow(
            "UPDATE notifications SET read_time = coalesce(read_time, now())"
            " WHERE id = $1 AND org_id = $2 AND user_id = $3"
            f" RETURNING {_NOTIFICATION_COLUMNS}",
            notification_id,
            org,
            user,
        )

    async def get_notification(self, org: str, notification_id: uuid.UUID) -> asyncpg.Record | None:
        """One notification of the organization."""
        return await self.pool.fetchrow(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1 AND org_id = $2",
            notification_id,
            org,
        )

    # -- webhook endpoints -------------------------------------------------------------

    async def create_endpoint(
        self,
        org: str,
        *,
        endpoint_id: uuid.UUID,
        url: str,
        event_types: Sequence[str],
        description: str,
        secret: str,
        request_id: str,
    ) -> asyncpg.Record:
        """Stores an endpoint; with a ``request_id`` seen before, returns that endpoint.

        ``secret`` is stored as given (sealed for ``endpoint_id`` by the caller); the
        returned row is another endpoint's when the ``request_id`` was used before.
        """
        row = await self.pool.fetchrow(
            "INSERT INTO webhook_endpoints (id, org_id, url, event_types, description, secret,"
            " request_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (org_id, request_id) WHERE request_id <> '' DO NOTHING"
            f" RETURNING {_ENDPOINT_COLUMNS}",
            endpoint_id,
            org,
            url,
            list(event_types),
            description,
            secret,
            request_id,
        )
        if row is None:
            row = await self.pool.fetchrow(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                " WHERE org_id = $1 AND request_id = $2",
                org,
                request_id,
            )
            assert row is not None
        return row

    async def list_endpoints(
        self, org: str, after_position: int, limit: int
    ) -> list[asyncpg.Record]:
        """The organization's live endpoints in creation order."""
        return await self.pool.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
            " WHERE org_id = $1 AND delete_time IS NULL AND position > $2"
            " ORDER BY position LIMIT $3",
            org,
            after_position,
            limit,
        )

    async def endpoint_exists(self, org: str, endpoint_id: uuid.UUID) -> bool:
        """Whether the organization has this (not deleted) endpoint."""
        found = await self.pool.fetchval(
            "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND org_id = $2 AND delete_time IS NULL",
            endpoint_id,
            org,
        )
        return found is not None

    async def delete_endpoint(self, org: str, endpoint_id: uuid.UUID) -> bool:
        """Soft-deletes an endpoint (its attempts stay) and abandons its pending deliveries.

        Its secrets are erased: nothing is signed for a deleted endpoint any more.

        Returns:
            False when the organization has no such endpoint.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE webhook_endpoints SET delete_time = now(), secret = '',"
                " previous_secret = NULL WHERE id = $1 AND org_id = $2 AND delete_time IS NULL RETURNING id",
                endpoint_id,
                org,
            )
            if found is None:
                return False
            await conn.execute(
                "UPDATE deliveries SET status = $2, claim_token = NULL,"
                " last_error = 'endpoint deleted', update_time = now()"
                " WHERE endpoint_id = $1 AND status IN (1, 3)",
                endpoint_id,
                FAILED,
            )
        return True

    async def rotate_secret(
        self,
        org: str,
        endpoint_id: uuid.UUID,
        grace_seconds: int,
        reseal: Callable[[str], tuple[str, str | None]],
    ) -> asyncpg.Record | None:
        """Replaces the endpoint's secret; the old one signs on for ``grace_seconds``.

        Args:
            org: The caller's organization.
            endpoint_id: The endpoint.
            grace_seconds: How long the previous secret stays live (0: not at all).
            reseal: ``current stored secret -> (new stored secret, stored previous secret or
                None)``; called with the row locked, so concurrent rotations serialize.

        Returns:
            The endpoint, or None when the organization has no such endpoint.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT secret FROM webhook_endpoints"
                " WHERE id = $1 AND org_id = $2 AND delete_time IS NULL FOR UPDATE",
                endpoint_id,
                org,
            )
            if current is None:
                return None
            secret, previous = reseal(current)
            row: asyncpg.Record | None = await conn.fetchrow(
                "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3,"
                " previous_secret_expire_time = now() + make_interval(secs => $4)"
                f" WHERE id = $1 RETURNING {_ENDPOINT_COLUMNS}",
                endpoint_id,
                secret,
                previous,
                float(grace_seconds),
            )
            return row

    async def endpoints_to_reseal(
        self, active_prefix: str, after_position: int, limit: int
    ) -> list[asyncpg.Record]:
        """Endpoints (of every organization) with a secret not stored under ``active_prefix``.

        Maintenance, like the dispatcher's queries: it re-encrypts rows at start.
        """
        return await self.pool.fetch(
            "SELECT id, secret, previous_secret, position FROM webhook_endpoints"
            " WHERE position > $1 AND ((secret <> '' AND NOT starts_with(secret, $2))"
            " OR (previous_secret IS NOT NULL AND NOT starts_with(previous_secret, $2)))"
            " ORDER BY position LIMIT $3",
            after_position,
            active_prefix,
            limit,
        )

    async def replace_secrets(
        self,
        endpoint_id: uuid.UUID,
        old: tuple[str, str | None],
        new: tuple[str, str | None],
    ) -> bool:
        """Swaps an endpoint's stored ``(secret, previous_secret)`` if still ``old``.

        The compare makes a concurrent rotation (or another replica's re-encryption) win
        instead of being overwritten.
        """
        done = await self.pool.fetchval(
            "UPDATE webhook_endpoints SET secret = $4, previous_secret = $5"
            " WHERE id = $1 AND secret = $2 AND previous_secret IS NOT DISTINCT FROM $3"
            " RETURNING id",
            endpoint_id,
            *old,
            *new,
        )
        return done is not None

    # -- attempts ----------------------------------------------------------------------

    async def list_attempts(
        self,
        org: str,
        *,
        notification_id: uuid.UUID | None,
        endpoint_id: uuid.UUID | None,
        before_position: int | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Attempts of a notification and/or endpoint, newest first."""
        return await self.pool.fetch(
            f"SELECT {_ATTEMPT_COLUMNS} FROM delivery_attempts"
            " WHERE org_id = $1"
            " AND ($2::uuid IS NULL OR notification_id = $2)"
            " AND ($3::uuid IS NULL OR endpoint_id = $3)"
            " AND ($4::bigint IS NULL OR position < $4)"
            " ORDER BY position DESC LIMIT $5",
            org,
            notification_id,
            endpoint_id,
            before_position,
            limit,
        )

    # -- the dispatcher's outbox queries -------------------------------------------------

    async def claim_due(
        self, limit: int, lease_seconds: float, token: uuid.UUID
    ) -> list[DeliveryJob]:
        """Claims up to ``limit`` due deliveries for one lease.

        ``SKIP LOCKED`` lets replicas claim concurrently without waiting on each other;
        moving ``next_attempt_time`` a lease ahead is the claim, so a claimer that dies
        leaves a row that becomes due again by itself.
        """
        rows = await self.pool.fetch(
            """
            WITH due AS (
                SELECT id FROM deliveries
                WHERE status IN (1, 3) AND next_attempt_time <= now()
                ORDER BY next_attempt_time
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE deliveries d
                SET next_attempt_time = now() + make_interval(secs => $2),
                    claim_token = $3, attempts = d.attempts + 1, update_time = now()
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.org_id, d.notification_id, d.channel, d.endpoint_id,
                          d.message_id, d.attempts
            )
            SELECT c.id AS delivery_id, c.org_id, c.notification_id, c.channel, c.endpoint_id,
                   c.message_id, c.attempts AS attempt_number, n.user_id, n.type, n.title,
                   n.body, n.link, n.metadata, n.email, n.create_time, e.url, e.secret,
                   CASE WHEN e.previous_secret_expire_time > now() THEN e.previous_secret END
                       AS previous_secret,
                   e.delete_time IS NOT NULL AS endpoint_deleted
            FROM claimed c
            JOIN notifications n ON n.id = c.notification_id
            LEFT JOIN webhook_endpoints e ON e.id = c.endpoint_id
            """,
            limit,
            float(lease_seconds),
            token,
        )
        return [
            DeliveryJob(
                delivery_id=r["delivery_id"],
                org_id=r["org_id"],
                notification_id=r["notification_id"],
                channel=r["channel"],
                endpoint_id=r["endpoint_id"],
                message_id=r["message_id"],
                attempt_number=r["attempt_number"],
                user_id=r["user_id"],
                type=r["type"],
                title=r["title"],
                body=r["body"],
                link=r["link"],
                metadata=r["metadata"],
                email=r["email"],
                create_time=r["create_time"],
                url=r["url"],
                secrets=tuple(s for s in (r["secret"], r["previous_secret"]) if s),
                endpoint_deleted=bool(r["endpoint_deleted"]),
            )
            for r in rows
        ]

    async def finish_attempt(
        self, job: DeliveryJob, token: uuid.UUID, attempt: AttemptRecord, *, record: bool = True
    ) -> bool:
        """Records an attempt and moves the delivery on, in one transaction.

        The delivery row changes only while our claim holds (its token matches); the
        attempt is recorded either way, because it did happen.

        Returns:
            Whether the claim still held.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if record:
                await conn.execute(
                    "INSERT INTO delivery_attempts (id, org_id, delivery_id, notification_id,"
                    " channel, endpoint_id, message_id, attempt_number, status, response_code,"
                    " latency_ms, error, attempt_time, next_attempt_time)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    uuid.uuid4(),
                    job.org_id,
                    job.delivery_id,
                    job.notification_id,
                    job.channel,
                    job.endpoint_id,
                    job.message_id,
                    job.attempt_number,
                    attempt.status,
                    attempt.response_code,
                    attempt.latency_ms,
                    attempt.error,
                    attempt.attempt_time,
                    attempt.next_attempt_time,
                )
            held = await conn.fetchval(
                "UPDATE deliveries SET status = $3,"
                " next_attempt_time = coalesce($4, next_attempt_time), claim_token = NULL,"
                " last_error = $5, update_time = now()"
                " WHERE id = $1 AND claim_token = $2 RETURNING id",
                job.delivery_id,
                token,
                attempt.status,
                attempt.next_attempt_time,
                attempt.error,
            )
        return held is not None

    async def release(self, claims: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Gives back claimed deliveries not attempted to the end (shutdown): due now, and
        the claim does not count as an attempt."""
        if not claims:
            return
        await self.pool.executemany(
            "UPDATE deliveries SET next_attempt_time = now(), claim_token = NULL,"
            " attempts = greatest(attempts - 1, 0), update_time = now()"
            " WHERE id = $1 AND claim_token = $2",
            list(claims),
        )

    async def store_outbox_email(
        self,
        job: DeliveryJob,
        *,
        to_address: str,
        subject: str,
        text_body: str,
        html_body: str,
        raw_message: str,
        eml_path: str,
    ) -> None:
        """Keeps an email that had no SMTP server to go to (once per delivery)."""
        await self.pool.execute(
            "INSERT INTO email_outbox (id, org_id, notification_id, delivery_id, to_address,"
            " subject, text_body, html_body, raw_message, eml_path)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (delivery_id) DO NOTHING",
            uuid.uuid4(),
            job.org_id,
            job.notification_id,
            job.delivery_id,
            to_address,
            subject,
            text_body,
            html_body,
            raw_message,
            eml_path,
        )

    # -- retention (the dispatcher's purge) ----------------------------------------------

    async def purge_finished_deliveries(self, before: dt.datetime, limit: int) -> PurgedBatch:
        """Deletes up to ``limit`` finished deliveries last changed before ``before``, with
        their attempts and kept emails, in one short statement.

        Only succeeded (2) and failed (4) deliveries qualify: pending and retrying ones are
        work still to do, whatever their age. ``SKIP LOCKED`` keeps replicas purging at the
        same time out of each other's way. (The foreign keys from attempts and the email
        outbox are checked at the end of the statement, when their rows are gone too.)
        """
        row = await self.pool.fetchrow(
            """
            WITH doomed AS (
                SELECT id FROM deliveries
                WHERE status IN (2, 4) AND update_time < $1
                ORDER BY update_time
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), attempts AS (
                DELETE FROM delivery_attempts a USING doomed
                WHERE a.delivery_id = doomed.id RETURNING 1
            ), emails AS (
                DELETE FROM email_outbox o USING doomed
                WHERE o.delivery_id = doomed.id RETURNING o.eml_path
            ), gone AS (
                DELETE FROM deliveries d USING doomed WHERE d.id = doomed.id RETURNING 1
            )
            SELECT (SELECT count(*) FROM gone) AS deliveries,
                   (SELECT count(*) FROM attempts) AS attempts,
                   ARRAY(SELECT eml_path FROM emails) AS eml_paths
            """,
            before,
            limit,
        )
        assert row is not None
        return PurgedBatch(int(row["deliveries"]), int(row["attempts"]), list(row["eml_paths"]))

    async def purge_notifications(self, before: dt.datetime, limit: int) -> int:
        """Deletes up to ``limit`` notifications created before ``before`` that are done.

        Done: no delivery row left (those are purged first, once finished), and either not
        in-app (``sequence = 0``: only a delivery record) or read. Unread in-app
        notifications stay whatever their age: the user has not seen them. The
        ``user_sequences`` counters stay too, so sequences never restart and a watcher
        resuming after N is never handed an old number again.
        """
        count = await self.pool.fetchval(
            """
            WITH doomed AS (
                SELECT id FROM notifications n
                WHERE create_time < $1 AND (sequence = 0 OR read_time IS NOT NULL)
                  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = n.id)
                ORDER BY create_time
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), gone AS (
                DELETE FROM notifications n USING doomed WHERE n.id = doomed.id RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            before,
            limit,
        )
        return int(count)
