"""ReportingService RPCs against real Delivery, PostgreSQL and Temporal (no worker).

Started workflows stay pending on a task queue no worker polls, which is enough to check
what Reporting itself does: rows, events, workflow ids, inputs, search attributes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import orjson
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from reporting_svc import store
from reporting_svc.reports import ORG_ID_KEY, REPORT_ID_KEY, SURVEY_ID_KEY
from surveymesh.config import Settings
from surveymesh.embedded import free_port
from surveymesh.errors import error_details
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from surveymesh.workflow_contract import BATCH_QUEUE, QUICK_QUEUE
from tests.integration.reporting_stack import E, K, Md, S, Stack, reporting_stack, start_reporting

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
) -> AsyncIterator[Stack]:
    async with reporting_stack(new_database, temporal_env.client, token_for) as s:
        yield s


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, reason: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = error_details(info.value)
    assert (info.value.code(), details.reason) == (code, reason), details
    return info.value


async def test_generate_creates_a_queued_report_and_starts_its_workflow(
    stack: Stack, org: str
) -> None:
    survey = await stack.survey(org)
    report = await stack.generate(
        org, survey, options=report_pb2.ReportOptions(segment_by=["region"], trend_interval="week")
    )
    assert report.state == S.REPORT_STATE_QUEUED
    assert (report.org_id, report.survey_id, report.creator) == (org, survey, "alice")
    assert report.last_event_sequence == 1
    assert list(report.options.segment_by) == ["region"]
    uuid.UUID(report.id)

    desc = await stack.temporal.get_workflow_handle(report.workflow_id).describe()
    assert desc.workflow_type == "QuickReportWorkflow"
    assert desc.task_queue == stack.settings.task_queue(QUICK_QUEUE)
    assert desc.status == WorkflowExecutionStatus.RUNNING
    attrs = desc.typed_search_attributes
    assert (attrs.get(SURVEY_ID_KEY), attrs.get(ORG_ID_KEY), attrs.get(REPORT_ID_KEY)) == (
        survey,
        org,
        report.id,
    )

    events = await stack.watch(org, report.id, limit=1)
    assert [(e.sequence, e.type, e.state) for e in events] == [
        (1, E.REPORT_EVENT_TYPE_STATE_CHANGED, S.REPORT_STATE_QUEUED)
    ]


async def test_full_kind_starts_the_full_workflow(stack: Stack, org: str) -> None:
    report = await stack.generate(org, kind=K.REPORT_KIND_FULL)
    desc = await stack.temporal.get_workflow_handle(report.workflow_id).describe()
    assert desc.workflow_type == "FullReportWorkflow"
    assert report.kind == K.REPORT_KIND_FULL


async def test_twenty_concurrent_identical_requests_make_one_report_and_one_workflow(
    stack: Stack, org: str
) -> None:
    survey = await stack.survey(org)
    reports = await asyncio.gather(
        *(stack.generate(org, survey, request_id="same-key") for _ in range(20))
    )
    assert len({r.id for r in reports}) == 1
    assert len({r.workflow_id for r in reports}) == 1
    rows = await stack.pool.fetchval(
        "SELECT count(*) FROM reports WHERE org_id = $1 AND request_id = 'same-key'", org
    )
    assert rows == 1
    events = await stack.pool.fetchval(
        "SELECT count(*) FROM report_events WHERE report_id = $1", reports[0].id
    )
    assert events == 1
    # Every execution ever started with this id, closed or not: exactly one.
    runs = [
        w async for w in stack.temporal.list_workflows(f'WorkflowId = "{reports[0].workflow_id}"')
    ]
    for _ in range(50):
        if runs:
            break
        await asyncio.sleep(0.1)  # visibility is eventually consistent
        runs = [
            w
            async for w in stack.temporal.list_workflows(f'WorkflowId = "{reports[0].workflow_id}"')
        ]
    assert len(runs) == 1
    # A retry later returns the same report.
    again = await stack.generate(org, survey, request_id="same-key")
    assert again.id == reports[0].id


async def test_viewer_may_not_generate(stack: Stack, org: str) -> None:
    survey = await stack.survey(org)
    await expect_error(
        stack.generate(org, survey, role="viewer"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_PERMITTED",
    )


async def test_unknown_and_foreign_surveys_are_the_same_not_found(stack: Stack, org: str) -> None:
    foreign = await stack.survey(f"{org}-other")
    unknown_err = await expect_error(
        stack.generate(org, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "SURVEY_NOT_FOUND"
    )
    foreign_err = await expect_error(
        stack.generate(org, foreign), grpc.StatusCode.NOT_FOUND, "SURVEY_NOT_FOUND"
    )
    assert unknown_err.details() == foreign_err.details()
    assert await stack.pool.fetchval("SELECT count(*) FROM reports WHERE org_id = $1", org) == 0


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"kind": K.REPORT_KIND_UNSPECIFIED}, "kind", "INVALID_KIND"),
        ({"request_id": ""}, "request_id", "REQUIRED"),
        ({"request_id": "x" * 129}, "request_id", "TOO_LONG"),
        ({"survey_id": ""}, "survey_id", "REQUIRED"),
        (
            {"options": report_pb2.ReportOptions(segment_by=list("abcdef"))},
            "options.segment_by",
            "TOO_MANY_SEGMENTS",
        ),
        (
            {"options": report_pb2.ReportOptions(trend_interval="month")},
            "options.trend_interval",
            "INVALID_TREND_INTERVAL",
        ),
        (
            {"options": report_pb2.ReportOptions(notify_email="not-an-email")},
            "options.notify_email",
            "INVALID_EMAIL",
        ),
        (
            {"options": report_pb2.ReportOptions(required_roles=["viewer", "boss"])},
            "options.required_roles[1]",
            "UNKNOWN_ROLE",
        ),
    ],
)
async def test_generate_rejects_bad_requests(
    stack: Stack, org: str, request_fields: dict[str, object], field: str, reason: str
) -> None:
    fields: dict[str, object] = {
        "survey_id": str(uuid.uuid4()),
        "kind": K.REPORT_KIND_QUICK,
        "request_id": "r1",
    }
    fields.update(request_fields)
    err = await expect_error(
        stack.stub.GenerateReport(
            pb.GenerateReportRequest(**fields),  # type: ignore[arg-type]
            metadata=stack.token_for(org),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    assert field in [v.field for v in error_details(err).violations]


async def test_a_request_id_is_not_reusable_for_another_survey(stack: Stack, org: str) -> None:
    await stack.generate(org, request_id="k1")
    await expect_error(
        stack.generate(org, request_id="k1"), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED"
    )


async def test_temporal_unreachable_is_unavailable_and_a_retry_starts_the_workflow(
    stack: Stack, org: str
) -> None:
    dead = await Client.connect(f"localhost:{free_port()}", lazy=True)
    service, channel, stub = await start_reporting(stack.settings, dead)
    try:
        survey = await stack.survey(org)
        await expect_error(
            stack.generate(org, survey, request_id="retry-me", stub=stub),
            grpc.StatusCode.UNAVAILABLE,
            "TEMPORAL_UNAVAILABLE",
        )
    finally:
        await channel.close()
        await service.stop(0)
    listed = await stack.stub.ListReports(
        pb.ListReportsRequest(survey_id=survey), metadata=stack.token_for(org)
    )
    assert [r.state for r in listed.reports] == [S.REPORT_STATE_QUEUED]
    report = await stack.generate(org, survey, request_id="retry-me")
    assert report.id == listed.reports[0].id
    desc = await stack.temporal.get_workflow_handle(report.workflow_id).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING


async def test_delivery_unreachable_is_unavailable(stack: Stack, org: str) -> None:
    settings = Settings(
        database_url=stack.settings.database_url,
        jwt_secret=stack.settings.jwt_secret,
        delivery_address=f"localhost:{free_port()}",
    )
    service, channel, stub = await start_reporting(settings, stack.temporal)
    try:
        await expect_error(
            stack.generate(org, str(uuid.uuid4()), stub=stub),
            grpc.StatusCode.UNAVAILABLE,
            "DELIVERY_UNAVAILABLE",
        )
    finally:
        await channel.close()
        await service.stop(0)


async def test_a_report_past_queued_is_returned_as_is(stack: Stack, org: str) -> None:
    survey = await stack.survey(org)
    report = await stack.generate(org, survey, request_id="once")
    handle = stack.temporal.get_workflow_handle(report.workflow_id)
    await handle.terminate("test")
    await stack.progress(report.id, 1)
    again = await stack.generate(org, survey, request_id="once")
    assert (again.id, again.state) == (report.id, S.REPORT_STATE_RUNNING)
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.TERMINATED


async def test_generate_reports_creates_a_batch(stack: Stack, org: str) -> None:
    surveys = [await stack.survey(org) for _ in range(3)]
    md = stack.token_for(org)
    req = pb.GenerateReportsRequest(
        survey_ids=surveys, kind=K.REPORT_KIND_QUICK, request_id="batch-1"
    )
    resp = await stack.stub.GenerateReports(req, metadata=md)
    assert [r.survey_id for r in resp.reports] == surveys
    assert {r.batch_id for r in resp.reports} == {resp.batch_id}
    assert len({r.id for r in resp.reports}) == 3
    assert all(
        r.state == S.REPORT_STATE_QUEUED and r.last_event_sequence == 1 for r in resp.reports
    )
    desc = await stack.temporal.get_workflow_handle(resp.workflow_id).describe()
    assert desc.workflow_type == "BatchReportWorkflow"
    assert desc.task_queue == stack.settings.task_queue(BATCH_QUEUE)

    again = await stack.stub.GenerateReports(req, metadata=md)
    assert [r.id for r in again.reports] == [r.id for r in resp.reports]
    assert again.batch_id == resp.batch_id

    listed = await stack.stub.ListReports(
        pb.ListReportsRequest(batch_id=resp.batch_id), metadata=md
    )
    assert sorted(r.id for r in listed.reports) == sorted(r.id for r in resp.reports)


async def test_generate_reports_checks_every_survey_first(stack: Stack, org: str) -> None:
    md = stack.token_for(org)
    good = await stack.survey(org)
    await expect_error(
        stack.stub.GenerateReports(
            pb.GenerateReportsRequest(
                survey_ids=[good, str(uuid.uuid4())], kind=K.REPORT_KIND_QUICK, request_id="b"
            ),
            metadata=md,
        ),
        grpc.StatusCode.NOT_FOUND,
        "SURVEY_NOT_FOUND",
    )
    assert await stack.pool.fetchval("SELECT count(*) FROM reports WHERE org_id = $1", org) == 0
    await expect_error(
        stack.stub.GenerateReports(
            pb.GenerateReportsRequest(
                survey_ids=[good, good], kind=K.REPORT_KIND_QUICK, request_id="b"
            ),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DUPLICATE_SURVEY_ID",
    )
    await expect_error(
        stack.stub.GenerateReports(
            pb.GenerateReportsRequest(kind=K.REPORT_KIND_QUICK, request_id="b"), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUIRED",
    )


def id_calls(
    stub: pb_grpc.ReportingServiceStub, report_id: str, md: Md
) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every RPC that takes a report id, as a thunk."""

    async def watch() -> object:
        return [
            m
            async for m in stub.WatchReport(pb.WatchReportRequest(report_id=report_id), metadata=md)
        ]

    async def render() -> object:
        return [
            m
            async for m in stub.RenderReport(
                pb.RenderReportRequest(report_id=report_id, format=report_pb2.RENDER_FORMAT_JSON),
                metadata=md,
            )
        ]

    return {
        "get": lambda: stub.GetReport(pb.GetReportRequest(report_id=report_id), metadata=md),
        "component": lambda: stub.GetReportComponent(
            pb.GetReportComponentRequest(report_id=report_id, component_type="basic_stats"),
            metadata=md,
        ),
        "watch": watch,
        "cancel": lambda: stub.CancelReport(
            pb.CancelReportRequest(report_id=report_id), metadata=md
        ),
        "render": render,
    }


async def test_foreign_hidden_and_missing_reports_are_the_same_not_found(
    stack: Stack, org: str
) -> None:
    report = await stack.generate(org)
    hidden = await stack.generate(org, options=report_pb2.ReportOptions(required_roles=["admin"]))
    missing = str(uuid.uuid4())
    cases = [
        (report.id, stack.token_for(f"{org}-other", role="admin")),  # foreign
        (hidden.id, stack.token_for(org, role="analyst")),  # lacks the required role
        (missing, stack.token_for(org, role="admin")),  # missing
    ]
    for name in id_calls(stack.stub, missing, ()):
        answers = set()
        for report_id, md in cases:
            err = await expect_error(
                id_calls(stack.stub, report_id, md)[name](),
                grpc.StatusCode.NOT_FOUND,
                "REPORT_NOT_FOUND",
            )
            answers.add((err.code(), err.details(), error_details(err).reason))
        assert len(answers) == 1, (name, answers)

    # The required role opens it; listing hides it from everyone else.
    admin = stack.token_for(org, role="admin")
    got = await stack.stub.GetReport(pb.GetReportRequest(report_id=hidden.id), metadata=admin)
    assert list(got.report.required_roles) == ["admin"]
    listed = await stack.stub.ListReports(pb.ListReportsRequest(), metadata=stack.token_for(org))
    assert [r.id for r in listed.reports] == [report.id]
    listed = await stack.stub.ListReports(pb.ListReportsRequest(), metadata=admin)
    assert [r.id for r in listed.reports] == [hidden.id, report.id]


