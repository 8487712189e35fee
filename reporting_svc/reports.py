"""The domain of ReportingService: creating reports, starting their workflows, serving them.

:class:`Reports` receives its peers (the pool, the Temporal client, the Delivery stub, the
event hub) and knows nothing about gRPC servers: the servicer validates requests, passes
the caller's credentials and deadlines in, and turns results into responses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf import json_format, timestamp_pb2
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from reporting_svc import repository as repo
from reporting_svc import store
from reporting_svc.component_cache import ComponentCache
from reporting_svc.events import EventHub
from reporting_svc.render import Format, Rendered, ReportDocument, StoredComponent, render
from reporting_svc.render.pool import RenderPool
from reporting_svc.validation import ListFilter, ReportSpec
from surveymesh.auth import WRITE_ROLES, Principal
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dpb_grpc
from surveymesh.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from surveymesh.paging import decode_token, encode_token
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from surveymesh.workflow_contract import (
    BATCH_QUEUE,
    BATCH_WORKFLOW,
    FULL_WORKFLOW,
    QUICK_QUEUE,
    QUICK_WORKFLOW,
    BatchItem,
    BatchWorkflowInput,
    ReportOptionsInput,
    ReportWorkflowInput,
    batch_workflow_id,
    report_workflow_id,
)

log = logging.getLogger(__name__)

S = report_pb2.ReportState
E = report_pb2.ReportEventType
V = report_pb2.ReportView
F = report_pb2.RenderFormat

# Report and batch ids are derived from the org and the client's request id, so concurrent
# identical requests compute the same id and converge on one row (ON CONFLICT DO NOTHING).
REPORT_ID_NAMESPACE = uuid.UUID("6f1d3b52-8a4e-4c1f-9d0b-2f6c1e7a9b35")
BATCH_ID_NAMESPACE = uuid.UUID("b7e2c9a4-13d5-4f6e-8a70-5c9d2e1f3a68")
CANCEL_ROLES = frozenset({"analyst", "admin"})
# GetReport FULL inlines component data up to this total; larger components come back with
# `size_bytes` but no `data` (fetch them with GetReportComponent), so a response never
# exceeds the 4 MiB message limit.
FULL_VIEW_DATA_BUDGET = 3 * 1024 * 1024
# RenderReport chunks stay under 1 MiB per message including the header fields.
RENDER_CHUNK = 1024 * 1024 - 4096
# Renderings of completed reports kept per process (they never change).
RENDER_CACHE_BYTES = 64 * 1024 * 1024
# Component data GetReport FULL keeps in memory (see reporting_svc.component_cache).
COMPONENT_CACHE_BYTES = 64 * 1024 * 1024
# Concurrent CheckSurveyAccess calls of one GenerateReports.
ACCESS_CHECK_CONCURRENCY = 16
_TRANSIENT_TEMPORAL = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
    }
)
SURVEY_ID_KEY = SearchAttributeKey.for_keyword("SurveyId")
ORG_ID_KEY = SearchAttributeKey.for_keyword("OrganizationId")
REPORT_ID_KEY = SearchAttributeKey.for_keyword("ReportId")


def report_uuid(org: str, request_id: str) -> str:
    """The id of the report created by ``request_id`` in ``org``."""
    return str(uuid.uuid5(REPORT_ID_NAMESPACE, f"{org}\x00{request_id}"))


def batch_uuid(org: str, request_id: str) -> str:
    """The id of the batch created by ``request_id`` in ``org``."""
    return str(uuid.uuid5(BATCH_ID_NAMESPACE, f"{org}\x00{request_id}"))


def batch_item_request_id(request_id: str, index: int) -> str:
    """The request id of the ``index``-th report of a batch (its idempotency key)."""
    return f"{request_id}/{index}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    # The arithmetic of Timestamp.FromDatetime (naive means UTC) at a quarter of its cost:
    # a FULL report has a dozen timestamps.
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def _error(value: dict[str, Any] | None) -> report_pb2.ReportError | None:
    if not value:
        return None
    return report_pb2.ReportError(
        reason=str(value.get("reason", "")),
        message=str(value.get("message", "")),
        stage=str(value.get("stage", "")),
    )


def component_to_pb(row: asyncpg.Record, data: bytes | None = None) -> report_pb2.Component:
    """A component row of :mod:`reporting_svc.repository` as a proto ``Component``, with
    ``data`` as its bytes (by default the row's own)."""
    return report_pb2.Component(
        type=row["component_type"],
        data=row["data"] if data is None else data,
        size_bytes=row["size_bytes"],
        create_time=_ts(row["component_create_time"]),
        schema_version=row["schema_version"],
    )


def report_to_pb(
    row: asyncpg.Record, components: Sequence[report_pb2.Component] = ()
) -> report_pb2.Report:
    """A report row (and its components) as a proto ``Report``."""
    options = row["options"] or {}
    return report_pb2.Report(
        id=row["id"],
        org_id=row["org_id"],
        survey_id=row["survey_id"],
        kind=row["kind"],
        state=row["state"],
        options=report_pb2.ReportOptions(
            segment_by=options.get("segment_by", []),
            question_ids=options.get("question_ids", []),
            include_incomplete=bool(options.get("include_incomplete", False)),
            notify_email=options.get("notify_email", ""),
            trend_interval=options.get("trend_interval", ""),
            required_roles=row["required_roles"],
        ),
        workflow_id=row["workflow_id"],
        creator=row["creator"],
        progress_percent=row["progress_percent"],
        current_stage=row["current_stage"],
        create_time=_ts(row["create_time"]),
        start_time=_ts(row["start_time"]),
        end_time=_ts(row["end_time"]),
        response_count=row["response_count"],
        components=components,
        error=_error(row["error"]),
        batch_id=row["batch_id"] or "",
        last_event_sequence=row["last_sequence"],
        required_roles=row["required_roles"],
    )


def event_to_pb(report_id: str, row: asyncpg.Record) -> report_pb2.ReportEvent:
    """A stored event as a proto ``ReportEvent``."""
    return report_pb2.ReportEvent(
        report_id=report_id,
        sequence=row["sequence"],
        type=row["type"],
        create_time=_ts(row["create_time"]),
        state=row["state"],
        stage=row["stage"],
        component_type=row["component_type"],
        progress_percent=row["progress_percent"],
        items_done=row["items_done"],
        items_total=row["items_total"],
        message=row["message"],
        error=_error(row["error"]),
    )


class StoredEvents:
    """The reports' event logs in the reporting database, as :class:`EventHub` reads them.

    Args:
        pool: The reporting database.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def events_after(
        self, report_id: str, after: int, limit: int
    ) -> list[report_pb2.ReportEvent]:
        """Up to ``limit`` events of the report with a sequence above ``after``, in order."""
        rows = await repo.events_after(self._pool, report_id, after, limit)
        return [event_to_pb(report_id, r) for r in rows]

    async def position(self, report_id: str) -> tuple[int, bool] | None:
        """The report's last sequence and whether it has ended, or None if it does not exist."""
        row = await repo.report_progress(self._pool, report_id)
        if row is None:
            return None
        return row["last_sequence"], row["state"] in store.TERMINAL_STATES


def _report_not_found() -> NotFound:
    # One message and reason for missing, foreign and role-hidden reports alike.
    return NotFound("report not found", reason="REPORT_NOT_FOUND")


class Reports:
    """Report generation and reading, for one process.

    Args:
        pool: The reporting database.
        temporal: Starts and cancels workflows.
        delivery: DeliveryService stub, for survey access checks.
        hub: The process's LISTEN hub (WatchReport, the viewer's live updates).
        settings: Task queue names.
        renderer: Runs renderings off the event loop; by default in threads.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        temporal: Client,
        delivery: dpb_grpc.DeliveryServiceStub,
        hub: EventHub,
        settings: Settings,
        renderer: RenderPool | None = None,
    ) -> None:
        self._pool = pool
        self._renderer = renderer or RenderPool(0)
        self._rendered = RenderCache(RENDER_CACHE_BYTES)
        self._component_data = ComponentCache(COMPONENT_CACHE_BYTES)
        self._temporal = temporal
        self._delivery = delivery
        self._hub = hub
        self._settings = settings

    # -- generation --------------------------------------------------------------------

    async def check_survey_access(
        self,
        survey_id: str,
        auth: Sequence[tuple[str, str]],
        budget: float,
        field: str = "survey_id",
    ) -> None:
        """Asks Delivery whether the caller (whose ``auth`` metadata is forwarded) may read a survey.

        Raises:
            NotFound: unknown or foreign survey (reason SURVEY_NOT_FOUND).
            PermissionDenied: the survey exists but the caller may not read it.
            Unavailable: Delivery cannot be reached in time.
        """
        try:
            resp: dpb.CheckSurveyAccessResponse = await self._delivery.CheckSurveyAccess(
                dpb.CheckSurveyAccessRequest(survey_id=survey_id),
                metadata=tuple(auth),
                timeout=budget,
            )
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    "survey not found", reason="SURVEY_NOT_FOUND", metadata={"survey_id": survey_id}
                ) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(
                    [FieldViolation(field, "is not a survey id", "INVALID_SURVEY_ID")],
                    reason="INVALID_SURVEY_ID",
                ) from None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(
                    "the survey may not be read", reason="SURVEY_ACCESS_DENIED"
                ) from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(
                    "DeliveryService rejected the credentials", reason="PEER_UNAUTHENTICATED"
                ) from None
            raise Unavailable(
                f"DeliveryService is unavailable: {code.name}", reason="DELIVERY_UNAVAILABLE"
            ) from None
        if not resp.allowed:
            raise PermissionDenied(
                "the caller may not read this survey",
                reason="SURVEY_ACCESS_DENIED",
                metadata={"survey_id": survey_id, "delivery_reason": resp.reason},
            )

    async def generate(
        self,
        principal: Principal,
        spec: ReportSpec,
        auth: Sequence[tuple[str, str]],
        *,
        peer_timeout: float,
        temporal_timeout: float,
    ) -> report_pb2.Report:
        """Creates (or finds) the report of ``spec.request_id`` and makes sure its workflow runs."""
        principal.require(WRITE_ROLES, "generating reports")
        survey_id = spec.survey_ids[0]
        await self.check_survey_access(survey_id, auth, peer_timeout)
        org = principal.org
        new = repo.NewReport(
            id=report_uuid(org, spec.request_id),
            survey_id=survey_id,
            request_id=spec.request_id,
            workflow_id=report_workflow_id(org, spec.request_id),
        )
        rows = await self._create(principal, spec, [new], batch_id=None)
        row = rows[0]
        if row["state"] == S.REPORT_STATE_QUEUED:
            await self._start_report(row, temporal_timeout)
        return report_to_pb(row)

    async def generate_batch(
        self,
        principal: Principal,
        spec: ReportSpec,
        auth: Sequence[tuple[str, str]],
        *,
        peer_timeout: float,
        temporal_timeout: float,
    ) -> pb.GenerateReportsResponse:
        """Creates the reports of a batch in one transaction and starts the batch workflow."""
        principal.require(WRITE_ROLES, "generating reports")
        limit = asyncio.Semaphore(ACCESS_CHECK_CONCURRENCY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + peer_timeout

        async def check(i: int, survey_id: str) -> None:
            async with limit:
                remaining = max(0.1, deadline - loop.time())
                await self.check_survey_access(survey_id, auth, remaining, f"survey_ids[{i}]")

        # The first refused survey fails the call; the checks still in flight are cancelled.
        tasks = [asyncio.create_task(check(i, s)) for i, s in enumerate(spec.survey_ids)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        org = principal.org
        batch_id = batch_uuid(org, spec.request_id)
        news = []
        for i, survey_id in enumerate(spec.survey_ids):
            rid = batch_item_request_id(spec.request_id, i)
            news.append(
                repo.NewReport(report_uuid(org, rid), survey_id, rid, report_workflow_id(org, rid))
            )
        rows = await self._create(principal, spec, news, batch_id=batch_id)
        wid = batch_workflow_id(org, spec.request_id)
        first = rows[0]
        arg = BatchWorkflowInput(
            batch_id=batch_id,
            org_id=org,
            requested_by=first["creator"],
            kind=spec.kind_name,
            items=[BatchItem(r["id"], r["survey_id"], r["workflow_id"]) for r in rows],
            options=dataclasses.replace(spec.options),
        )
        await self._start_workflow(
            BATCH_WORKFLOW,
            arg,
            wid,
            self._settings.task_queue(BATCH_QUEUE),
            TypedSearchAttributes([SearchAttributePair(ORG_ID_KEY, org)]),
            temporal_timeout,
        )
        return pb.GenerateReportsResponse(
            batch_id=batch_id, workflow_id=wid, reports=[report_to_pb(r) for r in rows]
        )

    async def _create(
        self,
        principal: Principal,
        spec: ReportSpec,
        news: Sequence[repo.NewReport],
        *,
        batch_id: str | None,
    ) -> list[asyncpg.Record]:
        request_ids = [n.request_id for n in news]
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.create_reports(
                conn,
                principal.org,
                news,
                kind=spec.kind,
                options=dataclasses.asdict(spec.options),
                creator=principal.user,
                required_roles=spec.required_roles,
                batch_id=batch_id,
            )
            found = await repo.reports_by_request_id(conn, principal.org, request_ids)
        rows = []
        for n in news:
            row = found[n.request_id]
            # A request id names one request: reusing it for another survey, kind or batch
            # is a client bug, not a retry.
            if (
                row["survey_id"] != n.survey_id
                or row["kind"] != spec.kind
                or (row["batch_id"] or None) != batch_id
            ):
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "request_id", "was used for a different request", "REQUEST_ID_REUSED"
                        )
                    ],
                    reason="REQUEST_ID_REUSED",
                )
            rows.append(row)
        return rows

    async def _start_report(self, row: asyncpg.Record, budget: float) -> None:
        options = row["options"] or {}
        kind = "full" if row["kind"] == report_pb2.REPORT_KIND_FULL else "quick"
        arg = ReportWorkflowInput(
            report_id=row["id"],
            org_id=row["org_id"],
            survey_id=row["survey_id"],
            requested_by=row["creator"],
            kind=kind,
            options=_options_input(options),
        )
        attrs = TypedSearchAttributes(
            [
                SearchAttributePair(SURVEY_ID_KEY, row["survey_id"]),
                SearchAttributePair(ORG_ID_KEY, row["org_id"]),
                SearchAttributePair(REPORT_ID_KEY, row["id"]),
            ]
        )
        await self._start_workflow(
            FULL_WORKFLOW if kind == "full" else QUICK_WORKFLOW,
            arg,
            row["workflow_id"],
            self._settings.task_queue(QUICK_QUEUE),
            attrs,
            budget,
        )

    async def _start_workflow(
        self,
        workflow: str,
        arg: object,
        workflow_id: str,
        task_queue: str,
        attrs: TypedSearchAttributes,
        budget: float,
    ) -> None:
        # USE_EXISTING makes a start of a running workflow return it; REJECT_DUPLICATE makes
        # a start of a finished one fail with AlreadyStarted, which is success here: the
        # report row is the source of truth and a finished report is never restarted.
        try:
            await asyncio.wait_for(
                self._temporal.start_workflow(
                    workflow,
                    arg,
                    id=workflow_id,
                    task_queue=task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    search_attributes=attrs,
                    rpc_timeout=timedelta(seconds=max(budget, 0.5)),
                ),
                max(budget, 0.5),
            )
        except WorkflowAlreadyStartedError:
            pass
        except RPCError as e:
            if e.status in _TRANSIENT_TEMPORAL:
                raise _temporal_unavailable(e) from None
            raise
        except TimeoutError:
            raise _temporal_unavailable("timed out") from None
        except RuntimeError as e:
            # The SDK reports a failed (lazy) connection as a plain RuntimeError.
            if "connect" in str(e).lower():
                raise _temporal_unavailable(e) from None
            raise

    # -- reading -----------------------------------------------------------------------

    async def _get_row(
        self, conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, report_id: str
    ) -> asyncpg.Record:
        row = await repo.get_report(conn, principal.org, sorted(principal.roles), report_id)
        if row is None:
            raise _report_not_found()
        return row

    async def get(self, principal: Principal, report_id: str, view: int) -> report_pb2.Report:
        """One report; FULL (the default) inlines component data, BASIC only their sizes."""
        full = view != V.REPORT_VIEW_BASIC
        # Data held in memory for this report: read the row and the sizes only.
        held = full and report_id in self._component_data
        rows = await repo.report_with_components(
            self._pool,
            principal.org,
            sorted(principal.roles),
            report_id,
            with_data=full and not held,
        )
        if not rows:
            raise _report_not_found()
        # The one row of a report without components has NULL component columns.
        comps = [c for c in rows if c["component_type"] is not None]
        inline = []
        if full:
            budget = FULL_VIEW_DATA_BUDGET
            for c in comps:
                if c["size_bytes"] <= budget:
                    budget -= c["size_bytes"]
                    inline.append(c)
        data = await self._component_bytes(report_id, inline, read=not held)
        out = [component_to_pb(c, data.get(c["component_type"], b"")) for c in comps]
        return report_to_pb(rows[0], out)

    async def _component_bytes(
        self, report_id: str, rows: Sequence[asyncpg.Record], *, read: bool
    ) -> dict[str, bytes]:
        """The bytes of these components, by type: from ``rows`` when they were ``read``
        with their data, else from memory and, for what is not held, the database."""
        if read:
            for c in rows:
                self._component_data.put(report_id, c, c["data"])
            return {c["component_type"]: c["data"] for c in rows}
        data = self._component_data.get(report_id, rows)
        missing = {c["component_type"]: c for c in rows if c["component_type"] not in data}
        if missing:
            for r in await repo.component_data(self._pool, report_id, list(missing)):
                want = missing[r["component_type"]]
                # Rows never change; a mismatch means the report was deleted and made anew
                # in between, and the component is left to GetReportComponent.
                if r["component_create_time"] == want["component_create_time"]:
                    self._component_data.put(report_id, want, r["data"])
                    data[r["component_type"]] = r["data"]
        return data

    async def get_component(
        self, principal: Principal, report_id: str, component_type: str
    ) -> report_pb2.Component:
        """One stored component with its data."""
        row = await repo.visible_component(
            self._pool, principal.org, sorted(principal.roles), report_id, component_type
        )
        if row is None:
            raise _report_not_found()
        if row["component_type"] is None:
            raise NotFound(
                "component not found (not stored yet, or not part of this report)",
                reason="COMPONENT_NOT_FOUND",
                metadata={"component_type": component_type},
            )
        return component_to_pb(row)

    async def list(
        self, principal: Principal, flt: ListFilter, size: int, token: str
    ) -> tuple[list[report_pb2.Report], str]:
        """A page of the org's reports (BASIC view), newest first, and the next page token."""
        method = flt.key()
        position = decode_token(token, method, principal.org)
        after: tuple[datetime, str] | None = None
        if position is not None:
            try:
                micros, last_id = int(position["t"]), str(uuid.UUID(position["i"]))
                after = (datetime.fromtimestamp(0, UTC) + timedelta(microseconds=micros), last_id)
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "page_token", "not a page token of this listing", "INVALID_PAGE_TOKEN"
                        )
                    ],
                    reason="INVALID_PAGE_TOKEN",
                ) from None
        rows = await repo.list_reports(
            self._pool,
            principal.org,
            sorted(principal.roles),
            survey_id=flt.survey_id,
            state=flt.state,
            batch_id=flt.batch_id,
            after=after,
            limit=size + 1,
        )
        page, more = rows[:size], len(rows) > size
        next_token = ""
        if more:
            last = page[-1]
            delta = last["create_time"] - datetime.fromtimestamp(0, UTC)
            micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
            next_token = encode_token(method, principal.org, {"t": micros, "i": last["id"]})
        return [report_to_pb(r) for r in page], next_token

    # -- progress ----------------------------------------------------------------------

    async def watch(
        self, principal: Principal, report_id: str, after_sequence: int
    ) -> AsyncIterator[report_pb2.ReportEvent]:
        """The report's events after ``after_sequence``, then live ones, up to the terminal one.

        Ends early (without a terminal event) when the server shuts down; the client then
        reconnects, to any replica, with the last sequence it received.
        """
        await self._get_row(self._pool, principal, report_id)
        # The events are shared with the report's other watchers (one read per commit).
        async for event in self._hub.follow(report_id, after_sequence):
            yield event

    # -- cancellation ------------------------------------------------------------------

    async def cancel(
        self, principal: Principal, report_id: str, reason: str, *, temporal_timeout: float
    ) -> report_pb2.Report:
        """Cancels the report's workflow and records the terminal CANCELLED event."""
        principal.require(CANCEL_ROLES, "cancelling reports")
        row = await self._get_row(self._pool, principal, report_id)
        if row["state"] == S.REPORT_STATE_CANCELLED:
            return report_to_pb(row)
        _ensure_unfinished(row)
        handle = self._temporal.get_workflow_handle(row["workflow_id"])
        try:
            await asyncio.wait_for(
                handle.cancel(rpc_timeout=timedelta(seconds=max(temporal_timeout, 0.5))),
                max(temporal_timeout, 0.5),
            )
        except RPCError as e:
            # Never started (Temporal was down at generate) or already closed: nothing to stop.
            if e.status != RPCStatusCode.NOT_FOUND:
                if e.status in _TRANSIENT_TEMPORAL:
                    raise _temporal_unavailable(e) from None
                raise
        except TimeoutError:
            raise _temporal_unavailable("timed out") from None
        except RuntimeError as e:
            if "connect" in str(e).lower():
                raise _temporal_unavailable(e) from None
            raise
        # dedupe key "terminal" is shared with the worker's terminal events: whichever commits
        # first is the report's one terminal event, the other append is a no-op.
        await store.append(
            self._pool,
            report_id,
            store.Event(
                type=E.REPORT_EVENT_TYPE_CANCELLED,
                dedupe_key="terminal",
                state=S.REPORT_STATE_CANCELLED,
                message=reason or f"cancelled by {principal.user}",
            ),
        )
        row = await self._get_row(self._pool, principal, report_id)
        # The workflow may have finished in the meantime; then the report is not cancelled.
        _ensure_unfinished(row)
        return report_to_pb(row)

    # -- rendering ---------------------------------------------------------------------

    async def document(
        self, principal: Principal, report_id: str, *, completed_only: bool
    ) -> ReportDocument:
        """The report with all its stored components, read in one consistent snapshot.

        Raises:
            NotFound: unknown, foreign or hidden report (REPORT_NOT_FOUND).
            FailedPrecondition: ``completed_only`` and the report is not COMPLETED.
        """
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await self._get_row(conn, principal, report_id)
            if completed_only and row["state"] != S.REPORT_STATE_COMPLETED:
                raise FailedPrecondition(
                    "only a COMPLETED report can be rendered",
                    reason="REPORT_NOT_COMPLETED",
                    metadata={"state": S.Name(row["state"])},
                )
            comps = await repo.components(conn, report_id, with_data=True)
            title = await repo.survey_title(conn, report_id)
        return document_of(row, comps, title)

    async def render_file(self, principal: Principal, report_id: str, fmt: int) -> Rendered:
        """Renders a COMPLETED report as a whole file, off the event loop.

        A completed report never changes (nothing is appended after the terminal event), so
        renderings are cached by report, format and last sequence: a second download of
        the same PDF costs no rendering. Access is checked on every call.
        """
        name = FORMAT_NAMES[fmt]
        row = await self._get_row(self._pool, principal, report_id)
        key = (report_id, name, int(row["last_sequence"]))
        cached = self._rendered.get(key)
        if cached is not None and row["state"] == S.REPORT_STATE_COMPLETED:
            return cached
        doc = await self.document(principal, report_id, completed_only=True)
        if name == "json":
            # Splicing stored JSON is cheap and needs no worker process.
            rendered = await asyncio.to_thread(render, doc, name)
        else:
            rendered = await self._renderer.run(render, doc, name)
        self._rendered.put(key, rendered)
        return rendered

    async def render(
        self, principal: Principal, report_id: str, fmt: int
    ) -> AsyncIterator[pb.RenderReportResponse]:
        """Renders a COMPLETED report, streamed in chunks of under 1 MiB."""
        rendered = await self.render_file(principal, report_id, fmt)
        body = rendered.body
        total = len(body)
        for offset in range(0, max(total, 1), RENDER_CHUNK):
            chunk = body[offset : offset + RENDER_CHUNK]
            if offset == 0:
                yield pb.RenderReportResponse(
                    content_type=rendered.content_type,
                    filename=rendered.filename,
                    total_size=total,
                    chunk=chunk,
                    offset=0,
                )
            else:
                yield pb.RenderReportResponse(chunk=chunk, offset=offset)


