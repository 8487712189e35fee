"""Sentiment: VADER scores, labels, bounded aggregation and quote choice."""

from __future__ import annotations

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from worker.analytics.sentiment import (
    SentimentAccumulator,
    VaderAnalyzer,
    confidence_of,
    labels_of,
    overall_label,
)

TEXTS = [
    "I love this product, it is wonderful and fast!",
    "Terrible support, slow and rude. I hate waiting.",
    "The meeting is on Tuesday.",
    "Great value, happy with it.",
    "Awful experience, never again.",
]


def test_vader_analyzer_matches_library() -> None:
    ref = SentimentIntensityAnalyzer()
    scores = VaderAnalyzer().score(TEXTS)
    assert scores.shape == (5,)
    assert scores == pytest.approx([ref.polarity_scores(t)["compound"] for t in TEXTS])
    assert list(labels_of(scores)) == ["positive", "negative", "neutral", "positive", "negative"]


def test_label_thresholds() -> None:
    assert list(labels_of([0.05, 0.049, -0.049, -0.05])) == [
        "positive", "neutral", "neutral", "negative",
    ]  # fmt: skip
    assert overall_label(None) == "neutral"
    assert overall_label(0.3) == "positive"
    assert confidence_of([]) == 0.0
    assert confidence_of([-0.5, 0.5, 1.0]) == pytest.approx(2.0 / 3)


def test_accumulator_is_chunk_order_independent() -> None:
    rng = np.random.default_rng(5)
    scores = rng.uniform(-1, 1, 500)
    ids = [f"r{i:04d}" for i in range(500)]
    texts = [f"text {i}" for i in range(500)]
    whole = SentimentAccumulator()
    whole.add(ids, texts, scores)
    chunked = SentimentAccumulator()
    for start in (300, 0, 100):  # any chunking, any order
        stop = {300: 500, 0: 100, 100: 300}[start]
        chunked.add(ids[start:stop], texts[start:stop], scores[start:stop])
    a, b = whole.result(), chunked.result()
    assert b.pop("mean_score") == pytest.approx(a.pop("mean_score"))  # float sum order differs
    assert a == b
    a["mean_score"] = whole.result()["mean_score"]
    assert a["n"] == 500
    assert a["mean_score"] == pytest.approx(scores.mean())
    assert a["counts"]["positive"] == int((scores >= 0.05).sum())
    assert a["counts"]["negative"] == int((scores <= -0.05).sum())
    top_pos = ids[int(np.argmax(scores))]
    assert a["quotes"]["positive"][0]["response_id"] == top_pos
    neutral_best = ids[int(np.argmin(np.abs(scores)))]
    assert a["quotes"]["neutral"][0]["response_id"] == neutral_best
    assert all(len(v) == 3 for v in a["quotes"].values())


def test_accumulator_empty() -> None:
    r = SentimentAccumulator().result()
    assert r["n"] == 0 and r["mean_score"] is None
    assert r["quotes"] == {"positive": [], "neutral": [], "negative": []}
