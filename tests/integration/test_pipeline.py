"""The report pipeline end to end, with every part real.

Delivery, Notification and Reporting run on port 0 against their own databases on the
session's embedded PostgreSQL; the worker polls per-test task queues on the session's
Temporal dev server. Reports are requested through ReportingService and followed with
WatchReport, exactly as a client would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import orjson
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from bench.survey_data import create_survey, generate, import_responses
from reporting_svc import store
from reporting_svc.server import create_server as create_reporting
from surveymesh.config import Settings
from surveymesh.db import create_pool
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.grpcserver import RunningService
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from surveymesh.workflow_contract import (
    BATCH_QUEUE,
    BATCH_WORKFLOW,
    QUICK_QUEUE,
    QUICK_WORKFLOW,
    BatchItem,
    BatchWorkflowInput,
    ReportWorkflowInput,
)
from tests.integration.fake_openai import MODEL, serve_fake_openai
from tests.integration.mesh_stack import start_peers
from worker.models import BatchResult
from worker.worker import RunningWorker, create_worker

pytestmark = pytest.mark.integration

S = report_pb2.ReportState
E = report_pb2.ReportEventType
K = report_pb2.ReportKind
Md = tuple[tuple[str, str], ...]
QUICK_COMPONENTS = {
    "basic_stats",
    "question_stats",
    "nps",
    "csat",
    "segments",
    "visualizations",
    "summary",
}
FULL_COMPONENTS = QUICK_COMPONENTS | {"sentiment", "themes"}
TERMINAL = {
    E.REPORT_EVENT_TYPE_COMPLETED,
    E.REPORT_EVENT_TYPE_FAILED,
    E.REPORT_EVENT_TYPE_CANCELLED,
}


@dataclass
class Mesh:
    """Delivery and Notification (shared by the module), plus what a test needs to add its
    own Reporting and worker on task queues of its own."""

    settings: Settings  # reporting database, peers, secret; no task queue prefix yet
    delivery: dgrpc.DeliveryServiceStub
    notification: ngrpc.NotificationServiceStub
    pool: asyncpg.Pool  # direct access to the reporting database, for assertions
    temporal: Client
    token_for: Callable[..., Md]


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: Any,
    token_for: Callable[..., Md],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    async with AsyncExitStack() as stack:
        data_dir: Path = tmp_path_factory.mktemp("pipeline")
        delivery, notification, settings = await start_peers(stack, new_database, data_dir)
        dchannel = grpc.aio.insecure_channel(f"localhost:{delivery.port}")
        nchannel = grpc.aio.insecure_channel(f"localhost:{notification.port}")
        stack.push_async_callback(dchannel.close)
        stack.push_async_callback(nchannel.close)
        # The reporting schema is created by the first Reporting server; open the pool after.
        first = await create_reporting(
            settings, address="localhost:0", temporal_client=temporal_env.client
        )
        stack.push_async_callback(first.stop, 0)
        pool = await create_pool(settings.database_url, schema=store.SCHEMA)
        stack.push_async_callback(pool.close)
        yield Mesh(
            settings=settings,
            delivery=dgrpc.DeliveryServiceStub(dchannel),
            notification=ngrpc.NotificationServiceStub(nchannel),
            pool=pool,
            temporal=temporal_env.client,
            token_for=token_for,
        )


@dataclass
class Lane:
    """One test's Reporting server and worker on its own task queues."""

    settings: Settings
    reporting: rgrpc.ReportingServiceStub
    worker: RunningWorker


async def _start_lane(stack: AsyncExitStack, mesh: Mesh, settings: Settings) -> Lane:
    service: RunningService = await create_reporting(
        settings, address="localhost:0", temporal_client=mesh.temporal
    )
    stack.push_async_callback(service.stop, 0)
    channel = grpc.aio.insecure_channel(f"localhost:{service.port}")
    stack.push_async_callback(channel.close)
    worker = await create_worker(settings, mesh.temporal)
    worker.start()
    stack.push_async_callback(worker.shutdown)
    return Lane(settings, rgrpc.ReportingServiceStub(channel), worker)


