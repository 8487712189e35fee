"""Health follows the database: a service whose PostgreSQL is unreachable reports NOT_SERVING.

Every SurveyMesh service answers almost every RPC from its database, so while the database
is gone a load balancer or Kubernetes readiness probe should send traffic elsewhere. The
watcher runs ``SELECT 1`` every ``interval`` seconds and flips the server's health status
(``ServerHandle.set_serving``) when the outcome changes. RPCs that still arrive during an
outage answer UNAVAILABLE through the interceptor's mapping; the watcher only tells
balancers. Once the server enters its graceful shutdown the health servicer ignores
further changes, so the watcher can never flip a stopping server back to SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import asyncpg

log = logging.getLogger(__name__)

# What a probe failure looks like: unreachable, reset, refused, or too slow to answer.
_PROBE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _Flippable(Protocol):
    async def set_serving(self, serving: bool) -> None: ...


class DatabaseHealth:
    """Keeps a server's health status in step with its database's reachability.

    Args:
        pool: The service's pool.
        handle: The server handle whose health is flipped.
        interval: Seconds between probes.
        timeout: Seconds one probe may take (acquire + ``SELECT 1``) before it counts as
            a failure; a stalled network is as bad as a refused one.
    """

    def __init__(
        self, pool: asyncpg.Pool, handle: _Flippable, *, interval: float = 1.0, timeout: float = 2.0
    ) -> None:
        self._pool = pool
        self._handle = handle
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self.serving = True
        self.transitions = 0

    def start(self) -> None:
        """Starts probing in the background (the server starts out SERVING)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="database-health")

    async def stop(self) -> None:
        """Stops probing (before the pool closes, so the last probe is not a false alarm)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe(self) -> bool:
        """One ``SELECT 1``; True when the database answered in time."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except _PROBE_ERRORS as exc:
            if self.serving:
                log.warning("database unreachable (%r); health NOT_SERVING", exc)
            return False
        return True

    async def _run(self) -> None:
        while True:
            ok = await self.probe()
            if ok != self.serving:
                self.serving = ok
                self.transitions += 1
                if ok:
                    log.info("database reachable again; health SERVING")
                await self._handle.set_serving(ok)
            await asyncio.sleep(self._interval)
