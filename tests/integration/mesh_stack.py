"""The whole mesh in-process, for client-facing tests (Python client, CLI, TypeScript client).

Delivery, Notification and Reporting run on port 0 against their own fresh databases on the
session's embedded PostgreSQL; one worker polls every queue of a task queue prefix of its
own on the session's Temporal dev server. Clients reach it only through the addresses in
:attr:`MeshStack.env`, exactly as a program outside the test would.

Use it from a module-scoped fixture::

    @pytest.fixture(scope="module")
    async def mesh(new_database, temporal_env, tmp_path_factory):
        async with whole_mesh(new_database, temporal_env.client, tmp_path_factory.mktemp("m")) as m:
            yield m
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from temporalio.client import Client

from delivery_svc.server import create_server as create_delivery
from notification_svc.server import create_server as create_notification
from reporting_svc.server import create_server as create_reporting
from surveymesh.auth import TokenAuthority
from surveymesh.client import SurveyMeshClient
from surveymesh.config import Settings
from surveymesh.grpcserver import RunningService
from tests.conftest import TEST_SECRET
from worker.worker import RunningWorker, create_worker


@dataclass
class MeshStack:
    """The running services and worker, and how a client reaches them."""

    settings: Settings  # Reporting's (and the worker's) settings, with every peer address
    delivery: RunningService
    notification: RunningService
    reporting: RunningService
    worker: RunningWorker
    authority: TokenAuthority
    data_dir: Path

    @property
    def addresses(self) -> dict[str, str]:
        """``host:port`` of each service."""
        return {
            "reporting": f"localhost:{self.reporting.port}",
            "delivery": f"localhost:{self.delivery.port}",
            "notification": f"localhost:{self.notification.port}",
        }

    def token(self, org: str, *, user: str = "alice", role: str = "analyst") -> str:
        """A bearer token of ``user`` in ``org``."""
        return self.authority.mint(org=org, user=user, roles=[role])

    def env(self, org: str, *, user: str = "alice", role: str = "analyst") -> dict[str, str]:
        """The environment a client process (CLI, TypeScript program) needs."""
        a = self.addresses
        return {
            "SURVEYMESH_REPORTING_ADDRESS": a["reporting"],
            "SURVEYMESH_DELIVERY_ADDRESS": a["delivery"],
            "SURVEYMESH_NOTIFICATION_ADDRESS": a["notification"],
            "SURVEYMESH_TOKEN": self.token(org, user=user, role=role),
            "SURVEYMESH_DATA_DIR": str(self.data_dir),
            "SURVEYMESH_JWT_SECRET": TEST_SECRET,
        }

    def client(self, org: str, *, user: str = "alice", role: str = "analyst") -> SurveyMeshClient:
        """A Python client of the mesh acting as ``user`` of ``org``."""
        a = self.addresses
        return SurveyMeshClient(
            reporting_address=a["reporting"],
            delivery_address=a["delivery"],
            notification_address=a["notification"],
            token=self.token(org, user=user, role=role),
        )


async def start_peers(
    stack: AsyncExitStack, new_database: Callable[[str], Awaitable[str]], data_dir: Path
) -> tuple[RunningService, RunningService, Settings]:
    """Starts Delivery and Notification on port 0 (stopped by ``stack``).

    Returns:
        Both services and the Settings of a Reporting server (and worker) that reach them,
        with a fresh reporting database and no task queue prefix yet.
    """
    delivery = await create_delivery(
        Settings(database_url=await new_database("delivery"), jwt_secret=TEST_SECRET),
        address="localhost:0",
    )
    stack.push_async_callback(delivery.stop, 0)
    notification = await create_notification(
        Settings(
            database_url=await new_database("notification"),
            jwt_secret=TEST_SECRET,
            data_dir=data_dir,
        ),
        address="localhost:0",
    )
    stack.push_async_callback(notification.stop, 0)
    settings = Settings(
        database_url=await new_database("reporting"),
        jwt_secret=TEST_SECRET,
        data_dir=data_dir,
        delivery_address=f"localhost:{delivery.port}",
        notification_address=f"localhost:{notification.port}",
        grace_seconds=1.0,
    )
    return delivery, notification, settings


@asynccontextmanager
async def whole_mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal: Client,
    data_dir: Path,
) -> AsyncIterator[MeshStack]:
    """Starts Delivery, Notification, Reporting and a worker; stops all of them afterwards."""
    async with AsyncExitStack() as stack:
        delivery, notification, peers = await start_peers(stack, new_database, data_dir)
        settings = replace(peers, task_queue_prefix=f"tq-{uuid.uuid4().hex[:8]}-")
        reporting = await create_reporting(
            settings, address="localhost:0", temporal_client=temporal
        )
        stack.push_async_callback(reporting.stop, 0)
        worker = await create_worker(settings, temporal)
        worker.start()
        stack.push_async_callback(worker.shutdown)
        yield MeshStack(
            settings=settings,
            delivery=delivery,
            notification=notification,
            reporting=reporting,
            worker=worker,
            authority=TokenAuthority(TEST_SECRET),
            data_dir=data_dir,
        )
