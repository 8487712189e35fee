"""Service tokens are cached per org until near expiry; peer errors map to Temporal errors."""

from __future__ import annotations

import grpc
import pytest

from surveymesh.auth import TokenAuthority
from surveymesh.errors import NotFound, ResourceExhausted, Unavailable, to_status
from worker.peers import ServiceTokens, translate_rpc_error

SECRET = "unit-secret-0123456789abcdef0123456789"


def _rpc_error(exc: Exception) -> grpc.aio.AioRpcError:
    status = to_status(exc, "surveymesh.delivery")  # type: ignore[arg-type]
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def test_tokens_cached_per_org_and_refreshed_near_expiry() -> None:
    now = [1000.0]
    authority = TokenAuthority(SECRET)
    tokens = ServiceTokens(authority, ttl_seconds=600, refresh_before=60, clock=lambda: now[0])
    a1 = tokens.token("org-a")
    assert tokens.token("org-a") == a1
    assert tokens.token("org-b") != a1
    principal = authority.verify(a1)
    assert (principal.org, principal.user, principal.roles) == (
        "org-a",
        "worker",
        frozenset({"service"}),
    )
    now[0] += 530  # 70 s left: still reused
    assert tokens.token("org-a") == a1
    now[0] += 20  # 50 s left: below the margin, a fresh one
    assert tokens.token("org-a") != a1
    assert tokens.metadata("org-a")[0][0] == "authorization"


@pytest.mark.parametrize(
    ("exc", "retryable", "reason"),
    [
        (NotFound("no such survey", reason="SURVEY_NOT_FOUND"), False, "SURVEY_NOT_FOUND"),
        (Unavailable("db down", reason="DATABASE_UNAVAILABLE"), True, "DATABASE_UNAVAILABLE"),
        (
            ResourceExhausted("slow down", retry_after=2.5, reason="RATE_LIMITED"),
            True,
            "RATE_LIMITED",
        ),
    ],
)
def test_translate_rpc_error(exc: Exception, retryable: bool, reason: str) -> None:
    err = translate_rpc_error(_rpc_error(exc), call="DeliveryService.GetSurvey")
    assert err.type == reason
    assert err.non_retryable is (not retryable)
    if isinstance(exc, ResourceExhausted):
        assert err.next_retry_delay is not None and err.next_retry_delay.total_seconds() == 2.5


def test_translate_without_details_uses_code_name() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no"
    )
    err = translate_rpc_error(bare, call="X")
    assert err.type == "PERMISSION_DENIED" and err.non_retryable
    deadline = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert translate_rpc_error(deadline, call="X").non_retryable is False
