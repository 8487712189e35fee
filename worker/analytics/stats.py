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
from scipy import special
from scipy import stats as sps

Z95 = 1.959963984540054
# Below this many observations per cell/group, tests are flagged as unreliable.
SMALL_SAMPLE = 5
# Below this many answers per group, a comparison is flagged as a small sample.
SMALL_GROUP = 30


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
    half = float(special.stdtrit(n - 1, (1 + confidence) / 2)) * se
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
    return completion_from_counts(
        int(c.size),
        int(np.count_nonzero(c)),
        int(d.size),
        float(d.mean()) if d.size else None,
        float(np.median(d)) if d.size else None,
    )


def completion_from_counts(
    responses: int,
    completed: int,
    duration_n: int,
    duration_mean: float | None,
    duration_median: float | None,
) -> dict[str, Any]:
    """:func:`completion_stats` from figures aggregated elsewhere (e.g. exactly in SQL)."""
    lo, hi = wilson_interval(completed, responses)
    return {
        "responses": responses,
        "completed": completed,
        "completion_rate": completed / responses if responses else None,
        "completion_rate_ci95": None if lo is None else [lo, hi],
        "completion_time_seconds": {
            "n": duration_n,
            "mean": _f(duration_mean) if duration_n else None,
            "median": _f(duration_median) if duration_n else None,
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


# -- multiple comparisons ------------------------------------------------------------------


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate).

    NaN entries (tests that could not run) are ignored and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (controls the false discovery rate); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


CORRECTIONS = {"holm": holm, "benjamini_hochberg": benjamini_hochberg}


def adjust_tests(
    tests: Sequence[dict[str, Any]], *, method: str = "holm", alpha: float = 0.05
) -> None:
    """Adds ``p_adjusted``, ``correction`` and ``significant`` (on the adjusted p) in place.

    All ``tests`` form one family: a reader scanning every figure of a report makes that
    many comparisons, so significance is judged on the corrected p-value.
    """
    raw = [t.get("p_value") for t in tests]
    adjusted = CORRECTIONS[method]([np.nan if p is None else p for p in raw])
    for t, p_adj in zip(tests, adjusted, strict=True):
        t["p_adjusted"] = _f(p_adj)
        t["correction"] = method
        t["family_size"] = int(np.isfinite(adjusted).sum())
        t["alpha"] = alpha
        t["significant"] = bool(t["p_adjusted"] is not None and t["p_adjusted"] < alpha)


# -- tests ---------------------------------------------------------------------------------


def _no_test(name: str, effect: str, warning: str) -> dict[str, Any]:
    return {
        "test": name,
        "statistic": None,
        "dof": None,
        "p_value": None,
        "effect_size": None,
        "effect_size_name": effect,
        "warning": warning,
        "warnings": [warning],
    }


def _warn(test: dict[str, Any], *warnings: str) -> dict[str, Any]:
    found = [w for w in warnings if w]
    test["warnings"] = found
    test["warning"] = "; ".join(found)
    return test


def chi_square_test(table: ArrayLike) -> dict[str, Any]:
    """Pearson chi-square test of independence for a groups x categories count table.

    Returns the statistic, degrees of freedom, p-value, Cramér's V (effect size) and a
    small-sample warning when any expected count is below 5. Empty rows/columns are dropped.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim == 2 and t.size:
        t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        return _no_test("chi_square", "cramers_v", "too few groups or categories")
    total = t.sum()
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / total
    stat = float(((t - expected) ** 2 / expected).sum())
    dof = (t.shape[0] - 1) * (t.shape[1] - 1)
    p = float(special.chdtrc(dof, stat))
    v = math.sqrt(stat / (total * (min(t.shape) - 1)))
    small = float((expected < SMALL_SAMPLE).mean())
    return _warn(
        {
            "test": "chi_square",
            "statistic": _f(stat),
            "dof": dof,
            "p_value": _f(p),
            "effect_size": _f(v),
            "effect_size_name": "cramers_v",
            "min_expected": _f(expected.min()),
            "n": int(total),
        },
        # Cochran's rule: the chi-square approximation is doubtful when more than 20 % of
        # the expected counts are below 5; any at all is worth a note.
        "more than 20% of expected counts below 5: the p-value is approximate"
        if small > 0.2
        else "expected counts below 5"
        if small > 0
        else "",
    )


def cohens_d(a: ArrayLike, b: ArrayLike) -> float | None:
    """Cohen's d: the difference of means over the pooled standard deviation (ddof=1)."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return None
    pooled = math.sqrt(
        ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    )
    return _f((x.mean() - y.mean()) / pooled) if pooled > 0 else None


def _finite(a: ArrayLike) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    return x[np.isfinite(x)]


def _average_ranks(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of ``pooled`` (tied values share their average rank) and the size of
    every group of tied values, as floats (their cubes enter the tie corrections)."""
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    ties = counts.astype(np.float64)
    ends = np.cumsum(ties)
    return (ends - (ties - 1) / 2)[inverse], ties


def _small_groups(*sizes: int) -> str:
    return f"fewer than {SMALL_GROUP} answers in a group" if min(sizes) < SMALL_GROUP else ""


def welch_t_test(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Welch's t-test of two groups' means with Cohen's d as effect size (Hedges' g also given)."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return _no_test("welch_t", "cohens_d", "too few answers")
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    se2x, se2y = vx / x.size, vy / y.size
    se = math.sqrt(se2x + se2y)
    diff = float(x.mean() - y.mean())
    stat: float | None
    dof: float | None
    if se == 0:
        stat, dof, p = None, None, (1.0 if diff == 0 else 0.0)
    else:
        stat = diff / se
        dof = (se2x + se2y) ** 2 / (se2x**2 / (x.size - 1) + se2y**2 / (y.size - 1))
        p = float(2 * special.stdtr(dof, -abs(stat)))
    d = cohens_d(x, y)
    n = x.size + y.size
    half = float(special.stdtrit(dof, 0.975)) * se if dof else 0.0
    return _warn(
        {
            "test": "welch_t",
            "statistic": _f(stat),
            "dof": _f(dof),
            "p_value": _f(p),
            "effect_size": d,
            "effect_size_name": "cohens_d",
            "hedges_g": None if d is None else _f(d * (1 - 3 / (4 * n - 9))),
            "mean_difference": _f(diff),
            "mean_difference_ci95": [_f(diff - half), _f(diff + half)],
        },
        _small_groups(x.size, y.size),
    )


def mann_whitney_test(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Mann-Whitney U test (two-sided, tie-corrected) with the rank-biserial correlation.

    The rank-biserial correlation is ``2·U₁/(n₁·n₂) - 1``: +1 when every value of ``a``
    exceeds every value of ``b``, -1 for the reverse, 0 for complete overlap.
    """
    x, y = _finite(a), _finite(b)
    if x.size < 1 or y.size < 1 or x.size + y.size < 3:
        return _no_test("mann_whitney", "rank_biserial", "too few answers")
    pooled = np.concatenate([x, y])
    n1, n2 = x.size, y.size
    if np.all(pooled == pooled[0]):
        u1, p = n1 * n2 / 2.0, 1.0
    else:
        ranks, ties = _average_ranks(pooled)
        u1 = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2
        if (n1 > 8 and n2 > 8) or ties.max() > 1:
            # scipy's method="auto" takes the normal approximation here (tie-corrected,
            # with continuity correction); the same formula, without its per-call cost.
            n = n1 + n2
            tie_term = float((ties**3 - ties).sum())
            s = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
            z = (max(u1, n1 * n2 - u1) - n1 * n2 / 2 - 0.5) / s
            p = min(1.0, 2 * float(special.ndtr(-z)))
        else:
            # Small samples without ties: the exact distribution of U.
            p = float(sps.mannwhitneyu(x, y, alternative="two-sided", method="exact").pvalue)
    return _warn(
        {
            "test": "mann_whitney",
            "statistic": _f(u1),
            "dof": None,
            "p_value": _f(p),
            "effect_size": _f(2.0 * u1 / (x.size * y.size) - 1.0),
            "effect_size_name": "rank_biserial",
            "median_difference": _f(np.median(x) - np.median(y)),
        },
        _small_groups(x.size, y.size),
    )


def kruskal_test(groups: Sequence[ArrayLike]) -> dict[str, Any]:
    """Kruskal-Wallis test for 3+ groups, with epsilon² as effect size."""
    arrays = [a for a in (_finite(g) for g in groups) if a.size > 0]
    n = sum(g.size for g in arrays)
    if len(arrays) < 2 or n <= len(arrays):
        return _no_test("kruskal_wallis", "epsilon_squared", "too few groups")
    pooled = np.concatenate(arrays)
    if np.all(pooled == pooled[0]):
        stat, p = 0.0, 1.0
    else:
        # scipy.stats.kruskal's formula (tie-corrected H, chi-square p), without its
        # per-call argument handling, which cost more than the test on small groups.
        ranks, ties = _average_ranks(pooled)
        sizes = np.array([g.size for g in arrays], dtype=np.float64)
        starts = np.concatenate([[0], np.cumsum([g.size for g in arrays])[:-1]])
        rank_sums = np.add.reduceat(ranks, starts)
        h = 12.0 / (n * (n + 1)) * float((rank_sums**2 / sizes).sum()) - 3 * (n + 1)
        h /= 1 - float((ties**3 - ties).sum()) / (n**3 - n)
        stat, p = h, float(special.chdtrc(len(arrays) - 1, h))
    return _warn(
        {
            "test": "kruskal_wallis",
            "statistic": _f(stat),
            "dof": len(arrays) - 1,
            "p_value": _f(p),
            "effect_size": _f(stat / ((n * n - 1) / (n + 1))),
            "effect_size_name": "epsilon_squared",
        },
        "a group has fewer than 5 answers" if min(g.size for g in arrays) < SMALL_SAMPLE else "",
        _small_groups(*(g.size for g in arrays)),
    )


def nps_difference(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Difference of two groups' NPS with a 95 % CI (independent groups, normal approximation)."""
    x, y = nps(a), nps(b)
    if not x["n"] or not y["n"]:
        return {"difference": None, "ci95": None}
    var = 0.0
    for r in (x, y):
        pp, pd = r["promoters"] / r["n"], r["detractors"] / r["n"]
        var += (pp + pd - (pp - pd) ** 2) / r["n"]
    diff = x["score"] - y["score"]
    half = 100.0 * Z95 * math.sqrt(var)
    return {"difference": diff, "ci95": [diff - half, diff + half]}


# -- segments ------------------------------------------------------------------------------

NUMERIC_TEST = {"rating": "welch_t", "nps": "welch_t", "number": "mann_whitney"}


def split_by_code(values: ArrayLike, codes: ArrayLike, n_groups: int) -> list[np.ndarray]:
    """Splits ``values`` by integer group ``codes`` (0..n_groups-1; others dropped), vectorised."""
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(codes, dtype=np.int64)
    keep = (c >= 0) & (c < n_groups) & np.isfinite(v)
    v, c = v[keep], c[keep]
    order = np.argsort(c, kind="stable")
    bounds = np.searchsorted(c[order], np.arange(n_groups + 1))
    sorted_v = v[order]
    return [sorted_v[bounds[i] : bounds[i + 1]] for i in range(n_groups)]


def _two_sample(kind: str, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    test = (
        mann_whitney_test(a, b) if NUMERIC_TEST.get(kind) == "mann_whitney" else welch_t_test(a, b)
    )
    if kind == "nps":
        test["nps_difference"] = nps_difference(a, b)
    return test


def compare_numeric_groups(
    groups: Mapping[str, ArrayLike], alpha: float = 0.05, *, kind: str = "rating"
) -> dict[str, Any]:
    """Per-group summaries, an omnibus test and each group against the others.

    The omnibus ``test`` is, for 2 groups, Welch's t (ratings, NPS: their means are the
    reported figure) or Mann-Whitney U (numbers, often skewed); for 3+ groups Kruskal-Wallis.
    ``comparisons`` hold the same two-sample test for each group against all other
    respondents (or the one pair, for 2 groups). ``significant`` here is on the raw p-value;
    :func:`segment_component` replaces it with the multiple-comparison corrected verdict.
    """
    names = [k for k in groups]
    arrays = {k: _finite(groups[k]) for k in names}
    summaries: dict[str, Any] = {}
    for k in names:
        s = numeric_summary(arrays[k], bins=5)
        s.pop("histogram", None)
        if kind == "nps":
            whole = nps(arrays[k])
            s["nps"] = {key: whole[key] for key in ("score", "ci95", "n")}
        elif kind == "rating":
            whole = csat(arrays[k])
            s["csat"] = {key: whole[key] for key in ("score", "ci95", "n")}
        summaries[k] = s
    live = [k for k in names if arrays[k].size > 0]
    comparisons = []
    if len(live) == 2:
        test = _two_sample(kind, arrays[live[0]], arrays[live[1]])
        comparisons.append({"group": live[0], "versus": live[1], **test})
    else:
        test = kruskal_test([arrays[k] for k in live])
        if len(live) > 2:
            for k in live:
                rest = np.concatenate([arrays[o] for o in live if o != k])
                comparisons.append(
                    {"group": k, "versus": "rest", **_two_sample(kind, arrays[k], rest)}
                )
    p = test.get("p_value")
    test["significant"] = bool(p is not None and p < alpha)
    for c in comparisons:
        c["significant"] = bool(c.get("p_value") is not None and c["p_value"] < alpha)
    return {"groups": summaries, "test": test, "comparisons": comparisons}


def compare_categorical_groups(
    counts: Mapping[str, Mapping[str, int]], categories: Sequence[str], alpha: float = 0.05
) -> dict[str, Any]:
    """A cross-tab (group x category counts and row percentages) with a chi-square test,
    plus each group against the others (2 x categories chi-square, Cramér's V)."""
    names = list(counts)
    cats = list(categories) + sorted({c for g in counts.values() for c in g} - set(categories))
    table = np.array([[counts[g].get(c, 0) for c in cats] for g in names], dtype=np.int64)
    table = table.reshape(len(names), len(cats))
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
    test = chi_square_test(table)
    comparisons = []
    live = [i for i, g in enumerate(names) if table[i].sum() > 0]
    if len(live) > 2:
        for i in live:
            pair = np.vstack([table[i], table.sum(axis=0) - table[i]])
            comparisons.append({"group": names[i], "versus": "rest", **chi_square_test(pair)})
    elif len(live) == 2:
        comparisons.append(
            {"group": names[live[0]], "versus": names[live[1]], **chi_square_test(table[live])}
        )
    for t in (test, *comparisons):
        if t.get("n") is not None and t.get("n", 0) < SMALL_GROUP:
            t["warnings"].append(f"fewer than {SMALL_GROUP} answers")
            t["warning"] = "; ".join(t["warnings"])
    p = test.get("p_value")
    test["significant"] = bool(p is not None and p < alpha)
    for c in comparisons:
        c["significant"] = bool(c.get("p_value") is not None and c["p_value"] < alpha)
    return {"categories": cats, "crosstab": rows, "test": test, "comparisons": comparisons}


def compare_multiple_choice_groups(
    picks: Mapping[str, Mapping[str, int]],
    respondents: Mapping[str, int],
    options: Sequence[str],
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Multiple choice by group: per option, the share of each group's respondents picking it.

    A respondent may pick several options, so one chi-square over the picks would count
    people more than once. Each option is tested on its own (group x picked/not picked);
    the options of a question form a family (Holm), and the question's ``test`` is the
    global test "no option differs": the smallest Bonferroni-adjusted p-value.
    """
    names = list(respondents)
    opts = list(options) + sorted({o for g in picks.values() for o in g} - set(options))
    n = np.array([respondents[g] for g in names], dtype=np.int64)
    table = np.array([[picks.get(g, {}).get(o, 0) for o in opts] for g in names], dtype=np.int64)
    table = table.reshape(len(names), len(opts))
    rows = [
        {
            "group": g,
            "n": int(n[i]),
            "counts": {o: int(table[i, j]) for j, o in enumerate(opts)},
            "percent": {
                o: (100.0 * int(table[i, j]) / int(n[i]) if n[i] else 0.0)
                for j, o in enumerate(opts)
            },
        }
        for i, g in enumerate(names)
    ]
    per_option = []
    for j, o in enumerate(opts):
        t = chi_square_test(np.column_stack([table[:, j], n - table[:, j]]))
        per_option.append({"option": o, **t})
    adjust_tests(per_option, method="holm", alpha=alpha)
    ps = np.array([np.nan if t["p_value"] is None else t["p_value"] for t in per_option])
    finite = ps[np.isfinite(ps)]
    effects = [t["effect_size"] for t in per_option if t["effect_size"] is not None]
    if finite.size:
        test: dict[str, Any] = _warn(
            {
                "test": "chi_square_per_option",
                "statistic": None,
                "dof": None,
                "p_value": _f(min(1.0, float(finite.min()) * finite.size)),
                "effect_size": _f(max(effects)) if effects else None,
                "effect_size_name": "cramers_v_max",
            },
            *(f"{t['option']}: {t['warning']}" for t in per_option if t["warning"]),
        )
    else:
        test = _no_test("chi_square_per_option", "cramers_v_max", "too few groups")
    test["significant"] = bool(test["p_value"] is not None and test["p_value"] < alpha)
    return {
        "categories": opts,
        "base": "respondents",
        "crosstab": rows,
        "test": test,
        "option_tests": per_option,
    }


def segment_component(
    segments: list[dict[str, Any]], *, method: str = "holm", alpha: float = 0.05
) -> dict[str, Any]:
    """Applies the multiple-comparison correction across a whole segments component.

    Two families: the omnibus ``test`` of every (attribute, question), and every
    group-versus-rest ``comparisons`` entry. ``significant`` then means "corrected p <
    alpha"; the raw p-value stays in ``p_value``.
    """
    omnibus = [q["test"] for s in segments for q in s.get("questions", []) if "test" in q]
    pairwise = [
        c for s in segments for q in s.get("questions", []) for c in q.get("comparisons", [])
    ]
    adjust_tests(omnibus, method=method, alpha=alpha)
    adjust_tests(pairwise, method=method, alpha=alpha)
    return {
        "correction": method,
        "alpha": alpha,
        "families": {"omnibus": len(omnibus), "comparisons": len(pairwise)},
        "segments": segments,
    }
