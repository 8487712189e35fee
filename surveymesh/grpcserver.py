"""The one gRPC server bootstrap every SurveyMesh service uses.

It gives each service the same behaviour: ``grpc.health.v1`` health, server reflection
(so grpcurl and ``buf curl`` work), bearer-token authentication, the single mapping of
domain errors to ``google.rpc`` status, and a graceful shutdown on SIGTERM/SIGINT
(health → NOT_SERVING, then ``server.stop(grace)``, then the service's own cleanups).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from surveymesh.auth import TokenAuthority, set_principal
from surveymesh.channels import MAX_CONNECTION_AGE_MS, MAX_MESSAGE_BYTES
from surveymesh.errors import (
    FieldViolation,
    InvalidArgument,
    ServiceError,
    Unavailable,
    to_status,
)
from surveymesh.telemetry import server_interceptors

log = logging.getLogger(__name__)

# Methods that need no token: probes and API discovery.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Peer status codes that mean "try again later", passed on as UNAVAILABLE.
TRANSIENT_PEER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)
# Database failures that are about reachability, not about the request.
DB_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)


def _classify(exc: BaseException) -> ServiceError | grpc.Status | None:
    """Maps an exception escaping a handler to what the client is told."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in TRANSIENT_PEER_CODES:
            return Unavailable(f"a peer service failed: {exc.details()}", reason="PEER_UNAVAILABLE")
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        if status is not None:
            return rpc_status.to_status(status)
        return None
    if isinstance(exc, (*DB_UNAVAILABLE, TimeoutError)):
        return Unavailable(
            "the database is unreachable; retry later", reason="DATABASE_UNAVAILABLE"
        )
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call and maps escaping errors to status, for every RPC shape.

    The caller's :class:`~surveymesh.auth.Principal` is bound to a context variable inside
    the handler's own task, so servicers read it with ``current_principal()``.
    """

    def __init__(self, authority: TokenAuthority, domain: str) -> None:
        self._authority = authority
        self._domain = domain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        return self._wrap(handler, details.method)

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        header = next(
            (v for k, v in context.invocation_metadata() or () if k == "authorization"), None
        )
        set_principal(self._authority.verify_header(header if isinstance(header, str) else None))

    async def _fail(
        self, context: grpc.aio.ServicerContext, exc: BaseException, method: str
    ) -> None:
        mapped = _classify(exc)
        if mapped is None:
            # A bug of ours, not the client's: log it whole, tell the client little.
            log.exception("unhandled error in %s", method)
            await context.abort_with_status(
                to_status(_InternalError("internal error"), self._domain)
            )
        elif isinstance(mapped, ServiceError):
            if isinstance(mapped, Unavailable):
                log.warning("%s: %s (%r)", method, mapped.message, exc)
            await context.abort_with_status(to_status(mapped, self._domain))
        else:
            await context.abort_with_status(mapped)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        client_streaming = bool(handler.stream_unary or handler.stream_stream)
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    self._authenticate(context)
                    return await inner(_checked(request, client_streaming), context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    await self._fail(context, exc, method)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
        else:
            inner = handler.unary_stream or handler.stream_stream

            async def stream_response(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    self._authenticate(context)
                    async for item in inner(_checked(request, client_streaming), context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as exc:
                    await self._fail(context, exc, method)

            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
        return factory(
            unary_response if handler.unary_unary or handler.stream_unary else stream_response,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that did not parse (invalid UTF-8, truncation)."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers UNKNOWN when a deserializer raises, before any handler runs. Parsing
    # failures are the client's, so they are carried into the handler instead, which
    # authenticates first and then answers INVALID_ARGUMENT with a field violation.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:
            return _Undecodable(type(e).__name__)

    return parse


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            [
                FieldViolation(
                    "",
                    f"the request is not a valid protobuf message ({request.error}); "
                    "string fields must be UTF-8",
                    "MALFORMED_REQUEST",
                )
            ],
            reason="MALFORMED_REQUEST",
        )
    return request


def _checked(request: Any, client_streaming: bool) -> Any:
    """The request, or for client streams an iterator that checks each message."""
    if not client_streaming:
        return _decoded(request)

    async def each() -> AsyncIterator[Any]:
        async for item in request:
            yield _decoded(item)

    return each()


class _InternalError(ServiceError):
    """Only for our own bugs; never raised for anything a client sent."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def time_remaining(context: grpc.aio.ServicerContext, default: float) -> float:
    """The caller's remaining deadline (for passing on to downstream calls), capped at ``default``."""
    remaining = context.time_remaining()
    return default if remaining is None else max(0.0, min(default, remaining))


