"""The deploy design, proved on one machine: replicas of every part as separate processes.

One Temporal dev server and one PostgreSQL (the session's), two Reporting processes sharing
one reporting database, one Delivery, one Notification and three workers split across the
task queues, each started as ``python -m <module>`` with its environment, exactly as a
container runs it. 200 reports are requested through both Reporting processes alternately;
one worker is SIGKILLed midway (a crashed pod). Every report must complete exactly once,
and both Reporting processes must stream every report's events identically, both live
(while reports run) and replayed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from bench.survey_data import create_survey, generate, import_responses
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.embedded import free_port
from surveymesh.mesh import wait_healthy
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.integration

REPORTS = 200
RESPONSES = 40  # per survey: small, so the run measures fan-out, not statistics
SURVEYS = 4
FULL_EVERY = 5  # every 5th report is FULL, so the AI queue's worker takes part
LIVE_WATCHED = 24  # reports followed live on both Reporting processes while they run
E = report_pb2.ReportEventType
S = report_pb2.ReportState
Md = tuple[tuple[str, str], ...]


@dataclass
class Proc:
    """A mesh process started like a container: ``python -m module`` with its env."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def spawn(name: str, module: str, env: dict[str, str], logs: Path) -> Proc:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, process, log)


async def stop(procs: Sequence[Proc]) -> None:
    for p in procs:
        if p.process.returncode is None:
            p.process.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.process.wait(), 15)
        except TimeoutError:
            p.process.kill()
            await p.process.wait()


@dataclass
class ScaleMesh:
    reporting: list[rgrpc.ReportingServiceStub]
    delivery: dgrpc.DeliveryServiceStub
    workers: dict[str, Proc]
    procs: list[Proc]
    reporting_dsn: str


@pytest.fixture
async def scale_mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
) -> AsyncIterator[ScaleMesh]:
    dbs = {name: await new_database(f"scale_{name}") for name in ("d", "n", "r")}
    ports = {name: free_port() for name in ("delivery", "notification", "r1", "r2")}
    temporal_address = temporal_env.client.service_client.config.target_host
    base = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SURVEYMESH_DATA_DIR": str(tmp_path / "data"),
        "SURVEYMESH_BIND_HOST": "127.0.0.1",
        "SURVEYMESH_JWT_SECRET": TEST_SECRET,
        "SURVEYMESH_GRACE_SECONDS": "2",
        "SURVEYMESH_LOG_LEVEL": "WARNING",
        "SURVEYMESH_DELIVERY_ADDRESS": f"127.0.0.1:{ports['delivery']}",
        "SURVEYMESH_NOTIFICATION_ADDRESS": f"127.0.0.1:{ports['notification']}",
        "SURVEYMESH_DELIVERY_PORT": str(ports["delivery"]),
        "SURVEYMESH_NOTIFICATION_PORT": str(ports["notification"]),
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
        "SURVEYMESH_TASK_QUEUE_PREFIX": f"scale-{uuid.uuid4().hex[:8]}-",
        "SURVEYMESH_AI_CONCURRENCY": "2",
    }
    for key in ("DATABASE_URL", "SURVEYMESH_WORKER_QUEUES", "OPENAI_API_KEY"):
        base.pop(key, None)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[Proc] = []
    try:
        procs.append(
            await spawn("delivery", "delivery_svc", {**base, "DATABASE_URL": dbs["d"]}, logs)
        )
        procs.append(
            await spawn(
                "notification", "notification_svc", {**base, "DATABASE_URL": dbs["n"]}, logs
            )
        )
        for name in ("r1", "r2"):
            env = {**base, "DATABASE_URL": dbs["r"], "SURVEYMESH_REPORTING_PORT": str(ports[name])}
            env["SURVEYMESH_WEB_PORT"] = str(free_port())
            procs.append(await spawn(f"reporting-{name}", "reporting_svc", env, logs))
        workers = {}
        # Three workers split across the queues: two poll the quick queue (one of them is
        # killed midway, the other carries on), one takes the AI and batch queues.
        for name, queues in (
            ("worker-quick-a", "reporting-quick"),
            ("worker-quick-b", "reporting-quick"),
            ("worker-ai-batch", "reporting-ai,reporting-batch"),
        ):
            env = {**base, "DATABASE_URL": dbs["r"], "SURVEYMESH_WORKER_QUEUES": queues}
            workers[name] = await spawn(name, "worker", env, logs)
            procs.append(workers[name])
        health = {
            "delivery": ports["delivery"],
            "notification": ports["notification"],
            "reporting-r1": ports["r1"],
            "reporting-r2": ports["r2"],
        }
        by_name = {p.name: p for p in procs}

        async def healthy(name: str, port: int) -> None:
            child_died = by_name[name]
            try:
                await wait_healthy(f"127.0.0.1:{port}", 60)
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}\n{child_died.tail()}") from exc

        await asyncio.gather(*(healthy(n, p) for n, p in health.items()))
        async with contextlib.AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{p}"))
                for p in (ports["r1"], ports["r2"], ports["delivery"])
            ]
            yield ScaleMesh(
                reporting=[rgrpc.ReportingServiceStub(c) for c in channels[:2]],
                delivery=dgrpc.DeliveryServiceStub(channels[2]),
                workers=workers,
                procs=procs,
                reporting_dsn=dbs["r"],
            )
    finally:
        await stop(procs)


def event_key(event: report_pb2.ReportEvent) -> tuple[object, ...]:
    """Everything a client sees of an event (the create_time included)."""
    return (
        event.sequence,
        event.type,
        event.state,
        event.stage,
        event.component_type,
        event.progress_percent,
        event.items_done,
        event.items_total,
        event.message,
        event.create_time.ToNanoseconds(),
        event.error.SerializeToString(),
    )


