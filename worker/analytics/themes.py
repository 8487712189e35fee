"""Themes of free-text answers: the extractor interface and the local TF-IDF + NMF extractor.

NMF factorises the TF-IDF matrix into topics; a theme is named by its top terms, each
answer belongs to its dominant topic, and the answers that load most on a topic are its
evidence. ``random_state`` is fixed, so the same answers always give the same themes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

QUOTE_CHARS = 280
MIN_DOCUMENTS = 5


@dataclass
class Theme:
    """One theme found in the answers.

    Attributes:
        name: Short label made of the top terms.
        description: One sentence saying what the answers talk about.
        terms: Top terms, most characteristic first.
        members: Indexes of the answers whose dominant theme this is.
        evidence: Indexes of the most typical answers, strongest first.
        strength: Mean weight of the members on this theme, relative to their total (0-1).
    """

    name: str
    description: str
    terms: list[str]
    members: list[int] = field(default_factory=list)
    evidence: list[int] = field(default_factory=list)
    strength: float = 0.0


class ThemeExtractor(Protocol):
    """Groups texts into themes."""

    name: str  # provenance, e.g. "local:tfidf-nmf"
    prompt_version: str

    def extract(self, texts: Sequence[str], n_themes: int) -> list[Theme]:
        """Themes of ``texts`` (indexes into ``texts``), largest first."""
        ...


class TfidfNmfExtractor:
    """The local extractor: scikit-learn TF-IDF + NMF with a fixed seed."""

    name = "local:tfidf-nmf"
    prompt_version = "tfidf-nmf-1"

    def __init__(self, *, random_state: int = 0, top_terms: int = 5, evidence: int = 3) -> None:
        self.random_state = random_state
        self.top_terms = top_terms
        self.evidence = evidence

    def extract(self, texts: Sequence[str], n_themes: int) -> list[Theme]:
        """Themes of ``texts``; fewer than ``n_themes`` when the vocabulary is small."""
        from sklearn.decomposition import NMF
        from sklearn.feature_extraction.text import TfidfVectorizer

        if len(texts) < MIN_DOCUMENTS:
            return []
        vectorizer = TfidfVectorizer(
            stop_words="english",
            max_df=0.9,
            min_df=2 if len(texts) >= 20 else 1,
            ngram_range=(1, 2),
            max_features=5000,
            sublinear_tf=True,
        )
        try:
            x = vectorizer.fit_transform(texts)
        except ValueError:  # nothing but stop words
            return []
        k = max(1, min(n_themes, x.shape[1], x.shape[0] - 1))
        model = NMF(n_components=k, init="nndsvda", random_state=self.random_state, max_iter=400)
        w = model.fit_transform(x)
        h = model.components_
        terms = vectorizer.get_feature_names_out()
        row_sums = w.sum(axis=1)
        dominant = w.argmax(axis=1)
        themes = []
        for t in range(k):
            top = [str(terms[i]) for i in np.argsort(-h[t])[: self.top_terms]]
            members = np.flatnonzero((dominant == t) & (row_sums > 0))
            if members.size == 0:
                continue
            order = members[np.lexsort((members, -w[members, t]))]
            strength = float(np.mean(w[members, t] / row_sums[members]))
            themes.append(
                Theme(
                    name=" / ".join(top[:3]),
                    description=f"Answers mentioning {', '.join(top)}.",
                    terms=top,
                    members=[int(i) for i in members],
                    evidence=[int(i) for i in order[: self.evidence]],
                    strength=strength,
                )
            )
        themes.sort(key=lambda th: (-len(th.members), th.name))
        return themes


def themes_component(
    themes: Sequence[Theme],
    ids: Sequence[str],
    texts: Sequence[str],
    scores: np.ndarray | None,
    *,
    total_documents: int,
) -> list[dict[str, Any]]:
    """JSON-ready themes: share of answers, mean sentiment and evidence quotes per theme."""
    from worker.analytics.sentiment import overall_label
    from worker.analytics.stats import wilson_interval

    out = []
    for th in themes:
        member_scores = scores[th.members] if scores is not None and th.members else None
        mean = None if member_scores is None else float(np.mean(member_scores))
        lo, hi = wilson_interval(len(th.members), total_documents)
        out.append(
            {
                "name": th.name,
                "description": th.description,
                "terms": th.terms,
                "count": len(th.members),
                "share": len(th.members) / total_documents if total_documents else 0.0,
                # The share is estimated on the (sampled) answers: its Wilson 95 % interval.
                "share_ci95": None if lo is None else [lo, hi],
                "sentiment": mean,
                "sentiment_label": None if mean is None else overall_label(mean),
                "confidence": th.strength,
                "evidence": [
                    {"response_id": ids[i], "text": texts[i][:QUOTE_CHARS]} for i in th.evidence
                ],
            }
        )
    return out
