"""Request validation for NotificationService: every rule, every field, one place.

Each ``validate_*`` function raises :class:`~surveymesh.errors.InvalidArgument` listing all
violations of a request, so a client fixes its request in one round trip.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from surveymesh.errors import Violations
from surveymesh.notification.v1 import notification_pb2
from surveymesh.notification.v1 import notification_service_pb2 as pb

MAX_METADATA_BYTES = 1024
MAX_TITLE = 200
MAX_BODY = 2000
MAX_LINK = 2048
MAX_USER_ID = 200
MAX_TYPE = 100
MAX_KEY = 200
MAX_EMAIL = 254
MAX_URL = 2048
MAX_DESCRIPTION = 500
MAX_EVENT_TYPES = 50
MAX_REQUEST_ID = 200

KNOWN_CHANNELS = frozenset(
    {
        notification_pb2.CHANNEL_IN_APP,
        notification_pb2.CHANNEL_EMAIL,
        notification_pb2.CHANNEL_WEBHOOK,
    }
)
# `report.completed`; an endpoint filter may also end in `.*` (`report.*`) or be `*`.
_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
_TYPE_FILTER = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*(\.\*)?)$")
# Deliberately loose: the SMTP server is the judge of deliverability; this catches typos
# such as a missing @ or whitespace, and header injection (no CR/LF can pass).
_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of ``metadata`` as counted against the 1 KB limit (UTF-8 keys plus values)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def validate_send(req: pb.SendNotificationRequest) -> list[int]:
    """Validates a SendNotification request.

    Returns:
        The requested channels, de-duplicated, in request order.
    """
    v = Violations()
    _required(v, "user_id", req.user_id, MAX_USER_ID)
    if not req.type:
        v.add("type", "must not be empty", "REQUIRED")
    elif len(req.type) > MAX_TYPE or not _TYPE.match(req.type):
        v.add("type", "must be dotted lower-case words such as report.completed", "INVALID_TYPE")
    _required(v, "title", req.title, MAX_TITLE)
    if len(req.body) > MAX_BODY:
        v.add("body", f"must be at most {MAX_BODY} characters", "TOO_LONG")
    if req.link:
        if len(req.link) > MAX_LINK:
            v.add("link", f"must be at most {MAX_LINK} characters", "TOO_LONG")
        elif not _is_link(req.link):
            v.add("link", "must be an http(s) URL or an absolute path", "INVALID_LINK")
    if any(not k for k in req.metadata):
        v.add("metadata", "keys must not be empty", "INVALID_METADATA")
    if metadata_size(req.metadata) > MAX_METADATA_BYTES:
        v.add(
            "metadata", f"must be at most {MAX_METADATA_BYTES} bytes in all", "METADATA_TOO_LARGE"
        )
    channels: list[int] = []
    if not req.channels:
        v.add("channels", "must name at least one channel", "REQUIRED")
    for i, ch in enumerate(req.channels):
        if ch not in KNOWN_CHANNELS:
            v.add(f"channels[{i}]", "must be IN_APP, EMAIL or WEBHOOK", "INVALID_CHANNEL")
        elif ch not in channels:
            channels.append(ch)
    if notification_pb2.CHANNEL_EMAIL in channels and not req.email:
        v.add("email", "is required for the email channel", "REQUIRED")
    elif req.email and (len(req.email) > MAX_EMAIL or not _EMAIL.match(req.email)):
        v.add("email", "must be an email address", "INVALID_EMAIL")
    _required(v, "idempotency_key", req.idempotency_key, MAX_KEY)
    v.raise_if_any()
    return channels


def validate_watch(req: pb.WatchNotificationsRequest) -> None:
    """Validates a WatchNotifications request."""
    v = Violations()
    if req.after_sequence < 0:
        v.add("after_sequence", "must not be negative", "INVALID_SEQUENCE")
    v.raise_if_any()


def validate_id(field: str, value: str) -> uuid.UUID | None:
    """Checks a required resource id.

    Returns:
        The id, or None when it is not a UUID: such an id names nothing, so callers answer
        NOT_FOUND exactly as for an unknown one.
    """
    v = Violations()
    if not value:
        v.add(field, "must not be empty", "REQUIRED")
    v.raise_if_any()
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def validate_create_endpoint(req: pb.CreateWebhookEndpointRequest) -> None:
    """Validates a CreateWebhookEndpoint request (URL syntax only; addresses are checked
    by the caller, which knows whether private ones are allowed)."""
    v = Violations()
    problem = url_problem(req.url)
    if problem:
        v.add("url", problem[1], problem[0])
    if len(req.event_types) > MAX_EVENT_TYPES:
        v.add("event_types", f"must list at most {MAX_EVENT_TYPES} types", "TOO_MANY")
    for i, t in enumerate(req.event_types):
        if len(t) > MAX_TYPE or not _TYPE_FILTER.match(t):
            v.add(
                f"event_types[{i}]",
                "must be a type such as report.completed or report.*",
                "INVALID_TYPE",
            )
    if len(req.description) > MAX_DESCRIPTION:
        v.add("description", f"must be at most {MAX_DESCRIPTION} characters", "TOO_LONG")
    if len(req.request_id) > MAX_REQUEST_ID:
        v.add("request_id", f"must be at most {MAX_REQUEST_ID} characters", "TOO_LONG")
    v.raise_if_any()


def validate_list_attempts(req: pb.ListDeliveryAttemptsRequest) -> None:
    """Validates a ListDeliveryAttempts request: at least one filter is required."""
    v = Violations()
    if not req.notification_id and not req.endpoint_id:
        v.add("notification_id", "set notification_id or endpoint_id", "FILTER_REQUIRED")
    v.raise_if_any()


def url_problem(url: str) -> tuple[str, str] | None:
    """Checks the syntax of a webhook URL.

    Returns:
        ``(reason, description)`` of the first problem, or None for a good URL.
    """
    if not url:
        return "REQUIRED", "must not be empty"
    if len(url) > MAX_URL:
        return "TOO_LONG", f"must be at most {MAX_URL} characters"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "INVALID_URL", "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return "INVALID_URL", "is not a URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "INVALID_URL_SCHEME", "must use http or https"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "URL_HAS_CREDENTIALS", "must not contain credentials"
    if not parts.hostname:
        return "INVALID_URL", "must name a host"
    if parts.fragment:
        return "INVALID_URL", "must not have a fragment"
    return None


def is_private_address(address: str) -> bool:
    """Whether an IP address is one a production server must not POST to.

    Private, loopback, link-local (including cloud metadata at 169.254.169.254), reserved,
    multicast and unspecified addresses all count; IPv4-mapped IPv6 is judged as IPv4.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def type_matches(filters: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint with ``filters`` receives notifications of ``event_type``.

    No filters means every type; ``report.*`` matches ``report.completed`` (and deeper).
    """
    filters = list(filters)
    if not filters:
        return True
    for f in filters:
        if f in ("*", event_type):
            return True
        if f.endswith(".*") and event_type.startswith(f[:-1]):
            return True
    return False


def _required(v: Violations, field: str, value: str, limit: int) -> None:
    if not value:
        v.add(field, "must not be empty", "REQUIRED")
    elif len(value) > limit:
        v.add(field, f"must be at most {limit} characters", "TOO_LONG")


def _is_link(link: str) -> bool:
    if link.startswith("/") and not link.startswith("//"):
        return True
    try:
        parts = urlsplit(link)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


DEFAULT_GRACE_SECONDS = 86_400
MAX_GRACE_SECONDS = 7 * 86_400


def validate_rotate(request: pb.RotateWebhookSecretRequest) -> int:
    """Checks a RotateWebhookSecret request; returns the grace period in seconds."""
    v = Violations()
    if not request.endpoint_id:
        v.add("endpoint_id", "must not be empty", "REQUIRED")
    if not 0 <= request.grace_period_seconds <= MAX_GRACE_SECONDS:
        v.add(
            "grace_period_seconds",
            f"must be 0 (the default of a day) to {MAX_GRACE_SECONDS}",
            "INVALID_GRACE_PERIOD",
        )
    v.raise_if_any()
    if request.revoke_previous:
        return 0
    return request.grace_period_seconds or DEFAULT_GRACE_SECONDS
