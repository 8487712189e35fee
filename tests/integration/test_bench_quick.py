"""``python -m bench --quick`` runs end to end and writes well-formed results.

Sanity only: every figure is a finite positive number beside a finite positive baseline
measured in the same run. Speed targets are the suite's business (bench/results), never
a test's: whether a target is met is not asserted here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
FIGURES = {
    "history_bytes",
    "e2e_1k",
    "e2e_big",
    "import_rows_per_s",
    "get_report_qps",
    "get_report_qps_basic",
    "watch_latency_p99",
    "component_json",
    "reports_per_minute",
    "worker_scaling",
    "worker_memory",
}


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_suite_writes_sane_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "TEMPORAL_ADDRESS"}}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["mode"] == "quick"
    figures = {f["key"]: f for f in results["figures"]}
    assert FIGURES <= set(figures), sorted(FIGURES - set(figures))
    for key, f in figures.items():
        assert _positive(f["value"]), (key, f["value"])
        assert _positive(f["baseline"]), (key, f["baseline"])
        assert _positive(f["ratio"]), (key, f["ratio"])
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=1e-3, abs=1e-4), key
        assert isinstance(f["met"], bool), key
        assert f["unit"] and f["baseline_name"] and f["target"], key

    table = (tmp_path / "latest.md").read_text()
    assert "| figure | value | baseline | ratio | target | met? |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(figures) + 1  # the header and one row per figure
    assert results["markdown"] in table
