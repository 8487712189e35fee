"""Domain errors and their single mapping to gRPC status with ``google.rpc`` details.

Service code raises these exceptions; the server interceptor (see ``grpcserver``) turns
them into a status with an ``ErrorInfo`` (stable ``reason``, the service's ``domain``) and,
for bad input, a ``BadRequest`` listing every field violation. Servicers never build a
status by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# Bounds that keep a status (sent in trailing metadata) well under the 8 KiB clients accept.
MAX_VIOLATIONS = 16
MAX_FIELD_CHARS = 100
MAX_DESCRIPTION_CHARS = 160
MAX_MESSAGE_CHARS = 500
MAX_METADATA_VALUE_CHARS = 128


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of a request."""

    field: str
    description: str
    reason: str = ""


class ServiceError(Exception):
    """Base of every error a service answers a client with.

    Attributes:
        code: The gRPC status code.
        reason: Stable, UPPER_SNAKE_CASE machine-readable reason (``ErrorInfo.reason``).
        message: Human-readable text for the status message.
        metadata: Small key/value context for ``ErrorInfo.metadata`` (ids, never data).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """Extra ``google.rpc`` detail messages beyond ``ErrorInfo``."""
        return []


class InvalidArgument(ServiceError):
    """The request is malformed; lists every field violation found."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation],
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        super().__init__(message or f"invalid request: {summary}", reason=reason)

    def details(self) -> list[any_pb2.Any]:
        # Details travel in trailing metadata, which clients cap (8 KiB by default): a
        # request with hundreds of bad items, or fields named after huge map keys, must
        # not turn into a status the client cannot read. The first violations are listed,
        # then one entry says how many more there were.
        shown = self.violations[:MAX_VIOLATIONS]
        more = len(self.violations) - len(shown)
        if more > 0:
            shown.append(FieldViolation("", f"and {more} more violations", "TOO_MANY_VIOLATIONS"))
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(v.field, MAX_FIELD_CHARS),
                    description=_clip(v.description, MAX_DESCRIPTION_CHARS),
                    reason=v.reason,
                )
                for v in shown
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFound(ServiceError):
    """The resource does not exist, or belongs to another organization (indistinguishable)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """The resource exists and the request may not reuse it."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """The resource is in the wrong state for the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(ServiceError):
    """The caller is known but its roles do not allow the request."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    """No valid credentials came with the request."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unavailable(ServiceError):
    """A dependency is temporarily unreachable; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """A quota or size limit was hit; ``retry_after`` says when to try again, if known."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        if self.retry_after is None:
            return []
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(self.retry_after), nanos=int((self.retry_after % 1) * 1e9)
            )
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]


class Unimplemented(ServiceError):
    """The request is valid but asks for something this server does not offer (yet)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Violations:
    """Collects field violations while validating a request, then raises them all at once.

    Example::

        v = Violations()
        if not req.title:
            v.add("survey.title", "must not be empty", "REQUIRED")
        v.raise_if_any()
    """

    def __init__(self, prefix: str = "") -> None:
        self.items: list[FieldViolation] = []
        self._prefix = prefix

    def add(self, field: str, description: str, reason: str = "") -> None:
        """Records one violation of ``field`` (a path such as ``questions[2].options``)."""
        self.items.append(FieldViolation(self._prefix + field, description, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, reason: str | None = None) -> None:
        """Raises :class:`InvalidArgument` if anything was recorded."""
        if self.items:
            raise InvalidArgument(self.items, reason=reason or self.items[0].reason or None)


def to_status(error: ServiceError, domain: str) -> grpc.Status:
    """Builds the gRPC status (with ``google.rpc`` details) for a domain error.

    Messages and metadata values are clipped: they may echo client input (an id that was
    not found), and the whole status must fit the clients' trailing-metadata limit.
    """
    metadata = {k: _clip(v, MAX_METADATA_VALUE_CHARS) for k, v in error.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(
        code=error.code.value[0],
        message=_clip(error.message, MAX_MESSAGE_CHARS),
        details=[packed, *error.details()],
    )
    return rpc_status.to_status(status)


@dataclass(frozen=True)
class ErrorDetails:
    """What a client learns from a failed call: code, reason and field violations."""

    code: grpc.StatusCode
    reason: str
    domain: str
    message: str
    violations: tuple[FieldViolation, ...] = ()
    retry_after: float | None = None


def error_details(err: grpc.aio.AioRpcError | grpc.RpcError) -> ErrorDetails:
    """Decodes the ``google.rpc`` details of a failed call (peer calls, tests, the CLI)."""
    code = err.code()  # type: ignore[union-attr]
    message = err.details() or ""  # type: ignore[union-attr]
    reason = domain = ""
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return ErrorDetails(code, reason, domain, message, tuple(violations), retry_after)