@dataclass
class Service:
    """A servicer to mount: its full proto name and the generated ``add_*_to_server``."""

    full_name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class ServerHandle:
    """A started server with its bound port and health servicer."""

    def __init__(
        self, server: grpc.aio.Server, port: int, health: HealthServicer, names: Sequence[str]
    ):
        self.server = server
        self.port = port
        self.health = health
        self._names = names

    async def set_serving(self, serving: bool) -> None:
        """Flips every service's health status (used when a dependency goes away)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING first, so balancers drain, then let calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


@dataclass
class RunningService:
    """A started service: its server plus what to close after it stops (pools, channels)."""

    handle: ServerHandle
    cleanups: list[Callable[[], Awaitable[None]]]

    @property
    def port(self) -> int:
        """The bound port (useful when the address asked for port 0)."""
        return self.handle.port

    async def stop(self, grace: float = 1.0) -> None:
        """Stops serving gracefully, then runs the cleanups in order."""
        await self.handle.stop(grace)
        for cleanup in self.cleanups:
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed")

    async def serve_until_signalled(self, grace: float) -> None:
        """Serves until SIGTERM/SIGINT, then stops gracefully (the ``__main__`` path)."""
        await run_until_signalled(self.handle, grace=grace, cleanups=self.cleanups)


async def start_server(
    services: Sequence[Service],
    *,
    authority: TokenAuthority,
    domain: str,
    address: str,
    reflection_enabled: bool = True,
    credentials: grpc.ServerCredentials | None = None,
) -> ServerHandle:
    """Creates and starts a grpc.aio server with health, reflection and the interceptor.

    Args:
        services: The servicers to mount.
        authority: Verifies bearer tokens.
        domain: ``ErrorInfo.domain`` of this service's errors, e.g. ``surveymesh.delivery``.
        address: ``host:port`` to bind; port 0 picks a free port (tests).
        reflection_enabled: Serve ``grpc.reflection`` for grpcurl/buf curl.
        credentials: TLS credentials (see :func:`surveymesh.channels.server_credentials`);
            ``None`` serves plaintext.
    """
    server = grpc.aio.server(
        # Telemetry first: the trace span and RPC metrics wrap authentication and mapping.
        interceptors=[*server_interceptors(), ServiceInterceptor(authority, domain)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ],
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [s.full_name for s in services]
    for s in services:
        s.add_to_server(s.servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    port = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    handle = ServerHandle(server, port, health, names)
    await handle.set_serving(True)
    log.info("serving %s on port %d", ", ".join(names), port)
    return handle


async def run_until_signalled(
    handle: ServerHandle, *, grace: float, cleanups: Sequence[Callable[[], Awaitable[None]]] = ()
) -> None:
    """Serves until SIGTERM/SIGINT, then shuts down gracefully and runs ``cleanups``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server_done = asyncio.ensure_future(handle.server.wait_for_termination())
    stop_wait = asyncio.ensure_future(stop.wait())
    await asyncio.wait({server_done, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down (grace %.1fs)", grace)
    await handle.stop(grace)
    for cleanup in cleanups:
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup failed")
    stop_wait.cancel()
    server_done.cancel()
