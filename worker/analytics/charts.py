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


def csat_charts(csat_component: Mapping[str, Any]) -> list[dict[str, Any]]:
    """CSAT score per rating question."""
    rows = [
        {"question": q.get("text") or q["question_id"], "score": q["score"]}
        for q in csat_component.get("questions", [])
        if q.get("score") is not None
    ]
    if not rows:
        return []
    return [
        _chart(
            "csat",
            "CSAT (share of 4-5 ratings)",
            "csat",
            bar_chart(rows, x="question", y="score", y_title="% satisfied", horizontal=True),
        )
    ]


def segment_charts(segments: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Mean per segment for numeric questions."""
    charts = []
    for seg in segments.get("segments", []):
        for q in seg.get("questions", []):
            groups = q.get("groups")
            if not groups:
                continue
            rows = [{"segment": g, "mean": s.get("mean")} for g, s in groups.items()]
            charts.append(
                _chart(
                    f"segment:{seg['attribute']}:{q['question_id']}",
                    f"{q.get('text') or q['question_id']} by {seg['attribute']}",
                    "segments",
                    bar_chart(rows, x="segment", y="mean"),
                )
            )
    return charts


def sentiment_charts(sentiment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Label shares per free-text question."""
    charts = []
    for q in sentiment.get("questions", []):
        if not q.get("n"):
            continue
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
        rows = [{"theme": t["name"], "share": 100.0 * t["share"]} for t in q.get("themes", [])]
        if rows:
            charts.append(
                _chart(
                    f"themes:{q['question_id']}",
                    f"Themes: {q.get('text') or q['question_id']}",
                    "themes",
                    bar_chart(
                        rows,
                        x="theme",
                        y="share",
                        y_title="% of answers",
                        horizontal=True,
                        sort=[r["theme"] for r in rows],
                    ),
                )
            )
    return charts


BUILDERS = {
    "basic_stats": basic_stats_charts,
    "question_stats": question_charts,
    "nps": nps_charts,
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
