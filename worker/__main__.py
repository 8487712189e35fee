"""``python -m worker``: runs the report worker until SIGTERM/SIGINT, then stops gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from temporalio.client import Client

from surveymesh.codec import configured_data_converter
from surveymesh.config import ConfigError, Settings
from surveymesh.logs import configure_logging
from surveymesh.telemetry import setup_telemetry, temporal_interceptors, temporal_runtime
from surveymesh.workflow_contract import ALL_QUEUES
from worker.worker import create_worker

log = logging.getLogger("worker")


async def main(settings: Settings) -> None:
    """Connects to Temporal, polls the configured queues and shuts down on a signal."""
    settings.require_database_url()  # fail before connecting anywhere
    telemetry = setup_telemetry(settings, "worker")
    try:
        # TracingInterceptor on the client: the worker inherits it, so each workflow and
        # activity continues the trace of the GenerateReport call that started it. The
        # runtime serves the SDK's own metrics (SURVEYMESH_TEMPORAL_METRICS_PORT).
        client = await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            interceptors=temporal_interceptors(),
            runtime=temporal_runtime(settings),
            data_converter=configured_data_converter(settings),
        )
    except RuntimeError as e:  # the SDK reports an unreachable server as RuntimeError
        raise ConfigError(f"cannot reach Temporal at {settings.temporal_address}: {e}") from e
    worker = await create_worker(
        settings,
        client,
        queues=settings.worker_queues or ALL_QUEUES,
        snapshot_batch_size=settings.snapshot_batch,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    log.info("worker running on %s", ", ".join(worker.task_queues))
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.grace_seconds)
    await worker.shutdown()
    telemetry.shutdown()


def run() -> None:
    """Process entry point."""
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        sys.exit(f"worker: {e}")
    configure_logging(settings)
    try:
        asyncio.run(main(settings))
    except ConfigError as e:
        sys.exit(f"worker: {e}")


if __name__ == "__main__":
    run()
