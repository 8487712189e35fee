"""Webhook delivery against a real HTTP receiver, verified with the reference
``standardwebhooks`` verifier: signing, retries, giving up, filters, endpoint management,
address policy, restarts and replicas sharing the outbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notification_svc.webhooks import new_secret, sign
from surveymesh.errors import error_details
from surveymesh.notification.v1 import (
    notification_pb2 as npb,
)
from surveymesh.notification.v1 import (
    notification_service_pb2 as pb,
)
from surveymesh.notification.v1 import (
    notification_service_pb2_grpc as pb_grpc,
)
from tests.integration.notification_stack import FAST, Meta, start

pytestmark = pytest.mark.integration


@dataclass
class Received:
    """One request the receiver got."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


class Receiver:
    """A tiny real HTTP/1.1 server (asyncio streams, keep-alive) that records POSTs and
    answers with scripted status codes, then ``default``."""

    def __init__(self, script: list[int] | None = None, default: int = 200) -> None:
        self.script = list(script or [])
        self.default = default
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                _method, path, _version = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.script.pop(0) if self.script else self.default
                self.requests.append(Received(time.perf_counter(), path, headers, body, status))
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"got {len(self.requests)} of {count} requests"
            await asyncio.sleep(0.02)
        return self.requests


@pytest.fixture(scope="module")
async def dsn(new_database: Callable[[str], Any]) -> str:
    return await new_database("notification_hooks")


@pytest.fixture(scope="module")
async def stub(
    dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[pb_grpc.NotificationServiceStub]:
    service = await start(dsn, tmp_path_factory.mktemp("hooks"))
    async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
        yield pb_grpc.NotificationServiceStub(channel)
    await service.stop(0.5)


async def create_endpoint(
    stub: Any, meta: Any, url: str, **kw: Any
) -> pb.CreateWebhookEndpointResponse:
    return await stub.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(url=url, **kw), metadata=meta, timeout=10
    )


async def send(stub: Any, meta: Any, **kw: Any) -> npb.Notification:
    req = pb.SendNotificationRequest(
        user_id="bob",
        type=kw.pop("type", "report.completed"),
        title="Your report is ready",
        body="Free-text body that must not travel in webhooks",
        link="/reports/r-9",
        metadata={"report_id": "r-9", "survey_id": "s-1", "state": "COMPLETED", "components": "7"},
        channels=[npb.CHANNEL_WEBHOOK],
        idempotency_key=kw.pop("idempotency_key", uuid.uuid4().hex),
    )
    return (await stub.SendNotification(req, metadata=meta, timeout=10)).notification


async def attempts_of(
    stub: Any, meta: Any, *, notification_id: str = "", endpoint_id: str = ""
) -> list[npb.DeliveryAttempt]:
    request = pb.ListDeliveryAttemptsRequest(
        notification_id=notification_id, endpoint_id=endpoint_id
    )
    resp = await stub.ListDeliveryAttempts(request, metadata=meta, timeout=5)
    return list(resp.attempts)


async def wait_for_status(stub: Any, meta: Any, nid: str, status: int) -> list[npb.DeliveryAttempt]:
    for _ in range(300):
        attempts = await attempts_of(stub, meta, notification_id=nid)
        if any(a.status == status for a in attempts):
            return attempts
        await asyncio.sleep(0.03)
    raise AssertionError(f"no attempt with status {status}")


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code
    assert error_details(info.value).reason == reason


async def test_signed_webhook_verifies_with_reference(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        created = await create_endpoint(stub, admin, rx.url(), description="ops")
        assert created.secret.startswith("whsec_")
        n = await send(stub, admin)
        [req] = await rx.wait_for(1)
        attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
    data = Webhook(created.secret).verify(req.body, req.headers)
    assert data["type"] == "report.completed"
    assert data["data"]["notification_id"] == n.id
    assert data["data"]["metadata"]["report_id"] == "r-9"
    assert len(req.body) < 1024 and b"Free-text body" not in req.body
    assert req.headers["webhook-id"].startswith("msg_")
    assert req.headers["content-type"] == "application/json"
    [a] = attempts
    assert (a.attempt_number, a.response_code, a.endpoint_id) == (1, 200, created.endpoint.id)
    assert a.message_id == req.headers["webhook-id"]
    assert a.latency.ToTimedelta().total_seconds() > 0

    # The reference verifier rejects a tampered body, a stale timestamp, a wrong secret.
    with pytest.raises(WebhookVerificationError):
        Webhook(created.secret).verify(req.body.replace(b"r-9", b"r-8"), req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(req.body, req.headers)
    stale = int(time.time()) - 3600
    replayed = dict(req.headers)
    replayed["webhook-timestamp"] = str(stale)
    replayed["webhook-signature"] = sign(created.secret, req.headers["webhook-id"], stale, req.body)
    with pytest.raises(WebhookVerificationError):
        Webhook(created.secret).verify(req.body, replayed)


async def test_secret_rotation_signs_with_both_secrets_during_the_grace_period(
    stub: Any, org: str, token_for: Meta
) -> None:
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        created = await create_endpoint(stub, admin, rx.url())
        rotated = await stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(
                endpoint_id=created.endpoint.id, grace_period_seconds=3600
            ),
            metadata=admin,
            timeout=10,
        )
        assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
        assert rotated.endpoint.id == created.endpoint.id
        await send(stub, admin)
        [during] = await rx.wait_for(1)

        # Revoking the previous secret ends the grace period at once.
        revoked = await stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id, revoke_previous=True),
            metadata=admin,
            timeout=10,
        )
        await send(stub, admin)
        after = (await rx.wait_for(2))[1]

    # During the grace period a receiver holding either secret accepts the delivery.
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (created.secret, rotated.secret):
        Webhook(secret).verify(during.body, during.headers)
    # After revocation only the newest secret verifies.
    Webhook(revoked.secret).verify(after.body, after.headers)
    for old in (created.secret, rotated.secret):
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(after.body, after.headers)


