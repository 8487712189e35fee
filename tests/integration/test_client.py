"""SurveyMeshClient against the whole real mesh (services, worker, Postgres, Temporal).

Connection drops are made real with a small TCP proxy between the client and a service:
closing its connections is what a client sees when a server or a load balancer goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from surveymesh.client import RetryPolicy, SurveyMeshClient, SurveyMeshError
from surveymesh.csv_import import parse_csv
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.embedded import free_port
from surveymesh.reporting.v1 import report_pb2
from tests.integration.mesh_stack import MeshStack, whole_mesh

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"
E = report_pb2.ReportEventType
QUICK_COMPONENTS = {
    "basic_stats",
    "question_stats",
    "nps",
    "csat",
    "segments",
    "visualizations",
    "summary",
}


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MeshStack]:
    async with whole_mesh(
        new_database, temporal_env.client, tmp_path_factory.mktemp("client")
    ) as m:
        yield m


class Proxy:
    """A TCP proxy on a fixed port that can drop every connection or stop listening."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "localhost", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stops listening and drops every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop()

    def drop(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("localhost", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _csv_survey(client: SurveyMeshClient, name: str = "google_forms") -> tuple[str, Any]:
    parsed = parse_csv((FIXTURES / f"{name}.csv").read_text())
    survey = await client.create_survey(parsed.plan.survey())
    result = await client.import_responses(survey.id, parsed.responses, batch_size=3)
    return survey.id, (parsed, result)


async def test_survey_to_rendered_report(mesh: MeshStack, org: str, tmp_path: Path) -> None:
    async with mesh.client(org) as client:
        survey_id, (parsed, result) = await _csv_survey(client, "surveymonkey")
        # Five rows stored; the NPS of 12 is refused by the server and maps to CSV line 7.
        assert (result.accepted_count, result.rejected_count) == (5, 1)
        rejected = result.rejections[0]
        assert rejected.reason == "ANSWER_OUT_OF_RANGE"
        assert parsed.line_of(rejected.row) == 7

        survey = await client.get_survey(survey_id)
        assert survey.response_count == 5
        assert survey_id in [s.id async for s in client.list_surveys(page_size=1)]
        streamed = [r.id async for r in client.stream_responses(survey_id, batch_size=2)]
        assert streamed == sorted(r.id for r in parsed.responses if r.id != rejected.response_id)

        report = await client.generate_report(survey_id, kind="quick")
        events = [e async for e in client.watch_report(report.id)]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].type == E.REPORT_EVENT_TYPE_COMPLETED

        full = await client.get_report(report.id)
        assert full.state == report_pb2.REPORT_STATE_COMPLETED
        assert {c.type for c in full.components} == QUICK_COMPONENTS
        assert full.response_count == 5
        nps = json.loads((await client.get_report_component(report.id, "nps")).data)
        assert nps  # the component is a JSON document with content
        assert report.id in [r.id async for r in client.list_reports(survey_id=survey_id)]

        out = await client.render_report(report.id, "json", tmp_path / "report.json")
        assert out.size == (tmp_path / "report.json").stat().st_size > 0
        assert out.content_type.startswith("application/json")
        assert json.loads(out.path.read_bytes())
        assert not (tmp_path / "report.json.part").exists()


async def test_errors_carry_code_reason_and_violations(mesh: MeshStack, org: str) -> None:
    async with mesh.client(org) as client:
        with pytest.raises(SurveyMeshError) as missing:
            await client.get_report("00000000-0000-4000-8000-000000000000")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert missing.value.reason == "REPORT_NOT_FOUND"

        with pytest.raises(SurveyMeshError) as bad:
            await client.create_survey(survey_pb2.Survey(title="", questions=[]))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.reason == "INVALID_SURVEY"
        assert {v.field for v in bad.value.violations} == {"survey.title", "survey.questions"}
        assert "survey.title" in bad.value.one_line()

    async with mesh.client(org, role="viewer") as viewer:
        survey_id, _ = await _csv_survey(mesh.client(org))
        with pytest.raises(SurveyMeshError) as denied:
            await viewer.generate_report(survey_id)
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_watch_resumes_after_dropped_connections(mesh: MeshStack, org: str) -> None:
    proxy = Proxy(mesh.reporting.port)
    await proxy.start()
    client = SurveyMeshClient(
        reporting_address=f"localhost:{proxy.port}",
        delivery_address=mesh.addresses["delivery"],
        token=mesh.token(org),
        reconnect=RetryPolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5),
    )
    try:
        survey_id, _ = await _csv_survey(client, "qualtrics")
        report = await client.generate_report(survey_id, kind="quick")
        seen: list[int] = []
        async for event in client.watch_report(report.id):
            seen.append(event.sequence)
            if len(seen) in (2, 4):
                proxy.drop()  # the connection dies mid-stream, twice
        assert seen == list(range(1, len(seen) + 1)), "no event lost, none repeated"
        assert len(seen) > 4
        assert proxy.connections >= 3
        assert (await client.get_report(report.id)).state == report_pb2.REPORT_STATE_COMPLETED
    finally:
        await client.close()
        await proxy.stop()


async def test_unary_calls_retry_unavailable_until_the_server_is_back(
    mesh: MeshStack, org: str
) -> None:
    proxy = Proxy(mesh.delivery.port)
    client = SurveyMeshClient(
        delivery_address=f"localhost:{proxy.port}",
        token=mesh.token(org),
        retry=RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.2),
    )
    try:
        # Nothing listens yet: the first attempts fail UNAVAILABLE, then the proxy comes up.
        async def come_up_later() -> None:
            await asyncio.sleep(0.6)
            await proxy.start()

        starter = asyncio.create_task(come_up_later())
        surveys = [s async for s in client.list_surveys()]
        await starter
        assert surveys == []  # a fresh organization
        assert proxy.connections >= 1
    finally:
        await client.close()
        await proxy.stop()

    # With nothing ever listening, the error is UNAVAILABLE once the attempts are spent.
    dead = SurveyMeshClient(
        delivery_address=f"localhost:{free_port()}",
        token=mesh.token(org),
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.05),
    )
    async with dead:
        with pytest.raises(SurveyMeshError) as err:
            await dead.get_survey("00000000-0000-4000-8000-000000000000", timeout=5)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


async def test_notifications_and_webhooks(mesh: MeshStack, org: str) -> None:
    async with mesh.client(org, user="bob") as analyst, mesh.client(org, role="admin") as admin:
        survey_id, _ = await _csv_survey(analyst, "typeform")
        report = await analyst.generate_report(survey_id)
        await analyst.wait_for_report(report.id)

        # The worker notifies the report's creator; the watch sees it (replayed from 0).
        async def first_notification() -> Any:
            async for n in analyst.watch_notifications():
                return n

        note = await asyncio.wait_for(first_notification(), 30)
        assert note.metadata["report_id"] == report.id
        listed = [n async for n in analyst.list_notifications(unread_only=True)]
        assert note.id in [n.id for n in listed]
        assert (await analyst.mark_notification_read(note.id)).read
        assert note.id not in [n.id async for n in analyst.list_notifications(unread_only=True)]

        endpoint, secret = await admin.create_webhook(
            "http://localhost:9/hook", event_types=["report.*"], description="ci"
        )
        assert secret
        assert endpoint.id in [e.id async for e in admin.list_webhooks()]
        await admin.delete_webhook(endpoint.id)
        assert endpoint.id not in [e.id async for e in admin.list_webhooks()]
        with pytest.raises(SurveyMeshError) as gone:
            await admin.delete_webhook(endpoint.id)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND
