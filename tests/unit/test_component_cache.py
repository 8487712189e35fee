"""GetReport's in-memory component bytes: used only while the row still matches, bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reporting_svc.component_cache import ComponentCache

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(kind: str, size: int, created: datetime = T0) -> dict[str, object]:
    return {"component_type": kind, "size_bytes": size, "component_create_time": created}


def test_bytes_are_served_only_while_type_size_and_creation_time_match() -> None:
    cache = ComponentCache(1000)
    cache.put("r1", _row("stats", 3), b"abc")
    assert "r1" in cache and "r2" not in cache
    assert cache.get("r1", [_row("stats", 3), _row("trend", 5)]) == {"stats": b"abc"}
    # A report deleted and made anew under the same id has new rows: nothing matches.
    assert cache.get("r1", [_row("stats", 3, T0 + timedelta(microseconds=1))]) == {}
    assert cache.get("r1", [_row("stats", 4)]) == {}
    assert cache.get("r2", [_row("stats", 3)]) == {}


def test_least_recently_used_reports_go_first_and_the_total_stays_bounded() -> None:
    cache = ComponentCache(200)
    cache.put("a", _row("x", 40), b"a" * 40)
    cache.put("b", _row("x", 20), b"b" * 20)
    cache.get("a", [_row("x", 40)])  # a is now the most recent
    for kind in "xyz":
        cache.put("c", _row(kind, 50), b"c" * 50)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.size_bytes == 190
    cache.put("d", _row("x", 51), b"d" * 51)  # over a quarter of the budget: not kept
    assert "d" not in cache and cache.size_bytes == 190
