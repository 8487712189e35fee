"""Fault 10: a seeded random chaos run over the whole mesh.

Reports are requested all along while, one fault at a time, workers are SIGKILLed or
SIGTERMed, services are SIGKILLed, and the Temporal server is stopped, each coming back
after a random pause. Afterwards every report must be terminal (COMPLETED, or cleanly
FAILED/CANCELLED) and every invariant of :mod:`tests.faults.invariants` must hold.

The seed is logged at the start of every run. It is ``SURVEYMESH_CHAOS_SEED`` if set,
else derived from the date, so CI explores a new schedule each day and a failure can be
replayed exactly: add its seed to ``REGRESSION_SEEDS`` and it runs in every build.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from surveymesh.embedded import EmbeddedTemporal
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from tests.faults.conftest import MeshFactory
from tests.faults.invariants import (
    Md,
    check_invariants,
    log,
    register_webhook,
    request_report,
    retrying,
    seed_survey,
    wait_terminal,
    wait_workflows,
)
from tests.integration.proc_mesh import ProcMesh
from tests.integration.test_notification_webhooks import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.faults]

S = report_pb2.ReportState
CHAOS_SECONDS = float(os.environ.get("SURVEYMESH_CHAOS_SECONDS", "90"))
WORKERS = ("worker", "worker-2")
SERVICES = ("delivery", "notification", "reporting")
# Seeds that once broke an invariant; each runs in every build from then on.
REGRESSION_SEEDS: list[int] = []


def todays_seed() -> int:
    """``SURVEYMESH_CHAOS_SEED``, or today's date as a number (a new schedule each day)."""
    raw = os.environ.get("SURVEYMESH_CHAOS_SEED", "")
    return int(raw) if raw else int(dt.date.today().strftime("%Y%m%d"))


async def _chaos(
    rng: random.Random, mesh: ProcMesh, temporal: EmbeddedTemporal, until: float
) -> list[str]:
    """Injects faults one at a time until ``until``; returns what it did."""
    done: list[str] = []
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        action = rng.choice(
            ["kill_worker", "kill_worker", "term_worker", "kill_service", "restart_temporal"]
        )
        pause = rng.uniform(0.5, 4.0)
        if action in ("kill_worker", "term_worker"):
            name = rng.choice(WORKERS)
            if action == "kill_worker":
                await mesh.kill(name)
            else:
                await mesh.terminate(name)
            await asyncio.sleep(pause)
            await mesh.start(name)
            what = f"{action} {name} (back after {pause:.1f}s)"
        elif action == "kill_service":
            name = rng.choice(SERVICES)
            await mesh.kill(name)
            await asyncio.sleep(pause)
            await mesh.start(name)
            what = f"kill {name} (back after {pause:.1f}s)"
        else:
            await temporal.stop()
            await asyncio.sleep(pause)
            await temporal.start()
            what = f"restart Temporal (down {pause:.1f}s)"
        done.append(what)
        log(f"chaos t+{until - time.monotonic():.0f}s left: {what}")
    return done


async def _requests(
    rng: random.Random, mesh: ProcMesh, md: Md, surveys: list[str], until: float
) -> list[report_pb2.Report]:
    """Requests reports every few seconds until ``until``, retrying through the faults."""
    reports: list[report_pb2.Report] = []
    i = 0
    cancel_at = rng.randrange(2, 8)
    while time.monotonic() < until:
        kind = report_pb2.REPORT_KIND_FULL if i % 4 == 3 else report_pb2.REPORT_KIND_QUICK
        reports.append(
            await request_report(
                mesh, md, rng.choice(surveys), kind=kind, request_id=uuid.uuid4().hex, within=90
            )
        )
        if i == cancel_at:
            # Its requester cancels this one at once: it must end CANCELLED (or COMPLETED
            # if it won the race), never stuck and never both.
            await _cancel(mesh, md, reports[-1].id)
        i += 1
        await asyncio.sleep(rng.uniform(1.0, 4.0))
    return reports


async def _cancel(mesh: ProcMesh, md: Md, report_id: str) -> None:
    call = mesh.reporting().CancelReport
    request = rpb.CancelReportRequest(report_id=report_id)
    try:
        await retrying(lambda: call(request, metadata=md, timeout=15), within=90)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", [todays_seed(), *REGRESSION_SEEDS])
async def test_chaos(
    seed: int,
    make_stack: MeshFactory,
    fault_temporal: EmbeddedTemporal,
    receiver: Receiver,
    token_for: Callable[..., Md],
    org: str,
) -> None:
    log(f"CHAOS SEED {seed} (rerun with SURVEYMESH_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    stack = await make_stack(
        workers=len(WORKERS), extra_env={"worker": {"SURVEYMESH_SNAPSHOT_BATCH": "100"}}
    )
    mesh = stack.mesh
    md = token_for(org, role="analyst")
    await register_webhook(mesh, token_for(org, role="admin"), receiver.url())
    surveys = [await seed_survey(mesh, md, 300, seed=s) for s in range(3)]

    started = time.monotonic()
    until = started + CHAOS_SECONDS
    requester = asyncio.ensure_future(_requests(random.Random(seed + 1), mesh, md, surveys, until))
    actions = await _chaos(rng, mesh, fault_temporal, until)
    reports = await requester
    ids = [r.id for r in reports]
    settle = time.monotonic()
    states = await wait_terminal(stack.reporting, ids, within=150, mesh=mesh)
    log(f"chaos: all {len(ids)} reports terminal {time.monotonic() - settle:.1f}s after chaos")
    await wait_workflows(stack.temporal, [r.workflow_id for r in reports], within=90)
    await check_invariants(
        stack.reporting, stack.notification, ids, receiver=receiver, endpoints=1, within=60
    )
    counts = {S.Name(S.ValueType(s)): list(states.values()).count(s) for s in set(states.values())}
    log(f"chaos seed {seed}: {len(actions)} faults, {len(ids)} reports: {counts}")
    # Transient faults only: nothing may fail, and only the cancelled report may be
    # CANCELLED.
    assert counts.get("REPORT_STATE_FAILED", 0) == 0, counts
    assert counts.get("REPORT_STATE_CANCELLED", 0) <= 1, counts
