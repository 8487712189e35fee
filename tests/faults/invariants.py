"""What "nothing lost, nothing duplicated" means, checked against the databases.

After any fault, every report must be terminal (COMPLETED, or cleanly FAILED/CANCELLED)
and its rows must be exactly what one undisturbed run would have written:

- events: sequences 1..last_sequence without a gap, ``reports.last_sequence`` equal to the
  highest, exactly one terminal event and it is the last, matching the report's state;
- components: one row per type, each announced by exactly one COMPONENT_READY event, and
  for a COMPLETED report exactly the set the summary lists;
- snapshot: as many stored responses as the snapshot row counted, and it is done;
- notifications: exactly one for a COMPLETED report (none for FAILED/CANCELLED), with one
  webhook delivery row per endpoint, and the receiver saw only that delivery's id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import orjson
from temporalio.client import Client, WorkflowExecutionStatus

from bench.survey_data import create_survey, generate, import_responses
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.integration.proc_mesh import ProcMesh
from tests.integration.test_notification_webhooks import Receiver

S = report_pb2.ReportState
E = report_pb2.ReportEventType
K = report_pb2.ReportKind
Md = tuple[tuple[str, str], ...]
TERMINAL_STATES = {S.REPORT_STATE_COMPLETED, S.REPORT_STATE_FAILED, S.REPORT_STATE_CANCELLED}
TERMINAL_EVENTS = {
    E.REPORT_EVENT_TYPE_COMPLETED,
    E.REPORT_EVENT_TYPE_FAILED,
    E.REPORT_EVENT_TYPE_CANCELLED,
}
EVENT_OF_STATE = {
    S.REPORT_STATE_COMPLETED: E.REPORT_EVENT_TYPE_COMPLETED,
    S.REPORT_STATE_FAILED: E.REPORT_EVENT_TYPE_FAILED,
    S.REPORT_STATE_CANCELLED: E.REPORT_EVENT_TYPE_CANCELLED,
}
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def log(message: str) -> None:
    """Fault-suite progress and measured figures, shown with ``pytest -s`` and in CI logs."""
    print(f"[faults] {message}", flush=True)


@dataclass
class Recovery:
    """Measures how long a fault took to heal, from the moment it was repaired."""

    name: str
    started: float = field(default_factory=time.monotonic)

    def done(self, what: str = "recovered") -> float:
        """Prints and returns the seconds since the start."""
        seconds = time.monotonic() - self.started
        log(f"RECOVERY {self.name}: {what} in {seconds:.2f}s")
        return seconds


async def retrying(
    fn: Callable[[], Any], *, within: float = 60.0, codes: set[grpc.StatusCode] = TRANSIENT
) -> Any:
    """Calls ``fn`` until it does not fail with a transient status (what a client does)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await fn()
        except grpc.aio.AioRpcError as err:
            if err.code() not in codes or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def seed_survey(mesh: ProcMesh, md: Md, responses: int, *, seed: int = 7) -> str:
    """Creates a survey with ``responses`` generated responses; returns its id."""
    stub = mesh.delivery()
    survey_id = await retrying(lambda: create_survey(stub, md, f"Fault survey {seed}"))
    rows, _ = generate(responses, seed=seed)
    await import_responses(stub, md, survey_id, rows)
    return str(survey_id)


async def request_report(
    mesh: ProcMesh,
    md: Md,
    survey_id: str,
    *,
    kind: int = K.REPORT_KIND_QUICK,
    request_id: str | None = None,
    within: float = 60.0,
) -> report_pb2.Report:
    """GenerateReport, retried on UNAVAILABLE with the same request id (the contract)."""
    request = rpb.GenerateReportRequest(
        survey_id=survey_id,
        kind=kind,  # type: ignore[arg-type]
        request_id=request_id or uuid.uuid4().hex,
    )
    stub = mesh.reporting()
    reply = await retrying(
        lambda: stub.GenerateReport(request, metadata=md, timeout=15), within=within
    )
    return reply.report


async def register_webhook(mesh: ProcMesh, md_admin: Md, url: str) -> str:
    """Subscribes ``url`` to ``report.completed`` of the caller's org; returns the endpoint id."""
    reply = await mesh.notification().CreateWebhookEndpoint(
        npb.CreateWebhookEndpointRequest(
            url=url, event_types=["report.completed"], request_id=uuid.uuid4().hex
        ),
        metadata=md_admin,
        timeout=10,
    )
    return str(reply.endpoint.id)


