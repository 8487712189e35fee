"""``python -m reporting_svc``: serves ReportingService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from reporting_svc.server import create_server
from surveymesh.config import Settings
from surveymesh.logs import configure_logging
from surveymesh.telemetry import setup_telemetry


async def _main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    telemetry = setup_telemetry(settings, "reporting")
    service = await create_server(settings, warm_renderer=True)
    await service.serve_until_signalled(settings.grace_seconds)
    telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(_main())
