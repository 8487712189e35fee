"""A realistic demo survey: every question type, segments, and free text in several moods.

The data is generated from a fixed seed with known properties, so the demo report shows
real signal: enterprise customers are truly more likely to recommend (NPS), support
complaints cluster in one region, and the free text carries recognisable themes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from surveymesh.delivery.v1 import response_pb2, survey_pb2

QT = survey_pb2.QuestionType
DEMO_SURVEY_REQUEST_ID = "demo-customer-experience-v1"
DEMO_EMAIL_USER = "demo-analyst"

FEATURES = ["Dashboards", "Exports", "API", "Alerts", "Integrations", "Mobile app"]
PLAN_FIT = ["Perfectly", "Mostly", "Somewhat", "Not at all"]
REGIONS = ["EMEA", "North America", "APAC", "LATAM"]
PLANS = ["free", "pro", "enterprise"]

# Free-text snippets by theme and mood; combined so answers read like people wrote them.
_TEXT = {
    "support": {
        "positive": [
            "Support answered within minutes and solved my problem.",
            "The support team is friendly and really knows the product.",
        ],
        "negative": [
            "Support took four days to reply to a critical ticket.",
            "I was passed between three support agents and nobody fixed the issue.",
        ],
        "neutral": ["I contacted support once about billing; it was handled."],
    },
    "pricing": {
        "positive": ["Great value for the price, cheaper than the alternatives."],
        "negative": [
            "The price increase this year was hard to justify.",
            "Too expensive for a small team, the per-seat pricing hurts.",
        ],
        "neutral": ["Pricing is about what I expected for this kind of tool."],
    },
    "performance": {
        "positive": ["Dashboards load instantly, even with a lot of data."],
        "negative": [
            "The app is slow and dashboards often time out.",
            "Exports fail on large data sets and the page freezes.",
        ],
        "neutral": ["Speed is fine most of the day, a bit slower in the morning."],
    },
    "onboarding": {
        "positive": ["Onboarding was smooth and the tutorials are excellent."],
        "negative": ["Setting up the integrations was confusing and poorly documented."],
        "neutral": ["Onboarding took about a week, as planned."],
    },
    "reporting": {
        "positive": ["I love the reports, my boss reads them every Monday."],
        "negative": ["Reports are missing the filters we need for our board meetings."],
        "neutral": ["We mostly use the standard reports."],
    },
}


def demo_survey() -> survey_pb2.Survey:
    """The demo survey definition."""
    return survey_pb2.Survey(
        title="Customer Experience — Q4",
        description="Quarterly survey of Acme customers: loyalty, satisfaction and feedback.",
        questions=[
            survey_pb2.Question(
                id="recommend",
                text="How likely are you to recommend Acme to a friend or colleague?",
                type=QT.QUESTION_TYPE_NPS,
                required=True,
            ),
            survey_pb2.Question(
                id="satisfaction",
                text="Overall, how satisfied are you with Acme?",
                type=QT.QUESTION_TYPE_RATING,
                required=True,
            ),
            survey_pb2.Question(
                id="plan_fit",
                text="How well does your plan fit your needs?",
                type=QT.QUESTION_TYPE_SINGLE_CHOICE,
                options=PLAN_FIT,
            ),
            survey_pb2.Question(
                id="features",
                text="Which features do you use regularly?",
                type=QT.QUESTION_TYPE_MULTIPLE_CHOICE,
                options=FEATURES,
            ),
            survey_pb2.Question(
                id="support_rating",
                text="How would you rate our support?",
                type=QT.QUESTION_TYPE_RATING,
            ),
            survey_pb2.Question(
                id="team_size",
                text="How many people on your team use Acme?",
                type=QT.QUESTION_TYPE_NUMBER,
                min_value=1,
                max_value=10000,
            ),
            survey_pb2.Question(
                id="improve",
                text="What should we improve?",
                type=QT.QUESTION_TYPE_FREE_TEXT,
            ),
            survey_pb2.Question(
                id="like_most",
                text="What do you like most about Acme?",
                type=QT.QUESTION_TYPE_FREE_TEXT,
            ),
        ],
    )


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _text(rng: random.Random, mood: str, *, avoid_negative: bool = False) -> str:
    themes = rng.sample(list(_TEXT), k=rng.choice([1, 1, 2]))
    parts = []
    for theme in themes:
        m = "positive" if avoid_negative and mood == "negative" else mood
        parts.append(rng.choice(_TEXT[theme][m]))
    return " ".join(parts)


def demo_responses(count: int = 3000, *, seed: int = 7) -> Iterator[response_pb2.Response]:
    """Yields ``count`` deterministic responses (ids ``demo-000001`` …) to the demo survey."""
    rng = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    for i in range(1, count + 1):
        region = rng.choices(REGIONS, weights=[35, 40, 15, 10])[0]
        plan = rng.choices(PLANS, weights=[30, 50, 20])[0]
        # Enterprise customers are truly more loyal; the report's segment test should flag it.
        loyalty = {"free": 6.2, "pro": 7.2, "enterprise": 8.6}[plan] + rng.gauss(0, 1.8)
        nps = max(0, min(10, round(loyalty)))
        satisfaction = max(1, min(5, round(1 + (loyalty / 10) * 4 + rng.gauss(0, 0.6))))
        # Support is slow in APAC: its support rating is lower.
        support = max(1, min(5, round(rng.gauss(2.6 if region == "APAC" else 3.9, 0.9))))
        mood = "positive" if nps >= 9 else "negative" if nps <= 6 else "neutral"
        started = start + timedelta(days=rng.random() * 55, seconds=rng.randint(0, 86399))
        completed = rng.random() < 0.88
        r = response_pb2.Response(
            id=f"demo-{i:06d}",
            start_time=_ts(started),
            completed=completed,
            attributes={"region": region, "plan": plan},
        )
        if completed:
            r.complete_time.CopyFrom(_ts(started + timedelta(seconds=rng.randint(45, 900))))
        answers = [
            response_pb2.Answer(question_id="recommend", nps=nps),
            response_pb2.Answer(question_id="satisfaction", rating=satisfaction),
        ]
        if rng.random() < 0.95:
            fit = PLAN_FIT[min(3, max(0, 3 - round((loyalty - 2) / 2.5)))]
            answers.append(response_pb2.Answer(question_id="plan_fit", choice=fit))
        if rng.random() < 0.9:
            used = [f for f in FEATURES if rng.random() < (0.75 if f == "Dashboards" else 0.35)]
            if used:
                answers.append(
                    response_pb2.Answer(
                        question_id="features", choices=response_pb2.ChoiceList(values=used)
                    )
                )
        if rng.random() < 0.7:
            answers.append(response_pb2.Answer(question_id="support_rating", rating=support))
        if rng.random() < 0.8:
            seats = {"free": 3, "pro": 25, "enterprise": 400}[plan] * rng.lognormvariate(0, 0.6)
            answers.append(
                response_pb2.Answer(
                    question_id="team_size", number=float(max(1, min(10000, round(seats))))
                )
            )
        if rng.random() < 0.6:
            answers.append(response_pb2.Answer(question_id="improve", text=_text(rng, mood)))
        if rng.random() < 0.45:
            answers.append(
                response_pb2.Answer(
                    question_id="like_most", text=_text(rng, "positive", avoid_negative=True)
                )
            )
        if not completed:
            # Incomplete responses stop part-way through.
            answers = answers[: rng.randint(1, max(1, len(answers) - 1))]
        r.answers.extend(answers)
        yield r


async def load_and_report(
    settings: object,
    token: str,
    *,
    count: int = 3000,
    request_id: str,
    on_event: object = None,
) -> tuple[str, str, int]:
    """Loads the demo survey into a running mesh, generates a FULL report and follows it.

    Args:
        settings: The mesh's :class:`~surveymesh.config.Settings`.
        token: A bearer token of an analyst of the demo organization.
        count: How many responses to import.
        request_id: Idempotency key of the report request.
        on_event: Called with each ``ReportEvent`` as it streams in.

    Returns:
        (survey id, report id, the report's final ``ReportState``).
    """
    import grpc

    from surveymesh.auth import bearer_metadata
    from surveymesh.config import Settings
    from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
    from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
    from surveymesh.reporting.v1 import report_pb2
    from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
    from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc

    assert isinstance(settings, Settings)
    md = bearer_metadata(token)
    async with (
        grpc.aio.insecure_channel(settings.peer("delivery")) as dch,
        grpc.aio.insecure_channel(settings.peer("reporting")) as rch,
    ):
        delivery = dgrpc.DeliveryServiceStub(dch)
        reporting = rgrpc.ReportingServiceStub(rch)
        created = await delivery.CreateSurvey(
            dpb.CreateSurveyRequest(survey=demo_survey(), request_id=DEMO_SURVEY_REQUEST_ID),
            metadata=md,
            timeout=10,
        )
        survey_id = created.survey.id

        async def batches() -> object:
            batch: list[response_pb2.Response] = []
            for r in demo_responses(count):
                batch.append(r)
                if len(batch) == 1000:
                    yield dpb.ImportResponsesRequest(survey_id=survey_id, responses=batch)
                    batch = []
            if batch:
                yield dpb.ImportResponsesRequest(survey_id=survey_id, responses=batch)

        await delivery.ImportResponses(batches(), metadata=md, timeout=300)
        generated = await reporting.GenerateReport(
            rpb.GenerateReportRequest(
                survey_id=survey_id,
                kind=report_pb2.REPORT_KIND_FULL,
                # An email too, so the demo shows all three channels (no SMTP_URL: the
                # data dir's outbox).
                options=report_pb2.ReportOptions(
                    segment_by=["plan", "region"], notify_email=f"{DEMO_EMAIL_USER}@example.com"
                ),
                request_id=request_id,
            ),
            metadata=md,
            timeout=30,
        )
        report_id = generated.report.id
        stream = reporting.WatchReport(rpb.WatchReportRequest(report_id=report_id), metadata=md)
        state = report_pb2.REPORT_STATE_UNSPECIFIED
        async for message in stream:
            state = message.event.state
            if callable(on_event):
                on_event(message.event)
        return survey_id, report_id, state
