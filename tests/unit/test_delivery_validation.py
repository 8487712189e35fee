"""Unit tests of DeliveryService's pure validation functions."""

from __future__ import annotations

import math

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from delivery_svc import validation
from delivery_svc.validation import ResponseChecker, RowProblem
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.errors import InvalidArgument

QT = survey_pb2.QuestionType


def questions() -> list[survey_pb2.Question]:
    return [
        survey_pb2.Question(
            id="plan",
            text="Plan?",
            type=QT.QUESTION_TYPE_SINGLE_CHOICE,
            options=["a", "b"],
            required=True,
        ),
        survey_pb2.Question(
            id="multi",
            text="Which?",
            type=QT.QUESTION_TYPE_MULTIPLE_CHOICE,
            options=["x", "y", "z"],
        ),
        survey_pb2.Question(id="rate", text="Rate", type=QT.QUESTION_TYPE_RATING),
        survey_pb2.Question(id="nps", text="NPS", type=QT.QUESTION_TYPE_NPS),
        survey_pb2.Question(
            id="num", text="Num", type=QT.QUESTION_TYPE_NUMBER, min_value=0, max_value=10
        ),
        survey_pb2.Question(id="free", text="Why", type=QT.QUESTION_TYPE_FREE_TEXT),
    ]


def survey(**kw: object) -> survey_pb2.Survey:
    return survey_pb2.Survey(title="T", questions=questions(), **kw)  # type: ignore[arg-type]


def violations(
    s: survey_pb2.Survey, *, present: bool = True, request_id: str = ""
) -> set[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as err:
        validation.validate_survey(s, present, request_id)
    assert err.value.reason == "INVALID_SURVEY"
    return {(v.field, v.reason) for v in err.value.violations}


def test_valid_survey_passes() -> None:
    validation.validate_survey(survey(), True, "req-1")


def test_survey_envelope_limits() -> None:
    assert violations(survey_pb2.Survey(), present=False) == {("survey", "REQUIRED")}
    s = survey()
    s.title = "x" * 201
    s.description = "d" * 2001
    assert violations(s, request_id="r" * 129) == {
        ("request_id", "TOO_LONG"),
        ("survey.title", "TOO_LONG"),
        ("survey.description", "TOO_LONG"),
    }
    assert violations(survey_pb2.Survey(title="  ")) == {
        ("survey.title", "REQUIRED"),
        ("survey.questions", "QUESTION_COUNT_OUT_OF_RANGE"),
    }
    many = survey_pb2.Survey(
        title="T",
        questions=[
            survey_pb2.Question(id=f"q{i}", text="t", type=QT.QUESTION_TYPE_RATING)
            for i in range(201)
        ],
    )
    assert violations(many) == {("survey.questions", "QUESTION_COUNT_OUT_OF_RANGE")}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda q: setattr(q[0], "id", "bad id!"),
            ("survey.questions[0].id", "INVALID_QUESTION_ID"),
        ),
        (
            lambda q: setattr(q[0], "id", "x" * 65),
            ("survey.questions[0].id", "INVALID_QUESTION_ID"),
        ),
        (
            lambda q: setattr(q[1], "id", "plan"),
            ("survey.questions[1].id", "DUPLICATE_QUESTION_ID"),
        ),
        (lambda q: setattr(q[2], "text", ""), ("survey.questions[2].text", "REQUIRED")),
        (lambda q: setattr(q[2], "text", "t" * 1001), ("survey.questions[2].text", "TOO_LONG")),
        (lambda q: setattr(q[2], "type", 0), ("survey.questions[2].type", "INVALID_QUESTION_TYPE")),
        (
            lambda q: setattr(q[2], "type", 99),
            ("survey.questions[2].type", "INVALID_QUESTION_TYPE"),
        ),
        (lambda q: q[0].options.pop(), ("survey.questions[0].options", "INVALID_OPTIONS")),
        (
            lambda q: q[1].options.extend(str(i) for i in range(98)),
            ("survey.questions[1].options", "INVALID_OPTIONS"),
        ),
        (lambda q: q[1].options.append(""), ("survey.questions[1].options[3]", "INVALID_OPTIONS")),
        (
            lambda q: q[1].options.append("x"),
            ("survey.questions[1].options[3]", "DUPLICATE_OPTION"),
        ),
        (
            lambda q: q[3].options.append("x"),
            ("survey.questions[3].options", "OPTIONS_NOT_ALLOWED"),
        ),
        (
            lambda q: setattr(q[4], "min_value", 11),
            ("survey.questions[4].max_value", "INVALID_RANGE"),
        ),
        (
            lambda q: setattr(q[4], "max_value", math.inf),
            ("survey.questions[4].max_value", "INVALID_BOUND"),
        ),
        (
            lambda q: setattr(q[4], "min_value", math.nan),
            ("survey.questions[4].min_value", "INVALID_BOUND"),
        ),
    ],
)
def test_question_problems(mutate: object, expected: tuple[str, str]) -> None:
    s = survey()
    mutate(s.questions)  # type: ignore[operator]
    assert violations(s) == {expected}


