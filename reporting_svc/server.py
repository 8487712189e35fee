"""Builds a running ReportingService: pool, LISTEN hub, Temporal client, Delivery channel,
rendering processes, the gRPC server and the web viewer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from temporalio.client import Client

from reporting_svc import store
from reporting_svc.events import EventHub
from reporting_svc.ratelimit import OrgRateLimiter
from reporting_svc.render.pool import RenderPool
from reporting_svc.reports import Reports, StoredEvents
from reporting_svc.servicer import ReportingServicer
from reporting_svc.web import Viewer
from surveymesh.auth import TokenAuthority
from surveymesh.channels import open_channel, server_credentials
from surveymesh.codec import configured_data_converter
from surveymesh.config import Settings
from surveymesh.db import open_database
from surveymesh.dbhealth import DatabaseHealth
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dpb_grpc
from surveymesh.grpcserver import RunningService, ServerHandle, Service, start_server
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from surveymesh.telemetry import temporal_interceptors

log = logging.getLogger(__name__)

SERVICE_NAME = "surveymesh.reporting.v1.ReportingService"
DOMAIN = "surveymesh.reporting"


class ReportingHandle(ServerHandle):
    """The server handle, which ends open WatchReport streams before the graceful stop.

    WatchReport streams (and the viewer's event streams) live as long as their reports
    run; left open they would hold the shutdown for the whole grace period. Closing the hub
    first ends them cleanly, and clients reconnect (to another replica) with the last
    sequence they received.

    Attributes:
        viewer: The web viewer (HTTP), served by this process.
        web_port: The viewer's bound port.
    """

    def __init__(
        self, inner: ServerHandle, hub: EventHub, viewer: Viewer, names: Sequence[str]
    ) -> None:
        super().__init__(inner.server, inner.port, inner.health, names)
        self.hub = hub
        self.viewer = viewer

    @property
    def web_port(self) -> int:
        """The port the web viewer listens on."""
        return self.viewer.port

    async def stop(self, grace: float) -> None:
        """Ends the watch streams, stops the viewer, then stops serving gracefully."""
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await self.viewer.stop()
        await super().stop(grace)


def web_bind(settings: Settings, address: str | None, web_address: str | None) -> tuple[str, int]:
    """Host and port of the web viewer.

    ``web_address`` wins; otherwise ``bind_host:web_port``, except that a gRPC ``address``
    on port 0 (tests, embedding) puts the viewer on a free port too, so that several
    servers in one process never fight over 8080.
    """
    if web_address is None:
        if address is not None and address.rpartition(":")[2] == "0":
            web_address = f"{address.rpartition(':')[0]}:0"
        else:
            web_address = f"{settings.bind_host}:{settings.web_port}"
    host, _, port = web_address.rpartition(":")
    host = host.strip("[]") or settings.bind_host
    # "localhost" may resolve to two addresses, which port 0 would bind to different ports.
    if host == "localhost" and port == "0":
        host = "127.0.0.1"
    return host, int(port)


async def create_server(
    settings: Settings,
    *,
    authority: TokenAuthority | None = None,
    address: str | None = None,
    temporal_client: Client | None = None,
    web_address: str | None = None,
    warm_renderer: bool = False,
) -> RunningService:
    """Opens the service's resources and starts serving.

    Args:
        settings: The process settings (database URL, peers, Temporal, ports).
        authority: Verifies bearer tokens; by default one made from the settings' secret.
        address: ``host:port`` to bind; defaults to ``bind_host:reporting_port`` (tests pass
            ``localhost:0``).
        temporal_client: A connected client; by default one connects (lazily, so the
            service starts even while Temporal is still coming up) to the settings' address.
        web_address: ``host:port`` of the web viewer; see :func:`web_bind` for the default.
        warm_renderer: Start the rendering processes now rather than on the first
            rendering (the service's ``__main__`` does; tests do not).

    Returns:
        The running service; ``await service.stop(grace)`` shuts it down and closes all.
    """
    authority = authority or TokenAuthority.from_settings(settings)
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
            # Nothing here leaves session state on a pooled connection (the LISTEN hub has a
            # connection of its own; migrations unlock their advisory lock), so a connection
            # goes back to the pool without a reset round trip (half of a GetReport's).
            reset_sessions=False,
        )
        cleanups.append(pool.close)
        hub = EventHub(dsn, StoredEvents(pool))
        await hub.start()
        cleanups.append(hub.close)
        if temporal_client is None:
            temporal_client = await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                lazy=True,
                # Tracing: StartWorkflow joins the GenerateReport span, the worker goes on.
                interceptors=temporal_interceptors(),
                data_converter=configured_data_converter(settings),
            )
        channel = open_channel(settings, settings.peer("delivery"))
        cleanups.append(channel.close)
        renderer = RenderPool(settings.render_processes)
        cleanups.append(renderer.close)
        if warm_renderer:
            renderer.warm()
        reports = Reports(
            pool, temporal_client, dpb_grpc.DeliveryServiceStub(channel), hub, settings, renderer
        )
        viewer = Viewer(reports, authority, renderer, dev_mode=settings.dev_mode)
        host, port = web_bind(settings, address, web_address)
        await viewer.start(host, port, shutdown_timeout=settings.grace_seconds)
        cleanups.append(viewer.stop)
        inner = await start_server(
            [
                Service(
                    SERVICE_NAME,
                    pb_grpc.add_ReportingServiceServicer_to_server,
                    ReportingServicer(reports, OrgRateLimiter(settings.report_rate)),
                )
            ],
            authority=authority,
            domain=DOMAIN,
            address=address or f"{settings.bind_host}:{settings.reporting_port}",
            reflection_enabled=settings.reflection,
            credentials=server_credentials(settings),
        )
    except BaseException:
        await close_all()
        raise
    db_health = DatabaseHealth(pool, inner)
    db_health.start()
    cleanups.append(db_health.stop)  # reversed below: stops first, before the pool closes
    # Cleanups run in order after the server stopped: viewer and hub (both already
    # stopped), rendering processes, channel, pool.
    return RunningService(
        handle=ReportingHandle(inner, hub, viewer, [SERVICE_NAME]), cleanups=cleanups[::-1]
    )
