"""Per-organization rate limit on report generation (a token bucket per org).

Reports cost AI calls, worker time and storage, so one organization's burst must not
starve the others. Each organization has a bucket of ``rate`` tokens per minute (its
capacity is one minute's worth, so a quiet org can burst that many at once). The buckets
live in this process: with N Reporting replicas behind a balancer the deployment-wide
limit is up to N times the setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from surveymesh.errors import ResourceExhausted

# Beyond this many tracked organizations, buckets that have refilled are forgotten.
MAX_TRACKED = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class OrgRateLimiter:
    """Token buckets per organization.

    Args:
        per_minute: Tokens added per minute (and the bucket's capacity); 0 disables.
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0:
            raise ValueError("the rate must not be negative")
        self._capacity = per_minute
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit applies."""
        return self._capacity > 0

    def take(self, org: str, cost: int = 1) -> None:
        """Takes ``cost`` tokens from ``org``'s bucket.

        A cost above the capacity (a batch larger than a minute's allowance) is charged
        as a full bucket, so such a batch waits for a quiet minute instead of never running.

        Raises:
            ResourceExhausted: not enough tokens; ``retry_after`` says when there will be.
        """
        if not self.enabled:
            return
        cost_f = min(float(cost), self._capacity)
        now = self._clock()
        bucket = self._buckets.get(org)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[org] = _Bucket(self._capacity, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._capacity, bucket.tokens + elapsed * self._per_second)
            bucket.updated = now
        if bucket.tokens + 1e-9 >= cost_f:
            bucket.tokens -= cost_f
            return
        wait = (cost_f - bucket.tokens) / self._per_second
        raise ResourceExhausted(
            f"report generation is limited to {self._capacity:g} per minute per organization",
            retry_after=math.ceil(wait * 1000) / 1000,
            reason="REPORT_RATE_LIMITED",
            metadata={"limit_per_minute": f"{self._capacity:g}"},
        )

    def _forget_full(self, now: float) -> None:
        for org, b in list(self._buckets.items()):
            if b.tokens + (now - b.updated) * self._per_second >= self._capacity:
                del self._buckets[org]
