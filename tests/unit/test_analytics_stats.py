"""Statistics against independently computed values (numpy/scipy reference formulas)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats as sps

from worker.analytics import stats as st


def test_numeric_summary_matches_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(3.2, 1.1, size=400)
    s = st.numeric_summary(np.append(x, np.nan), skipped=7)
    assert s["n"] == 400
    assert s["skipped"] == 8  # the NaN counts as skipped
    assert s["mean"] == pytest.approx(x.mean())
    assert s["median"] == pytest.approx(np.median(x))
    assert s["std"] == pytest.approx(np.std(x, ddof=1))
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert s["ci95"] == pytest.approx([lo, hi])
    assert sum(h["count"] for h in s["histogram"]) == 400


def test_numeric_summary_empty_and_single() -> None:
    assert st.numeric_summary([], skipped=3) | {"histogram": []} == {
        "n": 0, "skipped": 3, "mean": None, "median": None, "std": None,
        "ci95": None, "min": None, "max": None, "histogram": [],
    }  # fmt: skip
    one = st.numeric_summary([4.0])
    assert one["mean"] == 4.0 and one["std"] is None and one["ci95"] is None


def test_wilson_interval_matches_statsmodels_formula() -> None:
    # Reference: Wilson (1927) computed directly.
    k, n, z = 37, 120, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert st.wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert st.wilson_interval(0, 0) == (None, None)
    lo, hi = st.wilson_interval(0, 10)
    assert lo == 0.0 and 0 < (hi or 0) < 0.35


def test_nps_score_groups_and_interval() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 11, size=1000)
    r = st.nps(scores)
    pro, det = np.mean(scores >= 9), np.mean(scores <= 6)
    assert r["promoters"] == int((scores >= 9).sum())
    assert r["detractors"] == int((scores <= 6).sum())
    assert r["passives"] == 1000 - r["promoters"] - r["detractors"]
    assert r["score"] == pytest.approx(100 * (pro - det))
    # Reference: standard error of the mean of the +1/0/-1 coding.
    coded = np.where(scores >= 9, 1.0, np.where(scores <= 6, -1.0, 0.0))
    se = 100 * coded.std(ddof=0) / math.sqrt(len(coded))
    assert r["ci95"] == pytest.approx(
        [r["score"] - 1.959964 * se, r["score"] + 1.959964 * se], rel=1e-5
    )
    assert r["small_sample"] is False
    assert st.nps([])["score"] is None


def test_csat_share_of_four_and_five() -> None:
    ratings = np.array([1, 2, 3, 4, 5, 5, 4, 4, 2, 5])
    r = st.csat(ratings)
    assert r["n"] == 10 and r["satisfied"] == 6
    assert r["score"] == pytest.approx(60.0)
    assert r["mean"] == pytest.approx(3.5)
    lo, hi = st.wilson_interval(6, 10)
    assert r["ci95"] == pytest.approx([100 * (lo or 0), 100 * (hi or 0)])


def test_integer_and_choice_distributions() -> None:
    d = st.integer_distribution([1, 1, 2, 5, 5, 5], 1, 5)
    assert [x["count"] for x in d] == [2, 1, 0, 0, 3]
    assert d[4]["percent"] == pytest.approx(50.0)
    c = st.choice_distribution({"b": 3, "a": 1, "zz": 1}, ["a", "b", "c"], answered=5, skipped=2)
    assert [o["option"] for o in c["options"]] == ["a", "b", "c", "zz"]
    assert [o["count"] for o in c["options"]] == [1, 3, 0, 1]
    assert c["options"][1]["percent"] == pytest.approx(60.0)
    assert c["n"] == 5 and c["skipped"] == 2


def test_completion_stats() -> None:
    r = st.completion_stats([True, True, False, True], [60.0, 120.0, np.nan, -1.0])
    assert r["responses"] == 4 and r["completed"] == 3
    assert r["completion_rate"] == pytest.approx(0.75)
    assert r["completion_time_seconds"] == {"n": 2, "mean": 90.0, "median": 90.0}


def test_trend_fills_gaps_and_weeks() -> None:
    d = lambda day, h=0: datetime(2024, 5, day, h, tzinfo=UTC)  # noqa: E731
    days = st.trend({d(1): 2, d(3, 5): 1, d(3, 1): 4}, "day")
    assert [(p["period_start"][:10], p["count"]) for p in days] == [
        ("2024-05-01", 2), ("2024-05-02", 0), ("2024-05-03", 5),
    ]  # fmt: skip
    weeks = st.trend({d(1): 1, d(6): 2, d(12): 3}, "week")  # Wed 1st, Mon 6th, Sun 12th
    assert [(p["period_start"][:10], p["count"]) for p in weeks] == [
        ("2024-04-29", 1), ("2024-05-06", 5),
    ]  # fmt: skip


def test_chi_square_matches_scipy_and_flags_real_difference() -> None:
    table = np.array([[90, 10], [50, 50]])
    r = st.chi_square_test(table)
    ref = sps.chi2_contingency(table, correction=False)
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert r["dof"] == 1
    assert r["effect_size"] == pytest.approx(math.sqrt(ref.statistic / table.sum()))
    same = st.compare_categorical_groups(
        {"eu": {"yes": 50, "no": 50}, "us": {"yes": 51, "no": 49}}, ["yes", "no"]
    )
    assert same["test"]["significant"] is False
    differs = st.compare_categorical_groups(
        {"eu": {"yes": 90, "no": 10}, "us": {"yes": 50, "no": 50}}, ["yes", "no"]
    )
    assert differs["test"]["significant"] is True
    assert differs["crosstab"][0]["percent"]["yes"] == pytest.approx(90.0)


def test_chi_square_small_sample_warning() -> None:
    r = st.chi_square_test([[3, 1], [1, 3]])
    assert r["warning"] == "expected counts below 5"


def test_welch_t_matches_scipy_and_significance() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(4.0, 1.0, 200), rng.normal(3.5, 1.5, 150)
    r = st.welch_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    pooled = math.sqrt((199 * a.var(ddof=1) + 149 * b.var(ddof=1)) / 348)
    assert r["effect_size"] == pytest.approx(
        (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * 350 - 9))
    )
    truly_different = st.compare_numeric_groups({"x": a, "y": b})
    assert truly_different["test"]["significant"] is True
    c, d = rng.normal(4.0, 1.0, 200), rng.normal(4.0, 1.0, 200)
    assert st.compare_numeric_groups({"x": c, "y": d})["test"]["significant"] is False


def test_kruskal_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    groups = [rng.normal(m, 1, 60) for m in (0.0, 0.1, 1.0)]
    r = st.kruskal_test(groups)
    ref = sps.kruskal(*groups)
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert r["effect_size"] == pytest.approx(ref.statistic / (180**2 - 1) * 181)
    assert st.compare_numeric_groups({"a": groups[0], "b": groups[1], "c": groups[2]})["test"][
        "significant"
    ]


def test_degenerate_inputs_do_not_raise() -> None:
    assert st.welch_t_test([1.0], [2.0, 3.0])["p_value"] is None
    assert st.welch_t_test([2.0, 2.0], [2.0, 2.0])["p_value"] == 1.0
    assert st.chi_square_test([[5, 5]])["p_value"] is None
    assert st.kruskal_test([[1.0, 1.0], [1.0, 1.0], [1.0]])["p_value"] == 1.0
