"""GenerateReport/GenerateReports answer RESOURCE_EXHAUSTED with RetryInfo past the org's rate."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from surveymesh.errors import error_details
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from tests.integration.reporting_stack import Md, reporting_stack, start_reporting

pytestmark = pytest.mark.integration


async def test_report_rate_per_organization(
    new_database: Callable[[str], Any],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
) -> None:
    async with reporting_stack(new_database, temporal_env.client, token_for) as stack:
        # A replica limited to 3 reports a minute per organization.
        limited, channel, stub = await start_reporting(
            dataclasses.replace(stack.settings, report_rate=3), temporal_env.client
        )
        stack.exit.push_async_callback(limited.stop, 0)
        stack.exit.push_async_callback(channel.close)
        busy, quiet = f"org-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}"
        survey = await stack.survey(busy)
        for _ in range(3):
            await stack.generate(busy, survey, stub=stub)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.generate(busy, survey, stub=stub)
        details = error_details(err.value)
        assert (err.value.code(), details.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "REPORT_RATE_LIMITED",
        )
        # One token comes back every 20 s; the RetryInfo says so.
        assert details.retry_after is not None and 0 < details.retry_after <= 20

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateReports(
                pb.GenerateReportsRequest(
                    survey_ids=[survey],
                    kind=report_pb2.REPORT_KIND_QUICK,
                    request_id=uuid.uuid4().hex,
                ),
                metadata=token_for(busy),
                timeout=10,
            )
        assert error_details(err.value).reason == "REPORT_RATE_LIMITED"

        # Another organization is not affected by the busy one.
        await stack.generate(quiet, stub=stub)
