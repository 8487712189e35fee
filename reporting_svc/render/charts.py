"""Charts: the stored Vega-Lite specs, themed, as inline SVG (``vl-convert``) or for vega-embed.

The same theme (:data:`CHART_CONFIG`) and the same spec preparation serve the static HTML,
the PDF and the interactive viewer, so a chart looks alike in all three. ``vl-convert``
runs Vega in an embedded JavaScript engine with no network: specs carry their data inline,
and :func:`svg` forbids every external URL.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)

FONT = "DejaVu Sans, Helvetica Neue, Arial, sans-serif"
INK = "#1f2937"
MUTED = "#6b7280"
ACCENT = "#3355cc"
GOOD, NEUTRAL, BAD = "#2f9e44", "#adb5bd", "#e03131"
# Categories with a meaning get the colour of that meaning, whatever their order.
SEMANTIC_COLORS = {
    "promoters": GOOD,
    "passives": NEUTRAL,
    "detractors": BAD,
    "positive": GOOD,
    "neutral": NEUTRAL,
    "negative": BAD,
}
CHART_WIDTH = 560
CHART_CONFIG: dict[str, Any] = {
    "font": FONT,
    "background": "white",
    "padding": 8,
    "view": {"stroke": None, "continuousWidth": CHART_WIDTH, "continuousHeight": 220, "step": 26},
    "title": {
        "fontSize": 13,
        "fontWeight": 600,
        "color": INK,
        "anchor": "start",
        "offset": 10,
        "limit": CHART_WIDTH,
    },
    "axis": {
        "labelColor": MUTED,
        "titleColor": MUTED,
        "labelFontSize": 11,
        "titleFontSize": 11,
        "titleFontWeight": 500,
        "gridColor": "#e5e7eb",
        "domainColor": "#d1d5db",
        "tickColor": "#d1d5db",
        "labelLimit": 220,
    },
    "legend": {"labelColor": INK, "titleColor": MUTED, "labelFontSize": 11, "orient": "bottom"},
    "bar": {"color": ACCENT, "cornerRadiusEnd": 2},
    "line": {"color": ACCENT, "strokeWidth": 2},
    "point": {"color": ACCENT, "filled": True, "size": 40},
    "range": {"category": [ACCENT, "#f08c00", "#0ca678", "#ae3ec9", "#1c7ed6", "#e8590c"]},
}
SVG_CACHE_SIZE = 512


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec to draw: a copy with the theme's semantic colours and sizes applied.

    Stacked shares of NPS groups and sentiment labels get red/grey/green by meaning, and a
    single stacked bar gets a sensible height and width.
    """
    out = copy.deepcopy(spec)
    encoding = out.get("encoding")
    if isinstance(encoding, dict):
        _level_short_labels(out, encoding)
        y = encoding.get("y")
        if isinstance(y, dict) and y.get("type") in ("nominal", "ordinal"):
            # Horizontal bars: the category labels speak for themselves, and an axis title
            # beside long labels only collides with them.
            y["title"] = None
        color = encoding.get("color")
        if isinstance(color, dict) and "scale" not in color:
            order = color.get("sort")
            if isinstance(order, list) and order and all(o in SEMANTIC_COLORS for o in order):
                color["scale"] = {"domain": order, "range": [SEMANTIC_COLORS[o] for o in order]}
                if "y" not in encoding:  # one 100 % bar: a band, not a 20 px sliver
                    out.setdefault("height", 34)
                    out.setdefault("width", CHART_WIDTH - 60)
                    color.setdefault("title", None)
    return out


def _level_short_labels(spec: dict[str, Any], encoding: dict[str, Any]) -> None:
    """Horizontal x labels when every category is short (scores 0-10), slanted otherwise."""
    x = encoding.get("x")
    data = spec.get("data")
    if not isinstance(x, dict) or x.get("type") not in ("nominal", "ordinal"):
        return
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, list) or not values:
        return
    field = x.get("field")
    longest = max(len(str(v.get(field, ""))) if isinstance(v, dict) else 0 for v in values)
    axis = x.setdefault("axis", {})
    if isinstance(axis, dict):
        if longest * 7 <= 26:  # fits the band step at ~7 px per character
            axis.setdefault("labelAngle", 0)
        else:
            axis.setdefault("labelAngle", -35)
            axis.setdefault("labelAlign", "right")


def spec_json(spec: dict[str, Any]) -> bytes:
    """Canonical JSON of a spec (the cache key and the viewer's payload)."""
    return orjson.dumps(spec, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def svg(spec: dict[str, Any]) -> str:
    """The chart as an SVG document (themed, no external URLs).

    Raises:
        ValueError: the spec cannot be compiled or drawn.
    """
    return _svg_cached(spec_json(prepare(spec)))


# Keyed by the spec's canonical JSON: rendering the same report as HTML and then as PDF
# draws each chart once per process.
@functools.lru_cache(maxsize=SVG_CACHE_SIZE)
def _svg_cached(key: bytes) -> str:
    import vl_convert

    try:
        return str(
            vl_convert.vegalite_to_svg(orjson.loads(key), config=CHART_CONFIG, allowed_base_urls=[])
        )
    except Exception as e:  # vl-convert raises plain ValueError/RuntimeError with JS traces
        raise ValueError(f"chart could not be drawn: {str(e).splitlines()[0]}") from None
