"""Tenant isolation: a caller from another organization learns nothing, not even existence.

For every RPC that takes an id (or lists with a filter or a page token) a row of ``TABLE``
calls it as an admin of organization B with organization A's ids, and again with ids that
name nothing: the two answers must be identical (code, ``ErrorInfo.reason``, no data).
Requests that create things show that A's idempotency keys and A's ids in a request body
give B nothing of A's. ``test_every_rpc_with_an_id_has_a_row`` fails when an RPC with an
id-like field is added to a contract without a row here.

The web viewer's URLs (page, downloads, event stream) get the same treatment in
``test_viewer_urls_answer_foreign_like_unknown``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from reporting_svc import store
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.notification.v1 import notification_pb2 as npb_msg
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.integration.stack import (
    Md,
    Mesh,
    Outcome,
    Rpc,
    all_rpcs,
    call,
    iter_fields,
    mesh_stack,
    new_id,
)

pytestmark = pytest.mark.integration

RPCS = {rpc.name: rpc for rpc in all_rpcs()}
# Field names that carry a resource id, an idempotency key or a position in a listing.
ID_LIKE = re.compile(r"(^|_)ids?$|^page_token$|^idempotency_key$")


@dataclass
class World:
    """Organization A's resources, and the callers."""

    mesh: Mesh
    a: str
    b: str
    survey_id: str = ""
    report_id: str = ""  # COMPLETED, with a stored component
    report_request_id: str = ""
    queued_report_id: str = ""
    batch_id: str = ""
    notification_id: str = ""
    notification_key: str = ""
    endpoint_id: str = ""
    endpoint_request_id: str = ""
    page_tokens: dict[str, str] = field(default_factory=dict)

    def meta(self, org: str, user: str = "alice", role: str = "admin") -> Md:
        """Call metadata of ``user`` in ``org`` (admin: the most a caller can be)."""
        return self.mesh.token_for(org, user=user, role=role)

    async def call(
        self, name: str, request: Any, org: str, user: str = "alice", **kw: Any
    ) -> Outcome:
        """Calls RPC ``name`` as ``user`` of ``org``."""
        rpc = RPCS[name]
        return await call(self.mesh.channel(rpc.service), rpc, request, self.meta(org, user), **kw)


def _assert_same(name: str, foreign: Outcome, missing: Outcome) -> None:
    assert (foreign.code, foreign.reason) == (missing.code, missing.reason), (
        f"{name}: foreign id answered {foreign.code.name}/{foreign.reason}, "
        f"an unknown one {missing.code.name}/{missing.reason}"
    )
    assert foreign.messages == missing.messages, f"{name}: foreign id returned data"


async def _by_id(
    w: World, name: str, make: Callable[[str], Any], owned: str, *, owner_code: Any = "OK"
) -> None:
    """A's id as B answers exactly as an unknown id as B; A itself is answered."""
    if owner_code is not None:
        own = await w.call(name, make(owned), w.a)
        expected = grpc.StatusCode.OK if owner_code == "OK" else owner_code
        assert own.code == expected, f"{name}: the owner got {own.code.name}/{own.reason}"
    foreign = await w.call(name, make(owned), w.b)
    missing = await w.call(name, make(new_id()), w.b)
    assert foreign.code != grpc.StatusCode.OK, f"{name}: a foreign id was answered OK"
    _assert_same(name, foreign, missing)


async def _page_token(w: World, name: str, make: Callable[[str], Any]) -> None:
    """A's page token as B answers exactly as a made-up token."""
    foreign = await w.call(name, make(w.page_tokens[name]), w.b)
    made_up = await w.call(name, make("bm90LWEtdG9rZW4"), w.b)
    assert foreign.code == grpc.StatusCode.INVALID_ARGUMENT, name
    _assert_same(name, foreign, made_up)


# -- rows ------------------------------------------------------------------------------


