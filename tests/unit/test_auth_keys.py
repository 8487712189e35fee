"""Token keys: JWKS loading, rotation by ``kid``, and one distinct reason per failure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from surveymesh.auth import TokenAuthority, load_jwks, load_signing_jwk
from surveymesh.config import Settings
from surveymesh.errors import Unauthenticated

AUD = ISS = "surveymesh"


def _private_jwk(kid: str, kind: str) -> dict[str, Any]:
    if kind == "RS256":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid, "alg": kind}


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    private_parts = {"d", "p", "q", "dp", "dq", "qi"}
    return {k: v for k, v in jwk.items() if k not in private_parts}


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "u", "org": "o", "roles": ["viewer"], "aud": AUD, "iss": ISS}
    return {**base, "iat": now, "nbf": now, "exp": now + 300, **over}


def _reason(authority: TokenAuthority, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        authority.verify(token)
    return caught.value.reason


def test_rotation_old_and_new_keys_verify_and_the_newest_signs(tmp_path: Path) -> None:
    old, new = _private_jwk("2024-old", "RS256"), _private_jwk("2025-new", "ES256")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_public(old), _public(new)]}))
    (tmp_path / "signing.json").write_text(json.dumps(new))
    settings = Settings(
        jwt_jwks_file=str(tmp_path / "jwks.json"),
        jwt_signing_key_file=str(tmp_path / "signing.json"),
        data_dir=tmp_path / "data",
    )
    authority = TokenAuthority.from_settings(settings)
    # JWKS-only: HS256 is not accepted and no development secret file is made.
    assert authority.algorithms == frozenset({"RS256", "ES256"})
    assert not (tmp_path / "data" / "jwt-secret").exists()

    minted = authority.mint(org="acme", user="ann", roles=["admin"])
    assert jwt.get_unverified_header(minted) == {"alg": "ES256", "kid": "2025-new", "typ": "JWT"}
    assert authority.verify(minted).org == "acme"
    # A token signed by the retiring key still verifies while its kid is in the JWKS.
    old_token = jwt.encode(
        _claims(), load_signing_jwk(old).key, algorithm="RS256", headers={"kid": "2024-old"}
    )
    assert authority.verify(old_token).user == "u"
    # Once the old key leaves the JWKS, its tokens fail with a reason of their own.
    retired = TokenAuthority(
        keys=load_jwks({"keys": [_public(new)]}), algorithms=["RS256", "ES256"]
    )
    assert _reason(retired, old_token) == "TOKEN_UNKNOWN_KEY"


def test_every_failure_has_its_own_reason() -> None:
    secret = "s" * 40
    rs = _private_jwk("rs", "RS256")
    authority = TokenAuthority(secret, keys=load_jwks({"keys": [_public(rs)]}))
    rs_key = load_signing_jwk(rs).key

    def hs(claims: dict[str, Any], key: str = secret, **kw: Any) -> str:
        return jwt.encode(claims, key, algorithm="HS256", **kw)

    now = int(time.time())
    unsigned = jwt.encode(_claims(), key=None, algorithm="none")  # type: ignore[arg-type]
    cases = {
        "TOKEN_MALFORMED": "not-a-jwt",
        "TOKEN_ALGORITHM_NOT_ALLOWED": unsigned,
        "TOKEN_BAD_SIGNATURE": hs(_claims(), "x" * 40),
        "TOKEN_EXPIRED": hs(_claims(exp=now - 3600)),
        "TOKEN_NOT_YET_VALID": hs(_claims(nbf=now + 3600)),
        "TOKEN_WRONG_AUDIENCE": hs(_claims(aud="another-service")),
        "TOKEN_WRONG_ISSUER": hs(_claims(iss="someone-else")),
        "TOKEN_MISSING_CLAIM": hs({k: v for k, v in _claims().items() if k != "exp"}),
        "TOKEN_UNKNOWN_KEY": jwt.encode(_claims(), rs_key, algorithm="RS256", headers={"kid": "x"}),
    }
    for reason, token in cases.items():
        assert _reason(authority, token) == reason, reason

    # Algorithm confusion: the RS256 key's kid with an HS256 signature made from its public
    # JWK text (what an attacker can read) is refused before any signature check.
    # PyJWT refuses to make such a token, so it is assembled by hand.
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signed = b".".join(
        b64(json.dumps(part).encode())
        for part in ({"alg": "HS256", "typ": "JWT", "kid": "rs"}, _claims())
    )
    mac = hmac.new(json.dumps(_public(rs)).encode(), signed, hashlib.sha256).digest()
    confused = (signed + b"." + b64(mac)).decode()
    assert _reason(authority, confused) == "TOKEN_ALGORITHM_NOT_ALLOWED"
    # A correctly signed RS256 token passes: the matrix above fails for its reason only.
    good = jwt.encode(_claims(), rs_key, algorithm="RS256", headers={"kid": "rs"})
    assert authority.verify(good).org == "o"


def test_algorithms_setting_narrows_what_is_accepted() -> None:
    secret = "s" * 40
    es = _private_jwk("es", "ES256")
    only_es = TokenAuthority(secret, keys=load_jwks({"keys": [_public(es)]}), algorithms=["ES256"])
    hs_token = jwt.encode(_claims(), secret, algorithm="HS256")
    assert _reason(only_es, hs_token) == "TOKEN_ALGORITHM_NOT_ALLOWED"
    with pytest.raises(ValueError):
        TokenAuthority(secret, algorithms=["none"])
    with pytest.raises(ValueError):
        load_jwks({"keys": [{"kty": "oct", "k": base64.urlsafe_b64encode(b"k" * 32).decode()}]})


def test_settings_read_key_and_tls_configuration() -> None:
    s = Settings.from_env(
        {
            "SURVEYMESH_JWT_ALGORITHMS": "RS256, ES256",
            "SURVEYMESH_JWT_JWKS_FILE": "/etc/jwks.json",
            "SURVEYMESH_TLS_CLIENT_AUTH": "require",
            "SURVEYMESH_PLAINTEXT": "false",
            "SURVEYMESH_REPORT_RATE": "12",
        }
    )
    assert s.jwt_algorithms == ("RS256", "ES256")
    assert s.jwt_jwks_file == "/etc/jwks.json"
    assert (s.tls_client_auth, s.plaintext, s.report_rate) == ("require", False, 12.0)
