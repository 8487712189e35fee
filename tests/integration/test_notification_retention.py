"""Retention against real PostgreSQL: the dispatcher's periodic purge deletes finished
deliveries (with their attempts and kept emails) and done notifications older than the
window, in batches, and keeps pending work, unread in-app notifications and recent rows.
With retention 0 nothing is deleted."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from notification_svc.server import create_server
from surveymesh.config import Settings
from surveymesh.notification.v1 import notification_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2 as pb
from surveymesh.notification.v1 import notification_service_pb2_grpc as pb_grpc
from tests.conftest import TEST_SECRET
from tests.integration.notification_stack import FAST, Meta
from tests.integration.test_notification_webhooks import Receiver, create_endpoint, wait_for_status

pytestmark = pytest.mark.integration

OLD = "now() - interval '31 days'"


@asynccontextmanager
async def service(dsn: str, data_dir: Path, retention_days: int) -> AsyncIterator[Any]:
    """A NotificationService purging every 0.2 s, two rows per statement (so a purge takes
    several batches)."""
    policy = dataclasses.replace(
        FAST, retention_days=retention_days, purge_interval=0.2, purge_batch=2
    )
    settings = Settings(database_url=dsn, jwt_secret=TEST_SECRET, data_dir=data_dir)
    running = await create_server(settings, address="localhost:0", policy=policy)
    try:
        async with grpc.aio.insecure_channel(f"localhost:{running.port}") as channel:
            yield pb_grpc.NotificationServiceStub(channel)
    finally:
        await running.stop(0.2)


async def send(stub: Any, meta: Any, channels: list[Any], **kw: Any) -> str:
    request = pb.SendNotificationRequest(
        user_id="bob",
        type=kw.pop("type", "report.completed"),
        title="Your report is ready",
        link="/reports/r-1",
        channels=channels,
        idempotency_key=uuid.uuid4().hex,
        **kw,
    )
    return str((await stub.SendNotification(request, metadata=meta, timeout=10)).notification.id)


async def counts(conn: asyncpg.Connection, nid: str) -> tuple[int, int, int, int]:
    """(notifications, deliveries, attempts, outbox emails) of one notification."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM notification.notifications WHERE id = $1),"
        " (SELECT count(*) FROM notification.deliveries WHERE notification_id = $1),"
        " (SELECT count(*) FROM notification.delivery_attempts WHERE notification_id = $1),"
        " (SELECT count(*) FROM notification.email_outbox WHERE notification_id = $1)",
        uuid.UUID(nid),
    )
    assert row is not None
    return tuple(row)  # type: ignore[return-value]


