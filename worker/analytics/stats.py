"""Descriptive and inferential statistics over one question's answers (numpy, scipy).

Figures always carry ``n`` (answered) and, where known, ``skipped``, so a reader can judge
how much evidence stands behind them. Intervals are 95 % unless stated otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

Z95 = 1.959963984540054
# Below this many observations per cell/group, tests are flagged as unreliable.
SMALL_SAMPLE = 5


def _f(x: float | np.floating[Any] | None) -> float | None:
    """A finite float for JSON, or None (NaN and inf have no JSON form)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t confidence interval of the mean; (None, None) with fewer than 2 values."""
    a = np.asarray(values, dtype=np.float64)
    n = a.size
    if n < 2:
        return None, None
    m = float(a.mean())
    se = float(a.std(ddof=1)) / math.sqrt(n)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * se
    return _f(m - half), _f(m + half)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (well-behaved near 0 and 1 and for small n)."""
    if n <= 0:
        return None, None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def numeric_summary(values: ArrayLike, *, skipped: int = 0, bins: int = 10) -> dict[str, Any]:
    """Mean, median, standard deviation, 95 % CI of the mean, range and a histogram.

    Args:
        values: The answers (NaNs are dropped and counted as skipped).
        skipped: Respondents who did not answer.
        bins: Histogram bins for continuous values.
    """
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    skipped += int(a.size - finite.size)
    n = int(finite.size)
    out: dict[str, Any] = {"n": n, "skipped": skipped}
    if n == 0:
        out.update(mean=None, median=None, std=None, ci95=None, min=None, max=None, histogram=[])
        return out
    lo, hi = mean_ci(finite)
    counts, edges = np.histogram(finite, bins=bins)
    out.update(
        mean=_f(finite.mean()),
        median=_f(np.median(finite)),
        std=_f(finite.std(ddof=1)) if n > 1 else None,
        ci95=None if lo is None else [lo, hi],
        min=_f(finite.min()),
        max=_f(finite.max()),
        histogram=[
            {"start": _f(edges[i]), "end": _f(edges[i + 1]), "count": int(c)}
            for i, c in enumerate(counts)
        ],
    )
    return out


