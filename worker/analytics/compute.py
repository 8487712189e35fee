"""The statistics components of a report, computed from its snapshot in PostgreSQL.

This is the one module of :mod:`worker.analytics` that does I/O: it reads the snapshot one
question at a time and hands numpy arrays to the pure functions of :mod:`.stats`.

How it reads (bounded memory per question, exact figures):
    * numeric answers (rating, NPS, number) arrive by one binary ``COPY`` per question,
      parsed straight into numpy (no Python object per row); each row carries the
      respondent's group code for every segment attribute, so one read serves the
      question's figures and all of its segment splits;
    * choice answers are counted in SQL (``GROUPING SETS`` over the option and each
      attribute's group code): exact, and the result has one row per option and group;
    * response counts, completion rate and completion times are aggregated in SQL
      (``percentile_cont`` for the median, which is exact).

Memory is O(answers of one question) (8 bytes per value plus 2 per segment attribute),
never O(responses x questions).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np

from surveymesh.workflow_contract import ReportOptionsInput
from worker.analytics import stats as st

NUMERIC_TYPES = ("rating", "nps", "number")
CHOICE_TYPES = ("single_choice", "multiple_choice")
# Respondent attributes offered as default segments: those with 2..12 distinct values.
DEFAULT_SEGMENT_MIN_GROUPS = 2
DEFAULT_SEGMENT_MAX_GROUPS = 12
MAX_DEFAULT_SEGMENTS = 5
# An explicitly requested attribute keeps its largest groups; the rest are left out (noted).
MAX_SEGMENT_GROUPS = 20
CORRECTION = "holm"
ALPHA = 0.05
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

Progress = Callable[[str], None]


@dataclass
class Segmenting:
    """One respondent attribute the report splits by."""

    attribute: str
    groups: list[str]  # largest first
    sizes: dict[str, int]
    missing: int = 0  # respondents without the attribute (or in a left-out group)
    left_out: int = 0  # groups beyond MAX_SEGMENT_GROUPS
    default: bool = False  # chosen automatically, not requested


@dataclass
class Columns:
    """One question's numeric answers and, per segment attribute, each answer's group code."""

    values: np.ndarray
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int16))


class BinaryCopyParser:
    """Parses PostgreSQL's binary ``COPY`` output of fixed-width NOT NULL columns as it
    arrives, into a structured numpy array (one field ``f0``, ``f1`` … per column).

    Rows are converted chunk by chunk, so the raw stream (about twice the size of the
    values, with its per-field lengths) is never held whole: a million-row read peaks at
    the parsed columns, not at the stream plus its copy.

    Args:
        formats: numpy big-endian formats of the columns, e.g. ``[">f8", ">i2"]``.
        consume: Receives each parsed piece instead of :meth:`result` (then empty).
    """

    def __init__(
        self, formats: Sequence[str], consume: Callable[[np.ndarray], None] | None = None
    ) -> None:
        fields: list[tuple[str, str]] = [("count", ">i2")]
        self._widths = []
        for i, fmt in enumerate(formats):
            fields += [(f"len{i}", ">i4"), (f"f{i}", fmt)]
            self._widths.append(np.dtype(fmt).itemsize)
        self._row = np.dtype(fields)
        self._out = np.dtype([(f"f{i}", fmt.replace(">", "=")) for i, fmt in enumerate(formats)])
        self._buf = bytearray()
        self._started = False
        self._parts: list[np.ndarray] = []
        self._consume = consume if consume is not None else self._parts.append

    def feed(self, chunk: bytes) -> None:
        """Takes the next piece of the stream (any size).

        Raises:
            ValueError: the stream is not binary COPY, or a row is not of the expected
                layout (a NULL or a column of another width).
        """
        self._buf += chunk
        if not self._started:
            if len(self._buf) < 19:
                return
            if not self._buf.startswith(COPY_SIGNATURE):
                raise ValueError("not a binary COPY stream")
            (ext,) = struct.unpack_from(">i", self._buf, 15)
            if len(self._buf) < 19 + ext:
                return
            del self._buf[: 19 + ext]
            self._started = True
        # Every whole row but the last bytes: those may be the trailer (int16 -1).
        count = (len(self._buf) - 2) // self._row.itemsize
        if count > 0:
            size = count * self._row.itemsize
            self._convert(np.frombuffer(self._buf, dtype=self._row, count=count))
            del self._buf[:size]

    def _convert(self, rows: np.ndarray) -> None:
        if np.any(rows["count"] != len(self._widths)) or any(
            np.any(rows[f"len{i}"] != w) for i, w in enumerate(self._widths)
        ):
            raise ValueError("binary COPY rows are not of the expected layout (a NULL?)")
        out = np.empty(rows.size, dtype=self._out)
        for i in range(len(self._widths)):
            out[f"f{i}"] = rows[f"f{i}"]
        self._consume(out)

    def result(self) -> np.ndarray:
        """The parsed rows, once the whole stream was fed.

        Raises:
            ValueError: the stream ended before its trailer or in the middle of a row.
        """
        if not self._started or bytes(self._buf) != b"\xff\xff":
            raise ValueError("truncated binary COPY stream")
        if len(self._parts) == 1:
            return self._parts[0]
        return np.concatenate(self._parts) if self._parts else np.empty(0, dtype=self._out)


def parse_binary_copy(data: bytes, formats: Sequence[str]) -> np.ndarray:
    """Parses a whole binary ``COPY`` stream (see :class:`BinaryCopyParser`).

    Raises:
        ValueError: the stream is not binary COPY, or a row is not of the expected layout.
    """
    parser = BinaryCopyParser(formats)
    parser.feed(data)
    return parser.result()


async def copy_columns(
    conn: asyncpg.Connection, query: str, args: Sequence[Any], formats: Sequence[str]
) -> np.ndarray:
    """Runs ``COPY (query) TO STDOUT (FORMAT binary)`` and parses it (:class:`BinaryCopyParser`)."""
    parser = BinaryCopyParser(formats)

    async def sink(chunk: bytes) -> None:
        parser.feed(chunk)

    await conn.copy_from_query(query, *args, output=sink, format="binary")
    return parser.result()


async def copy_each(
    conn: asyncpg.Connection,
    query: str,
    args: Sequence[Any],
    formats: Sequence[str],
    consume: Callable[[np.ndarray], None],
) -> None:
    """Like :func:`copy_columns`, but hands each parsed piece to ``consume`` as it arrives."""
    parser = BinaryCopyParser(formats, consume)

    async def sink(chunk: bytes) -> None:
        parser.feed(chunk)

    await conn.copy_from_query(query, *args, output=sink, format="binary")
    parser.result()  # checks that the stream ended properly


def _code_columns(segs: Sequence[Segmenting], first_param: int) -> tuple[list[str], list[Any]]:
    """SQL expressions giving each answer's 0-based group code per attribute (-1: none)."""
    exprs, args = [], []
    p = first_param
    for s in segs:
        exprs.append(
            f"(coalesce(array_position(${p}::text[], r.attributes->>${p + 1}), 0) - 1)::int2"
        )
        args += [s.groups, s.attribute]
        p += 2
    return exprs, args