@pytest.fixture
async def lane(mesh: Mesh, task_queue_prefix: str) -> AsyncIterator[Lane]:
    async with AsyncExitStack() as stack:
        yield await _start_lane(
            stack, mesh, replace(mesh.settings, task_queue_prefix=task_queue_prefix)
        )


async def _survey(
    mesh: Mesh, org: str, n: int, *, title: str = "Customer pulse", seed: int = 7
) -> tuple[str, Any]:
    meta = mesh.token_for(org, user="alice", role="analyst")
    survey_id = await create_survey(mesh.delivery, meta, title)
    responses, expected = generate(n, seed=seed)
    result = await import_responses(mesh.delivery, meta, survey_id, responses)
    assert result.accepted_count == n
    return survey_id, expected


async def _generate(
    lane: Lane, mesh: Mesh, org: str, survey_id: str, kind: int, **options: Any
) -> report_pb2.Report:
    resp = await lane.reporting.GenerateReport(
        rpb.GenerateReportRequest(
            survey_id=survey_id,
            kind=kind,  # type: ignore[arg-type]
            request_id=uuid.uuid4().hex,
            options=report_pb2.ReportOptions(**options),
        ),
        metadata=mesh.token_for(org, user="alice", role="analyst"),
        timeout=20,
    )
    return resp.report


async def _watch(lane: Lane, mesh: Mesh, org: str, report_id: str) -> list[report_pb2.ReportEvent]:
    call = lane.reporting.WatchReport(
        rpb.WatchReportRequest(report_id=report_id),
        metadata=mesh.token_for(org, user="alice", role="viewer"),
        timeout=100,
    )
    return [msg.event async for msg in call]


async def _get(lane: Lane, mesh: Mesh, org: str, report_id: str) -> report_pb2.Report:
    resp = await lane.reporting.GetReport(
        rpb.GetReportRequest(report_id=report_id),
        metadata=mesh.token_for(org, user="alice", role="viewer"),
        timeout=10,
    )
    return resp.report


def _check_event_log(events: list[report_pb2.ReportEvent], components: set[str]) -> None:
    """Gap-free sequences, one terminal event last, each component announced once."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events if e.type in TERMINAL] == [E.REPORT_EVENT_TYPE_COMPLETED]
    assert events[-1].type == E.REPORT_EVENT_TYPE_COMPLETED
    assert events[-1].progress_percent == 100
    ready = [e.component_type for e in events if e.type == E.REPORT_EVENT_TYPE_COMPONENT_READY]
    assert sorted(ready) == sorted(components)
    percents = [e.progress_percent for e in events]
    assert percents == sorted(percents), "overall progress never goes back"
    snapshot_progress = [
        e for e in events if e.type == E.REPORT_EVENT_TYPE_PROGRESS and e.stage == "snapshot"
    ]
    assert (
        snapshot_progress and snapshot_progress[-1].items_done == snapshot_progress[-1].items_total
    )


async def _finished(mesh: Mesh, report: report_pb2.Report) -> None:
    """Waits for the report's workflow, whose last step (notify) follows the terminal event."""
    await mesh.temporal.get_workflow_handle(report.workflow_id).result(
        rpc_timeout=timedelta(seconds=30)
    )


async def _notifications(mesh: Mesh, org: str) -> list[Any]:
    resp = await mesh.notification.ListNotifications(
        npb.ListNotificationsRequest(page_size=100),
        metadata=mesh.token_for(org, user="alice", role="viewer"),
        timeout=10,
    )
    return list(resp.notifications)


def _component(report: report_pb2.Report, name: str) -> dict[str, Any]:
    (c,) = [c for c in report.components if c.type == name]
    data: dict[str, Any] = orjson.loads(c.data)
    return data