async def wait_terminal(
    pool: asyncpg.Pool, report_ids: Sequence[str], *, within: float, mesh: ProcMesh | None = None
) -> dict[str, int]:
    """Waits until every report is terminal; returns their states."""
    deadline = time.monotonic() + within
    while True:
        rows = await pool.fetch(
            "SELECT id::text AS id, state FROM reporting.reports WHERE id = ANY($1::uuid[])",
            list(report_ids),
        )
        states = {r["id"]: r["state"] for r in rows}
        if len(states) == len(set(report_ids)) and set(states.values()) <= TERMINAL_STATES:
            return states
        if time.monotonic() > deadline:
            pending = {
                k: S.Name(S.ValueType(v)) for k, v in states.items() if v not in TERMINAL_STATES
            }
            tail = mesh.logs_tail() if mesh else ""
            raise AssertionError(f"reports not terminal after {within:.0f}s: {pending}\n{tail}")
        await asyncio.sleep(0.25)


async def wait_workflows(temporal: Client, workflow_ids: Iterable[str], *, within: float) -> None:
    """Waits until the workflows closed (their notify step follows the terminal event)."""
    deadline = time.monotonic() + within
    for wid in workflow_ids:
        handle = temporal.get_workflow_handle(wid)
        while True:
            try:
                desc = await handle.describe(rpc_timeout=timedelta(seconds=5))
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, f"workflow {wid} still running"
            await asyncio.sleep(0.25)


async def check_invariants(
    reporting: asyncpg.Pool,
    notification: asyncpg.Pool,
    report_ids: Sequence[str],
    *,
    receiver: Receiver | None = None,
    endpoints: int = 0,
    within: float = 30.0,
) -> dict[str, int]:
    """Asserts the module docstring's invariants for ``report_ids``; returns their states.

    Args:
        reporting: Pool on the reporting database.
        notification: Pool on the notification database.
        report_ids: The reports to check.
        receiver: The webhook receiver, if an endpoint was registered for their org.
        endpoints: Webhook endpoints subscribed to the reports' org.
        within: Seconds to wait for outstanding webhook deliveries.
    """
    states: dict[str, int] = {}
    for rid in report_ids:
        report = await reporting.fetchrow(
            "SELECT state, last_sequence, response_count FROM reporting.reports WHERE id = $1",
            rid,
        )
        assert report is not None, rid
        state = report["state"]
        states[rid] = state
        assert state in TERMINAL_STATES, (rid, S.Name(state))
        events = await reporting.fetch(
            "SELECT sequence, type, component_type FROM reporting.report_events"
            " WHERE report_id = $1 ORDER BY sequence",
            rid,
        )
        sequences = [e["sequence"] for e in events]
        assert sequences == list(range(1, len(events) + 1)), (rid, "gap or repeat", sequences)
        assert report["last_sequence"] == len(events), rid
        terminal = [e["type"] for e in events if e["type"] in TERMINAL_EVENTS]
        assert terminal == [EVENT_OF_STATE[state]], (rid, "terminal events", terminal)
        assert events[-1]["type"] == EVENT_OF_STATE[state], (rid, "terminal is not last")
        ready = [
            e["component_type"] for e in events if e["type"] == E.REPORT_EVENT_TYPE_COMPONENT_READY
        ]
        components = await reporting.fetch(
            "SELECT component_type, data FROM reporting.report_components WHERE report_id = $1",
            rid,
        )
        stored = sorted(c["component_type"] for c in components)
        assert sorted(ready) == stored, (rid, "component rows vs events", ready, stored)
        assert len(set(ready)) == len(ready), (rid, "component announced twice", ready)
        snap = await reporting.fetchrow(
            "SELECT done, copied, (SELECT count(*) FROM reporting.snapshot_responses r"
            "  WHERE r.report_id = s.report_id) AS rows"
            " FROM reporting.snapshots s WHERE report_id = $1",
            rid,
        )
        if state == S.REPORT_STATE_COMPLETED:
            summary = next(
                orjson.loads(c["data"]) for c in components if c["component_type"] == "summary"
            )
            assert sorted(summary["components"]) == stored, (rid, summary["components"], stored)
            assert snap is not None and snap["done"], rid
            assert snap["rows"] == snap["copied"] == report["response_count"], (rid, dict(snap))
        elif snap is not None:
            assert snap["rows"] == snap["copied"], (rid, dict(snap))
    await _check_notifications(notification, states, receiver, endpoints, within)
    return states