_JOIN = " JOIN snapshot_responses r ON r.report_id = a.report_id AND r.response_id = a.response_id"


async def read_numeric(
    conn: asyncpg.Connection, report_id: str, question_id: str, segs: Sequence[Segmenting]
) -> Columns:
    """One numeric question's answers (and group codes) by binary COPY."""
    exprs, args = _code_columns(segs, 3)
    query = (
        f"SELECT a.number{''.join(', ' + e for e in exprs)} FROM snapshot_answers a"
        f"{_JOIN if segs else ''}"
        " WHERE a.report_id = $1 AND a.question_id = $2 AND a.number IS NOT NULL"
    )
    rows = await copy_columns(
        conn, query, [report_id, question_id, *args], [">f8"] + [">i2"] * len(segs)
    )
    codes = np.empty((rows.size, len(segs)), dtype=np.int16)
    for i in range(len(segs)):
        codes[:, i] = rows[f"f{i + 1}"]
    return Columns(values=np.ascontiguousarray(rows["f0"]), codes=codes)


async def count_choices(
    conn: asyncpg.Connection,
    report_id: str,
    question_id: str,
    kind: str,
    segs: Sequence[Segmenting],
) -> tuple[dict[str, int], list[dict[str, dict[str, int]]], int, list[dict[str, int]]]:
    """Exact counts of a choice question, overall and per group of each attribute.

    Returns:
        (picks per option, per attribute {group: {option: picks}}, respondents who
        answered, per attribute {group: respondents who answered}).
    """
    exprs, args = _code_columns(segs, 3)
    code_names = [f"c{i}" for i in range(len(segs))]
    inner_codes = "".join(f", {e} AS {c}" for e, c in zip(exprs, code_names, strict=True))
    sets = ", ".join(["(v)"] + [f"(v, {c})" for c in code_names])
    if kind == "multiple_choice":
        value, extra, cond = "o.option", ", unnest(a.choices) AS o(option)", "a.choices IS NOT NULL"
    else:
        value, extra, cond = "a.text", "", "a.text IS NOT NULL"
    source = (
        f"FROM snapshot_answers a{_JOIN if segs else ''}{extra}"
        f" WHERE a.report_id = $1 AND a.question_id = $2 AND {cond}"
    )
    select_codes = "".join(f", {c}" for c in code_names)
    rows = await conn.fetch(
        f"SELECT v{select_codes}, count(*) AS n FROM"
        f" (SELECT {value} AS v{inner_codes} {source}) s GROUP BY GROUPING SETS ({sets})",
        report_id,
        question_id,
        *args,
    )
    overall: dict[str, int] = {}
    by_attr: list[dict[str, dict[str, int]]] = [{} for _ in segs]
    for r in rows:
        grouped = [i for i, c in enumerate(code_names) if r[c] is not None]
        if not grouped:
            overall[r["v"]] = int(r["n"])
            continue
        i = grouped[0]
        code = int(r[code_names[i]])
        if code >= 0:
            g = segs[i].groups[code]
            by_attr[i].setdefault(g, {})[r["v"]] = int(r["n"])
    if kind != "multiple_choice":
        answered = sum(overall.values())
        respondents = [{g: sum(c.values()) for g, c in a.items()} for a in by_attr]
        return overall, by_attr, answered, respondents
    # Multiple choice: the base of each share is the respondents, not the picks.
    sets_r = ", ".join(["()"] + [f"({c})" for c in code_names])
    source_r = (
        f"FROM snapshot_answers a{_JOIN if segs else ''}"
        f" WHERE a.report_id = $1 AND a.question_id = $2 AND a.choices IS NOT NULL"
    )
    rrows = await conn.fetch(
        f"SELECT 1 AS one{select_codes}, count(*) AS n FROM"
        f" (SELECT 1 AS one{inner_codes} {source_r}) s GROUP BY GROUPING SETS ({sets_r})",
        report_id,
        question_id,
        *args,
    )
    answered = 0
    respondents_by: list[dict[str, int]] = [{} for _ in segs]
    for r in rrows:
        grouped = [i for i, c in enumerate(code_names) if r[c] is not None]
        if not grouped:
            answered = int(r["n"])
        elif int(r[code_names[grouped[0]]]) >= 0:
            i = grouped[0]
            respondents_by[i][segs[i].groups[int(r[code_names[i]])]] = int(r["n"])
    return overall, by_attr, answered, respondents_by


