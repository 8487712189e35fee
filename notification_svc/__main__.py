"""``python -m notification_svc``: runs NotificationService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging

from notification_svc.server import create_server
from surveymesh.config import Settings


async def main() -> None:
    """Reads the settings, starts the service and serves until signalled."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    service = await create_server(settings)
    await service.serve_until_signalled(settings.grace_seconds)


if __name__ == "__main__":
    asyncio.run(main())
