"""Opaque page tokens for list RPCs (AIP-158).

A token is url-safe base64 of a small JSON object holding the keyset position, bound to
the method and organization that issued it; a token from elsewhere is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from surveymesh.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """Validates ``page_size`` (0 → default, capped at the maximum)."""
    if requested < 0:
        raise InvalidArgument(
            [FieldViolation("page_size", "must not be negative", "INVALID_PAGE_SIZE")],
            reason="INVALID_PAGE_SIZE",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(method: str, org: str, position: dict[str, Any]) -> str:
    """Makes the ``next_page_token`` for a listing continuing at ``position``."""
    raw = orjson.dumps({"m": method, "o": org, "p": position})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, method: str, org: str) -> dict[str, Any] | None:
    """Returns the position held by ``token`` (None for an empty token)."""
    if not token:
        return None
    bad = InvalidArgument(
        [FieldViolation("page_token", "not a page token of this listing", "INVALID_PAGE_TOKEN")],
        reason="INVALID_PAGE_TOKEN",
    )
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("m") != method or data.get("o") != org:
        raise bad
    position = data.get("p")
    if not isinstance(position, dict):
        raise bad
    return position
