"""PDF rendering: WeasyPrint lays out the same static HTML with the print stylesheet.

Charts are the same inline SVG (vector in the PDF). Fonts come from the system through
fontconfig (DejaVu on Debian); nothing is fetched: the page references no URL, and the
URL fetcher allows ``data:`` URIs only, so neither network nor file system is ever read.
"""

from __future__ import annotations

import logging

from reporting_svc.render.document import ReportDocument
from reporting_svc.render.html import render_html

log = logging.getLogger(__name__)


def html_to_pdf(html: str) -> bytes:
    """A PDF of ``html`` (which must carry its own CSS)."""
    import weasyprint
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols=["data"])
    return bytes(weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf() or b"")


def render_pdf(doc: ReportDocument) -> bytes:
    """The report as a PDF document (A4, running header, page numbers)."""
    return html_to_pdf(render_html(doc, mode="static", for_print=True))
