"""JSON-lines logs for worker processes: one object per line with job, chunk and attempt ids when known."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

# Fields passed with `extra=` that belong in the JSON object.
CONTEXT_FIELDS = ("job_id", "chunk_id", "attempt", "worker")


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, the context ids, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                payload[name] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_json_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every log record of the process (ours and Celery's) to `stream` as JSON lines, in UTC."""
    import time

    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonLinesFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
