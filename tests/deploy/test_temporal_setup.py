"""``python -m surveymesh.temporal_setup`` against a real Temporal dev server."""

from __future__ import annotations

import uuid

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from surveymesh.temporal_setup import ensure_namespace, ensure_search_attributes
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES


async def test_registers_namespace_and_search_attributes_once(temporal_client: Client) -> None:
    namespace = f"setup-{uuid.uuid4().hex[:8]}"
    assert await ensure_namespace(temporal_client, namespace) is True
    assert await ensure_namespace(temporal_client, namespace) is False

    added = await ensure_search_attributes(temporal_client, namespace)
    assert added == sorted(SEARCH_ATTRIBUTES)
    listed = await temporal_client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    assert set(SEARCH_ATTRIBUTES) <= set(listed.custom_attributes)
    assert await ensure_search_attributes(temporal_client, namespace) == []
