"""Surveys: creating, reading, listing them and checking who may read them."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from delivery_svc import validation
from delivery_svc.repository import DeliveryRepository, SurveyRow
from surveymesh.auth import ROLES, WRITE_ROLES, Principal
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from surveymesh.paging import decode_token, encode_token, page_size

log = logging.getLogger(__name__)

# Every known role may read surveys and their responses.
READ_ROLES = frozenset(ROLES)
LIST_METHOD = "delivery.ListSurveys"
# A page stops early rather than exceed this many bytes (the server's 4 MiB message limit).
MAX_PAGE_BYTES = 3 * 1024 * 1024
_EPOCH = datetime.fromtimestamp(0, UTC)


def survey_not_found(survey_id: str) -> NotFound:
    """The one answer for a missing survey and for another organization's survey."""
    return NotFound(
        f"survey {survey_id} not found",
        reason="SURVEY_NOT_FOUND",
        metadata={"survey_id": survey_id},
    )


def questions_of(row: SurveyRow) -> list[survey_pb2.Question]:
    """The stored questions of ``row`` as messages."""
    return [json_format.ParseDict(q, survey_pb2.Question()) for q in row.questions]


def to_proto(row: SurveyRow) -> survey_pb2.Survey:
    """The API form of a stored survey."""
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row.create_time)
    return survey_pb2.Survey(
        id=str(row.id),
        org_id=row.org_id,
        title=row.title,
        description=row.description,
        questions=questions_of(row),
        create_time=created,
        creator=row.creator,
        response_count=row.response_count,
    )


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of CheckSurveyAccess."""

    allowed: bool
    reason: str
    survey: SurveyRow


class Surveys:
    """The survey use cases, each scoped to the calling principal's organization.

    Args:
        repo: The delivery database.
    """

    def __init__(self, repo: DeliveryRepository) -> None:
        self._repo = repo

    async def create(
        self, principal: Principal, survey: survey_pb2.Survey, *, present: bool, request_id: str
    ) -> SurveyRow:
        """Creates a survey in the caller's org (or returns the one ``request_id`` created).

        Raises:
            PermissionDenied: the caller may not create surveys (viewers).
            InvalidArgument: the survey is malformed.
        """
        principal.require(WRITE_ROLES, "creating surveys")
        validation.validate_survey(survey, present, request_id)
        questions: list[dict[str, Any]] = [
            json_format.MessageToDict(q, preserving_proto_field_name=True)
            for q in validation.normalized_questions(survey)
        ]
        row = await self._repo.insert_survey(
            survey_id=uuid.uuid4(),
            org=principal.org,
            title=survey.title,
            description=survey.description,
            questions=questions,
            creator=principal.user,
            request_id=request_id or None,
        )
        log.info("survey %s created in org %s", row.id, row.org_id, extra={"org_id": row.org_id})
        return row

    async def get(
        self, principal: Principal, survey_id: str, field: str = "survey_id"
    ) -> SurveyRow:
        """The caller's survey ``survey_id``.

        Raises:
            PermissionDenied: the caller holds no reading role.
            InvalidArgument: the id is malformed.
            NotFound: no such survey in the caller's organization.
        """
        principal.require(READ_ROLES, "reading surveys")
        sid = validation.parse_survey_id(survey_id, field)
        row = await self._repo.get_survey(principal.org, sid)
        if row is None:
            raise survey_not_found(survey_id)
        return row

    async def list(
        self, principal: Principal, requested_size: int, token: str
    ) -> tuple[list[survey_pb2.Survey], str]:
        """One page of the caller's surveys, newest first, and the next page token."""
        principal.require(READ_ROLES, "listing surveys")
        size = page_size(requested_size)
        position = decode_token(token, LIST_METHOD, principal.org)
        after: tuple[datetime, uuid.UUID] | None = None
        if position is not None:
            try:
                micros, raw_id = int(position["t"]), uuid.UUID(str(position["id"]))
                after = (_EPOCH + timedelta(microseconds=micros), raw_id)
            except (KeyError, ValueError, TypeError, OverflowError):
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "page_token", "not a page token of this listing", "INVALID_PAGE_TOKEN"
                        )
                    ],
                    reason="INVALID_PAGE_TOKEN",
                ) from None
        # One extra row tells whether another page follows.
        rows = await self._repo.list_surveys(principal.org, size + 1, after)
        page: list[survey_pb2.Survey] = []
        used = 0
        for row in rows[:size]:
            survey = to_proto(row)
            used += survey.ByteSize()
            if page and used > MAX_PAGE_BYTES:
                break
            page.append(survey)
        more = len(rows) > len(page)
        next_token = ""
        if more:
            last = rows[len(page) - 1]
            next_token = encode_token(
                LIST_METHOD, principal.org, {"t": _to_micros(last.create_time), "id": str(last.id)}
            )
        return page, next_token

    async def check_access(
        self, principal: Principal, survey_id: str, subject: str
    ) -> AccessDecision:
        """Whether the caller (or ``subject``, for service callers) may read the survey.

        Raises:
            InvalidArgument: malformed survey id or subject.
            PermissionDenied: ``subject`` set by a caller without the ``service`` role.
            NotFound: no such survey in the caller's organization.
        """
        if len(subject) > validation.MAX_SUBJECT:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "subject", f"at most {validation.MAX_SUBJECT} characters", "TOO_LONG"
                    )
                ],
                reason="INVALID_SUBJECT",
            )
        if subject and "service" not in principal.roles:
            raise PermissionDenied(
                "only callers with the service role may check access for another user",
                reason="SUBJECT_NOT_ALLOWED",
            )
        sid = validation.parse_survey_id(survey_id)
        row = await self._repo.get_survey(principal.org, sid)
        if row is None:
            raise survey_not_found(survey_id)
        # A service acts for a user of the same org; SurveyMesh has no per-survey ACLs, so
        # every member of the org may read its surveys. Without a subject the caller's own
        # roles decide.
        if subject or principal.has_any(READ_ROLES):
            return AccessDecision(True, "", row)
        return AccessDecision(False, "ROLE_NOT_PERMITTED", row)


def _to_micros(t: datetime) -> int:
    # Exact integer microseconds, so the keyset position round-trips without float error.
    return (t - _EPOCH) // timedelta(microseconds=1)
