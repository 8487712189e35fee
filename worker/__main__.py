"""``python -m worker``: runs the report worker until SIGTERM/SIGINT, then stops gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from temporalio.client import Client

from surveymesh.config import ConfigError, Settings
from surveymesh.workflow_contract import ALL_QUEUES
from worker.worker import create_worker

log = logging.getLogger("worker")


def _configure_logging(settings: Settings) -> None:
    if settings.log_format == "json":
        fmt = '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level, format=fmt)


async def main(settings: Settings) -> None:
    """Connects to Temporal, polls the configured queues and shuts down on a signal."""
    settings.require_database_url()  # fail before connecting anywhere
    try:
        client = await Client.connect(
            settings.temporal_address, namespace=settings.temporal_namespace
        )
    except RuntimeError as e:  # the SDK reports an unreachable server as RuntimeError
        raise ConfigError(f"cannot reach Temporal at {settings.temporal_address}: {e}") from e
    worker = await create_worker(settings, client, queues=settings.worker_queues or ALL_QUEUES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    log.info("worker running on %s", ", ".join(worker.task_queues))
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.grace_seconds)
    await worker.shutdown()


def run() -> None:
    """Process entry point."""
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        sys.exit(f"worker: {e}")
    _configure_logging(settings)
    try:
        asyncio.run(main(settings))
    except ConfigError as e:
        sys.exit(f"worker: {e}")


if __name__ == "__main__":
    run()
