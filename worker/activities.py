"""The report pipeline's activities: all of its I/O (Delivery, Notification, reporting DB).

Activities take and return ids and small summaries only (the claim-check rule): responses
are copied from DeliveryService into the reporting DB by :meth:`ReportActivities.snapshot`
and every later step reads them there, so Temporal history never grows with the data.

Every activity is idempotent. Components are keyed by ``(report_id, component_type)`` and
stored with their events in one transaction; events carry dedupe keys that are stable
across retries; the snapshot resumes after its last committed batch; the notification
carries an idempotency key derived from the workflow id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import grpc
import numpy as np
import orjson
from temporalio import activity
from temporalio.exceptions import ApplicationError

from reporting_svc import store
from reporting_svc.store import Event
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.notification.v1 import notification_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2 as nspb
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.reporting.v1 import report_pb2
from worker import models
from worker.analytics import charts
from worker.analytics import stats as st
from worker.analytics.sentiment import (
    SentimentAccumulator,
    SentimentAnalyzer,
    VaderAnalyzer,
    overall_label,
)
from worker.analytics.themes import TfidfNmfExtractor, ThemeExtractor, themes_component
from worker.models import (
    CancelInput,
    CompileResult,
    FailInput,
    NotifyInput,
    NotifyResult,
    ReportRef,
    SnapshotSummary,
    StageInput,
    StageSummary,
    ValidateResult,
)
from worker.peers import ServiceTokens, translate_rpc_error

log = logging.getLogger(__name__)

E = report_pb2.ReportEventType
S = report_pb2.ReportState
T = TypeVar("T")

SNAPSHOT_BATCH = 2000  # responses per StreamResponses message (Delivery allows 1..5000)
STREAM_TIMEOUT = 3600.0  # a whole snapshot stream; liveness is watched by heartbeats
UNARY_TIMEOUT = 15.0
TEXT_CHUNK = 2000  # free-text answers scored per chunk
MAX_THEME_DOCUMENTS = 20_000  # themes are found on a deterministic sample of this size
MAX_SEGMENT_GROUPS = 20
STAT_COMPONENTS = ("basic_stats", "question_stats", "nps", "csat", "segments")
NOTIFY_KEY_MAX = 200


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _question_type(value: survey_pb2.QuestionType.ValueType) -> str:
    return survey_pb2.QuestionType.Name(value).removeprefix("QUESTION_TYPE_").lower()


async def _binary_jsonb(conn: asyncpg.Connection) -> None:
    """Gives ``conn`` a binary jsonb codec, which COPY needs (the pool's is text-only).

    Values still travel as Python objects, so other users of the pooled connection see
    no difference.
    """
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: b"\x01" + orjson.dumps(v),  # jsonb binary format: version 1 + text
        decoder=lambda b: orjson.loads(b[1:]),
        format="binary",
    )


def _report_missing(report_id: str) -> ApplicationError:
    return ApplicationError(
        f"report {report_id} does not exist in the reporting database",
        type="REPORT_NOT_FOUND",
        non_retryable=True,
    )


class ReportActivities:
    """The activities of the report workflows, sharing one pool, two stubs and a token cache.

    Args:
        pool: The reporting database (schema ``reporting``).
        delivery: DeliveryService stub.
        notification: NotificationService stub.
        tokens: Mints the per-organization service tokens for peer calls.
        settings: The process settings (viewer URL for links).
        sentiment: The sentiment analyzer (VADER unless given).
        themes: The theme extractor (TF-IDF + NMF unless given).
        snapshot_batch_size: Responses per snapshot batch (tests use small ones).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        delivery: dgrpc.DeliveryServiceStub,
        notification: ngrpc.NotificationServiceStub,
        tokens: ServiceTokens,
        settings: Settings,
        *,
        sentiment: SentimentAnalyzer | None = None,
        themes: ThemeExtractor | None = None,
        snapshot_batch_size: int = SNAPSHOT_BATCH,
    ) -> None:
        self._pool = pool
        self._delivery = delivery
        self._notification = notification
        self._tokens = tokens
        self._settings = settings
        self._sentiment = sentiment
        self._themes = themes
        self._batch = max(1, min(5000, snapshot_batch_size))

    def quick_activities(self) -> list[Callable[..., Awaitable[Any]]]:
        """Activities served on the quick queue."""
        return [
            self.validate,
            self.snapshot,
            self.compute_statistics,
            self.build_visualizations,
            self.compile_report,
            self.notify,
            self.fail_report,
            self.cancel_report,
        ]

    def ai_activities(self) -> list[Callable[..., Awaitable[Any]]]:
        """Activities served on the AI queue (their own concurrency limit)."""
        return [self.analyze_sentiment, self.extract_themes]

    # -- helpers ---------------------------------------------------------------------------

    def _sentiment_analyzer(self) -> SentimentAnalyzer:
        # Built lazily: VADER loads its lexicon once, on the first AI activity.
        if self._sentiment is None:
            self._sentiment = VaderAnalyzer()
        return self._sentiment

    def _theme_extractor(self) -> ThemeExtractor:
        if self._themes is None:
            self._themes = TfidfNmfExtractor(random_state=0)
        return self._themes

    async def _peer(self, call: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs one peer call, translating its failure for Temporal."""
        try:
            return await fn()
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, call=call) from err

    async def _append(self, report_id: str, *events: Event) -> None:
        try:
            await store.append(self._pool, report_id, *events)
        except LookupError:
            raise _report_missing(report_id) from None

    async def _store(self, report_id: str, component: str, data: Any, *events: Event) -> None:
        try:
            await store.store_component(self._pool, report_id, component, _json(data), *events)
        except asyncpg.ForeignKeyViolationError:
            raise _report_missing(report_id) from None
        except LookupError:
            raise _report_missing(report_id) from None

    async def _stage_started(self, report_id: str, stage: str, percent: int) -> None:
        await self._append(
            report_id,
            Event(
                type=E.REPORT_EVENT_TYPE_STAGE_STARTED,
                dedupe_key=f"stage:{stage}:started",
                stage=stage,
                progress_percent=percent,
                message=f"{stage} started",
            ),
        )

    @staticmethod
    def _stage_completed(stage: str, percent: int) -> Event:
        return Event(
            type=E.REPORT_EVENT_TYPE_STAGE_COMPLETED,
            dedupe_key=f"stage:{stage}:completed",
            stage=stage,
            progress_percent=percent,
            message=f"{stage} completed",
        )

    async def _existing_components(self, report_id: str) -> set[str]:
        rows = await self._pool.fetch(
            "SELECT component_type FROM report_components WHERE report_id = $1", report_id
        )
        return {r["component_type"] for r in rows}

    async def _snapshot_row(self, report_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow("SELECT * FROM snapshots WHERE report_id = $1", report_id)

    async def _survey(self, report_id: str) -> dict[str, Any]:
        row = await self._snapshot_row(report_id)
        if row is None or not row["done"]:
            raise ApplicationError(
                "the report has no finished snapshot", type="SNAPSHOT_MISSING", non_retryable=True
            )
        survey: dict[str, Any] = row["survey"] or {"title": "", "questions": []}
        survey["response_count"] = int(row["copied"])
        return survey

    @staticmethod
    def _questions(survey: dict[str, Any], ref: ReportRef, *types: str) -> list[dict[str, Any]]:
        wanted = set(ref.options.question_ids)
        return [
            q
            for q in survey["questions"]
            if (not wanted or q["id"] in wanted) and (not types or q["type"] in types)
        ]

    # -- 1. validate -----------------------------------------------------------------------

    @activity.defn(name=models.VALIDATE)
    async def validate(self, ref: ReportRef) -> ValidateResult:
        """Checks that the requester may read the survey and marks the report RUNNING.

        Raises:
            ApplicationError: ``ACCESS_DENIED`` (non-retryable) when the requester may not
                read the survey; the peer's reason for NOT_FOUND and other permanent errors.
        """
        await self._append(
            ref.report_id,
            Event(
                type=E.REPORT_EVENT_TYPE_STATE_CHANGED,
                dedupe_key="state:running",
                state=S.REPORT_STATE_RUNNING,
                progress_percent=1,
                message="the report is running",
            ),
        )
        await self._stage_started(ref.report_id, "validate", 1)
        resp = await self._peer(
            "DeliveryService.CheckSurveyAccess",
            lambda: self._delivery.CheckSurveyAccess(
                dpb.CheckSurveyAccessRequest(survey_id=ref.survey_id, subject=ref.requested_by),
                metadata=self._tokens.metadata(ref.org_id),
                timeout=UNARY_TIMEOUT,
            ),
        )
        if not resp.allowed:
            raise ApplicationError(
                f"{ref.requested_by} may not read survey {ref.survey_id}: {resp.reason}",
                type="ACCESS_DENIED",
                non_retryable=True,
            )
        await self._append(ref.report_id, self._stage_completed("validate", 3))
        return ValidateResult(
            survey_title=resp.survey_title,
            question_count=resp.question_count,
            response_count=resp.response_count,
        )

    # -- 2. snapshot -----------------------------------------------------------------------

    @activity.defn(name=models.SNAPSHOT)
    async def snapshot(self, inp: StageInput) -> SnapshotSummary:
        """Copies the survey and its responses from Delivery into the reporting DB.

        Resumable: each batch's COPY and the ``snapshots`` row update commit together, so a
        retry continues after ``last_response_id`` within the same ``snapshot_watermark``
        and never duplicates or loses a row.
        """
        ref = inp.report
        row = await self._snapshot_row(ref.report_id)
        if row is not None and row["done"]:
            return await self._finish_snapshot(inp, row)
        await self._stage_started(ref.report_id, "snapshot", inp.progress_from)
        if row is None:
            row = await self._start_snapshot(ref)
            if row["done"]:
                return await self._finish_snapshot(inp, row)
        metadata = self._tokens.metadata(ref.org_id)
        watermark, after = int(row["snapshot_watermark"]), str(row["last_response_id"])
        copied, total = int(row["copied"]), int(row["total"])
        request = dpb.StreamResponsesRequest(
            survey_id=ref.survey_id,
            after_response_id=after,
            batch_size=self._batch,
            snapshot_watermark=watermark,
            completed_only=not ref.options.include_incomplete,
        )
        activity.heartbeat(copied)
        try:
            async for msg in self._delivery.StreamResponses(
                request, metadata=metadata, timeout=STREAM_TIMEOUT
            ):
                if watermark == 0:
                    # First message of a new snapshot: it names the snapshot for every retry.
                    watermark, total = msg.snapshot_watermark, msg.total_count
                    await self._pool.execute(
                        "UPDATE snapshots SET snapshot_watermark = $2, total = $3"
                        " WHERE report_id = $1 AND snapshot_watermark = 0",
                        ref.report_id,
                        watermark,
                        total,
                    )
                    stored = await self._pool.fetchval(
                        "SELECT snapshot_watermark FROM snapshots WHERE report_id = $1",
                        ref.report_id,
                    )
                    if stored != watermark:
                        raise ApplicationError(
                            "another attempt started this snapshot; resuming from it",
                            type="SNAPSHOT_CONFLICT",
                        )
                if msg.responses:
                    copied = await self._copy_batch(inp, msg.responses, after, copied, total)
                    after = msg.responses[-1].id
                activity.heartbeat(copied)
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, call="DeliveryService.StreamResponses") from err
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE snapshots SET done = true, total = copied WHERE report_id = $1",
                ref.report_id,
            )
            done_row = await conn.fetchrow(
                "SELECT * FROM snapshots WHERE report_id = $1", ref.report_id
            )
        assert done_row is not None
        return await self._finish_snapshot(inp, done_row)

    async def _start_snapshot(self, ref: ReportRef) -> asyncpg.Record:
        """Fetches the survey definition and creates the ``snapshots`` row (once)."""
        resp = await self._peer(
            "DeliveryService.GetSurvey",
            lambda: self._delivery.GetSurvey(
                dpb.GetSurveyRequest(survey_id=ref.survey_id),
                metadata=self._tokens.metadata(ref.org_id),
                timeout=UNARY_TIMEOUT,
            ),
        )
        s = resp.survey
        survey = {
            "id": s.id,
            "title": s.title,
            "description": s.description,
            "questions": [
                {
                    "id": q.id,
                    "text": q.text,
                    "type": _question_type(q.type),
                    "options": list(q.options),
                    "required": q.required,
                    "min_value": q.min_value if q.HasField("min_value") else None,
                    "max_value": q.max_value if q.HasField("max_value") else None,
                }
                for q in s.questions
            ],
        }
        # A survey without responses has no snapshot to stream (Delivery issues no
        # watermark for it), so its snapshot is empty and done at once.
        empty = s.response_count == 0
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO snapshots (report_id, snapshot_watermark, survey, done)"
                    " VALUES ($1, 0, $2, $3) ON CONFLICT (report_id) DO NOTHING",
                    ref.report_id,
                    survey,
                    empty,
                )
            except asyncpg.ForeignKeyViolationError:
                raise _report_missing(ref.report_id) from None
            row = await conn.fetchrow("SELECT * FROM snapshots WHERE report_id = $1", ref.report_id)
        assert row is not None
        return row

    async def _copy_batch(
        self, inp: StageInput, responses: Sequence[Any], after: str, copied: int, total: int
    ) -> int:
        """COPYs one batch and advances the ``snapshots`` row in one transaction."""
        report_id = inp.report.report_id
        response_rows = []
        answer_rows = []
        for r in responses:
            response_rows.append(
                (
                    report_id,
                    r.id,
                    r.start_time.ToDatetime(tzinfo=UTC) if r.HasField("start_time") else None,
                    r.complete_time.ToDatetime(tzinfo=UTC) if r.HasField("complete_time") else None,
                    r.completed,
                    dict(r.attributes),
                )
            )
            for a in r.answers:
                kind = a.WhichOneof("value")
                number = text = choices = None
                if kind in ("rating", "nps", "number"):
                    number = float(getattr(a, kind))
                elif kind in ("choice", "text"):
                    text = getattr(a, kind)
                elif kind == "choices":
                    choices = list(a.choices.values)
                else:
                    continue
                answer_rows.append((report_id, a.question_id, r.id, number, text, choices))
        async with self._pool.acquire() as conn:
            await _binary_jsonb(conn)
            async with conn.transaction():
                copied_to = await self._commit_batch(
                    conn, inp, response_rows, answer_rows, after, responses[-1].id, copied, total
                )
        return copied_to

    async def _commit_batch(
        self,
        conn: asyncpg.Connection,
        inp: StageInput,
        response_rows: list[tuple[Any, ...]],
        answer_rows: list[tuple[Any, ...]],
        after: str,
        last_id: str,
        copied: int,
        total: int,
    ) -> int:
        """Inside the caller's transaction: COPY the batch, advance the row, maybe PROGRESS."""
        report_id = inp.report.report_id
        new_copied = copied + len(response_rows)
        current = await conn.fetchrow(
            "SELECT last_response_id, copied FROM snapshots WHERE report_id = $1 FOR UPDATE",
            report_id,
        )
        if current is None or current["last_response_id"] != after:
            # Another attempt of this activity got further (it outlived its heartbeat
            # timeout); this one stops and Temporal's retry resumes from the row.
            raise ApplicationError(
                "the snapshot advanced concurrently; resuming from the stored position",
                type="SNAPSHOT_CONFLICT",
            )
        await conn.copy_records_to_table(
            "snapshot_responses",
            records=response_rows,
            columns=[
                "report_id",
                "response_id",
                "start_time",
                "complete_time",
                "completed",
                "attributes",
            ],
            schema_name=store.SCHEMA,
        )
        if answer_rows:
            await conn.copy_records_to_table(
                "snapshot_answers",
                records=answer_rows,
                columns=[
                    "report_id",
                    "question_id",
                    "response_id",
                    "number",
                    "text",
                    "choices",
                ],
                schema_name=store.SCHEMA,
            )
        await conn.execute(
            "UPDATE snapshots SET last_response_id = $2, copied = $3 WHERE report_id = $1",
            report_id,
            last_id,
            new_copied,
        )
        if total > 0:
            before, now = copied * 10 // total, new_copied * 10 // total
            if now > before:
                span = inp.progress_to - inp.progress_from
                await store.append_event(
                    conn,
                    report_id,
                    Event(
                        type=E.REPORT_EVENT_TYPE_PROGRESS,
                        dedupe_key=f"progress:snapshot:{now}",
                        stage="snapshot",
                        progress_percent=inp.progress_from + span * min(new_copied, total) // total,
                        items_done=new_copied,
                        items_total=total,
                        message=f"{new_copied} of {total} responses copied",
                    ),
                )
        return new_copied

    async def _finish_snapshot(self, inp: StageInput, row: asyncpg.Record) -> SnapshotSummary:
        ref = inp.report
        answers = await self._pool.fetchval(
            "SELECT count(*) FROM snapshot_answers WHERE report_id = $1", ref.report_id
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE reports SET response_count = $2 WHERE id = $1", ref.report_id, row["copied"]
            )
            await store.append_event(
                conn, ref.report_id, self._stage_completed("snapshot", inp.progress_to)
            )
        return SnapshotSummary(
            responses=int(row["copied"]),
            answers=int(answers or 0),
            snapshot_watermark=int(row["snapshot_watermark"]),
        )

    # -- 3. statistics ---------------------------------------------------------------------

    @activity.defn(name=models.STATISTICS)
    async def compute_statistics(self, inp: StageInput) -> StageSummary:
        """Computes basic_stats, question_stats, nps, csat and segments, one question at a time."""
        ref = inp.report
        existing = await self._existing_components(ref.report_id)
        if all(c in existing for c in STAT_COMPONENTS):
            return StageSummary(list(STAT_COMPONENTS))
        await self._stage_started(ref.report_id, "statistics", inp.progress_from)
        survey = await self._survey(ref.report_id)
        n = survey["response_count"]
        computed: dict[str, Any] = {}
        computed["basic_stats"] = await self._basic_stats(ref, n)
        activity.heartbeat("basic_stats")
        questions, nps_list, csat_list = [], [], []
        for q in self._questions(survey, ref):
            qs, extra = await self._question_stats(ref.report_id, q, n)
            questions.append(qs)
            if q["type"] == "nps":
                nps_list.append({"question_id": q["id"], "text": q["text"], **extra})
            elif q["type"] == "rating":
                csat_list.append({"question_id": q["id"], "text": q["text"], **extra})
            activity.heartbeat(q["id"])
        computed["question_stats"] = {"response_count": n, "questions": questions}
        computed["nps"] = {"questions": nps_list}
        computed["csat"] = {"satisfied_from": 4, "questions": csat_list}
        computed["segments"] = await self._segments(ref, survey)
        span = inp.progress_to - inp.progress_from
        for i, name in enumerate(STAT_COMPONENTS, start=1):
            if name in existing:
                continue
            percent = inp.progress_from + span * i // len(STAT_COMPONENTS)
            events = [
                Event(
                    type=E.REPORT_EVENT_TYPE_PROGRESS,
                    dedupe_key=f"progress:statistics:{i}",
                    stage="statistics",
                    progress_percent=percent,
                    items_done=i,
                    items_total=len(STAT_COMPONENTS),
                    message=f"{name} computed",
                )
            ]
            if i == len(STAT_COMPONENTS):
                events.append(self._stage_completed("statistics", inp.progress_to))
            await self._store(ref.report_id, name, computed[name], *events)
        return StageSummary(list(STAT_COMPONENTS))

    async def _basic_stats(self, ref: ReportRef, n: int) -> dict[str, Any]:
        row = await self._pool.fetchrow(
            """
            SELECT coalesce(array_agg(completed), '{}') AS completed,
                   coalesce(array_agg(extract(epoch FROM complete_time - start_time)::float8)
                       FILTER (WHERE completed AND complete_time IS NOT NULL
                               AND start_time IS NOT NULL), '{}') AS durations
            FROM snapshot_responses WHERE report_id = $1
            """,
            ref.report_id,
        )
        assert row is not None
        interval = "week" if ref.options.trend_interval == "week" else "day"
        buckets = await self._pool.fetch(
            """
            SELECT date_trunc($2, coalesce(complete_time, start_time), 'UTC') AS bucket,
                   count(*) AS n
            FROM snapshot_responses
            WHERE report_id = $1 AND coalesce(complete_time, start_time) IS NOT NULL
            GROUP BY 1
            """,
            ref.report_id,
            interval,
        )
        out = st.completion_stats(
            np.asarray(row["completed"], dtype=bool), np.asarray(row["durations"], dtype=np.float64)
        )
        out["trend_interval"] = interval
        out["trend"] = st.trend({b["bucket"]: b["n"] for b in buckets}, interval)
        out["include_incomplete"] = ref.options.include_incomplete
        return out

    async def _numbers(self, report_id: str, question_id: str) -> np.ndarray:
        values = await self._pool.fetchval(
            "SELECT coalesce(array_agg(number), '{}') FROM snapshot_answers"
            " WHERE report_id = $1 AND question_id = $2 AND number IS NOT NULL",
            report_id,
            question_id,
        )
        return np.asarray(values, dtype=np.float64)

    async def _question_stats(
        self, report_id: str, q: dict[str, Any], n: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One question's figures, plus its NPS or CSAT block (for those types)."""
        base = {"question_id": q["id"], "text": q["text"], "type": q["type"]}
        kind = q["type"]
        if kind in ("rating", "nps", "number"):
            values = await self._numbers(report_id, q["id"])
            summary = st.numeric_summary(values, skipped=max(0, n - values.size))
            base.update(n=summary["n"], skipped=summary["skipped"], summary=summary)
            if kind == "rating":
                base["distribution"] = st.integer_distribution(values, 1, 5)
                return base, st.csat(values)
            if kind == "nps":
                base["distribution"] = st.integer_distribution(values, 0, 10)
                return base, st.nps(values)
            return base, {}
        if kind == "single_choice":
            rows = await self._pool.fetch(
                "SELECT text AS option, count(*) AS c FROM snapshot_answers"
                " WHERE report_id = $1 AND question_id = $2 AND text IS NOT NULL GROUP BY text",
                report_id,
                q["id"],
            )
            answered = sum(int(r["c"]) for r in rows)
        elif kind == "multiple_choice":
            rows = await self._pool.fetch(
                "SELECT c.option, count(*) AS c FROM snapshot_answers a,"
                " unnest(a.choices) AS c(option)"
                " WHERE a.report_id = $1 AND a.question_id = $2 GROUP BY c.option",
                report_id,
                q["id"],
            )
            answered = int(
                await self._pool.fetchval(
                    "SELECT count(*) FROM snapshot_answers WHERE report_id = $1"
                    " AND question_id = $2 AND choices IS NOT NULL",
                    report_id,
                    q["id"],
                )
            )
        else:  # free text
            row = await self._pool.fetchrow(
                "SELECT count(*) AS c, avg(length(text))::float8 AS len FROM snapshot_answers"
                " WHERE report_id = $1 AND question_id = $2 AND text IS NOT NULL",
                report_id,
                q["id"],
            )
            assert row is not None
            answered = int(row["c"])
            base.update(n=answered, skipped=max(0, n - answered), mean_length=row["len"])
            return base, {}
        dist = st.choice_distribution(
            {r["option"]: int(r["c"]) for r in rows},
            q["options"],
            answered=answered,
            skipped=max(0, n - answered),
        )
        base.update(dist)
        return base, {}

    async def _segments(self, ref: ReportRef, survey: dict[str, Any]) -> dict[str, Any]:
        """Figures split by each requested respondent attribute, with significance tests."""
        out: dict[str, Any] = {"segments": []}
        if not ref.options.segment_by:
            out["note"] = "no segment_by option was given"
            return out
        questions = self._questions(
            survey, ref, "rating", "nps", "number", "single_choice", "multiple_choice"
        )
        for attribute in ref.options.segment_by:
            sizes = await self._pool.fetch(
                "SELECT attributes->>$2 AS g, count(*) AS n FROM snapshot_responses"
                " WHERE report_id = $1 AND attributes ? $2 GROUP BY 1 ORDER BY 2 DESC, 1"
                " LIMIT $3",
                ref.report_id,
                attribute,
                MAX_SEGMENT_GROUPS,
            )
            groups = [r["g"] for r in sizes]
            entry: dict[str, Any] = {
                "attribute": attribute,
                "groups": {r["g"]: int(r["n"]) for r in sizes},
                "questions": [],
            }
            for q in questions if len(groups) >= 2 else []:
                entry["questions"].append(
                    await self._segment_question(ref.report_id, q, attribute, groups)
                )
                activity.heartbeat(f"segments:{attribute}:{q['id']}")
            out["segments"].append(entry)
        return out

    async def _segment_question(
        self, report_id: str, q: dict[str, Any], attribute: str, groups: list[str]
    ) -> dict[str, Any]:
        head = {"question_id": q["id"], "text": q["text"], "type": q["type"]}
        if q["type"] in ("rating", "nps", "number"):
            rows = await self._pool.fetch(
                "SELECT r.attributes->>$3 AS g, array_agg(a.number) AS v"
                " FROM snapshot_answers a JOIN snapshot_responses r"
                "   ON r.report_id = a.report_id AND r.response_id = a.response_id"
                " WHERE a.report_id = $1 AND a.question_id = $2 AND a.number IS NOT NULL"
                "   AND r.attributes->>$3 = ANY($4::text[])"
                " GROUP BY 1",
                report_id,
                q["id"],
                attribute,
                groups,
            )
            result = st.compare_numeric_groups(
                {r["g"]: np.asarray(r["v"], dtype=np.float64) for r in rows}
            )
            return {**head, **result}
        if q["type"] == "single_choice":
            sql = (
                "SELECT r.attributes->>$3 AS g, a.text AS c, count(*) AS n"
                " FROM snapshot_answers a JOIN snapshot_responses r"
                "   ON r.report_id = a.report_id AND r.response_id = a.response_id"
                " WHERE a.report_id = $1 AND a.question_id = $2 AND a.text IS NOT NULL"
                "   AND r.attributes->>$3 = ANY($4::text[]) GROUP BY 1, 2"
            )
        else:
            # Multiple choice: each option is tested as picked / not picked would be more
            # exact; the cross-tab of picks per group is the simpler first figure.
            sql = (
                "SELECT r.attributes->>$3 AS g, c.option AS c, count(*) AS n"
                " FROM snapshot_answers a JOIN snapshot_responses r"
                "   ON r.report_id = a.report_id AND r.response_id = a.response_id,"
                " unnest(a.choices) AS c(option)"
                " WHERE a.report_id = $1 AND a.question_id = $2"
                "   AND r.attributes->>$3 = ANY($4::text[]) GROUP BY 1, 2"
            )
        rows = await self._pool.fetch(sql, report_id, q["id"], attribute, groups)
        counts: dict[str, dict[str, int]] = {}
        for r in rows:
            counts.setdefault(r["g"], {})[r["c"]] = int(r["n"])
        return {**head, **st.compare_categorical_groups(counts, q["options"])}

    # -- 4. AI: sentiment and themes -------------------------------------------------------

    async def _texts(self, report_id: str, question_id: str, attributes: Sequence[str]) -> Any:
        """Yields chunks of (ids, texts, attribute values) of one free-text question."""
        async with self._pool.acquire() as conn, conn.transaction():
            cursor = conn.cursor(
                "SELECT a.response_id, a.text,"
                " (SELECT array_agg(r.attributes->>k) FROM unnest($3::text[]) AS k) AS attrs"
                " FROM snapshot_answers a JOIN snapshot_responses r"
                "   ON r.report_id = a.report_id AND r.response_id = a.response_id"
                " WHERE a.report_id = $1 AND a.question_id = $2 AND a.text IS NOT NULL"
                " ORDER BY a.response_id",
                report_id,
                question_id,
                list(attributes),
                prefetch=TEXT_CHUNK,
            )
            ids: list[str] = []
            texts: list[str] = []
            attrs: list[list[str | None]] = []
            async for rec in cursor:
                ids.append(rec["response_id"])
                texts.append(rec["text"])
                attrs.append(list(rec["attrs"] or []))
                if len(ids) >= TEXT_CHUNK:
                    yield ids, texts, attrs
                    ids, texts, attrs = [], [], []
            if ids:
                yield ids, texts, attrs

    @activity.defn(name=models.SENTIMENT)
    async def analyze_sentiment(self, inp: StageInput) -> StageSummary:
        """Scores every free-text answer and stores the ``sentiment`` component."""
        ref = inp.report
        if "sentiment" in await self._existing_components(ref.report_id):
            return StageSummary(["sentiment"])
        await self._stage_started(ref.report_id, "sentiment", inp.progress_from)
        survey = await self._survey(ref.report_id)
        analyzer = self._sentiment_analyzer()
        segment_by = list(ref.options.segment_by)
        overall = SentimentAccumulator()
        abs_scores = 0.0
        questions = []
        for q in self._questions(survey, ref, "free_text"):
            acc = SentimentAccumulator()
            by_segment: dict[str, dict[str, SentimentAccumulator]] = {a: {} for a in segment_by}
            async for ids, texts, attrs in self._texts(ref.report_id, q["id"], segment_by):
                # VADER is CPU-bound: off the event loop, so heartbeats keep flowing.
                scores = await asyncio.to_thread(analyzer.score, texts)
                acc.add(ids, texts, scores)
                overall.add(ids, texts, scores)
                abs_scores += float(np.abs(scores).sum())
                for j, attribute in enumerate(segment_by):
                    groups = by_segment[attribute]
                    # Group the chunk first, so each segment gets one vectorised add.
                    members: dict[str, list[int]] = {}
                    for k, row_attrs in enumerate(attrs):
                        g = row_attrs[j] if j < len(row_attrs) else None
                        if g is not None:
                            members.setdefault(g, []).append(k)
                    for g, idx in sorted(members.items()):
                        if g not in groups and len(groups) >= MAX_SEGMENT_GROUPS:
                            continue
                        groups.setdefault(g, SentimentAccumulator(quotes=1)).add(
                            [ids[k] for k in idx], [texts[k] for k in idx], scores[idx]
                        )
                activity.heartbeat(f"{q['id']}:{acc.n}")
            result = acc.result()
            questions.append(
                {
                    "question_id": q["id"],
                    "text": q["text"],
                    "label": overall_label(result["mean_score"]),
                    **result,
                    "segments": {
                        a: {g: s.result() for g, s in sorted(groups.items())}
                        for a, groups in by_segment.items()
                    },
                }
            )
        total = overall.result()
        component = {
            "provenance": {
                "analyzer": analyzer.name,
                "prompt_version": analyzer.prompt_version,
                "confidence": abs_scores / overall.n if overall.n else 0.0,
            },
            "overall": {"label": overall_label(total["mean_score"]), **total},
            "questions": questions,
        }
        await self._store(
            ref.report_id,
            "sentiment",
            component,
            self._stage_completed("sentiment", inp.progress_to),
        )
        return StageSummary(["sentiment"])

    @activity.defn(name=models.THEMES)
    async def extract_themes(self, inp: StageInput) -> StageSummary:
        """Finds themes per free-text question and stores the ``themes`` component."""
        ref = inp.report
        if "themes" in await self._existing_components(ref.report_id):
            return StageSummary(["themes"])
        await self._stage_started(ref.report_id, "themes", inp.progress_from)
        survey = await self._survey(ref.report_id)
        extractor = self._theme_extractor()
        analyzer = self._sentiment_analyzer()
        questions = []
        strengths: list[float] = []
        for q in self._questions(survey, ref, "free_text"):
            total = int(
                await self._pool.fetchval(
                    "SELECT count(*) FROM snapshot_answers WHERE report_id = $1"
                    " AND question_id = $2 AND text IS NOT NULL",
                    ref.report_id,
                    q["id"],
                )
            )
            # A deterministic pseudo-random sample bounds time and memory for huge surveys.
            rows = await self._pool.fetch(
                "SELECT response_id, text FROM snapshot_answers WHERE report_id = $1"
                " AND question_id = $2 AND text IS NOT NULL ORDER BY md5(response_id), response_id"
                " LIMIT $3",
                ref.report_id,
                q["id"],
                MAX_THEME_DOCUMENTS,
            )
            ids = [r["response_id"] for r in rows]
            texts = [r["text"] for r in rows]
            n_themes = max(2, min(8, len(texts) // 25))
            found = await asyncio.to_thread(extractor.extract, texts, n_themes)
            activity.heartbeat(q["id"])
            scores = await asyncio.to_thread(analyzer.score, texts) if found else None
            themes = themes_component(found, ids, texts, scores, total_documents=len(texts))
            strengths.extend(t.strength for t in found)
            questions.append(
                {
                    "question_id": q["id"],
                    "text": q["text"],
                    "answers": total,
                    "sampled": len(texts),
                    "themes": themes,
                }
            )
        component = {
            "provenance": {
                "analyzer": extractor.name,
                "prompt_version": extractor.prompt_version,
                "confidence": float(np.mean(strengths)) if strengths else 0.0,
                "sentiment_analyzer": analyzer.name,
            },
            "questions": questions,
        }
        await self._store(
            ref.report_id, "themes", component, self._stage_completed("themes", inp.progress_to)
        )
        return StageSummary(["themes"])

    # -- 5. visualizations -----------------------------------------------------------------

    async def _components(self, report_id: str, types: Sequence[str]) -> dict[str, Any]:
        rows = await self._pool.fetch(
            "SELECT component_type, data FROM report_components"
            " WHERE report_id = $1 AND component_type = ANY($2::text[])",
            report_id,
            list(types),
        )
        return {r["component_type"]: orjson.loads(r["data"]) for r in rows}

    @activity.defn(name=models.VISUALIZATIONS)
    async def build_visualizations(self, inp: StageInput) -> StageSummary:
        """Builds Vega-Lite specs from the stored components."""
        ref = inp.report
        if "visualizations" in await self._existing_components(ref.report_id):
            return StageSummary(["visualizations"])
        await self._stage_started(ref.report_id, "visualizations", inp.progress_from)
        components = await self._components(ref.report_id, list(charts.BUILDERS))
        specs = await asyncio.to_thread(charts.build_all, components)
        await self._store(
            ref.report_id,
            "visualizations",
            {"format": "vega-lite/v5", "charts": specs},
            self._stage_completed("visualizations", inp.progress_to),
        )
        return StageSummary(["visualizations"])

    # -- 6. compile ------------------------------------------------------------------------

    @activity.defn(name=models.COMPILE)
    async def compile_report(self, ref: ReportRef) -> CompileResult:
        """Stores the ``summary`` component together with the terminal COMPLETED event."""
        survey = await self._survey(ref.report_id)
        existing = await self._existing_components(ref.report_id)
        if "summary" not in existing:
            await self._stage_started(ref.report_id, "compile", 97)
            parts = await self._components(
                ref.report_id, ["basic_stats", "nps", "csat", "sentiment"]
            )
            summary = {
                "title": survey.get("title", ""),
                "survey_id": ref.survey_id,
                "kind": ref.kind,
                "response_count": survey["response_count"],
                "question_count": len(survey["questions"]),
                "components": sorted(existing | {"summary"}),
                "headlines": _headlines(parts),
            }
            await self._store(
                ref.report_id,
                "summary",
                summary,
                Event(
                    type=E.REPORT_EVENT_TYPE_COMPLETED,
                    dedupe_key="terminal",
                    state=S.REPORT_STATE_COMPLETED,
                    progress_percent=100,
                    message="the report is complete",
                ),
            )
        row = await self._pool.fetchrow(
            "SELECT r.end_time, r.response_count,"
            " (SELECT count(*) FROM report_components c WHERE c.report_id = r.id) AS components"
            " FROM reports r WHERE r.id = $1",
            ref.report_id,
        )
        if row is None:
            raise _report_missing(ref.report_id)
        end: datetime | None = row["end_time"]
        return CompileResult(
            component_count=int(row["components"]),
            response_count=int(row["response_count"]),
            completed_at=end.astimezone(UTC).isoformat() if end else "",
        )

    # -- 7. notify -------------------------------------------------------------------------

    @activity.defn(name=models.NOTIFY)
    async def notify(self, inp: NotifyInput) -> NotifyResult:
        """Tells the requester the report is ready (in-app, webhooks, optionally email)."""
        ref = inp.report
        title_row = await self._snapshot_row(ref.report_id)
        survey_title = ((title_row and title_row["survey"]) or {}).get("title") or ref.survey_id
        channels = [npb.Channel.CHANNEL_IN_APP, npb.Channel.CHANNEL_WEBHOOK]
        if ref.options.notify_email:
            channels.append(npb.Channel.CHANNEL_EMAIL)
        key = inp.idempotency_key
        if len(key) > NOTIFY_KEY_MAX:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        request = nspb.SendNotificationRequest(
            user_id=ref.requested_by,
            type="report.completed",
            title=f"Report ready: {survey_title}"[:200],
            body=f"Your {ref.kind} report of {survey_title!r} is {inp.state}.",
            link=f"{self._settings.viewer_url}/reports/{ref.report_id}",
            metadata={
                "report_id": ref.report_id,
                "survey_id": ref.survey_id,
                "state": inp.state,
                "component_count": str(inp.component_count),
                "completed_at": inp.completed_at,
            },
            channels=channels,
            email=ref.options.notify_email,
            idempotency_key=key,
        )
        resp = await self._peer(
            "NotificationService.SendNotification",
            lambda: self._notification.SendNotification(
                request, metadata=self._tokens.metadata(ref.org_id), timeout=UNARY_TIMEOUT
            ),
        )
        return NotifyResult(notification_id=resp.notification.id, duplicate=resp.duplicate)

    # -- failure and cancellation ----------------------------------------------------------

    @activity.defn(name=models.FAIL)
    async def fail_report(self, inp: FailInput) -> None:
        """Ends the report FAILED with its reason (no-op if it already ended)."""
        try:
            await store.append(
                self._pool,
                inp.report_id,
                Event(
                    type=E.REPORT_EVENT_TYPE_FAILED,
                    dedupe_key="terminal",
                    state=S.REPORT_STATE_FAILED,
                    stage=inp.stage,
                    message=inp.message[:1000],
                    error={"reason": inp.reason, "message": inp.message[:1000], "stage": inp.stage},
                ),
            )
        except LookupError:
            log.warning("report %s to fail does not exist", inp.report_id)

    @activity.defn(name=models.CANCEL)
    async def cancel_report(self, inp: CancelInput) -> None:
        """Ends the report CANCELLED (no-op if it already ended)."""
        try:
            await store.append(
                self._pool,
                inp.report_id,
                Event(
                    type=E.REPORT_EVENT_TYPE_CANCELLED,
                    dedupe_key="terminal",
                    state=S.REPORT_STATE_CANCELLED,
                    stage=inp.stage,
                    message=inp.reason[:1000],
                ),
            )
        except LookupError:
            log.warning("report %s to cancel does not exist", inp.report_id)


def _headlines(parts: dict[str, Any]) -> dict[str, Any]:
    """The few figures a reader sees first."""
    head: dict[str, Any] = {}
    basic = parts.get("basic_stats") or {}
    head["completion_rate"] = basic.get("completion_rate")
    head["median_completion_seconds"] = (basic.get("completion_time_seconds") or {}).get("median")
    nps_q = [q for q in (parts.get("nps") or {}).get("questions", []) if q.get("score") is not None]
    if nps_q:
        head["nps"] = {
            "question_id": nps_q[0]["question_id"],
            "score": nps_q[0]["score"],
            "ci95": nps_q[0]["ci95"],
        }
    csat_q = [
        q for q in (parts.get("csat") or {}).get("questions", []) if q.get("score") is not None
    ]
    if csat_q:
        head["csat"] = {"question_id": csat_q[0]["question_id"], "score": csat_q[0]["score"]}
    sentiment = parts.get("sentiment")
    if sentiment:
        head["sentiment"] = {
            "label": sentiment["overall"]["label"],
            "mean_score": sentiment["overall"]["mean_score"],
            "analyzer": sentiment["provenance"]["analyzer"],
        }
    return head