async def test_rotation_is_for_admins_and_own_endpoints(
    stub: Any, org: str, token_for: Meta
) -> None:
    admin = token_for(org, role="admin")
    created = await create_endpoint(stub, admin, "http://127.0.0.1:9/hook")
    rotate = pb.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id)
    await expect_error(
        stub.RotateWebhookSecret(rotate, metadata=token_for(org, role="analyst"), timeout=5),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_PERMITTED",
    )
    await expect_error(
        stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id, grace_period_seconds=-1),
            metadata=admin,
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_GRACE_PERIOD",
    )
    for endpoint_id in (str(uuid.uuid4()), "not-a-uuid"):
        await expect_error(
            stub.RotateWebhookSecret(
                pb.RotateWebhookSecretRequest(endpoint_id=endpoint_id), metadata=admin, timeout=5
            ),
            grpc.StatusCode.NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
        )


async def test_two_failures_then_success_same_webhook_id(
    stub: Any, org: str, token_for: Meta
) -> None:
    admin = token_for(org, role="admin")
    async with Receiver(script=[500, 503]) as rx:
        created = await create_endpoint(stub, admin, rx.url())
        n = await send(stub, admin)
        attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
        await asyncio.sleep(FAST.base_delay * 3)  # nothing more may arrive after success
        requests = list(rx.requests)
    assert [r.answered for r in requests] == [500, 503, 200]
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for r in requests:
        Webhook(created.secret).verify(r.body, r.headers)
    assert [(a.attempt_number, a.status, a.response_code) for a in attempts] == [
        (3, npb.DELIVERY_STATUS_SUCCEEDED, 200),
        (2, npb.DELIVERY_STATUS_RETRYING, 503),
        (1, npb.DELIVERY_STATUS_RETRYING, 500),
    ]
    assert all(a.HasField("next_attempt_time") for a in attempts[1:])
    assert sum(a.status == npb.DELIVERY_STATUS_SUCCEEDED for a in attempts) == 1
    by_endpoint = await attempts_of(stub, admin, endpoint_id=created.endpoint.id)
    assert [a.id for a in by_endpoint] == [a.id for a in attempts]
    # Paging through attempts, newest first.
    page = await stub.ListDeliveryAttempts(
        pb.ListDeliveryAttemptsRequest(notification_id=n.id, page_size=2), metadata=admin
    )
    rest = await stub.ListDeliveryAttempts(
        pb.ListDeliveryAttemptsRequest(
            notification_id=n.id, page_size=2, page_token=page.next_page_token
        ),
        metadata=admin,
    )
    assert [a.attempt_number for a in [*page.attempts, *rest.attempts]] == [3, 2, 1]
    assert not rest.next_page_token


async def test_gone_gives_up_after_one_attempt(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver(default=410) as rx:
        await create_endpoint(stub, admin, rx.url())
        n = await send(stub, admin)
        attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_FAILED)
        await asyncio.sleep(FAST.base_delay * 4)
        assert len(rx.requests) == 1
    assert [(a.attempt_number, a.response_code) for a in attempts] == [(1, 410)]


async def test_retries_stop_at_max_attempts(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver(default=500) as rx:
        await create_endpoint(stub, admin, rx.url())
        n = await send(stub, admin)
        attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_FAILED)
        await asyncio.sleep(FAST.max_delay * 1.5)
        assert len(rx.requests) == FAST.max_attempts
    assert [a.attempt_number for a in attempts] == [4, 3, 2, 1]


