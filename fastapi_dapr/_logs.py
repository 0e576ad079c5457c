"""`JsonFormatter`: one JSON object per log record, with the record's structured fields.

The keys are daprd's for `--log-as-json` (`time`, `level`, `type`, `msg`, `scope`,
`app_id`), then every field a log call gave in `extra=` (the delivery engine's
`event_id`, `pubsub`, `topic`, `outcome`, `reason`, `attempts`, `dead_letter_topic`,
`traceparent`...), then `exception` with the traceback when there is one.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["JsonFormatter"]

# Every attribute a LogRecord has of its own: what is not one of these came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}


class JsonFormatter(logging.Formatter):
    """Format each record as one line of JSON.

    `app_id`, when given, is added to every line, as daprd adds its own.
    Values that JSON cannot hold are written as their `str()`.
    """

    def __init__(self, *, app_id: str | None = None) -> None:
        super().__init__()
        self.app_id = app_id

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": _LEVELS.get(record.levelname, record.levelname.lower()),
            "type": "log",
            "msg": record.getMessage(),
            "scope": record.name,
        }
        if self.app_id is not None:
            line["app_id"] = self.app_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)
