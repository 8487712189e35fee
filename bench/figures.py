"""One benchmark figure, measured side by side with its baseline in the same run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """A figure of the issue-11 table.

    Attributes:
        key: Stable identifier (``history_bytes``, ``e2e_1k``, ...).
        name: What is measured, for the table.
        value: The SurveyMesh figure (median of several runs unless the note says otherwise).
        baseline: The baseline measured in the same run, in the same unit.
        unit: Unit of ``value`` and ``baseline``.
        baseline_name: What the baseline is.
        target: The target, in words.
        met: Whether the target is met.
        ratio: ``value / baseline``.
        note: Sizes, run counts, and by how much a target is missed and why.
        details: Raw measurements (every run, per-size figures).
    """

    key: str
    name: str
    value: float
    baseline: float
    unit: str
    baseline_name: str
    target: str
    met: bool
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``value / baseline`` (NaN without a baseline)."""
        return self.value / self.baseline if self.baseline else math.nan

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict including the ratio."""
        out = asdict(self)
        out["ratio"] = round(self.ratio, 4)
        return out


def fmt(value: float, unit: str) -> str:
    """A readable number with its unit."""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown(figures: list[Figure]) -> str:
    """The results table: figure, value, baseline, ratio, target, met?"""
    lines = [
        "| figure | value | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {fmt(f.value, f.unit)} | {fmt(f.baseline, f.unit)} ({f.baseline_name})"
            f" | {f.ratio:.2f}x | {f.target} | {'yes' if f.met else '**no**'} |"
        )
    notes = [f"- **{f.name}**: {f.note}" for f in figures if f.note]
    return "\n".join(lines) + ("\n\nNotes:\n\n" + "\n".join(notes) if notes else "") + "\n"
