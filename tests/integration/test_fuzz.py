"""Hostile input: hypothesis-generated requests for every RPC of every service.

Requests are built from the generated descriptors (so a new RPC or field is fuzzed without
touching this file): random and boundary values, huge strings, unknown enum numbers, ids
that exist, ids of nothing and ids that are not ids, big repeated fields; then raw bytes the
protobuf library would never produce (invalid UTF-8 in string fields, truncated messages)
and 5 MB messages. The only answers allowed are the ones a client can act on; never UNKNOWN
or INTERNAL, INVALID_ARGUMENT always with ``BadRequest`` details, and every server still
reports SERVING afterwards.

``SURVEYMESH_FUZZ_EXAMPLES`` overrides the examples per RPC (default: the ``ci`` profile).
"""

from __future__ import annotations

import asyncio
import os
import string
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from temporalio.testing import WorkflowEnvironment

from surveymesh.channels import MAX_MESSAGE_BYTES
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.notification.v1 import notification_pb2 as npb_msg
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.integration.stack import Md, Mesh, Outcome, Rpc, all_rpcs, call, mesh_stack

pytestmark = pytest.mark.integration

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("SURVEYMESH_FUZZ_EXAMPLES", "40")),
    deadline=None,
    database=None,
    print_blob=True,
    # No shrinking: every example is a network round trip, and shrinking a large failing
    # request takes minutes. The failing example is reported as drawn (and as a blob).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)

C = grpc.StatusCode
ALLOWED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.PERMISSION_DENIED,
    C.UNAUTHENTICATED,
    C.FAILED_PRECONDITION,
    C.RESOURCE_EXHAUSTED,
    C.ALREADY_EXISTS,
}
# Streams that follow live data never end by themselves: the test's deadline ends them.
ENDLESS = {"ReportingService/WatchReport", "NotificationService/WatchNotifications"}
ROLES = ("admin", "analyst", "viewer", "service")
INT_BOUNDS = {
    descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
TOTALS: dict[str, int] = {}


class Fuzzer:
    """Builds request strategies from descriptors, with the fuzz org's real ids mixed in."""

    def __init__(self, known: dict[str, list[str]]) -> None:
        self.known = known  # field name -> ids that exist in the fuzz org

    def text(self, name: str) -> st.SearchStrategy[str]:
        chars = st.characters(exclude_categories=["Cs"])
        variants: list[st.SearchStrategy[str]] = [
            st.text(chars, max_size=40),
            st.sampled_from(["", " ", "\x00", "../../etc/passwd", "' OR 1=1 --", "%s%n"]),
            st.text(string.ascii_letters, min_size=1, max_size=3).map(lambda s: s * 70_000),
            st.uuids().map(str),
        ]
        ids = self.known.get(name) or (self.known.get("*_id") if name.endswith("_id") else None)
        if ids:
            variants.append(st.sampled_from(ids))
        if name in {"url", "link"}:
            variants.append(
                st.sampled_from(
                    [
                        "http://127.0.0.1:9/x",
                        "https://169.254.169.254/latest",
                        "http://[::1]/",
                        "ftp://x",
                        "https://example.com/" + "a" * 5000,
                    ]
                )
            )
        return st.one_of(variants)

    def scalar(self, f: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
        t = f.type
        if t == f.TYPE_STRING:
            return self.text(f.name)
        if t == f.TYPE_BYTES:
            return st.binary(max_size=64)
        if t == f.TYPE_BOOL:
            return st.booleans()
        if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
            return st.floats(
                allow_nan=True, allow_infinity=True, width=64 if t == f.TYPE_DOUBLE else 32
            )
        if t == f.TYPE_ENUM:
            # Proto3 enums are open: any int32 arrives, known or not.
            assert f.enum_type is not None
            known = [v.number for v in f.enum_type.values]
            return st.one_of(
                st.sampled_from(known), st.integers(-(2**31), 2**31 - 1), st.just(known[-1] + 1)
            )
        lo, hi = INT_BOUNDS[t]
        return st.one_of(
            st.integers(lo, hi),
            st.sampled_from([lo, hi, -1, 0, 1, 1000, 10**6]).filter(lambda v: lo <= v <= hi),
        )

    def message(self, d: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        from google.protobuf import message_factory

        cls = message_factory.GetMessageClass(d)
        if d.full_name == "google.protobuf.Timestamp":
            return st.builds(
                lambda s, n: cls(seconds=s, nanos=n),
                st.integers(-(2**40), 2**40),
                st.integers(-(10**9), 10**9),
            )
        fields: dict[str, st.SearchStrategy[Any]] = {}
        for f in d.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                key, value = f.message_type.fields
                fields[f.name] = st.dictionaries(
                    self.scalar(key), self.scalar(value), max_size=4
                ) | st.dictionaries(
                    self.scalar(key), self.scalar(value), min_size=200, max_size=300
                )
                continue
            if f.message_type is not None:
                if depth > 4:
                    continue
                one = self.message(f.message_type, depth + 1)
            else:
                one = self.scalar(f)
            if f.is_repeated and depth == 0:
                # Long lists at the top only: nested ones multiply into minutes per example.
                fields[f.name] = st.lists(one, max_size=4) | st.lists(
                    one, min_size=100, max_size=150
                )
            elif f.is_repeated:
                fields[f.name] = st.lists(one, max_size=4)
            else:
                fields[f.name] = one
        names = list(fields)

        @st.composite
        def build(draw: st.DrawFn) -> Any:
            msg = cls()
            present = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
            for name in present:
                value = draw(fields[name])
                f = d.fields_by_name[name]
                try:
                    if f.message_type is not None and f.message_type.GetOptions().map_entry:
                        getattr(msg, name).update(value)
                    elif f.is_repeated:
                        getattr(msg, name).extend(value)
                    elif f.message_type is not None:
                        getattr(msg, name).CopyFrom(value)
                    else:
                        setattr(msg, name, value)
                except (ValueError, TypeError):
                    # Values protobuf itself refuses cannot be sent typed; the raw-bytes
                    # cases cover what the wire allows beyond them.
                    continue
            return msg

        return build()

    def request(self, rpc: Rpc) -> st.SearchStrategy[Any]:
        one = self.message(rpc.method.input_type)
        if rpc.method.client_streaming:
            return st.lists(one, min_size=1, max_size=3)
        return one


def _client_write_artifact(rpc: Rpc, got: Outcome, request: Any) -> bool:
    """Whether ``got`` is grpc-python's client-side INTERNAL for a stream the server ended.

    When a client stream carries a message over the server's 4 MiB limit, the server ends
    the call with RESOURCE_EXHAUSTED; if the client still has messages to write, the
    grpc-python client reports its failed write as INTERNAL "Internal error from Core"
    instead of the server's status. Nothing of that comes from our servers.
    """
    return (
        rpc.method.client_streaming
        and got.code == C.INTERNAL
        and got.message == "Internal error from Core"
        and any(m.ByteSize() > MAX_MESSAGE_BYTES for m in request[:-1])
    )


def _check(rpc: Rpc, got: Outcome, what: str) -> None:
    allowed = ALLOWED | ({C.DEADLINE_EXCEEDED} if rpc.name in ENDLESS else set())
    # RenderReport of formats that are still to come (HTML/PDF/CSV) is a deliberate answer.
    if got.code == C.UNIMPLEMENTED and got.reason == "FORMAT_NOT_AVAILABLE":
        return
    assert got.code in allowed, (
        f"{rpc.name} {what}: {got.code.name} {got.reason} ({got.message[:300]})"
    )
    if got.code == C.INVALID_ARGUMENT:
        assert got.violations > 0, f"{rpc.name} {what}: INVALID_ARGUMENT without BadRequest"


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Any],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    async with mesh_stack(
        new_database, temporal_env.client, token_for, tmp_path_factory.mktemp("fuzz")
    ) as m:
        yield m


@pytest.fixture(scope="module")
async def fuzz_world(mesh: Mesh) -> tuple[str, dict[str, list[str]]]:
    """An org with one of everything, so generated requests reach past the id lookups."""
    org = f"org-fuzz-{uuid.uuid4().hex[:8]}"
    meta = mesh.token_for(org, role="admin")
    delivery = mesh.reporting.delivery_stub
    Q = survey_pb2
    survey = (
        await delivery.CreateSurvey(
            dpb.CreateSurveyRequest(
                survey=Q.Survey(
                    title="Fuzz",
                    questions=[
                        Q.Question(id="nps", text="NPS", type=Q.QUESTION_TYPE_NPS),
                        Q.Question(
                            id="pick",
                            text="Pick",
                            type=Q.QUESTION_TYPE_SINGLE_CHOICE,
                            options=["a", "b"],
                        ),
                        Q.Question(
                            id="many",
                            text="Many",
                            type=Q.QUESTION_TYPE_MULTIPLE_CHOICE,
                            options=["x", "y"],
                        ),
                        Q.Question(id="rate", text="Rate", type=Q.QUESTION_TYPE_RATING),
                        Q.Question(id="num", text="Num", type=Q.QUESTION_TYPE_NUMBER),
                        Q.Question(id="free", text="Free", type=Q.QUESTION_TYPE_FREE_TEXT),
                    ],
                )
            ),
            metadata=meta,
            timeout=10,
        )
    ).survey
    await delivery.ImportResponses(
        iter(
            [
                dpb.ImportResponsesRequest(
                    survey_id=survey.id,
                    responses=[
                        response_pb2.Response(
                            id="r1",
                            completed=True,
                            answers=[response_pb2.Answer(question_id="nps", nps=7)],
                        )
                    ],
                )
            ]
        ),
        metadata=meta,
        timeout=10,
    )
    report = await mesh.reporting.generate(org, survey.id, role="admin")
    await mesh.reporting.complete(report.id)
    sent = await mesh.notification_stub.SendNotification(
        npb.SendNotificationRequest(
            user_id="alice",
            type="t",
            title="hello",
            channels=[npb_msg.CHANNEL_IN_APP],
            idempotency_key=uuid.uuid4().hex,
        ),
        metadata=meta,
        timeout=10,
    )
    known = {
        "survey_id": [survey.id],
        "survey_ids": [survey.id],
        "report_id": [report.id],
        "notification_id": [sent.notification.id],
        "question_id": ["nps", "pick", "many", "rate", "num", "free"],
        "user_id": ["alice"],
        "*_id": [survey.id, report.id],
    }
    return org, known


def _rpc_ids() -> list[str]:
    return [rpc.name for rpc in all_rpcs()]


@pytest.mark.parametrize("name", _rpc_ids())
async def test_generated_requests_get_only_client_answers(
    mesh: Mesh, fuzz_world: tuple[str, dict[str, list[str]]], name: str
) -> None:
    rpc = next(r for r in all_rpcs() if r.name == name)
    org, known = fuzz_world
    fuzzer = Fuzzer(known)
    loop = asyncio.get_running_loop()
    channel = mesh.channel(rpc.service)
    count = 0

    # Endless streams are read briefly: what matters is how they start.
    deadline = 0.5 if rpc.name in ENDLESS else 10.0

    async def one(request: Any, role: str) -> Outcome:
        return await call(
            channel, rpc, request, mesh.token_for(org, role=role), deadline=deadline, limit=3
        )

    # Hypothesis drives from a thread; the calls run on this loop, where the servers live.
    @settings(settings.get_profile("ci"))
    @given(request=fuzzer.request(rpc), role=st.sampled_from(ROLES))
    def run(request: Any, role: str) -> None:
        nonlocal count
        count += 1
        got = asyncio.run_coroutine_threadsafe(one(request, role), loop).result(timeout=60)
        if not _client_write_artifact(rpc, got, request):
            _check(rpc, got, f"{request!s:.300}")

    await asyncio.to_thread(run)
    TOTALS[name] = count
    print(f"{name}: {count} generated requests")


def _field_tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_cases(rpc: Rpc) -> dict[str, bytes]:
    """Wire bytes no well-behaved client sends: invalid UTF-8, truncation, 5 MB."""
    cases = {
        "truncated varint": b"\x08\xff",
        "length past the end": b"\x0a\x7fabc",
        "unknown wire type": b"\x0f\x00",
        "5 MB message": _field_tag(999, 2) + _varint(5 * 2**20) + b"x" * (5 * 2**20),
    }
    for f in rpc.method.input_type.fields:
        if f.type == f.TYPE_STRING:
            bad = b"\xff\xfe\xc3\x28 invalid utf-8"
            cases[f"invalid UTF-8 in {f.name}"] = _field_tag(f.number, 2) + _varint(len(bad)) + bad
        if f.message_type is not None and not f.message_type.full_name.startswith("google."):
            inner = next((g for g in f.message_type.fields if g.type == g.TYPE_STRING), None)
            if inner is not None:
                bad = b"\xed\xa0\x80"  # an encoded surrogate: invalid UTF-8
                body = _field_tag(inner.number, 2) + _varint(len(bad)) + bad
                cases[f"invalid UTF-8 in {f.name}.{inner.name}"] = (
                    _field_tag(f.number, 2) + _varint(len(body)) + body
                )
    return cases


async def test_raw_bytes_and_oversize_messages(
    mesh: Mesh, fuzz_world: tuple[str, dict[str, list[str]]]
) -> None:
    org, _ = fuzz_world
    total = 0
    failures = []
    for rpc in all_rpcs():
        for what, data in raw_cases(rpc).items():
            request: Any = [data] if rpc.method.client_streaming else data
            got = await call(
                mesh.channel(rpc.service),
                rpc,
                request,
                mesh.token_for(org, role="admin"),
                raw=True,
                deadline=10,
                limit=1,
            )
            total += 1
            try:
                _check(rpc, got, what)
                if what == "5 MB message":
                    assert got.code == C.RESOURCE_EXHAUSTED, f"{rpc.name} 5 MB: {got.code.name}"
                elif got.code not in (C.OK, C.DEADLINE_EXCEEDED):
                    # Undecodable input is the client's fault, said with a field violation.
                    assert got.code == C.INVALID_ARGUMENT, f"{rpc.name} {what}: {got.code.name}"
            except AssertionError as e:
                failures.append(str(e))
    TOTALS["raw"] = total
    assert not failures, "\n".join(failures)
    print(f"raw and oversize cases: {total}")


async def test_servers_still_serving_after_the_fuzzing(mesh: Mesh) -> None:
    for service, channel in mesh.channels.items():
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    print(f"fuzz totals: {sum(TOTALS.values())} requests ({TOTALS})")


# The request classes are imported so a renamed message breaks this file loudly.
_ = (rpb.GenerateReportRequest, report_pb2.ReportKind)