@dataclass
class ResponseIndex:
    """Every snapshot response's group codes, found by a 64-bit hash of its id.

    Joining each question's answers to their responses in SQL costs a hash join over text
    ids per question. Instead the codes are read once (one COPY of ``hashtextextended(id)``
    and the codes), sorted by hash, and each question's answers carry only the hash of their
    response id: ``searchsorted`` finds their codes. The index is exact: it is only used
    when no two response ids of the snapshot share a hash (checked on build).
    """

    hashes: np.ndarray  # int64, sorted, unique
    codes: np.ndarray  # (responses, attributes) int16, aligned with ``hashes``

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Codes of the responses with ``hashes`` (-1 where a hash is unknown)."""
        k = self.codes.shape[1]
        if self.hashes.size == 0:
            return np.full((hashes.size, k), -1, dtype=np.int16)
        pos = np.searchsorted(self.hashes, hashes)
        pos_c = np.minimum(pos, self.hashes.size - 1)
        found = self.hashes[pos_c] == hashes
        out = self.codes[pos_c]
        out[~found] = -1
        return out


async def response_index(
    conn: asyncpg.Connection, report_id: str, segs: Sequence[Segmenting]
) -> ResponseIndex | None:
    """The :class:`ResponseIndex` of a snapshot, or None if two response ids share a hash."""
    exprs, args = _code_columns(segs, 2)
    rows = await copy_columns(
        conn,
        f"SELECT hashtextextended(r.response_id, 0){''.join(', ' + e for e in exprs)}"
        " FROM snapshot_responses r WHERE r.report_id = $1",
        [report_id, *args],
        [">i8"] + [">i2"] * len(segs),
    )
    order = np.argsort(rows["f0"], kind="stable")
    hashes = rows["f0"][order]
    if hashes.size > 1 and bool(np.any(hashes[1:] == hashes[:-1])):
        return None
    codes = np.empty((hashes.size, len(segs)), dtype=np.int16)
    for i in range(len(segs)):
        codes[:, i] = rows[f"f{i + 1}"][order]
    return ResponseIndex(hashes=hashes, codes=codes)


async def read_numeric_indexed(
    conn: asyncpg.Connection, report_id: str, question_id: str, index: ResponseIndex
) -> Columns:
    """One numeric question's answers by binary COPY, with codes from ``index`` (no join).

    The codes are looked up chunk by chunk as the COPY arrives, so the look-up's
    temporaries stay chunk-sized.
    """
    values: list[np.ndarray] = []
    codes: list[np.ndarray] = []

    def add(rows: np.ndarray) -> None:
        values.append(np.ascontiguousarray(rows["f0"]))
        codes.append(index.lookup(rows["f1"]))

    await copy_each(
        conn,
        "SELECT a.number, hashtextextended(a.response_id, 0) FROM snapshot_answers a"
        " WHERE a.report_id = $1 AND a.question_id = $2 AND a.number IS NOT NULL",
        [report_id, question_id],
        [">f8", ">i8"],
        add,
    )
    if not values:
        return Columns(
            values=np.empty(0, dtype=np.float64),
            codes=np.empty((0, index.codes.shape[1]), dtype=np.int16),
        )
    return Columns(values=np.concatenate(values), codes=np.concatenate(codes))


async def count_choices_indexed(
    conn: asyncpg.Connection,
    report_id: str,
    question_id: str,
    kind: str,
    segs: Sequence[Segmenting],
    index: ResponseIndex,
    options: Sequence[str],
) -> tuple[dict[str, int], list[dict[str, dict[str, int]]], int, list[dict[str, int]]]:
    """:func:`count_choices` with the split by group done in numpy over ``index`` (no join)."""
    if kind == "multiple_choice":
        overall_rows = await conn.fetch(
            "SELECT o.option AS v, count(*) AS n FROM snapshot_answers a,"
            " unnest(a.choices) AS o(option)"
            " WHERE a.report_id = $1 AND a.question_id = $2 GROUP BY 1",
            report_id,
            question_id,
        )
    else:
        overall_rows = await conn.fetch(
            "SELECT a.text AS v, count(*) AS n FROM snapshot_answers a"
            " WHERE a.report_id = $1 AND a.question_id = $2 AND a.text IS NOT NULL GROUP BY 1",
            report_id,
            question_id,
        )
    overall = {r["v"]: int(r["n"]) for r in overall_rows}
    # Every value seen gets an index (options first, then any unknown ones), so the COPY
    # below never meets a NULL.
    values = list(options) + sorted(set(overall) - set(options))
    nv = len(values)
    # Counted chunk by chunk as the COPY arrives: a million responses' picks are never
    # held whole (nor their group codes, four times their size).
    tables = [np.zeros(len(seg.groups) * nv, dtype=np.int64) for seg in segs]
    chosen = [np.zeros(len(seg.groups), dtype=np.int64) for seg in segs]
    answered = 0

    def add_picks(rows: np.ndarray) -> None:
        codes = index.lookup(rows["f0"])
        option_idx = rows["f1"].astype(np.int64)
        for i, table in enumerate(tables):
            g = codes[:, i].astype(np.int64)
            keep = g >= 0
            table += np.bincount(g[keep] * nv + option_idx[keep], minlength=table.size)

    def add_respondents(rows: np.ndarray) -> None:
        nonlocal answered
        answered += rows.size
        codes = index.lookup(rows["f0"])
        for i, counts in enumerate(chosen):
            rg = codes[:, i].astype(np.int64)
            counts += np.bincount(rg[rg >= 0], minlength=counts.size)

    if kind == "multiple_choice":
        await copy_each(
            conn,
            "SELECT hashtextextended(a.response_id, 0),"
            " (array_position($3::text[], o.option) - 1)::int2"
            " FROM snapshot_answers a, unnest(a.choices) AS o(option)"
            " WHERE a.report_id = $1 AND a.question_id = $2",
            [report_id, question_id, values],
            [">i8", ">i2"],
            add_picks,
        )
        await copy_each(
            conn,
            "SELECT hashtextextended(a.response_id, 0) FROM snapshot_answers a"
            " WHERE a.report_id = $1 AND a.question_id = $2 AND a.choices IS NOT NULL",
            [report_id, question_id],
            [">i8"],
            add_respondents,
        )
    else:

        def add_single(rows: np.ndarray) -> None:
            nonlocal answered
            answered += rows.size
            add_picks(rows)

        await copy_each(
            conn,
            "SELECT hashtextextended(a.response_id, 0),"
            " (array_position($3::text[], a.text) - 1)::int2"
            " FROM snapshot_answers a"
            " WHERE a.report_id = $1 AND a.question_id = $2 AND a.text IS NOT NULL",
            [report_id, question_id, values],
            [">i8", ">i2"],
            add_single,
        )
    by_attr: list[dict[str, dict[str, int]]] = []
    respondents: list[dict[str, int]] = []
    for i, seg in enumerate(segs):
        table = tables[i].reshape(len(seg.groups), nv)
        per_group = {
            seg.groups[j]: {values[k]: int(table[j, k]) for k in range(nv) if table[j, k]}
            for j in range(len(seg.groups))
        }
        counts = chosen[i] if kind == "multiple_choice" else table.sum(axis=1)
        respondents.append(
            {seg.groups[j]: int(counts[j]) for j in range(len(seg.groups)) if counts[j]}
        )
        by_attr.append({k: v for k, v in per_group.items() if k in respondents[-1]})
    return overall, by_attr, answered, respondents


async def choose_segments(
    conn: asyncpg.Connection, report_id: str, requested: Sequence[str], responses: int
) -> list[Segmenting]:
    """The attributes to split by: those requested, else every attribute with 2-12 values."""
    default = not requested
    names = list(requested)
    if default:
        rows = await conn.fetch(
            "SELECT e.key AS k FROM snapshot_responses r, jsonb_each_text(r.attributes) AS e"
            " WHERE r.report_id = $1 GROUP BY e.key"
            " HAVING count(DISTINCT e.value) BETWEEN $2 AND $3 ORDER BY e.key LIMIT $4",
            report_id,
            DEFAULT_SEGMENT_MIN_GROUPS,
            DEFAULT_SEGMENT_MAX_GROUPS,
            MAX_DEFAULT_SEGMENTS,
        )
        names = [r["k"] for r in rows]
    out = []
    for attribute in names:
        rows = await conn.fetch(
            "SELECT attributes->>$2 AS g, count(*) AS n FROM snapshot_responses"
            " WHERE report_id = $1 AND attributes ? $2 GROUP BY 1 ORDER BY 2 DESC, 1",
            report_id,
            attribute,
        )
        kept = rows[:MAX_SEGMENT_GROUPS]
        sizes = {r["g"]: int(r["n"]) for r in kept}
        out.append(
            Segmenting(
                attribute=attribute,
                groups=[r["g"] for r in kept],
                sizes=sizes,
                missing=responses - sum(sizes.values()),
                left_out=len(rows) - len(kept),
                default=default,
            )
        )
    return out


def _numeric_question(
    q: dict[str, Any], cols: Columns, n: int, segs: Sequence[Segmenting]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A numeric question's figures, its NPS/CSAT block and its split by each attribute."""
    base: dict[str, Any] = {"question_id": q["id"], "text": q["text"], "type": q["type"]}
    values = cols.values
    summary = st.numeric_summary(values, skipped=max(0, n - values.size))
    base.update(n=summary["n"], skipped=summary["skipped"], summary=summary)
    extra: dict[str, Any] = {}
    if q["type"] == "rating":
        base["distribution"] = st.integer_distribution(values, 1, 5)
        extra = st.csat(values)
    elif q["type"] == "nps":
        base["distribution"] = st.integer_distribution(values, 0, 10)
        extra = st.nps(values)
    if extra:
        extra["skipped"] = max(0, n - extra["n"])
    splits = []
    for i, s in enumerate(segs):
        parts = st.split_by_code(values, cols.codes[:, i], len(s.groups))
        groups = {g: parts[j] for j, g in enumerate(s.groups)}
        splits.append(st.compare_numeric_groups(groups, ALPHA, kind=q["type"]))
    return base, extra, splits


