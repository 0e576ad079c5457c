"""The package's logging: `JsonFormatter`, and the handler used when nothing else is configured.

`JsonFormatter` writes one JSON object per log record with daprd's keys for
`--log-as-json` (`time`, `level`, `type`, `msg`, `scope`, `app_id`), then every
field a log call gave in `extra=` (the delivery engine's `event_id`, `pubsub`,
`topic`, `outcome`, `reason`, `attempts`, `dead_letter_topic`, `traceparent`...),
then `exception` with the traceback when there is one.

`install_default_handler` runs when the app starts. Under uvicorn's default log
configuration (uvicorn's own loggers only, none on the root), the package's lines
would reach Python's last-resort handler: WARNING and above, with neither level nor
logger. So when neither the root nor the `fastapi_dapr` logger has a handler, one is
added to `fastapi_dapr`, in uvicorn's layout (`INFO:     fastapi_dapr: ...`), at
uvicorn's level (INFO by default). It steps aside as soon as any other handler would
take a line (the user configured logging later): a line is never written twice.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import sys
from collections.abc import Hashable
from typing import Any

__all__ = ["JsonFormatter"]

PACKAGE_LOGGER = "fastapi_dapr"

# Every attribute a LogRecord has of its own: what is not one of these came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}


class JsonFormatter(logging.Formatter):
    """Format each record as one line of JSON, with daprd's keys for `--log-as-json`.

    The keys are `time`, `level`, `type`, `msg`, `scope` and `app_id` (when given:
    added to every line, as daprd adds its own), then every field a log call gave in
    `extra=` (the delivery engine's `event_id`, `pubsub`, `topic`, `outcome`,
    `reason`, `attempts`...), then `exception` with the traceback when there is one.
    Values that JSON cannot hold are written as their `str()`.
    """

    def __init__(self, *, app_id: str | None = None) -> None:
        super().__init__()
        self.app_id = app_id
        """Written as `app_id` on every line; None: no such key."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON: daprd's keys, the `extra=` fields, the traceback."""
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


class _LevelFormatter(logging.Formatter):
    """uvicorn's default layout: the level and a colon, padded, then the logger and the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname + ':':<9} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class DefaultHandler(logging.Handler):
    """The package's lines on standard error, while nothing else would write them."""

    def __init__(self, level_set: int | None) -> None:
        super().__init__()
        self.setFormatter(_LevelFormatter())
        self.level_set = level_set  # the level this handler gave `fastapi_dapr`, if it gave one

    def emit(self, record: logging.LogRecord) -> None:
        if _handled_elsewhere(record.name, self):
            self._step_aside()
            return
        try:
            stream = sys.stderr  # looked up each time, as Python's last-resort handler does
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def _step_aside(self) -> None:
        """Logging was configured since: the user's levels apply, not the one given here."""
        package = logging.getLogger(PACKAGE_LOGGER)
        if self.level_set is not None and package.level == self.level_set:
            package.setLevel(logging.NOTSET)
        self.level_set = None


def _handled_elsewhere(name: str, handler: logging.Handler) -> bool:
    """Whether a handler other than `handler` takes the lines of logger `name`."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(other is not handler for other in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def install_default_handler() -> DefaultHandler | None:
    """Give the package's lines a handler if logging is not configured (module docstring);
    the handler added, or None when none was needed."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if any(isinstance(handler, DefaultHandler) for handler in package.handlers):
        return None
    if package.handlers or not package.propagate or logging.getLogger().handlers:
        return None  # configured: by the user, a server, a test runner
    level_set = None
    if package.level == logging.NOTSET:
        level_set = _server_level()
        package.setLevel(level_set)
    handler = DefaultHandler(level_set)
    package.addHandler(handler)
    return handler


def _server_level() -> int:
    """uvicorn's level (`--log-level`, INFO by default) when uvicorn configured its logging, else INFO."""
    if "uvicorn" in sys.modules and logging.getLogger("uvicorn").handlers:
        return logging.getLogger("uvicorn.error").getEffectiveLevel()
    return logging.INFO


class FirstTimes:
    """The last `size` keys seen: `first(key)` is True only the first time a key is seen."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._seen: collections.OrderedDict[Hashable, None] = collections.OrderedDict()

    def first(self, key: Hashable) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True
