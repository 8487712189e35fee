"""The JSON renderer: the full report round-trips."""

from __future__ import annotations

import orjson

from reporting_svc.render import render
from tests.unit.render_doc import components, document


def test_json_round_trips_every_component() -> None:
    doc = document()
    rendered = render(doc, "json")
    assert rendered.content_type == "application/json"
    assert rendered.filename == f"report-{doc.id}.json"
    out = orjson.loads(rendered.body)
    assert out["report"] == doc.report
    assert {k: v["data"] for k, v in out["components"].items()} == components()
    for c in doc.components:
        assert out["components"][c.type]["size_bytes"] == len(c.data)
