"""Generated report snapshots with known properties, written straight into the reporting DB.

The statistics tests and :mod:`bench.bench_analytics` need snapshots of 10k to 1M
responses without streaming them through Delivery. PostgreSQL generates them itself
(``generate_series`` and ``random()`` after ``setseed``, with parallel query off so the
sequence of random numbers is reproducible), so a million responses with 20 questions take
seconds to create, not minutes.

Known properties (the effects a correct report must find, and the non-effects it must not):
    * respondent attributes: ``plan`` (free 30 % / pro 50 % / enterprise 20 %), ``region``
      (EMEA, NA, APAC, LATAM, a quarter each, independent of plan), ``cohort`` (40 values:
      too many for a default segment) and ``source`` (one value: too few);
    * each question may have an ``effect``: a shift of its mean (or of an option's
      probability) for each group of one attribute; questions without one are pure noise.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from surveymesh.reporting.v1 import report_pb2

PLANS = ("free", "pro", "enterprise")
REGIONS = ("EMEA", "NA", "APAC", "LATAM")
# SQL expressions of a response's group index from its number i (see the module docstring).
PLAN_SQL = "(CASE WHEN (i * 9) % 10 < 3 THEN 0 WHEN (i * 9) % 10 < 8 THEN 1 ELSE 2 END)"
REGION_SQL = "((i / 10) % 4)"
GROUP_SQL = {"plan": PLAN_SQL, "region": REGION_SQL}
NORMAL_SQL = "(sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))"
POSITIVE = (
    "Support was quick and helpful, great team",
    "I love the reports, very useful and fast",
    "Great value for the price, happy with it",
)
NEGATIVE = (
    "The price is too high and billing is confusing",
    "Support was slow and the answers were unhelpful",
    "Reports are slow to load, terrible performance",
)


@dataclass
class GenQuestion:
    """One generated question.

    Attributes:
        id: Question id.
        type: rating | nps | number | single_choice | multiple_choice | free_text.
        effect_by: The attribute whose groups shift the answers (None: no effect).
        shift: Per group of ``effect_by``: added to the mean (rating, NPS), to the log mean
            (number), or to the probability of the first option (choices).
        answer_rate: Share of respondents who answer.
    """

    id: str
    type: str
    effect_by: str | None = None
    shift: Sequence[float] = ()
    answer_rate: float = 0.9
    options: list[str] = field(default_factory=list)

    def definition(self) -> dict[str, Any]:
        """The question as a snapshot's survey stores it."""
        return {
            "id": self.id,
            "text": f"Question {self.id}",
            "type": self.type,
            "options": list(self.options),
            "required": False,
            "min_value": None,
            "max_value": None,
        }


def planted_questions() -> list[GenQuestion]:
    """The questions of the statistics tests: real effects and pure noise, every type."""
    return [
        GenQuestion("recommend", "nps", "plan", (-1.0, 0.0, 1.5)),
        GenQuestion("support", "rating", "region", (0.0, 0.0, -1.0, 0.0)),
        GenQuestion("ease", "rating"),
        GenQuestion("seats", "number", "plan", (0.0, 1.0, 2.0)),
        GenQuestion("spend", "number"),
        GenQuestion("channel", "single_choice", options=["web", "phone", "email", "chat"]),
        GenQuestion(
            "fit", "single_choice", "plan", (0.0, 0.1, 0.35), options=["great", "ok", "poor"]
        ),
        GenQuestion("features", "multiple_choice", options=["api", "sso", "export", "alerts"]),
        GenQuestion("why", "free_text", answer_rate=0.6),
    ]


def bench_questions(count: int = 20) -> list[GenQuestion]:
    """``count`` questions cycling through the numeric and choice types, some with effects."""
    kinds = ["rating", "nps", "number", "single_choice", "multiple_choice"]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        effect = "plan" if i % 2 == 0 else None
        shift: tuple[float, ...] = (0.0, 0.3, 0.8) if effect else ()
        options = [f"opt{j}" for j in range(5)] if "choice" in kind else []
        out.append(GenQuestion(f"q{i:02d}", kind, effect, shift, options=options))
    return out


