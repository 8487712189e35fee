"""``python -m surveymesh.temporal_setup``: prepares a real Temporal cluster for SurveyMesh.

The embedded dev server is started with SurveyMesh's namespace and search attributes; a
real cluster (``temporalio/auto-setup`` in compose, a managed cluster in Kubernetes) is
not, and starting a report workflow with an unregistered search attribute fails. This
one-shot command, run by the deploy manifests before the services, registers the
namespace (if missing) and the custom search attributes. Running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping

from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from surveymesh.config import ConfigError, Settings
from surveymesh.logs import configure_logging
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)

NAMESPACE_RETENTION_DAYS = 7


async def connect(address: str, namespace: str, timeout: float) -> Client:  # noqa: ASYNC109
    """Connects, retrying while the cluster is still coming up (compose starts us early)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(address, namespace=namespace)
        except Exception as exc:  # the SDK raises RuntimeError for connection failures
            if time.monotonic() > deadline:
                raise ConfigError(f"Temporal at {address} unreachable: {exc}") from exc
            log.info("waiting for Temporal at %s (%s)", address, exc)
            await asyncio.sleep(2)


async def ensure_namespace(client: Client, namespace: str) -> bool:
    """Registers ``namespace`` unless it exists; returns whether it was created."""
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
        return False
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    retention = Duration(seconds=NAMESPACE_RETENTION_DAYS * 86400)
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace, workflow_execution_retention_period=retention
            )
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:  # another setup run won the race
            raise
    return True


async def ensure_search_attributes(
    client: Client,
    namespace: str,
    wanted: Mapping[str, str] = SEARCH_ATTRIBUTES,
    *,
    wait: float = 30,
) -> list[str]:
    """Adds the missing custom search attributes; returns the names added.

    A namespace registered moments ago reaches the operator API only after the frontends
    refresh their namespace cache, so NOT_FOUND is retried for up to ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace)
            )
            break
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    missing = {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in wanted.items()
        if name not in listed.custom_attributes
    }
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise
    return sorted(missing)


async def setup(settings: Settings, *, timeout: float = 300) -> None:  # noqa: ASYNC109
    """Connects to ``TEMPORAL_ADDRESS`` and prepares ``TEMPORAL_NAMESPACE``."""
    client = await connect(settings.temporal_address, settings.temporal_namespace, timeout)
    created = await ensure_namespace(client, settings.temporal_namespace)
    added = await ensure_search_attributes(client, settings.temporal_namespace)
    log.info(
        "Temporal namespace %s ready (%s; search attributes added: %s)",
        settings.temporal_namespace,
        "created" if created else "existed",
        ", ".join(added) or "none",
    )


def main() -> int:
    """Process entry point."""
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        asyncio.run(setup(settings))
    except ConfigError as exc:
        sys.stderr.write(f"temporal_setup: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
