"""Telemetry of every SurveyMesh process: traces, Prometheus metrics and ids in log lines.

One call per process, :func:`setup_telemetry`, turns everything on:

Traces (OpenTelemetry SDK):
    - gRPC servers: ``opentelemetry-instrumentation-grpc``'s asyncio server interceptor
      (mounted by :func:`surveymesh.grpcserver.start_server` through
      :func:`server_interceptors`), which continues the caller's W3C ``traceparent``.
    - gRPC clients: every ``grpc.aio`` channel opened after set-up carries the package's
      client interceptors, which inject ``traceparent`` into the call metadata.
    - Temporal: :func:`temporal_interceptors` (``TracingInterceptor``) on the Reporting
      client and the worker carries the trace through the workflow into each activity.
    - PostgreSQL: a span around each asyncpg query made inside a traced operation.

    So one ``GenerateReport`` call is one trace: Reporting → StartWorkflow → RunWorkflow →
    StartActivity/RunActivity → DeliveryService / NotificationService → their queries.

    The exporter follows the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``,
    ``console``, ``file`` or ``none``); by default OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, else in development
    (``SURVEYMESH_DEV_MODE``) JSON lines in ``<data_dir>/traces/<service>.jsonl``, else
    none (ids are still made, so log lines still carry them). ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_SDK_DISABLED`` work as
    everywhere.

Metrics (``prometheus-client``), served at ``http://<bind_host>:<SURVEYMESH_METRICS_PORT>/metrics``
(0 turns the endpoint off): RPCs by method and code with their latency, reports started /
completed / failed / cancelled by kind, report and stage durations, WatchReport
subscribers, notification deliveries by channel and outcome, webhook latency. The worker
also serves the Temporal SDK's own metrics (task-queue schedule-to-start latency, sticky
cache, pollers…) on ``SURVEYMESH_TEMPORAL_METRICS_PORT`` through :func:`temporal_runtime`.

Logs: :class:`LogContextFilter` adds ``trace_id``, ``span_id``, ``report_id`` and
``org_id`` to each record (``SURVEYMESH_LOG_FORMAT=json`` prints them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import prometheus_client
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.trace import SpanKind, Status, StatusCode

from surveymesh.config import ConfigError, Settings

if TYPE_CHECKING:
    import temporalio.client
    import temporalio.worker

log = logging.getLogger(__name__)

# Probes and API discovery: neither traced nor counted (a probe every few seconds would
# drown the real traffic).
UNOBSERVED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# -- metrics -----------------------------------------------------------------------------

# Latency buckets: RPCs from 1 ms to a minute; reports and stages from 100 ms to an hour.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LONG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

RPC_HANDLED = prometheus_client.Counter(
    "surveymesh_rpc_server_handled",
    "RPCs completed by the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_DURATION = prometheus_client.Histogram(
    "surveymesh_rpc_server_handling_seconds",
    "Server-side RPC latency (streams: until the last message), by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=_RPC_BUCKETS,
)
REPORTS_STARTED = prometheus_client.Counter(
    "surveymesh_reports_started", "Report workflows that began running, by kind.", ["kind"]
)
REPORTS_COMPLETED = prometheus_client.Counter(
    "surveymesh_reports_completed", "Reports that ended COMPLETED, by kind.", ["kind"]
)
REPORTS_FAILED = prometheus_client.Counter(
    "surveymesh_reports_failed", "Reports that ended FAILED, by kind.", ["kind"]
)
REPORTS_CANCELLED = prometheus_client.Counter(
    "surveymesh_reports_cancelled", "Reports that ended CANCELLED, by kind.", ["kind"]
)
REPORT_DURATION = prometheus_client.Histogram(
    "surveymesh_report_duration_seconds",
    "Time from a report's creation to its terminal state, by kind and outcome.",
    ["kind", "outcome"],
    buckets=_LONG_BUCKETS,
)
STAGE_DURATION = prometheus_client.Histogram(
    "surveymesh_report_stage_duration_seconds",
    "Duration of one attempt of a report activity (stage), by stage and outcome.",
    ["stage", "outcome"],
    buckets=_LONG_BUCKETS,
)
WATCH_SUBSCRIBERS = prometheus_client.Gauge(
    "surveymesh_watch_subscribers",
    "Open report progress subscriptions (WatchReport streams and viewer event streams).",
)
NOTIFICATION_DELIVERIES = prometheus_client.Counter(
    "surveymesh_notification_deliveries",
    "Notification delivery attempts by channel (in_app, email, webhook) and outcome "
    "(succeeded, retrying, failed).",
    ["channel", "outcome"],
)
WEBHOOK_DURATION = prometheus_client.Histogram(
    "surveymesh_webhook_duration_seconds",
    "Latency of webhook POSTs (one attempt), by outcome.",
    ["outcome"],
    buckets=_RPC_BUCKETS,
)


def record_delivery(channel: str, outcome: str, seconds: float | None = None) -> None:
    """Counts one notification delivery attempt (and times it, for webhooks).

    Args:
        channel: ``in_app``, ``email`` or ``webhook``.
        outcome: ``succeeded``, ``retrying`` or ``failed``.
        seconds: How long the attempt took.
    """
    NOTIFICATION_DELIVERIES.labels(channel=channel, outcome=outcome).inc()
    if channel == "webhook" and seconds is not None:
        WEBHOOK_DURATION.labels(outcome=outcome).observe(seconds)


def start_metrics_server(port: int, host: str = "localhost") -> tuple[Any, int]:
    """Serves the process's Prometheus metrics over HTTP (any path; ``/metrics`` by habit).

    Args:
        port: The port; 0 picks a free one (tests).
        host: The interface to bind.

    Returns:
        ``(server, bound_port)``; stop with ``server.shutdown()``.
    """
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    return server, int(server.server_port)


# -- log context -------------------------------------------------------------------------

_log_ids: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "surveymesh_log_ids", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**ids: str) -> Iterator[None]:
    """Adds ids (``report_id``, ``org_id``, ``workflow_id``) to every log line in the block."""
    token = _log_ids.set({**_log_ids.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _log_ids.reset(token)


class LogContextFilter(logging.Filter):
    """Puts the current trace and span id, report id and organization on each record.

    The ids come from the current OpenTelemetry span, :func:`log_context` and, inside an
    RPC, the authenticated caller. A record that already carries one (``extra=``) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        for key, value in _log_ids.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "org_id"):
            org = _caller_org()
            if org:
                record.org_id = org
        return True


