"""The gRPC face of DeliveryService: thin, typed handlers over the domain classes."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from delivery_svc.responses import Responses
from delivery_svc.surveys import Surveys, to_proto
from surveymesh.auth import current_principal
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as pb_grpc

SERVICE_NAME = "surveymesh.delivery.v1.DeliveryService"


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

    async def ImportResponses(  # type: ignore[override]
        self,
        request_iterator: AsyncIterable[bytes],
        context: grpc.aio.ServicerContext,
    ) -> pb.ImportResponsesResponse:
        # Encoded ImportResponsesRequest messages: see add_to_server.
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


class _HandlerCapture:
    """Stands in for a server to collect the generated method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def add_to_server(servicer: DeliveryServicer, server: grpc.aio.Server) -> None:
    """Mounts ``servicer`` like the generated ``add_DeliveryServiceServicer_to_server``.

    One difference: ImportResponses gets its messages undecoded. Decoding 100,000 rows
    into upb messages and reading them back field by field from Python cost several
    times what PostgreSQL needs to store them; the import reads the bytes through
    ``delivery_svc.wire`` views instead and stores each row's bytes as they came.
    """
    capture = _HandlerCapture()
    pb_grpc.add_DeliveryServiceServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    handlers = capture.handlers
    handlers["ImportResponses"] = grpc.stream_unary_rpc_method_handler(
        servicer.ImportResponses,
        request_deserializer=None,
        response_serializer=pb.ImportResponsesResponse.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
