"""Traces and metrics of one report through the real in-process mesh.

The mesh (real gRPC servers, worker, Postgres, Temporal dev server) runs with tracing on and
an in-memory span exporter; one ``GenerateReport`` must yield one trace that runs from
Reporting through the workflow and each activity into DeliveryService and
NotificationService. The metrics test scrapes a real Prometheus endpoint over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from surveymesh import telemetry
from surveymesh.client import SurveyMeshClient, SurveyMeshError
from surveymesh.config import Settings
from surveymesh.csv_import import parse_csv
from surveymesh.embedded import free_port
from surveymesh.reporting.v1 import report_pb2
from tests.integration.mesh_stack import MeshStack, whole_mesh

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "google_forms.csv"
GENERATE = "/surveymesh.reporting.v1.ReportingService/GenerateReport"
CHECK_ACCESS = "/surveymesh.delivery.v1.DeliveryService/CheckSurveyAccess"
STREAM_RESPONSES = "/surveymesh.delivery.v1.DeliveryService/StreamResponses"
SEND_NOTIFICATION = "/surveymesh.notification.v1.NotificationService/SendNotification"
QUICK_ACTIVITIES = (
    "report.validate",
    "report.snapshot",
    "report.statistics",
    "report.visualizations",
    "report.compile",
    "report.notify",
)

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MeshStack]:
    # Tracing must be on before servers start and channels open: both pick it up then.
    telemetry.configure_tracing(Settings(), "test", processor=SimpleSpanProcessor(SPANS))
    try:
        # A client of its own with TracingInterceptor; Reporting and the worker share it.
        base = temporal_env.client
        client = Client(**{**base.config(), "interceptors": telemetry.temporal_interceptors()})
        async with whole_mesh(new_database, client, tmp_path_factory.mktemp("telemetry")) as m:
            yield m
    finally:
        telemetry.disable_tracing()
        SPANS.clear()


async def _survey(client: SurveyMeshClient) -> str:
    parsed = parse_csv(FIXTURE.read_text())
    survey = await client.create_survey(parsed.plan.survey())
    await client.import_responses(survey.id, parsed.responses)
    return survey.id


async def _eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    """Polls ``check`` until it returns something truthy (work that follows the terminal
    event — the notify activity, the counters after compile — lands moments later)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


