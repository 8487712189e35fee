"""Vega-Lite specs built from components are complete and carry the component's data."""

from __future__ import annotations

import orjson
import pytest
import vl_convert

from worker.analytics import charts, stats


def _components() -> dict:
    return {
        "basic_stats": {"trend": [{"period_start": "2024-05-01T00:00:00+00:00", "count": 3}]},
        "question_stats": {
            "questions": [
                {"question_id": "q1", "text": "Plan?", "type": "single_choice",
                 **stats.choice_distribution({"a": 2, "b": 1}, ["a", "b"], answered=3)},
                {"question_id": "q2", "text": "Rate", "type": "rating",
                 "distribution": stats.integer_distribution([1, 5, 5], 1, 5)},
                {"question_id": "q3", "text": "Age", "type": "number",
                 "summary": stats.numeric_summary([1.0, 2.0, 3.0], bins=3)},
                {"question_id": "q4", "text": "Why?", "type": "free_text"},
            ]
        },
        "nps": {"questions": [{"question_id": "q5", "text": "Recommend?", **stats.nps([10, 9, 3])}]},
        "csat": {"questions": [{"question_id": "q2", "text": "Rate", **stats.csat([1, 5, 5])}]},
        "sentiment": {"questions": [{"question_id": "q4", "n": 2, "percent": {"positive": 50.0}}]},
        "themes": {"questions": [{"question_id": "q4", "themes": [{"name": "price", "share": 0.5}]}]},
    }  # fmt: skip


def test_build_all_makes_one_chart_per_figure() -> None:
    specs = charts.build_all(_components())
    ids = [c["id"] for c in specs]
    assert ids == [
        "response_trend", "question:q1", "question:q2", "question:q3",
        "nps:q5", "nps_scores", "csat", "sentiment:q4", "themes:q4",
    ]  # fmt: skip
    for c in specs:
        spec = c["spec"]
        assert spec["$schema"] == charts.SCHEMA
        assert spec["data"]["values"], c["id"]
        assert ("mark" in spec and "encoding" in spec) or "layer" in spec
        orjson.dumps(spec)  # plain JSON
        vl_convert.vegalite_to_svg(spec)  # a valid Vega-Lite spec that compiles and draws
    csat = next(c for c in specs if c["id"] == "csat")["spec"]
    assert csat["data"]["values"][0]["low"] == pytest.approx(stats.csat([1, 5, 5])["ci95"][0])
    q1 = specs[1]["spec"]
    assert [v["option"] for v in q1["data"]["values"]] == ["a", "b"]
    assert q1["encoding"]["y"]["sort"] == ["a", "b"]


def test_missing_components_give_no_charts() -> None:
    assert charts.build_all({}) == []
    assert charts.build_all({"nps": {"questions": [{"question_id": "x", "n": 0}]}}) == []


def test_segment_and_sentiment_charts_draw() -> None:
    numeric = stats.compare_numeric_groups(
        {"free": [6.0, 7.0, 9.0, 10.0], "enterprise": [9.0, 10.0, 10.0, 8.0]}, kind="nps"
    )
    single = stats.compare_categorical_groups(
        {"eu": {"yes": 5, "no": 3}, "us": {"yes": 2, "no": 6}}, ["yes", "no"]
    )
    multi = stats.compare_multiple_choice_groups(
        {"eu": {"api": 3}, "us": {"api": 1, "sso": 2}}, {"eu": 4, "us": 3}, ["api", "sso"]
    )
    segments = stats.segment_component(
        [
            {
                "attribute": "plan",
                "questions": [
                    {"question_id": "n", "type": "nps", **numeric},
                    {"question_id": "s", "type": "single_choice", **single},
                    {"question_id": "m", "type": "multiple_choice", **multi},
                ],
            }
        ]
    )
    sentiment = {
        "questions": [
            {
                "question_id": "t",
                "n": 2,
                "percent": {"positive": 50.0, "negative": 50.0},
                "segments": {
                    "plan": {"free": {"percent": {"positive": 100.0}, "counts": {"positive": 1}}}
                },
            }
        ]
    }
    specs = charts.build_all({"segments": segments, "sentiment": sentiment})
    ids = [c["id"] for c in specs]
    assert ids == [
        "segment:plan:n", "segment_nps:plan:n", "segment:plan:s", "segment:plan:m",
        "sentiment_segments:t:plan", "sentiment:t",
    ]  # fmt: skip
    for c in specs:
        vl_convert.vegalite_to_svg(c["spec"])
    assert "adjusted p=" in specs[0]["title"]
