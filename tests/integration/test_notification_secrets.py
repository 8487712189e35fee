"""Webhook signing secrets encrypted at rest, against real PostgreSQL and a real receiver:
the stored columns never hold a secret, deliveries verify with the reference
``standardwebhooks`` verifier before and after rotations of the secret and of the
encryption key, legacy plaintext rows keep working (and get encrypted), and a value moved
to another endpoint's row fails that delivery cleanly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from notification_svc.webhooks import new_secret
from surveymesh.keyring import new_key_entry
from surveymesh.notification.v1 import notification_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2 as pb
from surveymesh.notification.v1 import notification_service_pb2_grpc as pb_grpc
from tests.integration.notification_stack import Meta, start
from tests.integration.test_notification_webhooks import (
    Receiver,
    create_endpoint,
    send,
    wait_for_status,
)

pytestmark = pytest.mark.integration

K1, K2 = new_key_entry("k1"), new_key_entry("k2")


@asynccontextmanager
async def service(dsn: str, data_dir: Path, keys: str) -> AsyncIterator[Any]:
    """A NotificationService with these secret keys, and a stub to it."""
    running = await start(dsn, data_dir, secret_keys=keys)
    try:
        async with grpc.aio.insecure_channel(f"localhost:{running.port}") as channel:
            yield pb_grpc.NotificationServiceStub(channel)
    finally:
        await running.stop(0.2)


async def stored(dsn: str, endpoint_id: str) -> tuple[str, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT secret, previous_secret FROM notification.webhook_endpoints WHERE id = $1",
            uuid.UUID(endpoint_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return row["secret"], row["previous_secret"]


async def execute(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def assert_hidden(value: str | None, *secrets: str, key_id: str) -> None:
    """The stored value is sealed with ``key_id`` and shows none of the secrets."""
    assert value is not None and value.startswith(f"enc:v1:{key_id}:"), value
    for s in secrets:
        assert s not in value and s.removeprefix("whsec_") not in value


async def rotate(stub: Any, meta: Any, endpoint_id: str) -> str:
    request = pb.RotateWebhookSecretRequest(endpoint_id=endpoint_id, grace_period_seconds=3600)
    return (await stub.RotateWebhookSecret(request, metadata=meta, timeout=10)).secret


async def test_stored_secret_is_encrypted_and_deliveries_verify(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_secret_enc")
    admin = token_for(org, role="admin")
    async with service(dsn, tmp_path, K1) as stub, Receiver() as rx:
        created = await create_endpoint(stub, admin, rx.url(), request_id="once")
        secret, previous = await stored(dsn, created.endpoint.id)
        assert_hidden(secret, created.secret, key_id="k1")
        assert previous is None
        # A retried create answers with the same secret, decrypted from the row.
        again = await create_endpoint(stub, admin, rx.url(), request_id="once")
        assert again.secret == created.secret

        n = await send(stub, admin)
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
        Webhook(created.secret).verify(rx.requests[0].body, rx.requests[0].headers)

        rotated = await rotate(stub, admin, created.endpoint.id)
        secret, previous = await stored(dsn, created.endpoint.id)
        assert_hidden(secret, created.secret, rotated, key_id="k1")
        assert_hidden(previous, created.secret, rotated, key_id="k1")
        await send(stub, admin)
        during = (await rx.wait_for(2))[1]
    assert len(during.headers["webhook-signature"].split()) == 2
    for s in (created.secret, rotated):
        Webhook(s).verify(during.body, during.headers)


async def test_key_rotation_and_legacy_plaintext_rows(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_secret_keys")
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        async with service(dsn, tmp_path, K1) as stub:
            sealed = await create_endpoint(stub, admin, rx.url("/sealed"))
            legacy = await create_endpoint(stub, admin, rx.url("/legacy"))
            # A row as written before encryption at rest: the secret in the clear.
            plain = new_secret()
            await execute(
                dsn,
                "UPDATE notification.webhook_endpoints SET secret = $2 WHERE id = $1",
                uuid.UUID(legacy.endpoint.id),
                plain,
            )
            n = await send(stub, admin)
            await rx.wait_for(2)
            await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
            by_path = {r.path: r for r in rx.requests}
            Webhook(sealed.secret).verify(by_path["/sealed"].body, by_path["/sealed"].headers)
            Webhook(plain).verify(by_path["/legacy"].body, by_path["/legacy"].headers)
            assert (await stored(dsn, legacy.endpoint.id))[0] == plain

        # A new key is appended: at start every row moves to it, the legacy one included.
        rx.requests.clear()
        async with service(dsn, tmp_path, f"{K1},{K2}") as stub:
            assert_hidden((await stored(dsn, sealed.endpoint.id))[0], sealed.secret, key_id="k2")
            assert_hidden((await stored(dsn, legacy.endpoint.id))[0], plain, key_id="k2")
            await send(stub, admin)
            await rx.wait_for(2)

        # The old key dropped: everything still verifies, rotation included.
        async with service(dsn, tmp_path, K2) as stub:
            rotated = await rotate(stub, admin, legacy.endpoint.id)
            secret, previous = await stored(dsn, legacy.endpoint.id)
            assert_hidden(secret, plain, rotated, key_id="k2")
            assert_hidden(previous, plain, rotated, key_id="k2")
            n = await send(stub, admin)
            await rx.wait_for(4)
            await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
    first, second = rx.requests[:2], rx.requests[2:]
    for batch in (first, second):
        by_path = {r.path: r for r in batch}
        Webhook(sealed.secret).verify(by_path["/sealed"].body, by_path["/sealed"].headers)
        Webhook(plain).verify(by_path["/legacy"].body, by_path["/legacy"].headers)
    Webhook(rotated).verify(by_path["/legacy"].body, by_path["/legacy"].headers)


async def test_value_copied_to_another_endpoint_fails_cleanly(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_secret_moved")
    admin = token_for(org, role="admin")
    async with service(dsn, tmp_path, K1) as stub, Receiver() as rx:
        victim = await create_endpoint(stub, admin, rx.url("/victim"))
        attacker = await create_endpoint(stub, admin, rx.url("/attacker"))
        orphan = await create_endpoint(stub, admin, rx.url("/orphan"))
        # Someone with write access to the table moves the victim's sealed secret into
        # their own endpoint's row, hoping deliveries there get signed with it.
        await execute(
            dsn,
            "UPDATE notification.webhook_endpoints e SET secret = v.secret"
            " FROM notification.webhook_endpoints v WHERE e.id = $1 AND v.id = $2",
            uuid.UUID(attacker.endpoint.id),
            uuid.UUID(victim.endpoint.id),
        )
        # A value under a key this process does not hold (a key dropped too early).
        await execute(
            dsn,
            "UPDATE notification.webhook_endpoints SET secret = 'enc:v1:gone:AAAA' WHERE id = $1",
            uuid.UUID(orphan.endpoint.id),
        )
        n = await send(stub, admin)
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_FAILED)
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_RETRYING)
        moved = await stub.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(endpoint_id=attacker.endpoint.id), metadata=admin
        )
        [failed] = moved.attempts
        assert failed.status == npb.DELIVERY_STATUS_FAILED
        assert "does not decrypt for this endpoint" in failed.error
        unknown = await stub.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(endpoint_id=orphan.endpoint.id), metadata=admin
        )
        # Retried (an operator may still add the key), with the key's name in the error.
        assert unknown.attempts[-1].status == npb.DELIVERY_STATUS_RETRYING
        assert "'gone'" in unknown.attempts[-1].error
        # Nothing was signed with a secret that did not verify; the victim's delivery went.
        assert [r.path for r in rx.requests] == ["/victim"]
        Webhook(victim.secret).verify(rx.requests[0].body, rx.requests[0].headers)
        # The service is unharmed, and rotating repairs the endpoint.
        repaired = await rotate(stub, admin, attacker.endpoint.id)
        assert (await stored(dsn, attacker.endpoint.id))[1] is None  # unreadable: not kept
        await send(stub, admin)
        by_path = {r.path: r for r in (await rx.wait_for(3))[1:]}
    assert set(by_path) == {"/victim", "/attacker"}
    Webhook(repaired).verify(by_path["/attacker"].body, by_path["/attacker"].headers)
