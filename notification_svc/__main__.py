"""``python -m notification_svc``: runs NotificationService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from notification_svc.server import create_server
from surveymesh.config import Settings
from surveymesh.logs import configure_logging
from surveymesh.telemetry import setup_telemetry


async def main() -> None:
    """Reads the settings, starts the service and serves until signalled."""
    settings = Settings.from_env()
    configure_logging(settings)
    telemetry = setup_telemetry(settings, "notification")
    service = await create_server(settings)
    await service.serve_until_signalled(settings.grace_seconds)
    telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
