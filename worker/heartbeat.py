"""Automatic heartbeats, so Temporal notices a dead worker within one heartbeat timeout.

Without heartbeats Temporal learns that a worker died only when the activity's
start-to-close timeout expires (minutes for some steps), and until then the report just
waits. Every report activity is therefore scheduled with a short heartbeat timeout, and
this interceptor heartbeats for it in the background while it runs: a live worker always
heartbeats in time, a SIGKILLed one stops at once and the attempt is retried elsewhere
after the heartbeat timeout. Heartbeat responses also carry cancellation, so a cancelled
report interrupts whichever step is running. (The pattern of samples-python's
``custom_decorator`` auto-heartbeater, applied to every activity by one interceptor.)

Activities that report progress as heartbeat details keep doing so; these beats only
fill the silence between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


class AutoHeartbeat(Interceptor):
    """Heartbeats every ``heartbeat_timeout / 3`` while an activity with a heartbeat
    timeout runs."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wraps each activity execution."""
        return _Beating(next)


class _Beating(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if not timeout or not asyncio.iscoroutinefunction(input.fn):
            return await self.next.execute_activity(input)
        beats = asyncio.create_task(_beat(max(0.1, timeout.total_seconds() / 3)))
        try:
            return await self.next.execute_activity(input)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats


async def _beat(every: float) -> None:
    while True:
        await asyncio.sleep(every)
        activity.heartbeat()
