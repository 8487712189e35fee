"""The shared runtime's pure parts: settings, tokens, error mapping, page tokens."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from surveymesh.auth import TokenAuthority
from surveymesh.config import ConfigError, Settings
from surveymesh.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Violations,
    to_status,
)
from surveymesh.paging import decode_token, encode_token, page_size


def test_settings_defaults_are_the_embedded_mesh() -> None:
    s = Settings.from_env({})
    assert (s.reporting_port, s.delivery_port, s.notification_port) == (50051, 50052, 50053)
    assert s.peer("delivery") == "localhost:50052"
    assert s.task_queue("reporting-quick") == "reporting-quick"


def test_settings_read_and_validate_the_environment() -> None:
    s = Settings.from_env(
        {
            "SURVEYMESH_DELIVERY_ADDRESS": "delivery:7000",
            "SURVEYMESH_WORKER_QUEUES": "reporting-ai, reporting-batch",
            "SURVEYMESH_TASK_QUEUE_PREFIX": "t1-",
            "SURVEYMESH_REFLECTION": "false",
        }
    )
    assert s.peer("delivery") == "delivery:7000"
    assert s.worker_queues == ("reporting-ai", "reporting-batch")
    assert s.task_queue("reporting-ai") == "t1-reporting-ai"
    assert s.reflection is False
    with pytest.raises(ConfigError, match="SURVEYMESH_DELIVERY_PORT"):
        Settings.from_env({"SURVEYMESH_DELIVERY_PORT": "fifty"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({}).require_database_url()


def test_signing_secret_is_created_once_in_the_data_dir(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    first = s.signing_secret()
    assert len(first) > 40
    assert s.signing_secret() == first
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600


def test_tokens_round_trip_and_reject_tampering() -> None:
    authority = TokenAuthority("k" * 40)
    principal = authority.verify(authority.mint(org="acme", user="ann", roles=["analyst"]))
    assert (principal.org, principal.user, principal.roles) == (
        "acme",
        "ann",
        frozenset({"analyst"}),
    )

    cases = {
        "TOKEN_EXPIRED": authority.mint(org="a", user="u", roles=["viewer"], ttl_seconds=-120),
        "TOKEN_BAD_SIGNATURE": TokenAuthority("other" * 10).mint(
            org="a", user="u", roles=["viewer"]
        ),
        "TOKEN_WRONG_AUDIENCE": TokenAuthority("k" * 40, audience="elsewhere").mint(
            org="a", user="u", roles=["viewer"]
        ),
    }
    unsigned = jwt.encode(
        {"sub": "u", "org": "a", "aud": "surveymesh", "iss": "surveymesh", "exp": time.time() + 60},
        key=None,  # type: ignore[arg-type]
        algorithm="none",
    )
    cases["TOKEN_ALGORITHM_NOT_ALLOWED"] = unsigned
    for reason, token in cases.items():
        with pytest.raises(Unauthenticated) as caught:
            authority.verify(token)
        assert caught.value.reason == reason.strip()
    with pytest.raises(Unauthenticated) as missing:
        authority.verify_header(None)
    assert missing.value.reason == "MISSING_CREDENTIALS"


def test_errors_map_to_status_with_google_rpc_details() -> None:
    v = Violations()
    v.add("survey.title", "must not be empty", "REQUIRED")
    v.add("survey.questions", "needs at least one question", "REQUIRED")
    with pytest.raises(InvalidArgument) as caught:
        v.raise_if_any()
    status = to_status(caught.value, "surveymesh.test")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    decoded = rpc_status.from_call(_FakeCall(status))
    assert decoded is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    decoded.details[0].Unpack(info)
    decoded.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("REQUIRED", "surveymesh.test")
    assert [f.field for f in bad.field_violations] == ["survey.title", "survey.questions"]

    assert (
        to_status(NotFound("x", reason="SURVEY_NOT_FOUND"), "d").code == grpc.StatusCode.NOT_FOUND
    )
    exhausted = ResourceExhausted("slow down", retry_after=1.5)
    retry = error_details_pb2.RetryInfo()
    exhausted.details()[0].Unpack(retry)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)
    assert InvalidArgument([FieldViolation("a", "b")]).reason == "INVALID_ARGUMENT"


class _FakeCall:
    """Just enough of a call for rpc_status.from_call (the status travels in trailers)."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def test_page_tokens_are_bound_to_method_and_org() -> None:
    token = encode_token("ListSurveys", "acme", {"t": "2026-01-01", "id": "x"})
    assert decode_token(token, "ListSurveys", "acme") == {"t": "2026-01-01", "id": "x"}
    assert decode_token("", "ListSurveys", "acme") is None
    for method, org, tok in [
        ("ListSurveys", "other-org", token),
        ("ListReports", "acme", token),
        ("ListSurveys", "acme", "not-base64-!!"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            decode_token(tok, method, org)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert page_size(0) == 50 and page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        page_size(-1)