def _segment_entry(seg: Segmenting) -> dict[str, Any]:
    return {
        "attribute": seg.attribute,
        "groups": dict(seg.sizes),
        "missing": seg.missing,
        "groups_left_out": seg.left_out,
        "default": seg.default,
        "questions": [],
    }


async def basic_stats(
    conn: asyncpg.Connection,
    report_id: str,
    options: ReportOptionsInput,
    all_responses: int | None = None,
) -> dict[str, Any]:
    """Response counts, completion rate, completion times and the trend, all in SQL."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS responses,
               count(*) FILTER (WHERE completed) AS completed,
               count(d) AS d_n, avg(d) AS d_mean,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS d_median
        FROM (SELECT completed,
                     CASE WHEN completed AND complete_time >= start_time
                          THEN extract(epoch FROM complete_time - start_time)::float8 END AS d
              FROM snapshot_responses WHERE report_id = $1) s
        """,
        report_id,
    )
    assert row is not None
    interval = "week" if options.trend_interval == "week" else "day"
    buckets = await conn.fetch(
        """
        SELECT date_trunc($2, coalesce(complete_time, start_time), 'UTC') AS bucket,
               count(*) AS n
        FROM snapshot_responses
        WHERE report_id = $1 AND coalesce(complete_time, start_time) IS NOT NULL
        GROUP BY 1
        """,
        report_id,
        interval,
    )
    responses, completed = int(row["responses"]), int(row["completed"])
    basis = "snapshot"
    if not options.include_incomplete and all_responses:
        # Only completed responses were copied; the rate's base is every response the
        # survey had when the snapshot started.
        basis, responses_base = "survey", max(all_responses, completed)
    else:
        responses_base = responses
    out = st.completion_from_counts(
        responses_base, completed, int(row["d_n"]), row["d_mean"], row["d_median"]
    )
    out["responses"] = responses
    out["responses_in_survey"] = responses_base
    out["completion_rate_basis"] = basis
    out["trend_interval"] = interval
    out["trend"] = st.trend({b["bucket"]: b["n"] for b in buckets}, interval)
    out["include_incomplete"] = options.include_incomplete
    return out


