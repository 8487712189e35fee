"""Every RPC of every service, streams included, refuses every kind of bad token.

The RPCs come from the generated descriptors, so an RPC added to a contract is in the
matrix without touching this file. Each bad token gets UNAUTHENTICATED with its own reason;
a valid token gets past authentication on every RPC.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from temporalio.testing import WorkflowEnvironment

from tests.conftest import TEST_SECRET
from tests.integration.stack import Md, Mesh, Rpc, all_rpcs, call, mesh_stack

pytestmark = pytest.mark.integration


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "alice", "org": "org-auth", "roles": ["admin"], "aud": "surveymesh"}
    return {**base, "iss": "surveymesh", "iat": now, "nbf": now, "exp": now + 600, **over}


def _hs(claims: dict[str, Any], key: str = TEST_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def bad_tokens() -> dict[str, tuple[str, Md]]:
    """Name → (expected reason, metadata) for every way a credential can be wrong."""
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def bearer(token: str) -> Md:
        return (("authorization", f"Bearer {token}"),)

    return {
        "missing": ("MISSING_CREDENTIALS", ()),
        "not bearer": ("MISSING_CREDENTIALS", (("authorization", f"Basic {_hs(_claims())}"),)),
        "garbage": ("TOKEN_MALFORMED", bearer("abc.def")),
        "alg none": (
            "TOKEN_ALGORITHM_NOT_ALLOWED",
            bearer(jwt.encode(_claims(), None, algorithm="none")),  # type: ignore[arg-type]
        ),
        "wrong alg (HS512)": (
            "TOKEN_ALGORITHM_NOT_ALLOWED",
            bearer(_hs(_claims(), TEST_SECRET * 2, alg="HS512")),
        ),
        "wrong alg (RS256)": (
            "TOKEN_ALGORITHM_NOT_ALLOWED",
            bearer(jwt.encode(_claims(), rsa_key, algorithm="RS256")),
        ),
        "bad signature": ("TOKEN_BAD_SIGNATURE", bearer(_hs(_claims(), "another-secret" * 3))),
        "expired": ("TOKEN_EXPIRED", bearer(_hs(_claims(exp=now - 3600)))),
        "not yet valid": ("TOKEN_NOT_YET_VALID", bearer(_hs(_claims(nbf=now + 3600)))),
        "wrong audience": ("TOKEN_WRONG_AUDIENCE", bearer(_hs(_claims(aud="billing")))),
        "wrong issuer": ("TOKEN_WRONG_ISSUER", bearer(_hs(_claims(iss="evil")))),
        "no exp": (
            "TOKEN_MISSING_CLAIM",
            bearer(_hs({k: v for k, v in _claims().items() if k != "exp"})),
        ),
        "no org": (
            "TOKEN_MISSING_CLAIM",
            bearer(_hs({k: v for k, v in _claims().items() if k != "org"})),
        ),
    }


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Any],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    async with mesh_stack(
        new_database, temporal_env.client, token_for, tmp_path_factory.mktemp("auth")
    ) as m:
        yield m


def _request(rpc: Rpc) -> Any:
    # An empty request: authentication happens before validation, so it must never matter.
    request = rpc.request_class()
    return [request] if rpc.method.client_streaming else request


async def test_every_rpc_refuses_every_bad_token(mesh: Mesh) -> None:
    rpcs = all_rpcs()
    assert len(rpcs) >= 22  # the contracts as of writing; more is fine
    tokens = bad_tokens()
    failures = []
    for rpc in rpcs:
        for name, (reason, metadata) in tokens.items():
            got = await call(mesh.channel(rpc.service), rpc, _request(rpc), metadata, limit=1)
            if (got.code, got.reason, got.messages) != (
                grpc.StatusCode.UNAUTHENTICATED,
                reason,
                (),
            ):
                failures.append(f"{rpc.name} with {name}: {got.code.name} {got.reason}")
    assert not failures, "\n".join(failures)
    print(f"auth matrix: {len(rpcs)} RPCs x {len(tokens)} bad credentials")


async def test_a_valid_token_passes_authentication_on_every_rpc(mesh: Mesh) -> None:
    # The positive half of the matrix: the same calls with a good token are judged on
    # their content (usually INVALID_ARGUMENT for the empty request), never on identity.
    metadata = mesh.token_for("org-auth-ok", role="admin")
    for rpc in all_rpcs():
        got = await call(
            mesh.channel(rpc.service), rpc, _request(rpc), metadata, limit=1, deadline=3
        )
        assert got.code != grpc.StatusCode.UNAUTHENTICATED, rpc.name


async def test_jwks_keys_rotate_on_a_running_service(
    new_database: Callable[[str], Any], tmp_path: Path
) -> None:
    # A JWKS-only Delivery (RS256, no shared secret) accepts both keys of a rotation and,
    # once the old key is dropped from the file and the service restarted, refuses it.
    from delivery_svc.server import create_server
    from surveymesh.config import Settings
    from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
    from surveymesh.errors import error_details

    def jwk(kid: str) -> tuple[Any, dict[str, Any]]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        return key, {**public, "kid": kid, "alg": "RS256"}

    (old_key, old_pub), (new_key, new_pub) = jwk("k1"), jwk("k2")
    jwks = tmp_path / "jwks.json"
    dsn = await new_database("auth_jwks")

    def bearer(key: Any, kid: str) -> Md:
        token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": kid})
        return (("authorization", f"Bearer {token}"),)

    async def list_surveys(metadata: Md) -> grpc.StatusCode | str:
        settings = Settings(database_url=dsn, jwt_jwks_file=str(jwks), data_dir=tmp_path)
        service = await create_server(settings, address="localhost:0")
        try:
            async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
                method = channel.unary_unary(
                    "/surveymesh.delivery.v1.DeliveryService/ListSurveys",
                    dpb.ListSurveysRequest.SerializeToString,
                    dpb.ListSurveysResponse.FromString,
                )
                try:
                    await method(dpb.ListSurveysRequest(), metadata=metadata, timeout=5)
                except grpc.aio.AioRpcError as err:
                    return error_details(err).reason
                return grpc.StatusCode.OK
        finally:
            await service.stop(0)

    jwks.write_text(json.dumps({"keys": [old_pub, new_pub]}))
    assert await list_surveys(bearer(old_key, "k1")) == grpc.StatusCode.OK
    assert await list_surveys(bearer(new_key, "k2")) == grpc.StatusCode.OK
    hs_with_kid = jwt.encode(_claims(), TEST_SECRET, algorithm="HS256", headers={"kid": "k2"})
    assert (
        await list_surveys((("authorization", f"Bearer {hs_with_kid}"),))
        == "TOKEN_ALGORITHM_NOT_ALLOWED"
    )
    jwks.write_text(json.dumps({"keys": [new_pub]}))
    assert await list_surveys(bearer(old_key, "k1")) == "TOKEN_UNKNOWN_KEY"
    assert await list_surveys(bearer(new_key, "k2")) == grpc.StatusCode.OK
    # No development secret was created: a JWKS-only deployment never uses one.
    assert not (tmp_path / "jwt-secret").exists()
