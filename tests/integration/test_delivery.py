"""DeliveryService against a real PostgreSQL and a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from delivery_svc.server import create_server
from surveymesh.auth import TokenAuthority
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.errors import error_details
from surveymesh.grpcserver import RunningService
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.integration

QT = survey_pb2.QuestionType
Meta = tuple[tuple[str, str], ...]
TokenFor = Callable[..., Meta]


@pytest.fixture(scope="module")
async def service(
    new_database: Callable[..., object], authority: TokenAuthority
) -> AsyncIterator[RunningService]:
    dsn = await new_database("delivery")  # type: ignore[misc]
    settings = Settings(database_url=dsn, jwt_secret=TEST_SECRET)
    running = await create_server(settings, authority=authority, address="localhost:0")
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="module")
async def stub(service: RunningService) -> AsyncIterator[pb_grpc.DeliveryServiceStub]:
    async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
        yield pb_grpc.DeliveryServiceStub(channel)


def make_survey(title: str = "Customer pulse") -> survey_pb2.Survey:
    """A survey with every question type."""
    return survey_pb2.Survey(
        title=title,
        description="Quarterly customer survey",
        questions=[
            survey_pb2.Question(
                id="plan",
                text="Which plan?",
                type=QT.QUESTION_TYPE_SINGLE_CHOICE,
                options=["free", "pro", "team"],
                required=True,
            ),
            survey_pb2.Question(
                id="features",
                text="What do you use?",
                type=QT.QUESTION_TYPE_MULTIPLE_CHOICE,
                options=["reports", "exports", "alerts"],
            ),
            survey_pb2.Question(id="sat", text="Satisfaction", type=QT.QUESTION_TYPE_RATING),
            survey_pb2.Question(id="nps", text="Recommend?", type=QT.QUESTION_TYPE_NPS),
            survey_pb2.Question(
                id="seats", text="Seats", type=QT.QUESTION_TYPE_NUMBER, min_value=1, max_value=500
            ),
            survey_pb2.Question(id="why", text="Why?", type=QT.QUESTION_TYPE_FREE_TEXT),
        ],
    )


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=1_700_000_000 + seconds)


def response(rid: str, *, completed: bool = True, **overrides: object) -> response_pb2.Response:
    """A valid response answering every question, unless ``overrides`` say otherwise."""
    answers = [
        response_pb2.Answer(question_id="plan", choice="pro"),
        response_pb2.Answer(
            question_id="features", choices=response_pb2.ChoiceList(values=["reports"])
        ),
        response_pb2.Answer(question_id="sat", rating=4),
        response_pb2.Answer(question_id="nps", nps=9),
        response_pb2.Answer(question_id="seats", number=12),
        response_pb2.Answer(question_id="why", text="fast exports"),
    ]
    r = response_pb2.Response(
        id=rid,
        start_time=ts(0),
        completed=completed,
        attributes={"region": "emea"},
        answers=overrides.pop("answers", answers),  # type: ignore[arg-type]
    )
    if completed:
        r.complete_time.CopyFrom(ts(60))
    for name, value in overrides.items():
        setattr(r, name, value)
    return r


async def create(
    stub: pb_grpc.DeliveryServiceStub, meta: Meta, title: str = "Customer pulse"
) -> str:
    reply = await stub.CreateSurvey(
        pb.CreateSurveyRequest(survey=make_survey(title)), metadata=meta
    )
    return reply.survey.id


async def do_import(
    stub: pb_grpc.DeliveryServiceStub,
    meta: Meta,
    survey_id: str,
    batches: Sequence[Sequence[response_pb2.Response]],
) -> pb.ImportResponsesResponse:
    async def messages() -> AsyncIterator[pb.ImportResponsesRequest]:
        for i, batch in enumerate(batches):
            yield pb.ImportResponsesRequest(survey_id=survey_id if i == 0 else "", responses=batch)

    return await stub.ImportResponses(messages(), metadata=meta)


async def stream_all(
    stub: pb_grpc.DeliveryServiceStub, meta: Meta, **request: object
) -> list[pb.StreamResponsesResponse]:
    call = stub.StreamResponses(pb.StreamResponsesRequest(**request), metadata=meta)  # type: ignore[arg-type]
    return [message async for message in call]


# -- surveys -------------------------------------------------------------------------


async def test_create_get_and_idempotent_retry(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org, user="ana", role="analyst")
    first = await stub.CreateSurvey(
        pb.CreateSurveyRequest(survey=make_survey(), request_id="req-1"), metadata=meta
    )
    survey = first.survey
    assert uuid.UUID(survey.id)
    assert (survey.org_id, survey.creator, survey.response_count) == (org, "ana", 0)
    assert [q.id for q in survey.questions] == ["plan", "features", "sat", "nps", "seats", "why"]
    assert survey.questions[4].min_value == 1 and survey.questions[4].max_value == 500
    assert survey.create_time.seconds > 0

    again = await stub.CreateSurvey(
        pb.CreateSurveyRequest(survey=make_survey("other title"), request_id="req-1"), metadata=meta
    )
    assert again.survey == survey

    got = await stub.GetSurvey(pb.GetSurveyRequest(survey_id=survey.id), metadata=meta)
    assert got.survey == survey


async def test_list_surveys_newest_first_with_paging(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org, role="viewer")
    writer = token_for(org)
    ids = [await create(stub, writer, f"survey {i}") for i in range(5)]
    # Another org's surveys never show up.
    await create(stub, token_for(f"{org}-other"))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListSurveys(
            pb.ListSurveysRequest(page_size=2, page_token=token), metadata=meta
        )
        pages += 1
        seen += [s.id for s in page.surveys]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    assert pages == 3

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListSurveys(pb.ListSurveysRequest(page_token="garbage!"), metadata=meta)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err.value).reason == "INVALID_PAGE_TOKEN"

    # A token is bound to the org that got it.
    first = await stub.ListSurveys(pb.ListSurveysRequest(page_size=1), metadata=meta)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListSurveys(
            pb.ListSurveysRequest(page_token=first.next_page_token),
            metadata=token_for(f"{org}-other"),
        )
    assert error_details(err.value).reason == "INVALID_PAGE_TOKEN"


async def test_create_survey_validation(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    survey = make_survey()
    survey.title = ""
    survey.questions[0].options[:] = ["only one"]
    survey.questions[2].options.append("nope")
    survey.questions[3].id = "plan"
    survey.questions[4].min_value = 10
    survey.questions[4].max_value = 5
    survey.questions[5].type = QT.QUESTION_TYPE_UNSPECIFIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSurvey(pb.CreateSurveyRequest(survey=survey), metadata=token_for(org))
    details = error_details(err.value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_SURVEY"
    assert details.domain == "surveymesh.delivery"
    assert {(v.field, v.reason) for v in details.violations} == {
        ("survey.title", "REQUIRED"),
        ("survey.questions[0].options", "INVALID_OPTIONS"),
        ("survey.questions[2].options", "OPTIONS_NOT_ALLOWED"),
        ("survey.questions[3].id", "DUPLICATE_QUESTION_ID"),
        ("survey.questions[4].max_value", "INVALID_RANGE"),
        ("survey.questions[5].type", "INVALID_QUESTION_TYPE"),
    }

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSurvey(pb.CreateSurveyRequest(), metadata=token_for(org))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in error_details(err.value).violations] == [
        ("survey", "REQUIRED")
    ]


async def test_get_survey_bad_id(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSurvey(pb.GetSurveyRequest(survey_id="not-a-uuid"), metadata=token_for(org))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err.value).reason == "INVALID_SURVEY_ID"
    assert [v.field for v in error_details(err.value).violations] == ["survey_id"]


async def test_viewer_cannot_create_or_import(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    viewer = token_for(org, role="viewer")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSurvey(pb.CreateSurveyRequest(survey=make_survey()), metadata=viewer)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(err.value).reason == "ROLE_NOT_PERMITTED"

    survey_id = await create(stub, token_for(org))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await do_import(stub, viewer, survey_id, [[response("r1")]])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(err.value).reason == "ROLE_NOT_PERMITTED"


async def test_missing_or_bad_token_is_unauthenticated(stub: pb_grpc.DeliveryServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListSurveys(pb.ListSurveysRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(err.value).reason == "MISSING_CREDENTIALS"

    forged = TokenAuthority("another-secret-that-is-at-least-32-bytes").mint(
        org="o", user="u", roles=["admin"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListSurveys(
            pb.ListSurveysRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(err.value).reason == "TOKEN_BAD_SIGNATURE"


# -- import --------------------------------------------------------------------------


async def test_import_mixed_rows(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org)
    survey_id = await create(stub, meta)
    bad_rating = response("r-bad-rating")
    bad_rating.answers[2].rating = 6
    bad_choice = response("r-bad-choice")
    bad_choice.answers[1].choices.values[:] = ["reports", "teleport"]
    wrong_type = response("r-wrong-type")
    wrong_type.answers[3].ClearField("nps")
    wrong_type.answers[3].text = "ten"
    unknown_q = response("r-unknown")
    unknown_q.answers.add(question_id="ghost", rating=1)
    missing_required = response(
        "r-missing", answers=[response_pb2.Answer(question_id="sat", rating=3)]
    )
    no_complete_time = response("r-no-complete")
    no_complete_time.ClearField("complete_time")
    backwards = response("r-backwards")
    backwards.start_time.CopyFrom(ts(100))
    bad_id = response("bad id with spaces")
    out_of_bounds = response("r-seats")
    out_of_bounds.answers[4].number = 501
    twice = response("r-twice")
    twice.answers.add(question_id="sat", rating=2)
    batches = [
        [response("r1"), bad_rating, response("r2"), bad_choice, wrong_type],
        [unknown_q, response("r3", completed=False, answers=[]), missing_required, response("r1")],
        [
            no_complete_time,
            backwards,
            bad_id,
            out_of_bounds,
            twice,
            response("r3"),
            response("r4"),
            response("r4"),
        ],
    ]
    result = await do_import(stub, meta, survey_id, batches)

    assert (result.accepted_count, result.duplicate_count, result.rejected_count) == (4, 3, 10)
    assert [(r.row, r.response_id, r.field, r.reason) for r in result.rejections] == [
        (1, "r-bad-rating", "answers[2].rating", "ANSWER_OUT_OF_RANGE"),
        (3, "r-bad-choice", "answers[1].choices.values[1]", "INVALID_CHOICE"),
        (4, "r-wrong-type", "answers[3].text", "ANSWER_TYPE_MISMATCH"),
        (5, "r-unknown", "answers[6].question_id", "UNKNOWN_QUESTION"),
        (7, "r-missing", "answers", "REQUIRED_QUESTION_UNANSWERED"),
        (9, "r-no-complete", "complete_time", "COMPLETE_TIME_REQUIRED"),
        (10, "r-backwards", "complete_time", "COMPLETE_BEFORE_START"),
        (11, "bad id with spaces", "id", "INVALID_RESPONSE_ID"),
        (12, "r-seats", "answers[4].number", "ANSWER_OUT_OF_RANGE"),
        (13, "r-twice", "answers[6].question_id", "DUPLICATE_ANSWER"),
    ]
    assert all(r.description for r in result.rejections)

    survey = (await stub.GetSurvey(pb.GetSurveyRequest(survey_id=survey_id), metadata=meta)).survey
    assert survey.response_count == 4

    # Re-sending the whole stream stores nothing new.
    again = await do_import(stub, meta, survey_id, batches)
    assert (again.accepted_count, again.duplicate_count, again.rejected_count) == (0, 7, 10)
    survey = (await stub.GetSurvey(pb.GetSurveyRequest(survey_id=survey_id), metadata=meta)).survey
    assert survey.response_count == 4

    access = await stub.CheckSurveyAccess(
        pb.CheckSurveyAccessRequest(survey_id=survey_id), metadata=meta
    )
    assert (access.allowed, access.reason, access.survey_title) == (True, "", "Customer pulse")
    assert (access.question_count, access.response_count) == (6, 4)

    stored = [r for m in await stream_all(stub, meta, survey_id=survey_id) for r in m.responses]
    assert [r.id for r in stored] == ["r1", "r2", "r3", "r4"]
    # Stored as sent, with the survey id set by the server.
    expected = response("r2")
    expected.survey_id = survey_id
    assert stored[1] == expected
    assert stored[2].completed is False and not stored[2].answers


async def test_import_stream_level_errors(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org)
    survey_id = await create(stub, meta)
    other_id = await create(stub, meta, "other")

    async def run(messages: list[pb.ImportResponsesRequest]) -> grpc.aio.AioRpcError:
        async def gen() -> AsyncIterator[pb.ImportResponsesRequest]:
            for m in messages:
                yield m

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ImportResponses(gen(), metadata=meta)
        return err.value

    err = await run([pb.ImportResponsesRequest(responses=[response("x1")])])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err).reason == "SURVEY_ID_REQUIRED"
    assert [v.field for v in error_details(err).violations] == ["survey_id"]

    err = await run([])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err).reason == "SURVEY_ID_REQUIRED"

    # The first batch commits before the second message turns out to name another survey.
    err = await run(
        [
            pb.ImportResponsesRequest(survey_id=survey_id, responses=[response("kept")]),
            pb.ImportResponsesRequest(survey_id=other_id, responses=[response("lost")]),
        ]
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err).reason == "SURVEY_ID_MISMATCH"
    assert [v.field for v in error_details(err).violations] == ["survey_id"]

    err = await run(
        [
            pb.ImportResponsesRequest(survey_id=survey_id, responses=[response("also-kept")]),
            pb.ImportResponsesRequest(responses=[response(f"big-{i}") for i in range(5001)]),
        ]
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err).reason == "BATCH_TOO_LARGE"
    assert [v.field for v in error_details(err).violations] == ["responses"]

    stored = [r.id for m in await stream_all(stub, meta, survey_id=survey_id) for r in m.responses]
    assert stored == ["also-kept", "kept"]


# -- streaming -----------------------------------------------------------------------


async def test_stream_batches_resume_and_snapshot(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org)
    survey_id = await create(stub, meta)
    ids = [f"resp-{i:04d}" for i in range(250)]
    # Imported out of order, in several messages: the stream still comes back in id order.
    shuffled = ids[1::2] + ids[0::2]
    rows = [response(rid, completed=i % 3 != 0) for i, rid in enumerate(shuffled)]
    result = await do_import(stub, meta, survey_id, [rows[:100], rows[100:200], rows[200:]])
    assert result.accepted_count == 250

    messages = await stream_all(stub, meta, survey_id=survey_id, batch_size=100)
    assert [len(m.responses) for m in messages] == [100, 100, 50]
    assert [r.id for m in messages for r in m.responses] == ids
    watermark = messages[0].snapshot_watermark
    assert watermark > 0
    assert all(m.snapshot_watermark == watermark and m.total_count == 250 for m in messages)

    # A batch boundary at the very end sends no trailing empty message.
    assert [
        len(m.responses) for m in await stream_all(stub, meta, survey_id=survey_id, batch_size=125)
    ] == [
        125,
        125,
    ]
    # The default batch size is 500.
    assert [len(m.responses) for m in await stream_all(stub, meta, survey_id=survey_id)] == [250]

    # More imports after the snapshot, including ids that sort inside the resumed range.
    later = await do_import(
        stub,
        meta,
        survey_id,
        [[response("resp-0100a"), response("zzz-late"), response("aaa-early")]],
    )
    assert later.accepted_count == 3

    resumed = await stream_all(
        stub,
        meta,
        survey_id=survey_id,
        after_response_id=ids[99],
        snapshot_watermark=watermark,
        batch_size=60,
    )
    assert [r.id for m in resumed for r in m.responses] == ids[100:]
    assert [len(m.responses) for m in resumed] == [60, 60, 30]
    assert all(m.snapshot_watermark == watermark and m.total_count == 250 for m in resumed)

    fresh = await stream_all(stub, meta, survey_id=survey_id, batch_size=5000)
    assert fresh[0].snapshot_watermark > watermark
    assert fresh[0].total_count == 253
    assert [r.id for r in fresh[0].responses] == sorted(
        [*ids, "resp-0100a", "zzz-late", "aaa-early"]
    )

    completed = await stream_all(
        stub, meta, survey_id=survey_id, snapshot_watermark=watermark, completed_only=True
    )
    expected_completed = sorted(rid for i, rid in enumerate(shuffled) if i % 3 != 0)
    assert [r.id for m in completed for r in m.responses] == expected_completed
    assert all(r.completed for m in completed for r in m.responses)
    assert completed[0].total_count == len(expected_completed)


async def test_stream_empty_survey_and_bad_requests(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org, role="viewer")
    survey_id = await create(stub, token_for(org))
    messages = await stream_all(stub, meta, survey_id=survey_id)
    assert len(messages) == 1
    assert (len(messages[0].responses), messages[0].total_count) == (0, 0)
    assert messages[0].snapshot_watermark > 0

    cases: list[tuple[dict[str, object], str, str]] = [
        ({"batch_size": 5001}, "INVALID_BATCH_SIZE", "batch_size"),
        ({"batch_size": -1}, "INVALID_BATCH_SIZE", "batch_size"),
        ({"after_response_id": "has space"}, "INVALID_RESPONSE_ID", "after_response_id"),
        (
            {"snapshot_watermark": messages[0].snapshot_watermark + 1_000_000},
            "INVALID_SNAPSHOT_WATERMARK",
            "snapshot_watermark",
        ),
    ]
    for request, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream_all(stub, meta, survey_id=survey_id, **request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert error_details(err.value).reason == reason
        assert [v.field for v in error_details(err.value).violations] == [field]


# -- tenancy and access --------------------------------------------------------------


async def _failure(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), error_details(err.value).reason


async def test_foreign_survey_looks_exactly_like_a_missing_one(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    owner = token_for(org)
    survey_id = await create(stub, owner)
    await do_import(stub, owner, survey_id, [[response("r1")]])
    stranger = token_for(f"{org}-stranger", role="admin")
    missing = str(uuid.uuid4())

    for target in (survey_id, missing):
        outcomes = [
            await _failure(
                stub.GetSurvey(pb.GetSurveyRequest(survey_id=target), metadata=stranger)
            ),
            await _failure(stream_all(stub, stranger, survey_id=target)),
            await _failure(do_import(stub, stranger, target, [[response("r2")]])),
            await _failure(
                stub.CheckSurveyAccess(
                    pb.CheckSurveyAccessRequest(survey_id=target), metadata=stranger
                )
            ),
        ]
        assert outcomes == [(grpc.StatusCode.NOT_FOUND, "SURVEY_NOT_FOUND")] * 4

    # The stranger's attempt stored nothing in the owner's survey.
    stored = [r.id for m in await stream_all(stub, owner, survey_id=survey_id) for r in m.responses]
    assert stored == ["r1"]


async def test_check_survey_access_roles_and_subject(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    survey_id = await create(stub, token_for(org))
    request = pb.CheckSurveyAccessRequest(survey_id=survey_id)
    for role in ("viewer", "analyst", "admin", "service"):
        reply = await stub.CheckSurveyAccess(request, metadata=token_for(org, role=role))
        assert (reply.allowed, reply.reason, reply.question_count) == (True, "", 6), role

    as_user = pb.CheckSurveyAccessRequest(survey_id=survey_id, subject="bob")
    reply = await stub.CheckSurveyAccess(as_user, metadata=token_for(org, role="service"))
    assert (reply.allowed, reply.survey_title) == (True, "Customer pulse")

    for role in ("viewer", "analyst", "admin"):
        code, reason = await _failure(
            stub.CheckSurveyAccess(as_user, metadata=token_for(org, role=role))
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SUBJECT_NOT_ALLOWED")

    code, reason = await _failure(
        stub.CheckSurveyAccess(
            pb.CheckSurveyAccessRequest(survey_id="nope"), metadata=token_for(org)
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SURVEY_ID")


async def test_import_of_undecodable_message_is_invalid_argument(
    stub: pb_grpc.DeliveryServiceStub,
    service: RunningService,
    token_for: TokenFor,
    org: str,
) -> None:
    meta = token_for(org)
    survey_id = await create(stub, meta)
    first = pb.ImportResponsesRequest(survey_id=survey_id, responses=[response("ok-1")])
    # A Response whose id is not UTF-8: the request does not decode.
    broken = b"\x12\x04\x0a\x02\xff\xfe"
    async with grpc.aio.insecure_channel(f"localhost:{service.port}") as channel:
        call = channel.stream_unary(
            "/surveymesh.delivery.v1.DeliveryService/ImportResponses",
            request_serializer=None,
            response_deserializer=pb.ImportResponsesResponse.FromString,
        )

        async def messages() -> AsyncIterator[bytes]:
            yield first.SerializeToString()
            yield broken

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(messages(), metadata=meta)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err.value).reason == "MALFORMED_MESSAGE"
    assert [v.field for v in error_details(err.value).violations] == ["responses"]
    # The message before it was committed, as with any stream-level error.
    stored = [r.id for m in await stream_all(stub, meta, survey_id=survey_id) for r in m.responses]
    assert stored == ["ok-1"]


async def test_import_with_survey_id_in_rows_and_concurrent_duplicates(
    stub: pb_grpc.DeliveryServiceStub, token_for: TokenFor, org: str
) -> None:
    meta = token_for(org)
    survey_id = await create(stub, meta)
    # Rows naming another survey id are stored with the stream's survey id.
    rows = [response(f"c-{i:03d}", survey_id="something else") for i in range(300)]
    results = await asyncio.gather(
        *(do_import(stub, meta, survey_id, [rows[:200], rows[100:]]) for _ in range(3))
    )
    assert sum(r.accepted_count for r in results) == 300
    assert sum(r.duplicate_count for r in results) == 3 * 400 - 300
    stored = [r for m in await stream_all(stub, meta, survey_id=survey_id) for r in m.responses]
    assert [r.id for r in stored] == [f"c-{i:03d}" for i in range(300)]
    assert {r.survey_id for r in stored} == {survey_id}
    survey = (await stub.GetSurvey(pb.GetSurveyRequest(survey_id=survey_id), metadata=meta)).survey
    assert survey.response_count == 300
