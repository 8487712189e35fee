"""Rendering of reports: HTML, PDF, CSV (a zip of tidy tables) and JSON.

Every renderer is a pure function of a :class:`ReportDocument` (the report's fields and its
stored components), so it can run in a worker process (:class:`RenderPool`) and be tested
without a server. :func:`render` is the one entry point the service calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reporting_svc.render.document import ReportDocument, StoredComponent

Format = Literal["html", "pdf", "csv", "json"]
FORMATS: tuple[Format, ...] = ("html", "pdf", "csv", "json")
CONTENT_TYPES: dict[Format, str] = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "csv": "application/zip",
    "json": "application/json",
}
EXTENSIONS: dict[Format, str] = {"html": "html", "pdf": "pdf", "csv": "csv.zip", "json": "json"}

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "Format",
    "Rendered",
    "ReportDocument",
    "StoredComponent",
    "render",
]


@dataclass(frozen=True)
class Rendered:
    """A rendered file: its media type, suggested file name and bytes."""

    content_type: str
    filename: str
    body: bytes


def render(doc: ReportDocument, fmt: Format) -> Rendered:
    """Renders ``doc`` as ``fmt`` (CPU-bound: call it off the event loop).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt == "html":
        from reporting_svc.render.html import render_html

        body = render_html(doc, mode="static").encode("utf-8")
    elif fmt == "pdf":
        from reporting_svc.render.pdf import render_pdf

        body = render_pdf(doc)
    elif fmt == "csv":
        from reporting_svc.render.csv import render_csv_zip

        body = render_csv_zip(doc)
    elif fmt == "json":
        from reporting_svc.render.json import render_json

        body = render_json(doc)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return Rendered(CONTENT_TYPES[fmt], f"report-{doc.id}.{EXTENSIONS[fmt]}", body)


def warm_up() -> None:
    """Imports the renderers and draws one chart, so a fresh process's first render is fast."""
    import weasyprint  # noqa: F401

    from reporting_svc.render import charts, html

    html.environment()
    charts.svg(
        {
            "data": {"values": [{"a": "x", "b": 1}]},
            "mark": "bar",
            "encoding": {
                "x": {"field": "a", "type": "nominal"},
                "y": {"field": "b", "type": "quantitative"},
            },
        }
    )