def integer_distribution(values: ArrayLike, low: int, high: int) -> list[dict[str, Any]]:
    """Counts and percentages of each integer score from ``low`` to ``high`` (ratings, NPS)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)].astype(np.int64)
    n = a.size
    counts = np.bincount(np.clip(a - low, 0, high - low), minlength=high - low + 1) if n else None
    return [
        {
            "value": low + i,
            "count": int(counts[i]) if counts is not None else 0,
            "percent": (100.0 * int(counts[i]) / n) if counts is not None and n else 0.0,
        }
        for i in range(high - low + 1)
    ]


def choice_distribution(
    counts: Mapping[str, int], options: Sequence[str], *, answered: int, skipped: int = 0
) -> dict[str, Any]:
    """Distribution of a choice question: count, percentage and Wilson CI per option.

    Args:
        counts: Picks per option (for multiple choice, one respondent counts once per option).
        options: The question's options, in display order; unknown picks are appended.
        answered: Respondents who answered (the percentage base, also for multiple choice).
        skipped: Respondents who did not answer.
    """
    ordered = list(options) + sorted(k for k in counts if k not in set(options))
    rows = []
    for option in ordered:
        c = int(counts.get(option, 0))
        lo, hi = wilson_interval(c, answered)
        rows.append(
            {
                "option": option,
                "count": c,
                "percent": 100.0 * c / answered if answered else 0.0,
                "ci95": None if lo is None else [100.0 * lo, 100.0 * (hi or 0.0)],
            }
        )
    return {"n": answered, "skipped": skipped, "options": rows}


def nps(scores: ArrayLike) -> dict[str, Any]:
    """Net Promoter Score of 0-10 answers with a 95 % CI (normal approximation).

    The score is 100·(p_promoters - p_detractors). Its variance per respondent is
    p_pro + p_det - (p_pro - p_det)², the variance of a variable taking +1/0/-1.
    """
    a = np.asarray(scores, dtype=np.float64)
    a = a[np.isfinite(a)]
    n = int(a.size)
    promoters = int(np.count_nonzero(a >= 9))
    detractors = int(np.count_nonzero(a <= 6))
    passives = n - promoters - detractors
    if n == 0:
        return {
            "n": 0,
            "promoters": 0,
            "passives": 0,
            "detractors": 0,
            "score": None,
            "ci95": None,
            "small_sample": True,
        }
    pp, pd = promoters / n, detractors / n
    score = 100.0 * (pp - pd)
    var = pp + pd - (pp - pd) ** 2
    half = 100.0 * Z95 * math.sqrt(var / n)
    return {
        "n": n,
        "promoters": promoters,
        "passives": passives,
        "detractors": detractors,
        "promoters_percent": 100.0 * pp,
        "passives_percent": 100.0 * passives / n,
        "detractors_percent": 100.0 * pd,
        "score": score,
        "ci95": [max(-100.0, score - half), min(100.0, score + half)],
        "small_sample": n < 30,
    }


def csat(ratings: ArrayLike, *, satisfied_from: int = 4) -> dict[str, Any]:
    """Customer satisfaction of 1-5 ratings: the share of ``satisfied_from`` or more, Wilson CI."""
    a = np.asarray(ratings, dtype=np.float64)
    a = a[np.isfinite(a)]
    n = int(a.size)
    satisfied = int(np.count_nonzero(a >= satisfied_from))
    lo, hi = wilson_interval(satisfied, n)
    return {
        "n": n,
        "satisfied": satisfied,
        "score": 100.0 * satisfied / n if n else None,
        "ci95": None if lo is None else [100.0 * lo, 100.0 * (hi or 0.0)],
        "mean": _f(a.mean()) if n else None,
        "small_sample": n < 30,
    }


def completion_stats(completed: ArrayLike, durations_seconds: ArrayLike) -> dict[str, Any]:
    """Completion rate and completion times.

    Args:
        completed: One boolean per response.
        durations_seconds: Completion time of each completed response with both timestamps.
    """
    c = np.asarray(completed, dtype=bool)
    d = np.asarray(durations_seconds, dtype=np.float64)
    d = d[np.isfinite(d) & (d >= 0)]
    total = int(c.size)
    done = int(np.count_nonzero(c))
    lo, hi = wilson_interval(done, total)
    return {
        "responses": total,
        "completed": done,
        "completion_rate": done / total if total else None,
        "completion_rate_ci95": None if lo is None else [lo, hi],
        "completion_time_seconds": {
            "n": int(d.size),
            "mean": _f(d.mean()) if d.size else None,
            "median": _f(np.median(d)) if d.size else None,
        },
    }


def bucket_start(ts: datetime, interval: str) -> datetime:
    """The start (UTC midnight; Monday for weeks) of the day or week ``ts`` falls in."""
    day = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day


def trend(bucket_counts: Mapping[datetime, int], interval: str) -> list[dict[str, Any]]:
    """A gap-free response trend: one point per day/week between the first and last bucket."""
    if not bucket_counts:
        return []
    step = timedelta(weeks=1) if interval == "week" else timedelta(days=1)
    starts = {bucket_start(k, interval): 0 for k in bucket_counts}
    for k, v in bucket_counts.items():
        starts[bucket_start(k, interval)] += int(v)
    first, last = min(starts), max(starts)
    points, cur = [], first
    while cur <= last:
        points.append({"period_start": cur.isoformat(), "count": starts.get(cur, 0)})
        cur += step
    return points


def chi_square_test(table: ArrayLike) -> dict[str, Any]:
    """Pearson chi-square test of independence for a groups x categories count table.

    Returns the statistic, degrees of freedom, p-value, Cramér's V (effect size) and a
    small-sample warning when any expected count is below 5. Empty rows/columns are dropped.
    """
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0] if t.size else t
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        return {
            "test": "chi_square",
            "statistic": None,
            "dof": 0,
            "p_value": None,
            "effect_size": None,
            "effect_size_name": "cramers_v",
            "warning": "too few groups",
        }
    total = t.sum()
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / total
    stat = float(((t - expected) ** 2 / expected).sum())
    dof = (t.shape[0] - 1) * (t.shape[1] - 1)
    p = float(sps.chi2.sf(stat, dof))
    v = math.sqrt(stat / (total * (min(t.shape) - 1)))
    return {
        "test": "chi_square",
        "statistic": _f(stat),
        "dof": dof,
        "p_value": _f(p),
        "effect_size": _f(v),
        "effect_size_name": "cramers_v",
        "warning": "expected counts below 5" if (expected < SMALL_SAMPLE).any() else "",
    }


def welch_t_test(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Welch's t-test of two groups' means with Hedges' g as effect size."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return {
            "test": "welch_t",
            "statistic": None,
            "dof": None,
            "p_value": None,
            "effect_size": None,
            "effect_size_name": "hedges_g",
            "warning": "too few answers",
        }
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    se2x, se2y = vx / x.size, vy / y.size
    se = math.sqrt(se2x + se2y)
    diff = float(x.mean() - y.mean())
    if se == 0:
        stat, dof, p = None, None, (1.0 if diff == 0 else 0.0)
    else:
        stat = diff / se
        dof = (se2x + se2y) ** 2 / (se2x**2 / (x.size - 1) + se2y**2 / (y.size - 1))
        p = float(2 * sps.t.sf(abs(stat), dof))
    pooled = math.sqrt(((x.size - 1) * vx + (y.size - 1) * vy) / (x.size + y.size - 2))
    n = x.size + y.size
    g = diff / pooled * (1 - 3 / (4 * n - 9)) if pooled > 0 else None
    small = min(x.size, y.size) < 30
    return {
        "test": "welch_t",
        "statistic": _f(stat),
        "dof": _f(dof),
        "p_value": _f(p),
        "effect_size": _f(g),
        "effect_size_name": "hedges_g",
        "warning": "fewer than 30 answers in a group" if small else "",
    }


def kruskal_test(groups: Sequence[ArrayLike]) -> dict[str, Any]:
    """Kruskal-Wallis test for 3+ groups, with epsilon² as effect size."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    arrays = [g[np.isfinite(g)] for g in arrays]
    arrays = [g for g in arrays if g.size > 0]
    n = sum(g.size for g in arrays)
    if len(arrays) < 2 or n <= len(arrays):
        return {
            "test": "kruskal_wallis",
            "statistic": None,
            "p_value": None,
            "effect_size": None,
            "effect_size_name": "epsilon_squared",
            "warning": "too few groups",
        }
    pooled = np.concatenate(arrays)
    if np.all(pooled == pooled[0]):
        stat, p = 0.0, 1.0
    else:
        res = sps.kruskal(*arrays)
        stat, p = float(res.statistic), float(res.pvalue)
    return {
        "test": "kruskal_wallis",
        "statistic": _f(stat),
        "dof": len(arrays) - 1,
        "p_value": _f(p),
        "effect_size": _f(stat / ((n * n - 1) / (n + 1))),
        "effect_size_name": "epsilon_squared",
        "warning": "a group has fewer than 5 answers"
        if min(g.size for g in arrays) < SMALL_SAMPLE
        else "",
    }


