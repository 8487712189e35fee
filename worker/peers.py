"""Calling peer services from activities: service tokens and gRPC error translation.

The worker acts for an organization with a short-lived token (role ``service``) minted per
org and reused until shortly before it expires. Peer failures become Temporal errors per
STYLE.md: bad input, missing or foreign resources and refused permissions can never
succeed on retry, so they are non-retryable and carry the peer's ``ErrorInfo.reason`` as
their type; transient conditions are raised as retryable and Temporal retries them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from temporalio.exceptions import ApplicationError

from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.errors import error_details

NON_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ServiceTokens:
    """Per-organization service tokens, cached until ``refresh_before`` seconds of expiry.

    Args:
        authority: Signs the tokens (the mesh's shared secret).
        user: Subject of the tokens.
        ttl_seconds: Lifetime of a minted token.
        refresh_before: Mint a new token when the cached one has less than this left, so a
            call never starts with a token that expires mid-flight.
        clock: Wall clock (tests).
    """

    def __init__(
        self,
        authority: TokenAuthority,
        *,
        user: str = "worker",
        ttl_seconds: float = 3600,
        refresh_before: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authority = authority
        self._user = user
        self._ttl = ttl_seconds
        self._refresh_before = refresh_before
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}

    def token(self, org: str) -> str:
        """A valid service token for ``org``."""
        now = self._clock()
        cached = self._cache.get(org)
        if cached is not None and cached[1] - now > self._refresh_before:
            return cached[0]
        token = self._authority.mint(
            org=org, user=self._user, roles=["service"], ttl_seconds=self._ttl
        )
        self._cache[org] = (token, now + self._ttl)
        return token

    def metadata(self, org: str) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the org's service token."""
        return bearer_metadata(self.token(org))


def translate_rpc_error(
    err: grpc.aio.AioRpcError | grpc.RpcError, *, call: str
) -> ApplicationError:
    """The Temporal error for a failed peer call (raise it ``from err``).

    Args:
        err: The failed call.
        call: The peer method, e.g. ``DeliveryService.GetSurvey``, for the message.
    """
    details = error_details(err)
    reason = details.reason or details.code.name
    message = f"{call} failed: {details.code.name}: {details.message}"
    if details.code in NON_RETRYABLE_CODES:
        return ApplicationError(message, type=reason, non_retryable=True)
    # Transient (and unexpected) codes: Temporal retries under the activity's policy.
    delay = None
    if details.retry_after is not None:
        from datetime import timedelta

        delay = timedelta(seconds=details.retry_after)
    return ApplicationError(message, type=reason, non_retryable=False, next_retry_delay=delay)
