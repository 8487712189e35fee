"""Responses: importing them in bulk and streaming consistent snapshots of them back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from delivery_svc import validation
from delivery_svc.repository import BatchOutcome, DeliveryRepository
from delivery_svc.surveys import Surveys, questions_of
from delivery_svc.wire import ImportRequestView, varint
from surveymesh.auth import WRITE_ROLES, Principal
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import response_pb2
from surveymesh.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)

MAX_REJECTIONS = 1000


@dataclass
class ImportTally:
    """Running totals of one ImportResponses stream."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[pb.RejectedResponse] = field(default_factory=list)

    def add(self, outcome: BatchOutcome) -> None:
        """Counts one committed batch."""
        self.accepted += outcome.inserted
        self.duplicates += outcome.duplicates

    def to_proto(self) -> pb.ImportResponsesResponse:
        """The RPC's answer."""
        return pb.ImportResponsesResponse(
            accepted_count=self.accepted,
            duplicate_count=self.duplicates,
            rejected_count=self.rejected,
            rejections=self.rejections,
        )


# Rows checked between two yields to the event loop while a message is validated (a few
# milliseconds of work): the previous message's COPY, whose data asyncpg writes as the
# socket drains, then keeps streaming to PostgreSQL instead of stalling until the whole
# message is checked.
_CHUNK = 200


async def _prepare(
    rows_filter: validation.RowFilter,
    responses: Sequence[bytes],
    index: int,
    first_row: int,
    tally: ImportTally,
) -> list[tuple[str, bool, bytes]]:
    """Checks one message's encoded rows; returns the valid ones as ``(id, completed, payload)``.

    Most rows are accepted by the filter's fast path; the others are parsed and checked
    in full, which decides them and explains a rejection. Rejected rows are recorded in
    ``tally``; they never affect their neighbours. Yields to the event loop every
    ``_CHUNK`` rows, so a batch being written meanwhile makes progress.

    Raises:
        InvalidArgument: a row is not a well-formed Response (the message is malformed).
    """
    rows: list[tuple[str, bool, bytes]] = []
    for start in range(0, len(responses), _CHUNK):
        if start:
            await asyncio.sleep(0)
        chunk = responses[start : start + _CHUNK]
        accepted = list(map(rows_filter.accept, chunk))
        if None not in accepted:  # the usual case: every row taken by the fast path
            rows.extend(filter(None, accepted))
            continue
        for offset, (raw, row) in enumerate(zip(chunk, accepted, strict=True), first_row + start):
            if row is None:
                row = _check_row(rows_filter, raw, index, offset, tally)
            if row is not None:
                rows.append(row)
    return rows


def _check_row(
    rows_filter: validation.RowFilter, raw: bytes, index: int, row: int, tally: ImportTally
) -> tuple[str, bool, bytes] | None:
    """Checks a row the fast path left undecided in full: ``(id, completed, payload)`` if
    it is valid, else None (the rejection is recorded in ``tally``)."""
    try:
        r = response_pb2.Response.FromString(raw)
    except DecodeError:
        raise _malformed(index) from None
    problem = rows_filter.checker.check(r)
    if problem is None:
        # Stored with its survey id (appended: the last occurrence of a field wins),
        # so StreamResponses sends the stored bytes as they are.
        return r.id, r.completed, raw + rows_filter.suffix
    tally.rejected += 1
    if len(tally.rejections) < MAX_REJECTIONS:
        tally.rejections.append(
            pb.RejectedResponse(
                row=row,
                response_id=r.id,
                field=problem.field,
                reason=problem.reason,
                description=problem.description,
            )
        )
    return None


def _malformed(index: int) -> InvalidArgument:
    return InvalidArgument(
        [
            FieldViolation(
                "responses",
                f"message {index} is not a valid ImportResponsesRequest encoding",
                "MALFORMED_MESSAGE",
            )
        ],
        reason="MALFORMED_MESSAGE",
    )


def _batch_message(
    payloads: Sequence[bytes], watermark: int, total: int
) -> pb.StreamResponsesResponse:
    """Builds a StreamResponsesResponse from stored Response bytes with one parse.

    Field 1 (``responses``) is length-delimited (tag byte 0x0A); concatenating the stored
    encodings and parsing once in C is far cheaper than parsing each response in Python.
    """
    parts: list[bytes] = []
    for p in payloads:
        parts += (b"\n", varint(len(p)), p)
    message = pb.StreamResponsesResponse.FromString(b"".join(parts))
    message.snapshot_watermark = watermark
    message.total_count = total
    return message