class RenderCache:
    """A least-recently-used cache of renderings, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, int], Rendered] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, str, int]) -> Rendered | None:
        """The cached rendering, now the most recently used, or None."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple[str, str, int], value: Rendered) -> None:
        """Caches ``value`` (unless it alone exceeds a quarter of the budget)."""
        size = len(value.body)
        if size > self.max_bytes // 4 or key in self._items:
            return
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old.body)


FORMAT_NAMES: dict[int, Format] = {
    F.RENDER_FORMAT_HTML: "html",
    F.RENDER_FORMAT_PDF: "pdf",
    F.RENDER_FORMAT_CSV: "csv",
    F.RENDER_FORMAT_JSON: "json",
}


def document_of(
    row: asyncpg.Record, components: Sequence[asyncpg.Record], title: str = ""
) -> ReportDocument:
    """A report row and its component rows as a (picklable) :class:`ReportDocument`."""
    fields = json_format.MessageToDict(report_to_pb(row), preserving_proto_field_name=True)
    fields.pop("components", None)
    return ReportDocument(
        report=fields,
        components=tuple(StoredComponent.from_row(c) for c in components),
        title=title,
    )


def _options_input(options: dict[str, Any]) -> ReportOptionsInput:
    names = {f.name for f in dataclasses.fields(ReportOptionsInput)}
    return ReportOptionsInput(**{k: v for k, v in options.items() if k in names})


def _ensure_unfinished(row: asyncpg.Record) -> None:
    if row["state"] in (S.REPORT_STATE_COMPLETED, S.REPORT_STATE_FAILED):
        raise FailedPrecondition(
            "the report already finished",
            reason="REPORT_ALREADY_FINISHED",
            metadata={"state": S.Name(row["state"])},
        )


def _temporal_unavailable(cause: object) -> Unavailable:
    log.warning("Temporal unavailable: %s", cause)
    return Unavailable(
        "Temporal cannot be reached; retry with the same request_id", reason="TEMPORAL_UNAVAILABLE"
    )