async def test_purge_keeps_pending_unread_and_recent_rows(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_retention")
    admin = token_for(org, role="admin")
    conn = await asyncpg.connect(dsn)
    try:
        async with Receiver() as ok, Receiver(default=410) as gone:
            async with service(dsn, tmp_path, retention_days=0) as stub:
                await create_endpoint(stub, admin, ok.url(), event_types=["report.*"])
                await create_endpoint(stub, admin, gone.url(), event_types=["survey.*"])
                hook_old = await send(stub, admin, [npb.CHANNEL_WEBHOOK])
                hook_new = await send(stub, admin, [npb.CHANNEL_WEBHOOK])
                failed_old = await send(stub, admin, [npb.CHANNEL_WEBHOOK], type="survey.closed")
                email_old = await send(stub, admin, [npb.CHANNEL_EMAIL], email="bob@example.com")
                read_old, unread_old, read_new = [
                    await send(stub, admin, [npb.CHANNEL_IN_APP]) for _ in range(3)
                ]
                for nid, status in (
                    (hook_old, npb.DELIVERY_STATUS_SUCCEEDED),
                    (hook_new, npb.DELIVERY_STATUS_SUCCEEDED),
                    (failed_old, npb.DELIVERY_STATUS_FAILED),
                    (email_old, npb.DELIVERY_STATUS_SUCCEEDED),
                ):
                    await wait_for_status(stub, admin, nid, status)
                eml = Path(
                    await conn.fetchval(
                        "SELECT eml_path FROM notification.email_outbox WHERE notification_id = $1",
                        uuid.UUID(email_old),
                    )
                )
                assert eml.exists()

                # Pending work a month old: a retry scheduled for tomorrow, one attempt made.
                pending = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO notification.notifications (id, org_id, user_id, type, title,"
                    " body, link, metadata, channels, idempotency_key, create_time)"
                    f" VALUES ($1, $2, 'bob', 'report.completed', 't', '', '', '{{}}', '{{2}}',"
                    f" 'pending', {OLD})",
                    pending,
                    org,
                )
                delivery = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO notification.deliveries (id, org_id, notification_id, channel,"
                    " message_id, status, attempts, next_attempt_time, create_time, update_time)"
                    f" VALUES ($1, $2, $3, 2, 'msg_p', 3, 1, now() + interval '1 day', {OLD},"
                    f" {OLD})",
                    delivery,
                    org,
                    pending,
                )
                await conn.execute(
                    "INSERT INTO notification.delivery_attempts (id, org_id, delivery_id,"
                    " notification_id, channel, message_id, attempt_number, status,"
                    " response_code, latency_ms, error, attempt_time)"
                    f" VALUES ($1, $2, $3, $4, 2, 'msg_p', 1, 3, 451, 1, 'busy', {OLD})",
                    uuid.uuid4(),
                    org,
                    delivery,
                    pending,
                )
                # A month passes for everything "old"; two in-app notifications get read.
                olds = [
                    uuid.UUID(n) for n in (hook_old, failed_old, email_old, read_old, unread_old)
                ]
                await conn.execute(
                    f"UPDATE notification.notifications SET create_time = {OLD} WHERE id = ANY($1)",
                    olds,
                )
                await conn.execute(
                    f"UPDATE notification.deliveries SET update_time = {OLD}"
                    " WHERE notification_id = ANY($1)",
                    olds,
                )
                await conn.execute(
                    "UPDATE notification.notifications SET read_time = now() WHERE id = ANY($1)",
                    [uuid.UUID(read_old), uuid.UUID(read_new)],
                )
                before = {n: await counts(conn, n) for n in (*map(str, olds), str(pending))}
                await asyncio.sleep(1.0)  # five purge intervals: retention 0 keeps everything
                assert {n: await counts(conn, n) for n in before} == before
                assert eml.exists()

            async with service(dsn, tmp_path, retention_days=30) as stub:
                deadline = time.monotonic() + 15
                while (await counts(conn, hook_old))[0] or (await counts(conn, read_old))[0]:
                    assert time.monotonic() < deadline, "the purge did not run"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # a few more purges: they must not take more

                for nid in (hook_old, failed_old, email_old, read_old):
                    assert await counts(conn, nid) == (0, 0, 0, 0), nid
                assert not eml.exists()
                # Kept: pending work, the unread inbox entry, everything recent.
                assert await counts(conn, str(pending)) == (1, 1, 1, 0)
                assert await counts(conn, unread_old) == (1, 0, 0, 0)
                assert await counts(conn, read_new) == (1, 0, 0, 0)
                assert await counts(conn, hook_new) == (1, 1, 1, 0)

                # Sequences go on after the purge: no number is handed out twice.
                listed = await stub.ListNotifications(
                    pb.ListNotificationsRequest(), metadata=token_for(org, user="bob")
                )
                assert [n.id for n in listed.notifications] == [read_new, unread_old]
                newest = await stub.SendNotification(
                    pb.SendNotificationRequest(
                        user_id="bob",
                        type="report.completed",
                        title="t",
                        channels=[npb.CHANNEL_IN_APP],
                        idempotency_key=uuid.uuid4().hex,
                    ),
                    metadata=admin,
                    timeout=10,
                )
                assert newest.notification.sequence == 4
    finally:
        await conn.close()