async def create_survey(w: World) -> None:
    # A's request id gives B a survey of its own, and an org id in the body is ignored.
    got = await w.call(
        "DeliveryService/CreateSurvey",
        dpb.CreateSurveyRequest(request_id="shared-request", survey=_survey(org_id=w.a)),
        w.b,
    )
    assert got.code == grpc.StatusCode.OK
    survey = got.messages[0].survey
    assert survey.id != w.survey_id and survey.org_id == w.b


async def get_survey(w: World) -> None:
    await _by_id(
        w, "DeliveryService/GetSurvey", lambda i: dpb.GetSurveyRequest(survey_id=i), w.survey_id
    )


async def list_surveys(w: World) -> None:
    name = "DeliveryService/ListSurveys"
    await _page_token(w, name, lambda t: dpb.ListSurveysRequest(page_size=1, page_token=t))
    got = await w.call(name, dpb.ListSurveysRequest(page_size=100), w.b)
    assert w.survey_id not in {s.id for s in got.messages[0].surveys}


async def import_responses(w: World) -> None:
    def make(survey_id: str) -> list[dpb.ImportResponsesRequest]:
        resp = _response(f"r-{uuid.uuid4().hex[:8]}")
        return [dpb.ImportResponsesRequest(survey_id=survey_id, responses=[resp])]

    await _by_id(w, "DeliveryService/ImportResponses", make, w.survey_id)


async def stream_responses(w: World) -> None:
    await _by_id(
        w,
        "DeliveryService/StreamResponses",
        lambda i: dpb.StreamResponsesRequest(survey_id=i),
        w.survey_id,
    )


async def check_survey_access(w: World) -> None:
    await _by_id(
        w,
        "DeliveryService/CheckSurveyAccess",
        lambda i: dpb.CheckSurveyAccessRequest(survey_id=i),
        w.survey_id,
    )


async def generate_report(w: World) -> None:
    name = "ReportingService/GenerateReport"

    def make(survey_id: str) -> rpb.GenerateReportRequest:
        return rpb.GenerateReportRequest(
            survey_id=survey_id, kind=report_pb2.REPORT_KIND_QUICK, request_id=uuid.uuid4().hex
        )

    await _by_id(w, name, make, w.survey_id)
    # A's request id, reused by B for a survey of B's, makes a new report of B's.
    own_survey = await w.mesh.reporting.survey(w.b)
    got = await w.call(
        name,
        rpb.GenerateReportRequest(
            survey_id=own_survey,
            kind=report_pb2.REPORT_KIND_QUICK,
            request_id=w.report_request_id,
        ),
        w.b,
    )
    assert got.code == grpc.StatusCode.OK
    assert got.messages[0].report.id != w.report_id


async def generate_reports(w: World) -> None:
    def make(survey_id: str) -> rpb.GenerateReportsRequest:
        return rpb.GenerateReportsRequest(
            survey_ids=[survey_id],
            kind=report_pb2.REPORT_KIND_QUICK,
            request_id=uuid.uuid4().hex,
        )

    await _by_id(w, "ReportingService/GenerateReports", make, w.survey_id)


async def get_report(w: World) -> None:
    await _by_id(
        w, "ReportingService/GetReport", lambda i: rpb.GetReportRequest(report_id=i), w.report_id
    )


async def get_report_component(w: World) -> None:
    await _by_id(
        w,
        "ReportingService/GetReportComponent",
        lambda i: rpb.GetReportComponentRequest(report_id=i, component_type="statistics"),
        w.report_id,
    )


async def list_reports(w: World) -> None:
    name = "ReportingService/ListReports"
    await _page_token(w, name, lambda t: rpb.ListReportsRequest(page_size=1, page_token=t))
    # Filters: A's survey or batch as a filter finds exactly what an unknown one finds.
    for flt in ("survey_id", "batch_id"):
        owned = getattr(w, flt)
        own = await w.call(name, rpb.ListReportsRequest(**{flt: owned}), w.a)  # type: ignore[arg-type]
        assert own.code == grpc.StatusCode.OK and own.messages[0].reports, flt
        foreign = await w.call(name, rpb.ListReportsRequest(**{flt: owned}), w.b)  # type: ignore[arg-type]
        missing = await w.call(name, rpb.ListReportsRequest(**{flt: new_id()}), w.b)  # type: ignore[arg-type]
        _assert_same(f"{name} by {flt}", foreign, missing)
        if foreign.code == grpc.StatusCode.OK:
            assert not foreign.messages[0].reports
    everything = await w.call(name, rpb.ListReportsRequest(page_size=100), w.b)
    assert not {w.report_id, w.queued_report_id} & {r.id for r in everything.messages[0].reports}


