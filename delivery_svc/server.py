"""Builds and starts DeliveryService: pool + migrations, servicer, gRPC server."""

from __future__ import annotations

import logging

import asyncpg

from delivery_svc.repository import MIGRATIONS, SCHEMA, DeliveryRepository
from delivery_svc.responses import Responses
from delivery_svc.servicer import SERVICE_NAME, DeliveryServicer, add_to_server
from delivery_svc.surveys import Surveys
from surveymesh.auth import TokenAuthority
from surveymesh.channels import server_credentials
from surveymesh.config import Settings
from surveymesh.db import open_database
from surveymesh.dbhealth import DatabaseHealth
from surveymesh.grpcserver import RunningService, Service, start_server

log = logging.getLogger(__name__)

DOMAIN = "surveymesh.delivery"


def build_servicer(pool: asyncpg.Pool) -> DeliveryServicer:
    """Wires the domain classes over ``pool`` (whose schema is up to date)."""
    repo = DeliveryRepository(pool)
    surveys = Surveys(repo)
    return DeliveryServicer(surveys, Responses(repo, surveys))


async def create_server(
    settings: Settings,
    *,
    authority: TokenAuthority | None = None,
    address: str | None = None,
) -> RunningService:
    """Opens the database (applying migrations) and starts serving DeliveryService.

    Args:
        settings: Process settings; ``database_url`` is required.
        authority: Verifies bearer tokens; defaults to one built from ``settings``.
        address: ``host:port`` to bind (``localhost:0`` in tests); defaults to
            ``bind_host:delivery_port``.

    Returns:
        The running service; ``await stop()`` shuts it down and closes the pool.
    """
    authority = authority or TokenAuthority.from_settings(settings)
    pool = await open_database(
        settings.require_database_url(),
        schema=SCHEMA,
        migrations=MIGRATIONS,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
    )
    try:
        handle = await start_server(
            [
                Service(
                    SERVICE_NAME,
                    add_to_server,
                    build_servicer(pool),
                )
            ],
            authority=authority,
            domain=DOMAIN,
            address=address or f"{settings.bind_host}:{settings.delivery_port}",
            reflection_enabled=settings.reflection,
            credentials=server_credentials(settings),
        )
    except BaseException:
        await pool.close()
        raise
    db_health = DatabaseHealth(pool, handle)
    db_health.start()
    return RunningService(handle, [db_health.stop, pool.close])