async def test_full_report_with_openai_through_the_workflow(
    mesh: Mesh, org: str, task_queue_prefix: str
) -> None:
    """The OpenAI path end to end: GenerateReport → workflow → AI activities on their queue →
    the real ``openai`` client → a local OpenAI-compatible server → stored components."""
    async with serve_fake_openai() as fake, AsyncExitStack() as stack:
        settings = replace(
            mesh.settings,
            task_queue_prefix=task_queue_prefix,
            openai_api_key="sk-test",
            openai_base_url=fake.base_url,
            openai_model=MODEL,
        )
        ai_lane = await _start_lane(stack, mesh, settings)
        survey_id, _ = await _survey(mesh, org, 150)
        full = await _generate(ai_lane, mesh, org, survey_id, K.REPORT_KIND_FULL)
        events = await _watch(ai_lane, mesh, org, full.id)
        report = await _get(ai_lane, mesh, org, full.id)
    _check_event_log(events, FULL_COMPONENTS)
    for name in ("sentiment", "themes"):
        provenance = _component(report, name)["provenance"]
        assert provenance["analyzer"] == f"openai:{MODEL}"
        assert "fallback_from" not in provenance
    assert {"sentiment_batch", "theme_list"} <= set(fake.schemas)


async def test_quick_and_full_reports_end_to_end(mesh: Mesh, lane: Lane, org: str) -> None:
    survey_id, expected = await _survey(mesh, org, 300)

    t0 = time.perf_counter()
    quick = await _generate(lane, mesh, org, survey_id, K.REPORT_KIND_QUICK, segment_by=["region"])
    quick_events = await _watch(lane, mesh, org, quick.id)
    quick_seconds = time.perf_counter() - t0
    _check_event_log(quick_events, QUICK_COMPONENTS)
    report = await _get(lane, mesh, org, quick.id)
    assert report.state == S.REPORT_STATE_COMPLETED and report.progress_percent == 100
    assert {c.type for c in report.components} == QUICK_COMPONENTS
    assert report.response_count == expected.completed

    # The figures match the generated data (completed responses only, by default).
    nps = _component(report, "nps")["questions"][0]
    scores = np.array(expected.nps_scores)
    assert nps["n"] == expected.completed
    assert nps["score"] == pytest.approx(100 * (np.mean(scores >= 9) - np.mean(scores <= 6)))
    csat = _component(report, "csat")["questions"][0]
    assert csat["score"] == pytest.approx(100 * np.mean(np.array(expected.ratings) >= 4))
    plan = next(
        q for q in _component(report, "question_stats")["questions"] if q["question_id"] == "plan"
    )
    assert {o["option"]: o["count"] for o in plan["options"]} == expected.plans
    # EU respondents were generated less happy: the segment test must see it.
    (region,) = _component(report, "segments")["segments"]
    sat = next(q for q in region["questions"] if q["question_id"] == "sat")
    assert sat["test"]["test"] == "kruskal_wallis" and sat["test"]["significant"] is True
    charts = _component(report, "visualizations")["charts"]
    assert {c["component"] for c in charts} >= {
        "basic_stats",
        "question_stats",
        "nps",
        "csat",
        "segments",
    }
    summary = _component(report, "summary")
    assert summary["title"] == "Customer pulse" and summary["response_count"] == expected.completed
    assert set(summary["components"]) == QUICK_COMPONENTS

    t0 = time.perf_counter()
    full = await _generate(
        lane,
        mesh,
        org,
        survey_id,
        K.REPORT_KIND_FULL,
        include_incomplete=True,
        segment_by=["region"],
    )
    full_events = await _watch(lane, mesh, org, full.id)
    full_seconds = time.perf_counter() - t0
    _check_event_log(full_events, FULL_COMPONENTS)
    report = await _get(lane, mesh, org, full.id)
    assert {c.type for c in report.components} == FULL_COMPONENTS
    assert report.response_count == expected.total  # include_incomplete
    sentiment = _component(report, "sentiment")
    assert sentiment["provenance"]["analyzer"] == "local:vader"
    assert sentiment["questions"][0]["n"] == expected.total
    assert 0 < sentiment["provenance"]["confidence"] <= 1
    by_region = sentiment["questions"][0]["segments"]["region"]
    assert set(by_region) == {"eu", "us", "apac"}
    assert sum(g["n"] for g in by_region.values()) == expected.total
    # EU respondents were generated less happy, and wrote accordingly.
    assert by_region["eu"]["mean_score"] < by_region["us"]["mean_score"]
    themes = _component(report, "themes")
    assert themes["provenance"]["analyzer"] == "local:tfidf-nmf"
    found = themes["questions"][0]["themes"]
    assert len(found) >= 2 and all(t["evidence"] for t in found)

    # One notification per report, with ids only, pointing at the viewer.
    await _finished(mesh, quick)
    await _finished(mesh, full)
    notes = await _notifications(mesh, org)
    by_report = sorted(n.metadata["report_id"] for n in notes)
    assert by_report == sorted([quick.id, full.id])
    note = next(n for n in notes if n.metadata["report_id"] == quick.id)
    assert note.type == "report.completed"
    assert note.link.endswith(f"/reports/{quick.id}")
    assert note.metadata["state"] == "completed"
    assert note.metadata["component_count"] == str(len(QUICK_COMPONENTS))
    assert quick_seconds < 60 and full_seconds < 60


