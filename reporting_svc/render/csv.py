"""CSV rendering: a zip of tidy tables, one or more per component family.

Tidy: one row per observation, one column per variable, intervals split into ``_low`` and
``_high`` columns, so each file loads straight into a spreadsheet, pandas or R. Known
components get named tables; any other component (and a known one in an unexpected shape)
becomes ``<type>.csv`` with one ``path,value`` row per JSON leaf, so nothing is ever lost.

Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
``@``, tab or CR) are prefixed with ``'``: respondents' answers must not execute on the
reader's machine.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from reporting_svc.render.document import ReportDocument

log = logging.getLogger(__name__)

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
Row = Sequence[Any]


@dataclass
class Table:
    """One CSV file of the archive."""

    name: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def _d(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _l(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _ci(value: Any) -> tuple[Any, Any]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    return None, None


def cell(value: Any) -> Any:
    """A value as a CSV cell: None empty, booleans lowercase, formula-like text neutralised."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        value = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if value.startswith(FORMULA_START):
        return "'" + value
    return value


def _basic(data: Any) -> list[Table]:
    d = _d(data)
    times = d.get("completion_time_seconds") or {}
    lo, hi = _ci(d.get("completion_rate_ci95"))
    metrics = Table(
        "basic_stats",
        ["metric", "value"],
        [
            ("responses", d.get("responses")),
            ("completed", d.get("completed")),
            ("completion_rate", d.get("completion_rate")),
            ("completion_rate_ci95_low", lo),
            ("completion_rate_ci95_high", hi),
            ("completion_time_n", times.get("n")),
            ("completion_time_mean_seconds", times.get("mean")),
            ("completion_time_median_seconds", times.get("median")),
            ("trend_interval", d.get("trend_interval")),
            ("include_incomplete", d.get("include_incomplete")),
        ],
    )
    trend = Table(
        "basic_stats_trend",
        ["period_start", "responses"],
        [(_d(p).get("period_start"), _d(p).get("count")) for p in _l(d.get("trend"))],
    )
    return [metrics, trend]


def _questions(data: Any) -> list[Table]:
    d = _d(data)
    overview = Table("question_stats", ["question_id", "question", "type", "answered", "skipped"])
    options = Table(
        "question_stats_options",
        ["question_id", "question", "type", "option", "count", "percent", "ci95_low", "ci95_high"],
    )
    numeric = Table(
        "question_stats_numeric",
        [
            "question_id", "question", "type", "n", "skipped", "mean", "median", "std",
            "ci95_low", "ci95_high", "min", "max",
        ],
    )  # fmt: skip
    dist = Table(
        "question_stats_distribution", ["question_id", "question", "value", "count", "percent"]
    )
    for q in map(_d, _l(d.get("questions"))):
        qid, text, kind = q.get("question_id"), q.get("text"), q.get("type")
        overview.rows.append((qid, text, kind, q.get("n"), q.get("skipped")))
        for o in map(_d, _l(q.get("options"))):
            lo, hi = _ci(o.get("ci95"))
            options.rows.append(
                (qid, text, kind, o.get("option"), o.get("count"), o.get("percent"), lo, hi)
            )
        s = q.get("summary")
        if isinstance(s, dict):
            lo, hi = _ci(s.get("ci95"))
            numeric.rows.append(
                (qid, text, kind, s.get("n"), s.get("skipped"), s.get("mean"), s.get("median"),
                 s.get("std"), lo, hi, s.get("min"), s.get("max"))
            )  # fmt: skip
        for p in map(_d, _l(q.get("distribution"))):
            dist.rows.append((qid, text, p.get("value"), p.get("count"), p.get("percent")))
    return [overview, options, numeric, dist]


def _nps(data: Any) -> list[Table]:
    t = Table(
        "nps",
        [
            "question_id", "question", "n", "promoters", "passives", "detractors",
            "promoters_percent", "passives_percent", "detractors_percent", "score",
            "ci95_low", "ci95_high", "small_sample",
        ],
    )  # fmt: skip
    for q in map(_d, _l(_d(data).get("questions"))):
        lo, hi = _ci(q.get("ci95"))
        t.rows.append(
            (q.get("question_id"), q.get("text"), q.get("n"), q.get("promoters"), q.get("passives"),
             q.get("detractors"), q.get("promoters_percent"), q.get("passives_percent"),
             q.get("detractors_percent"), q.get("score"), lo, hi, q.get("small_sample"))
        )  # fmt: skip
    return [t]


def _csat(data: Any) -> list[Table]:
    d = _d(data)
    t = Table(
        "csat",
        [
            "question_id", "question", "n", "satisfied", "satisfied_from", "score",
            "ci95_low", "ci95_high", "mean", "small_sample",
        ],
    )  # fmt: skip
    for q in map(_d, _l(d.get("questions"))):
        lo, hi = _ci(q.get("ci95"))
        t.rows.append(
            (q.get("question_id"), q.get("text"), q.get("n"), q.get("satisfied"),
             d.get("satisfied_from"), q.get("score"), lo, hi, q.get("mean"), q.get("small_sample"))
        )  # fmt: skip
    return [t]


def _segments(data: Any) -> list[Table]:
    tests = Table(
        "segments_tests",
        [
            "attribute", "question_id", "question", "test", "statistic", "dof", "p_value",
            "effect_size", "effect_size_name", "significant", "warning",
        ],
    )  # fmt: skip
    sizes = Table("segments_groups", ["attribute", "group", "respondents"])
    numeric = Table(
        "segments_numeric",
        [
            "attribute", "question_id", "question", "group", "n", "skipped", "mean", "median",
            "std", "ci95_low", "ci95_high", "min", "max",
        ],
    )  # fmt: skip
    cross = Table(
        "segments_crosstab",
        ["attribute", "question_id", "question", "group", "category", "count", "percent"],
    )
    for seg in map(_d, _l(_d(data).get("segments"))):
        attr = seg.get("attribute")
        for g, n in _d(seg.get("groups") or {}).items():
            sizes.rows.append((attr, g, n))
        for q in map(_d, _l(seg.get("questions"))):
            qid, text = q.get("question_id"), q.get("text")
            t = _d(q.get("test") or {})
            tests.rows.append(
                (attr, qid, text, t.get("test"), t.get("statistic"), t.get("dof"),
                 t.get("p_value"), t.get("effect_size"), t.get("effect_size_name"),
                 t.get("significant"), t.get("warning"))
            )  # fmt: skip
            for g, s in _d(q.get("groups") or {}).items():
                s = _d(s)
                lo, hi = _ci(s.get("ci95"))
                numeric.rows.append(
                    (attr, qid, text, g, s.get("n"), s.get("skipped"), s.get("mean"),
                     s.get("median"), s.get("std"), lo, hi, s.get("min"), s.get("max"))
                )  # fmt: skip
            for r in map(_d, _l(q.get("crosstab"))):
                counts = _d(r.get("counts") or {})
                percents = _d(r.get("percent") or {})
                for category in counts:
                    cross.rows.append(
                        (attr, qid, text, r.get("group"), category, counts[category],
                         percents.get(category))
                    )  # fmt: skip
    return [tests, sizes, numeric, cross]


LABELS = ("positive", "neutral", "negative")


def _label_row(r: dict[str, Any]) -> list[Any]:
    counts = r.get("counts") or {}
    percent = r.get("percent") or {}
    return [
        r.get("n"),
        r.get("mean_score"),
        *(counts.get(label) for label in LABELS),
        *(percent.get(label) for label in LABELS),
    ]


_LABEL_COLUMNS = [
    "n", "mean_score", "positive_count", "neutral_count", "negative_count",
    "positive_percent", "neutral_percent", "negative_percent",
]  # fmt: skip


def _provenance(component: str, d: dict[str, Any]) -> Table:
    p = d.get("provenance") or {}
    return Table(
        f"{component}_provenance",
        ["component", "key", "value"],
        [(component, k, v) for k, v in _d(p).items()],
    )


def _sentiment(data: Any) -> list[Table]:
    d = _d(data)
    questions = Table("sentiment", ["scope", "question_id", "question", "label", *_LABEL_COLUMNS])
    segments = Table("sentiment_segments", ["question_id", "attribute", "group", *_LABEL_COLUMNS])
    quotes = Table("sentiment_quotes", ["question_id", "label", "response_id", "text"])
    overall = d.get("overall")
    if isinstance(overall, dict):
        questions.rows.append(("overall", "", "", overall.get("label"), *_label_row(overall)))
    for q in map(_d, _l(d.get("questions"))):
        qid = q.get("question_id")
        questions.rows.append(("question", qid, q.get("text"), q.get("label"), *_label_row(q)))
        for attr, groups in _d(q.get("segments") or {}).items():
            for g, r in _d(groups).items():
                segments.rows.append((qid, attr, g, *_label_row(_d(r))))
        for label, items in _d(q.get("quotes") or {}).items():
            for item in map(_d, _l(items)):
                quotes.rows.append((qid, label, item.get("response_id"), item.get("text")))
    return [questions, segments, quotes, _provenance("sentiment", d)]


def _themes(data: Any) -> list[Table]:
    d = _d(data)
    themes = Table(
        "themes",
        [
            "question_id", "question", "theme", "description", "terms", "count", "share",
            "sentiment", "confidence", "answers", "sampled",
        ],
    )  # fmt: skip
    evidence = Table("themes_evidence", ["question_id", "theme", "response_id", "text"])
    for q in map(_d, _l(d.get("questions"))):
        qid = q.get("question_id")
        for t in map(_d, _l(q.get("themes"))):
            terms = "; ".join(str(x) for x in _l(t.get("terms")))
            themes.rows.append(
                (qid, q.get("text"), t.get("name"), t.get("description"), terms, t.get("count"),
                 t.get("share"), t.get("sentiment"), t.get("confidence"), q.get("answers"),
                 q.get("sampled"))
            )  # fmt: skip
            for e in map(_d, _l(t.get("evidence"))):
                evidence.rows.append((qid, t.get("name"), e.get("response_id"), e.get("text")))
    return [themes, evidence, _provenance("themes", d)]


def _visualizations(data: Any) -> list[Table]:
    charts = Table("visualizations", ["chart_id", "title", "component"])
    for c in map(_d, _l(_d(data).get("charts"))):
        charts.rows.append((c.get("id"), c.get("title"), c.get("component")))
    return [charts]


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar of a JSON value with its path (``a.b[2].c``)."""
    if isinstance(value, dict):
        if not value:
            yield path, None
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        if not value:
            yield path, None
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def generic(component_type: str, data: Any) -> list[Table]:
    """Any component as one ``path,value`` table of its JSON leaves."""
    return [Table(component_type, ["path", "value"], list(leaves(data)))]


FAMILIES: dict[str, Callable[[Any], list[Table]]] = {
    "basic_stats": _basic,
    "question_stats": _questions,
    "nps": _nps,
    "csat": _csat,
    "segments": _segments,
    "sentiment": _sentiment,
    "themes": _themes,
    "visualizations": _visualizations,
}


def tables(doc: ReportDocument) -> list[Table]:
    """Every table of the archive, the report's own fields first."""
    out = [
        Table(
            "report",
            ["field", "value"],
            [("title", doc.display_title), *((k, v) for k, v in doc.report.items())],
        )
    ]
    for ctype in sorted(doc.data):
        data = doc.data[ctype]
        builder = FAMILIES.get(ctype)
        if builder is None:
            out.extend(generic(ctype, data))
            continue
        try:
            out.extend(builder(data))
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning(
                "component %s of report %s: unexpected shape; exported generically", ctype, doc.id
            )
            out.extend(generic(ctype, data))
    return out


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "component"


def render_csv_zip(doc: ReportDocument) -> bytes:
    """The report as a zip of CSV files (UTF-8, header row, RFC 4180 quoting)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        used: set[str] = set()
        for table in tables(doc):
            name = _safe_name(table.name)
            while name in used:
                name += "_"
            used.add(name)
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\r\n")
            writer.writerow(table.columns)
            for row in table.rows:
                writer.writerow([cell(v) for v in row])
            # Fixed timestamps: the same report always zips to the same bytes.
            info = zipfile.ZipInfo(f"{name}.csv", date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text.getvalue().encode("utf-8"))
    return buf.getvalue()
