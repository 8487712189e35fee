"""Temporal history size of a quick report does not grow with the number of responses.

Starts the real mesh in a temporary directory (embedded PostgreSQL, the Temporal dev server,
Delivery, Notification, Reporting and the worker), then for each size imports that many
responses into a fresh survey, generates a QUICK report through ReportingService, waits for
its workflow, and measures the workflow's history: its serialized protobuf size (what the
server stores) and its JSON size. The claim-check rule says the two sizes differ by a few
bytes at most (digits of the counts in the activities' summaries).

Prints one JSON object. Run: ``python -m bench.bench_history [--sizes 100,10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from temporalio.api.history.v1 import History
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from bench.survey_data import create_survey, generate, import_responses
from delivery_svc.server import create_server as create_delivery
from notification_svc.server import create_server as create_notification
from reporting_svc.server import create_server as create_reporting
from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.embedded import EmbeddedPostgres, free_port, temporal_cli_path
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES
from worker.worker import create_worker

SECRET = "bench-secret-0123456789abcdef-0123456789"


async def measure(sizes: list[int]) -> dict[str, Any]:
    """Runs one quick report per size and returns the history figures."""
    authority = TokenAuthority(SECRET)
    org = f"org-bench-{uuid.uuid4().hex[:8]}"

    def meta(role: str) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(authority.mint(org=org, user="bench", roles=[role]))

    results = []
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-history-")))
        pg = EmbeddedPostgres(tmp / "pg", port=free_port())
        await pg.start()
        stack.push_async_callback(pg.stop)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli_path(),
            search_attributes=[SearchAttributeKey.for_keyword(k) for k in SEARCH_ATTRIBUTES],
            ui=False,
            dev_server_log_level="error",
        )
        stack.push_async_callback(env.shutdown)
        dsns = {}
        for name in ("delivery", "notification", "reporting"):
            await pg.ensure_database(name)
            dsns[name] = pg.dsn(name)
        base = Settings(jwt_secret=SECRET, data_dir=tmp, task_queue_prefix="bench-")
        delivery = await create_delivery(
            Settings(database_url=dsns["delivery"], jwt_secret=SECRET), address="localhost:0"
        )
        stack.push_async_callback(delivery.stop, 0)
        notification = await create_notification(
            Settings(database_url=dsns["notification"], jwt_secret=SECRET, data_dir=tmp),
            address="localhost:0",
        )
        stack.push_async_callback(notification.stop, 0)
        settings = Settings(
            **{
                **base.__dict__,
                "database_url": dsns["reporting"],
                "delivery_address": f"localhost:{delivery.port}",
                "notification_address": f"localhost:{notification.port}",
            }
        )
        reporting = await create_reporting(
            settings, address="localhost:0", temporal_client=env.client
        )
        stack.push_async_callback(reporting.stop, 0)
        worker = await create_worker(settings, env.client)
        worker.start()
        stack.push_async_callback(worker.shutdown)
        dchannel = grpc.aio.insecure_channel(f"localhost:{delivery.port}")
        rchannel = grpc.aio.insecure_channel(f"localhost:{reporting.port}")
        stack.push_async_callback(dchannel.close)
        stack.push_async_callback(rchannel.close)
        dstub = dgrpc.DeliveryServiceStub(dchannel)
        rstub = rgrpc.ReportingServiceStub(rchannel)

        for n in sizes:
            survey_id = await create_survey(dstub, meta("analyst"), f"History bench {n}")
            responses, expected = generate(n, prefix=f"s{n}-")
            t0 = time.perf_counter()
            await import_responses(dstub, meta("analyst"), survey_id, responses)
            import_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = (
                await rstub.GenerateReport(
                    rpb.GenerateReportRequest(
                        survey_id=survey_id,
                        kind=report_pb2.REPORT_KIND_QUICK,
                        request_id=uuid.uuid4().hex,
                    ),
                    metadata=meta("analyst"),
                    timeout=30,
                )
            ).report
            handle = env.client.get_workflow_handle(report.workflow_id)
            await handle.result(rpc_timeout=timedelta(minutes=30))
            seconds = time.perf_counter() - t0
            history = await handle.fetch_history()
            results.append(
                {
                    "responses": n,
                    "analysed": expected.completed,
                    "history_bytes": History(events=history.events).ByteSize(),
                    "history_json_bytes": len(history.to_json().encode()),
                    "history_events": len(history.events),
                    "report_seconds": round(seconds, 3),
                    "import_seconds": round(import_seconds, 3),
                }
            )
    sizes_bytes = [r["history_bytes"] for r in results]
    return {
        "benchmark": "temporal_history_bytes_per_quick_report",
        "results": results,
        "max_minus_min_bytes": max(sizes_bytes) - min(sizes_bytes),
        "target": "history size independent of response count (within a few KB)",
        "pass": max(sizes_bytes) - min(sizes_bytes) < 4096,
    }


def main() -> None:
    """CLI entry: prints the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000", help="comma-separated response counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(json.dumps(asyncio.run(measure(sizes)), indent=2))


if __name__ == "__main__":
    main()
