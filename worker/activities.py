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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, repeat
from typing import Any, TypeVar

import asyncpg
import grpc
import numpy as np
import orjson
from google.protobuf import timestamp_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from reporting_svc import store
from reporting_svc.store import Event
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.notification.v1 import notification_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2 as nspb
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.reporting.v1 import report_pb2
from worker import faultpoints, models
from worker.analytics import charts, compute
from worker.analytics.ai import (
    THEMES_PROMPT_VERSION,
    AIError,
    OpenAIAnalyzer,
    ThemeResult,
    TransientAIError,
)
from worker.analytics.sentiment import (
    NEGATIVE_TO,
    POSITIVE_FROM,
    LocalSentiment,
    OpenAISentiment,
    Scored,
    SentimentAccumulator,
    SentimentAnalyzer,
    SentimentScorer,
    VaderAnalyzer,
    overall_label,
)
from worker.analytics.themes import (
    TfidfNmfExtractor,
    Theme,
    ThemeExtractor,
    themes_component,
)
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
MAX_AI_THEME_DOCUMENTS = 2000  # answers per question the model assigns to themes
AI_ATTEMPTS = 3  # from this activity attempt on, an unavailable model means local fallback
AI_REQUESTS_IN_FLIGHT = 4  # per worker process, on top of the AI queue's activity limit
# Version 2 of the analytics components (worker/analytics/SCHEMAS.md): additive over
# version 1, whose keys all remain.
SCHEMA_VERSIONS = dict.fromkeys(
    (
        "basic_stats",
        "question_stats",
        "nps",
        "csat",
        "segments",
        "sentiment",
        "themes",
        "visualizations",
        "summary",
    ),
    2,
)
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


