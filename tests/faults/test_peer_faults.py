"""Faults 4, 5 and 9: a peer service down, a network cut to a peer, deadlines passed on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from bench.survey_data import generate
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
from tests.integration.proc_mesh import TcpProxy, grpc_timeouts
from worker import models

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
RESPONSES = 1500
SEED = 7


async def _snapshot_started(stack: object, report_id: str) -> None:
    pool = stack.reporting  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while not await pool.fetchval(
        "SELECT copied > 0 FROM reporting.snapshots WHERE report_id = $1", report_id
    ):
        assert time.monotonic() < deadline, stack.mesh.logs_tail()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)


async def test_delivery_down_20s_during_snapshot(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(start=False)
    mesh = stack.mesh
    # A slow link from Delivery to the worker, so the stream is still in flight when
    # Delivery dies (at full speed it could already sit in the worker's socket buffers).
    link = await TcpProxy("127.0.0.1", mesh.ports["delivery"], throttle=100_000).start()
    try:
        mesh.extra_env["worker"] = {
            "SURVEYMESH_SNAPSHOT_BATCH": "25",
            "SURVEYMESH_DELIVERY_ADDRESS": link.address,
        }
        await mesh.start_all()
        md = token_for(org, role="analyst")
        survey_id = await seed_survey(mesh, md, RESPONSES, seed=SEED)
        report = await request_report(mesh, md, survey_id)
        await _snapshot_started(stack, report.id)
        await mesh.kill("delivery")
        link.refuse()  # what was still on the wire dies with the process
        copied_at_crash = await stack.reporting.fetchval(
            "SELECT copied FROM reporting.snapshots WHERE report_id = $1", report.id
        )
        await asyncio.sleep(20)
        await mesh.start("delivery")
        link.heal()
        recovery = Recovery("4 DeliveryService down 20s")
        await _finish_delivery_outage(stack, report, copied_at_crash, recovery)
    finally:
        await link.close()


async def _finish_delivery_outage(
    stack: Stack, report: report_pb2.Report, copied_at_crash: int, recovery: Recovery
) -> None:
    mesh = stack.mesh
    states = await wait_terminal(stack.reporting, [report.id], within=120, mesh=mesh)
    recovery.done("report COMPLETED")
    assert states[report.id] == S.REPORT_STATE_COMPLETED
    _, expected = generate(RESPONSES, seed=SEED)
    snap = await stack.reporting.fetchrow(
        "SELECT copied, (SELECT count(*) FROM reporting.snapshot_responses r"
        " WHERE r.report_id = s.report_id) AS rows,"
        " (SELECT count(*) FROM reporting.snapshot_answers a"
        " WHERE a.report_id = s.report_id) AS answers FROM reporting.snapshots s"
        " WHERE report_id = $1",
        report.id,
    )
    assert snap is not None
    # Resumed, not restarted and not duplicated: every completed response exactly once.
    assert 0 < copied_at_crash < expected.completed
    assert snap["rows"] == snap["copied"] == expected.completed
    assert snap["answers"] == 6 * expected.completed
    attempts = await activity_attempts(stack.temporal, report.workflow_id)
    assert attempts[models.SNAPSHOT] >= 2, attempts
    log(f"snapshot resumed at {copied_at_crash}/{expected.completed}; attempts {attempts}")
    await wait_workflows(stack.temporal, [report.workflow_id], within=30)
    await check_invariants(stack.reporting, stack.notification, [report.id])


async def test_network_cut_between_worker_and_delivery(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(start=False)
    mesh = stack.mesh
    proxy = await TcpProxy("127.0.0.1", mesh.ports["delivery"]).start()
    try:
        mesh.extra_env["worker"] = {"SURVEYMESH_DELIVERY_ADDRESS": proxy.address}
        await mesh.start_all()
        md = token_for(org, role="analyst")
        survey_id = await seed_survey(mesh, md, 300)
        # Black-hole the worker's link to Delivery: nothing is refused, nothing arrives.
        proxy.stall()
        cut = time.monotonic()
        report = await request_report(mesh, md, survey_id)
        handle = stack.temporal.get_workflow_handle(report.workflow_id)
        # The validate step's call (15 s deadline) must give up by itself and be retried.
        failure = ""
        while not failure:
            assert time.monotonic() - cut < 40, "the peer call never timed out"
            desc = await handle.describe()
            for pending in desc.raw_description.pending_activities:
                if pending.attempt >= 2 and pending.last_failure.message:
                    failure = pending.last_failure.message
            await asyncio.sleep(0.5)
        log(f"deadline fired after {time.monotonic() - cut:.1f}s: {failure[:120]}")
        assert "DEADLINE_EXCEEDED" in failure, failure
        proxy.heal()
        recovery = Recovery("5 network cut worker<->Delivery")
        states = await wait_terminal(stack.reporting, [report.id], within=90, mesh=mesh)
        recovery.done("report COMPLETED after the link healed")
        assert states[report.id] == S.REPORT_STATE_COMPLETED
        attempts = await activity_attempts(stack.temporal, report.workflow_id)
        assert attempts[models.VALIDATE] >= 2, attempts
        await wait_workflows(stack.temporal, [report.workflow_id], within=30)
        await check_invariants(stack.reporting, stack.notification, [report.id])
    finally:
        await proxy.close()


async def test_client_deadline_is_passed_downstream(
    make_stack: MeshFactory, token_for: Callable[..., Md], org: str
) -> None:
    stack = await make_stack(start=False)
    mesh = stack.mesh
    proxy = await TcpProxy("127.0.0.1", mesh.ports["delivery"]).start()
    try:
        mesh.extra_env["reporting"] = {"SURVEYMESH_DELIVERY_ADDRESS": proxy.address}
        await mesh.start_all()
        md = token_for(org, role="analyst")
        survey_id = await seed_survey(mesh, md, 20)
        await request_report(mesh, md, survey_id)  # Reporting's channel to Delivery is up
        proxy.captured.clear()
        proxy.capture = True
        proxy.stall()  # Delivery is now "slow": it never answers
        request_id = uuid.uuid4().hex
        request = rpb.GenerateReportRequest(
            survey_id=survey_id, kind=report_pb2.REPORT_KIND_QUICK, request_id=request_id
        )
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.reporting().GenerateReport(request, metadata=md, timeout=0.5)
        elapsed = time.monotonic() - started
        log(f"9 deadline: DEADLINE_EXCEEDED after {elapsed * 1000:.0f} ms")
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 0.6
        # What Reporting sent to Delivery: its call carried what was left of the 500 ms.
        timeouts = grpc_timeouts(bytes(proxy.captured))
        log(f"9 deadline: downstream grpc-timeout {timeouts}")
        assert timeouts, "the downstream call carried no grpc-timeout"
        # (C-core rounds the encoded value up to its 3 significant digits: 499 ms -> 501m.)
        assert all(0 < t <= 0.51 for t in timeouts), timeouts
        proxy.heal()
        # Nothing half-made was left behind: the retry with the same request id works.
        recovery = Recovery("9 deadline: retry after Delivery answers again")
        retried = await request_report(mesh, md, survey_id, request_id=request_id)
        recovery.done("GenerateReport succeeded")
        states = await wait_terminal(stack.reporting, [retried.id], within=60, mesh=mesh)
        assert states[retried.id] == S.REPORT_STATE_COMPLETED
        assert (
            await stack.reporting.fetchval(
                "SELECT count(*) FROM reporting.reports WHERE request_id = $1", request_id
            )
            == 1
        )
    finally:
        await proxy.close()
