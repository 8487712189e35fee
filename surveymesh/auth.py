"""Bearer-token identity: minting, verifying and the caller of the current request.

Tokens are JWTs with claims ``sub`` (user), ``org`` (organization) and ``roles``. Every
resource belongs to an organization, and every query is scoped by ``Principal.org``: the
identity in a request body is never trusted over the token.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from surveymesh.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from surveymesh.config import Settings

ROLES = ("viewer", "analyst", "admin", "service")
# Roles allowed to do things, beyond reading. `service` is the worker acting for an org.
WRITE_ROLES = frozenset({"analyst", "admin", "service"})
ADMIN_ROLES = frozenset({"admin"})
# HS256 for development (one shared secret); RS256/ES256 for production (public keys in a
# JWKS). Anything else, `none` above all, is refused whatever the configuration says.
SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
# Verified tokens are remembered by their exact text for this long (never past their own
# expiry): a client sends the same token with every call, and checking a signature costs
# more than a small RPC's own work. An authority's keys and rules never change (rotation is
# a restart), so a token that verified once keeps verifying until it expires.
VERIFIED_TOKEN_SECONDS = 60.0
VERIFIED_TOKEN_MAX = 4096


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


@dataclass(frozen=True)
class Key:
    """One token key: a verification key, or the key this process signs with.

    Attributes:
        kid: The key id (JWT header ``kid``); ``None`` for the single development secret.
        algorithm: The one ``alg`` this key is used with (a key never serves two).
        key: An HS256 secret (``str``/``bytes``) or a ``cryptography`` key object (public for
            verifying, private for signing).
    """

    kid: str | None
    algorithm: str
    key: Any


def load_jwks(data: str | bytes | dict[str, Any]) -> list[Key]:
    """Parses a JWKS (``{"keys": [...]}``) into verification keys.

    Every key needs a ``kid``; its ``alg`` is taken from the JWK (or inferred from ``kty``
    and curve). A private JWK contributes its public half only.

    Raises:
        ValueError: the document is not a JWKS, or a key lacks ``kid`` or is unusable.
    """
    doc = json.loads(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS must be a JSON object {"keys": [...]}')
    keys: list[Key] = []
    for i, jwk in enumerate(doc["keys"]):
        key = _parse_jwk(jwk, f"keys[{i}]")
        public = key.key.public_key() if hasattr(key.key, "public_key") else key.key
        keys.append(Key(key.kid, key.algorithm, public))
    return keys


def load_signing_jwk(data: str | bytes | dict[str, Any]) -> Key:
    """Parses a private JWK (or a JWKS whose last key is the newest) into the signing key."""
    doc = json.loads(data) if isinstance(data, (str, bytes)) else data
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list) and doc["keys"]:
        doc = doc["keys"][-1]
    return _parse_jwk(doc, "signing key")


def _parse_jwk(jwk: Any, where: str) -> Key:
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        raise ValueError(f"{where}: every JWK needs a non-empty 'kid' (for rotation)")
    try:
        parsed = jwt.PyJWK(jwk)
    except jwt.PyJWKError as e:
        raise ValueError(f"{where} (kid {jwk['kid']!r}): {e}") from None
    if parsed.algorithm_name not in SUPPORTED_ALGORITHMS:
        raise ValueError(
            f"{where} (kid {jwk['kid']!r}): algorithm {parsed.algorithm_name} is not one of "
            f"{list(SUPPORTED_ALGORITHMS)}"
        )
    return Key(jwk["kid"], parsed.algorithm_name, parsed.key)


class TokenAuthority:
    """Mints and verifies bearer tokens (JWTs) with a set of keys that can rotate.

    Verification picks the key by the token's ``kid`` header (a token without one is tried
    against every key of its algorithm), and requires the header ``alg`` to be both allowed
    and the one that key is for, so ``alg: none`` and algorithm-confusion tokens fail before
    any signature check. Each failure has its own ``ErrorInfo.reason``:
    ``TOKEN_MALFORMED``, ``TOKEN_ALGORITHM_NOT_ALLOWED``, ``TOKEN_UNKNOWN_KEY``,
    ``TOKEN_BAD_SIGNATURE``, ``TOKEN_EXPIRED``, ``TOKEN_NOT_YET_VALID``,
    ``TOKEN_WRONG_AUDIENCE``, ``TOKEN_WRONG_ISSUER``, ``TOKEN_MISSING_CLAIM``,
    ``TOKEN_INVALID`` (bad claim values).

    Args:
        secret: An HS256 secret, used to verify (tokens without ``kid``) and to sign when no
            ``signing_key`` is given. ``None`` in a JWKS-only deployment.
        keys: More verification keys (from a JWKS), each with a ``kid``.
        signing_key: The key :meth:`mint` signs with (e.g. a private RS256/ES256 JWK).
        algorithms: Accepted ``alg`` values; default: the algorithms of the keys.
        audience: Expected ``aud`` claim.
        issuer: Expected ``iss`` claim.
        leeway: Clock skew tolerated on ``exp``/``nbf``, in seconds.
        cache_seconds: How long a verified token is remembered (0: verify every time).
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        keys: Sequence[Key] = (),
        signing_key: Key | None = None,
        algorithms: Sequence[str] | None = None,
        audience: str = "surveymesh",
        issuer: str = "surveymesh",
        leeway: float = 30,
        cache_seconds: float = VERIFIED_TOKEN_SECONDS,
    ) -> None:
        verification = list(keys)
        if secret:
            verification.insert(0, Key(None, "HS256", secret))
            signing_key = signing_key or Key(None, "HS256", secret)
        elif secret is not None:
            raise ValueError("a signing secret must not be empty")
        if not verification:
            raise ValueError("no verification keys: give a secret or a JWKS")
        allowed = tuple(algorithms) if algorithms else tuple({k.algorithm for k in verification})
        bad = [a for a in allowed if a not in SUPPORTED_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported JWT algorithms {bad}; use {list(SUPPORTED_ALGORITHMS)}")
        self._keys = [k for k in verification if k.algorithm in allowed]
        if not self._keys:
            raise ValueError(f"none of the keys uses an allowed algorithm {list(allowed)}")
        self._algorithms = frozenset(allowed)
        self._signing = signing_key
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._cache_seconds = cache_seconds
        # token -> (caller, wall-clock time until which it is served from here)
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        """The deployment's authority: JWKS file, algorithms, signing key, HS256 secret.

        The HS256 secret (``SURVEYMESH_JWT_SECRET`` or the data dir's file) takes part only
        while ``HS256`` is an accepted algorithm, so a production deployment that accepts
        RS256/ES256 only never creates or reads one.
        """
        keys: list[Key] = []
        if settings.jwt_jwks_file:
            keys = load_jwks(Path(settings.jwt_jwks_file).read_bytes())
        algorithms = settings.jwt_algorithms or (
            tuple(
                sorted({k.algorithm for k in keys} | ({"HS256"} if settings.jwt_secret else set()))
            )
            if keys
            else ("HS256",)
        )
        signing = (
            load_signing_jwk(Path(settings.jwt_signing_key_file).read_bytes())
            if settings.jwt_signing_key_file
            else None
        )
        secret = settings.signing_secret() if "HS256" in algorithms else None
        return cls(
            secret,
            keys=keys,
            signing_key=signing,
            algorithms=algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    @property
    def algorithms(self) -> frozenset[str]:
        """The accepted ``alg`` header values."""
        return self._algorithms

    def mint(
        self, *, org: str, user: str, roles: Iterable[str], ttl_seconds: float = 24 * 3600
    ) -> str:
        """Returns a signed token for ``user`` of ``org`` with ``roles``.

        Raises:
            ValueError: unknown roles, or this authority has no signing key.
        """
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {list(ROLES)}")
        if self._signing is None:
            raise ValueError(
                "no signing key: set SURVEYMESH_JWT_SIGNING_KEY_FILE (a private JWK) or accept HS256"
            )
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
        headers = {"kid": self._signing.kid} if self._signing.kid else None
        return jwt.encode(
            claims, self._signing.key, algorithm=self._signing.algorithm, headers=headers
        )

    def _candidates(self, token: str) -> list[Key]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("the token is not a JWT", reason="TOKEN_MALFORMED") from None
        alg, kid = header.get("alg"), header.get("kid")
        # Checked before any key is touched: `none`, and any algorithm not configured.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted", reason="TOKEN_ALGORITHM_NOT_ALLOWED"
            )
        if kid is not None:
            by_kid = [k for k in self._keys if k.kid == kid]
            if not by_kid:
                raise Unauthenticated(
                    "token signed with an unknown key", reason="TOKEN_UNKNOWN_KEY"
                )
        else:
            by_kid = self._keys
        candidates = [k for k in by_kid if k.algorithm == alg]
        if not candidates:
            raise Unauthenticated(
                f"no key accepts algorithm {alg!r} for this token",
                reason="TOKEN_ALGORITHM_NOT_ALLOWED",
            )
        return candidates

    def verify(self, token: str) -> Principal:
        """Checks algorithm, key, signature, expiry, audience and issuer; returns the caller.

        A token that verified within the last ``cache_seconds`` is not checked again, unless
        it has expired since (only successes are remembered).

        Raises:
            Unauthenticated: the token is invalid for any reason (the reason says which).
        """
        now = time.time()
        known = self._verified.get(token)
        if known is not None and now < known[1]:
            return known[0]
        principal, expires = self._verify(token)
        if self._cache_seconds > 0:
            self._remember(token, principal, min(now + self._cache_seconds, expires), now)
        return principal

    def _remember(self, token: str, principal: Principal, until: float, now: float) -> None:
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_TOKEN_MAX:
                for old in [t for t, (_, u) in self._verified.items() if u <= now]:
                    del self._verified[old]
                if len(self._verified) >= VERIFIED_TOKEN_MAX:
                    del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = (principal, until)

    def _verify(self, token: str) -> tuple[Principal, float]:
        """The full check: the caller and the time from which the token counts as expired."""
        claims: dict[str, Any] | None = None
        for key in self._candidates(token):
            try:
                # PyJWT checks the signature before any claim, so a forged token is reported
                # as such whatever claims it carries.
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={"require": ["exp", "sub", "aud", "iss"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("token not yet valid", reason="TOKEN_NOT_YET_VALID") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated(
                    "token has the wrong audience", reason="TOKEN_WRONG_AUDIENCE"
                ) from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated(
                    "token has the wrong issuer", reason="TOKEN_WRONG_ISSUER"
                ) from None
            except jwt.MissingRequiredClaimError as e:
                raise Unauthenticated(
                    f"token lacks the {e.claim!r} claim", reason="TOKEN_MISSING_CLAIM"
                ) from None
            except jwt.DecodeError:
                raise Unauthenticated("the token is not a JWT", reason="TOKEN_MALFORMED") from None
            except jwt.InvalidTokenError as e:
                raise Unauthenticated(f"invalid token: {e}", reason="TOKEN_INVALID") from None
        if claims is None:
            raise Unauthenticated("token signature does not verify", reason="TOKEN_BAD_SIGNATURE")
        org, user, roles = claims.get("org"), claims.get("sub"), claims.get("roles", [])
        if not isinstance(org, str) or not org or not isinstance(user, str) or not user:
            raise Unauthenticated("token lacks org or sub", reason="TOKEN_MISSING_CLAIM")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token roles must be a list of strings", reason="TOKEN_INVALID")
        principal = Principal(user=user, org=org, roles=frozenset(r for r in roles if r in ROLES))
        # PyJWT's own rule: expired once exp <= now - leeway (exp is required and numeric).
        return principal, int(claims["exp"]) + self._leeway

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
