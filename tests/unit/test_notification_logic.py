"""Unit tests of NotificationService's pure logic: validation, backoff, signing, rendering."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import grpc
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notification_svc import validation
from notification_svc.dispatcher import DeliveryPolicy, Outcome, backoff_delay, next_step
from notification_svc.mailer import EmailRenderer, build_message, parse_smtp_url
from notification_svc.repository import FAILED, RETRYING, SUCCEEDED, DeliveryJob
from notification_svc.webhooks import (
    check_destination,
    classify_response,
    new_secret,
    payload,
    sign,
    signed_headers,
)
from surveymesh.config import ConfigError
from surveymesh.errors import InvalidArgument
from surveymesh.notification.v1 import notification_pb2
from surveymesh.notification.v1 import notification_service_pb2 as pb


def _job(**overrides: object) -> DeliveryJob:
    values: dict[str, object] = {
        "delivery_id": uuid.uuid4(),
        "org_id": "org-1",
        "notification_id": uuid.uuid4(),
        "channel": 3,
        "endpoint_id": uuid.uuid4(),
        "message_id": "msg_abc",
        "attempt_number": 1,
        "user_id": "bob",
        "type": "report.completed",
        "title": "Your report <b>Q3</b> is ready",
        "body": "It has 7 components & 3 charts.",
        "link": "/reports/r-1",
        "metadata": {"report_id": "r-1", "survey_id": "s-1", "state": "COMPLETED"},
        "email": "bob@example.com",
        "create_time": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "url": "http://127.0.0.1:9/hook",
        "secrets": (new_secret(),),
        "endpoint_deleted": False,
    }
    values.update(overrides)
    return DeliveryJob(**values)  # type: ignore[arg-type]


def _send(**overrides: object) -> pb.SendNotificationRequest:
    values: dict[str, object] = {
        "user_id": "bob",
        "type": "report.completed",
        "title": "Report ready",
        "channels": [notification_pb2.CHANNEL_IN_APP],
        "idempotency_key": "k1",
    }
    values.update(overrides)
    return pb.SendNotificationRequest(**values)  # type: ignore[arg-type]


# -- validation -------------------------------------------------------------------------


def test_send_request_valid_dedupes_channels() -> None:
    channels = validation.validate_send(
        _send(channels=[1, 3, 1], metadata={"report_id": "r"}, link="https://x.example/r")
    )
    assert channels == [1, 3]


def test_send_request_lists_every_violation() -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.validate_send(
            pb.SendNotificationRequest(
                channels=[notification_pb2.CHANNEL_EMAIL, notification_pb2.Channel.ValueType(9)],
                link="ftp://x",
            )
        )
    fields = {v.field: v.reason for v in info.value.violations}
    assert fields == {
        "user_id": "REQUIRED",
        "type": "REQUIRED",
        "title": "REQUIRED",
        "link": "INVALID_LINK",
        "channels[1]": "INVALID_CHANNEL",
        "email": "REQUIRED",
        "idempotency_key": "REQUIRED",
    }
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_limit_is_one_kilobyte() -> None:
    ok = {"k": "v" * 1023}
    assert validation.metadata_size(ok) == 1024
    validation.validate_send(_send(metadata=ok))
    with pytest.raises(InvalidArgument) as info:
        validation.validate_send(_send(metadata={"k": "v" * 1024}))
    assert info.value.reason == "METADATA_TOO_LARGE"


@pytest.mark.parametrize("email", ["no-at-sign", "a@b", "a b@c.d", "x@y.z\r\nBcc: e@f.g"])
def test_bad_email_is_rejected(email: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.validate_send(_send(channels=[2], email=email))
    assert info.value.violations[0].reason == "INVALID_EMAIL"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "REQUIRED"),
        ("ftp://example.com/x", "INVALID_URL_SCHEME"),
        ("javascript:alert(1)", "INVALID_URL_SCHEME"),
        ("https://user:pw@example.com/x", "URL_HAS_CREDENTIALS"),
        ("https://user@example.com/x", "URL_HAS_CREDENTIALS"),
        ("https:///nohost", "INVALID_URL"),
        ("https://example.com:99999/x", "INVALID_URL"),
        ("https://exa mple.com/", "INVALID_URL"),
    ],
)
def test_url_problems(url: str, reason: str) -> None:
    problem = validation.url_problem(url)
    assert problem is not None and problem[0] == reason


def test_good_urls_pass() -> None:
    assert validation.url_problem("https://hooks.example.com/surveymesh?x=1") is None
    assert validation.url_problem("http://127.0.0.1:8080/h") is None


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("172.16.5.4", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("100.64.0.1", True),  # carrier-grade NAT: not globally routable
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_private_address_classification(address: str, private: bool) -> None:
    assert validation.is_private_address(address) is private


async def test_destination_check_refuses_loopback_only_in_production() -> None:
    assert await check_destination("http://127.0.0.1:1/x", allow_private=True) is None
    refused = await check_destination("http://127.0.0.1:1/x", allow_private=False)
    assert refused is not None and refused[0] == "PRIVATE_ADDRESS"
    refused = await check_destination("http://localhost:1/x", allow_private=False)
    assert refused is not None and refused[0] == "PRIVATE_ADDRESS"


def test_type_filters() -> None:
    assert validation.type_matches([], "report.completed")
    assert validation.type_matches(["*"], "report.completed")
    assert validation.type_matches(["report.completed"], "report.completed")
    assert validation.type_matches(["report.*"], "report.completed")
    assert not validation.type_matches(["report.*"], "reports.completed")
    assert not validation.type_matches(["survey.closed"], "report.completed")


def test_endpoint_request_validation() -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.validate_create_endpoint(
            pb.CreateWebhookEndpointRequest(
                url="https://ok.example/", event_types=["Bad Type"], description="d" * 501
            )
        )
    assert {v.field for v in info.value.violations} == {"event_types[0]", "description"}


def test_watch_and_attempt_requests() -> None:
    with pytest.raises(InvalidArgument):
        validation.validate_watch(pb.WatchNotificationsRequest(after_sequence=-1))
    with pytest.raises(InvalidArgument) as info:
        validation.validate_list_attempts(pb.ListDeliveryAttemptsRequest())
    assert info.value.reason == "FILTER_REQUIRED"
    assert validation.validate_id("id", "not-a-uuid") is None
    with pytest.raises(InvalidArgument):
        validation.validate_id("id", "")


# -- backoff ----------------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    policy = DeliveryPolicy(base_delay=1.0, max_delay=10.0, jitter=0.0)
    assert [backoff_delay(policy, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(policy, 10_000) == 10.0


def test_backoff_jitter_stays_in_band_and_under_cap() -> None:
    policy = DeliveryPolicy(base_delay=4.0, max_delay=100.0, jitter=0.25)
    assert backoff_delay(policy, 1, rng=lambda: 0.0) == 3.0
    assert backoff_delay(policy, 1, rng=lambda: 1.0) == 5.0
    capped = DeliveryPolicy(base_delay=4.0, max_delay=4.0, jitter=0.25)
    assert backoff_delay(capped, 5, rng=lambda: 1.0) == 4.0


def test_next_step_decisions() -> None:
    policy = DeliveryPolicy(base_delay=1.0, max_delay=60.0, max_attempts=3, jitter=0.0)
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert next_step(policy, Outcome.success(200), 1, now) == (SUCCEEDED, None, "")
    status, when, _ = next_step(policy, Outcome.retry(503, "x"), 2, now)
    assert status == RETRYING and when == now + dt.timedelta(seconds=2)
    status, when, error = next_step(policy, Outcome.retry(503, "x"), 3, now)
    assert status == FAILED and when is None and "3 attempts" in error
    assert next_step(policy, Outcome.fail(410, "gone"), 1, now)[0] == FAILED
    # Retry-After wins over a shorter backoff.
    status, when, _ = next_step(policy, Outcome.retry(429, "x", retry_after=30), 1, now)
    assert when == now + dt.timedelta(seconds=30)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        DeliveryPolicy(base_delay=0)
    with pytest.raises(ConfigError):
        DeliveryPolicy(lease_seconds=5, webhook_timeout=10)
    policy = DeliveryPolicy.from_env({"SURVEYMESH_NOTIFY_RETRY_BASE_SECONDS": "0.5"})
    assert policy.base_delay == 0.5
    with pytest.raises(ConfigError):
        DeliveryPolicy.from_env({"SURVEYMESH_NOTIFY_MAX_ATTEMPTS": "many"})


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (200, "success"),
        (204, "success"),
        (410, "fail"),
        (400, "fail"),
        (404, "fail"),
        (301, "fail"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_http_status_classification(code: int, kind: str) -> None:
    assert classify_response(code).kind == kind


def test_retry_after_is_honoured() -> None:
    assert classify_response(429, "7").retry_after == 7.0
    assert classify_response(503, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after is None


# -- signing (verified by the reference implementation) ----------------------------------


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = payload(_job(secrets=(secret,)))
    headers = signed_headers([secret], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["data"]["metadata"]["report_id"] == "r-1"


def test_our_signature_equals_the_reference_signature() -> None:
    secret = new_secret()
    ts = int(time.time())
    reference = Webhook(secret).sign("msg_2", dt.datetime.fromtimestamp(ts, dt.UTC), "{}")
    assert sign(secret, "msg_2", ts, b"{}") == reference


def test_verifier_rejects_tampering_staleness_and_wrong_secret() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = signed_headers([secret], "msg_3", int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    stale = int(time.time()) - 600
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, signed_headers([secret], "msg_3", stale, body))


def test_rotation_signs_with_both_secrets() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = signed_headers([new, old], "msg_4", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_payload_is_small_and_stable() -> None:
    job = _job()
    body = payload(job)
    assert len(body) < 1024
    assert body == payload(job)  # identical on every retry
    assert b"components" not in body  # the body text never travels in a webhook


# -- email ------------------------------------------------------------------------------


def test_email_rendering_escapes_html_and_resolves_links() -> None:
    rendered = EmailRenderer("http://viewer.example:8080").render(_job())
    assert rendered.link == "http://viewer.example:8080/reports/r-1"
    assert rendered.subject == "Your report <b>Q3</b> is ready"
    assert "http://viewer.example:8080/reports/r-1" in rendered.text
    assert "<b>Q3</b>" in rendered.text  # plain text is not escaped
    assert "&lt;b&gt;Q3&lt;/b&gt;" in rendered.html and "<b>Q3" not in rendered.html
    assert "7 components &amp; 3 charts" in rendered.html
    msg = build_message(rendered, sender="a@b.c", to="bob@example.com", message_id="msg_x")
    assert msg["Message-ID"] == "<msg_x@surveymesh>"
    assert msg.get_content_type() == "multipart/alternative"


def test_smtp_url_parsing() -> None:
    t = parse_smtp_url("smtp://user%40x:p%3Aw@mail.example:2525")
    assert (t.hostname, t.port, t.username, t.password, t.use_tls) == (
        "mail.example",
        2525,
        "user@x",
        "p:w",
        False,
    )
    assert parse_smtp_url("smtps://mail.example").port == 465
    assert parse_smtp_url("smtp://mail.example").port == 25
    with pytest.raises(ConfigError):
        parse_smtp_url("http://mail.example")
