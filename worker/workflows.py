"""Report workflows: QuickReportWorkflow, FullReportWorkflow and BatchReportWorkflow.

Workflow code is deterministic and does no I/O: it only sequences activities (named in
:mod:`worker.models`) and passes ids and small summaries between them, so a report's
history has the same size for 100 and for 100,000 responses. The long steps (validate's
peer call, snapshot, statistics, the AI steps) are ordinary activities with heartbeats; the
short ones at the end (visualizations, compile, notify) run as local activities.

Failure handling: a non-retryable activity failure (or one that exhausted its retries)
ends the report FAILED through the ``fail_report`` activity, then fails the workflow with
the same reason. Cancellation ends the report CANCELLED through ``cancel_report``, run so
that a second cancellation request cannot interrupt it, then re-raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from surveymesh.workflow_contract import (
        AI_QUEUE,
        ALL_QUEUES,
        BATCH_WORKFLOW,
        FULL_WORKFLOW,
        QUICK_QUEUE,
        QUICK_WORKFLOW,
        BatchItem,
        BatchWorkflowInput,
        ReportWorkflowInput,
    )
    from worker import models
    from worker.models import (
        BatchResult,
        CancelInput,
        CompileResult,
        FailInput,
        NotifyInput,
        NotifyResult,
        ReportRef,
        ReportResult,
        SnapshotSummary,
        StageInput,
        StageSummary,
        ValidateResult,
    )

T = TypeVar("T")

# Transient failures are retried with capped backoff; a bounded number of attempts means a
# peer that stays down fails the report with a clear reason instead of hanging it forever.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
SHORT = timedelta(seconds=30)
LONG = timedelta(hours=2)
# Every activity heartbeats (worker.heartbeat.AutoHeartbeat beats for the quiet ones), so
# a SIGKILLed worker's attempt is retried elsewhere after this long, not after its
# start-to-close timeout.
HEARTBEAT = timedelta(seconds=10)

# Patch id of "the small steps run as local activities". Histories recorded before it (no
# marker) replay with the small steps as ordinary activities.
LOCAL_SMALL_STEPS = "small-steps-local"

SURVEY_ID = SearchAttributeKey.for_keyword("SurveyId")
ORG_ID = SearchAttributeKey.for_keyword("OrganizationId")
REPORT_ID = SearchAttributeKey.for_keyword("ReportId")


def sibling_queue(queue: str) -> str:
    """The deployment's name of ``queue``, derived from the queue this workflow runs on.

    Workflows cannot read settings, but every queue of a deployment carries the same
    prefix (``Settings.task_queue``), so the prefix is whatever precedes the known name.
    """
    own = workflow.info().task_queue
    for known in ALL_QUEUES:
        if own.endswith(known):
            return own[: len(own) - len(known)] + queue
    return queue


def _failure(err: BaseException) -> tuple[str, str]:
    """The (reason, message) a failed activity reports."""
    cause = err.cause if isinstance(err, ActivityError | ChildWorkflowError) else err
    if isinstance(cause, ApplicationError):
        return cause.type or "ACTIVITY_FAILED", cause.message
    if isinstance(cause, TimeoutError):
        return "ACTIVITY_TIMED_OUT", str(cause)
    return "ACTIVITY_FAILED", str(cause or err)


def _is_cancellation(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or (
        isinstance(err, ActivityError | ChildWorkflowError)
        and isinstance(err.cause, CancelledError)
    )


async def _uninterruptible(awaitable: Awaitable[T]) -> T:
    """Awaits ``awaitable`` to its end even if this workflow is cancelled (again) meanwhile."""
    task = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()


class _ReportPipeline:
    """The steps shared by the quick and the full report."""

    full = False

    def __init__(self) -> None:
        self._stage = "queued"

    async def _act(
        self,
        name: str,
        arg: Any,
        result_type: type[T] | None,
        *,
        start_to_close: timedelta = SHORT,
        heartbeat: timedelta | None = HEARTBEAT,
        queue: str | None = None,
    ) -> Any:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            task_queue=queue,
            start_to_close_timeout=start_to_close,
            heartbeat_timeout=heartbeat,
            retry_policy=RETRY,
        )

    async def _small(
        self, name: str, arg: Any, result_type: type[T], *, start_to_close: timedelta = SHORT
    ) -> T:
        """Runs a short step (visualizations, compile, notify) as a local activity.

        A local activity runs inside the workflow task that schedules it: no activity task
        round trip through the server, and the consecutive small steps at the end of a
        report share one workflow task. It has no heartbeat; a worker that dies while
        running it loses the workflow task, which the server retries (on another worker)
        after the workflow task timeout, and the step runs again (every step is
        idempotent).
        """
        if not workflow.patched(LOCAL_SMALL_STEPS):
            result: T = await self._act(name, arg, result_type, start_to_close=start_to_close)
            return result
        return await workflow.execute_local_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=start_to_close,
            retry_policy=RETRY,
        )

    async def _pipeline(self, ref: ReportRef) -> CompileResult:
        self._stage = "validate"
        await self._act(models.VALIDATE, ref, ValidateResult)
        quick = not self.full
        self._stage = "snapshot"
        await self._act(
            models.SNAPSHOT,
            StageInput(ref, 3, 50 if quick else 35),
            SnapshotSummary,
            start_to_close=LONG,
            heartbeat=HEARTBEAT,
        )
        self._stage = "statistics"
        await self._act(
            models.STATISTICS,
            StageInput(ref, 50 if quick else 35, 85 if quick else 55),
            StageSummary,
            start_to_close=LONG,
            heartbeat=HEARTBEAT,
        )
        if self.full:
            self._stage = "ai"
            ai_queue = sibling_queue(AI_QUEUE)
            tasks = [
                asyncio.ensure_future(
                    self._act(
                        name,
                        StageInput(ref, 55, 85),
                        StageSummary,
                        start_to_close=LONG,
                        heartbeat=HEARTBEAT,
                        queue=ai_queue,
                    )
                )
                for name in (models.SENTIMENT, models.THEMES)
            ]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                # One failed (or we were cancelled): stop the other instead of orphaning it.
                for t in tasks:
                    t.cancel()
                raise
        self._stage = "visualizations"
        await self._small(
            models.VISUALIZATIONS,
            StageInput(ref, 85, 95),
            StageSummary,
            start_to_close=timedelta(minutes=5),
        )
        self._stage = "compile"
        return await self._small(
            models.COMPILE, ref, CompileResult, start_to_close=timedelta(minutes=2)
        )

    async def _run(self, inp: ReportWorkflowInput) -> ReportResult:
        ref = ReportRef(
            report_id=inp.report_id,
            org_id=inp.org_id,
            survey_id=inp.survey_id,
            requested_by=inp.requested_by,
            kind=inp.kind,
            options=inp.options,
        )
        try:
            compiled = await self._pipeline(ref)
        except (ActivityError, asyncio.CancelledError) as err:
            if _is_cancellation(err):
                await _uninterruptible(
                    self._act(models.CANCEL, CancelInput(ref.report_id, self._stage), None)
                )
                raise
            reason, message = _failure(err)
            workflow.logger.warning(
                "report %s failed in %s: %s", ref.report_id, self._stage, reason
            )
            await self._act(
                models.FAIL, FailInput(ref.report_id, reason, message, self._stage), None
            )
            raise ApplicationError(message, type=reason, non_retryable=True) from err
        self._stage = "notify"
        try:
            await self._small(
                models.NOTIFY,
                NotifyInput(
                    report=ref,
                    state="completed",
                    component_count=compiled.component_count,
                    completed_at=compiled.completed_at,
                    idempotency_key=f"{workflow.info().workflow_id}/notify",
                ),
                NotifyResult,
            )
        except ActivityError as err:
            # The report is complete and readable; a lost notification must not undo that.
            workflow.logger.warning(
                "report %s: notification failed: %s", ref.report_id, _failure(err)
            )
        return ReportResult(
            report_id=ref.report_id,
            state="completed",
            response_count=compiled.response_count,
            component_count=compiled.component_count,
        )


@workflow.defn(name=QUICK_WORKFLOW)
class QuickReportWorkflow(_ReportPipeline):
    """validate → snapshot → statistics → visualizations → compile → notify."""

    full = False

    @workflow.run
    async def run(self, inp: ReportWorkflowInput) -> ReportResult:
        """Generates the report; fails with the report's error reason if it fails."""
        return await self._run(inp)


