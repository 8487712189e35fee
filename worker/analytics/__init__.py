"""Pure analytics of SurveyMesh reports: statistics, charts, sentiment and themes.

Every function here is pure: it takes numpy arrays, lists or small dicts and returns
JSON-ready dicts, with no I/O and no clock, so it can be unit-tested against independently
computed values and reused by benchmarks. The worker's activities read the snapshot from
PostgreSQL and feed these functions one question at a time.
"""
