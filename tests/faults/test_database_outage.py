"""Fault 3: PostgreSQL unreachable for 20 s in the middle of a report.

Every process reaches PostgreSQL through a TCP proxy that resets every connection and
refuses new ones for the outage (what a crashed or fenced-off database looks like).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.embedded import EmbeddedPostgres
from surveymesh.errors import error_details
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import (
    Md,
    Recovery,
    Watcher,
    check_invariants,
    log,
    request_report,
    seed_survey,
    wait_terminal,
    wait_workflows,
)
from tests.integration.proc_mesh import SERVICES, ProcMesh, TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
OUTAGE_SECONDS = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(mesh: ProcMesh, service: str) -> int:
    reply = await mesh.health(service).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return int(reply.status)


async def _wait_health(mesh: ProcMesh, status: int, within: float) -> float:
    started = time.monotonic()
    while True:
        seen = {s: await _health(mesh, s) for s in SERVICES}
        if set(seen.values()) == {status}:
            return time.monotonic() - started
        assert time.monotonic() - started < within, seen
        await asyncio.sleep(0.1)


def _reads(
    mesh: ProcMesh, org_md: Md, report_id: str, survey_id: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "Reporting.GetReport": lambda: mesh.reporting().GetReport(
            rpb.GetReportRequest(report_id=report_id), metadata=org_md, timeout=5
        ),
        "Reporting.ListReports": lambda: mesh.reporting().ListReports(
            rpb.ListReportsRequest(page_size=10), metadata=org_md, timeout=5
        ),
        "Delivery.GetSurvey": lambda: mesh.delivery().GetSurvey(
            dpb.GetSurveyRequest(survey_id=survey_id), metadata=org_md, timeout=5
        ),
        "Notification.ListNotifications": lambda: mesh.notification().ListNotifications(
            npb.ListNotificationsRequest(page_size=10), metadata=org_md, timeout=5
        ),
    }


async def test_database_unreachable_for_20s_mid_report(
    make_stack: MeshFactory,
    postgres: EmbeddedPostgres,
    token_for: Callable[..., Md],
    org: str,
) -> None:
    proxy = await TcpProxy(postgres.host, postgres.port).start()
    try:
        stack = await make_stack(
            dsn_via=lambda dsn: dsn.replace(f":{postgres.port}/", f":{proxy.port}/"),
            extra_env={"worker": {"SURVEYMESH_SNAPSHOT_BATCH": "25"}},
        )
        mesh = stack.mesh
        md = token_for(org, role="analyst")
        survey_id = await seed_survey(mesh, md, 1500)
        report = await request_report(mesh, md, survey_id)
        watcher = Watcher(mesh, token_for(org, role="viewer"), report.id).start()
        deadline = time.monotonic() + 60
        while not await stack.reporting.fetchval(
            "SELECT copied > 0 FROM reporting.snapshots WHERE report_id = $1", report.id
        ):
            assert time.monotonic() < deadline, mesh.logs_tail()
            await asyncio.sleep(0.05)

        proxy.refuse()
        outage = time.monotonic()
        flipped = await _wait_health(mesh, NOT_SERVING, within=10)
        log(f"health NOT_SERVING {flipped:.2f}s after the database went away")
        # Reads during the outage: UNAVAILABLE with the database reason, never UNKNOWN or
        # INTERNAL, however often they are tried.
        reads = _reads(mesh, md, report.id, survey_id)
        tried = 0
        while time.monotonic() - outage < OUTAGE_SECONDS - 2:
            for name, call in reads.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                code, reason = err.value.code(), error_details(err.value).reason
                assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"), (
                    name,
                    code,
                    reason,
                    err.value.details(),
                )
                tried += 1
            # A write that needs the database is refused the same way, and can be retried.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await mesh.reporting().GenerateReport(
                    rpb.GenerateReportRequest(
                        survey_id=survey_id,
                        kind=report_pb2.REPORT_KIND_QUICK,
                        request_id=uuid.uuid4().hex,
                    ),
                    metadata=md,
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
            await asyncio.sleep(1.0)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage)))
        proxy.heal()
        recovery = Recovery("3 PostgreSQL 20s outage")
        back = await _wait_health(mesh, SERVING, within=15)
        recovery.done(f"health SERVING on all services ({back:.2f}s)")
        states = await wait_terminal(stack.reporting, [report.id], within=120, mesh=mesh)
        recovery.done("report COMPLETED")
        assert states[report.id] == S.REPORT_STATE_COMPLETED
        log(f"{tried} read RPCs during the outage, all UNAVAILABLE/DATABASE_UNAVAILABLE")
        await watcher.result(within=30)
        watcher.check()
        log(f"watch stream: {len(watcher.events)} events, reconnects {watcher.reconnects}")
        await wait_workflows(stack.temporal, [report.workflow_id], within=60)
        await check_invariants(stack.reporting, stack.notification, [report.id])
        for name, proc in mesh.procs.items():
            assert proc.running, f"{name} died during the outage:\n{proc.tail()}"
    finally:
        await proxy.close()