async def test_unreachable_receiver_is_retried(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        closed_url = rx.url()
    await create_endpoint(stub, admin, closed_url)  # nothing listens there any more
    n = await send(stub, admin)
    attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_RETRYING)
    assert attempts[-1].response_code == 0 and "connection failed" in attempts[-1].error


async def test_idempotent_send_delivers_once(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        await create_endpoint(stub, admin, rx.url())
        first = await send(stub, admin, idempotency_key="once")
        again = await send(stub, admin, idempotency_key="once")
        assert first.id == again.id
        await wait_for_status(stub, admin, first.id, npb.DELIVERY_STATUS_SUCCEEDED)
        await asyncio.sleep(FAST.poll_interval * 3)
        assert len(rx.requests) == 1


async def test_event_type_filters(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    async with Receiver() as reports, Receiver() as surveys, Receiver() as everything:
        await create_endpoint(stub, admin, reports.url(), event_types=["report.*"])
        await create_endpoint(stub, admin, surveys.url(), event_types=["survey.closed"])
        await create_endpoint(stub, admin, everything.url())
        n = await send(stub, admin, type="report.completed")
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
        await reports.wait_for(1)
        await everything.wait_for(1)
        await asyncio.sleep(FAST.poll_interval * 2)
        assert surveys.requests == []
        assert len(reports.requests) == 1 and len(everything.requests) == 1


async def test_endpoint_management(stub: Any, org: str, token_for: Meta) -> None:
    admin = token_for(org, role="admin")
    await expect_error(
        create_endpoint(stub, token_for(org, role="analyst"), "https://h.example/x"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_PERMITTED",
    )
    await expect_error(
        create_endpoint(stub, admin, "https://u:p@h.example/x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "URL_HAS_CREDENTIALS",
    )
    await expect_error(
        create_endpoint(stub, admin, "ftp://h.example/x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_URL_SCHEME",
    )
    one = await create_endpoint(stub, admin, "http://127.0.0.1:9/a", request_id="r1")
    same = await create_endpoint(stub, admin, "http://127.0.0.1:9/a", request_id="r1")
    assert same.endpoint.id == one.endpoint.id and same.secret == one.secret
    two = await create_endpoint(stub, admin, "http://127.0.0.1:9/b", event_types=["report.*"])
    listed = await stub.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=1), metadata=admin
    )
    more = await stub.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=1, page_token=listed.next_page_token),
        metadata=admin,
    )
    assert [e.id for e in [*listed.endpoints, *more.endpoints]] == [
        one.endpoint.id,
        two.endpoint.id,
    ]
    assert list(more.endpoints[0].event_types) == ["report.*"]

    foreign = token_for(f"{org}-x", role="admin")
    for meta, eid in ((foreign, one.endpoint.id), (admin, str(uuid.uuid4()))):
        await expect_error(
            stub.DeleteWebhookEndpoint(
                pb.DeleteWebhookEndpointRequest(endpoint_id=eid), metadata=meta
            ),
            grpc.StatusCode.NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
        )
        await expect_error(
            stub.ListDeliveryAttempts(
                pb.ListDeliveryAttemptsRequest(endpoint_id=eid), metadata=meta
            ),
            grpc.StatusCode.NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
        )
    await stub.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(endpoint_id=one.endpoint.id), metadata=admin
    )
    await expect_error(
        stub.DeleteWebhookEndpoint(
            pb.DeleteWebhookEndpointRequest(endpoint_id=one.endpoint.id), metadata=admin
        ),
        grpc.StatusCode.NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
    )
    left = await stub.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=admin)
    assert [e.id for e in left.endpoints] == [two.endpoint.id]


async def test_deleting_endpoint_abandons_pending_retries(
    stub: Any, org: str, token_for: Meta
) -> None:
    admin = token_for(org, role="admin")
    async with Receiver(default=500) as rx:
        created = await create_endpoint(stub, admin, rx.url())
        n = await send(stub, admin)
        await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_RETRYING)
        await stub.DeleteWebhookEndpoint(
            pb.DeleteWebhookEndpointRequest(endpoint_id=created.endpoint.id), metadata=admin
        )
        count = len(rx.requests)
        await asyncio.sleep(FAST.max_delay * 1.5)
        # At most an attempt already in flight at deletion time may still land.
        assert len(rx.requests) <= count + 1


