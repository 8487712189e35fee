"""JSON rendering: the whole report as one document.

Component data is stored as UTF-8 JSON and spliced in verbatim (``orjson.Fragment``), so
rendering a large report never parses and re-encodes its components.
"""

from __future__ import annotations

import orjson

from reporting_svc.render.document import ReportDocument


def render_json(doc: ReportDocument) -> bytes:
    """``{"report": {...fields}, "components": {type: {schema_version, create_time,
    size_bytes, data}}}``."""
    fields = {k: v for k, v in doc.report.items() if k != "components"}
    out = {
        "report": fields,
        "components": {
            c.type: {
                "schema_version": c.schema_version,
                "create_time": c.create_time.isoformat() if c.create_time else None,
                "size_bytes": c.size_bytes,
                "data": orjson.Fragment(c.data) if c.data else None,
            }
            for c in sorted(doc.components, key=lambda c: c.type)
        },
    }
    return orjson.dumps(out)
