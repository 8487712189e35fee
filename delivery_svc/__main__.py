"""``python -m delivery_svc``: runs DeliveryService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from delivery_svc.server import create_server
from surveymesh.config import Settings
from surveymesh.logs import configure_logging
from surveymesh.telemetry import setup_telemetry


async def _main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    telemetry = setup_telemetry(settings, "delivery")
    service = await create_server(settings)
    await service.serve_until_signalled(settings.grace_seconds)
    telemetry.shutdown()


def main() -> None:
    """Process entry point."""
    asyncio.run(_main())


if __name__ == "__main__":
    main()
