"""The one-shot migrations job (``python -m surveymesh.migrate``) the deploy manifests run."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from surveymesh.migrate import SERVICES, migrate, migrations_dir


def test_every_service_has_migrations() -> None:
    for service in SERVICES:
        assert sorted(p.name for p in migrations_dir(service).glob("[0-9][0-9][0-9]_*.sql"))


async def test_replicas_racing_apply_each_file_once(
    new_database: Callable[[str], Awaitable[str]],
) -> None:
    # One database for all three services (the "one server, one database" layout works as
    # well as one database each), and two job runs racing per service, as when a Job and
    # the services' own start-up migrations overlap.
    dsn = await new_database("migrate")
    results = await asyncio.gather(*(migrate(s, dsn) for s in SERVICES for _ in range(2)))
    for i, service in enumerate(SERVICES):
        first, second = results[2 * i], results[2 * i + 1]
        expected = sorted(p.stem for p in migrations_dir(service).glob("[0-9][0-9][0-9]_*.sql"))
        assert sorted(first + second) == expected, service  # each version applied exactly once
    conn = await asyncpg.connect(dsn)
    try:
        for service in SERVICES:
            rows = await conn.fetch(f'SELECT version FROM "{service}".schema_migrations')
            assert len(rows) == len(list(migrations_dir(service).glob("[0-9][0-9][0-9]_*.sql")))
    finally:
        await conn.close()
    assert await migrate("delivery", dsn) == []  # a rerun is a no-op


@pytest.mark.parametrize(("env_url", "expected"), [(True, 0), (False, 2)])
async def test_cli_exit_status(
    new_database: Callable[[str], Awaitable[str]], env_url: bool, expected: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if env_url:
        env["DATABASE_URL"] = await new_database("migratecli")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "surveymesh.migrate",
        "notification",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == expected, out.decode()
