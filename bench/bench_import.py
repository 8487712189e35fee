"""Import throughput of DeliveryService against raw asyncpg COPY, in the same run.

Starts an embedded PostgreSQL in a temporary directory and DeliveryService as its own
process (``python -m delivery_svc``, configured through the environment as in
production), generates ``n`` realistic responses (10 questions of all six types,
respondent attributes, free text), then measures, alternately (COPY, import, COPY,
import, ...) so that drift on a noisy machine hits both alike:

* ``ImportResponses``: the whole client-streaming call in messages of ``batch`` rows, into
  a fresh survey (so every row is accepted): gRPC transfer, per-row validation, the
  COPY into the indexed responses table, survey counters. The client sends messages
  encoded beforehand, so its own protobuf encoding does not take CPU from the server
  on a small machine (a real client encodes on its own machine).
* the raw baseline: asyncpg ``copy_records_to_table`` of the same rows, in the same column
  shapes ``(survey_id, id, completed, payload)``, into a plain table without indexes.

It also streams the snapshot back with ``StreamResponses`` (batches of 5,000) for the
export rate. Prints one JSON object with medians; ``import_share_of_copy`` is import
rows/s over COPY rows/s (the target is at least 0.5), ``ratio_copy_over_import`` its
inverse.

Run: ``python -m bench.bench_import [--n 100000] [--batch 2000] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from surveymesh.delivery.v1 import response_pb2, survey_pb2
from surveymesh.embedded import EmbeddedPostgres, free_port

QT = survey_pb2.QuestionType
SECRET = "bench-secret-0123456789abcdef-0123456789"
RUNS = 5

PLANS = ["free", "starter", "pro", "team", "enterprise"]
FEATURES = ["dashboards", "exports", "alerts", "api", "sso", "reports", "integrations"]
ROLES = ["engineer", "manager", "analyst", "executive", "support"]
REGIONS = ["emea", "na", "latam", "apac"]
COUNTRIES = ["de", "fr", "uk", "us", "ca", "br", "mx", "jp", "au", "in"]
OPENERS = ["Honestly,", "Overall", "I think", "To be fair,", "Lately", "For our team"]
SUBJECTS = ["the exports", "the dashboards", "support", "pricing", "onboarding", "the API"]
VERDICTS = [
    "work really well and save us hours every week",
    "are confusing and slow when the data gets large",
    "have improved a lot since the last release",
    "keep breaking after updates, which is frustrating",
    "are fine but could use better documentation",
    "are the main reason we renewed our contract",
]


def bench_survey() -> survey_pb2.Survey:
    """Ten questions covering all six question types."""
    q = survey_pb2.Question
    return survey_pb2.Survey(
        title="Benchmark customer survey",
        questions=[
            q(
                id="plan",
                text="Plan?",
                type=QT.QUESTION_TYPE_SINGLE_CHOICE,
                options=PLANS,
                required=True,
            ),
            q(id="role", text="Role?", type=QT.QUESTION_TYPE_SINGLE_CHOICE, options=ROLES),
            q(id="features", text="Used?", type=QT.QUESTION_TYPE_MULTIPLE_CHOICE, options=FEATURES),
            q(id="satisfaction", text="Satisfied?", type=QT.QUESTION_TYPE_RATING, required=True),
            q(id="ease", text="Easy?", type=QT.QUESTION_TYPE_RATING),
            q(id="nps", text="Recommend?", type=QT.QUESTION_TYPE_NPS, required=True),
            q(
                id="seats",
                text="Seats?",
                type=QT.QUESTION_TYPE_NUMBER,
                min_value=1,
                max_value=10_000,
            ),
            q(
                id="hours",
                text="Hours/week?",
                type=QT.QUESTION_TYPE_NUMBER,
                min_value=0,
                max_value=168,
            ),
            q(id="why", text="Why?", type=QT.QUESTION_TYPE_FREE_TEXT),
            q(id="improve", text="Improve?", type=QT.QUESTION_TYPE_FREE_TEXT),
        ],
    )


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS)} {rng.choice(VERDICTS)}."


def generate(n: int, seed: int = 7) -> list[response_pb2.Response]:
    """``n`` valid responses: 80% completed, optional questions skipped now and then."""
    rng = random.Random(seed)
    a = response_pb2.Answer
    out = []
    base = 1_700_000_000
    for i in range(n):
        completed = rng.random() < 0.8
        start = base + rng.randrange(90 * 86_400)
        r = response_pb2.Response(
            id=f"resp-{i:08d}",
            completed=completed,
            attributes={
                "region": rng.choice(REGIONS),
                "plan": rng.choice(PLANS),
                "country": rng.choice(COUNTRIES),
                "segment": rng.choice(["smb", "mid", "enterprise"]),
            },
        )
        r.start_time.seconds = start
        if completed:
            r.complete_time.seconds = start + rng.randrange(30, 1800)
        answers = [
            a(question_id="plan", choice=rng.choice(PLANS)),
            a(question_id="satisfaction", rating=rng.randint(1, 5)),
            a(question_id="nps", nps=rng.randint(0, 10)),
        ]
        if rng.random() < 0.9:
            answers.append(a(question_id="role", choice=rng.choice(ROLES)))
        if rng.random() < 0.9:
            picked = rng.sample(FEATURES, rng.randint(1, 4))
            answers.append(
                a(question_id="features", choices=response_pb2.ChoiceList(values=picked))
            )
        if rng.random() < 0.9:
            answers.append(a(question_id="ease", rating=rng.randint(1, 5)))
        if rng.random() < 0.8:
            answers.append(a(question_id="seats", number=float(rng.randint(1, 2000))))
        if rng.random() < 0.8:
            answers.append(a(question_id="hours", number=round(rng.uniform(0, 60), 1)))
        if rng.random() < 0.7:
            answers.append(
                a(
                    question_id="why",
                    text=" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))),
                )
            )
        if rng.random() < 0.5:
            answers.append(a(question_id="improve", text=_sentence(rng)))
        r.answers.extend(answers)
        out.append(r)
    return out


async def _import_once(
    channel: grpc.aio.Channel,
    stub: pb_grpc.DeliveryServiceStub,
    meta: tuple[tuple[str, str], ...],
    encoded: list[bytes],
) -> tuple[float, pb.ImportResponsesResponse]:
    created = await stub.CreateSurvey(pb.CreateSurveyRequest(survey=bench_survey()), metadata=meta)
    # Only the first message names the survey: encoded fields may be concatenated.
    first = pb.ImportResponsesRequest(survey_id=created.survey.id).SerializeToString()
    messages = [first + encoded[0], *encoded[1:]]
    # The same method, taking messages encoded beforehand.
    call = channel.stream_unary(
        "/surveymesh.delivery.v1.DeliveryService/ImportResponses",
        request_serializer=None,
        response_deserializer=pb.ImportResponsesResponse.FromString,
    )

    async def stream() -> AsyncIterator[bytes]:
        for m in messages:
            yield m

    began = time.perf_counter()
    result = await call(stream(), metadata=meta, timeout=600)
    return time.perf_counter() - began, result


async def _stream_once(
    stub: pb_grpc.DeliveryServiceStub, meta: tuple[tuple[str, str], ...], survey_id: str
) -> tuple[float, int]:
    began = time.perf_counter()
    count = 0
    call = stub.StreamResponses(
        pb.StreamResponsesRequest(survey_id=survey_id, batch_size=5000), metadata=meta, timeout=600
    )
    async for message in call:
        count += len(message.responses)
    return time.perf_counter() - began, count


async def _copy_once(conn: asyncpg.Connection, records: list[tuple[Any, ...]], run: int) -> float:
    table = f"copy_baseline_{run}"
    await conn.execute(
        f"CREATE TABLE {table} (survey_id uuid, id text, completed boolean, payload bytea)"
    )
    began = time.perf_counter()
    await conn.copy_records_to_table(
        table, records=records, columns=("survey_id", "id", "completed", "payload")
    )
    return time.perf_counter() - began


async def _start_service(dsn: str, port: int) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "SURVEYMESH_JWT_SECRET": SECRET,
        "SURVEYMESH_BIND_HOST": "localhost",
        "SURVEYMESH_DELIVERY_PORT": str(port),
        "SURVEYMESH_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "delivery_svc", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"delivery_svc exited with {process.returncode}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("delivery_svc did not become ready within 60 s")
            await asyncio.sleep(0.2)


async def _stop_service(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def run(n: int = 100_000, batch: int = 2000, runs: int = RUNS) -> dict[str, Any]:
    """Runs the benchmark and returns its figures (rows/s are medians of ``runs`` runs)."""
    if not 1000 <= batch <= 5000:
        raise ValueError("batch must be between 1000 and 5000")
    if runs < 1:
        raise ValueError("runs must be at least 1")
    responses = generate(n)
    encoded = [
        pb.ImportResponsesRequest(responses=responses[i : i + batch]).SerializeToString()
        for i in range(0, n, batch)
    ]
    payload_bytes = sum(r.ByteSize() for r in responses)
    # The same rows in the same column shapes, as the service stores them.
    sid = uuid.uuid4()
    records = [(sid, r.id, r.completed, r.SerializeToString()) for r in responses]
    del responses

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
        await pg.start()
        try:
            await pg.ensure_database("bench_delivery")
            dsn = pg.dsn("bench_delivery")
            port = free_port()
            service = await _start_service(dsn, port)
            authority = TokenAuthority(SECRET)
            meta = bearer_metadata(authority.mint(org="bench", user="bench", roles=["analyst"]))
            conn = await asyncpg.connect(dsn)
            try:
                async with grpc.aio.insecure_channel(
                    f"localhost:{port}",
                    options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
                ) as channel:
                    stub = pb_grpc.DeliveryServiceStub(channel)
                    import_times: list[float] = []
                    copy_times: list[float] = []
                    for i in range(runs):
                        copy_times.append(await _copy_once(conn, records, i))
                        elapsed, result = await _import_once(channel, stub, meta, encoded)
                        if result.accepted_count != n:
                            raise RuntimeError(f"expected {n} accepted, got {result}")
                        import_times.append(elapsed)
                    surveys = await stub.ListSurveys(
                        pb.ListSurveysRequest(page_size=1), metadata=meta
                    )
                    stream_times: list[float] = []
                    for _ in range(runs):
                        elapsed, count = await _stream_once(stub, meta, surveys.surveys[0].id)
                        if count != n:
                            raise RuntimeError(f"streamed {count} of {n}")
                        stream_times.append(elapsed)
            finally:
                await conn.close()
                await _stop_service(service)
        finally:
            await pg.stop()

    import_s = statistics.median(import_times)
    copy_s = statistics.median(copy_times)
    stream_s = statistics.median(stream_times)
    return {
        "benchmark": "delivery_import",
        "n": n,
        "batch_size": batch,
        "questions": 10,
        "avg_response_bytes": round(payload_bytes / n),
        "runs": runs,
        "import_seconds": [round(t, 3) for t in import_times],
        "import_rows_per_s": round(n / import_s),
        "baseline_copy_seconds": [round(t, 3) for t in copy_times],
        "baseline_copy_rows_per_s": round(n / copy_s),
        "import_share_of_copy": round(copy_s / import_s, 2),
        "ratio_copy_over_import": round(import_s / copy_s, 2),
        "stream_seconds": [round(t, 3) for t in stream_times],
        "stream_rows_per_s": round(n / stream_s),
    }


def main() -> None:
    """``python -m bench.bench_import``: prints the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="responses per run")
    parser.add_argument("--batch", type=int, default=2000, help="responses per message (1000-5000)")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each measurement")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.n, args.batch, args.runs)), indent=2))


if __name__ == "__main__":
    main()