@workflow.defn(name=FULL_WORKFLOW)
class FullReportWorkflow(_ReportPipeline):
    """The quick steps plus sentiment and themes, in parallel on the AI queue."""

    full = True

    @workflow.run
    async def run(self, inp: ReportWorkflowInput) -> ReportResult:
        """Generates the report; fails with the report's error reason if it fails."""
        return await self._run(inp)


@workflow.defn(name=BATCH_WORKFLOW)
class BatchReportWorkflow:
    """Runs one report workflow per item as a child, at most ``window`` at a time.

    After starting ``continue_after`` children (100 by default) it waits for them and
    continues as new with ``next_index`` and the counts carried over, so its history stays
    bounded however many surveys the batch holds.
    """

    @workflow.run
    async def run(self, inp: BatchWorkflowInput) -> BatchResult:
        """Returns how many reports completed and failed."""
        window = max(1, inp.window)
        index, completed, failed = inp.next_index, inp.completed, inp.failed
        started, limit = 0, max(1, inp.continue_after)
        pending: set[asyncio.Task[bool]] = set()
        while True:
            while index < len(inp.items) and len(pending) < window and started < limit:
                pending.add(asyncio.ensure_future(self._child(inp, inp.items[index])))
                index += 1
                started += 1
            if not pending:
                break
            done, still = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending = set(still)
            for task in done:
                if task.result():
                    completed += 1
                else:
                    failed += 1
        if index < len(inp.items):
            workflow.continue_as_new(
                replace(inp, next_index=index, completed=completed, failed=failed)
            )
        return BatchResult(
            batch_id=inp.batch_id, total=len(inp.items), completed=completed, failed=failed
        )

    async def _child(self, inp: BatchWorkflowInput, item: BatchItem) -> bool:
        child = FULL_WORKFLOW if inp.kind == "full" else QUICK_WORKFLOW
        try:
            await workflow.execute_child_workflow(
                child,
                ReportWorkflowInput(
                    report_id=item.report_id,
                    org_id=inp.org_id,
                    survey_id=item.survey_id,
                    requested_by=inp.requested_by,
                    kind=inp.kind,
                    options=inp.options,
                ),
                id=item.workflow_id,
                task_queue=sibling_queue(QUICK_QUEUE),
                result_type=ReportResult,
                # A cancelled batch cancels its reports, which then end CANCELLED.
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SURVEY_ID, item.survey_id),
                        SearchAttributePair(ORG_ID, inp.org_id),
                        SearchAttributePair(REPORT_ID, item.report_id),
                    ]
                ),
            )
        except ChildWorkflowError as err:
            # A failed or individually cancelled report counts as failed; the batch goes on.
            workflow.logger.info(
                "batch %s: report %s failed: %s", inp.batch_id, item.report_id, _failure(err)
            )
            return False
        return True
