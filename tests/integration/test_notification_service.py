"""NotificationService against real parts: embedded PostgreSQL, a gRPC server on port 0,
an aiosmtpd SMTP server; in-app notifications, the live stream, email, roles and tenancy."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiosmtpd.controller import Controller

from surveymesh.embedded import free_port
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
from tests.integration.notification_stack import Meta, start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def dsn(new_database: Callable[[str], Any]) -> str:
    return await new_database("notification")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notification-data")


@pytest.fixture(scope="module")
async def stub(dsn: str, data_dir: Path) -> AsyncIterator[pb_grpc.NotificationServiceStub]:
    service = await start(dsn, data_dir)
    async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
        yield pb_grpc.NotificationServiceStub(channel)
    await service.stop(0.5)


async def send(
    stub: pb_grpc.NotificationServiceStub, meta: Any, user: str = "bob", **kw: Any
) -> pb.SendNotificationResponse:
    req = pb.SendNotificationRequest(
        user_id=user,
        type=kw.pop("type", "report.completed"),
        title=kw.pop("title", "Your report is ready"),
        body=kw.pop("body", "Q3 customer survey"),
        link=kw.pop("link", "/reports/r-1"),
        metadata=kw.pop("metadata", {"report_id": "r-1", "state": "COMPLETED"}),
        channels=kw.pop("channels", [npb.CHANNEL_IN_APP]),
        idempotency_key=kw.pop("idempotency_key", uuid.uuid4().hex),
        **kw,
    )
    return await stub.SendNotification(req, metadata=meta, timeout=10)


async def wait_for_attempts(
    stub: pb_grpc.NotificationServiceStub,
    meta: Any,
    notification_id: str,
    status: int,
    count: int = 1,
) -> list[npb.DeliveryAttempt]:
    for _ in range(200):
        resp = await stub.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(notification_id=notification_id),
            metadata=meta,
            timeout=5,
        )
        if sum(a.status == status for a in resp.attempts) >= count:
            return list(resp.attempts)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no attempt with status {status} for {notification_id}")


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code
    assert error_details(info.value).reason == reason


# -- roles, validation, idempotency -----------------------------------------------------


async def test_only_service_or_admin_may_send(stub: Any, org: str, token_for: Meta) -> None:
    for role in ("viewer", "analyst"):
        await expect_error(
            send(stub, token_for(org, role=role)),
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_PERMITTED",
        )
    for role in ("service", "admin"):
        assert (await send(stub, token_for(org, role=role))).notification.id


async def test_missing_token_is_unauthenticated(stub: Any) -> None:
    await expect_error(
        stub.ListNotifications(pb.ListNotificationsRequest(), timeout=5),
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )


async def test_bad_requests_are_invalid_argument(stub: Any, org: str, token_for: Meta) -> None:
    meta = token_for(org, role="service")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendNotification(pb.SendNotificationRequest(), metadata=meta, timeout=5)
    details = error_details(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details.violations} >= {"user_id", "channels", "idempotency_key"}
    await expect_error(
        send(stub, meta, metadata={"big": "x" * 1100}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "METADATA_TOO_LARGE",
    )
    await expect_error(
        send(stub, meta, channels=[npb.CHANNEL_EMAIL]), grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED"
    )
    await expect_error(
        stub.ListNotifications(pb.ListNotificationsRequest(page_token="junk"), metadata=meta),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        stub.ListDeliveryAttempts(pb.ListDeliveryAttemptsRequest(), metadata=meta),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FILTER_REQUIRED",
    )


async def test_send_is_idempotent(stub: Any, org: str, token_for: Meta) -> None:
    meta = token_for(org, role="service")
    first = await send(stub, meta, idempotency_key="report-42-done")
    again = await send(stub, meta, idempotency_key="report-42-done", title="changed")
    assert not first.duplicate and again.duplicate
    assert again.notification == first.notification
    listed = await stub.ListNotifications(
        pb.ListNotificationsRequest(), metadata=token_for(org, user="bob", role="viewer")
    )
    assert [n.id for n in listed.notifications] == [first.notification.id]
    # The same key in another organization is another notification.
    other = await send(
        stub, token_for(f"{org}-b", role="service"), idempotency_key="report-42-done"
    )
    assert not other.duplicate and other.notification.id != first.notification.id


async def test_concurrent_duplicates_store_one(stub: Any, org: str, token_for: Meta) -> None:
    meta = token_for(org, role="service")
    results = await asyncio.gather(*(send(stub, meta, idempotency_key="same") for _ in range(8)))
    assert len({r.notification.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert {r.notification.sequence for r in results} == {1}


# -- in-app: list, read, watch -----------------------------------------------------------


async def test_list_pages_unread_and_mark_read(stub: Any, org: str, token_for: Meta) -> None:
    svc, bob = token_for(org, role="service"), token_for(org, user="bob", role="viewer")
    sent = [await send(stub, svc, title=f"n{i}") for i in range(5)]
    assert [s.notification.sequence for s in sent] == [1, 2, 3, 4, 5]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListNotifications(
            pb.ListNotificationsRequest(page_size=2, page_token=token), metadata=bob
        )
        assert page.unread_count == 5
        seen += [n.title for n in page.notifications]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["n4", "n3", "n2", "n1", "n0"]

    target = sent[1].notification.id
    first = await stub.MarkNotificationRead(
        pb.MarkNotificationReadRequest(notification_id=target), metadata=bob
    )
    again = await stub.MarkNotificationRead(
        pb.MarkNotificationReadRequest(notification_id=target), metadata=bob
    )
    assert first.notification.read and first.notification.read_time == again.notification.read_time
    unread = await stub.ListNotifications(
        pb.ListNotificationsRequest(unread_only=True), metadata=bob
    )
    assert unread.unread_count == 4
    assert target not in {n.id for n in unread.notifications} and len(unread.notifications) == 4


async def test_foreign_ids_are_not_found(stub: Any, org: str, token_for: Meta) -> None:
    sent = await send(stub, token_for(org, role="service"))
    nid = sent.notification.id
    for meta in (
        token_for(org, user="mallory", role="admin"),  # same org, not the recipient
        token_for(f"{org}-other", user="bob", role="admin"),  # same user name, other org
    ):
        await expect_error(
            stub.MarkNotificationRead(
                pb.MarkNotificationReadRequest(notification_id=nid), metadata=meta
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOTIFICATION_NOT_FOUND",
        )
    bob = token_for(org, user="bob", role="viewer")
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        await expect_error(
            stub.MarkNotificationRead(
                pb.MarkNotificationReadRequest(notification_id=missing), metadata=bob
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOTIFICATION_NOT_FOUND",
        )
    await expect_error(
        stub.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(notification_id=nid),
            metadata=token_for(f"{org}-other", role="admin"),
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOTIFICATION_NOT_FOUND",
    )


async def _take(call: Any, n: int) -> list[npb.Notification]:
    out: list[npb.Notification] = []
    while len(out) < n:
        msg = await asyncio.wait_for(call.read(), 10)
        assert msg is not grpc.aio.EOF
        out.append(msg.notification)
    return out


async def test_watch_replays_follows_and_resumes_without_gaps(
    stub: Any, org: str, token_for: Meta
) -> None:
    svc, bob = token_for(org, role="service"), token_for(org, user="bob", role="viewer")
    for i in range(3):
        await send(stub, svc, title=f"old{i}")
    await send(stub, svc, user="carol", title="not bob's")

    call = stub.WatchNotifications(pb.WatchNotificationsRequest(after_sequence=0), metadata=bob)
    got = await _take(call, 3)
    assert [n.title for n in got] == ["old0", "old1", "old2"]
    # Live: sent while the stream waits, several at once.
    await asyncio.gather(*(send(stub, svc, title=f"live{i}") for i in range(4)))
    got += await _take(call, 4)
    call.cancel()

    # Disconnected: these must arrive after the reconnect, exactly once.
    for i in range(3):
        await send(stub, svc, title=f"missed{i}")
    call = stub.WatchNotifications(
        pb.WatchNotificationsRequest(after_sequence=got[-1].sequence), metadata=bob
    )
    got += await _take(call, 3)
    await send(stub, svc, title="after-reconnect")
    got += await _take(call, 1)
    call.cancel()
    assert [n.sequence for n in got] == list(range(1, 12))
    assert all(n.user_id == "bob" for n in got)
    assert got[-1].title == "after-reconnect"


async def test_watch_rejects_negative_sequence(stub: Any, org: str, token_for: Meta) -> None:
    call = stub.WatchNotifications(
        pb.WatchNotificationsRequest(after_sequence=-1), metadata=token_for(org, role="viewer")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value).reason == "INVALID_SEQUENCE"


# -- email -------------------------------------------------------------------------------


async def test_email_without_smtp_goes_to_outbox_and_eml(
    stub: Any, dsn: str, data_dir: Path, org: str, token_for: Meta
) -> None:
    svc = token_for(org, role="service")
    sent = await send(
        stub, svc, channels=[npb.CHANNEL_EMAIL], email="bob@example.com", title="Q3 <ready>"
    )
    nid = sent.notification.id
    attempts = await wait_for_attempts(stub, svc, nid, npb.DELIVERY_STATUS_SUCCEEDED)
    assert [(a.channel, a.attempt_number) for a in attempts] == [(npb.CHANNEL_EMAIL, 1)]
    # Email only: not part of the user's in-app stream.
    assert sent.notification.sequence == 0

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT * FROM notification.email_outbox WHERE notification_id = $1", uuid.UUID(nid)
        )
    finally:
        await conn.close()
    assert row is not None and row["to_address"] == "bob@example.com"
    path = Path(row["eml_path"])
    assert path.parent == data_dir / "outbox" and path.suffix == ".eml"
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Q3 <ready>" and msg["To"] == "bob@example.com"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert (
        "http://localhost:8080/reports/r-1" in text and "http://localhost:8080/reports/r-1" in html
    )
    assert "Q3 &lt;ready&gt;" in html


class _Inbox:
    """aiosmtpd handler that refuses the first ``refuse`` messages with 451, then keeps them."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            return "451 4.3.0 try again later"
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 OK"


