"""``SurveyMeshClient``: a typed asyncio client of the three SurveyMesh services.

Example::

    from surveymesh.client import SurveyMeshClient

    async with SurveyMeshClient.from_env() as client:  # SURVEYMESH_TOKEN, *_ADDRESS
        survey = await client.create_survey(my_survey)
        await client.import_responses(survey.id, responses)
        report = await client.generate_report(survey.id, kind="full")
        async for event in client.watch_report(report.id):
            print(event.progress_percent, event.stage)
        await client.render_report(report.id, "pdf", "report.pdf")

Every call has a deadline (``timeout``, 10 s by default; imports and renderings longer).
UNAVAILABLE is retried with exponential backoff and jitter within that deadline; only
calls that are safe to repeat are retried (the mutations carry a ``request_id`` made once
per logical call, so a retry can never create a second survey or report). Streams
(``watch_report``, ``watch_notifications``, ``stream_responses``) reconnect after UNAVAILABLE
or a dropped connection and resume where they stopped, using the resume positions of the
API, so the caller sees every item exactly once.

Failures raise :class:`SurveyMeshError` with the status code, the ``ErrorInfo`` reason and
the field violations of the ``google.rpc`` details.

The retries are done here rather than by a gRPC service-config ``retryPolicy``: a service
config gives up at once while a channel is in TRANSIENT_FAILURE (the usual state while a
server restarts) and cannot resume server streams, whereas this loop honours one overall
deadline and shares its backoff with the stream reconnects.
"""

# ASYNC109: ``timeout`` here is the gRPC deadline sent to the server (and shared by the
# retries), which asyncio.timeout cannot express.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from surveymesh.auth import bearer_metadata
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.errors import FieldViolation, error_details
from surveymesh.notification.v1 import notification_pb2
from surveymesh.notification.v1 import notification_service_pb2 as npb
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
IMPORT_TIMEOUT = 600.0
RENDER_TIMEOUT = 300.0
TOKEN_ENV = "SURVEYMESH_TOKEN"

E = report_pb2.ReportEventType
TERMINAL_EVENTS = frozenset(
    {E.REPORT_EVENT_TYPE_COMPLETED, E.REPORT_EVENT_TYPE_FAILED, E.REPORT_EVENT_TYPE_CANCELLED}
)
KINDS = {"quick": report_pb2.REPORT_KIND_QUICK, "full": report_pb2.REPORT_KIND_FULL}
FORMATS = {
    "html": report_pb2.RENDER_FORMAT_HTML,
    "pdf": report_pb2.RENDER_FORMAT_PDF,
    "csv": report_pb2.RENDER_FORMAT_CSV,
    "json": report_pb2.RENDER_FORMAT_JSON,
}

# Reconnect quickly to a restarted server: gRPC's default first reconnect backoff is 1 s
# and grows to 120 s, far longer than a rolling restart of a service.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
)


