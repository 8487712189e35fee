"""Assembly of NotificationService: pool, listener, dispatcher and the gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from notification_svc.dispatcher import DeliveryPolicy, Dispatcher
from notification_svc.live import Hub, Listener
from notification_svc.mailer import EmailRenderer, Mailer, parse_smtp_url
from notification_svc.notifications import Notifications
from notification_svc.repository import CHANNEL_EMAIL, CHANNEL_WEBHOOK, Repository
from notification_svc.secretbox import SecretBox
from notification_svc.servicer import NotificationServicer
from notification_svc.webhooks import WebhookEndpoints, WebhookSender
from surveymesh.auth import TokenAuthority
from surveymesh.channels import server_credentials
from surveymesh.config import Settings
from surveymesh.db import open_database
from surveymesh.dbhealth import DatabaseHealth
from surveymesh.grpcserver import RunningService, ServerHandle, Service, start_server
from surveymesh.notification.v1 import notification_service_pb2 as pb
from surveymesh.notification.v1 import notification_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SCHEMA = "notification"
DOMAIN = "surveymesh.notification"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotificationService"].full_name


class NotificationHandle(ServerHandle):
    """The server handle, which ends open WatchNotifications streams before the graceful stop.

    Those streams never end by themselves; left open they would hold every shutdown for
    the whole grace period and then be cut off. Health goes NOT_SERVING first, then the
    streams return cleanly and clients resume (on another replica) after the last sequence
    they saw, then in-flight unary calls get the grace period to finish.
    """

    def __init__(self, inner: ServerHandle, hub: Hub, names: list[str]) -> None:
        super().__init__(inner.server, inner.port, inner.health, names)
        self.hub = hub

    async def stop(self, grace: float) -> None:
        """Ends the watch streams, then stops serving gracefully."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()
        await super().stop(grace)


async def create_server(
    settings: Settings,
    *,
    authority: TokenAuthority | None = None,
    address: str | None = None,
    policy: DeliveryPolicy | None = None,
) -> RunningService:
    """Starts NotificationService with its delivery dispatcher.

    Args:
        settings: The process settings (database, SMTP, data dir, webhook address policy,
            the keys webhook secrets are encrypted with).
        authority: Verifies bearer tokens; defaults to the deployment's secret.
        address: ``host:port`` to bind (``localhost:0`` in tests).
        policy: Retry and concurrency settings of the dispatcher; defaults to
            :meth:`DeliveryPolicy.from_env`.

    Returns:
        The running service; ``stop()`` stops the server, then the dispatcher (letting
        in-flight attempts finish or releasing them), the listener, HTTP client and pool.
    """
    dsn = settings.require_database_url()
    policy = policy or DeliveryPolicy.from_env()
    smtp = parse_smtp_url(settings.smtp_url) if settings.smtp_url else None
    authority = authority or TokenAuthority.from_settings(settings)
    box = SecretBox.from_settings(settings)  # a bad key list fails the start, not a delivery
    outbox_dir = settings.data_dir / "outbox"
    cleanups: list[Callable[[], Awaitable[None]]] = []
    try:
        pool = await open_database(
            dsn,
            schema=SCHEMA,
            migrations=MIGRATIONS,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        cleanups.insert(0, pool.close)
        repo = Repository(pool)
        endpoints = WebhookEndpoints(repo, box, allow_private=settings.allow_private_webhooks)
        try:
            # Legacy plaintext rows and rows under an older key move to the newest key, so a
            # dump shows no secret and a retired key can be dropped once all replicas ran.
            await endpoints.reseal_all()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("re-encrypting webhook secrets failed (next start retries): %r", exc)
        # No redirects (a 3xx could point anywhere, including private addresses) and no
        # proxy settings from the environment: receivers are reached directly.
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(policy.webhook_timeout, connect=min(5.0, policy.webhook_timeout)),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=policy.max_in_flight),
        )
        cleanups.insert(0, client.aclose)
        mailer = Mailer(
            repo,
            EmailRenderer(settings.viewer_url),
            sender=settings.email_from,
            smtp=smtp,
            outbox_dir=outbox_dir,
            timeout=policy.smtp_timeout,
        )
        webhooks = WebhookSender(client, box, allow_private=settings.allow_private_webhooks)
        dispatcher = Dispatcher(
            repo,
            policy,
            {CHANNEL_WEBHOOK: webhooks, CHANNEL_EMAIL: mailer},
            outbox_dir=outbox_dir,
        )
        hub = Hub()
        listener = Listener(dsn, hub, dispatcher.wake)
        await listener.start()
        cleanups.insert(0, listener.stop)
        servicer = NotificationServicer(Notifications(repo, hub, dispatcher.wake), endpoints)
        handle = await start_server(
            [Service(SERVICE_NAME, pb_grpc.add_NotificationServiceServicer_to_server, servicer)],
            authority=authority,
            domain=DOMAIN,
            address=address or f"{settings.bind_host}:{settings.notification_port}",
            reflection_enabled=settings.reflection,
            credentials=server_credentials(settings),
        )
        dispatcher.start()
        cleanups.insert(0, dispatcher.stop)
        db_health = DatabaseHealth(pool, handle)
        db_health.start()
        cleanups.insert(0, db_health.stop)
    except BaseException:
        for cleanup in cleanups:
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup after a failed start failed")
        raise
    if smtp is None:
        log.info("no SMTP_URL: emails go to %s", settings.data_dir / "outbox")
    return RunningService(NotificationHandle(handle, hub, [SERVICE_NAME]), cleanups)
