"""Generated survey data with known properties, for the worker's end-to-end tests and
benchmarks: one survey with every question type and responses imported through Delivery.

The generator is seeded, so the same ``n`` always gives the same responses, and returns the
figures a report must reproduce (computed here independently of the worker's analytics).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.delivery.v1 import response_pb2, survey_pb2

Q = survey_pb2
PLANS = ["basic", "pro", "enterprise"]
FEATURES = ["api", "sso", "reports", "export"]
REGIONS = ["eu", "us", "apac"]
POSITIVE = [
    "Support was quick and helpful, great team",
    "I love the reports, very useful and fast",
    "Great value for the price, happy with it",
    "Onboarding was smooth and the docs are excellent",
]
NEGATIVE = [
    "The price is too high and billing is confusing",
    "Support was slow and the answers were unhelpful",
    "Reports are slow to load, terrible performance",
    "The export keeps failing, very frustrating bug",
]
START = datetime(2024, 5, 1, tzinfo=UTC)


def survey_definition(title: str = "Customer pulse") -> survey_pb2.Survey:
    """A survey with one question of each type."""
    return Q.Survey(
        title=title,
        questions=[
            Q.Question(id="plan", text="Which plan?", type=Q.QUESTION_TYPE_SINGLE_CHOICE, options=PLANS),
            Q.Question(id="features", text="Features used?", type=Q.QUESTION_TYPE_MULTIPLE_CHOICE, options=FEATURES),
            Q.Question(id="sat", text="How satisfied are you?", type=Q.QUESTION_TYPE_RATING),
            Q.Question(id="nps", text="Would you recommend us?", type=Q.QUESTION_TYPE_NPS),
            Q.Question(id="seats", text="How many seats?", type=Q.QUESTION_TYPE_NUMBER, min_value=1, max_value=500),
            Q.Question(id="why", text="Why?", type=Q.QUESTION_TYPE_FREE_TEXT),
        ],
    )  # fmt: skip


@dataclass
class Expected:
    """Figures of the completed responses, computed directly from the generated data."""

    completed: int = 0
    total: int = 0
    nps_scores: list[int] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)
    plans: dict[str, int] = field(default_factory=dict)


def generate(
    n: int, *, seed: int = 7, prefix: str = "r"
) -> tuple[list[response_pb2.Response], Expected]:
    """``n`` responses (about 90 % completed; EU respondents rate lower) and their figures."""
    rng = np.random.default_rng(seed)
    out = []
    exp = Expected(total=n)
    for i in range(n):
        region = REGIONS[int(rng.integers(0, 3))]
        completed = bool(rng.random() < 0.9)
        start = START + timedelta(minutes=int(rng.integers(0, 60 * 24 * 14)))
        happy = rng.random() < (0.4 if region == "eu" else 0.7)
        nps = int(rng.integers(7, 11) if happy else rng.integers(0, 8))
        rating = int(rng.integers(4, 6) if happy else rng.integers(1, 4))
        plan = PLANS[int(rng.integers(0, 3))]
        picked = [f for f in FEATURES if rng.random() < 0.5] or [FEATURES[0]]
        text = (POSITIVE if happy else NEGATIVE)[int(rng.integers(0, 4))]
        r = response_pb2.Response(
            id=f"{prefix}{i:07d}",
            completed=completed,
            attributes={"region": region},
            start_time=Timestamp(seconds=int(start.timestamp())),
            answers=[
                response_pb2.Answer(question_id="plan", choice=plan),
                response_pb2.Answer(question_id="features", choices=response_pb2.ChoiceList(values=picked)),
                response_pb2.Answer(question_id="sat", rating=rating),
                response_pb2.Answer(question_id="nps", nps=nps),
                response_pb2.Answer(question_id="seats", number=float(rng.integers(1, 501))),
                response_pb2.Answer(question_id="why", text=text),
            ],
        )  # fmt: skip
        if completed:
            done = start + timedelta(seconds=int(rng.integers(30, 900)))
            r.complete_time.FromSeconds(int(done.timestamp()))
            exp.completed += 1
            exp.nps_scores.append(nps)
            exp.ratings.append(rating)
            exp.plans[plan] = exp.plans.get(plan, 0) + 1
        out.append(r)
    return out, exp


async def create_survey(
    stub: dgrpc.DeliveryServiceStub,
    metadata: Sequence[tuple[str, str]],
    title: str = "Customer pulse",
) -> str:
    """Creates the survey and returns its id."""
    resp = await stub.CreateSurvey(
        dpb.CreateSurveyRequest(survey=survey_definition(title)), metadata=metadata, timeout=30
    )
    return resp.survey.id


async def import_responses(
    stub: dgrpc.DeliveryServiceStub,
    metadata: Sequence[tuple[str, str]],
    survey_id: str,
    responses: Sequence[response_pb2.Response],
    *,
    batch: int = 5000,
) -> dpb.ImportResponsesResponse:
    """Imports ``responses`` in one client stream of ``batch``-sized messages."""

    async def messages() -> AsyncIterator[dpb.ImportResponsesRequest]:
        for i in range(0, len(responses), batch):
            yield dpb.ImportResponsesRequest(
                survey_id=survey_id if i == 0 else "", responses=responses[i : i + batch]
            )

    return await stub.ImportResponses(messages(), metadata=metadata, timeout=600)
