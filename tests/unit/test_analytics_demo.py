"""The demo report shows the demo data's planted effects as significant, and only them."""

from __future__ import annotations

from typing import Any

from bench.report_components import demo_components


def _q(components: dict[str, Any], attribute: str, qid: str) -> dict[str, Any]:
    seg = next(s for s in components["segments"]["segments"] if s["attribute"] == attribute)
    return next(q for q in seg["questions"] if q["question_id"] == qid)


def test_demo_segments_flag_loyal_enterprise_and_slow_apac_support() -> None:
    c = demo_components(3000)
    assert c["segments"]["correction"] == "holm"
    recommend = _q(c, "plan", "recommend")
    assert recommend["test"]["significant"] is True
    enterprise = next(x for x in recommend["comparisons"] if x["group"] == "enterprise")
    assert enterprise["significant"] and enterprise["effect_size"] > 0.5  # Cohen's d
    assert enterprise["nps_difference"]["ci95"][0] > 0
    support = _q(c, "region", "support_rating")
    apac = next(x for x in support["comparisons"] if x["group"] == "APAC")
    assert support["test"]["significant"] and apac["significant"] and apac["effect_size"] < -1
    # Generated independent of region: no significant regional difference in loyalty.
    assert _q(c, "region", "recommend")["test"]["significant"] is False
    assert _q(c, "plan", "support_rating")["test"]["significant"] is False
