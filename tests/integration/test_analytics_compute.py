"""The statistics components read from a real snapshot in PostgreSQL, checked against
figures computed independently (plain SELECTs, numpy and scipy) on generated data with
known effects: the truly different segments are flagged significant, the others are not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import pytest
from scipy import stats as sps

from bench.analytics_data import create_report, generate_snapshot, planted_questions
from reporting_svc import store
from surveymesh.db import open_database
from surveymesh.workflow_contract import ReportOptionsInput
from worker.analytics import compute

pytestmark = pytest.mark.integration
N = 6000


@dataclass
class Snapshot:
    pool: asyncpg.Pool
    report_id: str
    survey: dict[str, Any]
    components: dict[str, Any]


@pytest.fixture(scope="module")
async def snap(new_database: Callable[[str], Awaitable[str]]) -> AsyncIterator[Snapshot]:
    pool = await open_database(
        await new_database("analytics"), schema=store.SCHEMA, migrations=store.MIGRATIONS
    )
    async with pool.acquire() as conn:
        report_id = await create_report(conn)
        survey = await generate_snapshot(conn, report_id, N, planted_questions())
        components = await compute.statistics_components(
            conn, report_id, survey, ReportOptionsInput(include_incomplete=True)
        )
    yield Snapshot(pool, report_id, survey, components)
    await pool.close()


async def _numbers(s: Snapshot, qid: str, attribute: str | None = None) -> dict[str, np.ndarray]:
    rows = await s.pool.fetch(
        "SELECT a.number, r.attributes->>$3 AS g FROM snapshot_answers a"
        " JOIN snapshot_responses r USING (report_id, response_id)"
        " WHERE a.report_id = $1 AND a.question_id = $2 AND a.number IS NOT NULL",
        s.report_id,
        qid,
        attribute or "plan",
    )
    out: dict[str, list[float]] = {"": []}
    for r in rows:
        out[""].append(r["number"])
        out.setdefault(r["g"], []).append(r["number"])
    return {k: np.array(v) for k, v in out.items()}


def _question(s: Snapshot, qid: str) -> dict[str, Any]:
    return next(q for q in s.components["question_stats"]["questions"] if q["question_id"] == qid)


def _segment(s: Snapshot, attribute: str, qid: str) -> dict[str, Any]:
    seg = next(x for x in s.components["segments"]["segments"] if x["attribute"] == attribute)
    return next(q for q in seg["questions"] if q["question_id"] == qid)


async def test_basic_stats_match_sql_free_reference(snap: Snapshot) -> None:
    rows = await snap.pool.fetch(
        "SELECT completed, start_time, complete_time FROM snapshot_responses WHERE report_id = $1",
        snap.report_id,
    )
    completed = np.array([r["completed"] for r in rows])
    durations = np.array(
        [(r["complete_time"] - r["start_time"]).total_seconds() for r in rows if r["completed"]]
    )
    b = snap.components["basic_stats"]
    assert b["responses"] == N and b["completed"] == int(completed.sum())
    assert b["completion_rate"] == pytest.approx(completed.mean())
    assert b["completion_time_seconds"]["mean"] == pytest.approx(durations.mean())
    assert b["completion_time_seconds"]["median"] == pytest.approx(np.median(durations))
    assert sum(p["count"] for p in b["trend"]) == N
    assert b["trend_interval"] == "day" and len(b["trend"]) in (28, 29)


async def test_numeric_question_figures(snap: Snapshot) -> None:
    for qid in ("recommend", "support", "seats"):
        x = (await _numbers(snap, qid))[""]
        q = _question(snap, qid)
        s = q["summary"]
        assert q["n"] == x.size and q["skipped"] == N - x.size
        assert s["mean"] == pytest.approx(x.mean())
        assert s["median"] == pytest.approx(np.median(x))
        assert s["std"] == pytest.approx(x.std(ddof=1))
        lo, hi = sps.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sps.sem(x))
        assert s["ci95"] == pytest.approx([lo, hi])
    x = (await _numbers(snap, "recommend"))[""]
    nps = snap.components["nps"]["questions"][0]
    coded = np.where(x >= 9, 1.0, np.where(x <= 6, -1.0, 0.0))
    assert nps["score"] == pytest.approx(100 * coded.mean())
    half = 100 * 1.959964 * coded.std() / np.sqrt(x.size)
    assert nps["ci95"] == pytest.approx([100 * coded.mean() - half, 100 * coded.mean() + half])
    assert nps["skipped"] == N - x.size
    ratings = (await _numbers(snap, "support"))[""]
    csat = next(c for c in snap.components["csat"]["questions"] if c["question_id"] == "support")
    assert csat["score"] == pytest.approx(100 * np.mean(ratings >= 4))


async def test_choice_figures(snap: Snapshot) -> None:
    rows = await snap.pool.fetch(
        "SELECT text, count(*) AS c FROM snapshot_answers WHERE report_id = $1"
        " AND question_id = 'channel' GROUP BY text",
        snap.report_id,
    )
    q = _question(snap, "channel")
    assert {o["option"]: o["count"] for o in q["options"]} == {r["text"]: r["c"] for r in rows}
    assert q["n"] + q["skipped"] == N
    picks = await snap.pool.fetch(
        "SELECT choices FROM snapshot_answers WHERE report_id = $1 AND question_id = 'features'",
        snap.report_id,
    )
    m = _question(snap, "features")
    assert m["n"] == len(picks) and m["base"] == "respondents"
    for o in m["options"]:
        share = np.mean([o["option"] in r["choices"] for r in picks])
        assert o["percent"] == pytest.approx(100 * share)


async def test_segments_find_the_planted_effects_and_only_them(snap: Snapshot) -> None:
    seg = snap.components["segments"]
    # Default segments: attributes with 2-12 values (not cohort: 40, not source: 1).
    assert [s["attribute"] for s in seg["segments"]] == ["plan", "region"]
    assert all(s["default"] for s in seg["segments"]) and seg["correction"] == "holm"
    planted = {("plan", "recommend"), ("plan", "seats"), ("plan", "fit"), ("region", "support")}
    for s in seg["segments"]:
        for q in s["questions"]:
            key = (s["attribute"], q["question_id"])
            assert q["test"]["significant"] is (key in planted), (key, q["test"])
    # The omnibus and pairwise figures against scipy on the raw rows.
    by_plan = await _numbers(snap, "recommend", "plan")
    rec = _segment(snap, "plan", "recommend")
    ref = sps.kruskal(*(by_plan[g] for g in ("pro", "free", "enterprise")))
    assert rec["test"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    ent = next(c for c in rec["comparisons"] if c["group"] == "enterprise")
    rest = np.concatenate([by_plan["free"], by_plan["pro"]])
    welch = sps.ttest_ind(by_plan["enterprise"], rest, equal_var=False)
    assert ent["p_value"] == pytest.approx(welch.pvalue, rel=1e-6) and ent["significant"]
    assert rec["groups"]["enterprise"]["mean"] == pytest.approx(by_plan["enterprise"].mean())
    seats = _segment(snap, "plan", "seats")
    by_seats = await _numbers(snap, "seats", "plan")
    free = next(c for c in seats["comparisons"] if c["group"] == "free")
    mw = sps.mannwhitneyu(
        by_seats["free"], np.concatenate([by_seats["pro"], by_seats["enterprise"]])
    )
    assert free["test"] == "mann_whitney" and free["p_value"] == pytest.approx(mw.pvalue, rel=1e-6)
    support = _segment(snap, "region", "support")
    apac = next(c for c in support["comparisons"] if c["group"] == "APAC")
    assert apac["significant"] and apac["effect_size"] < -0.5
    # Each other region is compared with a "rest" that contains APAC, so it looks a little
    # better than the rest; APAC's own difference is by far the largest.
    others = [abs(c["effect_size"]) for c in support["comparisons"] if c["group"] != "APAC"]
    assert abs(apac["effect_size"]) > 2.5 * max(others)
    fit = _segment(snap, "plan", "fit")
    rows = await snap.pool.fetch(
        "SELECT r.attributes->>'plan' AS g, a.text AS c, count(*) AS n FROM snapshot_answers a"
        " JOIN snapshot_responses r USING (report_id, response_id)"
        " WHERE a.report_id = $1 AND a.question_id = 'fit' GROUP BY 1, 2",
        snap.report_id,
    )
    groups, cats = sorted({r["g"] for r in rows}), ["great", "ok", "poor"]
    table = np.zeros((3, 3))
    for r in rows:
        table[groups.index(r["g"]), cats.index(r["c"])] = r["n"]
    chi = sps.chi2_contingency(table, correction=False)
    assert fit["test"]["p_value"] == pytest.approx(chi.pvalue, rel=1e-6)
    assert fit["test"]["effect_size"] == pytest.approx(np.sqrt(chi.statistic / table.sum() / 2))


async def test_requested_segments_and_join_free_index_agree(snap: Snapshot) -> None:
    async with snap.pool.acquire() as conn:
        segs = await compute.choose_segments(conn, snap.report_id, ["region", "nope"], N)
        assert [s.attribute for s in segs] == ["region", "nope"]
        assert segs[1].groups == [] and segs[1].missing == N
        index = await compute.response_index(conn, snap.report_id, segs[:1])
        assert index is not None
        joined = await compute.read_numeric(conn, snap.report_id, "support", segs[:1])
        indexed = await compute.read_numeric_indexed(conn, snap.report_id, "support", index)
        # Same multiset of (value, group) pairs, whichever way the codes were found.
        a = sorted(zip(joined.values.tolist(), joined.codes[:, 0].tolist(), strict=True))
        b = sorted(zip(indexed.values.tolist(), indexed.codes[:, 0].tolist(), strict=True))
        assert a == b
        comps = await compute.statistics_components(
            conn,
            snap.report_id,
            snap.survey,
            ReportOptionsInput(segment_by=["region"], question_ids=["fit"], trend_interval="week"),
        )
    assert [q["question_id"] for q in comps["question_stats"]["questions"]] == ["fit"]
    assert comps["basic_stats"]["trend_interval"] == "week"
    assert comps["basic_stats"]["completion_rate_basis"] == "survey"
    (region,) = comps["segments"]["segments"]
    assert region["attribute"] == "region" and region["default"] is False
    assert region["questions"][0]["test"]["significant"] is False
