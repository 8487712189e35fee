"""The per-process cache of renderings of completed reports."""

from __future__ import annotations

from reporting_svc.render import Rendered
from reporting_svc.reports import RenderCache


def r(n: int) -> Rendered:
    return Rendered("application/pdf", "x.pdf", b"x" * n)


def test_cache_evicts_least_recently_used_within_its_byte_budget() -> None:
    cache = RenderCache(400)
    cache.put(("a", "pdf", 1), r(100))
    cache.put(("b", "pdf", 1), r(100))
    cache.put(("c", "pdf", 1), r(100))
    assert cache.get(("a", "pdf", 1)) is not None  # now the most recently used
    cache.put(("d", "pdf", 1), r(100))
    cache.put(("e", "pdf", 1), r(100))  # over budget: "b", the least recent, goes
    assert cache.get(("b", "pdf", 1)) is None
    assert all(cache.get((k, "pdf", 1)) for k in "acde")
    cache.put(("huge", "pdf", 1), r(101))  # over a quarter of the budget: never cached
    assert cache.get(("huge", "pdf", 1)) is None
    assert cache.get(("a", "pdf", 2)) is None  # another sequence is another rendering
