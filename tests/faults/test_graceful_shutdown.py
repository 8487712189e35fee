"""Fault 7: SIGTERM to each service with a unary call and a stream in flight, and to a
worker in the middle of an activity.

A service must: report NOT_SERVING first (so balancers stop sending), let the unary call
that is already running finish, end its open stream cleanly (status OK) within the grace
period, and exit 0. The unary call is kept in flight by stalling the service's database
connection (a slow query) for a second around the signal.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.embedded import EmbeddedPostgres
from surveymesh.notification.v1 import notification_pb2 as npb_channel
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.faults.conftest import MeshFactory, Stack
from tests.faults.invariants import (
    Md,
    Recovery,
    activity_attempts,
    check_invariants,
    log,
    request_report,
    seed_survey,
    wait_terminal,
    wait_workflows,
)
from tests.integration.proc_mesh import SERVICES, TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
GRACE = 3.0
STALL = 1.0


@dataclass
class Case:
    """What is in flight at one service when it gets SIGTERM."""

    unary: Callable[[], Awaitable[Any]]
    stream: Callable[[], AsyncIterator[Any]]


async def _sigterm_with_calls_in_flight(
    stack: Stack, proxy: TcpProxy, service: str, case: Case
) -> None:
    mesh = stack.mesh
    proc = mesh.procs[service]
    health = mesh.health(service).Watch(health_pb2.HealthCheckRequest())
    assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
    marks: dict[str, float] = {}

    go = asyncio.Event()

    async def follow_stream() -> int:
        n = 0
        async for _ in case.stream():  # ends without an error, or this raises
            n += 1
            if n == 1:
                await go.wait()  # hold the stream open across the signal
        marks["stream"] = time.monotonic()
        return n

    stream = asyncio.ensure_future(follow_stream())
    await asyncio.sleep(0.5)  # the stream is open and waiting
    proxy.stall()
    unary = asyncio.ensure_future(case.unary())
    await asyncio.sleep(0.3)  # the unary call is inside the server, waiting on its database
    signalled = time.monotonic()
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    status = await asyncio.wait_for(health.read(), 2)
    marks["health"] = time.monotonic()
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    health.cancel()
    go.set()
    await asyncio.sleep(max(0.0, STALL - (time.monotonic() - signalled)))
    proxy.heal()
    await unary  # completes normally
    marks["unary"] = time.monotonic()
    messages = await asyncio.wait_for(stream, GRACE + 2)
    code = await asyncio.wait_for(proc.process.wait(), GRACE + 10)
    marks["exit"] = time.monotonic()
    timing = {k: round(v - signalled, 2) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
    log(f"7 SIGTERM {service}: {timing} (stream delivered {messages} messages)")
    assert code == 0, proc.tail()
    assert marks["health"] < marks["unary"] and marks["health"] < marks["stream"]
    assert marks["stream"] - signalled <= GRACE + 0.5, timing
    assert marks["exit"] - signalled <= GRACE + 5, timing


async def test_sigterm_each_service_with_calls_in_flight(
    make_stack: MeshFactory,
    postgres: EmbeddedPostgres,
    token_for: Callable[..., Md],
    org: str,
) -> None:
    proxies = {s: await TcpProxy(postgres.host, postgres.port).start() for s in SERVICES}

    def via(dsn: str) -> str:
        database = dsn.rsplit("/", 1)[1]
        service = next(s for s in SERVICES if database.startswith(f"fault_{s}_"))
        return dsn.replace(f":{postgres.port}/", f":{proxies[service].port}/")

    try:
        # No worker: the report stays queued, so its WatchReport stream stays open.
        stack = await make_stack(workers=0, dsn_via=via, grace=GRACE)
        mesh = stack.mesh
        md = token_for(org, role="analyst")
        survey_id = await seed_survey(mesh, md, 1500)
        report = await request_report(mesh, md, survey_id)
        # An in-app notification for the viewer, so the notification reads have a row.
        await mesh.notification().SendNotification(
            npb.SendNotificationRequest(
                user_id="alice", type="test.ping", title="hi", body="hi",
                channels=[npb_channel.CHANNEL_IN_APP], idempotency_key=uuid.uuid4().hex,
            ),
            metadata=token_for(org, user="worker", role="service"),
            timeout=10,
        )  # fmt: skip
        viewer = token_for(org, role="viewer")
        cases = {
            "delivery": Case(
                unary=lambda: mesh.delivery().GetSurvey(
                    dpb.GetSurveyRequest(survey_id=survey_id), metadata=md, timeout=GRACE + 5
                ),
                stream=lambda: mesh.delivery().StreamResponses(
                    dpb.StreamResponsesRequest(survey_id=survey_id, batch_size=50),
                    metadata=token_for(org, user="worker", role="service"),
                    timeout=GRACE + 10,
                ),
            ),
            "notification": Case(
                unary=lambda: mesh.notification().ListNotifications(
                    npb.ListNotificationsRequest(page_size=10), metadata=viewer, timeout=GRACE + 5
                ),
                stream=lambda: mesh.notification().WatchNotifications(
                    npb.WatchNotificationsRequest(), metadata=viewer, timeout=GRACE + 10
                ),
            ),
            "reporting": Case(
                unary=lambda: mesh.reporting().GetReport(
                    rpb.GetReportRequest(report_id=report.id), metadata=viewer, timeout=GRACE + 5
                ),
                stream=lambda: mesh.reporting().WatchReport(
                    rpb.WatchReportRequest(report_id=report.id), metadata=viewer, timeout=GRACE + 10
                ),
            ),
        }
        for service, case in cases.items():
            await _sigterm_with_calls_in_flight(stack, proxies[service], service, case)
        await stack.temporal.get_workflow_handle(report.workflow_id).terminate("test over")
    finally:
        for p in proxies.values():
            await p.close()


async def test_sigterm_worker_mid_activity(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(grace=GRACE, extra_env={"worker": {"SURVEYMESH_SNAPSHOT_BATCH": "5"}})
    mesh = stack.mesh
    md = token_for(org, role="analyst")
    survey_id = await seed_survey(mesh, md, 1500)
    report = await request_report(mesh, md, survey_id)
    deadline = time.monotonic() + 60
    while not await stack.reporting.fetchval(
        "SELECT copied > 0 FROM reporting.snapshots WHERE report_id = $1", report.id
    ):
        assert time.monotonic() < deadline, mesh.logs_tail()
        await asyncio.sleep(0.05)
    signalled = time.monotonic()
    code = await mesh.terminate("worker", timeout=GRACE + 10)
    stopped_in = time.monotonic() - signalled
    copied = await stack.reporting.fetchval(
        "SELECT copied FROM reporting.snapshots WHERE report_id = $1", report.id
    )
    log(f"7 SIGTERM worker: exited {code} in {stopped_in:.2f}s with {copied} responses copied")
    assert code == 0, mesh.procs["worker"].tail()
    assert stopped_in <= GRACE + 3
    recovery = Recovery("7 worker SIGTERM mid-activity")
    await mesh.start("worker-2")
    states = await wait_terminal(stack.reporting, [report.id], within=90, mesh=mesh)
    recovery.done("report COMPLETED on the next worker")
    assert states[report.id] == S.REPORT_STATE_COMPLETED
    attempts = await activity_attempts(stack.temporal, report.workflow_id)
    log(f"7 SIGTERM worker: attempts {attempts}")
    await wait_workflows(stack.temporal, [report.workflow_id], within=30)
    await check_invariants(stack.reporting, stack.notification, [report.id])
