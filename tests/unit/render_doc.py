"""A small report document for the renderer unit tests, with hostile text in every field a
respondent or survey author controls."""

from __future__ import annotations

from typing import Any

import orjson

from reporting_svc.render import ReportDocument, StoredComponent

EVIL = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


def components() -> dict[str, Any]:
    """Components in the worker's shapes (small, hand-made)."""
    quote = {"response_id": "r-1", "text": f"Slow support {EVIL} & more"}
    return {
        "basic_stats": {
            "responses": 120,
            "completed": 100,
            "completion_rate": 100 / 120,
            "completion_rate_ci95": [0.76, 0.89],
            "completion_time_seconds": {"n": 100, "mean": 300.0, "median": 250.0},
            "trend_interval": "day",
            "trend": [{"period_start": "2026-10-01T00:00:00+00:00", "count": 120}],
            "include_incomplete": False,
        },
        "question_stats": {
            "response_count": 120,
            "questions": [
                {
                    "question_id": "q1",
                    "text": f"Pick one {EVIL}",
                    "type": "single_choice",
                    "n": 100,
                    "skipped": 20,
                    "options": [
                        {
                            "option": f"=HYPERLINK({EVIL})",
                            "count": 60,
                            "percent": 60.0,
                            "ci95": [50.2, 69.1],
                        },
                        {"option": "B", "count": 40, "percent": 40.0, "ci95": [30.9, 49.8]},
                    ],
                }
            ],
        },
        "nps": {
            "questions": [
                {
                    "question_id": "q2",
                    "text": "Recommend?",
                    "n": 100,
                    "promoters": 50,
                    "passives": 30,
                    "detractors": 20,
                    "promoters_percent": 50.0,
                    "passives_percent": 30.0,
                    "detractors_percent": 20.0,
                    "score": 30.0,
                    "ci95": [17.5, 42.5],
                    "small_sample": False,
                }
            ]
        },
        "sentiment": {
            "provenance": {
                "analyzer": "local:vader",
                "prompt_version": "vader-3.3",
                "confidence": 0.5,
            },
            "overall": {
                "label": "negative",
                "n": 1,
                "mean_score": -0.4,
                "counts": {},
                "percent": {"negative": 100.0},
                "quotes": {},
            },
            "questions": [
                {
                    "question_id": "q3",
                    "text": "Why?",
                    "label": "negative",
                    "n": 1,
                    "mean_score": -0.4,
                    "counts": {"negative": 1},
                    "percent": {"negative": 100.0},
                    "quotes": {"negative": [quote, quote]},
                    "segments": {},
                }
            ],
        },
        "themes": {
            "provenance": {
                "analyzer": "local:tfidf-nmf",
                "prompt_version": "tfidf-nmf-1",
                "confidence": 0.8,
            },
            "questions": [
                {
                    "question_id": "q3",
                    "text": "Why?",
                    "answers": 1,
                    "sampled": 1,
                    "themes": [
                        {
                            "name": f"theme {EVIL}",
                            "description": "d",
                            "terms": ["slow"],
                            "count": 1,
                            "share": 1.0,
                            "sentiment": -0.4,
                            "confidence": 0.8,
                            "evidence": [quote],
                        }
                    ],
                }
            ],
        },
        "visualizations": {
            "format": "vega-lite/v5",
            "charts": [
                {
                    "id": "question:q1",
                    "title": "Pick one",
                    "component": "question_stats",
                    "spec": {
                        "data": {
                            "values": [
                                {"option": f"</script>{EVIL}", "percent": 60.0},
                                {"option": "B", "percent": 40.0},
                            ]
                        },
                        "mark": "bar",
                        "encoding": {
                            "y": {"field": "option", "type": "nominal"},
                            "x": {"field": "percent", "type": "quantitative"},
                        },
                    },
                },
                {
                    "id": "nps:q2",
                    "title": "NPS",
                    "component": "nps",
                    "spec": {
                        "data": {
                            "values": [
                                {"group": "detractors", "percent": 20},
                                {"group": "passives", "percent": 30},
                                {"group": "promoters", "percent": 50},
                            ]
                        },
                        "mark": "bar",
                        "encoding": {
                            "x": {"field": "percent", "type": "quantitative", "stack": "normalize"},
                            "color": {
                                "field": "group",
                                "type": "nominal",
                                "sort": ["detractors", "passives", "promoters"],
                            },
                        },
                    },
                },
            ],
        },
        "future_component": {"rows": [{"a": 1, "b": EVIL}], "note": EVIL},
    }


def document(
    data: dict[str, Any] | None = None, *, state: str = "REPORT_STATE_COMPLETED"
) -> ReportDocument:
    """A FULL report with ``data`` (default :func:`components`) as stored components."""
    data = components() if data is None else data
    return ReportDocument(
        report={
            "id": "11111111-2222-4333-8444-555555555555",
            "state": state,
            "kind": "REPORT_KIND_FULL",
            "survey_id": "s-1",
            "response_count": "120",
            "create_time": "2026-11-28T10:00:00Z",
            "end_time": "2026-11-28T10:01:00Z",
        },
        components=[StoredComponent(k, orjson.dumps(v)) for k, v in data.items()],
        title=f"Survey {EVIL}",
    )
