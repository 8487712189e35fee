"""Report throughput of worker processes, against a trivial workflow on the same dev server.

* **quick reports per minute, one worker process**: ``count`` quick reports of a
  100-response survey requested at once through ``GenerateReport``; the time from the first
  request to the last workflow result. Baseline: ``count`` trivial one-activity workflows
  (:mod:`bench.trivial_worker`, its own process) started at once. Runs alternate.
* **worker scaling**: the same load with 1, 2 and 3 worker processes; the figure is 2
  against 1, the note gives 3 and where the curve bends (the knee).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from datetime import timedelta

from bench.figures import Figure
from bench.stack import BenchStack, median
from bench.trivial_worker import WORKFLOW
from surveymesh.codec import payload_keys_for_mesh

log = logging.getLogger(__name__)


async def _reports(stack: BenchStack, survey_id: str, count: int) -> float:
    """Reports per minute for ``count`` quick reports requested at once."""
    began = time.perf_counter()
    reports = await asyncio.gather(*(stack.generate(survey_id) for _ in range(count)))
    await asyncio.gather(
        *(
            stack.client.get_workflow_handle(r.workflow_id).result(
                rpc_timeout=timedelta(minutes=30)
            )
            for r in reports
        )
    )
    return count * 60 / (time.perf_counter() - began)


async def _trivial(stack: BenchStack, queue: str, count: int) -> float:
    """Trivial workflows per minute for ``count`` started at once."""
    began = time.perf_counter()
    handles = await asyncio.gather(
        *(
            stack.client.start_workflow(
                WORKFLOW, "x", id=f"trivial-{uuid.uuid4()}", task_queue=queue
            )
            for _ in range(count)
        )
    )
    await asyncio.gather(*(h.result() for h in handles))
    return count * 60 / (time.perf_counter() - began)


async def run(stack: BenchStack, *, count: int, runs: int, max_workers: int = 3) -> list[Figure]:
    """The throughput and scaling figures."""
    survey_id = await stack.survey(100, "throughput")
    queue = stack.settings.task_queue("bench-trivial")
    # Same payload keys as the mesh: the baseline pays for encryption like the reports do.
    trivial = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.trivial_worker", stack.mesh.temporal_address, queue,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "SURVEYMESH_PAYLOAD_KEYS": payload_keys_for_mesh(stack.settings)},
    )  # fmt: skip
    assert trivial.stdout is not None and trivial.stdin is not None
    await asyncio.wait_for(trivial.stdout.readline(), 60)
    await stack.set_worker_count(1)
    subject: list[float] = []
    baseline: list[float] = []
    try:
        await _trivial(stack, queue, 5)  # warm both up
        await _reports(stack, survey_id, 2)
        for _ in range(runs):
            baseline.append(await _trivial(stack, queue, count))
            subject.append(await _reports(stack, survey_id, count))
    finally:
        trivial.stdin.close()
        await trivial.wait()
    scaling: dict[int, list[float]] = {1: subject}
    for workers in range(2, max_workers + 1):
        await stack.set_worker_count(workers)
        scaling[workers] = [await _reports(stack, survey_id, count) for _ in range(runs)]
    await stack.set_worker_count(1)

    one, base = median(subject), median(baseline)
    rates = {w: median(v) for w, v in scaling.items()}
    knee = next(
        (w - 1 for w in range(2, max_workers + 1) if rates[w] < 1.2 * rates[w - 1]), max_workers
    )
    return [
        Figure(
            key="reports_per_minute",
            name="quick reports per minute, one worker process",
            value=one,
            baseline=base,
            unit="/min",
            baseline_name="trivial one-activity workflow, same dev server",
            target="at least 50%",
            met=one >= 0.5 * base,
            note=f"{count} at once per run, 100-response survey, median of {runs} alternating runs",
            details={"subject_per_min": subject, "baseline_per_min": baseline},
        ),
        Figure(
            key="worker_scaling",
            name="worker scaling, 2 vs 1 worker processes",
            value=rates[2],
            baseline=rates[1],
            unit="/min",
            baseline_name="1 worker process",
            target="≥ 1.6x until the dev server saturates",
            met=rates[2] >= 1.6 * rates[1],
            note=(
                "reports/min by processes: "
                + ", ".join(f"{w}: {r:.0f}" for w, r in rates.items())
                + f"; knee at {knee} process(es) (next step adds < 20%); 2 cores shared by "
                "Postgres, the dev server, three services, the workers and the client"
            ),
            details={"per_min_by_workers": scaling},
        ),
    ]
