"""Sentiment of free-text answers: the analyzer interface, the local VADER analyzer, and
pure aggregation of per-answer scores into a component.

An analyzer only scores texts; everything else (aggregates, quotes) is computed here from
its scores and labels, so swapping VADER for the OpenAI analyzer (:mod:`.ai`) changes
nothing downstream but the provenance. :class:`LocalSentiment` and :class:`OpenAISentiment`
give both the same async interface (:class:`SentimentScorer`).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from worker.analytics.ai import OpenAIAnalyzer, SentimentResult

LABELS = ("positive", "neutral", "negative")
# VADER's own recommended thresholds on the compound score.
POSITIVE_FROM = 0.05
NEGATIVE_TO = -0.05
QUOTE_CHARS = 280


class SentimentAnalyzer(Protocol):
    """Scores texts from -1 (negative) to +1 (positive)."""

    name: str  # provenance, e.g. "local:vader" or "openai:<model>"
    prompt_version: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """One compound score in [-1, 1] per text."""
        ...


class VaderAnalyzer:
    """The local analyzer: VADER's compound score (rule based, no network, no model file)."""

    name = "local:vader"
    prompt_version = "vader-3.3"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """VADER compound scores."""
        return np.fromiter(
            (self._vader.polarity_scores(t)["compound"] for t in texts),
            dtype=np.float64,
            count=len(texts),
        )


def labels_of(scores: ArrayLike) -> np.ndarray:
    """Labels for scores: positive from +0.05, negative up to -0.05, neutral between."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, "neutral", dtype=object)
    out[s >= POSITIVE_FROM] = "positive"
    out[s <= NEGATIVE_TO] = "negative"
    return out


def confidence_of(scores: ArrayLike) -> float:
    """How decisive the scores are: the mean distance from the neutral band's edge, in [0, 1].

    A crude but honest proxy for a lexicon analyzer: answers scored near zero are the ones
    a human would most likely label differently.
    """
    s = np.abs(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        return 0.0
    return float(np.clip(s, 0.0, 1.0).mean())


@dataclass
class SentimentAccumulator:
    """Aggregates scored answers of one question (or segment) in bounded memory.

    Keeps counts, the score sum and, per label, the ``quotes`` most typical answers (highest
    |score| for positive/negative, closest to 0 for neutral) in small heaps, so it can be fed
    any number of answers chunk by chunk.
    """

    quotes: int = 3
    n: int = 0
    total: float = 0.0
    abs_total: float = 0.0
    confidence_total: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    _heaps: dict[str, list[tuple[float, str, str]]] = field(
        default_factory=lambda: {k: [] for k in LABELS}
    )

    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        scores: ArrayLike,
        labels: ArrayLike | None = None,
        confidence: ArrayLike | None = None,
    ) -> None:
        """Adds a chunk of answers with their scores (and labels, else derived from scores)."""
        s = np.asarray(scores, dtype=np.float64)
        labels = labels_of(s) if labels is None else np.asarray(labels, dtype=object)
        c = np.clip(np.abs(s), 0.0, 1.0) if confidence is None else np.asarray(confidence)
        self.confidence_total += float(np.sum(c))
        self.n += int(s.size)
        self.total += float(s.sum())
        self.abs_total += float(np.abs(s).sum())
        for label in LABELS:
            self.counts[label] += int(np.count_nonzero(labels == label))
        for rid, text, score, label in zip(ids, texts, s, labels, strict=True):
            # Ties broken by response id so results do not depend on chunk order.
            key = -abs(float(score)) if label == "neutral" else abs(float(score))
            heap = self._heaps[label]
            item = (key, rid, text)
            if len(heap) < self.quotes:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def result(self) -> dict[str, Any]:
        """The aggregate: counts, percentages, mean score and representative quotes."""
        out: dict[str, Any] = {
            "n": self.n,
            "mean_score": self.total / self.n if self.n else None,
            "counts": dict(self.counts),
            "percent": {k: (100.0 * v / self.n if self.n else 0.0) for k, v in self.counts.items()},
            "confidence": self.confidence_total / self.n if self.n else None,
            "quotes": {},
        }
        for label, heap in self._heaps.items():
            best = sorted(heap, reverse=True)
            out["quotes"][label] = [
                {"response_id": rid, "text": text[:QUOTE_CHARS]} for _, rid, text in best
            ]
        return out


def overall_label(mean_score: float | None) -> str:
    """The label of a mean score (``neutral`` when there is none)."""
    if mean_score is None:
        return "neutral"
    return str(labels_of(np.array([mean_score]))[0])


@dataclass
class Scored:
    """Per-text sentiment of one chunk: scores in [-1, 1], labels and confidences in [0, 1]."""

    scores: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray


class SentimentScorer(Protocol):
    """The async interface the sentiment activity uses."""

    name: str
    prompt_version: str

    async def score_texts(self, texts: Sequence[str]) -> Scored:
        """Sentiment of ``texts``."""
        ...


class LocalSentiment:
    """A local (synchronous, CPU-bound) analyzer run off the event loop.

    Labels follow the score thresholds; the confidence of an answer is its |score|: a
    crude but honest proxy for a lexicon analyzer, whose answers near 0 are the ones a
    human would most likely label differently.
    """

    def __init__(self, analyzer: SentimentAnalyzer) -> None:
        self._analyzer = analyzer
        self.name = analyzer.name
        self.prompt_version = analyzer.prompt_version

    async def score_texts(self, texts: Sequence[str]) -> Scored:
        """Scores ``texts`` in a thread, so heartbeats keep flowing."""
        scores = await asyncio.to_thread(self._analyzer.score, texts)
        return Scored(scores, labels_of(scores), np.clip(np.abs(scores), 0.0, 1.0))


class OpenAISentiment:
    """The OpenAI analyzer as a :class:`SentimentScorer`."""

    def __init__(self, analyzer: OpenAIAnalyzer) -> None:
        from worker.analytics.ai import SENTIMENT_PROMPT_VERSION

        self._analyzer = analyzer
        self.name = analyzer.name
        self.prompt_version = SENTIMENT_PROMPT_VERSION

    async def score_texts(self, texts: Sequence[str]) -> Scored:
        """Asks the model (see :meth:`OpenAIAnalyzer.sentiment`)."""
        r: SentimentResult = await self._analyzer.sentiment(texts)
        return Scored(r.scores, r.labels, r.confidence)
