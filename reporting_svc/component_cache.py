"""Component data that GetReport has read, kept in memory.

A stored component never changes: it is inserted once per report and type (a retried step
keeps the first version) and only goes away with its report. So once GetReport has read a
component's bytes it keeps them, and later calls read only the report row and the
components' sizes and creation times (no TOAST decompression, no megabytes over the
database socket); bytes are used only while type, size and creation time still match
what that row lists. Access is decided by the row query on every call, never from here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


class ComponentCache:
    """Component bytes by report, least recently used report out first, bounded in bytes.

    Rows passed in are component rows of :mod:`reporting_svc.repository` (their
    ``component_type``, ``size_bytes`` and ``component_create_time``).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._reports: OrderedDict[str, dict[str, tuple[datetime, bytes]]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """The bytes held."""
        return self._bytes

    def __contains__(self, report_id: str) -> bool:
        return report_id in self._reports

    def get(self, report_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
        """The held bytes of those of ``rows`` that still match, by component type."""
        held = self._reports.get(report_id)
        if held is None:
            return {}
        self._reports.move_to_end(report_id)
        found = {}
        for row in rows:
            item = held.get(row["component_type"])
            if (
                item is not None
                and item[0] == row["component_create_time"]
                and len(item[1]) == row["size_bytes"]
            ):
                found[row["component_type"]] = item[1]
        return found

    def put(self, report_id: str, row: Mapping[str, Any], data: bytes) -> None:
        """Keeps one component's bytes (unless they alone exceed a quarter of the budget)."""
        if len(data) > self.max_bytes // 4:
            return
        held = self._reports.setdefault(report_id, {})
        old = held.pop(row["component_type"], None)
        if old is not None:
            self._bytes -= len(old[1])
        held[row["component_type"]] = (row["component_create_time"], data)
        self._bytes += len(data)
        self._reports.move_to_end(report_id)
        while self._bytes > self.max_bytes:
            _, evicted = self._reports.popitem(last=False)
            self._bytes -= sum(len(d) for _, d in evicted.values())
