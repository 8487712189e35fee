"""Bearer-token identity: minting, verifying and the caller of the current request.

Tokens are JWTs with claims ``sub`` (user), ``org`` (organization) and ``roles``. Every
resource belongs to an organization, and every query is scoped by ``Principal.org``: the
identity in a request body is never trusted over the token.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from surveymesh.errors import PermissionDenied, Unauthenticated

ROLES = ("viewer", "analyst", "admin", "service")
# Roles allowed to do things, beyond reading. `service` is the worker acting for an org.
WRITE_ROLES = frozenset({"analyst", "admin", "service"})
ADMIN_ROLES = frozenset({"admin"})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user: str
    org: str
    roles: frozenset[str]

    def has_any(self, roles: Iterable[str]) -> bool:
        """Whether the caller holds at least one of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def require(self, roles: Iterable[str], action: str) -> None:
        """Raises PERMISSION_DENIED unless the caller holds one of ``roles``."""
        wanted = frozenset(roles)
        if self.roles.isdisjoint(wanted):
            raise PermissionDenied(
                f"{action} needs one of the roles {sorted(wanted)}",
                reason="ROLE_NOT_PERMITTED",
                metadata={"required_roles": ",".join(sorted(wanted))},
            )


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("surveymesh_principal")


def current_principal() -> Principal:
    """The caller of the request being handled (set by the server interceptor)."""
    try:
        return _current.get()
    except LookupError:
        raise Unauthenticated("no authenticated caller", reason="MISSING_CREDENTIALS") from None


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Binds the caller for the current task; used by the interceptor and tests."""
    return _current.set(principal)


class TokenAuthority:
    """Mints and verifies HS256 bearer tokens.

    Args:
        secret: The signing secret.
        audience: Expected ``aud`` claim.
        issuer: Expected ``iss`` claim.
        leeway: Clock skew tolerated on ``exp``/``nbf``, in seconds.
    """

    ALGORITHMS = ("HS256",)

    def __init__(
        self,
        secret: str,
        *,
        audience: str = "surveymesh",
        issuer: str = "surveymesh",
        leeway: float = 30,
    ) -> None:
        if not secret:
            raise ValueError("a signing secret is required")
        self._secret = secret
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway

    def mint(
        self, *, org: str, user: str, roles: Iterable[str], ttl_seconds: float = 24 * 3600
    ) -> str:
        """Returns a signed token for ``user`` of ``org`` with ``roles``."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {list(ROLES)}")
        now = int(time.time())
        claims = {
            "sub": user,
            "org": org,
            "roles": sorted(set(roles)),
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_seconds),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """Checks signature, expiry, audience and issuer, and returns the caller.

        Raises:
            Unauthenticated: the token is invalid for any reason (the reason says which).
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=list(self.ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not yet valid", reason="TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "token has the wrong audience", reason="TOKEN_WRONG_AUDIENCE"
            ) from None
        except jwt.InvalidTokenError as e:
            raise Unauthenticated(f"invalid token: {e}", reason="TOKEN_INVALID") from None
        org, user, roles = claims.get("org"), claims.get("sub"), claims.get("roles", [])
        if not isinstance(org, str) or not org or not isinstance(user, str) or not user:
            raise Unauthenticated("token lacks org or sub", reason="TOKEN_INVALID")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token roles must be a list of strings", reason="TOKEN_INVALID")
        return Principal(user=user, org=org, roles=frozenset(r for r in roles if r in ROLES))

    def verify_header(self, value: str | None) -> Principal:
        """Verifies an ``authorization`` header value of the form ``Bearer <token>``."""
        if not value:
            raise Unauthenticated(
                "missing 'authorization: Bearer <token>' metadata", reason="MISSING_CREDENTIALS"
            )
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "authorization must be 'Bearer <token>'", reason="MISSING_CREDENTIALS"
            )
        return self.verify(token.strip())


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)
