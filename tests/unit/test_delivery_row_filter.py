"""RowFilter, the import's fast path, must agree with ResponseChecker on every row.

It may only ever answer "valid" for a row the full check accepts and whose bytes parse as
a Response; everything else must be left (None) to the full check.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError

from delivery_svc.validation import ResponseChecker, RowFilter
from delivery_svc.wire import ImportRequestView
from surveymesh.delivery.v1 import delivery_service_pb2 as pb
from surveymesh.delivery.v1 import response_pb2
from tests.unit.test_delivery_validation import good, questions

SID = "6f1c1d9a-7c1e-4a53-9d37-0a3f6b1d2e4f"
A = response_pb2.Answer


def decide(raw: bytes) -> tuple[bool | None, bool]:
    """(fast path verdict: True accepted / None undecided, full check verdict)."""
    rows = RowFilter(questions(), SID)
    row = rows.accept(raw)
    try:
        full = ResponseChecker(questions()).check(response_pb2.Response.FromString(raw)) is None
    except DecodeError:
        full = False
    if row is not None:
        rid, completed, payload = row
        stored = response_pb2.Response.FromString(payload)
        assert stored.survey_id == SID
        assert (stored.id, stored.completed) == (rid, completed)
        sent = response_pb2.Response.FromString(raw)
        sent.survey_id = SID
        assert stored == sent
        return True, full
    return None, full


def _incomplete(r: response_pb2.Response, drop_first: bool = False) -> None:
    if drop_first:
        r.answers.pop(0)
    r.ClearField("complete_time")
    r.completed = False


MUTATIONS: list[Callable[[response_pb2.Response], object]] = [
    lambda r: None,
    lambda r: setattr(r, "id", "has space"),
    lambda r: setattr(r, "id", "x" * 129),
    lambda r: setattr(r, "id", "x" * 128),
    lambda r: setattr(r.answers[2], "rating", 6),
    lambda r: setattr(r.answers[3], "nps", -1),
    lambda r: setattr(r.answers[4], "number", math.nan),
    lambda r: setattr(r.answers[0], "choice", "c"),
    lambda r: r.answers[1].choices.values.append("x"),
    lambda r: r.answers[1].choices.ClearField("values"),
    lambda r: setattr(r.answers[5], "text", ""),
    lambda r: setattr(r.answers[5], "text", "t" * 10_000),
    lambda r: setattr(r.answers[5], "text", "é" * 10_000),
    lambda r: setattr(r.answers[5], "text", "t" * 10_001),
    lambda r: setattr(r.answers[5], "rating", 3),
    lambda r: r.answers[5].ClearField("value"),
    lambda r: r.answers.add(question_id="nope", rating=1),
    lambda r: r.answers.add(question_id="rate", rating=1),
    lambda r: r.answers.add(question_id="free", text="again"),
    lambda r: r.ClearField("complete_time"),
    lambda r: _incomplete(r),
    lambda r: r.ClearField("start_time"),
    lambda r: setattr(r.complete_time, "seconds", 99),
    lambda r: setattr(r.start_time, "nanos", -1),
    lambda r: setattr(r.start_time, "nanos", 999_999_999),
    lambda r: setattr(r.start_time, "seconds", -62_135_596_800),
    lambda r: setattr(r.complete_time, "seconds", 10**12),
    lambda r: r.answers.pop(0),
    lambda r: _incomplete(r, drop_first=True),
    lambda r: r.attributes.update({f"k{i}": "v" for i in range(49)}),
    lambda r: r.attributes.update({f"k{i}": "v" for i in range(50)}),
    lambda r: r.attributes.update({"": "v"}),
    lambda r: r.attributes.update({"k" * 65: "v"}),
    lambda r: r.attributes.update({"plan": "v" * 257}),
    lambda r: r.attributes.update({"plan": "v" * 256}),
    lambda r: setattr(r, "survey_id", "another"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_fast_path_agrees_with_full_check(
    mutate: Callable[[response_pb2.Response], object],
) -> None:
    r = good()
    mutate(r)
    fast, full = decide(r.SerializeToString())
    assert fast is None or full
    if mutate is MUTATIONS[0]:
        assert fast is True


def test_unusual_encodings_are_left_to_the_full_check() -> None:
    raw = good().SerializeToString()
    # A timestamp sent twice is merged by the real parser (seconds of one, nanos of other).
    twice = raw + b"\x1a\x02\x10\x05"
    assert decide(twice) == (None, True)
    # Unknown fields, non-minimal varint lengths and a bool encoded as 2 are legal.
    assert decide(raw + b"\x40\x01") == (None, True)
    assert decide(b"\x0a\x82\x00r1" + raw[4:]) == (True, True)
    assert decide(raw + b"\x28\x02") == (None, True)
    # Invalid UTF-8 in a free-text answer, and truncated bytes, never pass.
    no_text = good()
    del no_text.answers[5]
    bad_text = no_text.SerializeToString() + b"\x3a\x0a\x0a\x04free\x3a\x02\xff\xfe"
    assert decide(bad_text) == (None, False)
    assert decide(bad_text[:-2] + b"ok") == (True, True)
    assert decide(raw[:-3]) == (None, False)


def test_random_byte_damage_never_slips_through() -> None:
    rng = random.Random(11)
    base = good()
    base.answers[5].text = "a longer free text answer " * 6
    raw = base.SerializeToString()
    accepted = 0
    for _ in range(20000):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        fast, full = decide(bytes(damaged))
        assert fast is None or full
        accepted += fast is True
    assert accepted > 0


def test_request_view_matches_the_request() -> None:
    request = pb.ImportResponsesRequest(
        survey_id=SID, responses=[good(), response_pb2.Response(id="r2")]
    )
    view = ImportRequestView.FromString(request.SerializeToString())
    assert view.survey_id == SID
    assert [response_pb2.Response.FromString(b) for b in view.responses] == list(request.responses)


def test_remembered_answers_still_count_once_per_response() -> None:
    rows = RowFilter(questions(), SID)
    r = good()
    assert rows.accept(r.SerializeToString()) is not None
    r.answers.add().CopyFrom(r.answers[2])
    # The repeated rating is remembered as valid, yet answering it twice is refused.
    assert rows.accept(r.SerializeToString()) is None
    answer = A(question_id="rate", rating=5).SerializeToString()
    assert b"\x3a" + bytes([len(answer)]) + answer in rows._known


def test_byte_damage_never_slips_through_remembered_fields() -> None:
    """Damaged rows checked by one filter, which by then remembers the row's fields."""
    rng = random.Random(12)
    rows = RowFilter(questions(), SID)
    checker = ResponseChecker(questions())
    raw = good().SerializeToString()
    assert rows.accept(raw) is not None
    accepted = 0
    for _ in range(20000):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = bytes(damaged[: rng.randrange(len(damaged) // 2, len(damaged) + 1)])
        if rows.accept(cut) is not None:
            assert checker.check(response_pb2.Response.FromString(cut)) is None
            accepted += 1
    assert accepted > 0