async def statistics_components(
    conn: asyncpg.Connection,
    report_id: str,
    survey: dict[str, Any],
    options: ReportOptionsInput,
    *,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """basic_stats, question_stats, nps, csat and segments of one report's snapshot.

    Args:
        conn: A connection to the reporting database (search_path ``reporting``).
        report_id: The report whose snapshot is read.
        survey: The snapshot's survey (``questions``, ``response_count``, optionally
            ``all_responses``: every response the survey had, completed or not).
        options: The report's options (question_ids, segment_by, trend_interval, ...).
        progress: Called with a short note after each step (activity heartbeats).
    """
    tick = progress or (lambda _note: None)
    n = int(survey["response_count"])
    wanted = set(options.question_ids)
    questions = [q for q in survey["questions"] if not wanted or q["id"] in wanted]
    basic = await basic_stats(conn, report_id, options, survey.get("all_responses"))
    tick("basic_stats")
    segs = await choose_segments(conn, report_id, options.segment_by, n)
    testable = [s for s in segs if len(s.groups) >= 2]
    index = await response_index(conn, report_id, testable) if testable else None
    entries = [_segment_entry(s) for s in segs]
    by_attr = {s.attribute: e for s, e in zip(segs, entries, strict=True)}
    qstats, nps_list, csat_list = [], [], []
    for q in questions:
        kind = q["type"]
        head = {"question_id": q["id"], "text": q["text"], "type": kind}
        if kind in NUMERIC_TYPES:
            if index is not None:
                cols = await read_numeric_indexed(conn, report_id, q["id"], index)
            else:
                cols = await read_numeric(conn, report_id, q["id"], testable)
            # CPU-bound (sorting for medians and rank tests): off the event loop, so the
            # activity's heartbeats and other activities keep running.
            base, extra, splits = await asyncio.to_thread(_numeric_question, q, cols, n, testable)
            del cols
            qstats.append(base)
            if kind == "nps":
                nps_list.append({"question_id": q["id"], "text": q["text"], **extra})
            elif kind == "rating":
                csat_list.append({"question_id": q["id"], "text": q["text"], **extra})
            for s, result in zip(testable, splits, strict=True):
                by_attr[s.attribute]["questions"].append({**head, **result})
        elif kind in CHOICE_TYPES:
            if index is not None:
                counts, per_attr, answered, respondents = await count_choices_indexed(
                    conn, report_id, q["id"], kind, testable, index, q.get("options") or []
                )
            else:
                counts, per_attr, answered, respondents = await count_choices(
                    conn, report_id, q["id"], kind, testable
                )
            base = {**head}
            base.update(
                st.choice_distribution(
                    counts, q.get("options") or [], answered=answered, skipped=max(0, n - answered)
                )
            )
            base["base"] = "respondents"
            qstats.append(base)
            for i, s in enumerate(testable):
                ordered = {g: per_attr[i].get(g, {}) for g in s.groups if g in respondents[i]}
                if kind == "multiple_choice":
                    result = st.compare_multiple_choice_groups(
                        ordered,
                        {g: respondents[i][g] for g in ordered},
                        q.get("options") or [],
                        ALPHA,
                    )
                else:
                    result = st.compare_categorical_groups(ordered, q.get("options") or [], ALPHA)
                by_attr[s.attribute]["questions"].append({**head, **result})
        else:  # free text: counted here; sentiment and themes read it themselves
            row = await conn.fetchrow(
                "SELECT count(*) AS c, avg(length(text))::float8 AS len FROM snapshot_answers"
                " WHERE report_id = $1 AND question_id = $2 AND text IS NOT NULL",
                report_id,
                q["id"],
            )
            assert row is not None
            answered = int(row["c"])
            qstats.append(
                {**head, "n": answered, "skipped": max(0, n - answered), "mean_length": row["len"]}
            )
        tick(q["id"])
    segments = st.segment_component(entries, method=CORRECTION, alpha=ALPHA)
    if not segs:
        segments["note"] = (
            "no segment_by option was given and no respondent attribute has 2-12 values"
            if not options.segment_by
            else "none of the requested attributes occurs in the responses"
        )
    segments["small_group_threshold"] = st.SMALL_GROUP
    for entry in entries:
        if len(entry["groups"]) < 2:
            entry["note"] = "fewer than two groups: nothing to compare"
    return {
        "basic_stats": basic,
        "question_stats": {"response_count": n, "questions": qstats},
        "nps": {
            "questions": nps_list,
            "ci_method": "normal approximation, var = p+ + p- - (p+ - p-)^2",
        },
        "csat": {"satisfied_from": 4, "questions": csat_list, "ci_method": "wilson"},
        "segments": segments,
    }
