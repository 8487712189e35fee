"""Pure logic of a report's event reader (:class:`reporting_svc.events.ReportTail`).

The event log here is an in-memory list; the hub against real PostgreSQL is tested in
``tests/integration/test_report_events.py``.
"""

from __future__ import annotations

import asyncio

from reporting_svc.events import READ_BATCH, TAIL_EVENTS, ReportTail
from surveymesh.reporting.v1 import report_pb2

E = report_pb2.ReportEventType
S = report_pb2.ReportState


class MemoryLog:
    """One report's event log in memory, recording the positions it is read from."""

    def __init__(self) -> None:
        self.events: list[report_pb2.ReportEvent] = []
        self.reads: list[int] = []

    def append(self, n: int, *, terminal: bool = False) -> None:
        for _ in range(n):
            seq = len(self.events) + 1
            self.events.append(report_pb2.ReportEvent(report_id="r1", sequence=seq))
        if terminal:
            self.events.append(
                report_pb2.ReportEvent(
                    report_id="r1",
                    sequence=len(self.events) + 1,
                    type=E.REPORT_EVENT_TYPE_COMPLETED,
                    state=S.REPORT_STATE_COMPLETED,
                )
            )

    async def events_after(
        self, report_id: str, after: int, limit: int
    ) -> list[report_pb2.ReportEvent]:
        self.reads.append(after)
        return self.events[after : after + limit]

    async def position(self, report_id: str) -> tuple[int, bool] | None:
        return len(self.events), False


async def changed(tail: ReportTail) -> None:
    await asyncio.wait_for(tail.changed.wait(), 1)


def sequences(events: list[report_pb2.ReportEvent] | None) -> list[int] | None:
    return None if events is None else [e.sequence for e in events]


async def test_notifications_coalesce_into_one_read_and_old_ones_cause_none() -> None:
    log = MemoryLog()
    log.append(2)
    tail = ReportTail("r1", log)
    task = tail.start()
    await changed(tail)
    assert (tail.started, tail.last, log.reads) == (True, 2, [])
    # Before its start the tail keeps nothing: followers read the first events themselves.
    assert sequences(tail.since(0)) is None
    assert sequences(tail.since(2)) == []
    log.append(7)
    for seq in (3, 9, 5):  # arriving together, out of order
        tail.notify(seq)
    await changed(tail)
    assert (tail.last, log.reads) == (9, [2])
    tail.notify(7)  # already read
    await asyncio.sleep(0.05)
    assert log.reads == [2]
    assert sequences(tail.since(2)) == list(range(3, 10))
    assert sequences(tail.since(6)) == [7, 8, 9]
    assert sequences(tail.since(9)) == []
    assert sequences(tail.since(20)) == []  # ahead of the log: nothing yet
    assert sequences(tail.since(1)) is None
    tail.stop()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_tail_keeps_a_bounded_window_and_stops_at_the_end() -> None:
    log = MemoryLog()
    tail = ReportTail("r1", log)
    task = tail.start()
    await changed(tail)
    many = READ_BATCH + TAIL_EVENTS
    log.append(many)
    tail.notify(many)
    while tail.last < many:
        await changed(tail)
    # In batches, one after another without waiting for a notification.
    assert log.reads == list(range(0, many, READ_BATCH))
    first = many - TAIL_EVENTS + 1
    assert sequences(tail.since(first - 1)) == list(range(first, many + 1))
    assert tail.since(first - 2) is None  # a follower that far behind reads the database
    log.append(0, terminal=True)
    tail.recheck()  # as after the LISTEN connection came back: read without news
    await asyncio.wait_for(task, 1)
    assert (tail.end, tail.last) == (many + 1, many + 1)
    assert tail.error is None


async def test_a_failed_read_is_kept_for_the_followers() -> None:
    log = MemoryLog()
    tail = ReportTail("r1", log)
    task = tail.start()
    await changed(tail)

    async def broken(report_id: str, after: int, limit: int) -> list[report_pb2.ReportEvent]:
        raise ConnectionResetError("gone")

    log.events_after = broken  # type: ignore[method-assign]
    tail.notify(1)
    await changed(tail)
    await asyncio.wait_for(task, 1)
    assert isinstance(tail.error, ConnectionResetError)
