"""The LISTEN hub: one PostgreSQL ``LISTEN`` per process and one reader per watched report.

Every event commit ``NOTIFY``s ``store.EVENTS_CHANNEL`` with ``"<report_id>:<sequence>"``.
A notification carries no event data: it only says "there is something up to sequence N".
The hub holds the one listening connection of the process and, for every report someone
follows, a :class:`ReportTail`: one task that reads the report's new events (``sequence >
last``) once per wake-up and keeps the most recent ones in memory, decoded, for all the
report's followers. So a thousand streams on a report cost one query per commit, not a
thousand, and every follower sends the same event objects.

A follower that is behind the tail's memory (a replay from a resume point, a slow reader
the tail has moved past) catches up from the database in batches on its own, then goes
on from the tail. Memory stays bounded however far behind a reader is: a tail keeps at
most :data:`TAIL_EVENTS` events, a follower holds at most one batch or that many (and the
gRPC stream does not take more than the client reads). Sequences are gapless per
report and commit in order (each append holds the report row's lock until it commits), so
reading ``sequence > last`` never skips an event, every replica serves the same stream
from the same rows, and a lost notification is harmless as long as the tail reads
afterwards — which it does after the hub reconnects a dropped connection, and at least
every :data:`POLL_SECONDS` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import asyncpg

from reporting_svc.store import EVENTS_CHANNEL, TERMINAL_EVENTS, TERMINAL_STATES
from surveymesh.reporting.v1 import report_pb2
from surveymesh.telemetry import WATCH_SUBSCRIBERS

log = logging.getLogger(__name__)

# Events read per query, by a tail or by a follower catching up: a far-behind reader never
# loads the log whole.
READ_BATCH = 500
# Recent events a tail keeps for its followers; a follower further behind reads the database.
TAIL_EVENTS = 512
# A tail re-reads the log at least this often even without a notification (safety net).
POLL_SECONDS = 15.0


class EventLog(Protocol):
    """Where the hub reads reports' events (the reporting database)."""

    async def events_after(
        self, report_id: str, after: int, limit: int
    ) -> Sequence[report_pb2.ReportEvent]:
        """Up to ``limit`` events of the report with a sequence above ``after``, in order."""
        ...

    async def position(self, report_id: str) -> tuple[int, bool] | None:
        """The report's last sequence and whether it has ended, or None if it does not exist."""
        ...


def _is_end(event: report_pb2.ReportEvent) -> bool:
    # Nothing is appended after an event that puts the report into a terminal state.
    return event.type in TERMINAL_EVENTS or event.state in TERMINAL_STATES