class SurveyMeshError(Exception):
    """A call failed: the gRPC status with its ``google.rpc`` details.

    Attributes:
        code: The status code, such as ``grpc.StatusCode.NOT_FOUND``.
        reason: The stable ``ErrorInfo.reason``, such as ``REPORT_NOT_FOUND`` (may be empty
            for failures that never reached a SurveyMesh server, such as UNAVAILABLE).
        message: The status message.
        violations: Field violations of a ``BadRequest`` detail (INVALID_ARGUMENT).
        retry_after: Seconds to wait before retrying, when the server said.
        domain: The ``ErrorInfo.domain`` (``surveymesh.reporting`` …).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        retry_after: float | None = None,
        domain: str = "",
    ) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        self.violations = tuple(violations)
        self.retry_after = retry_after
        self.domain = domain
        super().__init__(self.one_line())

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> SurveyMeshError:
        """Decodes a failed call's status and details."""
        d = error_details(err)
        return cls(
            d.code,
            d.reason,
            d.message,
            d.violations,
            retry_after=d.retry_after,
            domain=d.domain,
        )

    def one_line(self) -> str:
        """``NOT_FOUND REPORT_NOT_FOUND: no report … [field: description (REASON); …]``."""
        head = self.code.name + (f" {self.reason}" if self.reason else "")
        text = f"{head}: {self.message}" if self.message else head
        if self.violations:
            parts = [
                f"{v.field}: {v.description}" + (f" ({v.reason})" if v.reason else "")
                for v in self.violations
            ]
            text += " [" + "; ".join(parts) + "]"
        return text


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for UNAVAILABLE.

    Attributes:
        max_attempts: Attempts in all (unary calls) or consecutive failed reconnects without
            progress (streams).
        initial_backoff: Delay before the second attempt, in seconds.
        max_backoff: Cap of the delay.
        multiplier: Growth of the delay per attempt.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` (≥ 1) consecutive failures: half fixed, half random,
        so that many clients cut off together do not come back together."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        return base / 2 + random.random() * base / 2


# Streams get more patience than single calls: a watch should survive a server restart.
DEFAULT_RECONNECT = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=5.0)


@dataclass(frozen=True)
class RenderedFile:
    """A report rendering written to disk."""

    path: Path
    content_type: str
    filename: str
    size: int


def _enum(value: int | str, names: Mapping[str, int], what: str) -> int:
    if isinstance(value, str):
        try:
            return names[value.lower()]
        except KeyError:
            raise ValueError(f"{what} must be one of {', '.join(names)}, got {value!r}") from None
    return value


class SurveyMeshClient:
    """Typed async access to DeliveryService, ReportingService and NotificationService.

    Args:
        reporting_address: ``host:port`` of ReportingService.
        delivery_address: ``host:port`` of DeliveryService.
        notification_address: ``host:port`` of NotificationService.
        token: Bearer token (a JWT) sent with every call; see ``surveymesh token``.
        timeout: Default deadline of a unary call in seconds.
        retry: Backoff for unary calls.
        reconnect: Backoff for stream reconnects.
        credentials: TLS credentials; ``None`` uses plaintext (the embedded mesh).
    """

    def __init__(
        self,
        *,
        reporting_address: str = "localhost:50051",
        delivery_address: str = "localhost:50052",
        notification_address: str = "localhost:50053",
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        reconnect: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.addresses = {
            "reporting": reporting_address,
            "delivery": delivery_address,
            "notification": notification_address,
        }
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.reconnect = reconnect or DEFAULT_RECONNECT
        self._metadata = bearer_metadata(token) if token else ()
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    @classmethod
    def from_env(
        cls,
        settings: Settings | None = None,
        *,
        token: str | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> SurveyMeshClient:
        """A client configured like every SurveyMesh process: ``SURVEYMESH_*_ADDRESS`` (or the
        default local ports), the TLS settings (``SURVEYMESH_TLS_CA`` …) and the token in
        ``SURVEYMESH_TOKEN`` unless one is given.

        Raises:
            ConfigError: the TLS settings are incomplete or a PEM file cannot be read.
        """
        from surveymesh.channels import channel_credentials

        environ = os.environ if env is None else env
        settings = settings or Settings.from_env(dict(environ))
        # TLS as every process of the mesh does it: SURVEYMESH_TLS_CA (+ a client certificate
        # for mTLS); plaintext when none is configured and SURVEYMESH_PLAINTEXT allows it.
        kwargs.setdefault("credentials", channel_credentials(settings))
        return cls(
            reporting_address=settings.peer("reporting"),
            delivery_address=settings.peer("delivery"),
            notification_address=settings.peer("notification"),
            token=token if token is not None else environ.get(TOKEN_ENV, ""),
            **kwargs,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _channel(self, service: str) -> grpc.aio.Channel:
        # Channels are made on first use so that they bind to the running event loop.
        channel = self._channels.get(service)
        if channel is None:
            address = self.addresses[service]
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(address, CHANNEL_OPTIONS)
            self._channels[service] = channel
        return channel

    @property
    def delivery(self) -> dgrpc.DeliveryServiceStub:
        """The raw DeliveryService stub (for calls this class does not wrap)."""
        return dgrpc.DeliveryServiceStub(self._channel("delivery"))

    @property
    def reporting(self) -> rgrpc.ReportingServiceStub:
        """The raw ReportingService stub."""
        return rgrpc.ReportingServiceStub(self._channel("reporting"))

    @property
    def notification(self) -> ngrpc.NotificationServiceStub:
        """The raw NotificationService stub."""
        return ngrpc.NotificationServiceStub(self._channel("notification"))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata (the bearer token) of every call."""
        return self._metadata

    async def close(self) -> None:
        """Closes the channels; in-flight calls are cancelled."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        invoke: Callable[[float], Awaitable[T]],
        timeout: float | None,
        *,
        retry: bool = True,
    ) -> T:
        """Runs ``invoke(remaining_seconds)`` until it succeeds, retrying UNAVAILABLE with
        backoff while attempts and the overall deadline last."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        failures = 0
        while True:
            try:
                return await invoke(max(0.001, deadline - loop.time()))
            except grpc.aio.AioRpcError as e:
                failures += 1
                if (
                    not retry
                    or e.code() != grpc.StatusCode.UNAVAILABLE
                    or failures >= self.retry.max_attempts
                ):
                    raise SurveyMeshError.from_rpc_error(e) from e
                pause = self.retry.delay(failures)
                if loop.time() + pause >= deadline:
                    raise SurveyMeshError.from_rpc_error(e) from e
                log.debug("UNAVAILABLE (%s); retrying in %.2fs", e.details(), pause)
                await asyncio.sleep(pause)

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        return await self._call(
            lambda remaining: method(request, metadata=self._metadata, timeout=remaining), timeout
        )

    async def _pages(
        self, fetch: Callable[[str], Awaitable[Any]], items: str
    ) -> AsyncIterator[Any]:
        token = ""
        while True:
            page = await fetch(token)
            for item in getattr(page, items):
                yield item
            token = page.next_page_token
            if not token:
                return

    async def _resumable(
        self, open_stream: Callable[[], Any], *, reconnect_on_end: bool
    ) -> AsyncGenerator[Any, None]:
        """Yields the messages of the server stream ``open_stream()`` opens, opening it again
        after UNAVAILABLE (and, with ``reconnect_on_end``, after an end the caller did not
        ask for: a server shutting down ends its streams cleanly).

        ``open_stream`` builds its request from the caller's resume position, which the
        caller advances as it consumes messages, so a reopened stream continues where the
        caller stopped. Any message resets the failure count; ``reconnect.max_attempts``
        failures in a row raise :class:`SurveyMeshError`.
        """
        failures = 0
        while True:
            call = open_stream()
            last_error: grpc.aio.AioRpcError | None = None
            try:
                async for message in call:
                    failures = 0
                    yield message
                if not reconnect_on_end:
                    return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise SurveyMeshError.from_rpc_error(e) from e
                last_error = e
            finally:
                call.cancel()
            failures += 1
            log.debug("stream dropped (%s); reopening", last_error and last_error.details())
            await self._backoff_or_raise(failures, last_error)

    async def _backoff_or_raise(self, failures: int, last: grpc.aio.AioRpcError | None) -> None:
        """Waits before a stream reconnect, or gives up after too many failures in a row."""
        if failures >= self.reconnect.max_attempts:
            if last is not None:
                raise SurveyMeshError.from_rpc_error(last) from last
            raise SurveyMeshError(
                grpc.StatusCode.UNAVAILABLE, "", "the stream kept ending before it was done"
            )
        await asyncio.sleep(self.reconnect.delay(failures))

    # -- DeliveryService ---------------------------------------------------------------------

    async def create_survey(
        self,
        survey: survey_pb2.Survey,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> survey_pb2.Survey:
        """Creates a survey; retried safely with one ``request_id`` (a new UUID by default)."""
        request = dpb.CreateSurveyRequest(survey=survey, request_id=request_id or str(uuid.uuid4()))
        resp = await self._unary(self.delivery.CreateSurvey, request, timeout)
        return resp.survey  # type: ignore[no-any-return]

    async def get_survey(
        self, survey_id: str, *, timeout: float | None = None
    ) -> survey_pb2.Survey:
        """Returns one survey with its questions and response count."""
        resp = await self._unary(
            self.delivery.GetSurvey, dpb.GetSurveyRequest(survey_id=survey_id), timeout
        )
        return resp.survey  # type: ignore[no-any-return]

    def list_surveys(self, *, page_size: int = 0) -> AsyncIterator[survey_pb2.Survey]:
        """Yields the organization's surveys, newest first, fetching pages as needed."""
        return self._pages(
            lambda token: self._unary(
                self.delivery.ListSurveys,
                dpb.ListSurveysRequest(page_size=page_size, page_token=token),
                None,
            ),
            "surveys",
        )

    async def import_responses(
        self,
        survey_id: str,
        responses: Iterable[response_pb2.Response] | AsyncIterable[response_pb2.Response],
        *,
        batch_size: int = 1000,
        timeout: float | None = IMPORT_TIMEOUT,
    ) -> dpb.ImportResponsesResponse:
        """Streams responses to a survey in batches and returns what happened to every row.

        Importing is idempotent per response id, so a sequence (list, tuple) is re-sent
        whole after UNAVAILABLE; a one-shot iterator or async iterable is not retried.

        Args:
            survey_id: The survey.
            responses: The responses, in any quantity.
            batch_size: Responses per stream message (at most 5,000).
            timeout: Deadline of the whole import.

        Returns:
            Accepted, duplicate and rejected counts; ``rejections[i].row`` is the position of
            the row in ``responses``.
        """
        if not 1 <= batch_size <= 5000:
            raise ValueError("batch_size must be between 1 and 5000")

        async def messages() -> AsyncIterator[dpb.ImportResponsesRequest]:
            batch: list[response_pb2.Response] = []
            first = True

            def message() -> dpb.ImportResponsesRequest:
                nonlocal first
                m = dpb.ImportResponsesRequest(survey_id=survey_id, responses=batch)
                first = False
                return m

            if isinstance(responses, AsyncIterable):
                async for r in responses:
                    batch.append(r)
                    if len(batch) >= batch_size:
                        yield message()
                        batch = []
            else:
                for r in responses:
                    batch.append(r)
                    if len(batch) >= batch_size:
                        yield message()
                        batch = []
            if batch or first:
                yield message()

        retry = isinstance(responses, Sequence)
        return await self._call(  # type: ignore[no-any-return]
            lambda remaining: self.delivery.ImportResponses(
                messages(), metadata=self._metadata, timeout=remaining
            ),
            timeout,
            retry=retry,
        )

    async def stream_responses(
        self,
        survey_id: str,
        *,
        batch_size: int = 0,
        completed_only: bool = False,
    ) -> AsyncIterator[response_pb2.Response]:
        """Yields a survey's responses in id order, from one consistent snapshot; resumes
        after a dropped connection from the last id seen."""
        after, watermark = "", 0

        def open_stream() -> Any:
            return self.delivery.StreamResponses(
                dpb.StreamResponsesRequest(
                    survey_id=survey_id,
                    after_response_id=after,
                    batch_size=batch_size,
                    snapshot_watermark=watermark,
                    completed_only=completed_only,
                ),
                metadata=self._metadata,
            )

        async with aclosing(self._resumable(open_stream, reconnect_on_end=False)) as messages:
            async for message in messages:
                watermark = message.snapshot_watermark
                for r in message.responses:
                    after = r.id
                    yield r

    # -- ReportingService --------------------------------------------------------------------

    async def generate_report(
        self,
        survey_id: str,
        *,
        kind: int | str = "quick",
        options: report_pb2.ReportOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> report_pb2.Report:
        """Starts a report (``kind`` ``"quick"`` or ``"full"``) and returns it, QUEUED.

        ``request_id`` makes the request idempotent; by default a new UUID is made once and
        reused by the retries of this call.
        """
        request = rpb.GenerateReportRequest(
            survey_id=survey_id,
            kind=_enum(kind, KINDS, "kind"),  # type: ignore[arg-type]
            options=options,
            request_id=request_id or str(uuid.uuid4()),
        )
        resp = await self._unary(self.reporting.GenerateReport, request, timeout)
        return resp.report  # type: ignore[no-any-return]

    async def generate_reports(
        self,
        survey_ids: Sequence[str],
        *,
        kind: int | str = "quick",
        options: report_pb2.ReportOptions | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> rpb.GenerateReportsResponse:
        """Starts one batch of reports, one per survey."""
        request = rpb.GenerateReportsRequest(
            survey_ids=list(survey_ids),
            kind=_enum(kind, KINDS, "kind"),  # type: ignore[arg-type]
            options=options,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._unary(self.reporting.GenerateReports, request, timeout)  # type: ignore[no-any-return]

    async def get_report(
        self,
        report_id: str,
        *,
        view: int = report_pb2.REPORT_VIEW_FULL,
        timeout: float | None = None,
    ) -> report_pb2.Report:
        """Returns a report (FULL view by default: with the data of its components)."""
        resp = await self._unary(
            self.reporting.GetReport,
            rpb.GetReportRequest(report_id=report_id, view=view),  # type: ignore[arg-type]
            timeout,
        )
        return resp.report  # type: ignore[no-any-return]

    async def get_report_component(
        self, report_id: str, component_type: str, *, timeout: float | None = None
    ) -> report_pb2.Component:
        """Returns one component; its ``data`` is a UTF-8 JSON document."""
        resp = await self._unary(
            self.reporting.GetReportComponent,
            rpb.GetReportComponentRequest(report_id=report_id, component_type=component_type),
            timeout,
        )
        return resp.component  # type: ignore[no-any-return]

    def list_reports(
        self,
        *,
        survey_id: str = "",
        state: int = report_pb2.REPORT_STATE_UNSPECIFIED,
        batch_id: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[report_pb2.Report]:
        """Yields the organization's reports (BASIC view), newest first."""
        return self._pages(
            lambda token: self._unary(
                self.reporting.ListReports,
                rpb.ListReportsRequest(
                    page_size=page_size,
                    page_token=token,
                    survey_id=survey_id,
                    state=state,  # type: ignore[arg-type]
                    batch_id=batch_id,
                ),
                None,
            ),
            "reports",
        )

    async def cancel_report(
        self, report_id: str, *, reason: str = "", timeout: float | None = None
    ) -> report_pb2.Report:
        """Cancels a QUEUED or RUNNING report (a no-op for a cancelled one)."""
        resp = await self._unary(
            self.reporting.CancelReport,
            rpb.CancelReportRequest(report_id=report_id, reason=reason),
            timeout,
        )
        return resp.report  # type: ignore[no-any-return]

    async def watch_report(
        self, report_id: str, *, after_sequence: int = 0
    ) -> AsyncIterator[report_pb2.ReportEvent]:
        """Yields a report's progress events until (and including) its terminal event.

        After UNAVAILABLE or a stream that ends early (a server shutting down), the watch
        reconnects with the last sequence seen: no event is lost and none repeats. Gives up
        after ``reconnect.max_attempts`` failed reconnects in a row.
        """
        last = after_sequence

        def open_stream() -> Any:
            return self.reporting.WatchReport(
                rpb.WatchReportRequest(report_id=report_id, after_sequence=last),
                metadata=self._metadata,
            )

        async with aclosing(self._resumable(open_stream, reconnect_on_end=True)) as messages:
            async for message in messages:
                event = message.event
                if event.sequence <= last:
                    continue  # never hand the caller an event twice
                last = event.sequence
                yield event
                if event.type in TERMINAL_EVENTS:
                    return

    async def wait_for_report(
        self,
        report_id: str,
        *,
        on_event: Callable[[report_pb2.ReportEvent], None] | None = None,
    ) -> report_pb2.Report:
        """Follows a report to its end and returns it (FULL view)."""
        async for event in self.watch_report(report_id):
            if on_event is not None:
                on_event(event)
        return await self.get_report(report_id)

    async def render_report(
        self,
        report_id: str,
        format: int | str,
        path: str | Path,
        *,
        timeout: float | None = RENDER_TIMEOUT,
    ) -> RenderedFile:
        """Renders a COMPLETED report (``"pdf"``, ``"html"``, ``"csv"`` zip or ``"json"``)
        into ``path``, written whole or not at all (a ``.part`` file is renamed at the end)."""
        fmt = _enum(format, FORMATS, "format")
        target = Path(path)
        partial = target.with_name(target.name + ".part")

        async def attempt(remaining: float) -> RenderedFile:
            call = self.reporting.RenderReport(
                rpb.RenderReportRequest(report_id=report_id, format=fmt),  # type: ignore[arg-type]
                metadata=self._metadata,
                timeout=remaining,
            )
            content_type = filename = ""
            total = written = 0
            try:
                with partial.open("wb") as out:
                    async for message in call:
                        if written == 0 and not content_type:
                            content_type, filename = message.content_type, message.filename
                            total = message.total_size
                        if message.offset != written:
                            raise SurveyMeshError(
                                grpc.StatusCode.DATA_LOSS,
                                "RENDER_OFFSET_MISMATCH",
                                f"chunk at offset {message.offset}, expected {written}",
                            )
                        out.write(message.chunk)
                        written += len(message.chunk)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            if total and written != total:
                partial.unlink(missing_ok=True)
                raise SurveyMeshError(
                    grpc.StatusCode.DATA_LOSS,
                    "RENDER_TRUNCATED",
                    f"got {written} of {total} bytes",
                )
            partial.replace(target)
            return RenderedFile(target, content_type, filename, written)

        return await self._call(attempt, timeout)

    # -- NotificationService -----------------------------------------------------------------

    def list_notifications(
        self, *, unread_only: bool = False, page_size: int = 0
    ) -> AsyncIterator[notification_pb2.Notification]:
        """Yields the caller's notifications, newest first."""
        return self._pages(
            lambda token: self._unary(
                self.notification.ListNotifications,
                npb.ListNotificationsRequest(
                    page_size=page_size, page_token=token, unread_only=unread_only
                ),
                None,
            ),
            "notifications",
        )

    async def watch_notifications(
        self, *, after_sequence: int = 0
    ) -> AsyncIterator[notification_pb2.Notification]:
        """Yields the caller's notifications as they arrive (forever), reconnecting after
        UNAVAILABLE from the last sequence seen."""
        last = after_sequence

        def open_stream() -> Any:
            return self.notification.WatchNotifications(
                npb.WatchNotificationsRequest(after_sequence=last), metadata=self._metadata
            )

        async with aclosing(self._resumable(open_stream, reconnect_on_end=True)) as messages:
            async for message in messages:
                n = message.notification
                if n.sequence and n.sequence <= last:
                    continue
                last = max(last, n.sequence)
                yield n

    async def mark_notification_read(
        self, notification_id: str, *, timeout: float | None = None
    ) -> notification_pb2.Notification:
        """Marks a notification read (idempotent)."""
        resp = await self._unary(
            self.notification.MarkNotificationRead,
            npb.MarkNotificationReadRequest(notification_id=notification_id),
            timeout,
        )
        return resp.notification  # type: ignore[no-any-return]

    async def create_webhook(
        self,
        url: str,
        *,
        event_types: Sequence[str] = ("report.*",),
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> tuple[notification_pb2.WebhookEndpoint, str]:
        """Registers a webhook endpoint; returns it and its signing secret (shown once)."""
        resp = await self._unary(
            self.notification.CreateWebhookEndpoint,
            npb.CreateWebhookEndpointRequest(
                url=url,
                event_types=list(event_types),
                description=description,
                request_id=request_id or str(uuid.uuid4()),
            ),
            timeout,
        )
        return resp.endpoint, resp.secret

    def list_webhooks(
        self, *, page_size: int = 0
    ) -> AsyncIterator[notification_pb2.WebhookEndpoint]:
        """Yields the organization's webhook endpoints."""
        return self._pages(
            lambda token: self._unary(
                self.notification.ListWebhookEndpoints,
                npb.ListWebhookEndpointsRequest(page_size=page_size, page_token=token),
                None,
            ),
            "endpoints",
        )

    async def delete_webhook(self, endpoint_id: str, *, timeout: float | None = None) -> None:
        """Deletes a webhook endpoint."""
        await self._unary(
            self.notification.DeleteWebhookEndpoint,
            npb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
            timeout,
        )
