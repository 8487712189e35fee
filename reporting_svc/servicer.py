"""The gRPC face of ReportingService: validate, call the domain, build the response.

Errors are raised as ``surveymesh.errors`` exceptions; the server interceptor maps them to
status with ``google.rpc`` details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from reporting_svc import validation
from reporting_svc.ratelimit import OrgRateLimiter
from reporting_svc.reports import Reports
from surveymesh.auth import current_principal
from surveymesh.grpcserver import time_remaining
from surveymesh.paging import page_size
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as pb_grpc

# Default deadlines of outgoing calls, shortened to the caller's own remaining deadline.
PEER_TIMEOUT = 5.0
TEMPORAL_TIMEOUT = 10.0
BATCH_PEER_TIMEOUT = 30.0


def _auth(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    # The caller's own token goes to Delivery, so Delivery decides with the caller's
    # identity and roles, never with a more powerful one of ours.
    return tuple(
        (k, v)
        for k, v in context.invocation_metadata() or ()
        if k == "authorization" and isinstance(v, str)
    )


class ReportingServicer(pb_grpc.ReportingServiceServicer):
    """Implements ``surveymesh.reporting.v1.ReportingService``."""

    def __init__(self, reports: Reports, limiter: OrgRateLimiter | None = None) -> None:
        self._reports = reports
        self._limiter = limiter or OrgRateLimiter(0)

    async def GenerateReport(
        self, request: pb.GenerateReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateReportResponse:
        spec = validation.generate_report(request)
        principal = current_principal()
        self._limiter.take(principal.org)
        report = await self._reports.generate(
            principal,
            spec,
            _auth(context),
            peer_timeout=time_remaining(context, PEER_TIMEOUT),
            temporal_timeout=time_remaining(context, TEMPORAL_TIMEOUT),
        )
        return pb.GenerateReportResponse(report=report)

    async def GenerateReports(
        self, request: pb.GenerateReportsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateReportsResponse:
        spec = validation.generate_reports(request)
        principal = current_principal()
        self._limiter.take(principal.org, cost=len(request.survey_ids))
        return await self._reports.generate_batch(
            principal,
            spec,
            _auth(context),
            peer_timeout=time_remaining(context, BATCH_PEER_TIMEOUT),
            temporal_timeout=time_remaining(context, TEMPORAL_TIMEOUT),
        )

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportResponse:
        rid = validation.report_id(request.report_id)
        report = await self._reports.get(current_principal(), rid, request.view)
        return pb.GetReportResponse(report=report)

    async def GetReportComponent(
        self, request: pb.GetReportComponentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportComponentResponse:
        rid, component_type = validation.component_request(request)
        component = await self._reports.get_component(current_principal(), rid, component_type)
        return pb.GetReportComponentResponse(component=component)

    async def ListReports(
        self, request: pb.ListReportsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReportsResponse:
        size = page_size(request.page_size)
        flt = validation.list_filter(request)
        reports, token = await self._reports.list(
            current_principal(), flt, size, request.page_token
        )
        return pb.ListReportsResponse(reports=reports, next_page_token=token)

    async def WatchReport(
        self, request: pb.WatchReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchReportResponse]:
        rid, after = validation.watch_request(request)
        async for event in self._reports.watch(current_principal(), rid, after):
            yield pb.WatchReportResponse(event=event)

    async def CancelReport(
        self, request: pb.CancelReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelReportResponse:
        rid, reason = validation.cancel_request(request)
        report = await self._reports.cancel(
            current_principal(),
            rid,
            reason,
            temporal_timeout=time_remaining(context, TEMPORAL_TIMEOUT),
        )
        return pb.CancelReportResponse(report=report)

    async def RenderReport(
        self, request: pb.RenderReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RenderReportResponse]:
        rid, fmt = validation.render_request(request)
        async for chunk in self._reports.render(current_principal(), rid, fmt):
            yield chunk
