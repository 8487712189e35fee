"""Verified tokens are remembered briefly, but never past their expiry or beyond a failure."""

from __future__ import annotations

import time

import jwt
import pytest

from surveymesh.auth import TokenAuthority
from surveymesh.errors import Unauthenticated

SECRET = "unit-secret-0123456789abcdef-0123456789"


def _token(exp: int, secret: str = SECRET) -> str:
    now = int(time.time())
    claims = {"sub": "u", "org": "o", "roles": ["viewer"], "aud": "surveymesh"}
    return jwt.encode({**claims, "iss": "surveymesh", "iat": now, "exp": exp}, secret, "HS256")


def _reason(authority: TokenAuthority, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        authority.verify(token)
    return caught.value.reason


def test_a_verified_token_is_remembered() -> None:
    authority = TokenAuthority(SECRET)
    token = _token(int(time.time()) + 300)
    first = authority.verify(token)
    assert authority.verify(token) is first
    # Off: every call checks the token again (a new, equal principal).
    uncached = TokenAuthority(SECRET, cache_seconds=0)
    assert uncached.verify(token) == first
    assert uncached.verify(token) is not uncached.verify(token)


def test_a_remembered_token_still_expires() -> None:
    authority = TokenAuthority(SECRET, leeway=0)
    exp = int(time.time()) + 1
    token = _token(exp)
    assert authority.verify(token).org == "o"
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    assert _reason(authority, token) == "TOKEN_EXPIRED"


def test_failures_are_not_remembered() -> None:
    authority = TokenAuthority(SECRET)
    forged = _token(int(time.time()) + 300, secret="another-secret-0123456789abcdef-01234")
    assert _reason(authority, forged) == "TOKEN_BAD_SIGNATURE"
    assert _reason(authority, forged) == "TOKEN_BAD_SIGNATURE"