async def watch_report(w: World) -> None:
    await _by_id(
        w,
        "ReportingService/WatchReport",
        lambda i: rpb.WatchReportRequest(report_id=i),
        w.report_id,
    )


async def cancel_report(w: World) -> None:
    name = "ReportingService/CancelReport"
    foreign = await w.call(name, rpb.CancelReportRequest(report_id=w.queued_report_id), w.b)
    missing = await w.call(name, rpb.CancelReportRequest(report_id=new_id()), w.b)
    assert foreign.code != grpc.StatusCode.OK
    _assert_same(name, foreign, missing)
    # B's attempt changed nothing: A's report still runs, and A may cancel it.
    state = await w.call(
        "ReportingService/GetReport", rpb.GetReportRequest(report_id=w.queued_report_id), w.a
    )
    assert state.messages[0].report.state == report_pb2.REPORT_STATE_QUEUED


async def render_report(w: World) -> None:
    await _by_id(
        w,
        "ReportingService/RenderReport",
        lambda i: rpb.RenderReportRequest(report_id=i, format=report_pb2.RENDER_FORMAT_JSON),
        w.report_id,
    )


async def send_notification(w: World) -> None:
    # A's idempotency key, used by B for B's own alice, is a new notification of B's.
    got = await w.call(
        "NotificationService/SendNotification", _notification(w.notification_key), w.b
    )
    assert got.code == grpc.StatusCode.OK
    assert not got.messages[0].duplicate
    assert got.messages[0].notification.id != w.notification_id
    # ... and A's alice does not get it.
    listed = await w.call(
        "NotificationService/ListNotifications", npb.ListNotificationsRequest(page_size=100), w.a
    )
    ids = {n.id for n in listed.messages[0].notifications}
    assert got.messages[0].notification.id not in ids and w.notification_id in ids


async def list_notifications(w: World) -> None:
    name = "NotificationService/ListNotifications"
    await _page_token(w, name, lambda t: npb.ListNotificationsRequest(page_size=1, page_token=t))
    # Same user name in another org, and another user of the same org: none of alice's.
    for org, user in ((w.b, "alice"), (w.a, "bob")):
        got = await w.call(name, npb.ListNotificationsRequest(page_size=100), org, user)
        assert w.notification_id not in {n.id for n in got.messages[0].notifications}


async def mark_notification_read(w: World) -> None:
    name = "NotificationService/MarkNotificationRead"
    for org, user in ((w.b, "alice"), (w.a, "bob")):
        foreign = await w.call(
            name, npb.MarkNotificationReadRequest(notification_id=w.notification_id), org, user
        )
        missing = await w.call(
            name, npb.MarkNotificationReadRequest(notification_id=new_id()), org, user
        )
        assert foreign.code == grpc.StatusCode.NOT_FOUND, (org, user)
        _assert_same(f"{name} as {user}@{org}", foreign, missing)


