"""The CSV renderer: a zip of tidy tables that parse, neutralised formulas, nothing lost."""

from __future__ import annotations

import csv
import io
import zipfile

from reporting_svc.render import render
from reporting_svc.render.csv import cell, leaves
from tests.unit.render_doc import EVIL, components, document


def tables(body: bytes) -> dict[str, list[dict[str, str]]]:
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert zf.testzip() is None
    return {
        n.removesuffix(".csv"): list(csv.DictReader(io.StringIO(zf.read(n).decode("utf-8"))))
        for n in zf.namelist()
    }


def test_csv_zip_parses_into_tidy_tables() -> None:
    rendered = render(document(), "csv")
    assert rendered.content_type == "application/zip"
    assert rendered.filename.endswith(".csv.zip")
    t = tables(rendered.body)
    assert {"report", "basic_stats", "basic_stats_trend", "question_stats_options", "nps",
            "sentiment_quotes", "themes", "themes_evidence", "future_component"} <= set(t)  # fmt: skip
    nps = t["nps"][0]
    assert (nps["question_id"], float(nps["score"]), nps["ci95_low"], nps["ci95_high"]) == (
        "q2",
        30.0,
        "17.5",
        "42.5",
    )
    options = t["question_stats_options"]
    assert [o["count"] for o in options] == ["60", "40"]
    # A cell a spreadsheet would execute is neutralised; the text is otherwise intact.
    assert options[0]["option"] == f"'=HYPERLINK({EVIL})"
    quotes = t["sentiment_quotes"]
    assert quotes[0]["text"] == f"Slow support {EVIL} & more"
    generic = {r["path"]: r["value"] for r in t["future_component"]}
    assert generic == {"rows[0].a": "1", "rows[0].b": EVIL, "note": EVIL}


def test_csv_is_deterministic_and_survives_malformed_components() -> None:
    assert render(document(), "csv").body == render(document(), "csv").body
    data = components()
    data["nps"] = {"questions": [1, 2]}  # not objects: exported generically instead
    t = tables(render(document(data), "csv").body)
    assert {r["path"] for r in t["nps"]} == {"questions[0]", "questions[1]"}


def test_cells_and_leaves() -> None:
    assert [cell(v) for v in (None, True, 3, 2.5, "+1", "@x", "-2", "ok")] == [
        "", "true", 3, 2.5, "'+1", "'@x", "'-2", "ok",
    ]  # fmt: skip
    assert list(leaves({"a": [1, {"b": None}], "c": {}})) == [
        ("a[0]", 1), ("a[1].b", None), ("c", None),
    ]  # fmt: skip
