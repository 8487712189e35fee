"""Vega-Lite v5 specs for report figures: plain JSON any client (or vl-convert) can render.

Each builder takes a component (as stored) and returns a list of chart entries
``{"id", "title", "component", "spec"}``; data is inlined, so a spec stands alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


def _chart(chart_id: str, title: str, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": chart_id,
        "title": title,
        "component": component,
        "spec": {"$schema": SCHEMA, "title": title, **spec},
    }


def bar_chart(
    values: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    x_title: str = "",
    y_title: str = "",
    horizontal: bool = False,
    sort: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A bar chart spec over inline ``values`` (category field ``x``, quantity ``y``)."""
    cat: dict[str, Any] = {"field": x, "type": "nominal", "title": x_title or x}
    if sort is not None:
        cat["sort"] = list(sort)
    qty = {"field": y, "type": "quantitative", "title": y_title or y}
    enc: dict[str, Any] = {"y": cat, "x": qty} if horizontal else {"x": cat, "y": qty}
    enc["tooltip"] = [{"field": x}, {"field": y}]
    return {"data": {"values": list(values)}, "mark": "bar", "encoding": enc}


def line_chart(
    values: Sequence[Mapping[str, Any]], *, x: str, y: str, y_title: str = ""
) -> dict[str, Any]:
    """A temporal line chart spec (``x`` is an ISO timestamp field)."""
    return {
        "data": {"values": list(values)},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": x, "type": "temporal", "title": "period"},
            "y": {"field": y, "type": "quantitative", "title": y_title or y},
            "tooltip": [{"field": x, "type": "temporal"}, {"field": y}],
        },
    }


def stacked_share(
    values: Sequence[Mapping[str, Any]], *, category: str, order: Sequence[str]
) -> dict[str, Any]:
    """A single horizontal 100 % stacked bar (NPS groups, sentiment labels)."""
    return {
        "data": {"values": list(values)},
        "mark": "bar",
        "encoding": {
            "x": {
                "field": "percent",
                "type": "quantitative",
                "stack": "normalize",
                "title": "share",
            },
            "color": {"field": category, "type": "nominal", "sort": list(order)},
            "tooltip": [{"field": category}, {"field": "percent", "format": ".1f"}],
        },
    }


def bars_with_ci(
    values: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    low: str = "low",
    high: str = "high",
    y_title: str = "",
    color: str | None = None,
) -> dict[str, Any]:
    """Horizontal bars of ``y`` per category ``x`` with 95 % CI whiskers (``low``-``high``).

    A layered spec: the bars and the error rules share the inline data, so the interval
    is drawn exactly where the figure is.
    """
    cat = {"field": x, "type": "nominal", "sort": [v[x] for v in values], "title": None}
    bar_enc: dict[str, Any] = {
        "y": cat,
        "x": {"field": y, "type": "quantitative", "title": y_title or y},
        "tooltip": [
            {"field": x},
            {"field": y, "format": ".2f"},
            {"field": low, "format": ".2f", "title": "95% CI low"},
            {"field": high, "format": ".2f", "title": "95% CI high"},
        ],
    }
    if color:
        bar_enc["color"] = {"field": color, "type": "nominal"}
    return {
        "data": {"values": list(values)},
        "layer": [
            {"mark": "bar", "encoding": bar_enc},
            {
                "mark": {"type": "rule", "color": "#343a40"},
                "encoding": {
                    "y": cat,
                    "x": {"field": low, "type": "quantitative"},
                    "x2": {"field": high},
                },
            },
        ],
    }


def stacked_groups(
    values: Sequence[Mapping[str, Any]], *, group: str, category: str, order: Sequence[str]
) -> dict[str, Any]:
    """One 100 % stacked bar per group (a cross-tab's row percentages)."""
    return {
        "data": {"values": list(values)},
        "mark": "bar",
        "encoding": {
            "y": {"field": group, "type": "nominal", "title": None},
            "x": {
                "field": "percent",
                "type": "quantitative",
                "stack": "normalize",
                "title": "share",
            },
            "color": {"field": category, "type": "nominal", "sort": list(order)},
            "tooltip": [
                {"field": group},
                {"field": category},
                {"field": "percent", "format": ".1f"},
                {"field": "count"},
            ],
        },
    }


def _ci(row: Mapping[str, Any], key: str = "ci95") -> tuple[Any, Any]:
    ci = row.get(key) or [None, None]
    return ci[0], ci[1]


