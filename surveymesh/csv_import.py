"""CSV exports of survey tools → a SurveyMesh survey and its responses (pure functions, no I/O
beyond :func:`load_mapping` reading a small JSON file).

Understood layouts (as their public export documentation describes them):

``google_forms``
    One header row: ``Timestamp``, then one column per question. Checkbox answers are the
    chosen labels joined with ``", "``.
``surveymonkey``
    Two header rows: the question row (a question spanning several columns names only its
    first one) and the sub-answer row (``Response``, ``Open-Ended Response`` or one option
    label per column of a multiple-choice question). ``Respondent ID``, ``Start Date``,
    ``End Date``.
``typeform``
    One header row: ``#`` (the response token), the questions (a multiple-selection question
    has one column per choice, headed by the choice), hidden fields, ``Start Date (UTC)``,
    ``Submit Date (UTC)``, ``Network ID``.
``qualtrics``
    Three header rows: column ids (``Q1``, ``Q3_1`` …), question texts and ``{"ImportId": …}``
    JSON; ``ResponseId``, ``StartDate``, ``EndDate``, ``Finished``, ``Progress``.
``generic``
    One header row; an ``id``/``response_id`` column and a timestamp column are used when present.

Question types are inferred from the header and the values: NPS (integers 0-10 and
"recommend" wording), rating (integers 1-5), number, single choice (few distinct short
values), multiple choice (values joined by a delimiter, or a group of option columns) and
free text. Columns that are not questions (hidden fields, segments) become respondent
attributes. A mapping file (JSON, see :class:`Mapping`) overrides any of it.

Rows that cannot be converted are reported as :class:`Rejection` with their CSV line number;
rows the server refuses are mapped back to their line with :meth:`CsvImport.line_of`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from surveymesh.delivery.v1 import response_pb2, survey_pb2

QT = survey_pb2.QuestionType

TYPE_NAMES: dict[str, int] = {
    "single_choice": QT.QUESTION_TYPE_SINGLE_CHOICE,
    "multiple_choice": QT.QUESTION_TYPE_MULTIPLE_CHOICE,
    "rating": QT.QUESTION_TYPE_RATING,
    "nps": QT.QUESTION_TYPE_NPS,
    "number": QT.QUESTION_TYPE_NUMBER,
    "free_text": QT.QUESTION_TYPE_FREE_TEXT,
}
TYPE_LABELS = {v: k for k, v in TYPE_NAMES.items()}

MAX_CHOICE_LABEL = 80  # longer values read as sentences, not options
MAX_OPTIONS = 100
MAX_ATTRIBUTE_VALUE = 256
_NPS_WORDING = re.compile(r"recommend|net promoter|\bnps\b", re.IGNORECASE)
_HIDDEN_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class Layout(StrEnum):
    """The export layouts :func:`parse_csv` understands."""

    GOOGLE_FORMS = "google_forms"
    SURVEYMONKEY = "surveymonkey"
    TYPEFORM = "typeform"
    QUALTRICS = "qualtrics"
    GENERIC = "generic"


class CsvImportError(ValueError):
    """The file (or mapping) cannot be used at all: empty, no questions, bad mapping."""


@dataclass(frozen=True)
class QuestionOverride:
    """A mapping file's say about one question column (every field optional)."""

    id: str | None = None
    type: int | None = None
    text: str | None = None
    options: tuple[str, ...] | None = None
    delimiter: str | None = None
    skip: bool = False


