"""Signed webhooks per the Standard Webhooks spec, and the endpoints they go to.

Each delivery is a JSON POST with ``webhook-id`` (the same on every retry of one
delivery, so receivers can de-duplicate), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` of
``"{id}.{timestamp}.{body}"``, keyed with the base64 part of the ``whsec_`` secret; one
signature per live secret, so a rotation's grace period is covered.

Secrets are stored encrypted (:mod:`notification_svc.secretbox`) and decrypted only for
the attempt that signs with them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import asyncpg
import httpx
import orjson

from notification_svc.dispatcher import Outcome
from notification_svc.repository import DeliveryJob, Repository
from notification_svc.secretbox import SecretBox, SecretUnreadable, UnknownSecretKey
from notification_svc.validation import is_private_address, url_problem
from surveymesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
USER_AGENT = "SurveyMesh-Webhooks/1"
# Endpoints re-encrypted per query at start.
RESEAL_BATCH = 200


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``"{message_id}.{timestamp}.{body}"``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_: Iterable[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (one signature per secret)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id, timestamp, body) for s in secrets_),
    }


def payload(job: DeliveryJob) -> bytes:
    """The JSON body: ids and metadata only, identical on every retry.

    The receiver fetches any data with the ids (``GetReport``); nothing personal or large
    travels in a webhook.
    """
    return orjson.dumps(
        {
            "type": job.type,
            "timestamp": job.create_time.isoformat(),
            "data": {
                "notification_id": str(job.notification_id),
                "org_id": job.org_id,
                "user_id": job.user_id,
                "link": job.link,
                "metadata": job.metadata,
            },
        }
    )


async def _addresses(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def vet_destination(
    url: str, *, allow_private: bool
) -> tuple[str | None, tuple[str, str] | None]:
    """Checks a webhook URL and resolves its host once.

    Returns:
        ``(address, problem)``: the public address to connect to (``None`` when private
        destinations are allowed: then the HTTP client resolves the name itself), or the
        ``(reason, description)`` of the problem. A name with any private, loopback or
        link-local address is refused.
    """
    problem = url_problem(url)
    if problem or allow_private:
        return None, problem
    parts = urlsplit(url)
    try:
        addresses = await _addresses(parts.hostname or "", _default_port(parts))
    except OSError:
        addresses = []
    if not addresses:
        return None, ("UNRESOLVABLE_HOST", "host name does not resolve")
    if any(is_private_address(a) for a in addresses):
        return None, (
            "PRIVATE_ADDRESS",
            "must not resolve to a private, loopback or link-local address",
        )
    return addresses[0], None


async def check_destination(url: str, *, allow_private: bool) -> tuple[str, str] | None:
    """Checks a webhook URL's syntax and, unless allowed, that it resolves to public addresses.

    Returns:
        ``(reason, description)`` of the problem, or None.
    """
    return (await vet_destination(url, allow_private=allow_private))[1]


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The request that reaches ``url``'s host at ``address`` (an IP checked beforehand).

    Connecting to the checked address instead of letting the HTTP client resolve the name
    again closes the DNS-rebinding window (a name that answers a public address to the
    check and a private one to the connection). The ``Host`` header and, for https, the
    TLS server name (SNI and certificate check) stay the URL's host name. An https
    connection is not kept for reuse: the client pools connections by address, and a
    session verified for one name must not carry a request for another name.

    Returns:
        ``(url with the address in place of the host, extra headers, request extensions)``.
    """
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    port = f":{parts.port}" if parts.port else ""
    name = parts.hostname or ""
    headers = {"host": (f"[{name}]" if ":" in name else name) + port}
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        headers["connection"] = "close"
        extensions["sni_hostname"] = name
    return urlunsplit(parts._replace(netloc=host + port)), headers, extensions


