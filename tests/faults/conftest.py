"""Fixtures of the fault suite: a restartable Temporal server, fresh databases per test,
the mesh as processes, direct pools for the invariant checks, a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from surveymesh.embedded import EmbeddedTemporal, free_port
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES
from tests.integration.proc_mesh import ProcMesh
from tests.integration.test_notification_webhooks import Receiver


@pytest.fixture(scope="session")
async def fault_temporal(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedTemporal]:
    """A Temporal dev server of the fault suite's own, on a SQLite file, so tests can stop
    and restart it (the session's ``temporal_env`` is in-memory and shared by others)."""
    server = EmbeddedTemporal(
        tmp_path_factory.mktemp("fault-temporal"),
        port=free_port(),
        ui_port=None,
        search_attributes=SEARCH_ATTRIBUTES,
        log_level="error",
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def temporal(fault_temporal: EmbeddedTemporal) -> Client:
    """A client of the fault suite's Temporal server."""
    if not fault_temporal.running:  # a test that failed mid-restart left it stopped
        await fault_temporal.start()
    return await Client.connect(fault_temporal.address)


@dataclass
class Stack:
    """A process mesh plus what the checks need."""

    mesh: ProcMesh
    reporting: asyncpg.Pool
    notification: asyncpg.Pool
    dsns: dict[str, str]
    temporal: Client


MeshFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(
    new_database: Callable[[str], Awaitable[str]],
    fault_temporal: EmbeddedTemporal,
    temporal: Client,
    tmp_path: Path,
) -> AsyncIterator[MeshFactory]:
    """``stack = await make_stack(workers=1, extra_env={...}, start=True)``.

    Fresh databases per stack; every process is stopped afterwards.
    """
    async with AsyncExitStack() as exits:
        count = 0

        async def make(
            *,
            workers: int = 1,
            start: bool = True,
            dsn_via: Callable[[str], str] | None = None,
            **kw: Any,
        ) -> Stack:
            nonlocal count
            count += 1
            own = {
                name: await new_database(f"fault_{name}")
                for name in ("delivery", "notification", "reporting")
            }
            mesh = ProcMesh(
                {k: dsn_via(v) for k, v in own.items()} if dsn_via else own,
                temporal_address=fault_temporal.address,
                work_dir=tmp_path / f"mesh-{count}",
                **kw,
            )
            exits.push_async_callback(mesh.stop_all)
            if start:
                await mesh.start_all(workers=workers)
            # Direct pools for the checks; the schemas exist once the services started.
            reporting = await asyncpg.create_pool(own["reporting"], min_size=1, max_size=3)
            notification = await asyncpg.create_pool(own["notification"], min_size=1, max_size=2)
            assert reporting is not None and notification is not None
            exits.push_async_callback(reporting.close)
            exits.push_async_callback(notification.close)
            return Stack(mesh, reporting, notification, own, temporal)

        yield make


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP webhook receiver answering 200."""
    async with Receiver() as r:
        yield r
