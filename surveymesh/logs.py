"""Logging set-up shared by every process: human-readable text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time

from surveymesh.config import Settings
from surveymesh.telemetry import LogContextFilter


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the extra ids (report_id, org_id) a record carries."""

    EXTRA_KEYS = ("report_id", "org_id", "workflow_id", "trace_id", "span_id")

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in self.EXTRA_KEYS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(settings: Settings, *, quiet_stderr: bool = False) -> None:
    """Configures the root logger from ``SURVEYMESH_LOG_FORMAT`` / ``SURVEYMESH_LOG_LEVEL``.

    Args:
        settings: The process settings.
        quiet_stderr: Only warnings to stderr (``surveymesh up`` prints its own summary).
    """
    handler = logging.StreamHandler(sys.stderr)
    # Trace/span id of the current span, report and org ids (telemetry), for JSON lines.
    handler.addFilter(LogContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet_stderr else settings.log_level)