async def test_private_addresses_refused_in_production(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_prod")
    service = await start(dsn, tmp_path, allow_private_webhooks=False)
    try:
        async with (
            grpc.aio.insecure_channel(f"localhost:{service.port}") as channel,
            Receiver() as rx,
        ):
            stub = pb_grpc.NotificationServiceStub(channel)
            admin = token_for(org, role="admin")
            for url in (rx.url(), f"http://localhost:{rx.port}/x", "http://169.254.169.254/latest"):
                await expect_error(
                    create_endpoint(stub, admin, url),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "PRIVATE_ADDRESS",
                )
            # An endpoint that resolved publicly once but is private at send time (DNS
            # rebinding): planted directly, it is refused when the attempt is made.
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "INSERT INTO notification.webhook_endpoints"
                    " (id, org_id, url, event_types, description, secret)"
                    " VALUES ($1, $2, $3, '{}', '', $4)",
                    uuid.uuid4(),
                    org,
                    rx.url(),
                    new_secret(),
                )
            finally:
                await conn.close()
            n = await send(stub, admin)
            attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_FAILED)
            assert "destination refused" in attempts[0].error
            assert rx.requests == []
    finally:
        await service.stop(0.5)


async def test_delivery_survives_restart(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_restart")
    admin = token_for(org, role="admin")
    async with Receiver(script=[500]) as rx:
        first = await start(dsn, tmp_path)
        async with grpc.aio.insecure_channel(f"localhost:{first.port}") as channel:
            stub = pb_grpc.NotificationServiceStub(channel)
            created = await create_endpoint(stub, admin, rx.url())
            n = await send(stub, admin)
            await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_RETRYING)
        await first.stop(0.2)  # the retry is now due, or soon, with no process to make it
        assert len(rx.requests) == 1
        await asyncio.sleep(FAST.base_delay)

        second = await start(dsn, tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"localhost:{second.port}") as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                attempts = await wait_for_status(stub, admin, n.id, npb.DELIVERY_STATUS_SUCCEEDED)
        finally:
            await second.stop(0.2)
        requests = rx.requests
    assert [r.answered for r in requests] == [500, 200]
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    Webhook(created.secret).verify(requests[1].body, requests[1].headers)
    assert [(a.attempt_number, a.status) for a in attempts] == [
        (2, npb.DELIVERY_STATUS_SUCCEEDED),
        (1, npb.DELIVERY_STATUS_RETRYING),
    ]


async def test_claim_of_a_crashed_process_expires(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_crash")
    admin = token_for(org, role="admin")
    async with Receiver() as rx:
        first = await start(dsn, tmp_path)
        async with grpc.aio.insecure_channel(f"localhost:{first.port}") as channel:
            created = await create_endpoint(
                pb_grpc.NotificationServiceStub(channel), admin, rx.url()
            )
        await first.stop(0.2)
        # What a process that claimed a delivery and died mid-attempt leaves behind: the
        # attempt counted, a claim token, and a due time one lease ahead (a short one here).
        nid, did = uuid.uuid4(), uuid.uuid4()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO notification.notifications (id, org_id, user_id, type, title, body,"
                " link, metadata, channels, idempotency_key)"
                " VALUES ($1, $2, 'bob', 'report.completed', 't', '', '', '{}', '{3}', 'k')",
                nid,
                org,
            )
            await conn.execute(
                "INSERT INTO notification.deliveries (id, org_id, notification_id, channel,"
                " endpoint_id, message_id, attempts, claim_token, next_attempt_time)"
                " VALUES ($1, $2, $3, 3, $4, $5, 1, $6, now() + interval '1 second')",
                did,
                org,
                nid,
                uuid.UUID(created.endpoint.id),
                f"msg_{did.hex}",
                uuid.uuid4(),
            )
        finally:
            await conn.close()
        planted = time.perf_counter()
        second = await start(dsn, tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"localhost:{second.port}") as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                attempts = await wait_for_status(
                    stub, admin, str(nid), npb.DELIVERY_STATUS_SUCCEEDED
                )
        finally:
            await second.stop(0.2)
        [req] = rx.requests
    assert req.at - planted >= 0.9  # not before the dead claim expired
    assert req.headers["webhook-id"] == f"msg_{did.hex}"
    assert [(a.attempt_number, a.status) for a in attempts] == [(2, npb.DELIVERY_STATUS_SUCCEEDED)]


async def test_replicas_share_the_outbox_without_duplicates(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    dsn = await new_database("notification_replicas")
    admin = token_for(org, role="admin")
    replicas = [await start(dsn, tmp_path), await start(dsn, tmp_path)]
    try:
        async with Receiver() as rx:
            channels = [grpc.aio.insecure_channel(f"localhost:{r.port}") for r in replicas]
            stubs = [pb_grpc.NotificationServiceStub(c) for c in channels]
            await create_endpoint(stubs[0], admin, rx.url())
            await asyncio.gather(*(send(stubs[i % 2], admin) for i in range(60)))
            received = await rx.wait_for(60)
            await asyncio.sleep(FAST.poll_interval * 3)
            ids = [r.headers["webhook-id"] for r in received]
            assert len(ids) == 60 and len(set(ids)) == 60
            for c in channels:
                await c.close()
    finally:
        for r in replicas:
            await r.stop(0.2)
