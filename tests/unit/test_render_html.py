"""The HTML renderer: escaping of everything from the data, charts, generic fallbacks."""

from __future__ import annotations

import re

import orjson

from reporting_svc.render import fmt, render
from reporting_svc.render.html import json_island, render_html, render_sections, scope_svg_ids
from reporting_svc.render.model import build_sections, sections_for_component
from tests.unit.render_doc import ESCAPED, EVIL, components, document


def test_static_html_escapes_every_respondent_quote_and_label() -> None:
    html = render(document(), "html").body.decode()
    # A static page has no script element at all, so the quote's cannot be one.
    assert "<script" not in html
    assert f"Slow support {ESCAPED} &amp; more" in html  # the quote, as text
    assert f"theme {ESCAPED}" in html and f"Pick one {ESCAPED}" in html
    assert f"Survey {ESCAPED}" in html  # the title
    assert html.count("<svg") == 2  # both charts drawn inline
    assert not re.search(r"url\((?!#)", html)


def test_viewer_html_keeps_specs_in_inert_json_islands() -> None:
    html = render_html(document(), mode="viewer", links={"pdf": "/reports/x.pdf"})
    # Only our scripts: the vendored libraries, the viewer, and JSON data islands.
    scripts = re.findall(r"<script[^>]*>", html)
    assert all('type="application/json"' in s or 'src="/static/' in s for s in scripts), scripts
    assert "</script><script>" not in html
    assert EVIL not in html
    assert "\\u003c/script\\u003e\\u003cscript\\u003e" in html
    assert 'href="/reports/x.pdf"' in html


def test_json_island_cannot_close_its_element() -> None:
    island = json_island({"a": "</script><!-- & \u2028"})
    assert "<" not in island and ">" not in island and "&" not in island
    assert orjson.loads(str(island)) == {"a": "</script><!-- & \u2028"}


def test_svg_ids_are_scoped_per_chart() -> None:
    svg = '<svg><clipPath id="clip1"/><g clip-path="url(#clip1)"/><use href="#clip1"/></svg>'
    scoped = scope_svg_ids(svg, "c7-")
    assert 'id="c7-clip1"' in scoped and "url(#c7-clip1)" in scoped and 'href="#c7-clip1"' in scoped
    html = render_html(document())
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))


def test_unknown_and_malformed_components_render_generically() -> None:
    data = components()
    data["csat"] = {"questions": "not a list"}  # a known component in a shape it never has
    html = render_html(document(data))
    assert 'id="component-future_component"' in html  # unknown: a generic section
    assert f"<td>{ESCAPED}</td>" in html
    ids = [s.id for s in build_sections(document(data))]
    assert "component-csat" in ids or "csat" in ids
    assert ids[-1] == "about"


def test_running_report_in_the_viewer_has_placeholders_and_fragments() -> None:
    data = {k: v for k, v in components().items() if k in ("basic_stats", "nps")}
    doc = document(data, state="REPORT_STATE_RUNNING")
    html = render_html(doc, mode="viewer")
    assert 'data-running="true"' in html
    for pending in ("questions", "segments", "sentiment", "themes"):
        assert re.search(rf'class="report-section section-pending" id="{pending}"', html)
    fragments = render_sections(doc, sections_for_component("nps"))
    assert [f["id"] for f in fragments] == ["overview", "nps"]
    assert all(f["html"].startswith("<section") for f in fragments)
    assert sections_for_component("visualizations")[0] == "overview"
    assert sections_for_component("brand_new") == ["component-brand_new"]


def test_numbers_are_formatted_for_people() -> None:
    assert fmt.signed(-11.2) == "\u221211" and fmt.signed(0.2) == "0" and fmt.signed(42) == "+42"
    assert fmt.interval([-17.4, -4.1], 0) == "\u221217 to \u22124"
    assert fmt.interval(None) == "\u2013"
    assert (
        fmt.duration(38) == "38s"
        and fmt.duration(448) == "7m 28s"
        and fmt.duration(3900) == "1h 05m"
    )
    assert fmt.p_value(0.0001) == "p < 0.001" and fmt.p_value(0.0312) == "p = 0.031"
    assert fmt.fraction(0.902) == "90.2%" and fmt.percent(None) == "\u2013"
    assert fmt.number(float("nan")) == "\u2013"


def test_a_failed_report_says_why() -> None:
    doc = document({}, state="REPORT_STATE_FAILED")
    doc.report["error"] = {"reason": "X", "message": f"boom {EVIL}", "stage": "statistics"}
    html = render_html(doc, mode="viewer")
    assert "This report failed during statistics." in html
    assert f"boom {ESCAPED}" in html
    assert 'data-running="false"' in html and 'class="report-section section-pending"' not in html


def test_every_chart_of_the_demo_report_is_on_the_page_once() -> None:
    from bench.report_components import demo_components

    data = demo_components(600)
    page = render_html(document(data), mode="viewer")
    drawn = re.findall(r'<figure class="chart[^"]*" data-chart="([^"]+)"', page)
    assert sorted(drawn) == sorted(c["id"] for c in data["visualizations"]["charts"])