async def _report_row(
    mesh: Mesh, org: str, survey_id: str, *, batch_id: str | None = None
) -> BatchItem:
    """Inserts a QUEUED report row, as Reporting does before it starts a workflow."""
    report_id, workflow_id = str(uuid.uuid4()), f"report/{org}/{uuid.uuid4().hex}"
    await mesh.pool.execute(
        "INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,"
        " workflow_id, creator, batch_id) VALUES ($1, $2, $3, $4, $5, '{}'::jsonb, $6, $7,"
        " 'alice', $8)",
        report_id, org, survey_id, K.REPORT_KIND_QUICK, S.REPORT_STATE_QUEUED, uuid.uuid4().hex,
        workflow_id, batch_id,
    )  # fmt: skip
    return BatchItem(report_id, survey_id, workflow_id)


async def test_unknown_survey_fails_with_clear_reason(mesh: Mesh, lane: Lane, org: str) -> None:
    # Reporting refuses unknown surveys itself, so drive the workflow directly, as if the
    # survey had been deleted from Delivery after the report was requested.
    item = await _report_row(mesh, org, str(uuid.uuid4()))
    report_id, survey_id, workflow_id = item.report_id, item.survey_id, item.workflow_id
    started = time.perf_counter()
    with pytest.raises(WorkflowFailureError) as err:
        await mesh.temporal.execute_workflow(
            QUICK_WORKFLOW,
            ReportWorkflowInput(report_id, org, survey_id, "alice", "quick"),
            id=workflow_id,
            task_queue=lane.settings.task_queue(QUICK_QUEUE),
            execution_timeout=timedelta(seconds=60),
        )
    assert time.perf_counter() - started < 20, "a permanent error must not be retried"
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "SURVEY_NOT_FOUND"
    report = await _get(lane, mesh, org, report_id)
    assert report.state == S.REPORT_STATE_FAILED
    assert (report.error.reason, report.error.stage) == ("SURVEY_NOT_FOUND", "validate")
    events = await _watch(lane, mesh, org, report_id)
    assert events[-1].type == E.REPORT_EVENT_TYPE_FAILED
    assert events[-1].error.reason == "SURVEY_NOT_FOUND"
    # Exactly one attempt of the validate activity.
    history = await mesh.temporal.get_workflow_handle(workflow_id).fetch_history()
    starts = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert len(starts) == 2  # validate, then fail_report
    assert not [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.attempt > 1
    ]
    assert await _notifications(mesh, org) == []


