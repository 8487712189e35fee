"""A real Reporting + Delivery stack for the ReportingService integration tests.

Both services run on port 0 against their own fresh databases on the session's embedded
PostgreSQL, Reporting with the session's Temporal dev server and a task queue prefix of its
own (no worker polls it, so started workflows stay pending). Progress events are driven
with ``reporting_svc.store`` exactly as the worker writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import grpc
from temporalio.client import Client

from delivery_svc.server import create_server as create_delivery
from reporting_svc import store
from reporting_svc.server import create_server as create_reporting
from surveymesh.config import Settings
from surveymesh.db import create_pool
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dpb_grpc
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.grpcserver import RunningService
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from tests.conftest import TEST_SECRET

Md = tuple[tuple[str, str], ...]
S = report_pb2.ReportState
E = report_pb2.ReportEventType
K = report_pb2.ReportKind


@dataclass
class Stack:
    """The running services, their stubs and a direct pool on the reporting database."""

    reporting: RunningService
    delivery: RunningService
    settings: Settings
    stub: pb_grpc.ReportingServiceStub
    delivery_stub: dpb_grpc.DeliveryServiceStub
    pool: asyncpg.Pool
    token_for: Callable[..., Md]
    temporal: Client
    exit: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def survey(self, org: str) -> str:
        """Creates a survey in ``org`` and returns its id."""
        resp = await self.delivery_stub.CreateSurvey(
            dpb.CreateSurveyRequest(
                survey=survey_pb2.Survey(
                    title="Onboarding",
                    questions=[
                        survey_pb2.Question(
                            id="nps", text="Recommend us?", type=survey_pb2.QUESTION_TYPE_NPS
                        )
                    ],
                )
            ),
            metadata=self.token_for(org, role="analyst"),
            timeout=10,
        )
        return resp.survey.id

    async def generate(
        self,
        org: str,
        survey_id: str | None = None,
        *,
        request_id: str | None = None,
        kind: int = K.REPORT_KIND_QUICK,
        options: report_pb2.ReportOptions | None = None,
        role: str = "analyst",
        stub: pb_grpc.ReportingServiceStub | None = None,
    ) -> report_pb2.Report:
        """Generates a report (of a new survey unless one is given) and returns it."""
        survey_id = survey_id or await self.survey(org)
        resp = await (stub or self.stub).GenerateReport(
            pb.GenerateReportRequest(
                survey_id=survey_id,
                kind=kind,  # type: ignore[arg-type]
                request_id=request_id or uuid.uuid4().hex,
                options=options,
            ),
            metadata=self.token_for(org, role=role),
            timeout=20,
        )
        return resp.report

    async def progress(self, report_id: str, n: int, *, start: int = 0) -> None:
        """Appends ``n`` PROGRESS events (one transaction each), as a snapshot step would."""
        for i in range(start, start + n):
            await store.append(
                self.pool,
                report_id,
                store.Event(
                    type=E.REPORT_EVENT_TYPE_PROGRESS,
                    dedupe_key=f"progress:{i}",
                    state=S.REPORT_STATE_RUNNING,
                    stage="snapshot",
                    items_done=i + 1,
                ),
            )

    async def complete(self, report_id: str) -> None:
        """Appends the terminal COMPLETED event, as the compile step would."""
        await store.append(
            self.pool,
            report_id,
            store.Event(
                type=E.REPORT_EVENT_TYPE_COMPLETED,
                dedupe_key="terminal",
                state=S.REPORT_STATE_COMPLETED,
                progress_percent=100,
            ),
        )

    async def watch(
        self,
        org: str,
        report_id: str,
        after: int = 0,
        *,
        stub: pb_grpc.ReportingServiceStub | None = None,
        limit: int | None = None,
    ) -> list[report_pb2.ReportEvent]:
        """Watches until the stream ends (or ``limit`` events arrived) and returns the events."""
        call = (stub or self.stub).WatchReport(
            pb.WatchReportRequest(report_id=report_id, after_sequence=after),
            metadata=self.token_for(org, role="viewer"),
            timeout=60,
        )
        events = []
        async for msg in call:
            events.append(msg.event)
            if limit is not None and len(events) >= limit:
                call.cancel()
                break
        return events


async def start_reporting(
    settings: Settings, temporal: Client
) -> tuple[RunningService, grpc.aio.Channel, pb_grpc.ReportingServiceStub]:
    """One more Reporting process on the same settings (a second replica)."""
    service = await create_reporting(settings, address="localhost:0", temporal_client=temporal)
    channel = grpc.aio.insecure_channel(f"localhost:{service.port}")
    return service, channel, pb_grpc.ReportingServiceStub(channel)


@asynccontextmanager
async def reporting_stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal: Client,
    token_for: Callable[..., Md],
    *,
    dev_mode: bool = False,
) -> AsyncIterator[Stack]:
    """Starts Delivery and Reporting on fresh databases; stops both afterwards.

    ``dev_mode`` turns on the web viewer's ``?token=`` sign-in links.
    """
    async with AsyncExitStack() as exit:
        delivery = await create_delivery(
            Settings(database_url=await new_database("delivery"), jwt_secret=TEST_SECRET),
            address="localhost:0",
        )
        exit.push_async_callback(delivery.stop, 0)
        settings = Settings(
            database_url=await new_database("reporting"),
            jwt_secret=TEST_SECRET,
            delivery_address=f"localhost:{delivery.port}",
            task_queue_prefix=f"tq-{uuid.uuid4().hex[:8]}-",
            dev_mode=dev_mode,
            # One rendering process: the process path is exercised at a modest CPU cost.
            render_processes=1,
        )
        reporting, channel, stub = await start_reporting(settings, temporal)
        exit.push_async_callback(reporting.stop, 0)
        exit.push_async_callback(channel.close)
        dchannel = grpc.aio.insecure_channel(f"localhost:{delivery.port}")
        exit.push_async_callback(dchannel.close)
        pool = await create_pool(settings.database_url, schema=store.SCHEMA)
        exit.push_async_callback(pool.close)
        yield Stack(
            reporting=reporting,
            delivery=delivery,
            settings=settings,
            stub=stub,
            delivery_stub=dpb_grpc.DeliveryServiceStub(dchannel),
            pool=pool,
            token_for=token_for,
            temporal=temporal,
            exit=exit,
        )
