"""Validation of DeliveryService input: pure functions, no I/O.

Request-level problems raise :class:`~surveymesh.errors.InvalidArgument` with one field
violation per problem. Rows of an import are checked one by one by
:class:`ResponseChecker`, which returns the first problem of a row as a
:class:`RowProblem` instead of raising, so that one bad row never drops its neighbours.

Stable reasons of rejected rows (``RejectedResponse.reason``):

``INVALID_RESPONSE_ID``, ``UNKNOWN_QUESTION``, ``DUPLICATE_ANSWER``, ``ANSWER_VALUE_MISSING``,
``ANSWER_TYPE_MISMATCH``, ``ANSWER_OUT_OF_RANGE``, ``INVALID_CHOICE``, ``DUPLICATE_CHOICE``,
``CHOICES_EMPTY``, ``TEXT_EMPTY``, ``TEXT_TOO_LONG``, ``INVALID_TIMESTAMP``,
``COMPLETE_TIME_REQUIRED``, ``COMPLETE_BEFORE_START``, ``REQUIRED_QUESTION_UNANSWERED``,
``TOO_MANY_ATTRIBUTES``, ``INVALID_ATTRIBUTE_KEY``, ``ATTRIBUTE_VALUE_TOO_LONG``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from delivery_svc.wire import AttributeEntryView, varint
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.errors import FieldViolation, InvalidArgument, Violations

QT = survey_pb2.QuestionType

MAX_TITLE = 200
MAX_DESCRIPTION = 2000
MAX_QUESTIONS = 200
MAX_QUESTION_TEXT = 1000
MIN_OPTIONS, MAX_OPTIONS = 2, 100
MAX_REQUEST_ID = 128
MAX_TEXT_ANSWER = 10_000
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 256
MAX_IMPORT_BATCH = 5000
DEFAULT_STREAM_BATCH = 500
MAX_STREAM_BATCH = 5000
MAX_SUBJECT = 256

QUESTION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
RESPONSE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ID_BYTES_RE = re.compile(rb"[A-Za-z0-9_.:-]{1,128}")

CHOICE_TYPES = frozenset({QT.QUESTION_TYPE_SINGLE_CHOICE, QT.QUESTION_TYPE_MULTIPLE_CHOICE})
# The Answer.value case that each question type accepts.
ANSWER_CASE: dict[int, str] = {
    QT.QUESTION_TYPE_SINGLE_CHOICE: "choice",
    QT.QUESTION_TYPE_MULTIPLE_CHOICE: "choices",
    QT.QUESTION_TYPE_RATING: "rating",
    QT.QUESTION_TYPE_NPS: "nps",
    QT.QUESTION_TYPE_NUMBER: "number",
    QT.QUESTION_TYPE_FREE_TEXT: "text",
}

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def parse_survey_id(value: str, field: str = "survey_id") -> uuid.UUID:
    """Parses a survey id (a UUID), or raises INVALID_ARGUMENT naming ``field``."""
    if not value:
        raise InvalidArgument(
            [FieldViolation(field, "a survey id is required", "REQUIRED")],
            reason="SURVEY_ID_REQUIRED",
        )
    try:
        # uuid.UUID also takes braces/urn forms; insisting on the canonical 36 characters
        # keeps one spelling per survey.
        if len(value) != 36:
            raise ValueError(value)
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            [FieldViolation(field, "must be a survey id (a UUID)", "INVALID_SURVEY_ID")],
            reason="INVALID_SURVEY_ID",
        ) from None


def is_response_id(value: str) -> bool:
    """Whether ``value`` is a valid response id: 1..128 characters of ``[A-Za-z0-9_.:-]``."""
    return RESPONSE_ID_RE.fullmatch(value) is not None


def validate_survey(survey: survey_pb2.Survey, present: bool, request_id: str) -> None:
    """Checks a CreateSurvey request's survey and idempotency key.

    Args:
        survey: The survey to create (output-only fields are ignored).
        present: Whether the request carried a survey at all.
        request_id: The request's idempotency key.

    Raises:
        InvalidArgument: with reason ``INVALID_SURVEY`` and one violation per problem.
    """
    v = Violations()
    if len(request_id) > MAX_REQUEST_ID:
        v.add("request_id", f"at most {MAX_REQUEST_ID} characters", "TOO_LONG")
    if not present:
        v.add("survey", "a survey is required", "REQUIRED")
        v.raise_if_any("INVALID_SURVEY")
    if not survey.title.strip():
        v.add("survey.title", "a title is required", "REQUIRED")
    elif len(survey.title) > MAX_TITLE:
        v.add("survey.title", f"at most {MAX_TITLE} characters", "TOO_LONG")
    if len(survey.description) > MAX_DESCRIPTION:
        v.add("survey.description", f"at most {MAX_DESCRIPTION} characters", "TOO_LONG")
    n = len(survey.questions)
    if not 1 <= n <= MAX_QUESTIONS:
        v.add(
            "survey.questions",
            f"a survey has 1 to {MAX_QUESTIONS} questions, got {n}",
            "QUESTION_COUNT_OUT_OF_RANGE",
        )
    seen: set[str] = set()
    for i, q in enumerate(survey.questions):
        _check_question(v, f"survey.questions[{i}]", q, seen)
    v.raise_if_any("INVALID_SURVEY")


def _check_question(v: Violations, path: str, q: survey_pb2.Question, seen: set[str]) -> None:
    if not QUESTION_ID_RE.fullmatch(q.id):
        v.add(f"{path}.id", "1 to 64 characters of [A-Za-z0-9_-]", "INVALID_QUESTION_ID")
    elif q.id in seen:
        v.add(f"{path}.id", f"question id {q.id!r} is used twice", "DUPLICATE_QUESTION_ID")
    seen.add(q.id)
    if not q.text.strip():
        v.add(f"{path}.text", "the question text is required", "REQUIRED")
    elif len(q.text) > MAX_QUESTION_TEXT:
        v.add(f"{path}.text", f"at most {MAX_QUESTION_TEXT} characters", "TOO_LONG")
    if q.type not in ANSWER_CASE:
        v.add(f"{path}.type", "must be one of the QUESTION_TYPE_* values", "INVALID_QUESTION_TYPE")
        return
    if q.type in CHOICE_TYPES:
        if not MIN_OPTIONS <= len(q.options) <= MAX_OPTIONS:
            v.add(
                f"{path}.options",
                f"a choice question has {MIN_OPTIONS} to {MAX_OPTIONS} options",
                "INVALID_OPTIONS",
            )
        labels: set[str] = set()
        for j, option in enumerate(q.options):
            if not option.strip():
                v.add(f"{path}.options[{j}]", "an option must not be empty", "INVALID_OPTIONS")
            elif option in labels:
                v.add(
                    f"{path}.options[{j}]", f"option {option!r} is listed twice", "DUPLICATE_OPTION"
                )
            labels.add(option)
    elif q.options:
        v.add(f"{path}.options", "only choice questions have options", "OPTIONS_NOT_ALLOWED")
    if q.type == QT.QUESTION_TYPE_NUMBER:
        for name in ("min_value", "max_value"):
            if q.HasField(name) and not math.isfinite(getattr(q, name)):
                v.add(f"{path}.{name}", "must be a finite number", "INVALID_BOUND")
        if (
            q.HasField("min_value")
            and q.HasField("max_value")
            and math.isfinite(q.min_value)
            and math.isfinite(q.max_value)
            and q.min_value > q.max_value
        ):
            v.add(f"{path}.max_value", "must not be less than min_value", "INVALID_RANGE")


def normalized_questions(survey: survey_pb2.Survey) -> list[survey_pb2.Question]:
    """The questions as stored: bounds are dropped from non-NUMBER questions (they are ignored)."""
    out = []
    for q in survey.questions:
        copy = survey_pb2.Question()
        copy.CopyFrom(q)
        if copy.type != QT.QUESTION_TYPE_NUMBER:
            copy.ClearField("min_value")
            copy.ClearField("max_value")
        out.append(copy)
    return out


def stream_batch_size(requested: int) -> int:
    """Validates StreamResponses' ``batch_size`` (0 → default 500; at most 5,000)."""
    if requested < 0 or requested > MAX_STREAM_BATCH:
        raise InvalidArgument(
            [
                FieldViolation(
                    "batch_size", f"must be between 0 and {MAX_STREAM_BATCH}", "INVALID_BATCH_SIZE"
                )
            ],
            reason="INVALID_BATCH_SIZE",
        )
    return requested or DEFAULT_STREAM_BATCH


