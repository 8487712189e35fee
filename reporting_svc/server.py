"""Builds a running ReportingService: pool, LISTEN hub, Temporal client, Delivery channel, server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from temporalio.client import Client

from reporting_svc import store
from reporting_svc.events import EventHub
from reporting_svc.reports import Reports
from reporting_svc.servicer import ReportingServicer
from surveymesh.auth import TokenAuthority
from surveymesh.config import Settings
from surveymesh.db import open_database
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dpb_grpc
from surveymesh.grpcserver import RunningService, ServerHandle, Service, start_server
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "surveymesh.reporting.v1.ReportingService"
DOMAIN = "surveymesh.reporting"


class ReportingHandle(ServerHandle):
    """The server handle, which ends open WatchReport streams before the graceful stop.

    WatchReport streams live as long as their reports run; left open they would hold the
    shutdown for the whole grace period. Closing the hub first ends them cleanly, and
    clients reconnect (to another replica) with the last sequence they received.
    """

    def __init__(self, inner: ServerHandle, hub: EventHub, names: Sequence[str]) -> None:
        super().__init__(inner.server, inner.port, inner.health, names)
        self.hub = hub

    async def stop(self, grace: float) -> None:
        """Ends the watch streams, then stops serving gracefully."""
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await super().stop(grace)


async def create_server(
    settings: Settings,
    *,
    authority: TokenAuthority | None = None,
    address: str | None = None,
    temporal_client: Client | None = None,
) -> RunningService:
    """Opens the service's resources and starts serving.

    Args:
        settings: The process settings (database URL, peers, Temporal, ports).
        authority: Verifies bearer tokens; by default one made from the settings' secret.
        address: ``host:port`` to bind; defaults to ``bind_host:reporting_port`` (tests pass
            ``localhost:0``).
        temporal_client: A connected client; by default one connects (lazily, so the
            service starts even while Temporal is still coming up) to the settings' address.

    Returns:
        The running service; ``await service.stop(grace)`` shuts it down and closes all.
    """
    authority = authority or TokenAuthority(
        settings.signing_secret(), audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def close_all() -> None:
        for cleanup in reversed(cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed")

    try:
        dsn = settings.require_database_url()
        pool = await open_database(
            dsn,
            schema=store.SCHEMA,
            migrations=store.MIGRATIONS,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        cleanups.append(pool.close)
        hub = EventHub(dsn)
        await hub.start()
        cleanups.append(hub.close)
        if temporal_client is None:
            temporal_client = await Client.connect(
                settings.temporal_address, namespace=settings.temporal_namespace, lazy=True
            )
        channel = grpc.aio.insecure_channel(settings.peer("delivery"))
        cleanups.append(channel.close)
        reports = Reports(
            pool, temporal_client, dpb_grpc.DeliveryServiceStub(channel), hub, settings
        )
        inner = await start_server(
            [
                Service(
                    SERVICE_NAME,
                    pb_grpc.add_ReportingServiceServicer_to_server,
                    ReportingServicer(reports),
                )
            ],
            authority=authority,
            domain=DOMAIN,
            address=address or f"{settings.bind_host}:{settings.reporting_port}",
            reflection_enabled=settings.reflection,
        )
    except BaseException:
        await close_all()
        raise
    # Cleanups run in order after the server stopped: hub (already closed), channel, pool.
    return RunningService(
        handle=ReportingHandle(inner, hub, [SERVICE_NAME]), cleanups=cleanups[::-1]
    )
