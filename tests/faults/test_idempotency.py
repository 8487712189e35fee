"""Fault 6: 20 concurrent identical GenerateReport requests make one workflow, one report."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import (
    Md,
    check_invariants,
    log,
    seed_survey,
    wait_terminal,
    wait_workflows,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
CONCURRENT = 20


async def test_20_identical_concurrent_requests_make_one_report(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack()
    mesh = stack.mesh
    md = token_for(org, role="analyst")
    survey_id = await seed_survey(mesh, md, 50)
    request = rpb.GenerateReportRequest(
        survey_id=survey_id, kind=report_pb2.REPORT_KIND_QUICK, request_id=uuid.uuid4().hex
    )
    # Separate connections, so the requests really race inside the server.
    stubs = [mesh.reporting() for _ in range(CONCURRENT)]
    replies = await asyncio.gather(
        *(stub.GenerateReport(request, metadata=md, timeout=30) for stub in stubs)
    )
    assert len({r.report.id for r in replies}) == 1
    assert len({r.report.workflow_id for r in replies}) == 1
    report = replies[0].report
    rows = await stack.reporting.fetchval(
        "SELECT count(*) FROM reporting.reports WHERE org_id = $1", org
    )
    assert rows == 1
    executions = [
        w async for w in stack.temporal.list_workflows(f'WorkflowId = "{report.workflow_id}"')
    ]
    assert len(executions) == 1, executions
    states = await wait_terminal(stack.reporting, [report.id], within=60, mesh=mesh)
    assert states[report.id] == S.REPORT_STATE_COMPLETED
    await wait_workflows(stack.temporal, [report.workflow_id], within=30)
    await check_invariants(stack.reporting, stack.notification, [report.id])
    # Repeating the request after completion returns the same finished report.
    again = await mesh.reporting().GenerateReport(request, metadata=md, timeout=10)
    assert again.report.id == report.id and again.report.state == S.REPORT_STATE_COMPLETED
    log(f"6 idempotency: {CONCURRENT} requests -> 1 report, 1 workflow execution")