def _caller_org() -> str | None:
    from surveymesh.auth import current_principal

    try:
        return current_principal().org or None
    except Exception:  # outside an authenticated call
        return None


# -- tracing -----------------------------------------------------------------------------


@dataclass
class _State:
    tracing: bool = False
    provider: TracerProvider | None = None
    grpc_client: Any = None
    asyncpg_originals: dict[str, Any] = field(default_factory=dict)


_state = _State()
_lock = threading.Lock()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one OTLP-like JSON object per line (development).

    Each line holds what the SDK's ``ReadableSpan.to_json`` holds, with the same keys and
    value forms. It is built here because ``to_json`` re-encodes the process's resource
    (with Python's slow indenting encoder) for every span, which made writing a span
    cost more than recording it.

    Args:
        path: The file; its directory is created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._resource: tuple[Resource, dict[str, Any]] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(self._line(s) + b"\n" for s in spans)
        try:
            with self._lock, self.path.open("ab") as out:
                out.write(lines)
        except OSError:
            log.warning("cannot write spans to %s", self.path, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _line(self, span: ReadableSpan) -> bytes:
        try:
            return orjson.dumps(self._as_json(span))
        except TypeError:  # a value orjson refuses (an integer beyond 64 bits): the SDK's way
            return span.to_json(indent=None).encode()

    def _resource_json(self, resource: Resource) -> dict[str, Any]:
        # One provider, one resource: encoded once.
        if self._resource is None or self._resource[0] is not resource:
            self._resource = (resource, orjson.loads(resource.to_json(indent=None)))
        return self._resource[1]

    def _as_json(self, span: ReadableSpan) -> dict[str, Any]:
        status: dict[str, Any] = {"status_code": span.status.status_code.name}
        if span.status.description:
            status["description"] = span.status.description
        return {
            "name": span.name,
            "context": _context_json(span.context) if span.context else None,
            "kind": str(span.kind),
            "parent_id": f"0x{span.parent.span_id:016x}" if span.parent is not None else None,
            "start_time": ns_to_iso_str(span.start_time) if span.start_time else None,
            "end_time": ns_to_iso_str(span.end_time) if span.end_time else None,
            "status": status,
            "attributes": _attributes_json(span.attributes),
            "events": [
                {
                    "name": e.name,
                    "timestamp": ns_to_iso_str(e.timestamp),
                    "attributes": _attributes_json(e.attributes),
                }
                for e in span.events
            ],
            "links": [
                {"context": _context_json(k.context), "attributes": _attributes_json(k.attributes)}
                for k in span.links
            ],
            "resource": self._resource_json(span.resource),
        }

    def shutdown(self) -> None:
        """Nothing to release: each export opens and closes the file."""


def _context_json(context: trace.SpanContext) -> dict[str, str]:
    return {
        "trace_id": f"0x{context.trace_id:032x}",
        "span_id": f"0x{context.span_id:016x}",
        "trace_state": repr(context.trace_state),
    }


def _attributes_json(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if attributes is None else dict(attributes)


def trace_destination(
    settings: Settings, service: str, env: Mapping[str, str] | None = None
) -> str:
    """Where the spans of ``service`` go: ``otlp <endpoint>``, a file path, ``console`` or ``none``."""
    e = os.environ if env is None else env
    kind = _exporter_kind(settings, e)
    if kind == "otlp":
        endpoint = (
            e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or e.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or "http://localhost:4317"
        )
        return f"otlp {endpoint}"
    if kind == "file":
        return str(trace_file(settings, service))
    return kind


def trace_file(settings: Settings, service: str) -> Path:
    """The JSON-lines file the development exporter writes ``service``'s spans to."""
    return settings.data_dir.resolve() / "traces" / f"{service}.jsonl"


def _exporter_kind(settings: Settings, env: Mapping[str, str]) -> str:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "none"
    kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not kind:
        if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return "otlp"
        return "file" if settings.dev_mode else "none"
    if kind not in {"otlp", "console", "file", "none"}:
        raise ConfigError(f"OTEL_TRACES_EXPORTER must be otlp, console, file or none, got {kind!r}")
    return kind


def _span_exporter(settings: Settings, service: str, env: Mapping[str, str]) -> SpanExporter | None:
    kind = _exporter_kind(settings, env)
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter(service_name=f"surveymesh-{service}")
    if kind == "file":
        return JsonLinesSpanExporter(trace_file(settings, service))
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol != "grpc":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc (port 4317)"
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, TLS, timeout) itself.
    return OTLPSpanExporter()


def configure_tracing(
    settings: Settings,
    service: str,
    *,
    processor: SpanProcessor | None = None,
    env: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """Installs the process's tracer provider and instruments gRPC clients and asyncpg.

    Call it before opening channels and starting servers (those made earlier are not
    traced). Calling it again adds ``processor`` to the installed provider.

    Args:
        settings: The process settings (data dir and dev mode for the file exporter).
        service: ``reporting``, ``delivery``, ``notification`` or ``worker``.
        processor: A span processor to use instead of the environment's exporter (tests
            pass ``SimpleSpanProcessor(InMemorySpanExporter())``).
        env: The environment (default ``os.environ``).

    Returns:
        The provider, or ``None`` when ``OTEL_SDK_DISABLED=true``.
    """
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    with _lock:
        provider = _state.provider
        if provider is None:
            attributes: dict[str, str] = {"service.namespace": "surveymesh"}
            if not e.get("OTEL_SERVICE_NAME"):
                attributes["service.name"] = f"surveymesh-{service}"
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
            if not isinstance(trace.get_tracer_provider(), TracerProvider):
                raise RuntimeError("another tracer provider was installed before SurveyMesh's")
            _state.provider = provider
        if processor is None:
            exporter = _span_exporter(settings, service, e)
            if exporter is not None:
                processor = BatchSpanProcessor(exporter)
        if processor is not None:
            provider.add_span_processor(processor)
        if not _state.tracing:
            _instrument_grpc_clients()
            _instrument_asyncpg()
            _state.tracing = True
    return provider


def disable_tracing() -> None:
    """Removes the gRPC client and asyncpg instrumentation (tests); servers and Temporal
    clients created afterwards are not traced. The installed provider stays (OpenTelemetry
    allows only one per process)."""
    with _lock:
        if _state.grpc_client is not None:
            _state.grpc_client.uninstrument()
            _state.grpc_client = None
        _uninstrument_asyncpg()
        _state.tracing = False


def tracing_enabled() -> bool:
    """Whether :func:`configure_tracing` ran (and tracing was not disabled since)."""
    return _state.tracing


def _instrument_grpc_clients() -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    # Patches grpc.aio.insecure_channel/secure_channel, so every channel opened from now on
    # (surveymesh.channels, the worker's peers) injects `traceparent` without code of its own.
    instrumentor = GrpcAioInstrumentorClient()
    instrumentor.instrument()
    _state.grpc_client = instrumentor


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptors :func:`surveymesh.grpcserver.start_server` puts before its own.

    The tracing interceptor (when tracing is on) is outermost, so the span is current in
    everything below; the metrics interceptor follows, so it sees the final status code.
    """
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if _state.tracing:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        interceptors.append(
            aio_server_interceptor(
                filter_=filters.negate(
                    filters.any_of(
                        filters.service_prefix("grpc.health.v1"),
                        filters.service_prefix("grpc.reflection"),
                    )
                )
            )
        )
    interceptors.append(RpcTelemetryInterceptor())
    return interceptors


def http_middlewares() -> list[Any]:
    """aiohttp middlewares for the process's HTTP servers (the report viewer): when tracing
    is on, one SERVER span per request, named by its route and continuing the caller's
    ``traceparent``, so a page's queries and renderings join the trace that led to it.

    Put them first, so the span sees the status that error middlewares below set.
    """
    if not _state.tracing:
        return []
    from aiohttp import web
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, StatusCode

    tracer = trace.get_tracer(_TRACER_NAME)

    @web.middleware
    async def traced(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        with tracer.start_as_current_span(
            f"{request.method} {route}".strip(),
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
            },
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as e:
                span.set_attribute("http.response.status_code", e.status)
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            return response

    return [traced]


def temporal_interceptors() -> list[temporalio.client.Interceptor]:
    """Interceptors for ``Client.connect``: Temporal's ``TracingInterceptor`` when tracing
    is on (a worker built on that client inherits it), else none."""
    if not _state.tracing:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


# -- asyncpg spans -------------------------------------------------------------------------

# The Connection methods every query passes through (Pool methods delegate to them).
_ASYNCPG_METHODS = (
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "copy_records_to_table",
    "copy_to_table",
    "copy_from_query",
    "copy_from_table",
)
_TRACER_NAME = "surveymesh"


def _instrument_asyncpg() -> None:
    # Minimal spans of our own: the contrib asyncpg instrumentation pins another
    # OpenTelemetry release than the SDK and the gRPC instrumentation.
    import asyncpg.connection

    cls = asyncpg.connection.Connection
    for name in _ASYNCPG_METHODS:
        if name in _state.asyncpg_originals:
            continue
        original = getattr(cls, name)
        _state.asyncpg_originals[name] = original
        setattr(cls, name, _traced_query(name, original))


def _uninstrument_asyncpg() -> None:
    import asyncpg.connection

    for name, original in _state.asyncpg_originals.items():
        setattr(asyncpg.connection.Connection, name, original)
    _state.asyncpg_originals.clear()


def _traced_query(method: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    # copy_*_table take a table name, the others (copy_from_query too) a query.
    table_copy = method.startswith("copy_") and method.endswith("_table")

    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Only queries inside a traced operation: background polls (the outbox dispatcher,
        # LISTEN reconnects) would otherwise be a root trace each.
        if not trace.get_current_span().get_span_context().is_valid:
            return await original(self, *args, **kwargs)
        text = str(args[0]) if args else ""
        attributes = {"db.system": "postgresql", "db.system.name": "postgresql"}
        if table_copy:
            name = f"COPY {text}"
            attributes["db.collection.name"] = text
        else:
            verb = text.split(None, 1)[0].rstrip(";").upper() if text else method
            name = f"COPY ({verb})" if method == "copy_from_query" else verb
            attributes["db.query.text"] = text[:2000]
        attributes["db.operation.name"] = name.split(None, 1)[0]
        database = getattr(getattr(self, "_params", None), "database", None)
        if database:
            attributes["db.namespace"] = str(database)
        with _query_tracer().start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ):
            return await original(self, *args, **kwargs)

    return traced


@functools.cache
def _query_tracer() -> trace.Tracer:
    # get_tracer builds a new Tracer on every call, which cost as much as half a span; first
    # used inside a traced operation, so after the process's provider is installed.
    return trace.get_tracer(_TRACER_NAME)


# -- gRPC server metrics -------------------------------------------------------------------


class RpcTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by method and final status code.

    It also completes the server span the tracing interceptor opened (the status code,
    including the ones ``abort_with_status`` sets, which that interceptor does not see; the
    report and organization ids) and binds the request's ``report_id`` for log lines.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method_path: str = details.method
        if handler is None or method_path.startswith(UNOBSERVED_PREFIXES):
            return handler
        service, _, method = method_path.lstrip("/").rpartition("/")
        return _observed(handler, service, method)


def _observed(handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
    def finish(
        context: grpc.aio.ServicerContext, started: float, error: BaseException | None
    ) -> None:
        code = _final_code(context, error)
        RPC_HANDLED.labels(service, method, code.name).inc()
        RPC_DURATION.labels(service, method, code.name).observe(time.perf_counter() - started)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            org = _caller_org()
            if org:
                span.set_attribute("surveymesh.org_id", org)
            if code in _SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, code.name))

    def bind(request: Any) -> contextvars.Token[Mapping[str, str]] | None:
        report_id = getattr(request, "report_id", "")
        if isinstance(report_id, str) and report_id:
            trace.get_current_span().set_attribute("surveymesh.report_id", report_id)
            return _log_ids.set({**_log_ids.get(), "report_id": report_id})
        return None

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary
        client_streaming = handler.stream_unary is not None

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            token = None if client_streaming else bind(request)
            error: BaseException | None = None
            try:
                response = await inner(request, context)
                # GenerateReport: the new report's id, so its trace can be found by it.
                report_id: Any = getattr(getattr(response, "report", None), "id", None)
                if isinstance(report_id, str) and report_id:
                    trace.get_current_span().set_attribute("surveymesh.report_id", report_id)
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, started, error)
                if token is not None:
                    _log_ids.reset(token)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        behavior: Any = unary_response
    else:
        inner = handler.unary_stream or handler.stream_stream
        client_streaming = handler.stream_stream is not None

        async def stream_response(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            token = None if client_streaming else bind(request)
            error: BaseException | None = None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, started, error)
                if token is not None:
                    with contextlib.suppress(ValueError):  # generator closed in another context
                        _log_ids.reset(token)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        behavior = stream_response
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# Codes that are the server's fault (OpenTelemetry's semantic conventions for server spans);
# a NOT_FOUND or INVALID_ARGUMENT is the client's and leaves the span unset.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    import asyncio

    code = None
    with contextlib.suppress(Exception):
        code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if error is None or isinstance(error, GeneratorExit):
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


# -- Temporal worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportLifecycle:
    """Which activities mark a report's start and end, for the report counters.

    Attributes:
        started: The first activity of a report workflow (counted on its first attempt).
        completed: The activity that stores the COMPLETED event.
        failed: The activity that stores the FAILED event.
        cancelled: The activity that stores the CANCELLED event.
        kinds: Report kind per workflow type.
        duration: Looks up a report's age in seconds (creation to terminal state).
    """

    started: str
    completed: str
    failed: str
    cancelled: str
    kinds: Mapping[str, str]
    duration: Callable[[str], Awaitable[float | None]] | None = None


def worker_interceptor(lifecycle: ReportLifecycle) -> temporalio.worker.Interceptor:
    """The worker interceptor: stage durations, report counters, log and span ids.

    Pass it in ``Worker(interceptors=[...])``. Each activity attempt is timed by its type
    and outcome; the ``lifecycle`` activities move the report counters.
    """
    return _worker_classes()[0](lifecycle)


@functools.cache
def _worker_classes() -> tuple[type[Any], type[Any]]:
    # Built on first use: temporalio is a heavy import that the CLI and services need not pay.
    import temporalio.activity
    import temporalio.worker

    class WorkerTelemetry(temporalio.worker.Interceptor):
        def __init__(self, lifecycle: ReportLifecycle) -> None:
            self.lifecycle = lifecycle

        def intercept_activity(
            self, next: temporalio.worker.ActivityInboundInterceptor
        ) -> temporalio.worker.ActivityInboundInterceptor:
            return ActivityTelemetry(next, self.lifecycle)

    class ActivityTelemetry(temporalio.worker.ActivityInboundInterceptor):
        def __init__(
            self, next: temporalio.worker.ActivityInboundInterceptor, lifecycle: ReportLifecycle
        ) -> None:
            super().__init__(next)
            self._life = lifecycle

        async def execute_activity(self, input: temporalio.worker.ExecuteActivityInput) -> Any:
            info = temporalio.activity.info()
            life = self._life
            kind = life.kinds.get(info.workflow_type or "", "other")
            report_id, org_id = _report_ids(input.args)
            span = trace.get_current_span()
            if span.is_recording():
                if report_id:
                    span.set_attribute("surveymesh.report_id", report_id)
                if org_id:
                    span.set_attribute("surveymesh.org_id", org_id)
            if info.activity_type == life.started and info.attempt == 1:
                REPORTS_STARTED.labels(kind).inc()
            started = time.perf_counter()
            outcome = "error"
            with log_context(
                report_id=report_id or "", org_id=org_id or "", workflow_id=info.workflow_id or ""
            ):
                try:
                    result = await super().execute_activity(input)
                    outcome = "ok"
                except BaseException as exc:
                    if _is_cancel(exc):
                        outcome = "cancelled"
                    raise
                finally:
                    STAGE_DURATION.labels(info.activity_type, outcome).observe(
                        time.perf_counter() - started
                    )
                await _report_finished(life, info.activity_type, kind, report_id)
            return result

    return WorkerTelemetry, ActivityTelemetry


async def _report_finished(
    life: ReportLifecycle, activity_type: str, kind: str, report_id: str | None
) -> None:
    outcomes = {
        life.completed: ("completed", REPORTS_COMPLETED),
        life.failed: ("failed", REPORTS_FAILED),
        life.cancelled: ("cancelled", REPORTS_CANCELLED),
    }
    if activity_type not in outcomes:
        return
    outcome, counter = outcomes[activity_type]
    counter.labels(kind).inc()
    if life.duration is None or not report_id:
        return
    try:
        seconds = await life.duration(report_id)
    except Exception:
        # A metric is not worth failing (and retrying) a finished report for.
        log.debug("cannot read the duration of report %s", report_id, exc_info=True)
        return
    if seconds is not None:
        REPORT_DURATION.labels(kind, outcome).observe(max(0.0, seconds))


def _is_cancel(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError) or type(exc).__name__ == "CancelledError"


def _report_ids(args: Sequence[Any]) -> tuple[str | None, str | None]:
    """The report and organization ids of an activity's input (its first argument or the
    ``report`` it wraps), if it has them."""
    if not args:
        return None, None
    arg = args[0]
    for candidate in (arg, getattr(arg, "report", None)):
        if candidate is None:
            continue
        report_id = getattr(candidate, "report_id", None)
        if isinstance(report_id, str) and report_id:
            org_id = getattr(candidate, "org_id", None)
            return report_id, org_id if isinstance(org_id, str) else None
    return None, None


def temporal_runtime(settings: Settings) -> Any | None:
    """A Temporal runtime that serves the SDK's metrics for Prometheus, or ``None``.

    Bound to ``bind_host:SURVEYMESH_TEMPORAL_METRICS_PORT`` (0: off). Pass it as
    ``Client.connect(..., runtime=...)``; workers on that client report through it.
    """
    port = settings.temporal_metrics_port
    if port <= 0:
        return None
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    host = "127.0.0.1" if settings.bind_host == "localhost" else settings.bind_host
    try:
        return Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}"))
        )
    except Exception as exc:
        log.warning("Temporal SDK metrics not served on %s:%d: %s", host, port, exc)
        return None


# -- the one call per process ----------------------------------------------------------------


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` started; :meth:`shutdown` flushes and stops it.

    Attributes:
        service: The process's service name.
        metrics_port: The bound metrics port, or ``None`` when off.
        traces: Where spans go (see :func:`trace_destination`).
    """

    service: str
    metrics_port: int | None
    traces: str
    provider: TracerProvider | None = None
    metrics_server: Any = None

    def shutdown(self) -> None:
        """Exports the spans still buffered and stops the metrics endpoint."""
        if self.provider is not None:
            self.provider.force_flush(5000)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None


def setup_telemetry(settings: Settings, service: str) -> Telemetry:
    """Turns on tracing and the metrics endpoint for this process (call it first).

    A busy metrics port is logged and skipped rather than fatal: metrics must never keep a
    service from serving.

    Args:
        settings: The process settings (``metrics_port``, ``bind_host``, data dir).
        service: ``reporting``, ``delivery``, ``notification`` or ``worker``.
    """
    provider = configure_tracing(settings, service)
    server, port = None, None
    if settings.metrics_port > 0:
        try:
            server, port = start_metrics_server(settings.metrics_port, settings.bind_host)
        except OSError as exc:
            log.warning("metrics endpoint not started on port %d: %s", settings.metrics_port, exc)
    telemetry = Telemetry(
        service=service,
        metrics_port=port,
        traces=trace_destination(settings, service) if provider is not None else "none",
        provider=provider,
        metrics_server=server,
    )
    log.info(
        "telemetry: metrics %s, traces to %s",
        f"on :{port}/metrics" if port else "off",
        telemetry.traces,
    )
    return telemetry
