"""Fault 2: the Temporal server stops and restarts (same SQLite file) during a report."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from surveymesh.embedded import EmbeddedTemporal
from surveymesh.errors import error_details
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import (
    Md,
    Recovery,
    Watcher,
    check_invariants,
    log,
    register_webhook,
    request_report,
    seed_survey,
    wait_terminal,
    wait_workflows,
)
from tests.integration.test_notification_webhooks import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
OUTAGE_SECONDS = 5.0


async def test_temporal_restart_mid_report(
    make_stack: MeshFactory,
    fault_temporal: EmbeddedTemporal,
    receiver: Receiver,
    token_for: Callable[..., Md],
    org: str,
) -> None:
    # Small snapshot batches keep the report running long enough to stop Temporal inside it.
    stack = await make_stack(extra_env={"worker": {"SURVEYMESH_SNAPSHOT_BATCH": "25"}})
    mesh = stack.mesh
    md = token_for(org, role="analyst")
    await register_webhook(mesh, token_for(org, role="admin"), receiver.url())
    survey_id = await seed_survey(mesh, md, 1500)
    report = await request_report(mesh, md, survey_id, kind=report_pb2.REPORT_KIND_FULL)
    watcher = Watcher(mesh, token_for(org, role="viewer"), report.id).start()
    deadline = time.monotonic() + 60
    while not await stack.reporting.fetchval(
        "SELECT copied > 0 FROM reporting.snapshots WHERE report_id = $1", report.id
    ):
        assert time.monotonic() < deadline, mesh.logs_tail()
        await asyncio.sleep(0.05)

    await fault_temporal.stop()
    # While Temporal is down, a new report cannot start: UNAVAILABLE with a stable reason,
    # and the client retries with the same request id.
    second_request = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.reporting().GenerateReport(
            rpb.GenerateReportRequest(
                survey_id=survey_id, kind=report_pb2.REPORT_KIND_QUICK, request_id=second_request
            ),
            metadata=md,
            timeout=15,
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(err.value).reason == "TEMPORAL_UNAVAILABLE"
    await asyncio.sleep(OUTAGE_SECONDS)
    await fault_temporal.start()
    recovery = Recovery("2 Temporal restart")

    second = await request_report(mesh, md, survey_id, request_id=second_request)
    recovery.done("GenerateReport accepted again")
    ids = [report.id, second.id]
    states = await wait_terminal(stack.reporting, ids, within=150, mesh=mesh)
    recovery.done("both reports COMPLETED")
    assert set(states.values()) == {S.REPORT_STATE_COMPLETED}
    events = await watcher.result(within=30)
    watcher.check()
    log(f"watch stream: {len(events)} events, {watcher.reconnects} reconnects")
    for name, proc in mesh.procs.items():
        assert proc.running, f"{name} died with Temporal:\n{proc.tail()}"
    await wait_workflows(stack.temporal, [report.workflow_id, second.workflow_id], within=60)
    await check_invariants(stack.reporting, stack.notification, ids, receiver=receiver, endpoints=1)
