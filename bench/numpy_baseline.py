"""The in-process baseline of a quick report: one COPY out of PostgreSQL, numpy statistics.

DESIGN.md ("Benchmarks: what the baselines mean"): the baseline of SurveyMesh's end-to-end
report reads the same rows from PostgreSQL with one COPY and computes the same statistics
with numpy in one process. Here: ``COPY (SELECT completed, payload FROM responses WHERE
survey_id = $1) TO STDOUT (FORMAT binary)`` from Delivery's database, each payload decoded
as the ``Response`` it is, then the quick report's statistics — completion rate and
duration summary, weekly trend, per-question numeric summaries and distributions, choice
distributions, free-text lengths, NPS and CSAT — with numpy.
"""

from __future__ import annotations

import struct
import time
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import numpy as np

from surveymesh.delivery.v1 import response_pb2

_ROW = struct.Struct("!hi")
_LEN = struct.Struct("!i")
NUMERIC = ("rating", "nps", "number")


class _Rows:
    """Incremental parser of PostgreSQL's binary COPY format (two columns: bool, bytea)."""

    def __init__(self) -> None:
        self.buf = b""
        self.header = False
        self.completed = 0
        self.done: list[float] = []
        self.durations: list[float] = []
        self.numbers: dict[str, list[float]] = defaultdict(list)
        self.choices: dict[str, Counter[str]] = defaultdict(Counter)
        self.text_len: dict[str, list[int]] = defaultdict(list)
        self.rows = 0

    async def feed(self, chunk: bytes) -> None:
        buf = self.buf + chunk
        pos = 0
        if not self.header:
            if len(buf) < 19:
                self.buf = buf
                return
            ext = _LEN.unpack_from(buf, 15)[0]
            pos = 19 + ext
            self.header = True
        n = len(buf)
        while pos + 2 <= n:
            fields = struct.unpack_from("!h", buf, pos)[0]
            if fields == -1:
                pos = n
                break
            # completed: int32 length 1 + one byte; payload: int32 length + bytes.
            if pos + 2 + 5 + 4 > n:
                break
            plen = _LEN.unpack_from(buf, pos + 7)[0]
            end = pos + 11 + plen
            if end > n:
                break
            self._row(buf[pos + 6] == 1, buf[pos + 11 : end])
            pos = end
        self.buf = buf[pos:]

    def _row(self, completed: bool, payload: bytes) -> None:
        r = response_pb2.Response.FromString(payload)
        self.rows += 1
        if not completed:
            return  # a quick report analyses completed responses only
        self.completed += 1
        if r.HasField("complete_time"):
            self.done.append(r.complete_time.seconds)
            self.durations.append(r.complete_time.seconds - r.start_time.seconds)
        for a in r.answers:
            kind = a.WhichOneof("value")
            if kind in NUMERIC:
                self.numbers[a.question_id].append(getattr(a, kind))
            elif kind == "choice":
                self.choices[a.question_id][a.choice] += 1
            elif kind == "choices":
                self.choices[a.question_id].update(a.choices.values)
            elif kind == "text":
                self.text_len[a.question_id].append(len(a.text))


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [25, 50, 75]) if values.size else [0.0, 0.0, 0.0]
    return {
        "n": int(values.size),
        "mean": float(values.mean()) if values.size else 0.0,
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()) if values.size else 0.0,
        "max": float(values.max()) if values.size else 0.0,
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
    }


def statistics_of(rows: _Rows) -> dict[str, Any]:
    """The quick report's statistics from the decoded rows."""
    done = np.asarray(rows.done, dtype=np.float64)
    durations = np.asarray(rows.durations, dtype=np.float64)
    weeks = np.unique((done // (7 * 86400)).astype(np.int64), return_counts=True)
    out: dict[str, Any] = {
        "responses": rows.rows,
        "completed": rows.completed,
        "completion_rate": rows.completed / rows.rows if rows.rows else 0.0,
        "duration": _summary(durations),
        "trend": dict(zip(weeks[0].tolist(), weeks[1].tolist(), strict=True)),
        "questions": {},
    }
    for qid, values in rows.numbers.items():
        v = np.asarray(values, dtype=np.float64)
        entry: dict[str, Any] = {"summary": _summary(v)}
        if v.size and v.max() <= 10 and np.all(v == np.round(v)):
            entry["distribution"] = np.bincount(v.astype(np.int64), minlength=11).tolist()
            if v.max() <= 5:  # rating: CSAT = share of 4 and 5
                entry["csat"] = float(np.mean(v >= 4))
            else:  # nps: promoters minus detractors
                entry["nps"] = float(100 * (np.mean(v >= 9) - np.mean(v <= 6)))
        out["questions"][qid] = entry
    for qid, counts in rows.choices.items():
        total = sum(counts.values())
        out["questions"][qid] = {k: (c, c / total) for k, c in counts.most_common()}
    for qid, lengths in rows.text_len.items():
        out["questions"][qid] = {"n": len(lengths), "mean_length": float(np.mean(lengths))}
    return out


async def run(dsn: str, survey_id: str) -> tuple[float, dict[str, Any]]:
    """Seconds for connect + COPY + decode + statistics, and the statistics."""
    began = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        rows = _Rows()
        await conn.copy_from_query(
            "SELECT completed, payload FROM delivery.responses WHERE survey_id = $1",
            survey_id,
            output=rows.feed,
            format="binary",
        )
    finally:
        await conn.close()
    stats = statistics_of(rows)
    return time.perf_counter() - began, stats