def _answer_sql(q: GenQuestion) -> tuple[str, str, str]:
    """SQL expressions of (number, text, choices) for question ``q`` (row variable ``i``)."""
    if q.effect_by:
        shifts = ",".join(f"{s:.6f}" for s in q.shift)
        shift = f"(ARRAY[{shifts}]::float8[])[1 + {GROUP_SQL[q.effect_by]}]"
    else:
        shift = "0.0"
    if q.type == "rating":
        number = f"least(5, greatest(1, round(3.4 + {shift} + 0.9 * {NORMAL_SQL})))"
        return number, "NULL", "NULL"
    if q.type == "nps":
        number = f"least(10, greatest(0, round(7.0 + {shift} + 1.8 * {NORMAL_SQL})))"
        return number, "NULL", "NULL"
    if q.type == "number":
        return f"round(exp(2.5 + {shift} + 0.6 * {NORMAL_SQL}))", "NULL", "NULL"
    opts = "(ARRAY[" + ",".join(f"'{o}'" for o in q.options) + "])"
    k = len(q.options)
    if q.type == "single_choice":
        text = (
            f"CASE WHEN random() < 1.0 / {k} + {shift} THEN {opts}[1]"
            f" ELSE {opts}[2 + floor(random() * {k - 1})::int] END"
        )
        return "NULL", text, "NULL"
    if q.type == "multiple_choice":
        choices = (
            # "i > 0" correlates the subquery with the row, so it runs per response.
            f"coalesce(nullif(ARRAY(SELECT o FROM unnest({opts}) WITH ORDINALITY AS u(o, j)"
            f" WHERE i > 0 AND random() < 0.35 + CASE WHEN j = 1 THEN {shift} ELSE 0 END ORDER BY j),"
            f" '{{}}'::text[]), {opts}[1:1])"
        )
        return "NULL", "NULL", choices
    pos = "(ARRAY[" + ",".join(f"'{t}'" for t in POSITIVE) + "])"
    neg = "(ARRAY[" + ",".join(f"'{t}'" for t in NEGATIVE) + "])"
    text = (
        f"CASE WHEN random() < 0.6 THEN {pos}[1 + floor(random() * 3)::int]"
        f" ELSE {neg}[1 + floor(random() * 3)::int] END"
    )
    return "NULL", text, "NULL"


async def create_report(conn: asyncpg.Connection, org: str = "org-bench") -> str:
    """Inserts a QUEUED report row (as Reporting does) and returns its id."""
    report_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO reports (id, org_id, survey_id, kind, state, options, request_id,"
        " workflow_id, creator) VALUES ($1, $2, 'survey-bench', $3, $4, '{}'::jsonb, $5, $6,"
        " 'bench')",
        report_id,
        org,
        report_pb2.REPORT_KIND_QUICK,
        report_pb2.REPORT_STATE_QUEUED,
        uuid.uuid4().hex,
        f"report/{org}/{uuid.uuid4().hex}",
    )
    return report_id


async def generate_snapshot(
    conn: asyncpg.Connection,
    report_id: str,
    n: int,
    questions: Sequence[GenQuestion],
    *,
    seed: float = 0.42,
) -> dict[str, Any]:
    """Writes a done snapshot of ``n`` responses to ``questions``; returns its survey dict
    (as ``ReportActivities._survey`` returns it: with ``response_count``)."""
    await conn.execute("SET max_parallel_workers_per_gather = 0")
    await conn.execute("SELECT setseed($1)", seed)
    await conn.execute(
        f"""
        INSERT INTO snapshot_responses
            (report_id, response_id, start_time, complete_time, completed, attributes)
        SELECT $1, 'r' || lpad(i::text, 8, '0'), s,
               CASE WHEN c THEN s + (30 + floor(random() * 870)) * interval '1 second' END,
               c,
               jsonb_build_object(
                   'plan', (ARRAY['free','pro','enterprise'])[1 + {PLAN_SQL}],
                   'region', (ARRAY['EMEA','NA','APAC','LATAM'])[1 + {REGION_SQL}],
                   'cohort', 'c' || (i % 40), 'source', 'web')
        FROM (SELECT i, random() < 0.9 AS c,
                     timestamptz '2024-05-01 00:00+00' + random() * interval '28 days' AS s
              FROM generate_series(1, $2) AS i) g
        """,
        report_id,
        n,
    )
    for q in questions:
        number, text, choices = _answer_sql(q)
        await conn.execute(
            f"""
            INSERT INTO snapshot_answers
                (report_id, question_id, response_id, number, text, choices)
            SELECT $1, $2, 'r' || lpad(i::text, 8, '0'), {number}, {text}, {choices}
            FROM generate_series(1, $3) AS i WHERE random() < $4
            """,
            report_id,
            q.id,
            n,
            q.answer_rate,
        )
    survey = {
        "title": "Generated survey",
        "questions": [q.definition() for q in questions],
        "all_responses": n,
    }
    await conn.execute(
        "INSERT INTO snapshots (report_id, snapshot_watermark, copied, total, done, survey)"
        " VALUES ($1, 1, $2, $2, true, $3)",
        report_id,
        n,
        survey,
    )
    await conn.execute("RESET max_parallel_workers_per_gather")
    return {**survey, "response_count": n}
