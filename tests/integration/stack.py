"""The whole mesh of services for cross-service tests (auth matrix, isolation, fuzzing).

Delivery and Reporting come from :func:`tests.integration.reporting_stack.reporting_stack`
(their databases, Temporal client and task queue prefix); NotificationService is added on a
fresh database of its own. Every server listens on port 0; no worker polls the task queue,
so generated reports stay queued. Also holds the helpers that enumerate RPCs from the
generated descriptors, so a new RPC is covered by every table-driven test automatically.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from temporalio.client import Client

from notification_svc.dispatcher import DeliveryPolicy
from notification_svc.server import create_server as create_notification
from surveymesh.config import Settings
from surveymesh.delivery.v1 import delivery_service_pb2
from surveymesh.errors import error_details
from surveymesh.grpcserver import RunningService
from surveymesh.notification.v1 import notification_service_pb2
from surveymesh.notification.v1 import notification_service_pb2_grpc as npb_grpc
from surveymesh.reporting.v1 import reporting_service_pb2
from tests.conftest import TEST_SECRET
from tests.integration.reporting_stack import Md, Stack, reporting_stack

SERVICE_MODULES = (delivery_service_pb2, reporting_service_pb2, notification_service_pb2)

# Quick retries, so nothing in a test waits on the default back-off.
FAST_POLICY = DeliveryPolicy(
    base_delay=0.2,
    max_delay=1.0,
    max_attempts=2,
    jitter=0.0,
    poll_interval=0.5,
    lease_seconds=10.0,
    webhook_timeout=2.0,
    smtp_timeout=2.0,
    shutdown_timeout=1.0,
)


@dataclass(frozen=True)
class Rpc:
    """One RPC of the contracts, as the generated descriptors describe it."""

    service: str  # short name, e.g. "ReportingService"
    full_service: str  # e.g. "surveymesh.reporting.v1.ReportingService"
    method: descriptor.MethodDescriptor

    @property
    def name(self) -> str:
        """``Service/Method``, the key of the test tables."""
        return f"{self.service}/{self.method.name}"

    @property
    def path(self) -> str:
        """The HTTP/2 path of the method, for generic calls."""
        return f"/{self.full_service}/{self.method.name}"

    @property
    def request_class(self) -> type[Any]:
        """The generated request message class."""
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Any]:
        """The generated response message class."""
        return message_factory.GetMessageClass(self.method.output_type)


def all_rpcs() -> list[Rpc]:
    """Every RPC of every SurveyMesh service, read from the generated descriptors."""
    return [
        Rpc(service.name, service.full_name, method)
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def iter_fields(
    msg: descriptor.Descriptor, prefix: str = "", seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, descriptor.FieldDescriptor]]:
    """Every field path of ``msg`` (nested messages included, well-known types excluded)."""
    for f in msg.fields:
        path = f"{prefix}{f.name}"
        yield path, f
        sub = f.message_type
        if (
            sub is not None
            and not sub.full_name.startswith("google.")
            and sub.full_name not in seen
            and not sub.GetOptions().map_entry
        ):
            yield from iter_fields(sub, path + ".", seen | {sub.full_name})


@dataclass
class Mesh:
    """The three running services, a channel to each, and the Reporting test stack."""

    reporting: Stack
    notification: RunningService
    channels: dict[str, grpc.aio.Channel]
    ports: dict[str, int]
    token_for: Callable[..., Md]

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to ``DeliveryService``/``ReportingService``/``NotificationService``."""
        return self.channels[service]

    @property
    def notification_stub(self) -> npb_grpc.NotificationServiceStub:
        """A NotificationService stub."""
        return npb_grpc.NotificationServiceStub(self.channels["NotificationService"])


@asynccontextmanager
async def mesh_stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal: Client,
    token_for: Callable[..., Md],
    data_dir: Path,
) -> AsyncIterator[Mesh]:
    """Starts Delivery, Reporting and Notification on fresh databases; stops all afterwards."""
    async with reporting_stack(new_database, temporal, token_for) as stack:
        notification = await create_notification(
            # Webhook URLs of tests point at localhost, so private targets are allowed here;
            # tests of the SSRF guard start a service of their own with it off.
            Settings(
                database_url=await new_database("notification"),
                jwt_secret=TEST_SECRET,
                data_dir=data_dir,
                allow_private_webhooks=True,
            ),
            address="localhost:0",
            policy=FAST_POLICY,
        )
        stack.exit.push_async_callback(notification.stop, 0)
        ports = {
            "DeliveryService": stack.delivery.port,
            "ReportingService": stack.reporting.port,
            "NotificationService": notification.port,
        }
        channels = {name: grpc.aio.insecure_channel(f"localhost:{p}") for name, p in ports.items()}
        for ch in channels.values():
            stack.exit.push_async_callback(ch.close)
        yield Mesh(stack, notification, channels, ports, token_for)


def new_id() -> str:
    """A well-formed id that names nothing."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Outcome:
    """What a caller learns from one call: status code, ``ErrorInfo.reason`` and data."""

    code: grpc.StatusCode
    reason: str
    messages: tuple[Any, ...] = ()
    violations: int = 0
    message: str = ""  # the status message, for diagnosing unexpected answers


async def call(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Any,
    metadata: Md | None = None,
    *,
    deadline: float = 10.0,
    limit: int = 5,
    raw: bool = False,
) -> Outcome:
    """Calls any RPC generically and reports its :class:`Outcome`.

    Args:
        channel: A channel to the RPC's service.
        rpc: The RPC.
        request: The request message (a list of them for client streams), or ``bytes``
            sent as they are when ``raw`` (invalid encodings).
        metadata: Call metadata (the bearer token), if any.
        deadline: The call's timeout, in seconds.
        limit: For server streams, how many messages to read before cancelling (a watch
            stream never ends by itself).
        raw: Send ``request`` bytes unserialized.
    """
    serialize = (lambda b: b) if raw else rpc.request_class.SerializeToString
    deserialize = rpc.response_class.FromString
    m = rpc.method
    requests = request if isinstance(request, list) else [request]
    messages: list[Any] = []
    try:
        if m.client_streaming and m.server_streaming:
            raise NotImplementedError("no bidirectional RPCs in the contracts")
        if m.client_streaming:
            multi = channel.stream_unary(rpc.path, serialize, deserialize)
            messages.append(await multi(iter(requests), metadata=metadata, timeout=deadline))
        elif m.server_streaming:
            stream_call = channel.unary_stream(rpc.path, serialize, deserialize)(
                requests[0], metadata=metadata, timeout=deadline
            )
            async for item in stream_call:
                messages.append(item)
                if len(messages) >= limit:
                    stream_call.cancel()
                    break
        else:
            single = channel.unary_unary(rpc.path, serialize, deserialize)
            messages.append(await single(requests[0], metadata=metadata, timeout=deadline))
    except grpc.aio.AioRpcError as err:
        details = error_details(err)
        return Outcome(
            err.code(), details.reason, tuple(messages), len(details.violations), details.message
        )
    return Outcome(grpc.StatusCode.OK, "", tuple(messages))
