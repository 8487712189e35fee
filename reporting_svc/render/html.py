"""HTML rendering: one Jinja2 page for the HTML download, the PDF and the web viewer.

Autoescape is on for every template, so all text from the data (question texts, options,
theme names and every respondent quote) is escaped. The only markup inserted unescaped is
chart SVG drawn by ``vl-convert`` (which writes text as escaped XML) and JSON islands that
:func:`json_island` escapes for a ``<script type="application/json">`` element.

Modes:
    ``static``: self-contained: CSS inline, charts as inline SVG, no script, nothing fetched.
    ``viewer``: the live page: charts as Vega-Lite specs that vega-embed (served locally by
    the viewer) draws, plus the script that adds sections as components become ready.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import jinja2
import orjson
from markupsafe import Markup

from reporting_svc.render import charts as chart_render
from reporting_svc.render import fmt, model
from reporting_svc.render.document import ReportDocument

log = logging.getLogger(__name__)

Mode = Literal["static", "viewer"]
TERMINAL_STATES = frozenset(
    {"REPORT_STATE_COMPLETED", "REPORT_STATE_FAILED", "REPORT_STATE_CANCELLED"}
)
STATIC_PREFIX = "/static"


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (autoescape on, undefined is an error
    for names, lenient for attributes of data)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reporting_svc.render", "templates"),
        autoescape=True,
        trim_blocks=False,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt.FILTERS)
    return env


@cache
def stylesheet(name: str) -> Markup:
    """A CSS file of the templates, for inlining (CSS is ours, not data)."""
    text = (
        resources.files("reporting_svc.render")
        .joinpath("templates")
        .joinpath(name)
        .read_text("utf-8")
    )
    return Markup(text.replace("</", "<\\/"))


def json_island(value: Any) -> Markup:
    """JSON safe to place inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u003c`` etc., so no data (a quote containing
    ``</script>``) can close the element; U+2028/2029 are escaped for old parsers.
    """
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return Markup(text)


_SVG_ID = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def scope_svg_ids(svg: str, prefix: str) -> str:
    """Prefixes every id of an SVG and every local reference to one.

    Each SVG from vl-convert numbers its clip paths from 1; inlined side by side in one
    page, the second chart's ``url(#clip1)`` would clip with the first chart's path.
    """
    return _SVG_ID.sub(lambda m: m.group(1) + prefix + m.group(2), svg)


def _svg_chart(charts: Mapping[str, dict[str, Any]]) -> Callable[[str], Markup]:
    counter = itertools.count(1)

    def chart(chart_id: str) -> Markup:
        c = charts.get(chart_id)
        if c is None:
            return Markup("")
        try:
            svg = chart_render.svg(c["spec"])
        except ValueError as e:
            log.warning("chart %s: %s", chart_id, e)
            return Markup(
                '<figure class="chart chart-error">Chart {} could not be drawn.</figure>'
            ).format(c.get("title") or chart_id)
        # Drop the XML prolog, if any: the SVG is inlined into HTML.
        if svg.startswith("<?xml"):
            svg = svg[svg.index("?>") + 2 :]
        svg = scope_svg_ids(svg, f"c{next(counter)}-")
        return (
            Markup('<figure class="chart" data-chart="{}">').format(chart_id)
            + Markup(svg)
            + Markup("</figure>")
        )

    return chart


def _embed_chart(charts: Mapping[str, dict[str, Any]]) -> Callable[[str], Markup]:
    def chart(chart_id: str) -> Markup:
        c = charts.get(chart_id)
        if c is None:
            return Markup("")
        return (
            Markup(
                '<figure class="chart" data-chart="{}"><script type="application/json" class="chart-spec">'
            ).format(chart_id)
            + json_island(chart_render.prepare(c["spec"]))
            + Markup("</script></figure>")
        )

    return chart


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _date(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return f"{ts.day} {ts:%B %Y}"


def _state(report: Mapping[str, Any]) -> tuple[str, str]:
    name = str(report.get("state") or "REPORT_STATE_UNSPECIFIED")
    short = name.removeprefix("REPORT_STATE_").lower()
    return short.capitalize(), short


def page_context(
    doc: ReportDocument,
    mode: Mode,
    *,
    sections: list[model.Section],
    links: Mapping[str, str] | None = None,
    static_prefix: str = STATIC_PREFIX,
) -> dict[str, Any]:
    """Everything report.html.j2 shows, for ``doc`` in ``mode``."""
    report = doc.report
    charts = model.charts_by_id(doc)
    state_label, state_class = _state(report)
    basic = doc.data.get("basic_stats")
    # int64 fields come as strings from MessageToDict.
    responses = _int(report.get("response_count")) or (
        _int(basic.get("responses")) if isinstance(basic, dict) else 0
    )
    running = str(report.get("state")) not in TERMINAL_STATES
    date = _date(report.get("end_time") or report.get("create_time"))
    return {
        "mode": mode,
        "title": doc.display_title,
        "report": {**report, "id": doc.id},
        "kind_label": "Full analysis"
        if report.get("kind") == "REPORT_KIND_FULL"
        else "Quick analysis",
        "response_count": responses,
        "report_date": date,
        "generated_at": date,
        "state_label": state_label,
        "state_class": state_class,
        "sections": sections,
        "chart": _svg_chart(charts) if mode == "static" else _embed_chart(charts),
        "chart_config": json_island(chart_render.CHART_CONFIG),
        "css": stylesheet("report.css"),
        "print_css": None,
        "links": dict(links or {}),
        "static": static_prefix,
        "after_sequence": _int(report.get("last_event_sequence")),
        "running": running,
        "progress_percent": _int(report.get("progress_percent")),
        "progress_stage": str(report.get("current_stage") or ""),
    }


def render_html(
    doc: ReportDocument,
    *,
    mode: Mode = "static",
    for_print: bool = False,
    links: Mapping[str, str] | None = None,
) -> str:
    """The report as one HTML page.

    Args:
        doc: The report and its components.
        mode: ``static`` (download, PDF) or ``viewer`` (the live web page).
        for_print: Add the print stylesheet (WeasyPrint's input).
        links: The viewer's download links (``pdf``, ``csv``, ``json``, ``html``).
    """
    running = str(doc.report.get("state")) not in TERMINAL_STATES
    sections = model.build_sections(doc, pending=mode == "viewer" and running)
    ctx = page_context(doc, mode, sections=sections, links=links)
    if for_print:
        ctx["print_css"] = stylesheet("print.css")
    return environment().get_template("report.html.j2").render(ctx)


def render_sections(doc: ReportDocument, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Viewer fragments: ``{"id", "order", "html"}`` for each of the sections ``ids`` that
    exists now (a section whose data is not there yet is left out)."""
    sections = model.build_sections(doc, only=ids)
    ctx = page_context(doc, "viewer", sections=sections)
    module = environment().get_template("sections.html.j2").make_module(ctx)
    return [
        {"id": s.id, "order": s.order, "html": str(module.section(s))}  # type: ignore[attr-defined]
        for s in sections
    ]
