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
from temporalio.api.enums.v1 import EventType
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


def test_the_short_steps_run_as_local_activities() -> None:
    # This history replays (above) against today's code, so today's code schedules only
    # the long steps as activities and runs the short ones inside its workflow tasks.
    history = _load(HISTORIES / "quick_report_v2.json")
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert scheduled == [models.VALIDATE, models.SNAPSHOT, models.STATISTICS]
    assert markers.count("core_local_activity") == 3  # visualizations, compile, notify


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