class ReportTail:
    """The one reader of a followed report and its most recent events.

    Args:
        report_id: The report.
        events: Where its events are read.

    Attributes:
        followers: Open follows of the report served by this tail.
        started: Whether the first position is known (before, followers read the database).
        last: The newest sequence read (meaningful once ``started``).
        end: The report's last sequence once it has ended, else None.
        error: Why reading failed; the tail is then dead and its followers fail with it.
    """

    def __init__(self, report_id: str, events: EventLog) -> None:
        self.report_id = report_id
        self.followers = 0
        self.started = False
        self.last = 0
        self.end: int | None = None
        self.error: Exception | None = None
        self._events = events
        self._recent: deque[report_pb2.ReportEvent] = deque(maxlen=TAIL_EVENTS)
        self._notified = 0
        self._recheck = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Replaced on every change; followers wait on the one current when they looked.
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change (new events, end, failure, hub closing)."""
        return self._changed

    def signal(self) -> None:
        """Wakes every follower waiting on :attr:`changed`."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def notify(self, sequence: int) -> None:
        """Records that events up to ``sequence`` exist and wakes the reader if they are new."""
        if sequence > self._notified:
            self._notified = sequence
            if sequence > self.last:
                self._wake.set()

    def recheck(self) -> None:
        """Makes the reader read without news (notifications may have been lost)."""
        self._recheck = True
        self._wake.set()

    def since(self, sequence: int) -> list[report_pb2.ReportEvent] | None:
        """The kept events after ``sequence``, or None when some of them are no longer kept."""
        recent = self._recent
        first = recent[0].sequence if recent else self.last + 1
        if sequence < first - 1:
            return None
        return list(itertools.islice(recent, max(0, sequence - first + 1), None))

    def start(self) -> asyncio.Task[None]:
        """Starts the reader task."""
        # A fresh context: the reader serves every follower, so it must not join the trace
        # (or the log fields) of the one whose call happened to start it.
        self._task = asyncio.create_task(
            self._run(), name=f"report-tail-{self.report_id}", context=contextvars.Context()
        )
        return self._task

    def stop(self) -> None:
        """Stops the reader task (the last follower left)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as e:
            log.warning("reading events of report %s failed: %r", self.report_id, e)
            self.error = e
            self.signal()

    async def _follow(self) -> None:
        position = await self._events.position(self.report_id)
        self.last, ended = position or (0, True)
        if ended:
            self.end = self.last
        self.started = True
        self.signal()
        while self.end is None:
            self._wake.clear()
            if self._notified <= self.last and not self._recheck:
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    self._recheck = True
                continue
            self._recheck = False
            events = await self._events.events_after(self.report_id, self.last, READ_BATCH)
            if not events:
                # Notified, yet nothing to read (NOTIFY is sent on commit, so only if the
                # events were deleted): wait for the next notification, do not spin.
                self._notified = self.last
                continue
            self._recent.extend(events)
            self.last = events[-1].sequence
            if _is_end(events[-1]):
                self.end = self.last
            elif len(events) == READ_BATCH:
                self._recheck = True  # there may be more
            self.signal()


class EventHub:
    """Holds the process's LISTEN connection and one reader per followed report.

    Args:
        dsn: The reporting database (for the LISTEN connection).
        events: Reads reports' events; the tails and catching-up followers use it.
        check_interval: Seconds between liveness checks of the listening connection.
        reconnect_delay: First delay between reconnect attempts (doubles up to 5 s).
    """

    def __init__(
        self,
        dsn: str,
        events: EventLog,
        *,
        check_interval: float = 5.0,
        reconnect_delay: float = 0.2,
    ) -> None:
        self._dsn = dsn
        self._events = events
        self._check_interval = check_interval
        self._reconnect_delay = reconnect_delay
        self._tails: dict[str, ReportTail] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.reconnects = 0

    async def start(self) -> None:
        """Connects and starts listening; fails if the database is unreachable at start."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="reporting-event-hub")

    async def close(self) -> None:
        """Stops listening and reading; every follower's stream then ends."""
        self.closed = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for tail in self._tails.values():
            tail.signal()

    @property
    def connected(self) -> bool:
        """Whether the LISTEN connection is up right now."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def subscriber_count(self) -> int:
        """Number of open follows (for tests and metrics)."""
        return sum(t.followers for t in self._tails.values())

    def listener_pid(self) -> int | None:
        """The backend pid of the LISTEN connection (tests kill it to prove reconnection)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def follow(self, report_id: str, after: int) -> AsyncIterator[report_pb2.ReportEvent]:
        """The report's events after ``after``, then live ones, up to its last one.

        Gapless and in sequence order; ends after the terminal event, at once when the
        report has ended at or before ``after`` (or does not exist), and early, without a
        terminal event, when the hub closes. The events are shared with the report's other
        followers: do not modify them.

        Raises:
            Exception: What reading the database raised (the stream's error).
        """
        if self.closed:
            return
        tail = self._tail(report_id)
        tail.followers += 1
        WATCH_SUBSCRIBERS.inc()
        try:
            position = after
            while True:
                # Taken before looking, so a change after the look is never missed.
                changed = tail.changed
                if tail.error is not None:
                    raise tail.error
                kept = tail.since(position) if tail.started else None
                # Behind what the tail keeps (or it has not read yet): catch up from the
                # database.
                events = (
                    kept
                    if kept is not None
                    else await self._events.events_after(report_id, position, READ_BATCH)
                )
                for event in events:
                    position = event.sequence
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
                if events:
                    continue
                # Nothing more will come: the report ended at or before ``position``.
                if tail.end is not None and position >= tail.end:
                    return
                if self.closed:
                    return
                await changed.wait()
        finally:
            WATCH_SUBSCRIBERS.dec()
            tail.followers -= 1
            if tail.followers == 0:
                self._drop(tail)

    def _tail(self, report_id: str) -> ReportTail:
        tail = self._tails.get(report_id)
        if tail is None or tail.error is not None:
            tail = ReportTail(report_id, self._events)
            self._tails[report_id] = tail
            task = tail.start()
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        return tail

    def _drop(self, tail: ReportTail) -> None:
        tail.stop()
        if self._tails.get(tail.report_id) is tail:
            del self._tails[tail.report_id]

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        report_id, _, seq = payload.rpartition(":")
        tail = self._tails.get(report_id)
        if tail is None:
            return
        try:
            sequence = int(seq)
        except ValueError:
            log.warning("ignoring malformed notification %r", payload)
            return
        tail.notify(sequence)

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()

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
        # while disconnected are lost, so after re-LISTENing every tail re-reads the log.
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
            for tail in self._tails.values():
                tail.recheck()
