"""In-app notifications: sending (with its outbox), listing, reading and live watching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg

from notification_svc.live import Hub
from notification_svc.repository import CHANNEL_IN_APP, NewNotification, Repository
from notification_svc.validation import type_matches
from surveymesh.auth import Principal
from surveymesh.errors import FieldViolation, InvalidArgument, NotFound
from surveymesh.paging import decode_token, encode_token
from surveymesh.telemetry import record_delivery

log = logging.getLogger(__name__)

SEND_ROLES = frozenset({"service", "admin"})
# Roles that see every attempt of the organization (others: their own notifications').
ATTEMPT_READER_ROLES = frozenset({"service", "admin"})
# Rows read per query by a watching stream.
WATCH_BATCH = 100
# A watcher re-reads this often even without a poke: a safety net should a NOTIFY be lost
# in a way the listener cannot notice.
WATCH_RESYNC_SECONDS = 30.0


@dataclass(frozen=True)
class Page:
    """One page of a listing."""

    rows: list[asyncpg.Record]
    next_page_token: str


def _missing_notification() -> NotFound:
    return NotFound("notification not found", reason="NOTIFICATION_NOT_FOUND")


class Notifications:
    """The notification operations behind the RPCs.

    Args:
        repo: The repository.
        hub: This process's live fan-out.
        on_deliveries: Called after a send created deliveries (wakes the local dispatcher
            without a database round trip).
    """

    def __init__(self, repo: Repository, hub: Hub, on_deliveries: Callable[[], None]) -> None:
        self._repo = repo
        self._hub = hub
        self._on_deliveries = on_deliveries

    async def send(self, new: NewNotification) -> tuple[asyncpg.Record, bool]:
        """Stores a notification with its deliveries (idempotent by key).

        Returns:
            ``(row, duplicate)``.
        """
        row, created, deliveries = await self._repo.create_notification(
            new, type_matches=type_matches
        )
        if created and CHANNEL_IN_APP in new.channels:
            # In-app delivery is the stored row itself (streamed by WatchNotifications).
            record_delivery("in_app", "succeeded")
        if deliveries:
            self._on_deliveries()
        return row, not created

    async def list(
        self, who: Principal, *, unread_only: bool, page_size: int, page_token: str
    ) -> tuple[Page, int]:
        """The caller's in-app notifications, newest first, and the unread count."""
        method = f"ListNotifications:{who.user}:{int(unread_only)}"
        position = decode_token(page_token, method, who.org)
        before = _int_position(position, "s")
        rows = await self._repo.list_notifications(
            who.org, who.user, unread_only=unread_only, before_sequence=before, limit=page_size + 1
        )
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            token = encode_token(method, who.org, {"s": rows[-1]["sequence"]})
        return Page(rows, token), await self._repo.unread_count(who.org, who.user)

    async def mark_read(self, who: Principal, notification_id: uuid.UUID | None) -> asyncpg.Record:
        """Marks one of the caller's notifications read (again: no change)."""
        row = None
        if notification_id is not None:
            row = await self._repo.mark_read(who.org, who.user, notification_id)
        if row is None:
            raise _missing_notification()
        return row

    async def watch(self, who: Principal, after_sequence: int) -> AsyncIterator[asyncpg.Record]:
        """The caller's in-app notifications after ``after_sequence``, then live ones.

        Subscribes before the first read and clears the poke before every read, so a
        notification committed at any moment is either in this read or pokes the next
        one: no gaps. Rows come in sequence order and ``last`` only grows: no repeats.
        """
        sub = self._hub.subscribe(who.org, who.user)
        last = after_sequence
        try:
            while True:
                sub.event.clear()
                rows = await self._repo.notifications_after(who.org, who.user, last, WATCH_BATCH)
                for row in rows:
                    last = row["sequence"]
                    yield row
                if len(rows) == WATCH_BATCH or sub.latest > last:
                    continue
                if self._hub.closed:
                    return  # shutting down: the client resumes elsewhere after `last`
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.event.wait(), WATCH_RESYNC_SECONDS)
        finally:
            self._hub.unsubscribe(sub)

    async def list_attempts(
        self,
        who: Principal,
        *,
        notification_id: str,
        endpoint_id: str,
        page_size: int,
        page_token: str,
    ) -> Page:
        """Delivery attempts of a notification and/or endpoint, newest first.

        Admins and services see the organization's attempts; anyone else only those of
        notifications sent to them. Whatever the caller may not see is NOT_FOUND.
        """
        nid = eid = None
        if notification_id:
            nid = _uuid_or_none(notification_id)
            row = await self._repo.get_notification(who.org, nid) if nid else None
            if row is None or (
                not who.has_any(ATTEMPT_READER_ROLES) and row["user_id"] != who.user
            ):
                raise _missing_notification()
        if endpoint_id:
            eid = _uuid_or_none(endpoint_id)
            # Endpoints are an admin matter; to anyone else they do not exist.
            if (
                eid is None
                or not who.has_any(ATTEMPT_READER_ROLES)
                or not await self._repo.endpoint_exists(who.org, eid)
            ):
                raise NotFound("webhook endpoint not found", reason="ENDPOINT_NOT_FOUND")
        method = f"ListDeliveryAttempts:{nid}:{eid}"
        before = _int_position(decode_token(page_token, method, who.org), "p")
        rows = await self._repo.list_attempts(
            who.org,
            notification_id=nid,
            endpoint_id=eid,
            before_position=before,
            limit=page_size + 1,
        )
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            token = encode_token(method, who.org, {"p": rows[-1]["position"]})
        return Page(rows, token)

    async def list_endpoints(self, who: Principal, *, page_size: int, page_token: str) -> Page:
        """The organization's webhook endpoints in creation order."""
        method = "ListWebhookEndpoints"
        after = _int_position(decode_token(page_token, method, who.org), "p") or 0
        rows = await self._repo.list_endpoints(who.org, after, page_size + 1)
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            token = encode_token(method, who.org, {"p": rows[-1]["position"]})
        return Page(rows, token)

    async def delete_endpoint(self, who: Principal, endpoint_id: uuid.UUID | None) -> None:
        """Deletes an endpoint and abandons its pending deliveries."""
        if endpoint_id is None or not await self._repo.delete_endpoint(who.org, endpoint_id):
            raise NotFound("webhook endpoint not found", reason="ENDPOINT_NOT_FOUND")


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _int_position(position: dict[str, object] | None, key: str) -> int | None:
    if position is None:
        return None
    value = position.get(key)
    if not isinstance(value, int):
        raise InvalidArgument(
            [
                FieldViolation(
                    "page_token", "not a page token of this listing", "INVALID_PAGE_TOKEN"
                )
            ],
            reason="INVALID_PAGE_TOKEN",
        )
    return value
