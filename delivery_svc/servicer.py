"""The gRPC face of DeliveryService: thin, typed handlers over the domain classes."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc

from delivery_svc.responses import Responses
from delivery_svc.surveys import Surveys, to_proto
from surveymesh.auth import current_principal
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as pb_grpc


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    """Implements ``surveymesh.delivery.v1.DeliveryService``.

    Errors are raised as ``surveymesh.errors`` exceptions; the server interceptor maps them
    to status codes with ``google.rpc`` details.

    Args:
        surveys: Survey use cases.
        responses: Response use cases.
    """

    def __init__(self, surveys: Surveys, responses: Responses) -> None:
        self._surveys = surveys
        self._responses = responses

    async def CreateSurvey(
        self, request: pb.CreateSurveyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSurveyResponse:
        row = await self._surveys.create(
            current_principal(),
            request.survey,
            present=request.HasField("survey"),
            request_id=request.request_id,
        )
        return pb.CreateSurveyResponse(survey=to_proto(row))

    async def GetSurvey(
        self, request: pb.GetSurveyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSurveyResponse:
        row = await self._surveys.get(current_principal(), request.survey_id)
        return pb.GetSurveyResponse(survey=to_proto(row))

    async def ListSurveys(
        self, request: pb.ListSurveysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSurveysResponse:
        surveys, next_token = await self._surveys.list(
            current_principal(), request.page_size, request.page_token
        )
        return pb.ListSurveysResponse(surveys=surveys, next_page_token=next_token)

    async def ImportResponses(
        self,
        request_iterator: AsyncIterable[pb.ImportResponsesRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ImportResponsesResponse:
        return await self._responses.import_stream(current_principal(), request_iterator)

    async def StreamResponses(  # type: ignore[override]
        self, request: pb.StreamResponsesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponsesResponse]:
        async for message in self._responses.stream(current_principal(), request):
            yield message

    async def CheckSurveyAccess(
        self, request: pb.CheckSurveyAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckSurveyAccessResponse:
        decision = await self._surveys.check_access(
            current_principal(), request.survey_id, request.subject
        )
        return pb.CheckSurveyAccessResponse(
            allowed=decision.allowed,
            reason=decision.reason,
            survey_title=decision.survey.title,
            question_count=len(decision.survey.questions),
            response_count=decision.survey.response_count,
        )