_NUMBER_KINDS = frozenset(("rating", "nps", "number"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RESPONSE_COLUMNS = [
    "report_id",
    "response_id",
    "start_time",
    "complete_time",
    "completed",
    "attributes",
]
_ANSWER_COLUMNS = ["report_id", "question_id", "response_id", "number", "text", "choices"]


def _utc(ts: timestamp_pb2.Timestamp) -> datetime:
    """``ts.ToDatetime(tzinfo=UTC)``, minus its validation (Delivery validated ``ts``)."""
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


@dataclass
class _AnswerColumns:
    """One question's answers in a snapshot batch, column by column."""

    response_ids: list[str] = field(default_factory=list)
    numbers: list[float | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    choices: list[list[str] | None] = field(default_factory=list)


class _SnapshotBatch:
    """The rows of one StreamResponses message, ready for COPY.

    Answers are kept in columns per question rather than as a tuple per answer: about ten
    answers per response would otherwise allocate that many tracked containers, and the
    cyclic garbage collector then ran many times per batch, walking the whole worker heap.
    The COPY also writes each question's answers together, so a statistics read of one
    question touches only the pages holding that question's answers.
    """

    def __init__(self, report_id: str, responses: Sequence[response_pb2.Response]) -> None:
        self.report_id = report_id
        self.size = len(responses)
        self.last_id: str = responses[-1].id
        self.responses: list[tuple[Any, ...]] = []
        self.questions: dict[str, _AnswerColumns] = {}
        for r in responses:
            rid = r.id
            self.responses.append(
                (
                    report_id,
                    rid,
                    _utc(r.start_time) if r.HasField("start_time") else None,
                    _utc(r.complete_time) if r.HasField("complete_time") else None,
                    r.completed,
                    dict(r.attributes),
                )
            )
            for a in r.answers:
                kind = a.WhichOneof("value")
                if kind is None:
                    continue
                value = getattr(a, kind)
                cols = self.questions.get(a.question_id)
                if cols is None:
                    cols = self.questions[a.question_id] = _AnswerColumns()
                cols.response_ids.append(rid)
                if kind in _NUMBER_KINDS:
                    cols.numbers.append(float(value))
                    cols.texts.append(None)
                    cols.choices.append(None)
                elif kind == "choices":
                    cols.numbers.append(None)
                    cols.texts.append(None)
                    cols.choices.append(value.values[:])
                else:  # choice, text
                    cols.numbers.append(None)
                    cols.texts.append(value)
                    cols.choices.append(None)

    @property
    def answer_count(self) -> int:
        """Answers in the batch."""
        return sum(len(c.response_ids) for c in self.questions.values())

    def answer_records(self) -> Iterator[tuple[Any, ...]]:
        """The ``snapshot_answers`` rows, question by question (``_ANSWER_COLUMNS``)."""
        return chain.from_iterable(
            zip(
                repeat(self.report_id),
                repeat(q),
                c.response_ids,
                c.numbers,
                c.texts,
                c.choices,
                strict=False,  # the repeats are endless
            )
            for q, c in self.questions.items()
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
        self._ai: OpenAIAnalyzer | None = None
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
        await self._store_all(report_id, [(component, data, events)])

    async def _store_all(
        self, report_id: str, components: Sequence[tuple[str, Any, Sequence[Event]]]
    ) -> None:
        """Stores ``(type, data, events)`` components and their events in one transaction."""
        try:
            await store.store_components(
                self._pool,
                report_id,
                [
                    store.Component(name, _json(data), events, SCHEMA_VERSIONS.get(name, 1))
                    for name, data, events in components
                ],
            )
        except (asyncpg.ForeignKeyViolationError, LookupError):
            raise _report_missing(report_id) from None
        for name, _, _ in components:
            await faultpoints.after_commit(name)  # inert outside the fault suite

    async def _stage_started(self, report_id: str, stage: str, percent: int) -> None:
        await self._append(report_id, self._started(stage, percent))

    @staticmethod
    def _started(stage: str, percent: int) -> Event:
        return Event(
            type=E.REPORT_EVENT_TYPE_STAGE_STARTED,
            dedupe_key=f"stage:{stage}:started",
            stage=stage,
            progress_percent=percent,
            message=f"{stage} started",
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
            self._started("validate", 1),
        )
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
        # One batch's COPY runs in PostgreSQL while the next message is read and turned into
        # rows here; batches still commit one after another, each with its snapshots row.
        pending: asyncio.Task[int] | None = None
        async with self._pool.acquire() as conn:
            await _binary_jsonb(conn)
            try:
                async for msg in self._delivery.StreamResponses(
                    request, metadata=metadata, timeout=STREAM_TIMEOUT
                ):
                    if watermark == 0:
                        # First message of a new snapshot: it names the snapshot for every retry.
                        watermark, total = msg.snapshot_watermark, msg.total_count
                        await self._claim_watermark(conn, ref.report_id, watermark, total)
                    if msg.responses:
                        batch = _SnapshotBatch(ref.report_id, msg.responses)
                        if pending is not None:
                            copied = await pending
                        pending = asyncio.create_task(
                            self._copy_batch(conn, inp, batch, after, copied, total)
                        )
                        after = batch.last_id
                    activity.heartbeat(copied)
                if pending is not None:
                    copied = await pending
                    pending = None
            except grpc.aio.AioRpcError as err:
                raise translate_rpc_error(err, call="DeliveryService.StreamResponses") from err
            finally:
                if pending is not None:
                    # The stream failed or the activity was cancelled: the batch in flight
                    # commits (or rolls back) on its own; it must end before the connection
                    # goes back to the pool.
                    await asyncio.gather(pending, return_exceptions=True)
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

    @staticmethod
    async def _claim_watermark(
        conn: asyncpg.Connection, report_id: str, watermark: int, total: int
    ) -> None:
        """Records a new snapshot's watermark, unless another attempt recorded one first.

        Runs on the snapshot's connection before its first batch (holding one connection
        while waiting for a second could starve the pool).
        """
        await conn.execute(
            "UPDATE snapshots SET snapshot_watermark = $2, total = $3"
            " WHERE report_id = $1 AND snapshot_watermark = 0",
            report_id,
            watermark,
            total,
        )
        stored = await conn.fetchval(
            "SELECT snapshot_watermark FROM snapshots WHERE report_id = $1", report_id
        )
        if stored != watermark:
            raise ApplicationError(
                "another attempt started this snapshot; resuming from it",
                type="SNAPSHOT_CONFLICT",
            )

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
            # Every response the survey had (completed or not): the completion rate's base
            # when only completed responses are snapshotted.
            "all_responses": s.response_count,
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
        self,
        conn: asyncpg.Connection,
        inp: StageInput,
        batch: _SnapshotBatch,
        after: str,
        copied: int,
        total: int,
    ) -> int:
        """COPYs one batch and advances the ``snapshots`` row in one transaction."""
        async with conn.transaction():
            return await self._commit_batch(conn, inp, batch, after, copied, total)

    async def _commit_batch(
        self,
        conn: asyncpg.Connection,
        inp: StageInput,
        batch: _SnapshotBatch,
        after: str,
        copied: int,
        total: int,
    ) -> int:
        """Inside the caller's transaction: COPY the batch, advance the row, maybe PROGRESS."""
        report_id = inp.report.report_id
        new_copied = copied + batch.size
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
            records=batch.responses,
            columns=_RESPONSE_COLUMNS,
            schema_name=store.SCHEMA,
        )
        if batch.questions:
            await conn.copy_records_to_table(
                "snapshot_answers",
                records=batch.answer_records(),
                columns=_ANSWER_COLUMNS,
                schema_name=store.SCHEMA,
            )
        await conn.execute(
            "UPDATE snapshots SET last_response_id = $2, copied = $3, answers = answers + $4"
            " WHERE report_id = $1",
            report_id,
            batch.last_id,
            new_copied,
            batch.answer_count,
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
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE reports SET response_count = $2 WHERE id = $1", ref.report_id, row["copied"]
            )
            await store.append_event(
                conn, ref.report_id, self._stage_completed("snapshot", inp.progress_to)
            )
        return SnapshotSummary(
            responses=int(row["copied"]),
            answers=int(row["answers"]),
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
        async with self._pool.acquire() as conn:
            computed = await compute.statistics_components(
                conn, ref.report_id, survey, ref.options, progress=activity.heartbeat
            )
        span = inp.progress_to - inp.progress_from
        # Every component is computed by now, so they are stored in one transaction (each
        # with its progress event), not one transaction each.
        components = []
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
            components.append((name, computed[name], events))
        await self._store_all(ref.report_id, components)
        return StageSummary(list(STAT_COMPONENTS))

    # -- 4. AI: sentiment and themes -------------------------------------------------------

    def _openai(self) -> OpenAIAnalyzer | None:
        """The OpenAI analyzer when a key is configured (built once, lazily)."""
        if not self._settings.openai_api_key:
            return None
        if self._ai is None:
            self._ai = OpenAIAnalyzer.create(
                api_key=self._settings.openai_api_key,
                base_url=self._settings.openai_base_url,
                model=self._settings.openai_model,
                timeout=self._settings.openai_timeout,
                max_retries=self._settings.openai_max_retries,
                concurrency=AI_REQUESTS_IN_FLIGHT,
            )
        return self._ai

    async def aclose(self) -> None:
        """Closes the AI client's connections (the pool and channels are the worker's)."""
        if self._ai is not None:
            await self._ai.close()
            self._ai = None

    @staticmethod
    def _fallback(err: AIError, analyzer: str) -> dict[str, str]:
        """Decides what an AI failure means for this attempt of the activity.

        A transient failure (rate limit, server error, timeout) that the client's own
        retries did not overcome fails the attempt, so Temporal retries it later; from
        attempt ``AI_ATTEMPTS`` on, and at once for a malformed or refused answer, the
        activity falls back to the local analyzers and records why in the provenance.

        Raises:
            ApplicationError: retryable ``AI_UNAVAILABLE``, to let Temporal retry.
        """
        attempt = activity.info().attempt
        if isinstance(err, TransientAIError) and attempt < AI_ATTEMPTS:
            raise ApplicationError(
                f"{analyzer}: {err} (attempt {attempt}; local fallback after {AI_ATTEMPTS})",
                type=err.reason,
            ) from err
        log.warning("%s failed (%s); falling back to the local analyzer", analyzer, err.reason)
        return {
            "fallback_from": analyzer,
            "fallback_reason": err.reason,
            "fallback_detail": str(err)[:300],
        }

    async def _segment_attributes(self, ref: ReportRef, survey: dict[str, Any]) -> list[str]:
        """The attributes sentiment is split by: as for the statistics (requested or default)."""
        async with self._pool.acquire() as conn:
            segs = await compute.choose_segments(
                conn, ref.report_id, ref.options.segment_by, int(survey["response_count"])
            )
        return [s.attribute for s in segs]

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

    async def _store_labels(
        self, report_id: str, question_id: str, ids: Sequence[str], scored: Scored
    ) -> None:
        """Upserts one chunk's per-answer labels (a retry or a fallback overwrites them)."""
        codes = np.select(
            [scored.labels == "positive", scored.labels == "negative"], [1, -1], default=0
        )
        await self._pool.execute(
            "INSERT INTO answer_sentiment"
            " (report_id, question_id, response_id, label, score, confidence)"
            " SELECT $1, $2, u.id, u.label, u.score, u.confidence"
            " FROM unnest($3::text[], $4::int2[], $5::float4[], $6::float4[])"
            "   AS u(id, label, score, confidence)"
            " ON CONFLICT (report_id, question_id, response_id) DO UPDATE SET"
            "   label = excluded.label, score = excluded.score, confidence = excluded.confidence",
            report_id,
            question_id,
            list(ids),
            codes.astype(int).tolist(),
            scored.scores.astype(float).tolist(),
            np.asarray(scored.confidence, dtype=float).tolist(),
        )

    async def _sentiment_component(
        self, ref: ReportRef, survey: dict[str, Any], scorer: SentimentScorer
    ) -> dict[str, Any]:
        segment_by = await self._segment_attributes(ref, survey)
        overall = SentimentAccumulator()
        questions = []
        for q in self._questions(survey, ref, "free_text"):
            acc = SentimentAccumulator()
            by_segment: dict[str, dict[str, SentimentAccumulator]] = {a: {} for a in segment_by}
            async for ids, texts, attrs in self._texts(ref.report_id, q["id"], segment_by):
                scored = await scorer.score_texts(texts)
                await self._store_labels(ref.report_id, q["id"], ids, scored)
                acc.add(ids, texts, scored.scores, scored.labels, scored.confidence)
                overall.add(ids, texts, scored.scores, scored.labels, scored.confidence)
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
                            [ids[k] for k in idx],
                            [texts[k] for k in idx],
                            scored.scores[idx],
                            scored.labels[idx],
                            scored.confidence[idx],
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
        confidence = total["confidence"] or 0.0
        return {
            "provenance": {
                "analyzer": scorer.name,
                "prompt_version": scorer.prompt_version,
                "confidence": confidence,
            },
            "confidence": confidence,
            "labels": {
                "table": "answer_sentiment",
                "thresholds": {"positive_from": POSITIVE_FROM, "negative_to": NEGATIVE_TO}
                if scorer.name.startswith("local:")
                else None,
            },
            "segment_by": segment_by,
            "overall": {"label": overall_label(total["mean_score"]), **total},
            "questions": questions,
        }

    @activity.defn(name=models.SENTIMENT)
    async def analyze_sentiment(self, inp: StageInput) -> StageSummary:
        """Scores every free-text answer and stores the ``sentiment`` component.

        With an OpenAI key the model labels the answers; a failure it cannot recover from
        falls back to VADER, recorded in the component's provenance.
        """
        ref = inp.report
        if "sentiment" in await self._existing_components(ref.report_id):
            return StageSummary(["sentiment"])
        await self._stage_started(ref.report_id, "sentiment", inp.progress_from)
        survey = await self._survey(ref.report_id)
        component: dict[str, Any] | None = None
        fallback: dict[str, str] = {}
        ai = self._openai()
        if ai is not None:
            try:
                component = await self._sentiment_component(ref, survey, OpenAISentiment(ai))
            except AIError as err:
                fallback = self._fallback(err, ai.name)
        if component is None:
            local = LocalSentiment(self._sentiment_analyzer())
            component = await self._sentiment_component(ref, survey, local)
            component["provenance"].update(fallback)
        await self._store(
            ref.report_id,
            "sentiment",
            component,
            self._stage_completed("sentiment", inp.progress_to),
        )
        return StageSummary(["sentiment"])

    async def _theme_sample(
        self, report_id: str, question_id: str
    ) -> tuple[int, list[str], list[str]]:
        """All answers' count and a deterministic pseudo-random sample (ids, texts)."""
        total = int(
            await self._pool.fetchval(
                "SELECT count(*) FROM snapshot_answers WHERE report_id = $1"
                " AND question_id = $2 AND text IS NOT NULL",
                report_id,
                question_id,
            )
        )
        # The md5 order bounds time and memory for huge surveys, identically on every retry.
        rows = await self._pool.fetch(
            "SELECT response_id, text FROM snapshot_answers WHERE report_id = $1"
            " AND question_id = $2 AND text IS NOT NULL ORDER BY md5(response_id), response_id"
            " LIMIT $3",
            report_id,
            question_id,
            MAX_THEME_DOCUMENTS if self._openai() is None else MAX_AI_THEME_DOCUMENTS,
        )
        return total, [r["response_id"] for r in rows], [r["text"] for r in rows]

    async def _local_themes(
        self, ids: list[str], texts: list[str]
    ) -> tuple[list[Theme], np.ndarray | None]:
        extractor = self._theme_extractor()
        found = await asyncio.to_thread(extractor.extract, texts, max(2, min(8, len(texts) // 25)))
        scores = None
        if found:
            scores = await asyncio.to_thread(self._sentiment_analyzer().score, texts)
        return found, scores

    @staticmethod
    def _ai_themes(result: ThemeResult, evidence: int = 3) -> list[Theme]:
        themes = []
        for k, th in enumerate(result.themes):
            members = np.flatnonzero(result.theme == k)
            if members.size == 0:
                continue
            order = members[np.lexsort((members, -result.relevance[members]))]
            themes.append(
                Theme(
                    name=th.name.strip()[:80],
                    description=th.description.strip()[:300],
                    terms=[t.strip() for t in th.keywords][:5],
                    members=[int(i) for i in members],
                    evidence=[int(i) for i in order[:evidence]],
                    strength=float(result.relevance[members].mean()),
                )
            )
        themes.sort(key=lambda t: (-len(t.members), t.name))
        return themes

    @activity.defn(name=models.THEMES)
    async def extract_themes(self, inp: StageInput) -> StageSummary:
        """Finds themes per free-text question and stores the ``themes`` component.

        With an OpenAI key the model names the themes and assigns the (sampled) answers;
        otherwise, or after a failure it cannot recover from, TF-IDF + NMF does.
        """
        ref = inp.report
        if "themes" in await self._existing_components(ref.report_id):
            return StageSummary(["themes"])
        await self._stage_started(ref.report_id, "themes", inp.progress_from)
        survey = await self._survey(ref.report_id)
        ai = self._openai()
        fallback: dict[str, str] = {}
        use_ai = ai is not None
        questions = []
        strengths: list[float] = []
        for q in self._questions(survey, ref, "free_text"):
            total, ids, texts = await self._theme_sample(ref.report_id, q["id"])
            found: list[Theme] = []
            scores: np.ndarray | None = None
            if use_ai and ai is not None:
                try:
                    result = await ai.themes(texts)
                    found, scores = self._ai_themes(result), result.sentiment
                except AIError as err:
                    fallback = self._fallback(err, ai.name)
                    # Questions already done by the model are redone locally, so the
                    # whole component comes from one analyzer.
                    return await self._themes_locally(inp, survey, fallback)
            else:
                found, scores = await self._local_themes(ids, texts)
            activity.heartbeat(q["id"])
            strengths.extend(t.strength for t in found)
            questions.append(self._theme_question(q, total, ids, texts, found, scores))
        if ai is not None and use_ai:
            provenance = {
                "analyzer": ai.name,
                "prompt_version": THEMES_PROMPT_VERSION,
                "sentiment_analyzer": ai.name,
            }
        else:
            provenance = self._local_theme_provenance()
        return await self._store_themes(inp, provenance, questions, strengths)

    async def _themes_locally(
        self, inp: StageInput, survey: dict[str, Any], fallback: dict[str, str]
    ) -> StageSummary:
        ref = inp.report
        questions = []
        strengths: list[float] = []
        for q in self._questions(survey, ref, "free_text"):
            total, ids, texts = await self._theme_sample(ref.report_id, q["id"])
            found, scores = await self._local_themes(ids, texts)
            activity.heartbeat(q["id"])
            strengths.extend(t.strength for t in found)
            questions.append(self._theme_question(q, total, ids, texts, found, scores))
        provenance = {**self._local_theme_provenance(), **fallback}
        return await self._store_themes(inp, provenance, questions, strengths)

    def _local_theme_provenance(self) -> dict[str, Any]:
        extractor = self._theme_extractor()
        return {
            "analyzer": extractor.name,
            "prompt_version": extractor.prompt_version,
            "sentiment_analyzer": self._sentiment_analyzer().name,
            "random_state": getattr(extractor, "random_state", None),
        }

    @staticmethod
    def _theme_question(
        q: dict[str, Any],
        total: int,
        ids: list[str],
        texts: list[str],
        found: list[Theme],
        scores: np.ndarray | None,
    ) -> dict[str, Any]:
        return {
            "question_id": q["id"],
            "text": q["text"],
            "answers": total,
            "sampled": len(texts),
            "unassigned": len(texts) - sum(len(t.members) for t in found),
            "themes": themes_component(found, ids, texts, scores, total_documents=len(texts)),
        }

    async def _store_themes(
        self,
        inp: StageInput,
        provenance: dict[str, Any],
        questions: list[dict[str, Any]],
        strengths: list[float],
    ) -> StageSummary:
        confidence = float(np.mean(strengths)) if strengths else 0.0
        component = {
            "provenance": {**provenance, "confidence": confidence},
            "confidence": confidence,
            "questions": questions,
        }
        await self._store(
            inp.report.report_id,
            "themes",
            component,
            self._stage_completed("themes", inp.progress_to),
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
                ref.report_id, ["basic_stats", "nps", "csat", "sentiment", "segments", "themes"]
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
            "fallback_from": sentiment["provenance"].get("fallback_from"),
        }
    # The strongest differences that survive the multiple-comparison correction: which
    # group differs from the rest, on which question, by how much.
    findings = []
    segments = parts.get("segments") or {}
    for seg in segments.get("segments", []):
        for q in seg.get("questions", []):
            for c in q.get("comparisons", []):
                if c.get("significant") and c.get("effect_size") is not None:
                    findings.append(
                        {
                            "attribute": seg["attribute"],
                            "group": c["group"],
                            "versus": c["versus"],
                            "question_id": q["question_id"],
                            "test": c["test"],
                            "p_adjusted": c.get("p_adjusted"),
                            "effect_size": c["effect_size"],
                            "effect_size_name": c["effect_size_name"],
                        }
                    )
    findings.sort(key=lambda f: -abs(f["effect_size"]))
    head["significant_differences"] = findings[:5]
    head["correction"] = segments.get("correction")
    themes = parts.get("themes")
    if themes:
        head["themes_analyzer"] = themes["provenance"]["analyzer"]
    return head
