"""Shared set-up of the NotificationService integration tests: a server with fast retries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from notification_svc.dispatcher import DeliveryPolicy
from notification_svc.server import create_server
from surveymesh.config import Settings
from surveymesh.grpcserver import RunningService
from tests.conftest import TEST_SECRET

# Retries within a second, so tests see backoff, give-up and recovery quickly.
FAST = DeliveryPolicy(
    base_delay=0.2,
    max_delay=1.0,
    max_attempts=4,
    jitter=0.0,
    poll_interval=0.2,
    lease_seconds=10.0,
    webhook_timeout=2.0,
    smtp_timeout=5.0,
    shutdown_timeout=2.0,
)
Meta = Callable[..., tuple[tuple[str, str], ...]]


async def start(dsn: str, data_dir: Path, **settings: Any) -> RunningService:
    """A NotificationService on a free port, with fast retries."""
    config = Settings(database_url=dsn, jwt_secret=TEST_SECRET, data_dir=data_dir, **settings)
    return await create_server(config, address="localhost:0", policy=FAST)