def check_after_response_id(value: str) -> None:
    """``after_response_id`` is empty or a well-formed response id."""
    if value and not is_response_id(value):
        raise InvalidArgument(
            [
                FieldViolation(
                    "after_response_id",
                    "must be a response id: 1 to 128 characters of [A-Za-z0-9_.:-]",
                    "INVALID_RESPONSE_ID",
                )
            ],
            reason="INVALID_RESPONSE_ID",
        )


def check_import_batch(index: int, size: int) -> None:
    """An ImportResponses message holds at most 5,000 responses."""
    if size > MAX_IMPORT_BATCH:
        raise InvalidArgument(
            [
                FieldViolation(
                    "responses",
                    f"message {index} holds {size} responses; the limit is {MAX_IMPORT_BATCH}",
                    "BATCH_TOO_LARGE",
                )
            ],
            reason="BATCH_TOO_LARGE",
        )


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one imported row is refused: the first problem found in it."""

    field: str
    reason: str
    description: str


@dataclass(frozen=True, slots=True)
class _Spec:
    case: str
    options: frozenset[str]
    min_value: float
    max_value: float


def _ts_valid(ts: tuple[int, int]) -> bool:
    return _MIN_SECONDS <= ts[0] <= _MAX_SECONDS and 0 <= ts[1] <= 999_999_999


class ResponseChecker:
    """Checks imported responses against one survey's questions.

    Built once per import stream; :meth:`check` is the hot path of an import, so it does
    as little as possible per answer (a dict lookup, a oneof case and a range test).

    Args:
        questions: The survey's questions.
    """

    def __init__(self, questions: Sequence[survey_pb2.Question]) -> None:
        self._specs: dict[str, _Spec] = {}
        for q in questions:
            self._specs[q.id] = _Spec(
                case=ANSWER_CASE[q.type],
                options=frozenset(q.options),
                min_value=q.min_value if q.HasField("min_value") else -math.inf,
                max_value=q.max_value if q.HasField("max_value") else math.inf,
            )
        self._required = frozenset(q.id for q in questions if q.required)
        self._order = [q.id for q in questions]

    def check(self, r: response_pb2.Response) -> RowProblem | None:
        """Returns the first problem of response ``r``, or None when it may be stored."""
        if RESPONSE_ID_RE.fullmatch(r.id) is None:
            return RowProblem(
                "id", "INVALID_RESPONSE_ID", "the id must be 1 to 128 characters of [A-Za-z0-9_.:-]"
            )
        specs = self._specs
        answered: set[str] = set()
        i = 0
        # The valid case is decided by _value_ok; _value_problem explains a failure.
        for a in r.answers:
            qid = a.question_id
            spec = specs.get(qid)
            if spec is None or qid in answered:
                return self._answer_problem(i, qid, spec)
            answered.add(qid)
            case = a.WhichOneof("value")
            if case != spec.case:
                return _case_problem(i, qid, case, spec.case)
            if not _value_ok(a, case, spec):
                return _value_problem(i, a, spec)
            i += 1
        return self._check_envelope(r, answered)

    @staticmethod
    def _answer_problem(i: int, qid: str, spec: _Spec | None) -> RowProblem:
        if spec is None:
            return RowProblem(
                f"answers[{i}].question_id",
                "UNKNOWN_QUESTION",
                f"the survey has no question {qid!r}",
            )
        return RowProblem(
            f"answers[{i}].question_id",
            "DUPLICATE_ANSWER",
            f"question {qid!r} is answered more than once",
        )

    def _check_envelope(self, r: response_pb2.Response, answered: set[str]) -> RowProblem | None:
        start: tuple[int, int] | None = None
        complete: tuple[int, int] | None = None
        if r.HasField("start_time"):
            ts = r.start_time
            start = (ts.seconds, ts.nanos)
            if not _ts_valid(start):
                return RowProblem("start_time", "INVALID_TIMESTAMP", "not a valid timestamp")
        if r.HasField("complete_time"):
            ts = r.complete_time
            complete = (ts.seconds, ts.nanos)
            if not _ts_valid(complete):
                return RowProblem("complete_time", "INVALID_TIMESTAMP", "not a valid timestamp")
        completed = r.completed
        if completed and complete is None:
            return RowProblem(
                "complete_time",
                "COMPLETE_TIME_REQUIRED",
                "a completed response needs complete_time",
            )
        if start is not None and complete is not None and complete < start:
            return RowProblem(
                "complete_time", "COMPLETE_BEFORE_START", "complete_time is before start_time"
            )
        if completed and not self._required <= answered:
            missing = [q for q in self._order if q in self._required and q not in answered]
            return RowProblem(
                "answers",
                "REQUIRED_QUESTION_UNANSWERED",
                f"a completed response must answer {', '.join(missing[:10])}",
            )
        attributes = r.attributes
        if attributes:
            if len(attributes) > MAX_ATTRIBUTES:
                return RowProblem(
                    "attributes", "TOO_MANY_ATTRIBUTES", f"at most {MAX_ATTRIBUTES} attributes"
                )
            # Iterating the map's keys is C-level; .items() goes through a Python view.
            for key in attributes:
                if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY:
                    return RowProblem(
                        f"attributes[{json.dumps(key)}]",
                        "INVALID_ATTRIBUTE_KEY",
                        f"a key is 1 to {MAX_ATTRIBUTE_KEY} characters",
                    )
                if len(attributes[key]) > MAX_ATTRIBUTE_VALUE:
                    return RowProblem(
                        f"attributes[{json.dumps(key)}]",
                        "ATTRIBUTE_VALUE_TOO_LONG",
                        f"a value is at most {MAX_ATTRIBUTE_VALUE} characters",
                    )
        return None


def _value_ok(a: response_pb2.Answer, case: str, spec: _Spec) -> bool:
    """Whether the value of ``a`` (whose oneof case is ``spec.case``) is acceptable."""
    if case == "rating":
        return 1 <= a.rating <= 5
    if case == "choice":
        return a.choice in spec.options
    if case == "nps":
        return 0 <= a.nps <= 10
    if case == "text":
        return 0 < len(a.text) <= MAX_TEXT_ANSWER
    if case == "number":
        x = a.number
        # NaN fails both comparisons; infinities fail the finite bounds or isfinite.
        return spec.min_value <= x <= spec.max_value and math.isfinite(x)
    values = a.choices.values
    n = len(values)
    return n > 0 and len(set(values)) == n and spec.options.issuperset(values)


def _case_problem(i: int, qid: str, case: str | None, expected: str) -> RowProblem:
    if case is None:
        return RowProblem(
            f"answers[{i}]", "ANSWER_VALUE_MISSING", f"the answer needs a {expected} value"
        )
    return RowProblem(
        f"answers[{i}].{case}",
        "ANSWER_TYPE_MISMATCH",
        f"question {qid!r} takes a {expected} answer, not {case}",
    )


def _value_problem(i: int, a: response_pb2.Answer, spec: _Spec) -> RowProblem:
    """Explains why the value of answer ``i`` (known to be bad) is refused."""
    case = spec.case
    if case == "rating":
        return RowProblem(f"answers[{i}].rating", "ANSWER_OUT_OF_RANGE", "a rating is 1 to 5")
    if case == "nps":
        return RowProblem(f"answers[{i}].nps", "ANSWER_OUT_OF_RANGE", "an NPS score is 0 to 10")
    if case == "choice":
        return RowProblem(
            f"answers[{i}].choice", "INVALID_CHOICE", f"{a.choice!r} is not an option"
        )
    if case == "number":
        return RowProblem(
            f"answers[{i}].number",
            "ANSWER_OUT_OF_RANGE",
            f"must be a finite number within [{spec.min_value}, {spec.max_value}]",
        )
    if case == "text":
        if not a.text:
            return RowProblem(f"answers[{i}].text", "TEXT_EMPTY", "a text answer is not empty")
        return RowProblem(
            f"answers[{i}].text", "TEXT_TOO_LONG", f"at most {MAX_TEXT_ANSWER} characters"
        )
    values = a.choices.values
    if not values:
        return RowProblem(
            f"answers[{i}].choices.values", "CHOICES_EMPTY", "pick at least one option"
        )
    picked: set[str] = set()
    for j, value in enumerate(values):
        if value not in spec.options:
            return RowProblem(
                f"answers[{i}].choices.values[{j}]", "INVALID_CHOICE", f"{value!r} is not an option"
            )
        if value in picked:
            return RowProblem(
                f"answers[{i}].choices.values[{j}]",
                "DUPLICATE_CHOICE",
                f"{value!r} is picked twice",
            )
        picked.add(value)
    raise AssertionError("_value_problem called for a valid choices answer")


# RowFilter remembers answers and attribute entries it has seen valid, up to these many
# distinct byte strings per stream (a few MB at most): repeated values (choices, ratings,
# scores, plans, regions) are then decided by one dictionary look-up.
_KNOWN_LIMIT = 100_000
_KNOWN_MAX_BYTES = 128


def _timestamp(encoded: bytes) -> tuple[int, int] | None:
    """``(seconds, nanos)`` of an encoded Timestamp, or None if malformed or out of range.

    The C parser beats decoding the varints in Python, and is exact for every encoding.
    """
    try:
        ts = Timestamp.FromString(encoded)
    except DecodeError:
        return None
    value = (ts.seconds, ts.nanos)
    return value if _ts_valid(value) else None


def _varint_at(encoded: bytes, pos: int, limit: int) -> tuple[int, int]:
    """Decodes a varint of at most ``limit`` bytes at ``pos``: ``(value, end)``, or ``(-1, pos)``."""
    value = shift = 0
    for end in range(pos, min(pos + limit, len(encoded))):
        byte = encoded[end]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, end + 1
        shift += 7
    return -1, pos


def _short_length(encoded: bytes, pos: int) -> tuple[int, int]:
    """A length of at most 3 varint bytes at ``pos`` (40,000 bytes is the longest valid text)."""
    if pos + 1 < len(encoded):
        # Lengths below 16,384 (one or two bytes) are the usual case: decoded inline.
        low, high = encoded[pos], encoded[pos + 1]
        if low < 0x80:
            return low, pos + 1
        if high < 0x80:
            return low & 0x7F | high << 7, pos + 2
    return _varint_at(encoded, pos, 3)


class RowFilter:
    """The fast path of an import: accepts serialized Responses that are certainly valid.

    :meth:`accept` walks a row's encoding in its usual layout (slicing bytes, no
    protobuf objects) and applies the same rules as :meth:`ResponseChecker.check`. It answers "valid" or "not sure", never "invalid": any
    row it does not accept goes to :meth:`ResponseChecker.check` on the real message, which
    alone produces rejections, so every reason and field path comes from one place.

    A nested value is only ever trusted after it was parsed as its real type and found
    valid (then remembered by its bytes), or after matching the exact byte layout of a
    free-text answer; so an accepted row always parses as a ``Response``.

    Args:
        questions: The survey's questions.
        survey_id: Set in every stored row (appended as field 2, which wins on parsing).
    """

    def __init__(self, questions: Sequence[survey_pb2.Question], survey_id: str) -> None:
        self.checker = ResponseChecker(questions)
        self._specs = self.checker._specs
        self._required = self.checker._required
        # Answer and attribute entry fields seen valid, as encoded in a row (tag, one-byte
        # length, value): an answer maps to its question id, an entry to "" (question ids
        # are never empty). A slice that runs past the row's end is shorter than its
        # length byte says, so it never matches a key.
        self._known: dict[bytes, str] = {}
        # Question id bytes of the free-text questions: the one answer kind whose values
        # rarely repeat, recognised by layout instead.
        self._text_ids = {
            qid.encode(): qid for qid, spec in self._specs.items() if spec.case == "text"
        }
        sid = survey_id.encode()
        self.suffix = b"\x12" + varint(len(sid)) + sid

    def accept(self, raw: bytes) -> tuple[str, bool, bytes] | None:
        """``(id, completed, payload)`` if the encoded Response ``raw`` is valid, else None.

        None means "not decided here": the caller checks the parsed message instead.

        The walk below reads the fields in their usual encoding (each one once, lengths
        and flags in short varints, no unknown fields) and gives up on anything else;
        slicing bytes is far cheaper than reading a parsed message from Python. A field
        seen valid before (most answers and attribute entries) costs one slice and one
        dictionary look-up.
        """
        n = len(raw)
        pos = 0
        rid = b""
        completed = False
        start = complete = b""
        has_start = has_complete = False
        known = self._known
        # The question id of every answer and "" for every attribute entry, in order.
        kinds: list[str] = []
        try:
            while pos < n:
                # A field seen valid before is a key of known, with its tag and one-byte
                # length. Any other slice taken here matches no key: it starts with
                # another tag, or has a length byte of 0x80 or more, or runs past the row
                # and is shorter than its length byte says.
                end = pos + 2 + raw[pos + 1]
                kind = known.get(raw[pos:end])
                if kind is not None:
                    kinds.append(kind)
                    pos = end
                    continue
                tag = raw[pos]
                size = raw[pos + 1]
                if tag == 0x28:  # completed (varint)
                    if size > 1:
                        return None
                    completed = size == 1
                    pos += 2
                    continue
                field = pos
                if size < 0x80:
                    pos += 2
                else:
                    size, pos = _short_length(raw, pos + 1)
                    if size < 0:
                        return None
                    end = pos + size
                if end > n:
                    return None
                if tag == 0x3A:  # an answer not seen before
                    qid = self._learn_answer(raw, field, pos, end)
                    if qid is None:
                        return None
                    kinds.append(qid)
                elif tag == 0x32:  # an attribute entry not seen before
                    if not self._learn_entry(raw, field, pos, end):
                        return None
                    kinds.append("")
                elif tag == 0x0A and not rid:  # id (twice: the parser checks both)
                    rid = raw[pos:end]
                elif tag == 0x12:  # survey_id: replaced when stored, yet must be UTF-8
                    try:
                        raw[pos:end].decode()
                    except UnicodeDecodeError:
                        return None
                elif tag == 0x1A and not has_start:  # start_time (twice would merge)
                    start, has_start = raw[pos:end], True
                elif tag == 0x22 and not has_complete:
                    complete, has_complete = raw[pos:end], True
                else:
                    return None
                pos = end
        except IndexError:
            return None
        entries = kinds.count("")
        answered = set(kinds)
        answered.discard("")
        if len(answered) != len(kinds) - entries:  # a question answered twice
            return None
        if _ID_BYTES_RE.fullmatch(rid) is None or entries > MAX_ATTRIBUTES:
            return None
        if completed and not (has_complete and self._required <= answered):
            return None
        begin = end_time = None
        if has_start and (begin := _timestamp(start)) is None:
            return None
        if has_complete:
            end_time = _timestamp(complete)
            if end_time is None or (begin is not None and end_time < begin):
                return None
        return rid.decode(), completed, raw + self.suffix

    def _remember(self, raw: bytes, field: int, begin: int, end: int, kind: str) -> None:
        """Remembers the valid field ``raw[field:end]`` (value ``raw[begin:end]``) as ``kind``.

        Only fields in the layout :meth:`accept` looks up (tag and a one-byte length) are
        remembered, and only short ones: there are few distinct values of those.
        """
        if (
            begin - field == 2
            and end - begin <= _KNOWN_MAX_BYTES
            and len(self._known) < _KNOWN_LIMIT
        ):
            self._known[raw[field:end]] = kind

    def _learn_answer(self, raw: bytes, field: int, begin: int, end: int) -> str | None:
        """The question id of the encoded Answer ``raw[begin:end]`` if it is surely valid.

        ``field`` is where the answer's field (tag, length) starts. None means invalid or
        not sure.
        """
        # Free text: exactly field 1 (question id) then field 7 (text), nothing else.
        if end - begin > 3 and raw[begin] == 0x0A and (size := raw[begin + 1]) < 0x80:
            at = begin + 2 + size
            qid = self._text_ids.get(raw[begin + 2 : at])
            if qid is not None and at < end and raw[at] == 0x3A:
                length, first = _short_length(raw, at + 1)
                if length > 0 and first + length == end:
                    try:
                        text = raw[first:end].decode()
                    except UnicodeDecodeError:
                        text = ""
                    if 0 < len(text) <= MAX_TEXT_ANSWER:
                        return qid
        try:
            a = response_pb2.Answer.FromString(raw[begin:end])
        except DecodeError:
            return None
        qid = a.question_id
        spec = self._specs.get(qid)
        if spec is None:
            return None
        case = a.WhichOneof("value")
        if case != spec.case or not _value_ok(a, case, spec):
            return None
        self._remember(raw, field, begin, end, qid)
        return qid

    def _learn_entry(self, raw: bytes, field: int, begin: int, end: int) -> bool:
        """Whether the encoded attribute entry ``raw[begin:end]`` is valid (remembered if so)."""
        try:
            entry = AttributeEntryView.FromString(raw[begin:end])
        except DecodeError:
            return False
        if not 1 <= len(entry.key) <= MAX_ATTRIBUTE_KEY or len(entry.value) > MAX_ATTRIBUTE_VALUE:
            return False
        self._remember(raw, field, begin, end, "")
        return True
