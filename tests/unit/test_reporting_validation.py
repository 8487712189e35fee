"""Pure logic of ReportingService: request validation, ids, JSON rendering."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from reporting_svc import validation
from reporting_svc.render.document import ReportDocument, StoredComponent
from reporting_svc.render.json import render_json
from reporting_svc.reports import batch_uuid, report_uuid
from surveymesh.errors import InvalidArgument
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb

K = report_pb2.ReportKind


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.reason for v in exc.value.violations}


def test_a_valid_generate_request_becomes_a_spec() -> None:
    spec = validation.generate_report(
        pb.GenerateReportRequest(
            survey_id="s1",
            kind=K.REPORT_KIND_FULL,
            request_id="r1",
            options=report_pb2.ReportOptions(
                segment_by=["region"], required_roles=["admin", "analyst", "admin"]
            ),
        )
    )
    assert spec.kind_name == "full"
    assert spec.survey_ids == ("s1",)
    assert spec.options.trend_interval == "day"  # the default when unset
    assert spec.options.segment_by == ["region"]
    assert spec.required_roles == ("admin", "analyst")


def test_every_problem_of_a_generate_request_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.generate_report(
            pb.GenerateReportRequest(
                options=report_pb2.ReportOptions(
                    segment_by=["a", "a"],
                    question_ids=["ok", "not ok"],
                    trend_interval="hour",
                    notify_email="a@b",
                    required_roles=["root"],
                )
            )
        )
    assert violations(exc) == {
        "survey_id": "REQUIRED",
        "kind": "INVALID_KIND",
        "request_id": "REQUIRED",
        "options.segment_by": "DUPLICATE_SEGMENT",
        "options.question_ids[1]": "INVALID_QUESTION_ID",
        "options.trend_interval": "INVALID_TREND_INTERVAL",
        "options.notify_email": "INVALID_EMAIL",
        "options.required_roles[0]": "UNKNOWN_ROLE",
    }


@pytest.mark.parametrize(
    ("ids", "field", "reason"),
    [
        ([], "survey_ids", "REQUIRED"),
        ([f"s{i}" for i in range(1001)], "survey_ids", "TOO_MANY_SURVEYS"),
        (["a", "b", "a"], "survey_ids[2]", "DUPLICATE_SURVEY_ID"),
        (["a", ""], "survey_ids[1]", "REQUIRED"),
    ],
)
def test_batch_survey_ids_are_checked(ids: list[str], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.generate_reports(
            pb.GenerateReportsRequest(survey_ids=ids, kind=K.REPORT_KIND_QUICK, request_id="r")
        )
    assert violations(exc) == {field: reason}


def test_a_thousand_distinct_surveys_are_accepted() -> None:
    spec = validation.generate_reports(
        pb.GenerateReportsRequest(
            survey_ids=[f"s{i}" for i in range(1000)], kind=K.REPORT_KIND_QUICK, request_id="r"
        )
    )
    assert len(spec.survey_ids) == 1000


def test_report_ids_are_canonical_uuids() -> None:
    rid = uuid.uuid4()
    assert validation.report_id(str(rid).upper()) == str(rid)
    with pytest.raises(InvalidArgument) as exc:
        validation.report_id("nope")
    assert violations(exc) == {"report_id": "INVALID_ID"}


def test_list_filters_bind_tokens_to_the_filter() -> None:
    a = validation.list_filter(pb.ListReportsRequest(survey_id="s1"))
    b = validation.list_filter(pb.ListReportsRequest(survey_id="s2"))
    assert a.key() != b.key()
    with pytest.raises(InvalidArgument) as exc:
        validation.list_filter(pb.ListReportsRequest(state=99, batch_id="x"))  # type: ignore[arg-type]
    assert violations(exc) == {"state": "INVALID_STATE", "batch_id": "INVALID_ID"}


def test_render_needs_a_known_format_and_cancel_a_short_reason() -> None:
    with pytest.raises(InvalidArgument) as exc:
        validation.render_request(pb.RenderReportRequest(report_id=str(uuid.uuid4())))
    assert violations(exc) == {"format": "INVALID_FORMAT"}
    with pytest.raises(InvalidArgument) as exc:
        validation.cancel_request(
            pb.CancelReportRequest(report_id=str(uuid.uuid4()), reason="x" * 501)
        )
    assert violations(exc) == {"reason": "TOO_LONG"}


def test_ids_derive_from_org_and_request_id() -> None:
    assert report_uuid("o1", "r") == report_uuid("o1", "r")
    assert report_uuid("o1", "r") != report_uuid("o2", "r")
    assert batch_uuid("o1", "r") != report_uuid("o1", "r")
    # No ambiguity from concatenation: ("o1", "2r") and ("o12", "r") differ.
    assert report_uuid("o1", "2r") != report_uuid("o12", "r")


def test_render_json_splices_component_data_verbatim() -> None:
    created = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    doc = ReportDocument(
        report={"id": "r1", "state": "REPORT_STATE_COMPLETED"},
        components=[StoredComponent("nps", b'{"score": 42, "buckets": [1, 2]}', 2, created)],
    )
    out = orjson.loads(render_json(doc))
    assert out["report"]["id"] == "r1"
    assert out["components"]["nps"]["data"] == {"score": 42, "buckets": [1, 2]}
    assert out["components"]["nps"]["schema_version"] == 2
    assert out["components"]["nps"]["size_bytes"] == len(b'{"score": 42, "buckets": [1, 2]}')