async def test_worker_stopped_mid_snapshot_resumes_without_duplicates(
    mesh: Mesh, task_queue_prefix: str, org: str
) -> None:
    settings = replace(mesh.settings, task_queue_prefix=task_queue_prefix)
    survey_id, expected = await _survey(mesh, org, 2000)
    async with AsyncExitStack() as stack:
        service = await create_reporting(
            settings, address="localhost:0", temporal_client=mesh.temporal
        )
        stack.push_async_callback(service.stop, 0)
        channel = grpc.aio.insecure_channel(f"localhost:{service.port}")
        stack.push_async_callback(channel.close)
        # Tiny batches make the snapshot long enough to stop the worker in the middle of it.
        first = await create_worker(
            settings, mesh.temporal, snapshot_batch_size=10, graceful_shutdown=timedelta(0)
        )
        first.start()
        lane = Lane(settings, rgrpc.ReportingServiceStub(channel), first)
        report = await _generate(lane, mesh, org, survey_id, K.REPORT_KIND_QUICK)
        deadline = time.monotonic() + 30
        while True:
            row = await mesh.pool.fetchrow(
                "SELECT copied, done FROM snapshots WHERE report_id = $1", report.id
            )
            if row is not None and row["copied"] > 0:
                break
            assert time.monotonic() < deadline, "snapshot never started"
            await asyncio.sleep(0.01)
        await first.shutdown()
        stopped_at = await mesh.pool.fetchrow(
            "SELECT copied, done FROM snapshots WHERE report_id = $1", report.id
        )
        assert (
            stopped_at is not None
            and not stopped_at["done"]
            and stopped_at["copied"] < expected.completed
        )

        second = await create_worker(settings, mesh.temporal)
        second.start()
        stack.push_async_callback(second.shutdown)
        events = await _watch(lane, mesh, org, report.id)
        await _finished(mesh, report)

    _check_event_log(events, QUICK_COMPONENTS)
    snap = await mesh.pool.fetchrow("SELECT * FROM snapshots WHERE report_id = $1", report.id)
    assert snap is not None and snap["done"] and snap["copied"] == expected.completed
    rows = await mesh.pool.fetchval(
        "SELECT count(*) FROM snapshot_responses WHERE report_id = $1", report.id
    )
    answers = await mesh.pool.fetchval(
        "SELECT count(*) FROM snapshot_answers WHERE report_id = $1", report.id
    )
    assert rows == expected.completed and answers == 6 * expected.completed
    components = await mesh.pool.fetchval(
        "SELECT count(*) FROM report_components WHERE report_id = $1", report.id
    )
    assert components == len(QUICK_COMPONENTS)
    # The snapshot really was interrupted: a second attempt continued it.
    history = await mesh.temporal.get_workflow_handle(report.workflow_id).fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(attempts) >= 2
    notes = [n for n in await _notifications(mesh, org) if n.metadata["report_id"] == report.id]
    assert len(notes) == 1


async def test_batch_of_three_surveys(mesh: Mesh, lane: Lane, org: str) -> None:
    surveys = [(await _survey(mesh, org, 60, title=f"Survey {i}", seed=i))[0] for i in range(3)]
    resp = await lane.reporting.GenerateReports(
        rpb.GenerateReportsRequest(
            survey_ids=surveys, kind=K.REPORT_KIND_QUICK, request_id=uuid.uuid4().hex
        ),
        metadata=mesh.token_for(org, user="alice", role="analyst"),
        timeout=20,
    )
    handle = mesh.temporal.get_workflow_handle(resp.workflow_id, result_type=BatchResult)
    result = await handle.result(rpc_timeout=timedelta(seconds=90))
    assert (result.total, result.completed, result.failed) == (3, 3, 0)
    for r in resp.reports:
        report = await _get(lane, mesh, org, r.id)
        assert report.state == S.REPORT_STATE_COMPLETED
        assert report.batch_id == resp.batch_id
        assert {c.type for c in report.components} == QUICK_COMPONENTS
    notes = await _notifications(mesh, org)
    assert sorted(n.metadata["report_id"] for n in notes) == sorted(r.id for r in resp.reports)


