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
    assert r["warning"].startswith("more than 20% of expected counts below 5")
    assert r["min_expected"] == pytest.approx(2.0)
    big = st.chi_square_test([[300, 100], [100, 300]])
    assert big["warning"] == "" and big["warnings"] == []


def test_welch_t_matches_scipy_and_significance() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(4.0, 1.0, 200), rng.normal(3.5, 1.5, 150)
    r = st.welch_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    pooled = math.sqrt((199 * a.var(ddof=1) + 149 * b.var(ddof=1)) / 348)
    assert r["effect_size_name"] == "cohens_d"
    assert r["effect_size"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert r["hedges_g"] == pytest.approx((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * 350 - 9)))
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert r["mean_difference_ci95"] == pytest.approx([ci.low, ci.high])
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


def test_mann_whitney_matches_scipy_with_rank_biserial() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.lognormal(1.0, 0.6, 300), rng.lognormal(1.3, 0.6, 250)
    r = st.mann_whitney_test(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    # Rank-biserial from its definition: P(a > b) - P(a < b) over all pairs.
    diff = np.sign(a[:, None] - b[None, :])
    assert r["effect_size"] == pytest.approx(diff.mean())
    assert r["effect_size"] < 0 and r["warning"] == ""
    ties = st.mann_whitney_test([3, 3, 4, 5, 5, 5], [1, 2, 3, 3])
    ref_t = sps.mannwhitneyu([3, 3, 4, 5, 5, 5], [1, 2, 3, 3], alternative="two-sided")
    assert ties["p_value"] == pytest.approx(ref_t.pvalue)
    assert "fewer than 30" in ties["warning"]


def _holm_reference(p: list[float]) -> list[float]:
    """Holm (1979) step-down, written the textbook way."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_holm_and_benjamini_hochberg_match_references() -> None:
    rng = np.random.default_rng(12)
    p = np.concatenate([rng.uniform(0, 0.01, 5), rng.uniform(0, 1, 25)])
    assert st.holm(p) == pytest.approx(_holm_reference(list(p)))
    assert st.benjamini_hochberg(p) == pytest.approx(sps.false_discovery_control(p, method="bh"))
    with_nan = st.holm([0.01, np.nan, 0.04])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1])
    assert with_nan[2] == pytest.approx(0.04)
    tests = [{"p_value": 0.01}, {"p_value": None}, {"p_value": 0.03}, {"p_value": 0.2}]
    st.adjust_tests(tests)
    assert [t["p_adjusted"] for t in tests] == pytest.approx([0.03, None, 0.06, 0.2])
    assert [t["significant"] for t in tests] == [True, False, False, False]
    assert tests[0]["correction"] == "holm" and tests[0]["family_size"] == 3


def test_split_by_code_is_a_vectorised_group_by() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
    codes = np.array([1, 0, 1, -1, 0, 2], dtype=np.int16)
    parts = st.split_by_code(values, codes, 3)
    assert [p.tolist() for p in parts] == [[2.0], [1.0, 3.0], [6.0]]


def test_cohens_d_reference() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0])
    sp = math.sqrt((3 * np.var(a, ddof=1) + 2 * np.var(b, ddof=1)) / 5)
    assert st.cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / sp)
    assert st.cohens_d([1.0], [2.0, 3.0]) is None


def test_segments_flag_the_true_difference_only() -> None:
    """Three plans, only one truly different; n large enough that the test has power."""
    rng = np.random.default_rng(13)
    groups = {
        "free": rng.normal(7.0, 1.8, 800).round().clip(0, 10),
        "pro": rng.normal(7.0, 1.8, 1200).round().clip(0, 10),
        "enterprise": rng.normal(8.2, 1.8, 500).round().clip(0, 10),
    }
    same = {
        "eu": rng.normal(7.0, 1.8, 900).round().clip(0, 10),
        "us": rng.normal(7.0, 1.8, 900).round().clip(0, 10),
    }
    differs = {**{"question_id": "q"}, **st.compare_numeric_groups(groups, kind="nps")}
    not_differs = {**{"question_id": "q2"}, **st.compare_numeric_groups(same, kind="nps")}
    comp = st.segment_component(
        [
            {"attribute": "plan", "questions": [differs]},
            {"attribute": "region", "questions": [not_differs]},
        ]
    )
    assert comp["correction"] == "holm" and comp["families"] == {"omnibus": 2, "comparisons": 4}
    assert differs["test"]["test"] == "kruskal_wallis" and differs["test"]["significant"] is True
    ref = sps.kruskal(*groups.values())
    assert differs["test"]["p_value"] == pytest.approx(ref.pvalue)
    # Holm over the two omnibus tests: the smaller p-value is doubled.
    assert differs["test"]["p_adjusted"] == pytest.approx(2 * ref.pvalue)
    by_group = {c["group"]: c for c in differs["comparisons"]}
    assert by_group["enterprise"]["significant"] is True
    assert by_group["enterprise"]["effect_size"] > 0.5  # Cohen's d of about 0.7
    rest = np.concatenate([groups["free"], groups["pro"]])
    welch = sps.ttest_ind(groups["enterprise"], rest, equal_var=False)
    assert by_group["enterprise"]["p_value"] == pytest.approx(welch.pvalue)
    nps_diff = by_group["enterprise"]["nps_difference"]
    expected = st.nps(groups["enterprise"])["score"] - st.nps(rest)["score"]
    assert nps_diff["difference"] == pytest.approx(expected)
    assert nps_diff["ci95"][0] > 0
    assert not_differs["test"]["test"] == "welch_t"
    assert not_differs["test"]["significant"] is False
    assert differs["groups"]["enterprise"]["nps"]["score"] == pytest.approx(
        st.nps(groups["enterprise"])["score"]
    )


def test_numbers_use_mann_whitney_and_ratings_report_csat() -> None:
    rng = np.random.default_rng(14)
    seats = {"a": rng.lognormal(2, 0.6, 200), "b": rng.lognormal(2.5, 0.6, 200)}
    r = st.compare_numeric_groups(seats, kind="number")
    assert r["test"]["test"] == "mann_whitney" and r["test"]["effect_size_name"] == "rank_biserial"
    assert r["comparisons"][0]["group"] == "a" and r["comparisons"][0]["versus"] == "b"
    ratings = {"x": np.array([5, 4, 4, 1]), "y": np.array([2, 2, 5])}
    rr = st.compare_numeric_groups(ratings, kind="rating")
    assert rr["groups"]["x"]["csat"]["score"] == pytest.approx(75.0)
    assert "fewer than 30" in rr["test"]["warning"]


def test_categorical_comparisons_and_multiple_choice_per_respondent() -> None:
    counts = {
        "a": {"yes": 90, "no": 10},
        "b": {"yes": 50, "no": 50},
        "c": {"yes": 52, "no": 48},
    }
    r = st.compare_categorical_groups(counts, ["yes", "no"])
    rest = np.array([[90, 10], [102, 98]])
    ref = sps.chi2_contingency(rest, correction=False)
    a_vs_rest = next(c for c in r["comparisons"] if c["group"] == "a")
    assert a_vs_rest["p_value"] == pytest.approx(ref.pvalue)
    assert a_vs_rest["effect_size"] == pytest.approx(math.sqrt(ref.statistic / rest.sum()))
    picks = {"a": {"api": 80, "sso": 30}, "b": {"api": 40, "sso": 31}}
    respondents = {"a": 100, "b": 100}
    m = st.compare_multiple_choice_groups(picks, respondents, ["api", "sso", "export"])
    assert m["base"] == "respondents"
    assert m["crosstab"][0]["percent"] == {"api": 80.0, "sso": 30.0, "export": 0.0}
    api = next(t for t in m["option_tests"] if t["option"] == "api")
    ref_api = sps.chi2_contingency(np.array([[80, 20], [40, 60]]), correction=False)
    assert api["p_value"] == pytest.approx(ref_api.pvalue)
    sso = next(t for t in m["option_tests"] if t["option"] == "sso")
    assert api["significant"] is True and sso["significant"] is False
    finite = [t["p_value"] for t in m["option_tests"] if t["p_value"] is not None]
    assert m["test"]["p_value"] == pytest.approx(min(1.0, min(finite) * len(finite)))


def test_completion_from_counts() -> None:
    r = st.completion_from_counts(10, 9, 8, 120.0, 100.0)
    assert r["completion_rate"] == pytest.approx(0.9)
    assert r["completion_rate_ci95"] == pytest.approx(list(st.wilson_interval(9, 10)))
    assert r["completion_time_seconds"] == {"n": 8, "mean": 120.0, "median": 100.0}
    assert st.completion_from_counts(0, 0, 0, None, None)["completion_rate"] is None


def test_parse_binary_copy() -> None:
    import struct

    from worker.analytics.compute import COPY_SIGNATURE, parse_binary_copy

    rows = [(1.5, 2), (-3.25, -1), (7.0, 0)]
    body = b"".join(struct.pack(">hid ih", 2, 8, v, 2, c) for v, c in rows)
    data = COPY_SIGNATURE + struct.pack(">ii", 0, 0) + body + b"\xff\xff"
    out = parse_binary_copy(data, [">f8", ">i2"])
    assert out["f0"].tolist() == [1.5, -3.25, 7.0] and out["f1"].tolist() == [2, -1, 0]
    assert (
        parse_binary_copy(COPY_SIGNATURE + struct.pack(">ii", 0, 0) + b"\xff\xff", [">f8"]).size
        == 0
    )
    with pytest.raises(ValueError):  # a NULL (length -1) breaks the fixed layout
        parse_binary_copy(
            COPY_SIGNATURE + struct.pack(">ii", 0, 0) + struct.pack(">hi", 1, -1) + b"\xff\xff",
            [">f8"],
        )
    with pytest.raises(ValueError):
        parse_binary_copy(b"not copy", [">f8"])


def test_rank_tests_equal_scipy_on_random_samples() -> None:
    """mann_whitney_test and kruskal_test compute scipy.stats' results themselves (scipy's
    per-call overhead dominated small segments); they must agree with it exactly."""
    rng = np.random.default_rng(20261125)
    checked = 0
    for _ in range(400):
        groups = []
        for _ in range(int(rng.integers(2, 6))):
            n = int(rng.integers(1, 40))
            kind = int(rng.integers(0, 3))
            if kind == 0:  # NPS-like: many ties
                groups.append(rng.integers(0, 11, n).astype(float))
            elif kind == 1:  # continuous: no ties, exact MWU for small groups
                groups.append(rng.normal(size=n))
            else:  # ratings
                groups.append(rng.integers(1, 6, n).astype(float))
        a, b = groups[0], groups[1]
        mw = st.mann_whitney_test(a, b)
        if a.size + b.size >= 3 and np.ptp(np.concatenate([a, b])) > 0:
            ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="auto")
            assert mw["statistic"] == pytest.approx(float(ref.statistic), rel=1e-9)
            assert mw["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)
            checked += 1
        kw = st.kruskal_test(groups)
        if np.ptp(np.concatenate(groups)) > 0:
            ref = sps.kruskal(*groups)
            assert kw["statistic"] == pytest.approx(float(ref.statistic), rel=1e-9)
            assert kw["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)
            checked += 1
    assert checked > 700
