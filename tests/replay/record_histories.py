"""Records the golden workflow histories that ``test_replay.py`` replays.

Run it after an intentional, compatible workflow change (or to add a workflow type)::

    python -m tests.replay.record_histories [SUFFIX]

It starts a throw-away PostgreSQL and Temporal dev server, the three services and a
worker in this process, runs one QuickReportWorkflow, one FullReportWorkflow and one
BatchReportWorkflow (with its two children) to completion, and writes each history as
JSON into ``histories/``. Keep the old files when a change must stay replay-compatible
with workflows already running: add new ones beside them instead (``SUFFIX`` ``v2``
writes ``*_v2.json``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from bench.survey_data import create_survey, generate, import_responses
from surveymesh.auth import bearer_metadata
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.embedded import EmbeddedPostgres, free_port, temporal_cli_path
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES
from tests.integration.mesh_stack import whole_mesh

HISTORIES = Path(__file__).parent / "histories"


async def record(out: Path = HISTORIES, suffix: str = "") -> list[Path]:
    """Runs each workflow type once on a real stack and saves its history."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
        await pg.start()
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli_path(),
            search_attributes=[SearchAttributeKey.for_keyword(n) for n in SEARCH_ATTRIBUTES],
            ui=False,
        )
        try:

            async def new_database(prefix: str) -> str:
                name = f"{prefix}_{uuid.uuid4().hex[:10]}"
                await pg.ensure_database(name)
                return pg.dsn(name)

            async with whole_mesh(new_database, env.client, Path(tmp) / "data") as mesh:
                md = bearer_metadata(mesh.token("org-golden"))
                a = mesh.addresses
                async with (
                    grpc.aio.insecure_channel(a["delivery"]) as dch,
                    grpc.aio.insecure_channel(a["reporting"]) as rch,
                ):
                    delivery, reporting = (
                        dgrpc.DeliveryServiceStub(dch),
                        rgrpc.ReportingServiceStub(rch),
                    )
                    surveys = []
                    for i in range(2):
                        sid = await create_survey(delivery, md, f"Golden {i}")
                        await import_responses(delivery, md, sid, generate(60, seed=i)[0])
                        surveys.append(sid)
                    runs = {}
                    for name, kind in (
                        ("quick_report", report_pb2.REPORT_KIND_QUICK),
                        ("full_report", report_pb2.REPORT_KIND_FULL),
                    ):
                        reply = await reporting.GenerateReport(
                            rpb.GenerateReportRequest(
                                survey_id=surveys[0], kind=kind, request_id=f"golden-{name}"
                            ),
                            metadata=md,
                            timeout=30,
                        )
                        runs[name] = reply.report.workflow_id
                    batch = await reporting.GenerateReports(
                        rpb.GenerateReportsRequest(
                            survey_ids=surveys,
                            kind=report_pb2.REPORT_KIND_QUICK,
                            request_id="golden-batch",
                        ),
                        metadata=md,
                        timeout=30,
                    )
                    runs["batch_report"] = batch.workflow_id
                    written = []
                    for name, wid in runs.items():
                        handle = env.client.get_workflow_handle(wid)
                        await handle.result(rpc_timeout=timedelta(seconds=120))
                        history = await handle.fetch_history()
                        path = out / f"{name}{'_' + suffix if suffix else ''}.json"
                        path.write_text(history.to_json())
                        written.append(path)
            return written
        finally:
            await env.shutdown()
            await pg.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for p in asyncio.run(record(suffix=sys.argv[1] if len(sys.argv) > 1 else "")):
        sys.stdout.write(f"wrote {p}\n")