async def test_malformed_ids_are_invalid_argument(stack: Stack, org: str) -> None:
    for name, call in id_calls(
        stack.stub, "not-a-uuid", stack.token_for(org, role="admin")
    ).items():
        err = await expect_error(call(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")
        assert [v.field for v in error_details(err).violations] == ["report_id"], name


async def test_get_report_views_and_components(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    md = stack.token_for(org, role="viewer")
    basic_stats = orjson.dumps({"responses": 3, "completion_rate": 1.0})
    await store.store_component(stack.pool, report.id, "basic_stats", basic_stats)

    full = (
        await stack.stub.GetReport(pb.GetReportRequest(report_id=report.id), metadata=md)
    ).report
    assert [(c.type, c.data, c.size_bytes) for c in full.components] == [
        ("basic_stats", basic_stats, len(basic_stats))
    ]
    assert full.last_event_sequence == 2
    basic = (
        await stack.stub.GetReport(
            pb.GetReportRequest(report_id=report.id, view=report_pb2.REPORT_VIEW_BASIC), metadata=md
        )
    ).report
    assert [(c.type, c.data, c.size_bytes) for c in basic.components] == [
        ("basic_stats", b"", len(basic_stats))
    ]
    # The server keeps the bytes it read: a component stored since comes along (read from
    # the database), and repeated reads serve the same bytes.
    trend = orjson.dumps({"points": [1, 2, 3]})
    await store.store_component(stack.pool, report.id, "trend", trend)
    for _ in range(2):
        again = (
            await stack.stub.GetReport(pb.GetReportRequest(report_id=report.id), metadata=md)
        ).report
        assert [(c.type, c.data, c.size_bytes) for c in again.components] == [
            ("basic_stats", basic_stats, len(basic_stats)),
            ("trend", trend, len(trend)),
        ]
    comp = await stack.stub.GetReportComponent(
        pb.GetReportComponentRequest(report_id=report.id, component_type="basic_stats"), metadata=md
    )
    assert comp.component.data == basic_stats and comp.component.schema_version == 1
    await expect_error(
        stack.stub.GetReportComponent(
            pb.GetReportComponentRequest(report_id=report.id, component_type="themes"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
        "COMPONENT_NOT_FOUND",
    )
    await expect_error(
        stack.stub.GetReportComponent(
            pb.GetReportComponentRequest(report_id=report.id, component_type="Bad Type"),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_COMPONENT_TYPE",
    )


async def test_list_reports_pages_newest_first_with_filters(stack: Stack, org: str) -> None:
    md = stack.token_for(org, role="viewer")
    s1, s2 = await stack.survey(org), await stack.survey(org)
    made = [await stack.generate(org, s1 if i % 2 else s2) for i in range(7)]
    await stack.progress(made[3].id, 1)  # RUNNING

    seen: list[str] = []
    token = ""
    pages = []
    while True:
        resp = await stack.stub.ListReports(
            pb.ListReportsRequest(page_size=3, page_token=token), metadata=md
        )
        pages.append(len(resp.reports))
        seen += [r.id for r in resp.reports]
        token = resp.next_page_token
        if not token:
            break
    assert pages == [3, 3, 1]
    assert seen == [r.id for r in reversed(made)]

    by_survey = await stack.stub.ListReports(pb.ListReportsRequest(survey_id=s1), metadata=md)
    assert [r.id for r in by_survey.reports] == [r.id for r in reversed(made) if r.survey_id == s1]
    running = await stack.stub.ListReports(
        pb.ListReportsRequest(state=S.REPORT_STATE_RUNNING), metadata=md
    )
    assert [r.id for r in running.reports] == [made[3].id]

    first = await stack.stub.ListReports(pb.ListReportsRequest(page_size=1), metadata=md)
    await expect_error(
        stack.stub.ListReports(
            pb.ListReportsRequest(page_size=1, page_token=first.next_page_token, survey_id=s1),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        stack.stub.ListReports(
            pb.ListReportsRequest(page_size=1, page_token=first.next_page_token),
            metadata=stack.token_for(f"{org}-other"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        stack.stub.ListReports(pb.ListReportsRequest(page_size=-1), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )
    await expect_error(
        stack.stub.ListReports(pb.ListReportsRequest(batch_id="nope"), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ID",
    )


async def test_cancel_ends_the_report_with_one_terminal_event(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    await stack.progress(report.id, 2)
    md = stack.token_for(org)
    await expect_error(
        stack.stub.CancelReport(
            pb.CancelReportRequest(report_id=report.id),
            metadata=stack.token_for(org, role="viewer"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_PERMITTED",
    )
    resp = await stack.stub.CancelReport(
        pb.CancelReportRequest(report_id=report.id, reason="wrong survey"), metadata=md
    )
    assert resp.report.state == S.REPORT_STATE_CANCELLED
    again = await stack.stub.CancelReport(pb.CancelReportRequest(report_id=report.id), metadata=md)
    assert again.report.state == S.REPORT_STATE_CANCELLED
    # The worker's late terminal event is a no-op: one terminal event, and it is the last.
    await stack.complete(report.id)

    events = await stack.watch(org, report.id)
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert events[-1].type == E.REPORT_EVENT_TYPE_CANCELLED
    assert events[-1].message == "wrong survey"
    assert sum(e.type in store.TERMINAL_EVENTS for e in events) == 1

    history = [
        e.event_type
        async for e in stack.temporal.get_workflow_handle(report.workflow_id).fetch_history_events()
    ]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in history


async def test_cancel_of_a_finished_report_is_failed_precondition(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    await stack.complete(report.id)
    await expect_error(
        stack.stub.CancelReport(
            pb.CancelReportRequest(report_id=report.id), metadata=stack.token_for(org)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "REPORT_ALREADY_FINISHED",
    )


async def test_render_json_streams_the_whole_report_in_chunks(stack: Stack, org: str) -> None:
    report = await stack.generate(org)
    md = stack.token_for(org, role="viewer")
    render = pb.RenderReportRequest(report_id=report.id, format=report_pb2.RENDER_FORMAT_JSON)

    async def chunks(req: pb.RenderReportRequest) -> list[pb.RenderReportResponse]:
        return [m async for m in stack.stub.RenderReport(req, metadata=md)]

    await expect_error(chunks(render), grpc.StatusCode.FAILED_PRECONDITION, "REPORT_NOT_COMPLETED")

    themes = {"themes": [{"label": f"t{i}", "text": "x" * 1000} for i in range(2600)]}
    await store.store_component(stack.pool, report.id, "themes", orjson.dumps(themes))
    await store.store_component(stack.pool, report.id, "basic_stats", b'{"responses": 3}')
    await stack.complete(report.id)

    msgs = await chunks(render)
    assert len(msgs) >= 3
    assert all(m.ByteSize() <= 1024 * 1024 for m in msgs)
    first = msgs[0]
    assert first.content_type == "application/json"
    assert first.filename == f"report-{report.id}.json"
    assert [m.offset for m in msgs] == [
        sum(len(x.chunk) for x in msgs[:i]) for i in range(len(msgs))
    ]
    body = b"".join(m.chunk for m in msgs)
    assert len(body) == first.total_size
    doc = orjson.loads(body)
    assert doc["report"]["id"] == report.id
    assert doc["report"]["state"] == "REPORT_STATE_COMPLETED"
    assert doc["components"]["themes"]["data"] == themes
    assert doc["components"]["basic_stats"]["data"] == {"responses": 3}

    # Components of unknown shapes still render (generically) in every format.
    pdf = pb.RenderReportRequest(report_id=report.id, format=report_pb2.RENDER_FORMAT_PDF)
    pdf_msgs = await chunks(pdf)
    assert pdf_msgs[0].content_type == "application/pdf"
    assert b"".join(m.chunk for m in pdf_msgs).startswith(b"%PDF-")
    await expect_error(
        chunks(pb.RenderReportRequest(report_id=report.id)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FORMAT",
    )


async def test_unauthenticated_calls_are_rejected(stack: Stack) -> None:
    await expect_error(
        stack.stub.ListReports(pb.ListReportsRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )
