"""The report as sections to show: pure functions from component data to template context.

Each known component (the shapes the worker stores, see ``worker/analytics``) has a builder
that picks and orders what a reader needs; every other component, and a known one whose
data does not have the expected shape, is shown by the generic builder as tables of its
JSON. So a component added or deepened later always appears, at worst as a plain table.

Builders never format numbers or escape text: templates do (Jinja autoescape), so every
string that came from a respondent reaches the page escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reporting_svc.render import fmt
from reporting_svc.render.document import ReportDocument

log = logging.getLogger(__name__)

# Sections of known components, in reading order, with the components each is made from.
SECTION_SOURCES: dict[str, tuple[str, ...]] = {
    "overview": ("basic_stats", "nps", "csat", "sentiment", "segments", "themes", "summary"),
    "nps": ("nps",),
    "csat": ("csat",),
    "questions": ("question_stats",),
    "segments": ("segments",),
    "sentiment": ("sentiment",),
    "themes": ("themes",),
}
# Sections that show charts: they change when ``visualizations`` arrives.
MORE_CHARTS = "charts"
CHART_SECTIONS = (
    "overview",
    "nps",
    "csat",
    "questions",
    "segments",
    "sentiment",
    "themes",
    MORE_CHARTS,
)
ABOUT = "about"
KNOWN_COMPONENTS = frozenset(
    {c for sources in SECTION_SOURCES.values() for c in sources} | {"visualizations"}
)
QUICK_SECTIONS = ("overview", "nps", "csat", "questions", "segments")
FULL_SECTIONS = (*QUICK_SECTIONS, "sentiment", "themes")
# The generic tables show at most this much of a component; CSV and JSON carry all of it.
GENERIC_MAX_ROWS = 50
GENERIC_MAX_COLUMNS = 10
GENERIC_MAX_DEPTH = 3
GENERIC_MAX_TEXT = 300
MAX_FINDINGS = 6
QUOTES_PER_LABEL = 2
EVIDENCE_PER_THEME = 3


@dataclass
class Section:
    """One section of the report page.

    Attributes:
        id: Stable DOM id (``overview``, ``component-<type>``...); the viewer replaces a
            section by id when its data changes.
        title: Heading.
        macro: Name of the template macro that renders ``ctx``.
        order: Position on the page (sections are sorted by it).
        ctx: What the macro shows.
        chart_ids: Charts (``visualizations`` ids) the section shows.
    """

    id: str
    title: str
    macro: str
    order: int
    ctx: dict[str, Any] = field(default_factory=dict)
    chart_ids: list[str] = field(default_factory=list)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def sections_for_component(component_type: str) -> list[str]:
    """Ids of the sections that change when ``component_type`` becomes ready."""
    if component_type == "visualizations":
        return list(CHART_SECTIONS)
    ids = [s for s, sources in SECTION_SOURCES.items() if component_type in sources]
    if component_type in ("summary", "sentiment", "themes"):
        ids.append(ABOUT)
    return ids or [generic_section_id(component_type)]


def generic_section_id(component_type: str) -> str:
    """The DOM id of an unknown component's section."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in component_type)
    return f"component-{safe}"


def expected_sections(doc: ReportDocument) -> tuple[str, ...]:
    """The known sections a report of this kind will have when complete."""
    return FULL_SECTIONS if doc.report.get("kind") == "REPORT_KIND_FULL" else QUICK_SECTIONS


# -- charts --------------------------------------------------------------------------------


def charts_by_id(doc: ReportDocument) -> dict[str, dict[str, Any]]:
    """The report's Vega-Lite charts by id (empty until ``visualizations`` is stored)."""
    out = {}
    for chart in _list(_dict(doc.data.get("visualizations")).get("charts")):
        if isinstance(chart, dict) and isinstance(chart.get("spec"), dict) and chart.get("id"):
            out[str(chart["id"])] = chart
    return out


# -- key figures ---------------------------------------------------------------------------


def _tone(value: float | None, good: float, bad: float) -> str:
    if value is None:
        return "neutral"
    if value >= good:
        return "good"
    if value < bad:
        return "bad"
    return "neutral"


def kpis(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The key figure cards: responses, completion, time, NPS, CSAT, sentiment (those known)."""
    cards: list[dict[str, Any]] = []
    basic = _dict(data.get("basic_stats"))
    if basic:
        cards.append(
            {
                "label": "Responses",
                "value": fmt.number(basic.get("responses")),
                "sub": f"{fmt.number(basic.get('completed'))} completed",
                "tone": "neutral",
            }
        )
        rate = _num(basic.get("completion_rate"))
        cards.append(
            {
                "label": "Completion rate",
                "value": fmt.fraction(rate),
                "sub": "95% CI "
                + fmt.interval(basic.get("completion_rate_ci95"), scale=100, unit="%"),
                "tone": _tone(rate, 0.8, 0.5),
            }
        )
        times = _dict(basic.get("completion_time_seconds"))
        cards.append(
            {
                "label": "Median time to complete",
                "value": fmt.duration(times.get("median")),
                "sub": f"mean {fmt.duration(times.get('mean'))}",
                "tone": "neutral",
            }
        )
    nps_q = [
        q
        for q in _list(_dict(data.get("nps")).get("questions"))
        if _num(_dict(q).get("score")) is not None
    ]
    if nps_q:
        q = nps_q[0]
        score = _num(q.get("score"))
        cards.append(
            {
                "label": "Net Promoter Score",
                "value": fmt.signed(score),
                "sub": f"95% CI {fmt.interval(q.get('ci95'), 0)} · n = {fmt.number(q.get('n'))}",
                "tone": _tone(score, 30, 0),
            }
        )
    csat_q = [
        q
        for q in _list(_dict(data.get("csat")).get("questions"))
        if _num(_dict(q).get("score")) is not None
    ]
    if csat_q:
        q = csat_q[0]
        score = _num(q.get("score"))
        cards.append(
            {
                "label": "CSAT",
                "value": fmt.percent(score, 0),
                "sub": f"rated 4\u20135 · n = {fmt.number(q.get('n'))}",
                "tone": _tone(score, 75, 50),
            }
        )
    overall = _dict(_dict(data.get("sentiment")).get("overall"))
    if overall.get("n"):
        mean = _num(overall.get("mean_score"))
        label = str(overall.get("label") or "neutral")
        cards.append(
            {
                "label": "Sentiment",
                "value": label.capitalize(),
                "sub": f"mean score {fmt.signed(mean, 2)} · {fmt.number(overall.get('n'))} answers",
                "tone": {"positive": "good", "negative": "bad"}.get(label, "neutral"),
            }
        )
    return cards


def findings(data: Mapping[str, Any]) -> list[str]:
    """Plain-language key findings: significant segment differences, sentiment, top themes."""
    out: list[str] = []
    for seg in _list(_dict(data.get("segments")).get("segments")):
        seg = _dict(seg)
        attribute = str(seg.get("attribute", ""))
        for q in _list(seg.get("questions")):
            q = _dict(q)
            test = _dict(q.get("test"))
            if not test.get("significant"):
                continue
            text = str(q.get("text") or q.get("question_id") or "")
            groups = _dict(q.get("groups"))
            means = [(g, _num(_dict(s).get("mean"))) for g, s in groups.items()]
            means = [(g, m) for g, m in means if m is not None]
            if len(means) >= 2:
                hi = max(means, key=lambda gm: gm[1] or 0.0)
                lo = min(means, key=lambda gm: gm[1] or 0.0)
                detail = (
                    f"highest for {hi[0]} ({fmt.decimal(hi[1], 1)}), "
                    f"lowest for {lo[0]} ({fmt.decimal(lo[1], 1)})"
                )
            else:
                detail = "answers are distributed differently across groups"
            out.append(
                f"“{text}” differs by {attribute}: {detail} ({fmt.p_value(test.get('p_value'))})."
            )
    overall = _dict(_dict(data.get("sentiment")).get("overall"))
    percent = _dict(overall.get("percent"))
    if overall.get("n"):
        out.append(
            f"Free-text answers are {overall.get('label', 'neutral')} overall: "
            f"{fmt.percent(percent.get('positive'), 0)} positive, "
            f"{fmt.percent(percent.get('negative'), 0)} negative."
        )
    for q in _list(_dict(data.get("themes")).get("questions")):
        themes = _list(_dict(q).get("themes"))
        if themes:
            top = _dict(themes[0])
            out.append(
                f"Most common theme in “{_dict(q).get('text') or _dict(q).get('question_id')}”: "
                f"{top.get('name')} ({fmt.fraction(top.get('share'), 0)} of answers)."
            )
    return out[:MAX_FINDINGS]


# -- section builders ----------------------------------------------------------------------


def _overview(doc: ReportDocument) -> Section | None:
    data = doc.data
    if not any(k in data for k in ("basic_stats", "nps", "csat", "sentiment", "summary")):
        return None
    basic = _dict(data.get("basic_stats"))
    trend_note = ""
    if basic:
        trend_note = f"Responses per {basic.get('trend_interval') or 'day'}"
        if basic.get("include_incomplete") is False:
            trend_note += "; figures below include completed responses only"
    return Section(
        "overview",
        "Overview",
        "overview",
        0,
        {"kpis": kpis(data), "findings": findings(data), "trend_note": trend_note},
        ["response_trend"],
    )


def _nps(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("nps")
    if comp is None:
        return None
    questions = []
    charts: list[str] = []
    for q in _list(_dict(comp).get("questions")):
        q = _dict(q)
        questions.append(
            {
                "id": q.get("question_id"),
                "text": q.get("text") or q.get("question_id"),
                "score": q.get("score"),
                "ci95": q.get("ci95"),
                "n": q.get("n"),
                "groups": [
                    (
                        "Promoters (9\u201310)",
                        q.get("promoters"),
                        q.get("promoters_percent"),
                        "good",
                    ),
                    (
                        "Passives (7\u20138)",
                        q.get("passives"),
                        q.get("passives_percent"),
                        "neutral",
                    ),
                    (
                        "Detractors (0\u20136)",
                        q.get("detractors"),
                        q.get("detractors_percent"),
                        "bad",
                    ),
                ],
                "small_sample": bool(q.get("small_sample")),
                "chart": f"nps:{q.get('question_id')}",
            }
        )
        charts.append(f"nps:{q.get('question_id')}")
    return Section("nps", "Net Promoter Score", "nps", 10, {"questions": questions}, charts)


def _csat(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("csat")
    if comp is None:
        return None
    comp = _dict(comp)
    rows = [_dict(q) for q in _list(comp.get("questions"))]
    return Section(
        "csat",
        "Customer satisfaction (CSAT)",
        "csat",
        20,
        {"rows": rows, "satisfied_from": comp.get("satisfied_from", 4)},
        ["csat"],
    )


def _questions(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("question_stats")
    if comp is None:
        return None
    out = []
    charts: list[str] = []
    for q in _list(_dict(comp).get("questions")):
        q = _dict(q)
        chart = f"question:{q.get('question_id')}"
        charts.append(chart)
        out.append(
            {
                "id": q.get("question_id"),
                "text": q.get("text") or q.get("question_id"),
                "type": q.get("type") or "",
                "n": q.get("n"),
                "skipped": q.get("skipped"),
                "options": [_dict(o) for o in _list(q.get("options"))],
                "summary": _dict(q.get("summary")),
                "mean_length": q.get("mean_length"),
                "chart": chart,
            }
        )
    return Section(
        "questions",
        "Question by question",
        "questions",
        30,
        {"questions": out, "response_count": _dict(comp).get("response_count")},
        charts,
    )


TEST_NAMES = {
    "welch_t": "Welch's t-test",
    "kruskal_wallis": "Kruskal\u2013Wallis test",
    "chi_square": "Chi-square test",
    "mann_whitney": "Mann\u2013Whitney U test",
}
EFFECT_NAMES = {
    "hedges_g": "Hedges' g",
    "cramers_v": "Cramér's V",
    "epsilon_squared": "ε²",
}


def _segments(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("segments")
    if comp is None:
        return None
    comp = _dict(comp)
    attributes = []
    charts: list[str] = []
    for seg in _list(comp.get("segments")):
        seg = _dict(seg)
        questions = []
        for q in _list(seg.get("questions")):
            q = _dict(q)
            test = _dict(q.get("test"))
            chart = f"segment:{seg.get('attribute')}:{q.get('question_id')}"
            groups = _dict(q.get("groups"))
            questions.append(
                {
                    "id": q.get("question_id"),
                    "text": q.get("text") or q.get("question_id"),
                    "test_name": TEST_NAMES.get(
                        str(test.get("test")), fmt.human(test.get("test", "test"))
                    ),
                    "p_value": test.get("p_value"),
                    # Significance is judged on the multiple-comparison-adjusted p (v2).
                    "p_adjusted": test.get("p_adjusted"),
                    "correction": str(test.get("correction") or ""),
                    "effect_name": EFFECT_NAMES.get(
                        str(test.get("effect_size_name")),
                        fmt.human(test.get("effect_size_name", "")),
                    ),
                    "effect_size": test.get("effect_size"),
                    "significant": bool(test.get("significant")),
                    "warning": test.get("warning") or "",
                    "numeric": [{"group": g, **_dict(s)} for g, s in groups.items()],
                    "categories": [str(c) for c in _list(q.get("categories"))],
                    "crosstab": [_dict(r) for r in _list(q.get("crosstab"))],
                    "chart": chart,
                }
            )
        # Significant differences are what a reader looks for: they get tables and charts;
        # the rest is one summary table (all figures are in the CSV and JSON downloads).
        significant = [q for q in questions if q["significant"]]
        attributes.append(
            {
                "attribute": seg.get("attribute"),
                "groups": [(g, n) for g, n in _dict(seg.get("groups")).items()],
                "significant": significant,
                "others": [q for q in questions if not q["significant"]],
            }
        )
        charts.extend(str(q["chart"]) for q in significant)
    return Section(
        "segments",
        "Segments",
        "segments",
        40,
        {"attributes": attributes, "note": comp.get("note") or ""},
        charts,
    )


def distinct_quotes(value: Any, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` quotes with distinct texts (many respondents write the same words)."""
    seen: set[str] = set()
    out = []
    for q in _list(value):
        q = _dict(q)
        key = " ".join(str(q.get("text", "")).split()).lower()
        if key and key not in seen:
            seen.add(key)
            out.append(q)
            if len(out) == limit:
                break
    return out


def _quotes(value: Any, labels: Iterable[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    quotes = _dict(value)
    out = []
    for label in labels:
        picked = distinct_quotes(quotes.get(label), QUOTES_PER_LABEL)
        if picked:
            out.append((label, picked))
    return out


def _sentiment(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("sentiment")
    if comp is None:
        return None
    comp = _dict(comp)
    questions = []
    charts: list[str] = []
    for q in _list(comp.get("questions")):
        q = _dict(q)
        chart = f"sentiment:{q.get('question_id')}"
        charts.append(chart)
        segments = []
        for attribute, groups in _dict(q.get("segments")).items():
            rows = []
            for g, r in _dict(groups).items():
                r = _dict(r)
                pct = _dict(r.get("percent"))
                rows.append(
                    {
                        "group": g,
                        "n": r.get("n"),
                        "mean": r.get("mean_score"),
                        "positive": pct.get("positive"),
                        "negative": pct.get("negative"),
                    }
                )
            if rows:
                segments.append({"attribute": attribute, "rows": rows})
        questions.append(
            {
                "id": q.get("question_id"),
                "text": q.get("text") or q.get("question_id"),
                "label": q.get("label") or "neutral",
                "n": q.get("n"),
                "mean": q.get("mean_score"),
                "percent": _dict(q.get("percent")),
                "quotes": _quotes(q.get("quotes"), ("positive", "negative", "neutral")),
                "segments": segments,
                "chart": chart,
            }
        )
    return Section(
        "sentiment",
        "Sentiment",
        "sentiment",
        50,
        {
            "overall": _dict(comp.get("overall")),
            "provenance": _dict(comp.get("provenance")),
            "questions": questions,
        },
        charts,
    )


def _themes(doc: ReportDocument) -> Section | None:
    comp = doc.data.get("themes")
    if comp is None:
        return None
    comp = _dict(comp)
    questions = []
    charts: list[str] = []
    for q in _list(comp.get("questions")):
        q = _dict(q)
        chart = f"themes:{q.get('question_id')}"
        charts.append(chart)
        themes = []
        for t in _list(q.get("themes")):
            t = _dict(t)
            mean = _num(t.get("sentiment"))
            themes.append(
                {
                    **t,
                    "terms": [str(x) for x in _list(t.get("terms"))],
                    "evidence": distinct_quotes(t.get("evidence"), EVIDENCE_PER_THEME),
                    "tone": "neutral"
                    if mean is None
                    else "good"
                    if mean >= 0.05
                    else "bad"
                    if mean <= -0.05
                    else "neutral",
                }
            )
        questions.append(
            {
                "id": q.get("question_id"),
                "text": q.get("text") or q.get("question_id"),
                "answers": q.get("answers"),
                "sampled": q.get("sampled"),
                "themes": themes,
                "chart": chart,
            }
        )
    return Section(
        "themes",
        "Themes",
        "themes",
        60,
        {"provenance": _dict(comp.get("provenance")), "questions": questions},
        charts,
    )


# -- generic -------------------------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _short(value: Any) -> Any:
    """A cell: scalars as they are, nested values as truncated compact JSON."""
    if _scalar(value):
        if isinstance(value, str) and len(value) > GENERIC_MAX_TEXT:
            return value[:GENERIC_MAX_TEXT] + "…"
        return value
    import orjson

    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= GENERIC_MAX_TEXT else text[:GENERIC_MAX_TEXT] + "…"


def generic_block(value: Any, depth: int = 0) -> dict[str, Any]:
    """A JSON value as a tree of blocks the generic macro renders.

    Kinds: ``text`` (a scalar), ``kv`` (a key/value table of a dict's scalar members, then
    its nested members as child blocks), ``table`` (a list of dicts, one row each), ``list``
    (a list of other values). Rows, columns, depth and text are capped.
    """
    if _scalar(value) or depth >= GENERIC_MAX_DEPTH:
        return {"kind": "text", "value": _short(value)}
    if isinstance(value, dict):
        pairs = [(str(k), _short(v)) for k, v in value.items() if _scalar(v)]
        children = [
            (str(k), generic_block(v, depth + 1)) for k, v in value.items() if not _scalar(v)
        ]
        return {
            "kind": "kv",
            "pairs": pairs[:GENERIC_MAX_ROWS],
            "children": children[:GENERIC_MAX_ROWS],
            "more": max(0, len(pairs) - GENERIC_MAX_ROWS)
            + max(0, len(children) - GENERIC_MAX_ROWS),
        }
    items = list(value)
    if items and all(isinstance(i, dict) for i in items):
        columns: list[str] = []
        for item in items[:GENERIC_MAX_ROWS]:
            for k in item:
                if str(k) not in columns:
                    columns.append(str(k))
        columns = columns[:GENERIC_MAX_COLUMNS]
        rows = [[_short(item.get(c)) for c in columns] for item in items[:GENERIC_MAX_ROWS]]
        return {
            "kind": "table",
            "columns": columns,
            "rows": rows,
            "more": max(0, len(items) - GENERIC_MAX_ROWS),
        }
    return {
        "kind": "list",
        "items": [generic_block(i, depth + 1) for i in items[:GENERIC_MAX_ROWS]],
        "more": max(0, len(items) - GENERIC_MAX_ROWS),
    }


def generic_section(component_type: str, value: Any, order: int) -> Section:
    """A section showing any component as tables of its JSON."""
    return Section(
        generic_section_id(component_type),
        fmt.human(component_type),
        "generic",
        order,
        {"block": generic_block(value), "component": component_type},
    )


def _about(doc: ReportDocument) -> Section:
    data = doc.data
    provenance = []
    for name in ("sentiment", "themes"):
        p = _dict(_dict(data.get(name)).get("provenance"))
        if p:
            provenance.append({"component": name, **p})
    return Section(
        ABOUT,
        "About this report",
        "about",
        1000,
        {
            "report": doc.report,
            "components": [
                {"type": c.type, "size": c.size_bytes, "schema_version": c.schema_version}
                for c in sorted(doc.components, key=lambda c: c.type)
            ],
            "provenance": provenance,
        },
    )


BUILDERS: dict[str, Callable[[ReportDocument], Section | None]] = {
    "overview": _overview,
    "nps": _nps,
    "csat": _csat,
    "questions": _questions,
    "segments": _segments,
    "sentiment": _sentiment,
    "themes": _themes,
}
_ORDER = {name: i * 10 for i, name in enumerate(BUILDERS)}


def build_sections(
    doc: ReportDocument, *, only: Iterable[str] | None = None, pending: bool = False
) -> list[Section]:
    """The report's sections in page order.

    Args:
        doc: The report.
        only: Section ids to return (the viewer replaces only those a new component
            changes); None returns all.
        pending: Add a placeholder for every expected section that has no data yet (the
            viewer of a running report).
    """
    sections: list[Section] = []
    shown: set[str] = set()
    for sid, builder in BUILDERS.items():
        sources = [s for s in SECTION_SOURCES[sid] if s in doc.data]
        try:
            section = builder(doc)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            # A known component in an unexpected shape: show it generically rather than fail.
            log.warning(
                "section %s of report %s: unexpected data shape", sid, doc.id, exc_info=True
            )
            for source in sources:
                if source not in shown:
                    shown.add(source)
                    sections.append(generic_section(source, doc.data[source], 500 + len(sections)))
            continue
        if section is None:
            if pending and sid in expected_sections(doc):
                sections.append(Section(sid, _PENDING_TITLES[sid], "pending", _ORDER[sid]))
            continue
        shown.update(sources)
        sections.append(section)
    unknown = sorted(t for t in doc.data if t not in KNOWN_COMPONENTS and t not in shown)
    for i, ctype in enumerate(unknown):
        sections.append(generic_section(ctype, doc.data[ctype], 700 + i))
    extra = unplaced_charts(sections, charts_by_id(doc))
    if extra:
        sections.append(
            Section(MORE_CHARTS, "More charts", "charts", 900, {}, [str(c["id"]) for c in extra])
        )
    sections.append(_about(doc))
    sections.sort(key=lambda s: s.order)
    if only is not None:
        wanted = set(only)
        sections = [s for s in sections if s.id in wanted]
    return sections


_PENDING_TITLES = {
    "overview": "Overview",
    "nps": "Net Promoter Score",
    "csat": "Customer satisfaction (CSAT)",
    "questions": "Question by question",
    "segments": "Segments",
    "sentiment": "Sentiment",
    "themes": "Themes",
}


def unplaced_charts(sections: Iterable[Section], charts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Charts that no section shows (ids a later worker adds), so they still appear."""
    placed = {c for s in sections for c in s.chart_ids}
    return [c for cid, c in charts.items() if cid not in placed]
