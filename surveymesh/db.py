"""PostgreSQL access shared by the services: the asyncpg pool and versioned migrations.

Each service keeps its tables in its own schema (``delivery``, ``reporting``,
``notification``), so it works alone in its own database (the default) or beside the
others in a shared one. Migrations are plain SQL files ``NNN_name.sql`` applied in order,
each in its own transaction, under an advisory lock so that replicas starting together
apply them once.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import asyncpg
import orjson

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns travel as Python objects, encoded with orjson (fast, strict UTF-8).
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    # asyncpg has already rolled back any open transaction and dropped listeners.
    pass


async def create_pool(
    dsn: str,
    *,
    schema: str,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 60,
    reset_sessions: bool = True,
) -> asyncpg.Pool:
    """Opens a pool whose connections see ``schema`` first on their search path.

    Args:
        reset_sessions: Run asyncpg's session reset (``pg_advisory_unlock_all(); CLOSE ALL;
            UNLISTEN *; RESET ALL``) whenever a connection goes back to the pool, one more
            round trip per pooled query. A service whose code never leaves session state on
            pooled connections (``SET`` without ``LOCAL``, ``LISTEN``, session advisory locks,
            ``WITH HOLD`` cursors) passes False; an open transaction is rolled back either way.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        reset=None if reset_sessions else _keep_session,
        server_settings={
            "search_path": f"{schema},public",
            "application_name": f"surveymesh-{schema}",
        },
    )
    assert pool is not None
    return pool


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Applies the not-yet-applied ``NNN_*.sql`` files of ``directory`` to ``schema``.

    Returns:
        The versions applied by this call (empty when the schema was up to date).
    """
    files = sorted(p for p in directory.glob("*.sql") if p.name[:3].isdigit())
    applied: list[str] = []
    lock_key = zlib.crc32(f"surveymesh-migrations-{schema}".encode())
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]
                for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for path in files:
                version = path.stem
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(path.read_text())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version
                    )
                applied.append(version)
                log.info("applied migration %s.%s", schema, version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied


async def open_database(
    dsn: str,
    *,
    schema: str,
    migrations: Path,
    min_size: int = 1,
    max_size: int = 10,
    reset_sessions: bool = True,
) -> asyncpg.Pool:
    """Opens the pool and brings the schema up to date: what every service does at start.

    ``reset_sessions``: see :func:`create_pool`.
    """
    pool = await create_pool(
        dsn, schema=schema, min_size=min_size, max_size=max_size, reset_sessions=reset_sessions
    )
    try:
        await apply_migrations(pool, schema, migrations)
    except BaseException:
        await pool.close()
        raise
    return pool