async def _check_notifications(
    pool: asyncpg.Pool,
    states: dict[str, int],
    receiver: Receiver | None,
    endpoints: int,
    within: float,
) -> None:
    rows = await pool.fetch(
        "SELECT id::text AS id, metadata->>'report_id' AS report_id"
        " FROM notification.notifications WHERE metadata->>'report_id' = ANY($1::text[])",
        list(states),
    )
    by_report: dict[str, list[str]] = {}
    for r in rows:
        by_report.setdefault(r["report_id"], []).append(r["id"])
    for rid, state in states.items():
        expected = 1 if state == S.REPORT_STATE_COMPLETED else 0
        assert len(by_report.get(rid, [])) == expected, (
            rid,
            S.Name(S.ValueType(state)),
            by_report.get(rid),
        )
    ids = [n for ns in by_report.values() for n in ns]
    if not endpoints:
        return
    deadline = time.monotonic() + within
    while True:
        deliveries = await pool.fetch(
            "SELECT notification_id::text AS nid, message_id, status"
            " FROM notification.deliveries WHERE notification_id = ANY($1::uuid[])"
            " AND endpoint_id IS NOT NULL",
            ids,
        )
        if all(d["status"] == 2 for d in deliveries) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    per_notification: dict[str, list[str]] = {}
    for d in deliveries:
        per_notification.setdefault(d["nid"], []).append(d["message_id"])
    for nid in ids:
        assert len(per_notification.get(nid, [])) == endpoints, (nid, per_notification.get(nid))
    assert all(d["status"] == 2 for d in deliveries), [dict(d) for d in deliveries]
    if receiver is not None:
        message_ids = {d["message_id"] for d in deliveries}
        seen = {r.headers.get("webhook-id") for r in receiver.requests}
        # At-least-once on the wire is allowed, but always with the delivery's one id.
        assert message_ids <= seen, message_ids - seen
        per_report: dict[str, set[str]] = {}
        for r in receiver.requests:
            body = orjson.loads(r.body)
            rid = str((body.get("data") or {}).get("metadata", {}).get("report_id", ""))
            per_report.setdefault(rid, set()).add(str(r.headers.get("webhook-id")))
        for rid, wids in per_report.items():
            if rid in states:
                assert len(wids) == endpoints, (rid, "webhook ids", wids)


async def activity_attempts(temporal: Client, workflow_id: str) -> dict[str, int]:
    """The highest attempt of each activity type in a workflow's history.

    Temporal records a retried activity's ``ActivityTaskStarted`` with the attempt that
    finally ended, so an attempt above 1 proves a retry happened.
    """
    from temporalio.api.enums.v1 import EventType

    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, str] = {}
    attempts: dict[str, int] = {}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            name = scheduled.get(a.scheduled_event_id, "?")
            attempts[name] = max(attempts.get(name, 0), a.attempt)
    return attempts


class Watcher:
    """Follows one report with WatchReport as a careful client does: on a broken stream it
    reconnects with the last sequence it saw, until the terminal event arrives.

    Attributes:
        events: Every event received, in order (repeats would show up here).
        reconnects: How many times the stream had to be re-opened.
    """

    def __init__(self, mesh: ProcMesh, md: Md, report_id: str, *, pace: float = 0.0) -> None:
        self.mesh = mesh
        self.md = md
        self.report_id = report_id
        self.pace = pace
        self.events: list[report_pb2.ReportEvent] = []
        self.reconnects = 0
        self.errors: list[grpc.StatusCode] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        """Starts following in the background."""
        self.task = asyncio.ensure_future(self._run())
        return self

    async def result(self, within: float) -> list[report_pb2.ReportEvent]:
        """Waits for the terminal event; returns every event."""
        assert self.task is not None
        await asyncio.wait_for(self.task, within)
        return self.events

    async def _run(self) -> None:
        while True:
            after = self.events[-1].sequence if self.events else 0
            call = self.mesh.reporting().WatchReport(
                rpb.WatchReportRequest(report_id=self.report_id, after_sequence=after),
                metadata=self.md,
            )
            try:
                async for msg in call:
                    self.events.append(msg.event)
                    if msg.event.type in TERMINAL_EVENTS:
                        return
                    if self.pace:
                        await asyncio.sleep(self.pace)
            except grpc.aio.AioRpcError as err:
                self.errors.append(err.code())
            self.reconnects += 1
            await asyncio.sleep(0.2)

    def check(self) -> None:
        """Gapless from 1, no repeats, ending with exactly one terminal event."""
        sequences = [e.sequence for e in self.events]
        assert sequences == list(range(1, len(sequences) + 1)), sequences
        terminal = [e for e in self.events if e.type in TERMINAL_EVENTS]
        assert len(terminal) == 1 and self.events[-1] is terminal[0]
