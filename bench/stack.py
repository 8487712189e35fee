"""The embedded mesh the benchmark suite measures, started as in production.

:class:`BenchStack` runs :class:`surveymesh.mesh.Mesh` (what ``surveymesh up`` runs) in a
temporary data directory on free ports: embedded PostgreSQL, the Temporal dev server,
Delivery, Notification and Reporting as their own processes, and one worker process.
Extra worker processes (scaling) and restarts (peak memory) use the same environment.

It also holds the suite's data helpers: responses generated once and encoded as wire
bytes (so a million-row import does not spend minutes building protobuf objects in the
client), and a quick-report runner that reads the figures of one report from its
Temporal history.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.history.v1 import History
from temporalio.client import Client

from bench.bench_import import bench_survey, generate
from delivery_svc.wire import varint
from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.codec import configured_data_converter, payload_keys_for_mesh
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.embedded import free_port
from surveymesh.mesh import Child, Mesh, metrics_ports
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from surveymesh.workflow_contract import QUICK_QUEUE

SECRET = "bench-secret-0123456789abcdef-0123456789"
TEMPLATES = 4096  # distinct generated responses; row i reuses template i % TEMPLATES
IMPORT_BATCH = 5000
BIG_MESSAGES = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def median(values: list[float]) -> float:
    """The median (the suite quotes medians of several runs)."""
    return float(statistics.median(values))


class ResponseBytes:
    """Encoded responses of the benchmark survey (ten questions of all six types).

    ``TEMPLATES`` responses are generated once (seeded) and serialized without their id;
    row ``i`` is template ``i % TEMPLATES`` with id ``resp-<i>`` prepended as field 1,
    which is exactly the canonical encoding of that response.
    """

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        for r in generate(TEMPLATES):
            r.id = ""
            self.bodies.append(r.SerializeToString())

    def batches(self, n: int, batch: int = IMPORT_BATCH) -> Iterator[bytes]:
        """``ImportResponsesRequest.responses`` (field 2) of ``n`` rows, ``batch`` per message."""
        for start in range(0, n, batch):
            parts = []
            for i in range(start, min(n, start + batch)):
                rid = f"resp-{i:08d}".encode()
                row = b"\x0a" + varint(len(rid)) + rid + self.bodies[i % TEMPLATES]
                parts.append(b"\x12" + varint(len(row)) + row)
            yield b"".join(parts)


@dataclass
class QuickRun:
    """What one quick report took."""

    report_id: str
    workflow_id: str
    e2e_s: float  # GenerateReport sent -> workflow result received
    activities_s: float  # sum of the activities' own times (the worker's stage metric)
    activity_count: int
    history_bytes: int
    history_events: int
    per_activity_s: dict[str, float]


class BenchStack:
    """The mesh of the benchmark, in a temporary directory; use as an async context manager."""

    def __init__(self, *, keep_logs: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="surveymesh-bench-")
        self.data_dir = Path(self._tmp.name)
        self.keep_logs = keep_logs
        ports = {
            "SURVEYMESH_REPORTING_PORT": free_port(),
            "SURVEYMESH_DELIVERY_PORT": free_port(),
            "SURVEYMESH_NOTIFICATION_PORT": free_port(),
            "SURVEYMESH_WEB_PORT": free_port(),
            "SURVEYMESH_METRICS_PORT": free_port(),
            "SURVEYMESH_CODEC_PORT": free_port(),
            "SURVEYMESH_POSTGRES_PORT": free_port(),
            "SURVEYMESH_TEMPORAL_PORT": free_port(),
        }
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("SURVEYMESH_", "TEMPORAL_"))
            },
            **{k: str(v) for k, v in ports.items()},
            "DATABASE_URL": "",
            "SURVEYMESH_DATA_DIR": str(self.data_dir),
            "SURVEYMESH_TEMPORAL_UI_PORT": "0",
            "SURVEYMESH_JWT_SECRET": SECRET,
            "SURVEYMESH_LOG_LEVEL": "WARNING",
            "SURVEYMESH_TASK_QUEUE_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-",
            # The suite requests hundreds of reports a minute from one org.
            "SURVEYMESH_REPORT_RATE": "0",
        }
        self.env.pop("DATABASE_URL")
        self.settings = Settings.from_env(self.env)
        self.mesh = Mesh(self.settings, self.env)
        self.authority = TokenAuthority(SECRET)
        self.org = f"bench-{uuid.uuid4().hex[:8]}"
        self.extra_workers: list[Child] = []
        self._channels: list[grpc.aio.Channel] = []
        self.client: Client
        self.delivery: dgrpc.DeliveryServiceStub
        self.reporting: rgrpc.ReportingServiceStub
        self._data: ResponseBytes | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> BenchStack:
        try:
            await self.mesh.start()
        except BaseException:
            await self.mesh.stop()
            self._tmp.cleanup()
            raise
        # The mesh encrypts Temporal payloads (keys from its data dir); read them alike.
        keys = payload_keys_for_mesh(self.settings)
        self.client = await Client.connect(
            self.mesh.temporal_address,
            data_converter=configured_data_converter(replace(self.settings, payload_keys=keys)),
        )
        d = grpc.aio.insecure_channel(self.address("delivery"), options=BIG_MESSAGES)
        r = grpc.aio.insecure_channel(self.address("reporting"), options=BIG_MESSAGES)
        self._channels += [d, r]
        self.delivery = dgrpc.DeliveryServiceStub(d)
        self.reporting = rgrpc.ReportingServiceStub(r)
        # The mesh waits for the services only; the first report must not wait for the
        # worker's start-up (and its metrics, read around every report, must be served).
        await self._await_polling()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ch in self._channels:
            await ch.close()
        for w in self.extra_workers:
            await w.stop(5)
        await self.mesh.stop()
        if self.keep_logs is not None:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in (self.data_dir / "logs").glob("*.log"):
                (self.keep_logs / log.name).write_bytes(log.read_bytes())
        self._tmp.cleanup()

    def address(self, service: str) -> str:
        """``localhost:<port>`` of ``reporting``, ``delivery`` or ``notification``."""
        return f"localhost:{getattr(self.settings, f'{service}_port')}"

    def dsn(self, database: str) -> str:
        """DSN of ``surveymesh_reporting`` / ``surveymesh_delivery`` / ..."""
        assert self.mesh.postgres is not None
        return self.mesh.postgres.dsn(database)

    def meta(self, role: str = "analyst", org: str | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata of a user of the bench org."""
        return bearer_metadata(self.authority.mint(org=org or self.org, user="bench", roles=[role]))

    @property
    def quick_queue(self) -> str:
        """The deployment's quick task queue."""
        return self.settings.task_queue(QUICK_QUEUE)

    # -- workers ---------------------------------------------------------------------------

    @property
    def worker(self) -> Child:
        """The mesh's own worker process."""
        return next(c for c in self.mesh.children if c.name == "worker")

    def workers(self) -> list[Child]:
        """Every running worker process."""
        return [self.worker, *self.extra_workers]

    async def restart_worker(self) -> None:
        """A fresh worker process (so its peak memory counts one workload only)."""
        w = self.worker
        await w.stop(self.settings.grace_seconds)
        w.stopping = False
        await w.spawn()
        await self._await_polling()

    async def set_worker_count(self, count: int) -> None:
        """Starts or stops extra worker processes until ``count`` run."""
        while len(self.workers()) > count:
            await self.extra_workers.pop().stop(self.settings.grace_seconds)
        while len(self.workers()) < count:
            w = self.worker
            extra = Child(
                name=f"worker-{len(self.workers()) + 1}",
                module="worker",
                env=w.env,
                log_path=self.data_dir / "logs" / f"worker-{len(self.workers()) + 1}.log",
                health_port=None,
            )
            await extra.spawn()
            self.extra_workers.append(extra)
        await self._await_polling()

    async def _await_polling(self) -> None:
        """Waits until every worker process is polling (imports done, connected)."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        want = {w.process.pid for w in self.workers() if w.process}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            resp = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self.client.namespace,
                    task_queue=TaskQueue(name=self.quick_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
            seen = {p.identity.split("@")[0] for p in resp.pollers}
            recent = [p for p in resp.pollers if time.time() - p.last_access_time.seconds < 5]
            if {str(pid) for pid in want} <= seen and len(recent) >= len(want):
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"workers {sorted(want)} not polling {self.quick_queue} after 60 s")

    def peak_rss_bytes(self, child: Child) -> int:
        """The process's peak resident set (VmHWM) since it started."""
        assert child.process is not None
        with open(f"/proc/{child.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return psutil.Process(child.process.pid).memory_info().rss

    # -- data ------------------------------------------------------------------------------

    @property
    def data(self) -> ResponseBytes:
        """The encoded responses (generated on first use)."""
        if self._data is None:
            self._data = ResponseBytes()
        return self._data

    async def survey(self, n: int, title: str = "bench") -> str:
        """A new survey of the bench org with ``n`` responses imported through Delivery."""
        meta = self.meta()
        created = await self.delivery.CreateSurvey(
            dpb.CreateSurveyRequest(survey=bench_survey()), metadata=meta, timeout=30
        )
        sid = created.survey.id
        if n == 0:
            return sid
        raw = self._channels[0].stream_unary(
            "/surveymesh.delivery.v1.DeliveryService/ImportResponses",
            request_serializer=None,
            response_deserializer=dpb.ImportResponsesResponse.FromString,
        )
        head = dpb.ImportResponsesRequest(survey_id=sid).SerializeToString()

        async def messages() -> AsyncIterator[bytes]:
            for i, body in enumerate(self.data.batches(n)):
                yield head + body if i == 0 else body

        result = await raw(messages(), metadata=meta, timeout=3600)
        if result.accepted_count != n:
            raise RuntimeError(f"imported {result.accepted_count} of {n} responses")
        return sid

    # -- reports ---------------------------------------------------------------------------

    async def generate(
        self, survey_id: str, kind: report_pb2.ReportKind.ValueType = report_pb2.REPORT_KIND_QUICK
    ) -> report_pb2.Report:
        """Starts a report through ReportingService."""
        req = rpb.GenerateReportRequest(survey_id=survey_id, kind=kind, request_id=uuid.uuid4().hex)
        return (await self.reporting.GenerateReport(req, metadata=self.meta(), timeout=30)).report

    async def stage_seconds(self) -> dict[str, float]:
        """Seconds the mesh's worker has spent in each activity so far (its own metric,
        ``surveymesh_report_stage_duration_seconds``: every attempt of every activity,
        local activities included, which leave no start/complete events in the history)."""
        port = metrics_ports(self.settings)["worker"]
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://localhost:{port}/metrics")).text
        seconds: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "surveymesh_report_stage_duration_seconds_sum":
                    stage = sample.labels["stage"]
                    seconds[stage] = seconds.get(stage, 0.0) + sample.value
        return seconds

    async def quick_report(self, survey_id: str) -> QuickRun:
        """Runs one quick report to its end (nothing else may run on the mesh meanwhile)
        and reads its figures from the history and the worker's metrics."""
        stages = await self.stage_seconds()
        began = time.perf_counter()
        report = await self.generate(survey_id)
        handle = self.client.get_workflow_handle(report.workflow_id)
        result = await handle.result(rpc_timeout=timedelta(hours=1))
        e2e = time.perf_counter() - began
        if not isinstance(result, dict) or result.get("state") != "completed":
            raise RuntimeError(f"report {report.id} ended {result}")
        history = await handle.fetch_history()
        return QuickRun(
            report_id=report.id,
            workflow_id=report.workflow_id,
            e2e_s=e2e,
            history_bytes=History(events=history.events).ByteSize(),
            history_events=len(history.events),
            **activity_times(stages, await self.stage_seconds()),
        )


def activity_times(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Sum of the activities' own times between two :meth:`BenchStack.stage_seconds`."""
    per = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    return {
        "activities_s": sum(per.values()),
        "activity_count": len(per),
        "per_activity_s": {k: round(v, 4) for k, v in per.items()},
    }
