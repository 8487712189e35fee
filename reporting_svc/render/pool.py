"""Runs renderings off the event loop: in worker processes, or in threads.

Rendering (Jinja, vl-convert, and above all WeasyPrint's layout) is CPU-bound Python that
holds the GIL; in a thread it would slow every other request of the server. Worker
processes keep the server's event loop free. They are spawned (never forked: the server
runs gRPC threads) lazily on the first rendering, and recycled after a number of tasks to
bound memory growth.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from surveymesh.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
TASKS_PER_PROCESS = 200
# Renderings waiting per process before new ones are refused (RESOURCE_EXHAUSTED).
QUEUE_PER_PROCESS = 8


class RenderPool:
    """Runs CPU-bound rendering functions without blocking the event loop.

    Args:
        processes: Worker processes; 0 runs renderings in threads (``asyncio.to_thread``),
            which suits tests and tiny deployments.
    """

    def __init__(self, processes: int = 2) -> None:
        self.processes = max(0, processes)
        self._executor: ProcessPoolExecutor | None = None
        # At most one rendering per process at a time (two threads in thread mode); the
        # rest wait here, up to a bound.
        self._slots = asyncio.Semaphore(self.processes or 2)
        self._limit = QUEUE_PER_PROCESS * max(1, self.processes)
        self._waiting = 0

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=TASKS_PER_PROCESS,
            )
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process (or thread); ``fn`` and args must pickle.

        Raises:
            ResourceExhausted: too many renderings are waiting already.
            Unavailable: a worker process died (it is replaced for the next call).
        """
        if self._waiting >= self._limit:
            raise ResourceExhausted(
                "too many renderings in progress; retry shortly",
                retry_after=2.0,
                reason="RENDER_QUEUE_FULL",
            )
        self._waiting += 1
        try:
            async with self._slots:
                if self.processes == 0:
                    return await asyncio.to_thread(fn, *args)
                loop = asyncio.get_running_loop()
                try:
                    return await loop.run_in_executor(self._pool(), fn, *args)
                except BrokenProcessPool:
                    log.error("a rendering process died; starting a new pool")
                    broken, self._executor = self._executor, None
                    if broken is not None:
                        broken.shutdown(wait=False, cancel_futures=True)
                    raise Unavailable(
                        "the rendering process failed; retry", reason="RENDER_FAILED"
                    ) from None
        finally:
            self._waiting -= 1

    def warm(self) -> None:
        """Starts the worker processes and loads the renderers in the background."""
        if self.processes == 0:
            return
        from reporting_svc.render import warm_up

        pool = self._pool()
        for _ in range(self.processes):
            pool.submit(warm_up)

    async def close(self) -> None:
        """Stops the worker processes (a rendering in progress is abandoned)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