def _one(spans: Iterable[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    parent = _parent_id(span)
    while parent is not None and parent in by_id:
        names.append(by_id[parent].name)
        parent = _parent_id(by_id[parent])
    return names


async def test_one_generate_report_is_one_trace(mesh: MeshStack, org: str) -> None:
    async with mesh.client(org) as client:
        survey_id = await _survey(client)
        report = await client.generate_report(survey_id, kind="quick")
        done = await client.wait_for_report(report.id)
    assert done.state == report_pb2.REPORT_STATE_COMPLETED

    def root() -> ReadableSpan | None:
        return next(
            (
                s
                for s in SPANS.get_finished_spans()
                if s.name == GENERATE
                and s.kind == SpanKind.SERVER
                and (s.attributes or {}).get("surveymesh.report_id") == report.id
            ),
            None,
        )

    server = await _eventually(root)
    trace_id = server.context.trace_id

    def whole_trace() -> list[ReadableSpan] | None:
        spans = [s for s in SPANS.get_finished_spans() if s.context.trace_id == trace_id]
        done = any(s.name == SEND_NOTIFICATION and s.kind == SpanKind.SERVER for s in spans)
        return spans if done else None

    spans = await _eventually(whole_trace)
    by_id = {s.context.span_id: s for s in spans}

    # Every span the worker made for the report belongs to this one trace.
    runs = [
        s
        for s in SPANS.get_finished_spans()
        if s.name.startswith("RunActivity:")
        and (s.attributes or {}).get("surveymesh.report_id") == report.id
    ]
    assert {s.name for s in runs} == {f"RunActivity:{a}" for a in QUICK_ACTIVITIES}
    assert {s.context.trace_id for s in runs} == {trace_id}

    # Reporting: the server span continues the client's call and checks access at Delivery.
    client_call = _one(spans, GENERATE, SpanKind.CLIENT)
    assert _parent_id(server) == client_call.context.span_id
    checks = [s for s in spans if s.name == CHECK_ACCESS and s.kind == SpanKind.SERVER]
    assert sorted(_ancestors(c, by_id)[1] for c in checks) == [
        GENERATE,
        "RunActivity:report.validate",
    ]

    # Temporal (TracingInterceptor): the client span StartWorkflow joins GenerateReport; the
    # workflow's own spans (RunWorkflow, each StartActivity, CompleteWorkflow) are children
    # of the context the workflow was started with (they are instantaneous markers, replay
    # safe); each RunActivity on the worker is a child of its StartActivity.
    start = _one(spans, "StartWorkflow:QuickReportWorkflow", SpanKind.CLIENT)
    assert _parent_id(start) == server.context.span_id
    for name in ("RunWorkflow:QuickReportWorkflow", "CompleteWorkflow:QuickReportWorkflow"):
        assert _parent_id(_one(spans, name)) == start.context.span_id, name
    for activity in QUICK_ACTIVITIES:
        scheduled = _one(spans, f"StartActivity:{activity}", SpanKind.CLIENT)
        assert _parent_id(scheduled) == start.context.span_id, activity
        executed = _one(spans, f"RunActivity:{activity}", SpanKind.SERVER)
        assert _parent_id(executed) == scheduled.context.span_id, activity
        assert (executed.attributes or {}).get("surveymesh.org_id") == org

    # Peers: the snapshot streams from DeliveryService, notify calls NotificationService;
    # each server span's parent is the activity's client span of the same call.
    for method, activity in (
        (STREAM_RESPONSES, "RunActivity:report.snapshot"),
        (SEND_NOTIFICATION, "RunActivity:report.notify"),
    ):
        peer = _one(spans, method, SpanKind.SERVER)
        caller = by_id[_parent_id(peer) or 0]
        assert (caller.name, caller.kind) == (method, SpanKind.CLIENT)
        assert activity in _ancestors(peer, by_id)

    # The viewer continues a caller's trace: its SERVER span is the child of the caller's
    # span, and the page's queries are children of it.
    caller = trace.get_tracer("test").start_span("browser")
    headers = {"authorization": f"Bearer {mesh.token(org)}"}
    inject(headers, context=trace.set_span_in_context(caller))
    web_port = mesh.reporting.handle.web_port  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{web_port}/reports/{report.id}.json"
    async with httpx.AsyncClient() as http:
        assert (await http.get(url, headers=headers)).status_code == 200
    caller.end()
    route = "GET /reports/{report_id}.{ext}"
    page = await _eventually(
        lambda: next((s for s in SPANS.get_finished_spans() if s.name == route), None)
    )
    assert page.kind == SpanKind.SERVER and _parent_id(page) == caller.get_span_context().span_id
    assert (page.attributes or {}).get("http.response.status_code") == 200
    assert any(
        _parent_id(s) == page.context.span_id
        for s in SPANS.get_finished_spans()
        if (s.attributes or {}).get("db.system") == "postgresql"
    )

    # Postgres: queries of the activities and of the peer services, in the same trace.
    queries = [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql"]
    under = {a for q in queries for a in _ancestors(q, by_id)}
    assert {"RunActivity:report.snapshot", STREAM_RESPONSES, SEND_NOTIFICATION} <= under


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


async def test_metrics_endpoint_counts_a_report(mesh: MeshStack, org: str) -> None:
    server, port = telemetry.start_metrics_server(0)
    try:
        async with httpx.AsyncClient(base_url=f"http://localhost:{port}", timeout=10) as http:

            async def scrape() -> Samples:
                response = await http.get("/metrics")
                assert response.status_code == 200
                return _samples(response.text)

            async with mesh.client(org) as client:
                survey_id = await _survey(client)
                before = await scrape()
                report = await client.generate_report(survey_id, kind="quick")
                watching = None
                async for _event in client.watch_report(report.id):
                    if watching is None:
                        # Mid-stream: this WatchReport is an open subscription.
                        watching = _value(await scrape(), "surveymesh_watch_subscribers")
            assert watching is not None and watching >= 1

            # The counters move after the terminal event (compile returns, then notify runs).
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                after = await scrape()
                if (
                    _moved(
                        before,
                        after,
                        "surveymesh_notification_deliveries_total",
                        channel="in_app",
                        outcome="succeeded",
                    )
                    >= 1
                ):
                    break
                assert asyncio.get_running_loop().time() < deadline, "in-app delivery not counted"
                await asyncio.sleep(0.1)
            assert _value(after, "surveymesh_watch_subscribers") == watching - 1
    finally:
        server.shutdown()

    def moved(name: str, **labels: str) -> float:
        return _moved(before, after, name, **labels)

    assert moved("surveymesh_reports_started_total", kind="quick") == 1
    assert moved("surveymesh_reports_completed_total", kind="quick") == 1
    assert moved("surveymesh_reports_failed_total", kind="quick") == 0
    assert moved("surveymesh_report_duration_seconds_count", kind="quick", outcome="completed") == 1
    assert (
        moved(
            "surveymesh_report_stage_duration_seconds_count", stage="report.snapshot", outcome="ok"
        )
        == 1
    )
    assert (
        moved(
            "surveymesh_rpc_server_handled_total",
            grpc_service="surveymesh.reporting.v1.ReportingService",
            grpc_method="GenerateReport",
            grpc_code="OK",
        )
        == 1
    )
    assert (
        moved(
            "surveymesh_rpc_server_handling_seconds_count",
            grpc_service="surveymesh.delivery.v1.DeliveryService",
            grpc_method="StreamResponses",
            grpc_code="OK",
        )
        >= 1
    )


async def test_rpc_metrics_carry_the_error_code(mesh: MeshStack, org: str) -> None:
    labels = {
        "grpc_service": "surveymesh.reporting.v1.ReportingService",
        "grpc_method": "GetReport",
        "grpc_code": "NOT_FOUND",
    }
    name = "surveymesh_rpc_server_handled_total"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    async with mesh.client(org) as client:
        with pytest.raises(SurveyMeshError) as err:
            await client.get_report("00000000-0000-4000-8000-000000000000")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.reason == "REPORT_NOT_FOUND"
    assert REGISTRY.get_sample_value(name, labels) == before + 1


async def test_temporal_sdk_metrics_are_served_for_prometheus(temporal_env: Any) -> None:
    port = free_port()
    runtime = telemetry.temporal_runtime(Settings(temporal_metrics_port=port))
    assert runtime is not None
    base = temporal_env.client
    client = await Client.connect(
        base.service_client.config.target_host, namespace=base.namespace, runtime=runtime
    )
    await client.count_workflows()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert "temporal_request" in response.text