def test_bounds_on_non_number_questions_are_ignored_and_dropped() -> None:
    s = survey()
    s.questions[2].min_value = 9
    s.questions[2].max_value = 1
    validation.validate_survey(s, True, "")
    stored = validation.normalized_questions(s)
    assert not stored[2].HasField("min_value") and not stored[2].HasField("max_value")
    assert stored[4].min_value == 0 and stored[4].max_value == 10


def test_parse_survey_id() -> None:
    sid = "6f1c1d9a-7c1e-4a53-9d37-0a3f6b1d2e4f"
    assert str(validation.parse_survey_id(sid)) == sid
    for bad, reason in [
        ("", "SURVEY_ID_REQUIRED"),
        ("abc", "INVALID_SURVEY_ID"),
        ("{" + sid + "}", "INVALID_SURVEY_ID"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            validation.parse_survey_id(bad)
        assert err.value.reason == reason
        assert [v.field for v in err.value.violations] == ["survey_id"]


def test_stream_batch_size_and_import_batch() -> None:
    assert validation.stream_batch_size(0) == 500
    assert validation.stream_batch_size(5000) == 5000
    for bad in (-1, 5001):
        with pytest.raises(InvalidArgument) as err:
            validation.stream_batch_size(bad)
        assert err.value.reason == "INVALID_BATCH_SIZE"
    validation.check_import_batch(0, 5000)
    with pytest.raises(InvalidArgument) as err:
        validation.check_import_batch(3, 5001)
    assert err.value.reason == "BATCH_TOO_LARGE"


def test_response_ids() -> None:
    assert validation.is_response_id("a.b:c-d_9")
    assert validation.is_response_id("x" * 128)
    assert not validation.is_response_id("")
    assert not validation.is_response_id("x" * 129)
    assert not validation.is_response_id("a/b")
    validation.check_after_response_id("")
    with pytest.raises(InvalidArgument):
        validation.check_after_response_id("a b")


def good() -> response_pb2.Response:
    return response_pb2.Response(
        id="r1",
        completed=True,
        start_time=Timestamp(seconds=100),
        complete_time=Timestamp(seconds=200),
        attributes={"region": "emea"},
        answers=[
            response_pb2.Answer(question_id="plan", choice="a"),
            response_pb2.Answer(
                question_id="multi", choices=response_pb2.ChoiceList(values=["x", "z"])
            ),
            response_pb2.Answer(question_id="rate", rating=5),
            response_pb2.Answer(question_id="nps", nps=0),
            response_pb2.Answer(question_id="num", number=10.0),
            response_pb2.Answer(question_id="free", text="ok"),
        ],
    )


CHECKER = ResponseChecker(questions())


def problem(r: response_pb2.Response) -> tuple[str, str] | None:
    p = CHECKER.check(r)
    if p is not None:
        assert isinstance(p, RowProblem) and p.description
        return p.field, p.reason
    return None


def test_valid_responses_pass() -> None:
    assert problem(good()) is None
    # Incomplete responses may skip required questions and have no complete time.
    assert problem(response_pb2.Response(id="r2")) is None


def _set(field: str, value: object) -> object:
    def apply(r: response_pb2.Response) -> None:
        setattr(r, field, value)

    return apply


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("id", ""), ("id", "INVALID_RESPONSE_ID")),
        (_set("id", "has space"), ("id", "INVALID_RESPONSE_ID")),
        (_set("id", "x" * 129), ("id", "INVALID_RESPONSE_ID")),
        (
            lambda r: setattr(r.answers[2], "rating", 0),
            ("answers[2].rating", "ANSWER_OUT_OF_RANGE"),
        ),
        (
            lambda r: setattr(r.answers[2], "rating", 6),
            ("answers[2].rating", "ANSWER_OUT_OF_RANGE"),
        ),
        (lambda r: setattr(r.answers[3], "nps", 11), ("answers[3].nps", "ANSWER_OUT_OF_RANGE")),
        (lambda r: setattr(r.answers[3], "nps", -1), ("answers[3].nps", "ANSWER_OUT_OF_RANGE")),
        (
            lambda r: setattr(r.answers[4], "number", 10.5),
            ("answers[4].number", "ANSWER_OUT_OF_RANGE"),
        ),
        (
            lambda r: setattr(r.answers[4], "number", math.nan),
            ("answers[4].number", "ANSWER_OUT_OF_RANGE"),
        ),
        (
            lambda r: setattr(r.answers[4], "number", -math.inf),
            ("answers[4].number", "ANSWER_OUT_OF_RANGE"),
        ),
        (lambda r: setattr(r.answers[0], "choice", "c"), ("answers[0].choice", "INVALID_CHOICE")),
        (
            lambda r: r.answers[1].choices.values.append("q"),
            ("answers[1].choices.values[2]", "INVALID_CHOICE"),
        ),
        (
            lambda r: r.answers[1].choices.values.append("x"),
            ("answers[1].choices.values[2]", "DUPLICATE_CHOICE"),
        ),
        (
            lambda r: r.answers[1].choices.ClearField("values"),
            ("answers[1].choices.values", "CHOICES_EMPTY"),
        ),
        (lambda r: setattr(r.answers[5], "text", ""), ("answers[5].text", "TEXT_EMPTY")),
        (
            lambda r: setattr(r.answers[5], "text", "t" * 10_001),
            ("answers[5].text", "TEXT_TOO_LONG"),
        ),
        (
            lambda r: setattr(r.answers[5], "rating", 3),
            ("answers[5].rating", "ANSWER_TYPE_MISMATCH"),
        ),
        (lambda r: r.answers[5].ClearField("value"), ("answers[5]", "ANSWER_VALUE_MISSING")),
        (
            lambda r: r.answers.add(question_id="nope", rating=1),
            ("answers[6].question_id", "UNKNOWN_QUESTION"),
        ),
        (
            lambda r: r.answers.add(question_id="rate", rating=1),
            ("answers[6].question_id", "DUPLICATE_ANSWER"),
        ),
        (lambda r: r.ClearField("complete_time"), ("complete_time", "COMPLETE_TIME_REQUIRED")),
        (
            lambda r: setattr(r.complete_time, "seconds", 99),
            ("complete_time", "COMPLETE_BEFORE_START"),
        ),
        (lambda r: setattr(r.start_time, "nanos", -1), ("start_time", "INVALID_TIMESTAMP")),
        (
            lambda r: setattr(r.complete_time, "seconds", 10**12),
            ("complete_time", "INVALID_TIMESTAMP"),
        ),
        (lambda r: r.answers.pop(0), ("answers", "REQUIRED_QUESTION_UNANSWERED")),
        (
            lambda r: r.attributes.update({f"k{i}": "v" for i in range(50)}),
            ("attributes", "TOO_MANY_ATTRIBUTES"),
        ),
        (lambda r: r.attributes.update({"": "v"}), ('attributes[""]', "INVALID_ATTRIBUTE_KEY")),
        (
            lambda r: r.attributes.update({"k" * 65: "v"}),
            (f'attributes["{"k" * 65}"]', "INVALID_ATTRIBUTE_KEY"),
        ),
        (
            lambda r: r.attributes.update({"plan": "v" * 257}),
            ('attributes["plan"]', "ATTRIBUTE_VALUE_TOO_LONG"),
        ),
    ],
)
def test_response_problems(mutate: object, expected: tuple[str, str]) -> None:
    r = good()
    mutate(r)  # type: ignore[operator]
    assert problem(r) == expected


def test_response_limits_are_inclusive() -> None:
    r = good()
    r.answers[5].text = "t" * 10_000
    r.attributes.clear()
    r.attributes.update(
        {("k" * 63 + str(i % 10)) if i < 10 else f"k{i}": "v" * 256 for i in range(50)}
    )
    r.complete_time.CopyFrom(r.start_time)
    assert problem(r) is None


def test_unbounded_number_question_takes_any_finite_number() -> None:
    checker = ResponseChecker([survey_pb2.Question(id="n", text="n", type=QT.QUESTION_TYPE_NUMBER)])
    r = response_pb2.Response(id="r", answers=[response_pb2.Answer(question_id="n", number=-1e300)])
    assert checker.check(r) is None
    r.answers[0].number = math.inf
    found = checker.check(r)
    assert found is not None
    assert (found.field, found.reason) == ("answers[0].number", "ANSWER_OUT_OF_RANGE")
