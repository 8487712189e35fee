"""Replays the golden histories against today's workflow code.

A change to a workflow that would break executions already running (a step added,
removed or reordered without ``workflow.patched``) makes these replays fail, so it fails
the build instead of failing in production. The histories were recorded on the real stack
by ``record_histories.py``; the last test proves the check really catches a break.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from surveymesh.workflow_contract import QUICK_WORKFLOW, ReportWorkflowInput
from worker import models
from worker.workflows import BatchReportWorkflow, FullReportWorkflow, QuickReportWorkflow

HISTORIES = Path(__file__).parent / "histories"
WORKFLOWS = [QuickReportWorkflow, FullReportWorkflow, BatchReportWorkflow]


def _histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_every_workflow_type_has_a_golden_history() -> None:
    names = {p.stem.split("_v")[0] for p in _histories()}
    assert names >= {"quick_report", "full_report", "batch_report"}


@pytest.mark.parametrize("path", _histories(), ids=lambda p: p.stem)
async def test_golden_history_replays(path: Path) -> None:
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(_load(path))
    assert result.replay_failure is None


@workflow.defn(name=QUICK_WORKFLOW)
class _ReorderedQuickWorkflow:
    """A quick report that snapshots before validating: incompatible with history."""

    @workflow.run
    async def run(self, inp: ReportWorkflowInput) -> None:
        await workflow.execute_activity(
            models.SNAPSHOT, inp, start_to_close_timeout=timedelta(seconds=30)
        )


async def test_an_incompatible_change_is_caught() -> None:
    replayer = Replayer(workflows=[_ReorderedQuickWorkflow])
    result = await replayer.replay_workflow(
        _load(HISTORIES / "quick_report.json"), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