class Responses:
    """The response use cases: bulk import and snapshot streaming.

    Args:
        repo: The delivery database.
        surveys: Survey look-ups (org-scoped).
    """

    def __init__(self, repo: DeliveryRepository, surveys: Surveys) -> None:
        self._repo = repo
        self._surveys = surveys

    async def import_stream(
        self, principal: Principal, messages: AsyncIterable[bytes]
    ) -> pb.ImportResponsesResponse:
        """Imports every message of an ImportResponses stream.

        The messages arrive encoded (``ImportResponsesRequest`` bytes): each row is kept
        as the bytes it came in, checked by :class:`~delivery_svc.validation.RowFilter`
        and stored as is, so the common valid row is never decoded into Python objects.

        Each message's valid rows are committed on their own, so a stream that breaks keeps
        what was committed, and re-sending it is harmless (stored ids count as duplicates).
        While one batch is being written, the next one is received and validated: Python
        validation and PostgreSQL's insert then overlap instead of taking turns.

        Raises:
            PermissionDenied: viewers may not import.
            InvalidArgument: no survey id in the first message, another survey id later, an
                empty stream, a message over 5,000 responses or one that does not decode.
            NotFound: unknown or foreign survey.
        """
        principal.require(WRITE_ROLES, "importing responses")
        tally = ImportTally()
        survey_id = ""
        sid: uuid.UUID | None = None
        checker: validation.RowFilter | None = None
        row = 0
        pending: asyncio.Task[BatchOutcome] | None = None
        index = 0
        try:
            async for encoded in messages:
                try:
                    message = ImportRequestView.FromString(encoded)
                except DecodeError:
                    raise _malformed(index) from None
                if checker is None:
                    if not message.survey_id:
                        raise InvalidArgument(
                            [
                                FieldViolation(
                                    "survey_id",
                                    "the first message must name the survey",
                                    "REQUIRED",
                                )
                            ],
                            reason="SURVEY_ID_REQUIRED",
                        )
                    survey = await self._surveys.get(principal, message.survey_id)
                    survey_id, sid = message.survey_id, survey.id
                    checker = validation.RowFilter(questions_of(survey), survey_id)
                elif message.survey_id and message.survey_id != survey_id:
                    raise InvalidArgument(
                        [
                            FieldViolation(
                                "survey_id",
                                f"message {index} names another survey than the first message",
                                "SURVEY_ID_MISMATCH",
                            )
                        ],
                        reason="SURVEY_ID_MISMATCH",
                    )
                responses = message.responses
                validation.check_import_batch(index, len(responses))
                rows = await _prepare(checker, responses, index, row, tally)
                row += len(responses)
                index += 1
                if pending is not None:
                    tally.add(await pending)
                    pending = None
                if rows:
                    assert sid is not None
                    pending = asyncio.create_task(self._repo.import_batch(sid, rows))
            if pending is not None:
                tally.add(await pending)
                pending = None
        finally:
            if pending is not None:
                # The stream failed while a batch was being written: let that batch finish
                # (it commits or rolls back as a whole) before answering, so the client's
                # next attempt never races it.
                await asyncio.wait([pending])
                if not pending.cancelled() and pending.exception() is None:
                    tally.add(pending.result())
        if checker is None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "survey_id", "the stream held no message naming a survey", "REQUIRED"
                    )
                ],
                reason="SURVEY_ID_REQUIRED",
            )
        log.info(
            "import into survey %s: %d accepted, %d duplicate, %d rejected",
            survey_id,
            tally.accepted,
            tally.duplicates,
            tally.rejected,
            extra={"org_id": principal.org},
        )
        return tally.to_proto()

    async def stream(
        self, principal: Principal, request: pb.StreamResponsesRequest
    ) -> AsyncIterator[pb.StreamResponsesResponse]:
        """Yields the snapshot's responses in id order, ``batch_size`` per message.

        The snapshot is every response with ``seq <= watermark``; a new stream takes the
        survey's current ``last_seq``. Every batch is one keyset query, so nothing is held
        open between messages. At least one message is always sent (possibly empty), so
        the client always learns the watermark and ``total_count``.

        Raises:
            InvalidArgument: bad batch size, resume id or watermark.
            NotFound: unknown or foreign survey.
        """
        size = validation.stream_batch_size(request.batch_size)
        validation.check_after_response_id(request.after_response_id)
        survey = await self._surveys.get(principal, request.survey_id)
        watermark = request.snapshot_watermark or survey.last_seq
        if not 0 < watermark <= survey.last_seq:
            # A watermark this survey never issued would not name a consistent snapshot.
            raise InvalidArgument(
                [
                    FieldViolation(
                        "snapshot_watermark",
                        "must be 0 or a snapshot_watermark returned for this survey",
                        "INVALID_SNAPSHOT_WATERMARK",
                    )
                ],
                reason="INVALID_SNAPSHOT_WATERMARK",
            )
        total = await self._repo.count_responses(survey.id, watermark, request.completed_only)
        after = request.after_response_id
        while True:
            # One row more than a batch tells whether another batch follows, so a snapshot
            # that ends on a batch boundary gets no trailing empty message.
            rows = await self._repo.fetch_payloads(
                survey.id, watermark, after, size + 1, request.completed_only
            )
            batch = rows[:size]
            yield _batch_message([p for _, p in batch], watermark, total)
            if len(rows) <= size:
                return
            after = batch[-1][0]
