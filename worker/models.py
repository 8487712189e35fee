"""Inputs and results of the worker's activities and workflow results.

Only ids, options and small summaries live here (the claim-check rule): nothing whose size
grows with the number of responses ever passes through Temporal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from surveymesh.workflow_contract import ReportOptionsInput


@dataclass
class ReportRef:
    """Which report an activity works on, for whom."""

    report_id: str
    org_id: str
    survey_id: str
    requested_by: str
    kind: str = "quick"
    options: ReportOptionsInput = field(default_factory=ReportOptionsInput)


@dataclass
class StageInput:
    """Input of a pipeline stage: the report and the overall progress span of the stage."""

    report: ReportRef
    progress_from: int
    progress_to: int


@dataclass
class ValidateResult:
    """What validation learned about the survey."""

    survey_title: str
    question_count: int
    response_count: int


@dataclass
class SnapshotSummary:
    """Counts of a finished snapshot."""

    responses: int
    answers: int
    snapshot_watermark: int


@dataclass
class StageSummary:
    """The components a stage stored (types only)."""

    components: list[str] = field(default_factory=list)


@dataclass
class CompileResult:
    """What the terminal COMPLETED event recorded."""

    component_count: int
    response_count: int
    completed_at: str


@dataclass
class NotifyInput:
    """The notification about a finished report; ``idempotency_key`` comes from the workflow."""

    report: ReportRef
    state: str
    component_count: int
    completed_at: str
    idempotency_key: str


@dataclass
class NotifyResult:
    """The notification sent (or found, for a retry)."""

    notification_id: str
    duplicate: bool


@dataclass
class FailInput:
    """Why and where a report failed."""

    report_id: str
    reason: str
    message: str
    stage: str


@dataclass
class CancelInput:
    """A report whose workflow was cancelled."""

    report_id: str
    stage: str
    reason: str = "the report was cancelled"


@dataclass
class ReportResult:
    """The result of a report workflow."""

    report_id: str
    state: str  # "completed" | "failed"
    response_count: int = 0
    component_count: int = 0
    error_reason: str = ""


@dataclass
class BatchResult:
    """The result of a batch workflow."""

    batch_id: str
    total: int
    completed: int
    failed: int


# Activity type names. Workflows refer to activities by these names (with explicit result
# types), so workflow code never imports the activity implementations and their heavy
# dependencies into the sandbox.
VALIDATE = "report.validate"
SNAPSHOT = "report.snapshot"
STATISTICS = "report.statistics"
SENTIMENT = "report.sentiment"
THEMES = "report.themes"
VISUALIZATIONS = "report.visualizations"
COMPILE = "report.compile"
NOTIFY = "report.notify"
FAIL = "report.fail"
CANCEL = "report.cancel"
