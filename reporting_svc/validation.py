"""Request validation of ReportingService: pure functions, one per request shape.

Each function collects every problem of a request and raises one ``InvalidArgument`` with a
``BadRequest`` field violation per problem, so a client fixes its request in one round trip.

Malformed report ids are INVALID_ARGUMENT (as the proto promises): the syntax of an id says
nothing about which organization owns it, so answering it differently from NOT_FOUND leaks
nothing. A well-formed id that is unknown, foreign or hidden by ``required_roles`` is always
the same NOT_FOUND.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from surveymesh.auth import ROLES
from surveymesh.errors import Violations
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from surveymesh.workflow_contract import ReportOptionsInput

MAX_REQUEST_ID = 128
MAX_SURVEY_ID = 128
MAX_SEGMENTS = 5
MAX_SEGMENT_NAME = 100
MAX_QUESTION_IDS = 200
MAX_BATCH = 1000
MAX_REASON = 500
MAX_EMAIL = 254
TREND_INTERVALS = ("day", "week")
_QUESTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COMPONENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Deliberately simple: one @, a dot in the domain, no spaces. Deliverability is SMTP's job.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

K = report_pb2.ReportKind
S = report_pb2.ReportState
KINDS: dict[int, str] = {K.REPORT_KIND_QUICK: "quick", K.REPORT_KIND_FULL: "full"}


@dataclass(frozen=True)
class ReportSpec:
    """A validated report request: what the report rows and workflow inputs are made from."""

    kind: int
    request_id: str
    options: ReportOptionsInput
    required_roles: tuple[str, ...] = ()
    survey_ids: tuple[str, ...] = field(default=())

    @property
    def kind_name(self) -> str:
        """``quick`` or ``full``, as the workflow contract names kinds."""
        return KINDS[self.kind]


def _request_id(v: Violations, value: str) -> None:
    if not value:
        v.add("request_id", "is required (1 to 128 characters)", "REQUIRED")
    elif len(value) > MAX_REQUEST_ID:
        v.add("request_id", f"must be at most {MAX_REQUEST_ID} characters", "TOO_LONG")
    elif not value.isprintable():
        v.add("request_id", "must not contain control characters", "INVALID_REQUEST_ID")


def _survey_id(v: Violations, name: str, value: str) -> None:
    if not value:
        v.add(name, "is required", "REQUIRED")
    elif len(value) > MAX_SURVEY_ID or not value.isprintable():
        v.add(name, "is not a survey id", "INVALID_SURVEY_ID")


def _kind(v: Violations, kind: int) -> None:
    if kind not in KINDS:
        v.add("kind", "must be REPORT_KIND_QUICK or REPORT_KIND_FULL", "INVALID_KIND")


def _options(
    v: Violations, o: report_pb2.ReportOptions
) -> tuple[ReportOptionsInput, tuple[str, ...]]:
    if len(o.segment_by) > MAX_SEGMENTS:
        v.add("options.segment_by", f"at most {MAX_SEGMENTS} attributes", "TOO_MANY_SEGMENTS")
    for i, s in enumerate(o.segment_by):
        if not s or len(s) > MAX_SEGMENT_NAME:
            v.add(f"options.segment_by[{i}]", "must be 1 to 100 characters", "INVALID_SEGMENT")
    if len(set(o.segment_by)) != len(o.segment_by):
        v.add("options.segment_by", "must not repeat an attribute", "DUPLICATE_SEGMENT")
    if len(o.question_ids) > MAX_QUESTION_IDS:
        v.add("options.question_ids", f"at most {MAX_QUESTION_IDS} ids", "TOO_MANY_QUESTIONS")
    for i, q in enumerate(o.question_ids):
        if not _QUESTION_ID.match(q):
            v.add(
                f"options.question_ids[{i}]",
                "must be 1 to 64 of [A-Za-z0-9_-]",
                "INVALID_QUESTION_ID",
            )
    if o.trend_interval and o.trend_interval not in TREND_INTERVALS:
        v.add("options.trend_interval", "must be 'day' or 'week'", "INVALID_TREND_INTERVAL")
    if o.notify_email and (len(o.notify_email) > MAX_EMAIL or not _EMAIL.match(o.notify_email)):
        v.add("options.notify_email", "is not an email address", "INVALID_EMAIL")
    for i, r in enumerate(o.required_roles):
        if r not in ROLES:
            v.add(f"options.required_roles[{i}]", f"must be one of {list(ROLES)}", "UNKNOWN_ROLE")
    options = ReportOptionsInput(
        segment_by=list(o.segment_by),
        question_ids=list(o.question_ids),
        include_incomplete=o.include_incomplete,
        notify_email=o.notify_email,
        trend_interval=o.trend_interval or "day",
    )
    return options, tuple(sorted(set(o.required_roles)))


def generate_report(req: pb.GenerateReportRequest) -> ReportSpec:
    """Validates a GenerateReportRequest."""
    v = Violations()
    _survey_id(v, "survey_id", req.survey_id)
    _kind(v, req.kind)
    _request_id(v, req.request_id)
    options, roles = _options(v, req.options)
    v.raise_if_any()
    return ReportSpec(req.kind, req.request_id, options, roles, (req.survey_id,))


def generate_reports(req: pb.GenerateReportsRequest) -> ReportSpec:
    """Validates a GenerateReportsRequest (1 to 1,000 distinct survey ids)."""
    v = Violations()
    if not req.survey_ids:
        v.add("survey_ids", "at least one survey id is required", "REQUIRED")
    elif len(req.survey_ids) > MAX_BATCH:
        v.add("survey_ids", f"at most {MAX_BATCH} surveys per batch", "TOO_MANY_SURVEYS")
    else:
        seen: set[str] = set()
        for i, s in enumerate(req.survey_ids):
            _survey_id(v, f"survey_ids[{i}]", s)
            if s in seen:
                v.add(f"survey_ids[{i}]", "repeats an earlier survey id", "DUPLICATE_SURVEY_ID")
            seen.add(s)
    _kind(v, req.kind)
    _request_id(v, req.request_id)
    options, roles = _options(v, req.options)
    v.raise_if_any()
    return ReportSpec(req.kind, req.request_id, options, roles, tuple(req.survey_ids))


def report_id(value: str, name: str = "report_id") -> str:
    """Validates a report id (a UUID) and returns it in canonical form."""
    v = Violations()
    canonical = _uuid(v, name, value)
    v.raise_if_any()
    return canonical


def _uuid(v: Violations, name: str, value: str) -> str:
    if not value:
        v.add(name, "is required", "REQUIRED")
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        v.add(name, "must be a UUID", "INVALID_ID")
        return ""


def component_request(req: pb.GetReportComponentRequest) -> tuple[str, str]:
    """Validates a GetReportComponentRequest; returns (report id, component type)."""
    v = Violations()
    rid = _uuid(v, "report_id", req.report_id)
    if not _COMPONENT_TYPE.match(req.component_type):
        v.add(
            "component_type",
            "must be a component type such as basic_stats",
            "INVALID_COMPONENT_TYPE",
        )
    v.raise_if_any()
    return rid, req.component_type


@dataclass(frozen=True)
class ListFilter:
    """The validated filter of a ListReports call."""

    survey_id: str
    state: int
    batch_id: str

    def key(self) -> str:
        """Binds page tokens to this filter, so a token cannot continue another listing."""
        return f"ListReports?survey={self.survey_id}&state={self.state}&batch={self.batch_id}"


def list_filter(req: pb.ListReportsRequest) -> ListFilter:
    """Validates the filter fields of a ListReportsRequest."""
    v = Violations()
    if req.survey_id:
        _survey_id(v, "survey_id", req.survey_id)
    if req.state != S.REPORT_STATE_UNSPECIFIED and req.state not in S.values():
        v.add("state", "is not a report state", "INVALID_STATE")
    batch = _uuid(v, "batch_id", req.batch_id) if req.batch_id else ""
    v.raise_if_any()
    return ListFilter(req.survey_id, req.state, batch)


def watch_request(req: pb.WatchReportRequest) -> tuple[str, int]:
    """Validates a WatchReportRequest; returns (report id, after sequence)."""
    v = Violations()
    rid = _uuid(v, "report_id", req.report_id)
    if req.after_sequence < 0:
        v.add("after_sequence", "must not be negative", "NEGATIVE_SEQUENCE")
    v.raise_if_any()
    return rid, req.after_sequence


def cancel_request(req: pb.CancelReportRequest) -> tuple[str, str]:
    """Validates a CancelReportRequest; returns (report id, reason)."""
    v = Violations()
    rid = _uuid(v, "report_id", req.report_id)
    if len(req.reason) > MAX_REASON:
        v.add("reason", f"must be at most {MAX_REASON} characters", "TOO_LONG")
    v.raise_if_any()
    return rid, req.reason


def render_request(req: pb.RenderReportRequest) -> tuple[str, int]:
    """Validates a RenderReportRequest; returns (report id, format)."""
    v = Violations()
    rid = _uuid(v, "report_id", req.report_id)
    formats: Sequence[int] = [f for f in report_pb2.RenderFormat.values() if f]
    if req.format not in formats:
        v.add("format", "must be HTML, PDF, CSV or JSON", "INVALID_FORMAT")
    v.raise_if_any()
    return rid, req.format