async def watch_notifications(w: World) -> None:
    name = "NotificationService/WatchNotifications"
    request = npb.WatchNotificationsRequest(after_sequence=0)
    own = await w.call(name, request, w.a, limit=100, deadline=2)
    alices = {m.notification.id for m in own.messages}
    assert w.notification_id in alices, "alice of A sees her own notifications"
    # Replay: alice of B (same user name) and bob of A (same org) see none of them; the
    # stream stays open, silent about A's alice, until the deadline.
    for org, user in ((w.b, "alice"), (w.a, "bob")):
        got = await w.call(name, request, org, user, limit=100, deadline=1.5)
        assert got.code == grpc.StatusCode.DEADLINE_EXCEEDED, (org, user)
        assert not alices & {m.notification.id for m in got.messages}, (org, user)
    # Live: a notification for alice of A, sent while the others watch, reaches only her.
    after = {
        (org, user): max((m.notification.sequence for m in got.messages), default=0)
        for org, user in ((w.b, "alice"), (w.a, "bob"))
        for got in [await w.call(name, request, org, user, limit=100, deadline=1)]
    }
    watchers = [
        asyncio.ensure_future(
            w.call(
                name,
                npb.WatchNotificationsRequest(after_sequence=seq),
                org,
                user,
                limit=1,
                deadline=3,
            )
        )
        for (org, user), seq in after.items()
    ]
    await asyncio.sleep(0.5)
    sent = await w.call(
        "NotificationService/SendNotification", _notification(uuid.uuid4().hex), w.a
    )
    assert sent.code == grpc.StatusCode.OK
    for got in await asyncio.gather(*watchers):
        assert not got.messages and got.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def create_webhook_endpoint(w: World) -> None:
    got = await w.call(
        "NotificationService/CreateWebhookEndpoint",
        npb.CreateWebhookEndpointRequest(
            url="http://127.0.0.1:9/hook", request_id=w.endpoint_request_id
        ),
        w.b,
    )
    assert got.code == grpc.StatusCode.OK
    assert got.messages[0].endpoint.id != w.endpoint_id


async def list_webhook_endpoints(w: World) -> None:
    name = "NotificationService/ListWebhookEndpoints"
    await _page_token(w, name, lambda t: npb.ListWebhookEndpointsRequest(page_size=1, page_token=t))
    got = await w.call(name, npb.ListWebhookEndpointsRequest(page_size=100), w.b)
    assert w.endpoint_id not in {e.id for e in got.messages[0].endpoints}


async def delete_webhook_endpoint(w: World) -> None:
    name = "NotificationService/DeleteWebhookEndpoint"
    foreign = await w.call(name, npb.DeleteWebhookEndpointRequest(endpoint_id=w.endpoint_id), w.b)
    missing = await w.call(name, npb.DeleteWebhookEndpointRequest(endpoint_id=new_id()), w.b)
    assert foreign.code == grpc.StatusCode.NOT_FOUND
    _assert_same(name, foreign, missing)
    listed = await w.call(
        "NotificationService/ListWebhookEndpoints",
        npb.ListWebhookEndpointsRequest(page_size=100),
        w.a,
    )
    assert w.endpoint_id in {e.id for e in listed.messages[0].endpoints}


async def rotate_webhook_secret(w: World) -> None:
    name = "NotificationService/RotateWebhookSecret"
    foreign = await w.call(name, npb.RotateWebhookSecretRequest(endpoint_id=w.endpoint_id), w.b)
    missing = await w.call(name, npb.RotateWebhookSecretRequest(endpoint_id=new_id()), w.b)
    assert foreign.code == grpc.StatusCode.NOT_FOUND
    _assert_same(name, foreign, missing)


async def list_delivery_attempts(w: World) -> None:
    name = "NotificationService/ListDeliveryAttempts"
    await _by_id(
        w,
        name,
        lambda i: npb.ListDeliveryAttemptsRequest(notification_id=i),
        w.notification_id,
    )
    await _by_id(w, name, lambda i: npb.ListDeliveryAttemptsRequest(endpoint_id=i), w.endpoint_id)


