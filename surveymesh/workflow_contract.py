"""The contract between ReportingService (which starts workflows) and the worker (which runs them).

Reporting starts workflows by type name with these inputs, so it never imports worker
code. Inputs hold ids and small options only: response and component data never travel
through Temporal (the claim-check rule), so history size does not grow with the data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

QUICK_QUEUE = "reporting-quick"
AI_QUEUE = "reporting-ai"
BATCH_QUEUE = "reporting-batch"
ALL_QUEUES = (QUICK_QUEUE, AI_QUEUE, BATCH_QUEUE)

QUICK_WORKFLOW = "QuickReportWorkflow"
FULL_WORKFLOW = "FullReportWorkflow"
BATCH_WORKFLOW = "BatchReportWorkflow"

# Custom search attributes (Keyword) that make report workflows findable in the Temporal UI.
SEARCH_ATTRIBUTES = {"SurveyId": "Keyword", "OrganizationId": "Keyword", "ReportId": "Keyword"}


@dataclass
class ReportOptionsInput:
    """Report options as the workflow sees them (mirror of ``ReportOptions`` in the proto)."""

    segment_by: list[str] = field(default_factory=list)
    question_ids: list[str] = field(default_factory=list)
    include_incomplete: bool = False
    notify_email: str = ""
    trend_interval: str = "day"


@dataclass
class ReportWorkflowInput:
    """Input of QuickReportWorkflow and FullReportWorkflow."""

    report_id: str
    org_id: str
    survey_id: str
    requested_by: str
    kind: str  # "quick" | "full"
    options: ReportOptionsInput = field(default_factory=ReportOptionsInput)


@dataclass
class BatchItem:
    """One report of a batch: its pre-created report row and survey."""

    report_id: str
    survey_id: str
    workflow_id: str


@dataclass
class BatchWorkflowInput:
    """Input of BatchReportWorkflow. ``items`` are started as child workflows, ``window`` at a time.

    For very large batches the workflow continues as new with ``next_index`` advanced, so its
    history stays bounded.
    """

    batch_id: str
    org_id: str
    requested_by: str
    kind: str
    items: list[BatchItem]
    options: ReportOptionsInput = field(default_factory=ReportOptionsInput)
    window: int = 10
    next_index: int = 0
    completed: int = 0
    failed: int = 0
    # Children started per run before continuing as new (bounds the batch's history).
    continue_after: int = 100


def _opaque(request_id: str) -> str:
    # Request ids are free text chosen by clients; workflow ids are stored and shown by
    # Temporal unencrypted, so only a digest of them goes in.
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


def report_workflow_id(org_id: str, request_id: str) -> str:
    """Workflow id derived from the org and the client's request id (idempotent starts).

    Only opaque ids go into workflow ids, never names or data.
    """
    return f"report/{org_id}/{_opaque(request_id)}"


def batch_workflow_id(org_id: str, request_id: str) -> str:
    """Workflow id of a batch, derived like :func:`report_workflow_id`."""
    return f"batch/{org_id}/{_opaque(request_id)}"
