"""Themes: TF-IDF + NMF finds planted topics, deterministically, with evidence."""

from __future__ import annotations

import numpy as np

from worker.analytics.themes import TfidfNmfExtractor, themes_component

PRICE = ["the price is too high", "pricing is expensive for small teams", "cost and price too expensive",
         "expensive price plan", "price increase was too high"]  # fmt: skip
SUPPORT = ["support team answered quickly", "support was helpful and quick", "quick helpful support agent",
           "the support agent was helpful", "support replied quickly"]  # fmt: skip


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    docs = [PRICE[i % 5] for i in range(40)] + [SUPPORT[i % 5] for i in range(30)]
    order = rng.permutation(len(docs))
    return [docs[i] for i in order]


def test_finds_planted_themes_deterministically() -> None:
    texts = _corpus()
    ex = TfidfNmfExtractor(random_state=0)
    themes = ex.extract(texts, 2)
    assert len(themes) == 2
    # Largest first: 40 price answers, 30 support answers.
    price, support = themes
    assert {texts[i] for i in price.members} <= set(PRICE)
    assert {texts[i] for i in support.members} <= set(SUPPORT)
    assert len(price.members) == 40 and len(support.members) == 30
    assert "price" in price.terms and "support" in support.terms
    assert all(i in price.members for i in price.evidence)
    assert 0 < price.strength <= 1
    again = ex.extract(texts, 2)
    assert [(t.name, t.members) for t in again] == [(t.name, t.members) for t in themes]


def test_too_few_documents_or_only_stop_words() -> None:
    ex = TfidfNmfExtractor()
    assert ex.extract(["a", "b"], 3) == []
    assert ex.extract(["the", "and", "the", "of", "is", "a"], 2) == []


def test_themes_component_shares_sentiment_and_evidence() -> None:
    texts = _corpus()
    ids = [f"r{i}" for i in range(len(texts))]
    themes = TfidfNmfExtractor().extract(texts, 2)
    scores = np.where([t in PRICE for t in texts], -0.5, 0.5)
    comp = themes_component(themes, ids, texts, scores, total_documents=len(texts))
    assert [c["count"] for c in comp] == [40, 30]
    assert comp[0]["share"] == 40 / 70
    assert comp[0]["sentiment"] == -0.5 and comp[1]["sentiment"] == 0.5
    ev = comp[0]["evidence"][0]
    assert texts[ids.index(ev["response_id"])] == ev["text"]