@dataclass(frozen=True)
class Mapping:
    """Overrides of the inference, read from a JSON mapping file.

    Example::

        {
          "title": "Customer pulse Q3",
          "layout": "google_forms",
          "id_column": "Email Address",
          "attributes": {"Region": "region", "Plan": "plan"},
          "ignore": ["Score"],
          "questions": {
            "How likely are you to recommend us?": {"id": "nps", "type": "nps"},
            "Which features do you use?": {"type": "multiple_choice", "delimiter": ";"},
            "Internal notes": {"skip": true}
          }
        }

    Question keys are a column's header (its question text) or the inferred question id.
    ``attributes`` maps a column header to an attribute key (a list keeps the header as key).
    """

    title: str | None = None
    layout: Layout | None = None
    id_column: str | None = None
    start_column: str | None = None
    end_column: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    questions: dict[str, QuestionOverride] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Mapping:
        """Builds a mapping from parsed JSON; raises :class:`CsvImportError` naming the key."""
        if not isinstance(data, dict):
            raise CsvImportError("a mapping file holds one JSON object")
        known = {"title", "layout", "id_column", "start_column", "end_column"}
        known |= {"attributes", "ignore", "questions"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CsvImportError(f"mapping: unknown key(s) {', '.join(unknown)}")
        layout = data.get("layout")
        if layout is not None and layout not in set(Layout):
            raise CsvImportError(
                f"mapping.layout: {layout!r} is not one of {', '.join(x.value for x in Layout)}"
            )
        raw_attrs = data.get("attributes", {})
        if isinstance(raw_attrs, list):
            attributes = {str(h): _attribute_key(str(h)) for h in raw_attrs}
        elif isinstance(raw_attrs, dict):
            attributes = {str(k): str(v) for k, v in raw_attrs.items()}
        else:
            raise CsvImportError("mapping.attributes: a list of columns or an object")
        questions: dict[str, QuestionOverride] = {}
        for key, spec in (data.get("questions") or {}).items():
            if not isinstance(spec, dict):
                raise CsvImportError(f"mapping.questions[{key!r}]: an object")
            type_name = spec.get("type")
            if type_name is not None and type_name not in TYPE_NAMES:
                raise CsvImportError(
                    f"mapping.questions[{key!r}].type: {type_name!r} is not one of "
                    + ", ".join(TYPE_NAMES)
                )
            options = spec.get("options")
            questions[str(key)] = QuestionOverride(
                id=spec.get("id"),
                type=TYPE_NAMES[type_name] if type_name else None,
                text=spec.get("text"),
                options=tuple(str(o) for o in options) if options is not None else None,
                delimiter=spec.get("delimiter"),
                skip=bool(spec.get("skip", False)),
            )
        return cls(
            title=data.get("title"),
            layout=Layout(layout) if layout else None,
            id_column=data.get("id_column"),
            start_column=data.get("start_column"),
            end_column=data.get("end_column"),
            attributes=attributes,
            ignore=frozenset(str(x) for x in data.get("ignore", [])),
            questions=questions,
        )


def load_mapping(path: str | Path) -> Mapping:
    """Reads a mapping file (JSON)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CsvImportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return Mapping.from_dict(data)


@dataclass(frozen=True)
class Table:
    """The raw CSV: header rows, then data rows each with the line number it starts on."""

    header_rows: tuple[tuple[str, ...], ...]
    rows: tuple[tuple[int, tuple[str, ...]], ...]
    layout: Layout


@dataclass(frozen=True)
class PlannedQuestion:
    """A survey question and the CSV column(s) its answers come from.

    A grouped multiple-choice question (SurveyMonkey, Typeform) reads one column per
    option: ``option_columns`` maps each column index to its option label.
    """

    id: str
    text: str
    type: int
    options: tuple[str, ...] = ()
    column: int = -1
    option_columns: tuple[tuple[int, str], ...] = ()
    delimiter: str = ", "
    header: str = ""

    def to_proto(self) -> survey_pb2.Question:
        """The question as sent in CreateSurvey."""
        return survey_pb2.Question(
            id=self.id,
            text=self.text,
            type=self.type,  # type: ignore[arg-type]
            options=list(self.options),
        )


@dataclass(frozen=True)
class Plan:
    """How each column of the CSV is used."""

    layout: Layout
    title: str
    questions: tuple[PlannedQuestion, ...]
    attributes: tuple[tuple[int, str], ...] = ()  # (column, attribute key)
    id_column: int = -1
    start_column: int = -1
    end_column: int = -1
    finished_column: int = -1
    ignored: tuple[str, ...] = ()  # headers not used, for the summary
    unmatched: tuple[str, ...] = ()  # question columns that match no question of the survey

    def survey(self, description: str = "") -> survey_pb2.Survey:
        """The survey to create for this CSV."""
        return survey_pb2.Survey(
            title=self.title,
            description=description,
            questions=[q.to_proto() for q in self.questions],
        )

    def describe(self) -> list[dict[str, Any]]:
        """The planned questions as plain data (for ``--output json`` and dry runs)."""
        return [
            {
                "id": q.id,
                "text": q.text,
                "type": TYPE_LABELS[q.type],
                "options": list(q.options),
                "header": q.header,
            }
            for q in self.questions
        ]


@dataclass(frozen=True)
class Rejection:
    """A CSV row that was not imported."""

    line: int
    field: str
    reason: str
    description: str
    response_id: str = ""


@dataclass
class CsvImport:
    """The result of converting a CSV: the plan, the responses and the rows refused locally."""

    plan: Plan
    responses: list[response_pb2.Response]
    lines: list[int]  # lines[i] is the CSV line of responses[i]
    rejections: list[Rejection]

    def line_of(self, row: int) -> int:
        """The CSV line of the ``row``-th response sent (``RejectedResponse.row``)."""
        return self.lines[row] if 0 <= row < len(self.lines) else 0


# ---------------------------------------------------------------------------------------------
# Reading and layout detection


def read_table(text: str, layout: Layout | None = None) -> Table:
    """Splits CSV text into header rows and data rows with their starting line numbers.

    Raises:
        CsvImportError: the text holds no header.
    """
    text = text.lstrip("\ufeff")  # Excel and Google Sheets write a UTF-8 byte order mark
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, tuple[str, ...]]] = []
    previous_end = 0
    for record in reader:
        # line_num is the last physical line read; a quoted field may span several lines.
        records.append((previous_end + 1, tuple(record)))
        previous_end = reader.line_num
    records = [(line, rec) for line, rec in records if any(cell.strip() for cell in rec)]
    if not records:
        raise CsvImportError("the CSV file is empty")
    layout = layout or detect_layout([rec for _, rec in records[:3]])
    n_header = {Layout.SURVEYMONKEY: 2, Layout.QUALTRICS: 3}.get(layout, 1)
    if len(records) < n_header:
        raise CsvImportError(f"a {layout.value} export has {n_header} header rows")
    headers = tuple(tuple(c.strip() for c in rec) for _, rec in records[:n_header])
    return Table(headers, tuple(records[n_header:]), layout)


def detect_layout(first_rows: Sequence[Sequence[str]]) -> Layout:
    """Recognises an export layout from its first (up to three) rows."""
    head = [c.strip() for c in first_rows[0]]
    names = set(head)
    if len(first_rows) >= 3 and any(c.strip().startswith('{"ImportId"') for c in first_rows[2]):
        return Layout.QUALTRICS
    if {"ResponseId", "StartDate"} <= names:
        return Layout.QUALTRICS
    if "Respondent ID" in names and len(first_rows) >= 2:
        return Layout.SURVEYMONKEY
    if head and head[0] == "#" and ("Submit Date (UTC)" in names or "Network ID" in names):
        return Layout.TYPEFORM
    if head and head[0] == "Timestamp":
        return Layout.GOOGLE_FORMS
    return Layout.GENERIC


# ---------------------------------------------------------------------------------------------
# Inference


# Metadata columns of each layout: role ("id", "start", "end", "finished") or None (dropped:
# personal data such as IP addresses and names never become attributes unless mapped).
_META: dict[Layout, dict[str, str | None]] = {
    Layout.GOOGLE_FORMS: {"Timestamp": "end", "Email Address": None, "Email address": None},
    Layout.SURVEYMONKEY: {
        "Respondent ID": "id",
        "Collector ID": None,
        "Start Date": "start",
        "End Date": "end",
        "IP Address": None,
        "Email Address": None,
        "First Name": None,
        "Last Name": None,
        "Custom Data 1": None,
    },
    Layout.TYPEFORM: {
        "#": "id",
        "Start Date (UTC)": "start",
        "Submit Date (UTC)": "end",
        "Stage Date (UTC)": None,
        "Network ID": None,
        "Tags": None,
        "Response Type": "finished",
    },
    Layout.QUALTRICS: {
        "StartDate": "start",
        "EndDate": "end",
        "Status": None,
        "IPAddress": None,
        "Progress": None,
        "Duration (in seconds)": None,
        "Finished": "finished",
        "RecordedDate": None,
        "ResponseId": "id",
        "RecipientLastName": None,
        "RecipientFirstName": None,
        "RecipientEmail": None,
        "ExternalReference": None,
        "LocationLatitude": None,
        "LocationLongitude": None,
        "DistributionChannel": "attribute",
        "UserLanguage": "attribute",
    },
    Layout.GENERIC: {
        "id": "id",
        "response_id": "id",
        "ResponseId": "id",
        "Response ID": "id",
        "start_time": "start",
        "started_at": "start",
        "complete_time": "end",
        "submitted_at": "end",
        "timestamp": "end",
        "Timestamp": "end",
        "completed": "finished",
    },
}


@dataclass
class _Source:
    """A question candidate before its type is decided."""

    text: str
    id_hint: str
    column: int = -1
    option_columns: list[tuple[int, str]] = field(default_factory=list)
    header: str = ""


def infer_plan(
    table: Table,
    mapping: Mapping | None = None,
    *,
    title: str | None = None,
    survey: survey_pb2.Survey | None = None,
) -> Plan:
    """Decides what each column is: a question (with its type), an attribute or metadata.

    Args:
        table: The CSV as read by :func:`read_table`.
        mapping: Overrides from a mapping file.
        title: The survey title (the mapping's, else this, else "Imported survey").
        survey: An existing survey to import into: columns are matched to its questions (by
            id, then by text, then by the mapping) and take their types from it.

    Raises:
        CsvImportError: no column could be used as a question.
    """
    mapping = mapping or Mapping()
    layout = table.layout
    header = table.header_rows[0]
    # Cells beyond the header belong to no column (to_responses rejects such rows).
    width = max(len(h) for h in table.header_rows)
    meta = _META[layout]
    roles: dict[str, int] = {}
    attributes: list[tuple[int, str]] = []
    sources: list[_Source] = []
    ignored: list[str] = []

    def column_values(col: int) -> list[str]:
        return [r[col].strip() for _, r in table.rows if col < len(r) and r[col].strip()]

    explicit_roles = {
        mapping.id_column: "id",
        mapping.start_column: "start",
        mapping.end_column: "end",
    }
    col = 0
    while col < width:
        name = header[col] if col < len(header) else ""
        text = _question_text(table, col)
        if name in explicit_roles and name is not None:
            roles[explicit_roles[name]] = col
        elif name in mapping.ignore or text in mapping.ignore:
            ignored.append(name)
        elif name in mapping.attributes or text in mapping.attributes:
            attributes.append((col, mapping.attributes.get(name) or mapping.attributes[text]))
        elif name in meta and (layout != Layout.GENERIC or not _has_override(mapping, name)):
            role = meta[name]
            if role == "attribute":
                attributes.append((col, _attribute_key(name)))
            elif role is not None and role not in roles:
                roles[role] = col
            else:
                ignored.append(name)
        elif layout == Layout.QUALTRICS and not _is_qualtrics_question(table, col):
            # Embedded data fields (plan, region …) carry respondent attributes.
            attributes.append((col, _attribute_key(name)))
        elif layout == Layout.SURVEYMONKEY:
            group = _surveymonkey_group(table, col, width)
            sources.extend(_surveymonkey_sources(table, group, column_values))
            col = group[-1] + 1
            continue
        elif not name and not column_values(col):
            pass  # an empty trailing column
        elif _looks_like_hidden_field(layout, name, column_values(col), mapping):
            attributes.append((col, name))
        else:
            group = _option_column_run(table, col, width, column_values, mapping)
            if len(group) >= 2:
                sources.append(
                    _Source(
                        # The export names only the choices, not the question.
                        text="Which of these apply?",
                        id_hint="choices",
                        option_columns=[(c, header[c]) for c in group],
                        header=header[group[0]],
                    )
                )
                col = group[-1] + 1
                continue
            id_hint = header[col] if layout == Layout.QUALTRICS else text
            sources.append(_Source(text=text or name, id_hint=id_hint, column=col, header=name))
        col += 1

    questions, unmatched = _decide_questions(sources, mapping, column_values, survey)
    if not questions:
        raise CsvImportError(
            "no question columns found"
            + (": none matches a question of the survey" if survey is not None else "")
        )
    return Plan(
        layout=layout,
        title=(mapping.title or title or (survey.title if survey else "") or "Imported survey")[
            :200
        ],
        questions=tuple(questions),
        attributes=tuple(attributes),
        id_column=roles.get("id", -1),
        start_column=roles.get("start", -1),
        end_column=roles.get("end", -1),
        finished_column=roles.get("finished", -1),
        ignored=tuple(ignored),
        unmatched=tuple(unmatched),
    )


def _has_override(mapping: Mapping, name: str) -> bool:
    return name in mapping.questions


def _question_text(table: Table, col: int) -> str:
    """The human question text of a column: row 2 for Qualtrics, row 1 elsewhere."""
    row = table.header_rows[1] if table.layout == Layout.QUALTRICS else table.header_rows[0]
    return row[col] if col < len(row) else ""


def _is_qualtrics_question(table: Table, col: int) -> bool:
    if len(table.header_rows) < 3 or col >= len(table.header_rows[2]):
        return True
    try:
        import_id = json.loads(table.header_rows[2][col]).get("ImportId", "")
    except (ValueError, AttributeError):
        return True
    return str(import_id).startswith("QID")


def _looks_like_hidden_field(
    layout: Layout, name: str, values: list[str], mapping: Mapping
) -> bool:
    """Typeform hidden fields and generic segment columns are identifiers such as ``plan``."""
    if name in mapping.questions or layout not in {Layout.TYPEFORM, Layout.GENERIC}:
        return False
    if not _HIDDEN_FIELD.match(name):
        return False
    distinct = set(values)
    return 0 < len(distinct) <= 20 and all(not _is_number(v) for v in distinct)


def _option_column_run(
    table: Table, col: int, width: int, values_of: Any, mapping: Mapping
) -> list[int]:
    """Consecutive columns whose every value equals their header: one option column each
    (Typeform's and generic exports' multiple selection)."""
    header = table.header_rows[0]
    run: list[int] = []
    c = col
    while c < width and c < len(header) and header[c] and header[c] not in mapping.questions:
        values = values_of(c)
        if not values or any(v != header[c] for v in values):
            break
        run.append(c)
        c += 1
    return run


def _surveymonkey_group(table: Table, col: int, width: int) -> list[int]:
    """The columns of the question starting at ``col``: it plus the following columns whose
    question row is blank."""
    top = table.header_rows[0]
    group = [col]
    c = col + 1
    while c < width and (c >= len(top) or not top[c]):
        group.append(c)
        c += 1
    return group


_SM_OPEN = {"Open-Ended Response", "Other (please specify)"}


def _surveymonkey_sources(table: Table, group: list[int], values_of: Any) -> list[_Source]:
    top, sub = table.header_rows
    text = top[group[0]]

    def label(c: int) -> str:
        return sub[c] if c < len(sub) else ""

    if len(group) == 1:
        return [_Source(text=text, id_hint=text, column=group[0], header=text)]
    options = [c for c in group if label(c) not in _SM_OPEN and label(c) != "Response"]
    open_cols = [c for c in group if label(c) in _SM_OPEN]
    if options and all(all(v == label(c) for v in values_of(c)) for c in options):
        out = [
            _Source(
                text=text,
                id_hint=text,
                option_columns=[(c, label(c)) for c in options],
                header=text,
            )
        ]
    else:
        # A matrix: each row of the grid is its own question, "Question - Row".
        out = [
            _Source(
                text=f"{text} - {label(c)}", id_hint=f"{text} {label(c)}", column=c, header=text
            )
            for c in group
            if c not in open_cols
        ]
    out.extend(
        _Source(text=f"{text} (other)", id_hint=f"{text} other", column=c, header=text)
        for c in open_cols
    )
    return out


def _decide_questions(
    sources: list[_Source],
    mapping: Mapping,
    values_of: Any,
    survey: survey_pb2.Survey | None,
) -> tuple[list[PlannedQuestion], list[str]]:
    planned: list[PlannedQuestion] = []
    unmatched: list[str] = []
    used_ids: set[str] = set()
    by_id = {q.id: q for q in survey.questions} if survey is not None else {}
    by_text = {_norm(q.text): q for q in survey.questions} if survey is not None else {}
    for n, src in enumerate(sources, start=1):
        override = (
            mapping.questions.get(src.text)
            or mapping.questions.get(src.header)
            or mapping.questions.get(_slug(src.id_hint))
            or QuestionOverride()
        )
        if override.skip:
            continue
        if survey is not None:
            target = by_id.get(override.id or "") or by_id.get(_slug(src.id_hint))
            target = target or by_text.get(_norm(src.text))
            if target is None or target.id in used_ids:
                unmatched.append(src.text)
                continue
            used_ids.add(target.id)
            planned.append(
                PlannedQuestion(
                    id=target.id,
                    text=target.text,
                    type=target.type,
                    options=tuple(target.options),
                    column=src.column,
                    option_columns=tuple(src.option_columns),
                    delimiter=override.delimiter or _default_delimiter(mapping),
                    header=src.header,
                )
            )
            continue
        qid = override.id or _unique_id(_slug(src.id_hint) or f"q{n}", used_ids)
        used_ids.add(qid)
        text = (override.text or src.text or qid)[:1000]
        if src.option_columns:
            options = override.options or tuple(label for _, label in src.option_columns)
            qtype = override.type or QT.QUESTION_TYPE_MULTIPLE_CHOICE
            planned.append(
                PlannedQuestion(
                    qid,
                    text,
                    qtype,
                    options,
                    option_columns=tuple(src.option_columns),
                    header=src.header,
                )
            )
            continue
        values = values_of(src.column)
        delimiter = override.delimiter or _default_delimiter(mapping)
        qtype, options = infer_type(src.text, values, delimiter=delimiter)
        if override.type is not None:
            qtype = override.type
            if qtype in (QT.QUESTION_TYPE_SINGLE_CHOICE, QT.QUESTION_TYPE_MULTIPLE_CHOICE):
                options = _options_for(qtype, values, delimiter)
            else:
                options = ()
        if override.options is not None:
            options = override.options
        planned.append(
            PlannedQuestion(
                qid,
                text,
                qtype,
                tuple(options),
                column=src.column,
                delimiter=delimiter,
                header=src.header,
            )
        )
    return planned, unmatched


def _default_delimiter(mapping: Mapping) -> str:
    # Google Forms and Typeform join with ", "; Qualtrics with ","; splitting on "," and
    # stripping covers both.
    return ","


def infer_type(
    text: str, values: Sequence[str], *, delimiter: str = ","
) -> tuple[int, tuple[str, ...]]:
    """Infers a question's type (and options) from its text and its non-empty answers.

    Returns:
        (``QuestionType`` value, options for choice types else ``()``).
    """
    if not values:
        return QT.QUESTION_TYPE_FREE_TEXT, ()
    n = len(values)
    # A stray typo ("seven") must not turn a numeric column into text: it is rejected
    # row by row later. Up to one bad value in ten (at least one) is tolerated.
    tolerated = max(1, n // 10) if n >= 4 else 0
    ints = [i for i in (_int_or_none(v) for v in values) if i is not None]
    if ints and n - len(ints) <= tolerated:
        lo, hi = min(ints), max(ints)
        # With NPS wording, a few out-of-range scores are typos the server will reject.
        nps_like = sum(1 for i in ints if 0 <= i <= 10)
        if _NPS_WORDING.search(text) and n - nps_like <= tolerated:
            return QT.QUESTION_TYPE_NPS, ()
        if 1 <= lo and hi <= 5:
            return QT.QUESTION_TYPE_RATING, ()
        return QT.QUESTION_TYPE_NUMBER, ()
    numbers = sum(1 for v in values if _is_number(v))
    if numbers and n - numbers <= tolerated:
        return QT.QUESTION_TYPE_NUMBER, ()
    distinct = Counter(values)
    short = all(len(v) <= MAX_CHOICE_LABEL for v in distinct)
    # Several values carry the delimiter and their parts recur: a multiple choice.
    if delimiter and any(delimiter in v for v in distinct):
        parts = Counter(p for v in values for p in _split(v, delimiter))
        if (
            2 <= len(parts) <= min(MAX_OPTIONS, max(2, n))
            and all(len(p) <= MAX_CHOICE_LABEL for p in parts)
            and len(parts) < sum(parts.values())
            and sum(1 for c in parts.values() if c >= 2) >= len(parts) / 2
        ):
            return QT.QUESTION_TYPE_MULTIPLE_CHOICE, _ordered(parts)
    if short and 2 <= len(distinct) <= min(30, max(2, n // 2)):
        return QT.QUESTION_TYPE_SINGLE_CHOICE, _ordered(distinct)
    return QT.QUESTION_TYPE_FREE_TEXT, ()


def _options_for(qtype: int, values: Sequence[str], delimiter: str) -> tuple[str, ...]:
    if qtype == QT.QUESTION_TYPE_MULTIPLE_CHOICE:
        return _ordered(Counter(p for v in values for p in _split(v, delimiter)))
    return _ordered(Counter(values))


def _ordered(counts: Counter[str]) -> tuple[str, ...]:
    """Options in order of first appearance (a Counter keeps insertion order)."""
    return tuple(counts)


def _split(value: str, delimiter: str, options: Sequence[str] = ()) -> list[str]:
    """Splits a joined multiple-choice answer. With known options, labels that themselves
    contain the delimiter ("Yes, daily") are matched whole first."""
    rest = value.strip()
    out: list[str] = []
    for option in sorted(options, key=len, reverse=True):
        if delimiter in option and option in rest:
            out.append(option)
            rest = rest.replace(option, "")
    out.extend(p.strip() for p in rest.split(delimiter) if p.strip())
    return out


# ---------------------------------------------------------------------------------------------
# Conversion


def to_responses(table: Table, plan: Plan) -> CsvImport:
    """Converts the data rows to ``Response`` messages following ``plan``.

    A row that cannot be converted (a bad number, an unparsable date, too many cells) is
    rejected with its CSV line; the server checks the rest (ranges, options, required).
    """
    responses: list[response_pb2.Response] = []
    lines: list[int] = []
    rejections: list[Rejection] = []
    seen_ids: Counter[str] = Counter()
    width = len(table.header_rows[0])
    for line, row in table.rows:
        rid = _cell(row, plan.id_column) or _row_id(row, seen_ids)
        if len(row) > width and any(c.strip() for c in row[width:]):
            rejections.append(
                Rejection(
                    line, "row", "MALFORMED_ROW", f"{len(row)} cells, the header has {width}", rid
                )
            )
            continue
        try:
            responses.append(_convert(row, plan, rid))
        except _RowError as e:
            rejections.append(Rejection(line, e.field, e.reason, e.description, rid))
            continue
        lines.append(line)
    return CsvImport(plan, responses, lines, rejections)


def parse_csv(
    text: str,
    mapping: Mapping | None = None,
    *,
    title: str | None = None,
    survey: survey_pb2.Survey | None = None,
) -> CsvImport:
    """Reads, infers and converts in one go (see :func:`infer_plan` for the arguments)."""
    table = read_table(text, (mapping.layout if mapping else None))
    return to_responses(table, infer_plan(table, mapping, title=title, survey=survey))


class _RowError(Exception):
    def __init__(self, field: str, reason: str, description: str) -> None:
        super().__init__(description)
        self.field, self.reason, self.description = field, reason, description


def _cell(row: Sequence[str], col: int) -> str:
    return row[col].strip() if 0 <= col < len(row) else ""


def _row_id(row: Sequence[str], seen: Counter[str]) -> str:
    """A stable id for a row without one: a hash of its content, so importing the same file
    again is a no-op (duplicates), whatever the row order."""
    digest = hashlib.sha256("\x1f".join(row).encode()).hexdigest()[:16]
    seen[digest] += 1
    return f"csv-{digest}" + (f"-{seen[digest]}" if seen[digest] > 1 else "")


def _convert(row: Sequence[str], plan: Plan, rid: str) -> response_pb2.Response:
    r = response_pb2.Response(id=_clean_id(rid))
    start = _cell(row, plan.start_column)
    end = _cell(row, plan.end_column)
    start_dt = _parse_time(start, "start_time") if start else None
    end_dt = _parse_time(end, "complete_time") if end else None
    finished = _finished(_cell(row, plan.finished_column)) if plan.finished_column >= 0 else None
    completed = finished if finished is not None else end_dt is not None
    if start_dt is None and end_dt is not None:
        start_dt = end_dt  # Google Forms records only the submission time
    if start_dt is not None:
        r.start_time.CopyFrom(_ts(start_dt))
    if completed:
        r.completed = True
        r.complete_time.CopyFrom(_ts(end_dt or start_dt or datetime(1970, 1, 1, tzinfo=UTC)))
        if end_dt is None and start_dt is None:
            raise _RowError("complete_time", "INVALID_TIMESTAMP", "a finished row has no end date")
    for col, key in plan.attributes:
        value = _cell(row, col)
        if value:
            r.attributes[key] = value[:MAX_ATTRIBUTE_VALUE]
    for q in plan.questions:
        answer = _answer(row, q)
        if answer is not None:
            r.answers.append(answer)
    return r


def _answer(row: Sequence[str], q: PlannedQuestion) -> response_pb2.Answer | None:
    a = response_pb2.Answer(question_id=q.id)
    if q.option_columns:
        chosen = [label for c, label in q.option_columns if _cell(row, c)]
        if not chosen:
            return None
        if q.type == QT.QUESTION_TYPE_SINGLE_CHOICE:
            a.choice = chosen[0]
        else:
            a.choices.values.extend(dict.fromkeys(chosen))
        return a
    raw = _cell(row, q.column)
    if not raw:
        return None
    where = q.header or q.text
    if q.type in (QT.QUESTION_TYPE_RATING, QT.QUESTION_TYPE_NPS):
        value = _int_or_none(raw)
        if value is None:
            raise _RowError(where, "NOT_AN_INTEGER", f"{raw!r} is not a whole number")
        if q.type == QT.QUESTION_TYPE_RATING:
            a.rating = value
        else:
            a.nps = value
    elif q.type == QT.QUESTION_TYPE_NUMBER:
        number = _float_or_none(raw)
        if number is None:
            raise _RowError(where, "NOT_A_NUMBER", f"{raw!r} is not a number")
        a.number = number
    elif q.type == QT.QUESTION_TYPE_SINGLE_CHOICE:
        a.choice = raw
    elif q.type == QT.QUESTION_TYPE_MULTIPLE_CHOICE:
        parts = list(dict.fromkeys(_split(raw, q.delimiter.strip() or ",", q.options)))
        a.choices.values.extend(parts)
    else:
        a.text = raw
    return a


def _clean_id(rid: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.:-]+", "-", rid).strip("-")
    return cleaned[:128] or rid


_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %I:%M:%S %p",
    "%Y/%m/%d %H:%M:%S",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%Y-%m-%d",
)
_GMT = re.compile(r"\s*(?:GMT|UTC)([+-]\d{1,2})?(?::?(\d{2}))?$")


def parse_timestamp(value: str) -> datetime | None:
    """Parses the date formats of the supported exports; naive times are taken as UTC.

    Google Forms appends the sheet's zone as ``GMT+2``; Typeform says ``(UTC)`` in its header.
    """
    value = value.strip()
    tz: timezone = UTC
    m = _GMT.search(value)
    if m:
        if m.group(1):
            hours = int(m.group(1))
            minutes = int(m.group(2) or 0) * (1 if hours >= 0 else -1)
            tz = timezone(timedelta(hours=hours, minutes=minutes))
        value = value[: m.start()]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None:
        for fmt in _FORMATS:
            try:
                parsed = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def _parse_time(value: str, field_name: str) -> datetime:
    parsed = parse_timestamp(value)
    if parsed is None:
        raise _RowError(field_name, "INVALID_TIMESTAMP", f"{value!r} is not a date and time")
    return parsed


def _finished(value: str) -> bool | None:
    v = value.strip().lower()
    if v in {"true", "1", "yes", "completed", "finished"}:
        return True
    if v in {"false", "0", "no", "partial"}:
        return False
    return None


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def _int_or_none(value: str) -> int | None:
    v = value.strip()
    if re.fullmatch(r"[+-]?\d+", v):
        return int(v)
    # "7.0" from spreadsheets is still a whole number.
    f = _float_or_none(v)
    if f is not None and f.is_integer() and abs(f) < 1e15:
        return int(f)
    return None


def _float_or_none(value: str) -> float | None:
    try:
        f = float(value.strip().replace(",", "")) if value.strip() else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def _is_number(value: str) -> bool:
    return _float_or_none(value) is not None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _slug(text: str, limit: int = 48) -> str:
    """A question id from a text: lower-case words joined by ``_``, cut at a word boundary."""
    slug = _ID_CHARS.sub("_", text.strip().lower()).strip("_")
    if len(slug) > limit:
        cut = slug[: limit + 1].rsplit("_", 1)[0]
        slug = cut if len(cut) >= limit // 2 else slug[:limit]
    return slug.rstrip("_")


def _attribute_key(name: str) -> str:
    """``DistributionChannel`` → ``distribution_channel``; ``Region`` → ``region``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return _slug(snake, 64) or "attribute"


def _unique_id(base: str, used: set[str]) -> str:
    if base not in used:
        return base
    for i in range(2, 10_000):
        candidate = f"{base[:60]}_{i}"
        if candidate not in used:
            return candidate
    raise CsvImportError("too many questions with the same text")