def compare_numeric_groups(groups: Mapping[str, ArrayLike], alpha: float = 0.05) -> dict[str, Any]:
    """Per-group summaries plus the fitting test: Welch's t for 2 groups, Kruskal-Wallis beyond."""
    names = sorted(groups)
    summaries = {k: numeric_summary(groups[k], bins=5) for k in names}
    for s in summaries.values():
        s.pop("histogram", None)
    if len(names) == 2:
        test = welch_t_test(groups[names[0]], groups[names[1]])
    else:
        test = kruskal_test([groups[k] for k in names])
    p = test.get("p_value")
    test["significant"] = bool(p is not None and p < alpha)
    return {"groups": summaries, "test": test}


def compare_categorical_groups(
    counts: Mapping[str, Mapping[str, int]], categories: Sequence[str], alpha: float = 0.05
) -> dict[str, Any]:
    """A cross-tab (group x category counts and row percentages) with a chi-square test."""
    names = sorted(counts)
    cats = list(categories) + sorted({c for g in counts.values() for c in g} - set(categories))
    table = np.array([[counts[g].get(c, 0) for c in cats] for g in names], dtype=np.int64)
    rows = []
    for g, row in zip(names, table, strict=True):
        total = int(row.sum())
        rows.append(
            {
                "group": g,
                "n": total,
                "counts": {c: int(v) for c, v in zip(cats, row, strict=True)},
                "percent": {
                    c: (100.0 * int(v) / total if total else 0.0)
                    for c, v in zip(cats, row, strict=True)
                },
            }
        )
    test = chi_square_test(table) if table.size else chi_square_test(np.zeros((0, 0)))
    p = test.get("p_value")
    test["significant"] = bool(p is not None and p < alpha)
    return {"categories": cats, "crosstab": rows, "test": test}
