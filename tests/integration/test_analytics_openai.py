"""The sentiment and themes activities with the real ``openai`` client against a local
OpenAI-compatible server (aiohttp) that this test starts: valid answers, malformed JSON,
429 then success, 500s and answers too slow for the client's timeout.

The activities run in Temporal's ``ActivityEnvironment`` (which sets the attempt number
the fallback policy reads) against a real reporting database with a generated snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bench.analytics_data import GenQuestion, create_report, generate_snapshot
from reporting_svc import store
from surveymesh.auth import TokenAuthority
from surveymesh.config import Settings
from surveymesh.db import open_database
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.workflow_contract import ReportOptionsInput
from tests.conftest import TEST_SECRET
from tests.integration.fake_openai import MODEL, NEGATIVE_WORDS, FakeOpenAI, serve_fake_openai
from worker.activities import AI_ATTEMPTS, ReportActivities
from worker.models import ReportRef, StageInput
from worker.peers import ServiceTokens

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with serve_fake_openai() as fake:
        yield fake


@pytest.fixture(scope="module")
async def pool(new_database: Callable[[str], Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    p = await open_database(
        await new_database("ai"), schema=store.SCHEMA, migrations=store.MIGRATIONS
    )
    yield p
    await p.close()


QUESTIONS = [
    GenQuestion("why", "free_text", answer_rate=1.0),
    GenQuestion("nps", "nps"),
]


@dataclass
class Lane:
    acts: ReportActivities
    ref: ReportRef
    fake: FakeOpenAI


@pytest.fixture
async def lane(
    pool: asyncpg.Pool, fake_openai: FakeOpenAI
) -> AsyncIterator[Callable[..., Awaitable[Lane]]]:
    made: list[ReportActivities] = []
    channel = grpc.aio.insecure_channel("localhost:9")  # never called by these activities

    async def make(mode: str, *, client_timeout: float = 5.0, n: int = 240) -> Lane:
        fake_openai.mode, fake_openai.requests = mode, 0
        fake_openai.statuses.clear()
        fake_openai.schemas.clear()
        async with pool.acquire() as conn:
            report_id = await create_report(conn, "org-ai")
            await generate_snapshot(conn, report_id, n, QUESTIONS, seed=0.1)
        settings = Settings(
            database_url="postgresql://unused",
            jwt_secret=TEST_SECRET,
            openai_api_key="sk-test",
            openai_base_url=f"http://127.0.0.1:{fake_openai.port}/v1",
            openai_model=MODEL,
            openai_timeout=client_timeout,
            openai_max_retries=1,
        )
        acts = ReportActivities(
            pool,
            dgrpc.DeliveryServiceStub(channel),
            ngrpc.NotificationServiceStub(channel),
            ServiceTokens(TokenAuthority(TEST_SECRET)),
            settings,
        )
        made.append(acts)
        ref = ReportRef(
            report_id, "org-ai", "survey-bench", "alice", "full",
            ReportOptionsInput(segment_by=["region"]),
        )  # fmt: skip
        return Lane(acts, ref, fake_openai)

    yield make
    for a in made:
        await a.aclose()
    await channel.close()


def _env(attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return env


async def _component(pool: asyncpg.Pool, report_id: str, name: str) -> dict[str, Any]:
    data = await pool.fetchval(
        "SELECT data FROM report_components WHERE report_id = $1 AND component_type = $2",
        report_id,
        name,
    )
    assert data is not None, f"{name} was not stored"
    out: dict[str, Any] = orjson.loads(data)
    return out


async def _run_both(lane: Lane, attempt: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    inp = StageInput(lane.ref, 55, 85)
    await _env(attempt).run(lane.acts.analyze_sentiment, inp)
    await _env(attempt).run(lane.acts.extract_themes, inp)
    pool = lane.acts._pool
    return (
        await _component(pool, lane.ref.report_id, "sentiment"),
        await _component(pool, lane.ref.report_id, "themes"),
    )


async def test_valid_answers_give_openai_components(
    lane: Callable[..., Awaitable[Lane]], pool: asyncpg.Pool
) -> None:
    ln = await lane("valid")
    sentiment, themes = await _run_both(ln)
    prov = sentiment["provenance"]
    assert prov["analyzer"] == f"openai:{MODEL}" and "fallback_from" not in prov
    assert prov["prompt_version"] == "sentiment-v1"
    assert sentiment["confidence"] == pytest.approx(0.9)
    (q,) = sentiment["questions"]
    rows = await pool.fetch(
        "SELECT s.label, a.text FROM answer_sentiment s JOIN snapshot_answers a"
        " USING (report_id, question_id, response_id) WHERE s.report_id = $1",
        ln.ref.report_id,
    )
    assert q["n"] == len(rows) == 240
    for r in rows:  # the model's labels, stored per answer
        neg = any(w in r["text"].lower() for w in NEGATIVE_WORDS)
        assert r["label"] == (-1 if neg else 1)
    assert q["counts"]["negative"] == sum(r["label"] == -1 for r in rows)
    assert set(q["segments"]["region"]) == {"EMEA", "NA", "APAC", "LATAM"}
    negative_quote = q["quotes"]["negative"][0]
    assert any(w in negative_quote["text"].lower() for w in NEGATIVE_WORDS)
    # Batched: 240 answers, at most 50 per request.
    assert ln.fake.schemas.count("sentiment_batch") >= 5

    assert themes["provenance"]["analyzer"] == f"openai:{MODEL}"
    (tq,) = themes["questions"]
    names = [t["name"] for t in tq["themes"]]
    assert set(names) <= {"Support", "Reports"} and names
    for t in tq["themes"]:
        assert t["description"] and t["evidence"] and t["share_ci95"][0] <= t["share"]
        for ev in t["evidence"]:
            text = await pool.fetchval(
                "SELECT text FROM snapshot_answers WHERE report_id = $1 AND response_id = $2"
                " AND question_id = 'why'",
                ln.ref.report_id,
                ev["response_id"],
            )
            assert text == ev["text"] and t["name"].lower().rstrip("s") in text.lower()
    assert 0 < themes["confidence"] <= 1


async def test_malformed_answer_is_retried(lane: Callable[..., Awaitable[Lane]]) -> None:
    ln = await lane("malformed_once")
    sentiment, _ = await _run_both(ln)
    assert sentiment["provenance"]["analyzer"] == f"openai:{MODEL}"
    # The first request's answer was cut off and asked again.
    batches = ln.fake.schemas.count("sentiment_batch")
    assert batches == sentiment["questions"][0]["n"] // 50 + 1 + 1


async def test_always_malformed_falls_back_to_local(lane: Callable[..., Awaitable[Lane]]) -> None:
    ln = await lane("malformed")
    sentiment, themes = await _run_both(ln)
    for comp, local in ((sentiment, "local:vader"), (themes, "local:tfidf-nmf")):
        prov = comp["provenance"]
        assert prov["analyzer"] == local
        assert prov["fallback_from"] == f"openai:{MODEL}"
        assert prov["fallback_reason"] == "AI_MALFORMED_ANSWER"
    assert sentiment["questions"][0]["n"] == 240
    assert themes["questions"][0]["themes"]


async def test_rate_limited_then_success(lane: Callable[..., Awaitable[Lane]]) -> None:
    ln = await lane("429_then_valid")
    sentiment, themes = await _run_both(ln)
    assert sentiment["provenance"]["analyzer"] == f"openai:{MODEL}"
    assert themes["provenance"]["analyzer"] == f"openai:{MODEL}"
    assert 429 in ln.fake.statuses and ln.fake.statuses.count(200) >= 5


async def test_server_errors_retry_the_activity_then_fall_back(
    lane: Callable[..., Awaitable[Lane]],
) -> None:
    ln = await lane("500")
    inp = StageInput(ln.ref, 55, 85)
    with pytest.raises(ApplicationError) as err:
        await _env(1).run(ln.acts.analyze_sentiment, inp)
    assert err.value.type == "AI_UNAVAILABLE" and not err.value.non_retryable
    assert ln.fake.statuses[:2] == [500, 500]  # the client retried once itself
    sentiment, themes = await _run_both(ln, attempt=AI_ATTEMPTS)
    for comp in (sentiment, themes):
        assert comp["provenance"]["fallback_from"] == f"openai:{MODEL}"
        assert comp["provenance"]["fallback_reason"] == "AI_UNAVAILABLE"
    assert sentiment["provenance"]["analyzer"] == "local:vader"


async def test_slow_answers_time_out_and_fall_back(lane: Callable[..., Awaitable[Lane]]) -> None:
    ln = await lane("slow", client_timeout=0.5, n=30)
    inp = StageInput(ln.ref, 55, 85)
    with pytest.raises(ApplicationError) as err:
        await _env(1).run(ln.acts.analyze_sentiment, inp)
    assert err.value.type == "AI_UNAVAILABLE" and "Timeout" in str(err.value)
    await _env(AI_ATTEMPTS).run(ln.acts.analyze_sentiment, inp)
    sentiment = await _component(ln.acts._pool, ln.ref.report_id, "sentiment")
    assert sentiment["provenance"]["analyzer"] == "local:vader"
    assert sentiment["provenance"]["fallback_reason"] == "AI_UNAVAILABLE"