async def test_cancelled_workflow_ends_report_cancelled(
    mesh: Mesh, task_queue_prefix: str, org: str
) -> None:
    settings = replace(mesh.settings, task_queue_prefix=task_queue_prefix)
    survey_id, _ = await _survey(mesh, org, 1000)
    async with AsyncExitStack() as stack:
        service = await create_reporting(
            settings, address="localhost:0", temporal_client=mesh.temporal
        )
        stack.push_async_callback(service.stop, 0)
        channel = grpc.aio.insecure_channel(f"localhost:{service.port}")
        stack.push_async_callback(channel.close)
        worker = await create_worker(settings, mesh.temporal, snapshot_batch_size=10)
        worker.start()
        stack.push_async_callback(worker.shutdown)
        lane = Lane(settings, rgrpc.ReportingServiceStub(channel), worker)
        report = await _generate(lane, mesh, org, survey_id, K.REPORT_KIND_QUICK)
        deadline = time.monotonic() + 30
        while not await mesh.pool.fetchval(
            "SELECT copied > 0 FROM snapshots WHERE report_id = $1", report.id
        ):
            assert time.monotonic() < deadline, "snapshot never started"
            await asyncio.sleep(0.01)
        # Cancel the workflow itself (not CancelReport, which also records the event), so
        # the CANCELLED event below can only come from the workflow's cleanup activity.
        handle = mesh.temporal.get_workflow_handle(report.workflow_id)
        await handle.cancel()
        events = await _watch(lane, mesh, org, report.id)
        with pytest.raises(WorkflowFailureError):
            await handle.result(rpc_timeout=timedelta(seconds=30))
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        assert (await _get(lane, mesh, org, report.id)).state == S.REPORT_STATE_CANCELLED
    assert events[-1].type == E.REPORT_EVENT_TYPE_CANCELLED
    assert events[-1].stage == "snapshot"
    assert [e.type for e in events if e.type in TERMINAL] == [E.REPORT_EVENT_TYPE_CANCELLED]
    assert await _notifications(mesh, org) == []


async def test_batch_continues_as_new_and_counts_failures(mesh: Mesh, lane: Lane, org: str) -> None:
    survey_id, _ = await _survey(mesh, org, 30)
    batch_id = str(uuid.uuid4())
    items = [await _report_row(mesh, org, survey_id, batch_id=batch_id) for _ in range(3)]
    # The third survey is unknown to Delivery: that report fails, the batch goes on.
    items.append(await _report_row(mesh, org, str(uuid.uuid4()), batch_id=batch_id))
    workflow_id = f"batch/{org}/{uuid.uuid4().hex}"
    handle = await mesh.temporal.start_workflow(
        BATCH_WORKFLOW,
        BatchWorkflowInput(
            batch_id=batch_id, org_id=org, requested_by="alice", kind="quick", items=items,
            window=2, continue_after=2,
        ),
        id=workflow_id,
        task_queue=lane.settings.task_queue(BATCH_QUEUE),
        result_type=BatchResult,
    )  # fmt: skip
    result = await handle.result(rpc_timeout=timedelta(seconds=90))
    assert (result.total, result.completed, result.failed) == (4, 3, 1)
    first_run = await mesh.temporal.get_workflow_handle(
        workflow_id, run_id=handle.first_execution_run_id
    ).fetch_history()
    assert (
        first_run.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )
    states = await mesh.pool.fetch(
        "SELECT state FROM reports WHERE batch_id = $1 ORDER BY create_time", batch_id
    )
    assert sorted(r["state"] for r in states) == sorted(
        [S.REPORT_STATE_COMPLETED] * 3 + [S.REPORT_STATE_FAILED]
    )
