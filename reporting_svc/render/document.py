"""What a rendering reads: the report's fields and its stored components.

A :class:`ReportDocument` is plain, picklable data (bytes, strings, numbers), so it can be
handed to a rendering process as it is. Component data stays as the stored UTF-8 JSON until
a renderer parses it, in whichever process does the rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import orjson

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredComponent:
    """One component as stored: its type, raw JSON data and metadata."""

    type: str
    data: bytes
    schema_version: int = 1
    create_time: datetime | None = None

    @property
    def size_bytes(self) -> int:
        """Size of the stored JSON."""
        return len(self.data)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredComponent:
        """From a ``repository.components`` row (or any mapping with the same keys)."""
        return cls(
            type=row["component_type"],
            data=bytes(row["data"]),
            schema_version=int(row["schema_version"]),
            create_time=row["create_time"],
        )


@dataclass(frozen=True)
class ReportDocument:
    """A report with its components, ready to render.

    Attributes:
        report: The report's fields as JSON (``MessageToDict`` of the proto ``Report`` with
            proto field names: enum names, RFC 3339 times), without components.
        components: Stored components, in any order.
        title: The survey's title, when known (the snapshot records it).
    """

    report: dict[str, Any]
    components: Sequence[StoredComponent] = field(default_factory=tuple)
    title: str = ""

    @property
    def id(self) -> str:
        """The report id."""
        return str(self.report.get("id", ""))

    @cached_property
    def data(self) -> dict[str, Any]:
        """Every component's parsed data by type; a component that is not valid JSON is kept
        as its text, so a broken component degrades to a paragraph instead of failing all."""
        out: dict[str, Any] = {}
        for c in self.components:
            if not c.data:
                out[c.type] = None
                continue
            try:
                out[c.type] = orjson.loads(c.data)
            except orjson.JSONDecodeError:
                log.warning("component %s of report %s is not JSON", c.type, self.id)
                out[c.type] = c.data.decode("utf-8", "replace")
        return out

    @property
    def display_title(self) -> str:
        """The title to show: the survey's, the summary's, or a neutral fallback."""
        summary = self.data.get("summary")
        from_summary = summary.get("title") if isinstance(summary, dict) else None
        return (
            self.title
            or (from_summary if isinstance(from_summary, str) else "")
            or ("Survey report")
        )
