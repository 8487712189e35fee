"""CSV exports of Google Forms, SurveyMonkey, Typeform and Qualtrics → survey + responses.

The fixtures under tests/fixtures/csv/ are synthetic files in each tool's documented export
layout. Every survey and response produced here is also run through DeliveryService's own
validation, so "inferred" means "accepted by the server", not just "parsed".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from delivery_svc.validation import ResponseChecker, validate_survey
from surveymesh.csv_import import (
    CsvImport,
    CsvImportError,
    Layout,
    Mapping,
    detect_layout,
    infer_type,
    load_mapping,
    parse_csv,
    parse_timestamp,
    read_table,
)
from surveymesh.delivery.v1 import survey_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"
QT = survey_pb2.QuestionType


def load(name: str, mapping: Mapping | None = None, **kw: object) -> CsvImport:
    return parse_csv((FIXTURES / f"{name}.csv").read_text(encoding="utf-8"), mapping, **kw)  # type: ignore[arg-type]


def types(result: CsvImport) -> dict[str, int]:
    return {q.id: q.type for q in result.plan.questions}


def server_problems(result: CsvImport) -> dict[int, str]:
    """What DeliveryService would refuse: CSV line → reason."""
    survey = result.plan.survey()
    validate_survey(survey, True, "")
    checker = ResponseChecker(survey.questions)
    out = {}
    for i, r in enumerate(result.responses):
        problem = checker.check(r)
        if problem is not None:
            out[result.line_of(i)] = problem.reason
    return out


def test_google_forms_layout_types_and_line_numbers() -> None:
    result = load("google_forms")
    assert result.plan.layout is Layout.GOOGLE_FORMS
    assert types(result) == {
        "how_likely_are_you_to_recommend_acme_to_a_friend": QT.QUESTION_TYPE_NPS,
        "how_satisfied_are_you_overall": QT.QUESTION_TYPE_RATING,
        "which_plan_are_you_on": QT.QUESTION_TYPE_SINGLE_CHOICE,
        "which_features_do_you_use": QT.QUESTION_TYPE_MULTIPLE_CHOICE,
        "how_many_people_on_your_team_use_acme": QT.QUESTION_TYPE_NUMBER,
        "what_should_we_improve": QT.QUESTION_TYPE_FREE_TEXT,
    }
    features = result.plan.questions[3]
    assert set(features.options) == {"Dashboards", "API", "Alerts"}
    # The e-mail column is personal data: neither a question nor an attribute.
    assert "Email Address" in result.plan.ignored
    assert result.plan.attributes == ()
    # "seven" is not a rating: refused locally, with its line; its neighbours go on.
    assert [(r.line, r.reason) for r in result.rejections] == [(8, "NOT_AN_INTEGER")]
    assert result.rejections[0].field == "How satisfied are you overall?"
    # The last answer spans lines 9-10 (a quoted newline): the row starts on line 9.
    assert result.lines == [2, 3, 4, 5, 6, 7, 9]
    assert result.responses[-1].answers[-1].text == "Dark mode,\nand keyboard shortcuts"
    first = result.responses[0]
    # "2024/03/05 10:15:32 AM GMT+1" is 09:15:32 UTC; the submission time is both ends.
    assert first.complete_time.ToJsonString() == "2024-03-05T09:15:32Z"
    assert first.start_time == first.complete_time and first.completed
    multi = next(a for a in result.responses[1].answers if a.WhichOneof("value") == "choices")
    assert list(multi.choices.values) == ["Dashboards", "Alerts", "API"]
    assert server_problems(result) == {}


def test_surveymonkey_two_header_rows_option_columns_and_server_rejection() -> None:
    result = load("surveymonkey")
    assert result.plan.layout is Layout.SURVEYMONKEY
    q = {q.id: q for q in result.plan.questions}
    nps = q["how_likely_is_it_that_you_would_recommend_our"]
    assert nps.type == QT.QUESTION_TYPE_NPS
    features = q["which_of_the_following_features_do_you_use"]
    assert features.type == QT.QUESTION_TYPE_MULTIPLE_CHOICE
    assert features.options == ("Dashboards", "API", "Alerts")
    assert q["which_of_the_following_features_do_you_use_other"].type == QT.QUESTION_TYPE_FREE_TEXT
    assert q["what_is_your_company_size"].type == QT.QUESTION_TYPE_SINGLE_CHOICE
    assert [r.id for r in result.responses][:2] == ["11812345601", "11812345602"]
    assert result.lines == [3, 4, 5, 6, 7, 8]
    assert result.responses[0].start_time.ToJsonString() == "2024-03-05T10:15:32Z"
    assert result.responses[0].complete_time.ToJsonString() == "2024-03-05T10:19:01Z"
    third = {a.question_id: a for a in result.responses[2].answers}
    assert list(third[features.id].choices.values) == ["API"]
    assert third["which_of_the_following_features_do_you_use_other"].text == "Webhooks"
    # An NPS of 12 parses, and the server refuses it: reported on CSV line 7.
    assert result.rejections == []
    assert server_problems(result) == {7: "ANSWER_OUT_OF_RANGE"}


def test_typeform_option_columns_hidden_fields_and_partial_rows() -> None:
    result = load("typeform")
    assert result.plan.layout is Layout.TYPEFORM
    assert types(result) == {
        "on_a_scale_of_0_to_10_how_likely_are_you_to": QT.QUESTION_TYPE_NPS,
        "how_easy_was_it_to_get_started": QT.QUESTION_TYPE_RATING,
        "choices": QT.QUESTION_TYPE_MULTIPLE_CHOICE,
        "what_could_we_do_better": QT.QUESTION_TYPE_FREE_TEXT,
    }
    assert result.plan.questions[2].options == ("Dashboards", "Reports", "Integrations")
    assert [key for _, key in result.plan.attributes] == ["plan"]
    assert "Network ID" in result.plan.ignored
    by_id = {r.id: r for r in result.responses}
    assert dict(by_id["a1b2c3d4e5"].attributes) == {"plan": "pro"}
    # No submit date: a partial response.
    assert by_id["z6a7b8c9d0"].completed is False
    assert [(r.line, r.reason, r.response_id) for r in result.rejections] == [
        (6, "INVALID_TIMESTAMP", "u1v2w3x4y5")
    ]
    assert server_problems(result) == {}


def test_qualtrics_three_header_rows() -> None:
    result = load("qualtrics")
    assert result.plan.layout is Layout.QUALTRICS
    assert types(result) == {
        "q1": QT.QUESTION_TYPE_NPS,
        "q2": QT.QUESTION_TYPE_RATING,
        "q3": QT.QUESTION_TYPE_MULTIPLE_CHOICE,
        "q4": QT.QUESTION_TYPE_NUMBER,
        "q5": QT.QUESTION_TYPE_FREE_TEXT,
    }
    # Question texts come from the second header row.
    assert result.plan.questions[0].text == "How likely are you to recommend Acme to a colleague?"
    assert sorted(key for _, key in result.plan.attributes) == [
        "distribution_channel",
        "region",
        "user_language",
    ]
    assert "IPAddress" in result.plan.ignored and "RecipientEmail" in result.plan.ignored
    assert result.lines == [4, 5, 6, 7, 8, 9]
    unfinished = result.responses[3]
    assert unfinished.id == "R_4qRsTuVwXyZaBcD" and unfinished.completed is False
    assert result.responses[0].completed is True
    assert server_problems(result) == {}


def test_same_file_gives_the_same_ids_so_reimport_is_idempotent() -> None:
    first, second = load("google_forms"), load("google_forms")
    ids = [r.id for r in first.responses]
    assert ids == [r.id for r in second.responses]
    assert len(set(ids)) == len(ids)
    # Identical rows still get distinct ids.
    text = (
        "Timestamp,Pick one\n2024-01-01 10:00:00,A\n2024-01-01 10:00:00,A\n2024-01-02 10:00:00,B\n"
    )
    twins = parse_csv(
        text, Mapping.from_dict({"questions": {"Pick one": {"type": "single_choice"}}})
    )
    assert len({r.id for r in twins.responses}) == 3


def test_mapping_overrides_types_ids_attributes_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps(
            {
                "title": "Pulse Q1",
                "attributes": {"Which plan are you on?": "plan"},
                "ignore": ["What should we improve?"],
                "questions": {
                    "How likely are you to recommend Acme to a friend?": {"id": "nps"},
                    "How many people on your team use Acme?": {
                        "id": "team",
                        "type": "single_choice",
                    },
                    "which_features_do_you_use": {
                        "id": "features",
                        "options": ["Dashboards", "API", "Alerts", "Exports"],
                    },
                },
            }
        )
    )
    result = load("google_forms", load_mapping(path))
    plan = result.plan
    assert plan.title == "Pulse Q1"
    assert [q.id for q in plan.questions] == [
        "nps",
        "how_satisfied_are_you_overall",
        "features",
        "team",
    ]
    team = plan.questions[3]
    assert team.type == QT.QUESTION_TYPE_SINGLE_CHOICE and "250" in team.options
    assert plan.questions[2].options == ("Dashboards", "API", "Alerts", "Exports")
    assert dict(result.responses[0].attributes) == {"plan": "Pro"}
    assert server_problems(result) == {}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ([], "one JSON object"),
        ({"colums": {}}, "unknown key"),
        ({"layout": "excel"}, "mapping.layout"),
        ({"questions": {"Q": {"type": "stars"}}}, "mapping.questions['Q'].type"),
        ({"attributes": "region"}, "mapping.attributes"),
    ],
)
def test_bad_mappings_name_the_offending_key(mapping: object, message: str) -> None:
    with pytest.raises(CsvImportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Mapping.from_dict(mapping)


def test_matching_an_existing_survey_by_id_and_text() -> None:
    survey = survey_pb2.Survey(
        title="Existing",
        questions=[
            survey_pb2.Question(id="nps", text="Ignored", type=QT.QUESTION_TYPE_NPS),
            survey_pb2.Question(
                id="sat", text="how satisfied are you   OVERALL?", type=QT.QUESTION_TYPE_RATING
            ),
        ],
    )
    mapping = Mapping.from_dict(
        {"questions": {"How likely are you to recommend Acme to a friend?": {"id": "nps"}}}
    )
    result = load("google_forms", mapping, survey=survey)
    assert [(q.id, q.type) for q in result.plan.questions] == [
        ("nps", QT.QUESTION_TYPE_NPS),
        ("sat", QT.QUESTION_TYPE_RATING),
    ]
    assert "Which plan are you on?" in result.plan.unmatched
    assert {a.question_id for a in result.responses[0].answers} == {"nps", "sat"}
    with pytest.raises(CsvImportError, match="none matches"):
        parse_csv("Timestamp,Color\n2024-01-01 10:00:00,red\n", survey=survey)


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("Would you recommend us?", ["0", "10", "7", "9"], QT.QUESTION_TYPE_NPS),
        ("Score", ["0", "10", "7", "9"], QT.QUESTION_TYPE_NUMBER),
        ("Stars", ["1", "5", "3", "4.0"], QT.QUESTION_TYPE_RATING),
        ("Budget", ["1.5", "20", "3"], QT.QUESTION_TYPE_NUMBER),
        ("Color", ["red", "blue", "red", "blue", "red"], QT.QUESTION_TYPE_SINGLE_CHOICE),
        ("Why", ["because", "no idea", "it is fast"], QT.QUESTION_TYPE_FREE_TEXT),
        ("Tools", ["a, b", "b", "a, c", "c, b"], QT.QUESTION_TYPE_MULTIPLE_CHOICE),
        ("Comment", ["Great, but slow", "Fine, I guess", "ok"], QT.QUESTION_TYPE_FREE_TEXT),
        ("Empty", [], QT.QUESTION_TYPE_FREE_TEXT),
    ],
)
def test_infer_type(text: str, values: list[str], expected: int) -> None:
    assert infer_type(text, values)[0] == expected


def test_layout_detection_and_timestamps() -> None:
    assert detect_layout([["Timestamp", "Q"]]) is Layout.GOOGLE_FORMS
    assert detect_layout([["#", "Q", "Submit Date (UTC)"]]) is Layout.TYPEFORM
    assert detect_layout([["Respondent ID", "Q"], ["", "Response"]]) is Layout.SURVEYMONKEY
    assert detect_layout([["id", "Q"]]) is Layout.GENERIC
    assert parse_timestamp("2024/03/05 1:45:00 PM GMT-5").isoformat() == (  # type: ignore[union-attr]
        "2024-03-05T13:45:00-05:00"
    )
    assert parse_timestamp("03/05/2024 10:15:32 AM").isoformat() == "2024-03-05T10:15:32+00:00"  # type: ignore[union-attr]
    assert parse_timestamp("2024-03-05T10:15:32Z").isoformat() == "2024-03-05T10:15:32+00:00"  # type: ignore[union-attr]
    assert parse_timestamp("yesterday") is None


def test_generic_layout_and_malformed_rows() -> None:
    text = (
        "id,submitted_at,plan,How satisfied are you?\n"
        "r1,2024-01-01 10:00:00,pro,5\n"
        "r2,2024-01-02 10:00:00,free,4,unexpected\n"
        "r3,2024-01-03 10:00:00,pro,2\n"
        "r4,2024-01-04 10:00:00,free,3\n"
    )
    result = parse_csv(text)
    assert result.plan.layout is Layout.GENERIC
    assert [q.type for q in result.plan.questions] == [QT.QUESTION_TYPE_RATING]
    assert [key for _, key in result.plan.attributes] == ["plan"]
    assert [r.id for r in result.responses] == ["r1", "r3", "r4"]
    assert [(r.line, r.reason) for r in result.rejections] == [(3, "MALFORMED_ROW")]


def test_unusable_files_fail_clearly() -> None:
    with pytest.raises(CsvImportError, match="empty"):
        read_table("\n\n")
    with pytest.raises(CsvImportError, match="header rows"):
        read_table("StartDate,ResponseId,Q1\n", Layout.QUALTRICS)
    with pytest.raises(CsvImportError, match="no question columns"):
        parse_csv("Timestamp\n2024-01-01 10:00:00\n")