def basic_stats_charts(basic: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The response trend."""
    points = basic.get("trend") or []
    if not points:
        return []
    return [
        _chart(
            "response_trend",
            "Responses over time",
            "basic_stats",
            line_chart(points, x="period_start", y="count", y_title="responses"),
        )
    ]


def question_charts(question_stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One chart per question: option bars, score distributions or histograms."""
    charts = []
    for q in question_stats.get("questions", []):
        qid, title, kind = q["question_id"], q.get("text") or q["question_id"], q.get("type")
        if kind in ("single_choice", "multiple_choice"):
            rows = q.get("options", [])
            spec = bar_chart(
                rows,
                x="option",
                y="percent",
                y_title="% of respondents",
                horizontal=True,
                sort=[r["option"] for r in rows],
            )
        elif kind in ("rating", "nps"):
            spec = bar_chart(q.get("distribution", []), x="value", y="count", x_title="score")
            spec["encoding"]["x"]["type"] = "ordinal"
        elif kind == "number":
            rows = [
                {"bin": f"{h['start']:.3g}-{h['end']:.3g}", "count": h["count"]}
                for h in q.get("summary", {}).get("histogram", [])
            ]
            spec = bar_chart(rows, x="bin", y="count", sort=[r["bin"] for r in rows])
        else:
            continue
        charts.append(_chart(f"question:{qid}", title, "question_stats", spec))
    return charts


def nps_charts(nps_component: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Promoters / passives / detractors per NPS question."""
    charts = []
    for q in nps_component.get("questions", []):
        if not q.get("n"):
            continue
        rows = [
            {"group": g, "percent": q.get(f"{g}_percent", 0.0)}
            for g in ("detractors", "passives", "promoters")
        ]
        charts.append(
            _chart(
                f"nps:{q['question_id']}",
                f"NPS {q['score']:.0f}: {q.get('text') or q['question_id']}",
                "nps",
                stacked_share(
                    rows, category="group", order=["detractors", "passives", "promoters"]
                ),
            )
        )
    return charts


def _score_rows(component: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row (question, score, CI bounds) per question of ``component`` that has a score."""
    rows = []
    for q in component.get("questions", []):
        if q.get("score") is None:
            continue
        lo, hi = _ci(q)
        rows.append(
            {
                "question": q.get("text") or q["question_id"],
                "score": q["score"],
                "low": lo,
                "high": hi,
            }
        )
    return rows


def _score_charts(
    component: Mapping[str, Any], chart_id: str, title: str, kind: str, y_title: str
) -> list[dict[str, Any]]:
    rows = _score_rows(component)
    if not rows:
        return []
    return [
        _chart(chart_id, title, kind, bars_with_ci(rows, x="question", y="score", y_title=y_title))
    ]


def nps_score_charts(nps_component: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each NPS question's score with its 95 % CI."""
    return _score_charts(
        nps_component, "nps_scores", "Net Promoter Score with 95% CI", "nps", "NPS"
    )


def csat_charts(csat_component: Mapping[str, Any]) -> list[dict[str, Any]]:
    """CSAT score per rating question, with its 95 % (Wilson) CI."""
    return _score_charts(
        csat_component, "csat", "CSAT (share of 4-5 ratings) with 95% CI", "csat", "% satisfied"
    )


def _verdict(q: Mapping[str, Any]) -> str:
    test = q.get("test") or {}
    p = test.get("p_adjusted", test.get("p_value"))
    if p is None:
        return "not tested"
    word = "significant" if test.get("significant") else "not significant"
    return f"{word}, adjusted p={p:.3g}"


def segment_charts(segments: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per segment: means with 95 % CIs (numeric), NPS with CIs, row shares (choices)."""
    charts = []
    for seg in segments.get("segments", []):
        attribute = seg["attribute"]
        for q in seg.get("questions", []):
            title = f"{q.get('text') or q['question_id']} by {attribute} ({_verdict(q)})"
            chart_id = f"segment:{attribute}:{q['question_id']}"
            groups = q.get("groups")
            if groups:
                rows = []
                for g, s in groups.items():
                    lo, hi = _ci(s)
                    rows.append(
                        {
                            "segment": g,
                            "mean": s.get("mean"),
                            "low": lo,
                            "high": hi,
                            "n": s.get("n"),
                        }
                    )
                charts.append(
                    _chart(
                        chart_id,
                        title,
                        "segments",
                        bars_with_ci(rows, x="segment", y="mean", y_title="mean"),
                    )
                )
                nps_rows = []
                for g, s in groups.items():
                    nps_g = s.get("nps") or {}
                    if nps_g.get("score") is not None:
                        lo, hi = _ci(nps_g)
                        nps_rows.append(
                            {"segment": g, "score": nps_g["score"], "low": lo, "high": hi}
                        )
                if nps_rows:
                    charts.append(
                        _chart(
                            f"segment_nps:{attribute}:{q['question_id']}",
                            f"NPS by {attribute}: {q.get('text') or q['question_id']}",
                            "segments",
                            bars_with_ci(nps_rows, x="segment", y="score", y_title="NPS"),
                        )
                    )
            elif q.get("crosstab"):
                cats = q.get("categories") or []
                rows = [
                    {
                        "segment": r["group"],
                        "option": c,
                        "percent": r["percent"].get(c, 0.0),
                        "count": r["counts"].get(c, 0),
                    }
                    for r in q["crosstab"]
                    for c in cats
                ]
                if q.get("type") == "multiple_choice":
                    # Shares of respondents: they do not add up to 100 %, so bars side by side.
                    spec = {
                        "data": {"values": rows},
                        "mark": "bar",
                        "encoding": {
                            "y": {
                                "field": "option",
                                "type": "nominal",
                                "sort": list(cats),
                                "title": None,
                            },
                            "yOffset": {"field": "segment", "type": "nominal"},
                            "x": {
                                "field": "percent",
                                "type": "quantitative",
                                "title": "% of respondents",
                            },
                            "color": {"field": "segment", "type": "nominal"},
                            "tooltip": [
                                {"field": "segment"},
                                {"field": "option"},
                                {"field": "percent", "format": ".1f"},
                            ],
                        },
                    }
                else:
                    spec = stacked_groups(rows, group="segment", category="option", order=cats)
                charts.append(_chart(chart_id, title, "segments", spec))
    return charts


def sentiment_charts(sentiment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Label shares per free-text question, and per segment."""
    charts = []
    for q in sentiment.get("questions", []):
        if not q.get("n"):
            continue
        for attribute, groups in (q.get("segments") or {}).items():
            rows = [
                {
                    "segment": g,
                    "label": label,
                    "percent": r.get("percent", {}).get(label, 0.0),
                    "count": r.get("counts", {}).get(label, 0),
                }
                for g, r in groups.items()
                for label in ("negative", "neutral", "positive")
            ]
            if rows:
                charts.append(
                    _chart(
                        f"sentiment_segments:{q['question_id']}:{attribute}",
                        f"Sentiment by {attribute}: {q.get('text') or q['question_id']}",
                        "sentiment",
                        stacked_groups(
                            rows,
                            group="segment",
                            category="label",
                            order=["negative", "neutral", "positive"],
                        ),
                    )
                )
        rows = [{"label": k, "percent": v} for k, v in q.get("percent", {}).items()]
        charts.append(
            _chart(
                f"sentiment:{q['question_id']}",
                f"Sentiment: {q.get('text') or q['question_id']}",
                "sentiment",
                stacked_share(rows, category="label", order=["negative", "neutral", "positive"]),
            )
        )
    return charts


def theme_charts(themes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Share of answers per theme."""
    charts = []
    for q in themes.get("questions", []):
        rows = []
        for t in q.get("themes", []):
            lo, hi = _ci(t, "share_ci95")
            rows.append(
                {
                    "theme": t["name"],
                    "share": 100.0 * t["share"],
                    "low": None if lo is None else 100.0 * lo,
                    "high": None if hi is None else 100.0 * hi,
                    "sentiment": t.get("sentiment_label") or "neutral",
                }
            )
        if rows:
            spec = bars_with_ci(
                rows, x="theme", y="share", y_title="% of answers", color="sentiment"
            )
            spec["layer"][0]["encoding"]["color"]["scale"] = {
                "domain": ["negative", "neutral", "positive"],
                "range": ["#e03131", "#868e96", "#2f9e44"],
            }
            charts.append(
                _chart(
                    f"themes:{q['question_id']}",
                    f"Themes: {q.get('text') or q['question_id']}",
                    "themes",
                    spec,
                )
            )
    return charts


BUILDERS = {
    "basic_stats": basic_stats_charts,
    "question_stats": question_charts,
    "nps": lambda c: [*nps_charts(c), *nps_score_charts(c)],
    "csat": csat_charts,
    "segments": segment_charts,
    "sentiment": sentiment_charts,
    "themes": theme_charts,
}


def build_all(components: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Charts for every component present, in a stable order."""
    charts: list[dict[str, Any]] = []
    for name, builder in BUILDERS.items():
        if name in components:
            charts.extend(builder(components[name]))
    return charts