async def test_email_via_smtp_with_retry(
    new_database: Any, tmp_path: Path, org: str, token_for: Meta
) -> None:
    inbox = _Inbox(refuse=1)
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    service = await start(
        await new_database("notification_smtp"),
        tmp_path,
        smtp_url=f"smtp://127.0.0.1:{port}",
        public_url="https://surveys.example",
    )
    try:
        async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
            stub = pb_grpc.NotificationServiceStub(channel)
            svc = token_for(org, role="service")
            sent = await send(
                stub, svc, channels=[npb.CHANNEL_EMAIL, npb.CHANNEL_IN_APP], email="bob@example.com"
            )
            attempts = await wait_for_attempts(
                stub, svc, sent.notification.id, npb.DELIVERY_STATUS_SUCCEEDED
            )
    finally:
        await service.stop(0.5)
        controller.stop()
    assert [(a.attempt_number, a.status, a.response_code) for a in attempts] == [
        (2, npb.DELIVERY_STATUS_SUCCEEDED, 250),
        (1, npb.DELIVERY_STATUS_RETRYING, 451),
    ]
    assert attempts[1].next_attempt_time.ToDatetime() > attempts[1].attempt_time.ToDatetime()
    assert len(inbox.messages) == 1
    msg = inbox.messages[0]
    assert inbox.envelopes[0].rcpt_tos == ["bob@example.com"]
    assert msg["Subject"] == "Your report is ready"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "https://surveys.example/reports/r-1" in text
    assert 'href="https://surveys.example/reports/r-1"' in html
    assert "Q3 customer survey" in text and "Q3 customer survey" in html
    # No SMTP server was missing, so nothing went to the outbox directory.
    assert not (tmp_path / "outbox").exists()