class WebhookSender:
    """Makes one webhook attempt and classifies the result.

    Args:
        client: Shared HTTP client (its timeouts bound each attempt).
        box: Decrypts the stored signing secrets.
        allow_private: Whether private/loopback destinations are allowed (development).
    """

    def __init__(self, client: httpx.AsyncClient, box: SecretBox, *, allow_private: bool) -> None:
        self._client = client
        self._box = box
        self._allow_private = allow_private

    def _secrets(self, job: DeliveryJob) -> list[str] | Outcome:
        """The job's secrets in the clear, or the outcome of an attempt that cannot sign."""
        assert job.endpoint_id is not None  # webhook deliveries always name their endpoint
        try:
            return [self._box.open(job.endpoint_id, stored) for stored in job.secrets]
        except UnknownSecretKey as exc:
            # A configuration problem (a key dropped too early, a replica without the new
            # key): worth retrying once an operator has fixed it.
            log.error("delivery %s cannot be signed: %s", job.delivery_id, exc)
            return Outcome.retry(0, f"signing secret unreadable: {exc}")
        except SecretUnreadable as exc:
            # Tampered, or moved from another endpoint's row: never sign with it.
            log.error("delivery %s cannot be signed: %s", job.delivery_id, exc)
            return Outcome.fail(0, f"signing secret unreadable: {exc}")

    async def deliver(self, job: DeliveryJob) -> Outcome:
        """POSTs the signed payload to the job's endpoint."""
        if not job.url or not job.secrets or job.endpoint_id is None:
            return Outcome.fail(0, "endpoint deleted")
        secrets_ = self._secrets(job)
        if isinstance(secrets_, Outcome):
            return secrets_
        # Checked at every attempt, not just at registration: DNS may have changed since.
        address, problem = await vet_destination(job.url, allow_private=self._allow_private)
        if problem is not None:
            if problem[0] == "UNRESOLVABLE_HOST":
                return Outcome.retry(0, "host name does not resolve")
            return Outcome.fail(0, f"destination refused: {problem[1]}")
        body = payload(job)
        headers = signed_headers(secrets_, job.message_id, int(time.time()), body)
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        url = job.url
        extensions: dict[str, Any] = {}
        if address is not None:
            url, extra, extensions = pinned(job.url, address)
            headers.update(extra)
        try:
            response = await self._client.post(
                url, content=body, headers=headers, extensions=extensions
            )
        except httpx.TimeoutException as exc:
            return Outcome.retry(0, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Outcome.retry(0, f"connection failed: {type(exc).__name__}: {exc}"[:500])
        return classify_response(response.status_code, response.headers.get("retry-after"))


def classify_response(code: int, retry_after: str | None = None) -> Outcome:
    """Maps a webhook receiver's HTTP status to an outcome.

    2xx succeeds; 408, 429 and 5xx are retried (honouring ``Retry-After`` seconds); 410
    means "unsubscribed" and every other status (3xx: we do not follow redirects, 4xx: the
    request will not get better) fails for good.
    """
    if 200 <= code < 300:
        return Outcome.success(code)
    if code == 410:
        return Outcome.fail(code, "receiver answered 410 Gone")
    if code in (408, 429) or code >= 500:
        delay: float | None = None
        if retry_after and retry_after.strip().isdigit():
            delay = float(retry_after.strip())
        return Outcome.retry(code, f"receiver answered {code}", delay)
    return Outcome.fail(code, f"receiver answered {code}")


class WebhookEndpoints:
    """Registration, secret rotation and re-encryption of webhook endpoints.

    Args:
        repo: The repository.
        box: Seals and opens the stored signing secrets.
        allow_private: Whether private/loopback URLs may be registered.
    """

    def __init__(self, repo: Repository, box: SecretBox, *, allow_private: bool) -> None:
        self._repo = repo
        self._box = box
        self._allow_private = allow_private

    async def create(
        self, org: str, *, url: str, event_types: list[str], description: str, request_id: str
    ) -> tuple[asyncpg.Record, str]:
        """Registers an endpoint with a new secret (or returns the one of ``request_id``).

        Returns:
            ``(row, secret)``: the stored endpoint and its signing secret in the clear.

        Raises:
            FailedPrecondition: a repeated ``request_id`` whose endpoint's secret can no
                longer be decrypted (``WEBHOOK_SECRET_UNREADABLE``; rotate it).
        """
        problem = await check_destination(url, allow_private=self._allow_private)
        if problem is not None:
            raise InvalidArgument(
                [FieldViolation("url", problem[1], problem[0])], reason=problem[0]
            )
        endpoint_id, secret = uuid.uuid4(), new_secret()
        row = await self._repo.create_endpoint(
            org,
            endpoint_id=endpoint_id,
            url=url,
            event_types=sorted(set(event_types)),
            description=description,
            secret=self._box.seal(endpoint_id, secret),
            request_id=request_id,
        )
        if row["id"] == endpoint_id:
            return row, secret
        try:  # a retried request: answer with the first call's secret
            return row, self._box.open(row["id"], row["secret"])
        except SecretUnreadable as exc:
            log.error("webhook endpoint %s: %s", row["id"], exc)
            raise FailedPrecondition(
                "the endpoint's secret cannot be read; rotate it",
                reason="WEBHOOK_SECRET_UNREADABLE",
            ) from None

    async def rotate_secret(
        self, org: str, endpoint_id: uuid.UUID | None, grace_seconds: int
    ) -> tuple[asyncpg.Record, str]:
        """Gives an endpoint a new secret; returns the endpoint and that secret.

        Both stored secrets are written under the newest key, so a rotation also
        re-encrypts a legacy plaintext row. A current secret that cannot be decrypted (its
        key is gone) is dropped instead of kept for the grace period: rotating is how an
        operator recovers such an endpoint.
        """
        secret = new_secret()

        def reseal(current: str) -> tuple[str, str | None]:
            assert endpoint_id is not None
            previous = None
            if grace_seconds > 0 and current:
                try:
                    previous = self._box.seal(endpoint_id, self._box.open(endpoint_id, current))
                except SecretUnreadable as exc:
                    log.warning("endpoint %s: old secret dropped at rotation: %s", endpoint_id, exc)
            return self._box.seal(endpoint_id, secret), previous

        row = None
        if endpoint_id is not None:
            row = await self._repo.rotate_secret(org, endpoint_id, grace_seconds, reseal)
        if row is None:
            raise NotFound("webhook endpoint not found", reason="ENDPOINT_NOT_FOUND")
        return row, secret

    async def reseal_all(self) -> int:
        """Re-encrypts, under the newest key, every stored secret that is not (legacy
        plaintext rows, rows under an older key). Run at start by every replica.

        Values that cannot be decrypted are left as they are (and logged): their
        deliveries fail with a clear error until the endpoint's secret is rotated.

        Returns:
            How many endpoints were rewritten.
        """
        box = self._box
        after, done, unreadable = 0, 0, 0
        while True:
            rows = await self._repo.endpoints_to_reseal(box.active_prefix, after, RESEAL_BATCH)
            for r in rows:
                after = r["position"]
                old: tuple[str, str | None] = (r["secret"], r["previous_secret"])
                try:
                    previous = None if old[1] is None else self._resealed(r["id"], old[1])
                    new = (self._resealed(r["id"], old[0]), previous)
                except SecretUnreadable as exc:
                    unreadable += 1
                    log.error("webhook endpoint %s: stored secret left as it is: %s", r["id"], exc)
                    continue
                if await self._repo.replace_secrets(r["id"], old, new):
                    done += 1
            if len(rows) < RESEAL_BATCH:
                break
        if done or unreadable:
            log.info(
                "re-encrypted the secrets of %d webhook endpoints under key %r (%d unreadable)",
                done,
                box.active_key_id,
                unreadable,
            )
        return done

    def _resealed(self, endpoint_id: uuid.UUID, stored: str) -> str:
        if not stored or self._box.is_current(stored):
            return stored  # erased (deleted endpoint), or already under the newest key
        return self._box.seal(endpoint_id, self._box.open(endpoint_id, stored))
