"""WatchReport against real PostgreSQL LISTEN/NOTIFY: replay, live follow, reconnects, replicas.

The event log is driven with ``reporting_svc.store`` exactly as the worker drives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from reporting_svc.server import ReportingHandle
from surveymesh.errors import error_details
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from tests.integration.reporting_stack import E, Md, S, Stack, reporting_stack, start_reporting

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
) -> AsyncIterator[Stack]:
    async with reporting_stack(new_database, temporal_env.client, token_for) as s:
        yield s


def assert_gapless(events: list, first: int, last: int) -> None:
    assert [e.sequence for e in events] == list(range(first, last + 1))


async def test_watch_from_the_start_follows_live_events_to_the_terminal_one(
    stack: Stack, org: str
) -> None:
    report = await stack.generate(org)
    watcher = asyncio.create_task(stack.watch(org, report.id))
    await asyncio.sleep(0.2)  # the watcher is now following live
    await stack.progress(report.id, 5)
    await stack.complete(report.id)
    events = await asyncio.wait_for(watcher, 10)
    assert_gapless(events, 1, 7)
    assert events[0].type == E.REPORT_EVENT_TYPE_STATE_CHANGED
    assert [e.items_done for e in events[1:6]] == [1, 2, 3, 4, 5]
    assert (events[-1].type, events[-1].state) == (
        E.REPORT_EVENT_TYPE_COMPLETED,
        S.REPORT_STATE_COMPLETED,
    )
    assert all(e.report_id == report.id for e in events)


async def test_watch_from_the_middle_and_after_completion(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    await stack.progress(report.id, 4)
    middle = asyncio.create_task(stack.watch(org, report.id, after=3))
    await stack.progress(report.id, 2, start=4)
    await stack.complete(report.id)
    assert_gapless(await asyncio.wait_for(middle, 10), 4, 8)
    # After completion: the replay ends by itself, from anywhere up to the end.
    assert_gapless(await asyncio.wait_for(stack.watch(org, report.id), 5), 1, 8)
    assert_gapless(await asyncio.wait_for(stack.watch(org, report.id, after=7), 5), 8, 8)
    assert await asyncio.wait_for(stack.watch(org, report.id, after=8), 5) == []
    assert await asyncio.wait_for(stack.watch(org, report.id, after=100), 5) == []


async def test_reconnecting_with_the_last_sequence_loses_nothing_and_repeats_nothing(
    stack: Stack, org: str
) -> None:
    report = await stack.generate(org)

    async def write() -> None:
        await stack.progress(report.id, 200)
        await stack.complete(report.id)

    writer = asyncio.create_task(write())
    received: list = []
    # Disconnect after every 25 events and resume from the last sequence seen, while the
    # writer keeps committing.
    while not received or received[-1].type != E.REPORT_EVENT_TYPE_COMPLETED:
        after = received[-1].sequence if received else 0
        received += await asyncio.wait_for(stack.watch(org, report.id, after, limit=25), 10)
    await writer
    assert_gapless(received, 1, 202)


async def test_a_slow_reader_of_many_events_sees_a_gapless_sequence(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    call = stack.stub.WatchReport(
        pb.WatchReportRequest(report_id=report.id), metadata=stack.token_for(org, role="viewer")
    )
    writer = asyncio.create_task(stack.progress(report.id, 1000))
    sequences = []
    async for msg in call:
        sequences.append(msg.event.sequence)
        if len(sequences) == 10:
            # Far behind the writer for a while: its notifications coalesce (latest wins)
            # and the watcher catches up from the database in batches.
            await asyncio.sleep(1.0)
        if len(sequences) == 1001:
            break
    await writer
    await stack.complete(report.id)
    async for msg in call:
        sequences.append(msg.event.sequence)
    assert sequences == list(range(1, 1003))


async def test_two_reporting_processes_serve_identical_streams(stack: Stack, org: str) -> None:
    second, channel, stub2 = await start_reporting(stack.settings, stack.temporal)
    try:
        report = await stack.generate(org)
        one = asyncio.create_task(stack.watch(org, report.id))
        two = asyncio.create_task(stack.watch(org, report.id, stub=stub2))
        await asyncio.sleep(0.2)
        await stack.progress(report.id, 100)
        await stack.complete(report.id)
        a, b = await asyncio.wait_for(asyncio.gather(one, two), 20)
        assert_gapless(a, 1, 102)
        assert [e.SerializeToString(deterministic=True) for e in a] == [
            e.SerializeToString(deterministic=True) for e in b
        ]
    finally:
        await channel.close()
        await second.stop(0)


async def test_the_listen_connection_reconnects_and_watchers_miss_nothing(
    stack: Stack, org: str
) -> None:
    handle = stack.reporting.handle
    assert isinstance(handle, ReportingHandle)
    hub = handle.hub
    report = await stack.generate(org)
    watcher = asyncio.create_task(stack.watch(org, report.id))
    await stack.progress(report.id, 3)
    reconnects = hub.reconnects
    pid = hub.listener_pid()
    assert await stack.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    # Commits while the hub is disconnected: their notifications are lost for good.
    await stack.progress(report.id, 3, start=3)
    for _ in range(100):
        if hub.reconnects > reconnects:
            break
        await asyncio.sleep(0.05)
    assert hub.reconnects == reconnects + 1 and hub.listener_pid() != pid
    await stack.progress(report.id, 2, start=6)
    await stack.complete(report.id)
    assert_gapless(await asyncio.wait_for(watcher, 10), 1, 10)


async def test_server_shutdown_ends_open_streams_promptly(stack: Stack, org: str) -> None:
    service, channel, stub = await start_reporting(stack.settings, stack.temporal)
    try:
        report = await stack.generate(org)
        watcher = asyncio.create_task(stack.watch(org, report.id, stub=stub))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await service.stop(30)
        events = await asyncio.wait_for(watcher, 5)
        assert loop.time() - started < 5  # not held for the 30 s grace
        assert [e.sequence for e in events] == [1]
    finally:
        await channel.close()


async def test_watch_rejects_a_negative_sequence(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.watch(org, report.id, after=-1)
    assert (info.value.code(), error_details(info.value).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "NEGATIVE_SEQUENCE",
    )
