"""Fault 1: a worker dies after an activity committed its component, before Temporal
heard of it; a new worker finishes the report and nothing is written twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from surveymesh.reporting.v1 import report_pb2
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import (
    Md,
    Recovery,
    activity_attempts,
    check_invariants,
    log,
    register_webhook,
    request_report,
    seed_survey,
    wait_terminal,
    wait_workflows,
)
from tests.integration.test_notification_webhooks import Receiver
from worker import models
from worker.faultpoints import PAUSE_AFTER_COMMIT_ENV

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
# The statistics activity's last component: once it is committed, all the activity has
# left to do is report completion, the window this test kills the worker in.
LAST_STAT_COMPONENT = "segments"


async def test_worker_sigkilled_between_commit_and_completion(
    make_stack: MeshFactory, receiver: Receiver, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(workers=0)
    mesh = stack.mesh
    await mesh.start("worker", env={PAUSE_AFTER_COMMIT_ENV: f"{LAST_STAT_COMPONENT}:600"})
    md = token_for(org, role="analyst")
    await register_webhook(mesh, token_for(org, role="admin"), receiver.url())
    survey_id = await seed_survey(mesh, md, 400)
    report = await request_report(mesh, md, survey_id)

    deadline = time.monotonic() + 60
    while not await stack.reporting.fetchval(
        "SELECT 1 FROM reporting.report_components WHERE report_id = $1 AND component_type = $2",
        report.id,
        LAST_STAT_COMPONENT,
    ):
        assert time.monotonic() < deadline, mesh.logs_tail()
        await asyncio.sleep(0.02)
    await mesh.kill("worker")
    recovery = Recovery("1 worker SIGKILL after commit")
    await mesh.start("worker-2")  # a replacement pod, without the fault point

    states = await wait_terminal(stack.reporting, [report.id], within=120, mesh=mesh)
    recovery.done("report COMPLETED")
    assert states[report.id] == S.REPORT_STATE_COMPLETED
    await wait_workflows(stack.temporal, [report.workflow_id], within=30)
    await check_invariants(
        stack.reporting, stack.notification, [report.id], receiver=receiver, endpoints=1
    )
    attempts = await activity_attempts(stack.temporal, report.workflow_id)
    log(f"activity attempts after the crash: {attempts}")
    assert attempts[models.STATISTICS] >= 2, attempts  # the killed attempt was retried
