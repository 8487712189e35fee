"""The per-organization token bucket of report generation."""

from __future__ import annotations

import pytest

from reporting_svc.ratelimit import OrgRateLimiter
from surveymesh.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_per_org_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = OrgRateLimiter(6, clock=clock)  # one token every 10 s, 6 at most
    for _ in range(6):
        limiter.take("a")
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("a")
    assert caught.value.reason == "REPORT_RATE_LIMITED"
    assert caught.value.retry_after == pytest.approx(10.0)
    limiter.take("b")  # another org has its own bucket
    clock.now += 10
    limiter.take("a")
    with pytest.raises(ResourceExhausted):
        limiter.take("a")
    # A batch larger than the capacity costs a full bucket instead of never fitting.
    clock.now += 60
    limiter.take("a", cost=50)
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("a", cost=50)
    assert caught.value.retry_after == pytest.approx(60.0)


def test_zero_disables_the_limit() -> None:
    limiter = OrgRateLimiter(0)
    for _ in range(10_000):
        limiter.take("a")
    assert not limiter.enabled


def test_workflow_ids_hold_no_client_text() -> None:
    # Workflow ids are not encrypted by the payload codec: a client's request id (free text)
    # must not show up in them, only a digest that keeps starts idempotent.
    from surveymesh.workflow_contract import batch_workflow_id, report_workflow_id

    secret_text = "survey of Jane Doe's clinic"
    for make in (report_workflow_id, batch_workflow_id):
        wid = make("org-1", secret_text)
        assert "Jane" not in wid and wid == make("org-1", secret_text)
        assert wid != make("org-1", secret_text + "!")
