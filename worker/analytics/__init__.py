"""Analytics of SurveyMesh reports: statistics, charts, sentiment and themes.

:mod:`.stats`, :mod:`.charts`, :mod:`.sentiment` and :mod:`.themes` are pure: numpy arrays,
lists or small dicts in, JSON-ready dicts out, no I/O and no clock, so they are unit-tested
against independently computed values and reused by benchmarks. Two modules do I/O:
:mod:`.compute` reads a report's snapshot from PostgreSQL one question at a time (binary
COPY into numpy, exact aggregates in SQL) and feeds the pure functions; :mod:`.ai` asks an
OpenAI-compatible model for sentiment and themes. Component shapes: ``SCHEMAS.md``.
"""