async def watch(
    stub: rgrpc.ReportingServiceStub, report_id: str, md: Md, deadline: float
) -> list[tuple[object, ...]]:
    events = []
    call = stub.WatchReport(
        rpb.WatchReportRequest(report_id=report_id), metadata=md, timeout=deadline
    )
    async for message in call:
        events.append(event_key(message.event))
    return events


@pytest.mark.timeout(600)
async def test_200_reports_across_replicas_survive_a_worker_crash(
    scale_mesh: ScaleMesh, token_for: Callable[..., Md], org: str
) -> None:
    md = token_for(org, role="analyst")
    responses, _ = generate(RESPONSES, seed=11)
    surveys = []
    for i in range(SURVEYS):
        survey_id = await create_survey(scale_mesh.delivery, md, title=f"Scale {i}")
        await import_responses(scale_mesh.delivery, md, survey_id, responses)
        surveys.append(survey_id)

    started = time.monotonic()

    async def request(i: int) -> str:
        stub = scale_mesh.reporting[i % 2]  # alternate the two Reporting processes
        kind = report_pb2.REPORT_KIND_FULL if i % FULL_EVERY == 0 else report_pb2.REPORT_KIND_QUICK
        reply = await stub.GenerateReport(
            rpb.GenerateReportRequest(
                survey_id=surveys[i % SURVEYS], kind=kind, request_id=f"scale-{i}"
            ),
            metadata=md,
            timeout=30,
        )
        return str(reply.report.id)

    # The first reports are followed live on both processes from the moment they exist.
    first = [await request(i) for i in range(LIVE_WATCHED)]
    live = {
        rid: [
            asyncio.ensure_future(watch(stub, rid, md, deadline=480))
            for stub in scale_mesh.reporting
        ]
        for rid in first
    }
    rest = await asyncio.gather(*(request(i) for i in range(LIVE_WATCHED, REPORTS)))
    report_ids = first + list(rest)
    assert len(set(report_ids)) == REPORTS

    pool = await asyncpg.create_pool(scale_mesh.reporting_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:

        async def finished() -> int:
            return int(
                await pool.fetchval(
                    "SELECT count(*) FROM reporting.reports WHERE id = ANY($1::uuid[])"
                    " AND state IN ($2, $3, $4)",
                    report_ids,
                    S.REPORT_STATE_COMPLETED,
                    S.REPORT_STATE_FAILED,
                    S.REPORT_STATE_CANCELLED,
                )
            )

        # Midway: a worker polling the quick queue dies without any chance to clean up.
        victim = scale_mesh.workers["worker-quick-a"]
        while await finished() < REPORTS // 2:
            assert time.monotonic() - started < 300, "reports stalled before the crash"
            await asyncio.sleep(0.2)
        assert victim.process.returncode is None, victim.tail()
        victim.process.kill()
        await victim.process.wait()
        killed_at = await finished()
        assert killed_at < REPORTS, "the crash must happen while reports are still running"

        while await finished() < REPORTS:
            for name, w in scale_mesh.workers.items():
                if w is not victim:
                    assert w.process.returncode is None, f"{name} died:\n{w.tail()}"
            assert time.monotonic() - started < 540, "reports stalled after the crash"
            await asyncio.sleep(0.5)

        rows = await pool.fetch(
            "SELECT id::text AS id, state FROM reporting.reports WHERE id = ANY($1::uuid[])",
            report_ids,
        )
        assert {r["id"]: r["state"] for r in rows} == dict.fromkeys(
            report_ids, S.REPORT_STATE_COMPLETED
        )
        # Exactly once: one terminal event per report, and no component reported twice,
        # although the killed worker's tasks were retried elsewhere.
        counts = await pool.fetch(
            "SELECT report_id::text AS id,"
            " count(*) FILTER (WHERE type = $2) AS completed,"
            " count(*) FILTER (WHERE type = $3) AS ready,"
            " count(DISTINCT component_type) FILTER (WHERE type = $3) AS distinct_ready"
            " FROM reporting.report_events WHERE report_id = ANY($1::uuid[]) GROUP BY report_id",
            report_ids,
            E.REPORT_EVENT_TYPE_COMPLETED,
            E.REPORT_EVENT_TYPE_COMPONENT_READY,
        )
        assert len(counts) == REPORTS
        for c in counts:
            assert c["completed"] == 1, c
            assert c["ready"] == c["distinct_ready"] > 0, c
    finally:
        await pool.close()

    # Live streams: both processes delivered the same events, ending at the terminal one.
    for rid, (a, b) in live.items():
        events_a, events_b = await a, await b
        assert events_a == events_b, rid
        assert events_a and events_a[-1][1] == E.REPORT_EVENT_TYPE_COMPLETED, rid
        sequences = [int(str(e[0])) for e in events_a]
        assert sequences == sorted(set(sequences)), rid

    # Replays: every report's full stream is identical from either process.
    sem = asyncio.Semaphore(16)

    async def both(rid: str) -> None:
        async with sem:
            a, b = await asyncio.gather(
                *(watch(stub, rid, md, deadline=30) for stub in scale_mesh.reporting)
            )
        assert a == b, rid
        assert a[-1][1] == E.REPORT_EVENT_TYPE_COMPLETED, rid
        if rid in live:
            assert a == await live[rid][0], rid  # live == replay: nothing lost or repeated

    await asyncio.gather(*(both(rid) for rid in report_ids))
