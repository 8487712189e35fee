"""Builds the worker: one Temporal ``Worker`` per selected task queue, sharing one set of
activities (one DB pool, one channel per peer, one token cache).

Queues:
    quick: QuickReportWorkflow, FullReportWorkflow and every non-AI activity.
    ai:    the sentiment and themes activities, at most ``settings.ai_concurrency`` at once.
    batch: BatchReportWorkflow.

A deployment can run specialised workers (``SURVEYMESH_WORKER_QUEUES=reporting-ai``) and
scale each queue on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Self

import asyncpg
from temporalio.client import Client
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from reporting_svc import store
from surveymesh.auth import TokenAuthority
from surveymesh.channels import open_channel
from surveymesh.config import ConfigError, Settings
from surveymesh.db import open_database
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.telemetry import ReportLifecycle, worker_interceptor
from surveymesh.workflow_contract import (
    AI_QUEUE,
    ALL_QUEUES,
    BATCH_QUEUE,
    FULL_WORKFLOW,
    QUICK_QUEUE,
    QUICK_WORKFLOW,
)
from worker import models
from worker.activities import SNAPSHOT_BATCH, ReportActivities
from worker.heartbeat import AutoHeartbeat
from worker.peers import ServiceTokens
from worker.workflows import BatchReportWorkflow, FullReportWorkflow, QuickReportWorkflow

log = logging.getLogger(__name__)

# The workflows' own modules of plain dataclasses and names are shared with the sandbox
# instead of being imported again for every workflow run (about a quarter of the cost of
# creating one, measured by replaying the golden quick report).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "worker.models", "surveymesh.workflow_contract"
    )
)


class RunningWorker:
    """The workers of one process and what to close after them.

    Use it either as ``await w.run()`` (until :meth:`shutdown` is called from elsewhere,
    e.g. a signal handler) or as an async context manager that polls in the background
    and shuts down gracefully on exit::

        async with await create_worker(settings, client) as w:
            ...
    """

    def __init__(
        self,
        workers: Sequence[Worker],
        activities: ReportActivities,
        cleanups: Sequence[Callable[[], Awaitable[None]]],
    ) -> None:
        self.workers = list(workers)
        self.activities = activities
        self._cleanups = list(cleanups)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def task_queues(self) -> list[str]:
        """The task queues polled."""
        return [w.task_queue for w in self.workers]

    async def run(self) -> None:
        """Polls every queue until :meth:`shutdown`; fails if any worker fails."""
        await asyncio.gather(*(w.run() for w in self.workers))

    def start(self) -> None:
        """Starts :meth:`run` in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="surveymesh-worker")

    async def shutdown(self) -> None:
        """Stops polling, lets running activities finish within the graceful timeout,
        then closes the pool and channels. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(w.shutdown() for w in self.workers if w.is_running))
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("worker stopped with an error")
        for cleanup in self._cleanups:
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed")

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


def report_telemetry(pool: asyncpg.Pool) -> Interceptor:
    """The worker's metrics interceptor (stage durations, report counters and durations)."""

    async def duration(report_id: str) -> float | None:
        value = await pool.fetchval(
            "SELECT extract(epoch FROM coalesce(end_time, now()) - create_time)"
            " FROM reports WHERE id = $1",
            report_id,
        )
        return None if value is None else float(value)

    return worker_interceptor(
        ReportLifecycle(
            started=models.VALIDATE,
            completed=models.COMPILE,
            failed=models.FAIL,
            cancelled=models.CANCEL,
            kinds={QUICK_WORKFLOW: "quick", FULL_WORKFLOW: "full"},
            duration=duration,
        )
    )


async def create_worker(
    settings: Settings,
    client: Client,
    *,
    queues: Sequence[str] = ALL_QUEUES,
    pool: asyncpg.Pool | None = None,
    snapshot_batch_size: int = SNAPSHOT_BATCH,
    graceful_shutdown: timedelta | None = None,
) -> RunningWorker:
    """Creates (but does not start) the workers for ``queues``.

    Args:
        settings: Process settings: database, peers, task queue prefix, AI concurrency.
        client: A connected Temporal client.
        queues: Which of ``reporting-quick``, ``reporting-ai``, ``reporting-batch`` to poll
            (bare names; the prefix is applied here).
        pool: An open reporting pool to use instead of opening one (it is then not closed).
        snapshot_batch_size: Responses per snapshot batch.
        graceful_shutdown: How long running activities get on shutdown (default
            ``settings.grace_seconds``).

    Raises:
        ConfigError: an unknown queue name or missing settings.
    """
    unknown = set(queues) - set(ALL_QUEUES)
    if unknown:
        raise ConfigError(f"unknown worker queues {sorted(unknown)}; known: {list(ALL_QUEUES)}")
    cleanups: list[Callable[[], Awaitable[None]]] = []
    if pool is None:
        pool = await open_database(
            settings.require_database_url(),
            schema=store.SCHEMA,
            migrations=store.MIGRATIONS,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        cleanups.append(pool.close)
    # TLS/mTLS when the deployment configures it, like every other part of the mesh.
    delivery_channel = open_channel(settings, settings.peer("delivery"))
    notification_channel = open_channel(settings, settings.peer("notification"))
    cleanups.append(delivery_channel.close)
    cleanups.append(notification_channel.close)
    # The deployment's signing key (a JWK in production, the HS256 secret in development).
    authority = TokenAuthority.from_settings(settings)
    activities = ReportActivities(
        pool,
        dgrpc.DeliveryServiceStub(delivery_channel),
        ngrpc.NotificationServiceStub(notification_channel),
        ServiceTokens(authority),
        settings,
        snapshot_batch_size=snapshot_batch_size,
    )
    cleanups.insert(0, activities.aclose)  # the AI client's connections, if one was made
    grace = (
        graceful_shutdown
        if graceful_shutdown is not None
        else timedelta(seconds=settings.grace_seconds)
    )
    # Metrics outermost: a stage's duration includes everything the other interceptors do.
    telemetry = [report_telemetry(pool)]
    workers = []
    for queue in dict.fromkeys(queues):
        name = settings.task_queue(queue)
        if queue == QUICK_QUEUE:
            worker = Worker(
                client,
                task_queue=name,
                workflows=[QuickReportWorkflow, FullReportWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=activities.quick_activities(),
                graceful_shutdown_timeout=grace,
                interceptors=[*telemetry, AutoHeartbeat()],
            )
        elif queue == AI_QUEUE:
            worker = Worker(
                client,
                task_queue=name,
                activities=activities.ai_activities(),
                max_concurrent_activities=max(1, settings.ai_concurrency),
                graceful_shutdown_timeout=grace,
                interceptors=[*telemetry, AutoHeartbeat()],
            )
        else:
            assert queue == BATCH_QUEUE
            worker = Worker(
                client,
                task_queue=name,
                workflows=[BatchReportWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                graceful_shutdown_timeout=grace,
                interceptors=[*telemetry, AutoHeartbeat()],
            )
        workers.append(worker)
        log.info("worker polls %s", name)
    return RunningWorker(workers, activities, cleanups)