TABLE: dict[str, Callable[[World], Awaitable[None]]] = {
    "DeliveryService/CreateSurvey": create_survey,
    "DeliveryService/GetSurvey": get_survey,
    "DeliveryService/ListSurveys": list_surveys,
    "DeliveryService/ImportResponses": import_responses,
    "DeliveryService/StreamResponses": stream_responses,
    "DeliveryService/CheckSurveyAccess": check_survey_access,
    "ReportingService/GenerateReport": generate_report,
    "ReportingService/GenerateReports": generate_reports,
    "ReportingService/GetReport": get_report,
    "ReportingService/GetReportComponent": get_report_component,
    "ReportingService/ListReports": list_reports,
    "ReportingService/WatchReport": watch_report,
    "ReportingService/CancelReport": cancel_report,
    "ReportingService/RenderReport": render_report,
    "NotificationService/SendNotification": send_notification,
    "NotificationService/ListNotifications": list_notifications,
    "NotificationService/MarkNotificationRead": mark_notification_read,
    "NotificationService/WatchNotifications": watch_notifications,
    "NotificationService/CreateWebhookEndpoint": create_webhook_endpoint,
    "NotificationService/ListWebhookEndpoints": list_webhook_endpoints,
    "NotificationService/DeleteWebhookEndpoint": delete_webhook_endpoint,
    "NotificationService/RotateWebhookSecret": rotate_webhook_secret,
    "NotificationService/ListDeliveryAttempts": list_delivery_attempts,
}


def _needs_row(rpc: Rpc) -> bool:
    fields = [path.rsplit(".", 1)[-1] for path, _ in iter_fields(rpc.method.input_type)]
    lists = rpc.method.name.startswith(("List", "Watch"))
    return lists or any(ID_LIKE.search(f) for f in fields)


def test_every_rpc_with_an_id_has_a_row() -> None:
    needed = {rpc.name for rpc in all_rpcs() if _needs_row(rpc)}
    missing = sorted(needed - TABLE.keys())
    assert not missing, f"RPCs with ids or filters but no isolation row: {missing}"
    stale = sorted(TABLE.keys() - RPCS.keys())
    assert not stale, f"rows for RPCs that no longer exist: {stale}"
    per_service: dict[str, int] = {}
    for name in TABLE:
        per_service[name.split("/")[0]] = per_service.get(name.split("/")[0], 0) + 1
    print(f"isolation table: {per_service}")


# -- A's world -------------------------------------------------------------------------


def _survey(org_id: str = "") -> survey_pb2.Survey:
    return survey_pb2.Survey(
        title="Isolation",
        org_id=org_id,
        questions=[
            survey_pb2.Question(id="nps", text="Recommend us?", type=survey_pb2.QUESTION_TYPE_NPS)
        ],
    )


def _response(rid: str) -> response_pb2.Response:
    return response_pb2.Response(
        id=rid, completed=True, answers=[response_pb2.Answer(question_id="nps", nps=9)]
    )


def _notification(key: str) -> npb.SendNotificationRequest:
    return npb.SendNotificationRequest(
        user_id="alice",
        type="report.completed",
        title="Your report is ready",
        channels=[npb_msg.CHANNEL_IN_APP],
        idempotency_key=key,
    )


async def _ok(w: World, name: str, request: Any) -> Any:
    got = await w.call(name, request, w.a)
    assert got.code == grpc.StatusCode.OK, f"{name}: {got.code.name} {got.reason}"
    return got.messages[0]


