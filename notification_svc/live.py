"""Live fan-out of new notifications: one LISTEN connection per process.

Every committed in-app notification NOTIFYs ``(org, user, sequence)``. The process's single
listener hands it to the in-process :class:`Hub`, which tells that user's subscribers
"something up to sequence N is new". A subscriber keeps only that number and an event, and
re-reads the rows from the database itself: a slow reader costs constant memory, and any
replica serves any user because the rows, not the messages, are the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from notification_svc.repository import DELIVERY_CHANNEL, IN_APP_CHANNEL

log = logging.getLogger(__name__)


class Subscription:
    """One stream's interest in one user's notifications."""

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.latest = 0
        self.event = asyncio.Event()

    def poke(self, sequence: int) -> None:
        """Records that notifications up to ``sequence`` exist (0: "maybe something")."""
        self.latest = max(self.latest, sequence)
        self.event.set()


class Hub:
    """In-process registry of subscriptions, keyed by (org, user)."""

    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        self.closed = False

    def close(self) -> None:
        """Ends every watch stream (at shutdown): they return after their current read, so
        a graceful stop is not held for the whole grace period by streams that never end."""
        self.closed = True
        self.poke_all()

    def subscribe(self, org: str, user: str) -> Subscription:
        """Registers interest; call before reading, so nothing falls between read and wait."""
        sub = Subscription((org, user))
        self._subs.setdefault(sub.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forgets a subscription (the stream ended)."""
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    def publish(self, org: str, user: str, sequence: int) -> None:
        """Pokes the user's subscribers."""
        for sub in self._subs.get((org, user), ()):
            sub.poke(sequence)

    def poke_all(self) -> None:
        """Pokes everyone: after the listener reconnects, messages may have been missed."""
        for subs in self._subs.values():
            for sub in subs:
                sub.poke(0)

    @property
    def subscriber_count(self) -> int:
        """How many streams are open in this process."""
        return sum(len(s) for s in self._subs.values())


class Listener:
    """Holds the process's LISTEN connection, reconnecting with backoff when it drops.

    Args:
        dsn: The database URL.
        hub: Receives in-app notifications.
        on_delivery: Called when some process created deliveries (wakes the dispatcher).
    """

    def __init__(self, dsn: str, hub: Hub, on_delivery: Callable[[], None]) -> None:
        self._dsn = dsn
        self._hub = hub
        self._on_delivery = on_delivery
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self, wait_seconds: float = 10.0) -> None:
        """Starts listening and waits until the first connection listens."""
        self._task = asyncio.create_task(self._run(), name="notification-listener")
        try:
            await asyncio.wait_for(self.ready.wait(), wait_seconds)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Closes the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(IN_APP_CHANNEL, self._in_app)
                await conn.add_listener(DELIVERY_CHANNEL, self._delivery)
                if self.ready.is_set():
                    # Reconnected: whatever was NOTIFYed meanwhile is in the tables.
                    self._hub.poke_all()
                    self._on_delivery()
                self.ready.set()
                delay = 0.1
                await lost.wait()
                log.warning("notification listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "notification listener cannot connect (%r); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))

    def _in_app(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = orjson.loads(payload)
            self._hub.publish(data["o"], data["u"], int(data["s"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring malformed notification payload %r", payload[:200])

    def _delivery(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._on_delivery()
