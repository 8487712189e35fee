"""The LISTEN hub: one PostgreSQL ``LISTEN`` connection per process, fanned out to watchers.

Every event commit ``NOTIFY``s ``store.EVENTS_CHANNEL`` with ``"<report_id>:<sequence>"``.
The hub holds the one listening connection of the process and wakes the subscriptions of
that report. A notification carries no event data: it only says "there is something up to
sequence N", and the watcher reads the events from the database. So a slow reader costs a
number and a flag (latest wins, memory stays bounded however far behind it is), every
replica serves the same stream from the same rows, and a lost notification is harmless as
long as someone wakes the watcher afterwards — which the hub does for everyone after it
reconnects a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import asyncpg

from reporting_svc.store import EVENTS_CHANNEL
from surveymesh.telemetry import WATCH_SUBSCRIBERS

log = logging.getLogger(__name__)


class Subscription:
    """What one watcher of one report knows: the newest notified sequence and a wake-up flag."""

    def __init__(self, report_id: str) -> None:
        self.report_id = report_id
        self.latest = 0
        self._wake = asyncio.Event()

    def notify(self, sequence: int) -> None:
        """Records that events up to ``sequence`` exist (latest wins) and wakes the watcher."""
        if sequence > self.latest:
            self.latest = sequence
        self._wake.set()

    def wake(self) -> None:
        """Wakes the watcher without news, so it re-reads the database (reconnects, shutdown)."""
        self._wake.set()

    def clear(self) -> None:
        """Arms the flag; call it before reading, so no wake-up between read and wait is lost."""
        self._wake.clear()

    async def wait(self, seconds: float) -> None:
        """Waits until woken or ``seconds`` passed (a safety net poll)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


class EventHub:
    """Holds the process's LISTEN connection and fans notifications out by report id.

    Args:
        dsn: The reporting database.
        check_interval: Seconds between liveness checks of the listening connection.
        reconnect_delay: First delay between reconnect attempts (doubles up to 5 s).
    """

    def __init__(
        self, dsn: str, *, check_interval: float = 5.0, reconnect_delay: float = 0.2
    ) -> None:
        self._dsn = dsn
        self._check_interval = check_interval
        self._reconnect_delay = reconnect_delay
        self._subs: dict[str, set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.closed = False
        self.reconnects = 0

    async def start(self) -> None:
        """Connects and starts listening; fails if the database is unreachable at start."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="reporting-event-hub")

    async def close(self) -> None:
        """Stops listening and wakes every watcher, whose streams then end."""
        self.closed = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()
        self._wake_all()

    @property
    def connected(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._conn is not None and not self._conn.is_closed()

    @contextlib.contextmanager
    def subscribe(self, report_id: str) -> Iterator[Subscription]:
        """Registers a watcher of ``report_id`` for the ``with`` block."""
        sub = Subscription(report_id)
        self._subs.setdefault(report_id, set()).add(sub)
        WATCH_SUBSCRIBERS.inc()
        try:
            yield sub
        finally:
            WATCH_SUBSCRIBERS.dec()
            subs = self._subs.get(report_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[report_id]

    @property
    def subscriber_count(self) -> int:
        """Number of open subscriptions (for tests and metrics)."""
        return sum(len(s) for s in self._subs.values())

    def listener_pid(self) -> int | None:
        """The backend pid of the LISTEN connection (tests kill it to prove reconnection)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        report_id, _, seq = payload.rpartition(":")
        subs = self._subs.get(report_id)
        if not subs:
            return
        try:
            sequence = int(seq)
        except ValueError:
            log.warning("ignoring malformed notification %r", payload)
            return
        for sub in subs:
            sub.notify(sequence)

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.wake()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "surveymesh-reporting-listen"}
        )
        try:
            await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_terminate)
        self._lost.clear()
        self._conn = conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._check_interval)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    async def _supervise(self) -> None:
        # Waits for a termination callback or a failed liveness check (a half-open TCP
        # connection sends no termination), then reconnects with backoff. Notifications sent
        # while disconnected are lost, so after re-LISTENing every watcher re-reads the DB.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_interval)
            if await self._alive():
                continue
            log.warning("event LISTEN connection lost; reconnecting")
            await self._disconnect()
            delay = self._reconnect_delay
            while True:
                try:
                    await self._connect()
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                    log.warning("event LISTEN reconnect failed (%s); retrying in %.1fs", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self.reconnects += 1
            log.info("event LISTEN connection re-established")
            self._wake_all()