@pytest.fixture(scope="module")
async def world(
    new_database: Callable[[str], Any],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    async with mesh_stack(
        new_database, temporal_env.client, token_for, tmp_path_factory.mktemp("isolation")
    ) as mesh:
        w = World(mesh, a=f"org-a-{uuid.uuid4().hex[:8]}", b=f"org-b-{uuid.uuid4().hex[:8]}")
        for i in range(2):
            created = await _ok(
                w,
                "DeliveryService/CreateSurvey",
                dpb.CreateSurveyRequest(survey=_survey(), request_id=f"shared-request-{i}"),
            )
            w.survey_id = w.survey_id or created.survey.id
        await _ok(
            w,
            "DeliveryService/ImportResponses",
            [dpb.ImportResponsesRequest(survey_id=w.survey_id, responses=[_response("r-1")])],
        )
        # The same request id B will reuse in the CreateSurvey row.
        await _ok(
            w,
            "DeliveryService/CreateSurvey",
            dpb.CreateSurveyRequest(survey=_survey(), request_id="shared-request"),
        )
        w.report_request_id = uuid.uuid4().hex
        for request_id in (w.report_request_id, uuid.uuid4().hex):
            report = (
                await _ok(
                    w,
                    "ReportingService/GenerateReport",
                    rpb.GenerateReportRequest(
                        survey_id=w.survey_id,
                        kind=report_pb2.REPORT_KIND_QUICK,
                        request_id=request_id,
                    ),
                )
            ).report
            w.report_id, w.queued_report_id = w.queued_report_id or report.id, report.id
        # The first report completes with a component, as the worker would store it.
        await store.store_component(w.mesh.reporting.pool, w.report_id, "statistics", b'{"n": 1}')
        await w.mesh.reporting.complete(w.report_id)
        batch = await _ok(
            w,
            "ReportingService/GenerateReports",
            rpb.GenerateReportsRequest(
                survey_ids=[w.survey_id],
                kind=report_pb2.REPORT_KIND_QUICK,
                request_id=uuid.uuid4().hex,
            ),
        )
        w.batch_id = batch.batch_id
        w.notification_key = uuid.uuid4().hex
        for key in (w.notification_key, uuid.uuid4().hex):
            sent = await _ok(w, "NotificationService/SendNotification", _notification(key))
            w.notification_id = w.notification_id or sent.notification.id
        w.endpoint_request_id = uuid.uuid4().hex
        for request_id in (w.endpoint_request_id, uuid.uuid4().hex):
            endpoint = await _ok(
                w,
                "NotificationService/CreateWebhookEndpoint",
                npb.CreateWebhookEndpointRequest(
                    url="http://127.0.0.1:9/hook", request_id=request_id
                ),
            )
            w.endpoint_id = w.endpoint_id or endpoint.endpoint.id
        listings = {
            "DeliveryService/ListSurveys": dpb.ListSurveysRequest(page_size=1),
            "ReportingService/ListReports": rpb.ListReportsRequest(page_size=1),
            "NotificationService/ListNotifications": npb.ListNotificationsRequest(page_size=1),
            "NotificationService/ListWebhookEndpoints": npb.ListWebhookEndpointsRequest(
                page_size=1
            ),
        }
        for name, request in listings.items():
            w.page_tokens[name] = (await _ok(w, name, request)).next_page_token
            assert w.page_tokens[name], name
        yield w


@pytest.mark.parametrize("name", sorted(TABLE))
async def test_foreign_ids_answer_like_unknown_ids(world: World, name: str) -> None:
    await TABLE[name](world)


# -- the web viewer --------------------------------------------------------------------

# Every route of reporting_svc.web that names a report; `{id}` is replaced.
VIEWER_URLS = (
    "/reports/{id}",
    "/reports/{id}.html",
    "/reports/{id}.json",
    "/reports/{id}.csv",
    "/reports/{id}.pdf",
    "/reports/{id}/events",
)
# Cheap to render, so the owner's success is checked too (the others render PDFs etc.).
OWNER_CHECKED = {"/reports/{id}.json", "/reports/{id}/events"}


@pytest.mark.parametrize("url", VIEWER_URLS)
async def test_viewer_urls_answer_foreign_like_unknown(world: World, url: str) -> None:
    handle = world.mesh.reporting.reporting.handle
    base = f"http://localhost:{handle.web_port}"  # type: ignore[attr-defined]

    def bearer(org: str) -> dict[str, str]:
        return {"Authorization": world.meta(org)[0][1]}

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def get(org: str, report_id: str) -> tuple[int, str, str]:
            r = await http.get(url.format(id=report_id), headers=bearer(org))
            return r.status_code, r.headers.get("X-Error-Reason", ""), r.text

        if url in OWNER_CHECKED:
            status, _, body = await get(world.a, world.report_id)
            assert status == 200 and body, url
        foreign = await get(world.b, world.report_id)
        missing = await get(world.b, new_id())
        assert foreign[0] == 404, (url, foreign[:2])
        assert foreign == missing, url
