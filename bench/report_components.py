"""Realistic report components of the demo survey, computed in memory with the worker's analytics.

Renderer tests and the render benchmark need a report whose components have exactly the
shapes the pipeline stores, without running the pipeline. This module feeds the demo
survey's responses (:mod:`surveymesh.demo`) through the same pure functions the worker's
activities call (:mod:`worker.analytics`), assembling each component as the activity does.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from surveymesh.delivery.v1 import survey_pb2
from surveymesh.demo import demo_responses, demo_survey
from worker.analytics import charts
from worker.analytics import stats as st
from worker.analytics.sentiment import SentimentAccumulator, VaderAnalyzer, overall_label
from worker.analytics.themes import TfidfNmfExtractor, themes_component

QT = survey_pb2.QuestionType
_TYPES = {
    QT.QUESTION_TYPE_NPS: "nps",
    QT.QUESTION_TYPE_RATING: "rating",
    QT.QUESTION_TYPE_SINGLE_CHOICE: "single_choice",
    QT.QUESTION_TYPE_MULTIPLE_CHOICE: "multiple_choice",
    QT.QUESTION_TYPE_NUMBER: "number",
    QT.QUESTION_TYPE_FREE_TEXT: "free_text",
}
SEGMENT_BY = ("plan", "region")
# A hostile answer, so every rendering of the demo report proves it escapes respondent text.
HOSTILE_TEXT = 'Support was slow. <script>alert("pwned")</script> & the <b>export</b> broke.'


def _answer_value(answer: Any) -> Any:
    kind = answer.WhichOneof("value")
    if kind == "choices":
        return list(answer.choices.values)
    return getattr(answer, kind) if kind else None


@functools.lru_cache(maxsize=4)
def demo_components(count: int = 3000, *, hostile: bool = True) -> dict[str, Any]:
    """Every component of a FULL report of the demo survey with ``count`` responses.

    Args:
        count: Responses to generate (the demo uses 3000).
        hostile: Replace the first free-text answer with :data:`HOSTILE_TEXT` and make it
            the first negative quote of the first free-text question.

    Returns:
        ``{component_type: data}`` in the shapes the worker stores.
    """
    survey = demo_survey()
    questions: list[dict[str, Any]] = [
        {"id": q.id, "text": q.text, "type": _TYPES[q.type], "options": list(q.options)}
        for q in survey.questions
    ]
    responses = list(demo_responses(count))
    hostile_id = ""
    if hostile:
        for r in responses:
            free = [a for a in r.answers if a.WhichOneof("value") == "text"]
            if free:
                free[0].text = HOSTILE_TEXT
                hostile_id = r.id
                break
    answers: dict[str, dict[str, Any]] = defaultdict(dict)
    attrs: dict[str, dict[str, str]] = {}
    for r in responses:
        attrs[r.id] = dict(r.attributes)
        for answer in r.answers:
            answers[answer.question_id][r.id] = _answer_value(answer)
    n = len(responses)

    # basic_stats
    completed = [r.completed for r in responses]
    durations = [
        (r.complete_time.ToDatetime() - r.start_time.ToDatetime()).total_seconds()
        for r in responses
        if r.completed and r.HasField("complete_time")
    ]
    buckets: Counter[datetime] = Counter()
    for r in responses:
        ts = r.complete_time if r.HasField("complete_time") else r.start_time
        buckets[st.bucket_start(ts.ToDatetime(tzinfo=UTC), "week")] += 1
    basic = st.completion_stats(completed, durations)
    basic.update(trend_interval="week", trend=st.trend(buckets, "week"), include_incomplete=False)

    # question_stats, nps, csat
    qstats, nps_list, csat_list = [], [], []
    for q in questions:
        base: dict[str, Any] = {"question_id": q["id"], "text": q["text"], "type": q["type"]}
        given = answers[q["id"]]
        if q["type"] in ("rating", "nps", "number"):
            values = np.asarray(list(given.values()), dtype=np.float64)
            summary = st.numeric_summary(values, skipped=n - values.size)
            base.update(n=summary["n"], skipped=summary["skipped"], summary=summary)
            if q["type"] == "rating":
                base["distribution"] = st.integer_distribution(values, 1, 5)
                csat_list.append({"question_id": q["id"], "text": q["text"], **st.csat(values)})
            elif q["type"] == "nps":
                base["distribution"] = st.integer_distribution(values, 0, 10)
                nps_list.append({"question_id": q["id"], "text": q["text"], **st.nps(values)})
        elif q["type"] in ("single_choice", "multiple_choice"):
            counts: Counter[str] = Counter()
            for v in given.values():
                counts.update(v if isinstance(v, list) else [v])
            base.update(
                st.choice_distribution(
                    counts, q["options"], answered=len(given), skipped=n - len(given)
                )
            )
        else:
            lengths = [len(t) for t in given.values()]
            base.update(
                n=len(given),
                skipped=n - len(given),
                mean_length=float(np.mean(lengths)) if lengths else None,
            )
        qstats.append(base)

    # segments
    segments: dict[str, Any] = {"segments": []}
    for attribute in SEGMENT_BY:
        sizes = Counter(a[attribute] for a in attrs.values() if attribute in a)
        groups = [g for g, _ in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))]
        entry: dict[str, Any] = {
            "attribute": attribute,
            "groups": {g: sizes[g] for g in groups},
            "missing": 0,
            "groups_left_out": 0,
            "default": False,
            "questions": [],
        }
        for q in questions:
            head = {"question_id": q["id"], "text": q["text"], "type": q["type"]}
            given = answers[q["id"]]
            if q["type"] in ("rating", "nps", "number"):
                by: dict[str, list[float]] = defaultdict(list)
                for rid, v in given.items():
                    by[attrs[rid][attribute]].append(float(v))
                result = st.compare_numeric_groups(
                    {g: np.asarray(by[g]) for g in groups if g in by}, kind=q["type"]
                )
            elif q["type"] == "single_choice":
                cross: dict[str, dict[str, int]] = defaultdict(dict)
                for rid, v in given.items():
                    g = attrs[rid][attribute]
                    cross[g][v] = cross[g].get(v, 0) + 1
                result = st.compare_categorical_groups(
                    {g: cross[g] for g in groups if g in cross}, q["options"]
                )
            elif q["type"] == "multiple_choice":
                picks: dict[str, dict[str, int]] = defaultdict(dict)
                respondents: Counter[str] = Counter()
                for rid, v in given.items():
                    g = attrs[rid][attribute]
                    respondents[g] += 1
                    for c in v:
                        picks[g][c] = picks[g].get(c, 0) + 1
                result = st.compare_multiple_choice_groups(
                    {g: picks[g] for g in groups if g in respondents},
                    {g: respondents[g] for g in groups if g in respondents},
                    q["options"],
                )
            else:
                continue
            entry["questions"].append({**head, **result})
        segments["segments"].append(entry)
    segments = st.segment_component(segments["segments"])

    # sentiment and themes
    analyzer = VaderAnalyzer()
    extractor = TfidfNmfExtractor()
    overall = SentimentAccumulator()
    sentiment_questions: list[dict[str, Any]] = []
    theme_questions: list[dict[str, Any]] = []
    strengths: list[float] = []
    abs_total = 0.0
    for q in (q for q in questions if q["type"] == "free_text"):
        ids = sorted(answers[q["id"]])
        texts = [answers[q["id"]][i] for i in ids]
        scores = analyzer.score(texts)
        acc = SentimentAccumulator()
        acc.add(ids, texts, scores)
        overall.add(ids, texts, scores)
        abs_total += float(np.abs(scores).sum())
        by_segment: dict[str, dict[str, SentimentAccumulator]] = {a: {} for a in SEGMENT_BY}
        for rid, text, score in zip(ids, texts, scores, strict=True):
            for a in SEGMENT_BY:
                by_segment[a].setdefault(attrs[rid][a], SentimentAccumulator(quotes=1)).add(
                    [rid], [text], [score]
                )
        result = acc.result()
        sentiment_questions.append(
            {
                "question_id": q["id"],
                "text": q["text"],
                "label": overall_label(result["mean_score"]),
                **result,
                "segments": {
                    a: {g: s.result() for g, s in sorted(groups.items())}
                    for a, groups in by_segment.items()
                },
            }
        )
        found = extractor.extract(texts, max(2, min(8, len(texts) // 25)))
        strengths.extend(t.strength for t in found)
        theme_questions.append(
            {
                "question_id": q["id"],
                "text": q["text"],
                "answers": len(texts),
                "sampled": len(texts),
                "themes": themes_component(
                    found, ids, texts, scores if found else None, total_documents=len(texts)
                ),
            }
        )
    if hostile and sentiment_questions:
        # Shown for certain, whatever the analyzer picks: the first negative quote.
        quotes = sentiment_questions[0]["quotes"].setdefault("negative", [])
        quotes.insert(0, {"response_id": hostile_id, "text": HOSTILE_TEXT})
        del quotes[3:]
    total = overall.result()
    components: dict[str, Any] = {
        "basic_stats": basic,
        "question_stats": {"response_count": n, "questions": qstats},
        "nps": {"questions": nps_list},
        "csat": {"satisfied_from": 4, "questions": csat_list},
        "segments": segments,
        "sentiment": {
            "provenance": {
                "analyzer": analyzer.name,
                "prompt_version": analyzer.prompt_version,
                "confidence": abs_total / overall.n if overall.n else 0.0,
            },
            "overall": {"label": overall_label(total["mean_score"]), **total},
            "questions": sentiment_questions,
        },
        "themes": {
            "provenance": {
                "analyzer": extractor.name,
                "prompt_version": extractor.prompt_version,
                "confidence": float(np.mean(strengths)) if strengths else 0.0,
                "sentiment_analyzer": analyzer.name,
            },
            "questions": theme_questions,
        },
    }
    components["visualizations"] = {
        "format": "vega-lite/v5",
        "charts": charts.build_all(components),
    }
    components["summary"] = {
        "title": survey.title,
        "survey_id": "demo",
        "kind": "full",
        "response_count": n,
        "question_count": len(questions),
        "components": sorted([*components, "summary"]),
        "headlines": {
            "completion_rate": basic["completion_rate"],
            "nps": {
                "question_id": nps_list[0]["question_id"],
                "score": nps_list[0]["score"],
                "ci95": nps_list[0]["ci95"],
            },
        },
    }
    return components
