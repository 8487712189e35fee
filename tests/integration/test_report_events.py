"""The event hub against real PostgreSQL: one read per commit shared by every follower.

WatchReport's end-to-end semantics (replay, resume, reconnects, replicas) are tested through
gRPC in ``test_reporting_watch.py``; these tests hold the hub itself to what makes it cheap
with many watchers, and to its fallbacks: a follower behind what the report's reader keeps
catches up from the database, and a failed read fails the followers and nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from reporting_svc import store
from reporting_svc.events import TAIL_EVENTS, EventHub
from reporting_svc.reports import StoredEvents
from surveymesh.db import open_database
from surveymesh.reporting.v1 import report_pb2

pytestmark = pytest.mark.integration

S = report_pb2.ReportState
E = report_pb2.ReportEventType


class CountingEvents(StoredEvents):
    """The stored event log, counting its reads; ``fail`` makes the next reads raise it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.reads = 0
        self.fail: Exception | None = None

    async def events_after(
        self, report_id: str, after: int, limit: int
    ) -> list[report_pb2.ReportEvent]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return await super().events_after(report_id, after, limit)


@pytest.fixture(scope="module")
async def db(
    new_database: Callable[[str], Awaitable[str]],
) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    dsn = await new_database("events")
    pool = await open_database(dsn, schema=store.SCHEMA, migrations=store.MIGRATIONS)
    try:
        yield dsn, pool
    finally:
        await pool.close()


@pytest.fixture
async def hub(db: tuple[str, asyncpg.Pool]) -> AsyncIterator[tuple[EventHub, CountingEvents]]:
    dsn, pool = db
    events = CountingEvents(pool)
    hub = EventHub(dsn, events)
    await hub.start()
    try:
        yield hub, events
    finally:
        await hub.close()


async def new_report(pool: asyncpg.Pool) -> str:
    report_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,"
        " workflow_id, creator) VALUES ($1, 'org-events', 'survey-x', $2, $3, '{}'::jsonb, $4,"
        " $4, 'alice')",
        report_id, report_pb2.REPORT_KIND_QUICK, S.REPORT_STATE_QUEUED, uuid.uuid4().hex,
    )  # fmt: skip
    return report_id


async def progress(
    pool: asyncpg.Pool, report_id: str, first: int, n: int, per_commit: int = 1
) -> None:
    for start in range(first, first + n, per_commit):
        await store.append(
            pool,
            report_id,
            *(
                store.Event(
                    type=E.REPORT_EVENT_TYPE_PROGRESS,
                    dedupe_key=f"progress:{i}",
                    state=S.REPORT_STATE_RUNNING,
                    items_done=i,
                )
                for i in range(start, min(first + n, start + per_commit))
            ),
        )


async def complete(pool: asyncpg.Pool, report_id: str) -> None:
    await store.append(
        pool,
        report_id,
        store.Event(
            type=E.REPORT_EVENT_TYPE_COMPLETED,
            dedupe_key="terminal",
            state=S.REPORT_STATE_COMPLETED,
        ),
    )


async def collect(
    events: AsyncIterator[report_pb2.ReportEvent], gate: asyncio.Event | None = None
) -> list[report_pb2.ReportEvent]:
    got = []
    async for event in events:
        got.append(event)
        if gate is not None:
            await gate.wait()
    return got


async def settle(hub: EventHub, followers: int) -> None:
    for _ in range(200):
        if hub.subscriber_count == followers:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # every follower has made its first read and waits


def sequences(events: list[report_pb2.ReportEvent]) -> list[int]:
    return [e.sequence for e in events]


async def test_followers_of_a_report_share_one_read_per_commit(
    hub: tuple[EventHub, CountingEvents], db: tuple[str, asyncpg.Pool]
) -> None:
    h, events = hub
    pool = db[1]
    report_id = await new_report(pool)
    followers = [asyncio.create_task(collect(h.follow(report_id, 0))) for _ in range(40)]
    await settle(h, 40)
    events.reads = 0
    await progress(pool, report_id, 1, 30)
    await complete(pool, report_id)
    got = await asyncio.wait_for(asyncio.gather(*followers), 20)
    for g in got:
        assert sequences(g) == list(range(1, 32))
        assert g[-1].type == E.REPORT_EVENT_TYPE_COMPLETED
        # The very same (decoded once) event objects went to every follower.
        assert all(a is b for a, b in zip(g, got[0], strict=True))
    # One read per commit at most (notifications that arrive together share one), where a
    # read per follower would be 40 times as many.
    assert 1 <= events.reads <= 31
    assert h.subscriber_count == 0


async def test_a_follower_behind_the_tail_catches_up_from_the_database(
    hub: tuple[EventHub, CountingEvents], db: tuple[str, asyncpg.Pool]
) -> None:
    h, _ = hub
    pool = db[1]
    report_id = await new_report(pool)
    live = asyncio.create_task(collect(h.follow(report_id, 0)))
    gate = asyncio.Event()
    slow = asyncio.create_task(collect(h.follow(report_id, 0), gate))
    # Ahead of the log: only what comes after its resume point.
    ahead = asyncio.create_task(collect(h.follow(report_id, TAIL_EVENTS + 50)))
    await settle(h, 3)
    many = TAIL_EVENTS + 200
    await progress(pool, report_id, 1, many, per_commit=50)
    # Joins when the first events are no longer kept in memory.
    late = asyncio.create_task(collect(h.follow(report_id, 0)))
    await asyncio.sleep(0.3)
    gate.set()
    await progress(pool, report_id, many + 1, 20)
    await complete(pool, report_id)
    expected = list(range(1, many + 22))
    for task in (live, slow, late):
        assert sequences(await asyncio.wait_for(task, 20)) == expected
    assert sequences(await asyncio.wait_for(ahead, 5)) == expected[TAIL_EVENTS + 50 :]
    # Once ended, a follow replays (or, at or beyond the end, returns at once) from the DB.
    assert sequences(await collect(h.follow(report_id, many))) == expected[many:]
    assert await collect(h.follow(report_id, many + 21)) == []
    assert await collect(h.follow(report_id, many + 500)) == []
    assert await collect(h.follow(str(uuid.uuid4()), 0)) == []


async def test_a_failed_read_fails_the_followers_and_the_next_follow_starts_afresh(
    hub: tuple[EventHub, CountingEvents], db: tuple[str, asyncpg.Pool]
) -> None:
    h, events = hub
    pool = db[1]
    report_id = await new_report(pool)
    await progress(pool, report_id, 1, 3)
    followers = [asyncio.create_task(collect(h.follow(report_id, 0))) for _ in range(3)]
    await settle(h, 3)
    events.fail = asyncpg.ConnectionDoesNotExistError("connection was closed")
    await progress(pool, report_id, 4, 1)
    for task in followers:
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await asyncio.wait_for(task, 5)
    assert h.subscriber_count == 0
    events.fail = None
    # The client resumes from its last sequence; a new reader serves it.
    resumed = asyncio.create_task(collect(h.follow(report_id, 3)))
    await settle(h, 1)
    await progress(pool, report_id, 5, 2)
    await complete(pool, report_id)
    assert sequences(await asyncio.wait_for(resumed, 10)) == [4, 5, 6, 7]
