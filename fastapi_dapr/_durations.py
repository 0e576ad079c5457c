"""Durations as Dapr's resources write them: Go duration strings or integers."""

from __future__ import annotations

import re

__all__: list[str] = []

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as `1h2m3.5s` or `-250ms`.

    Raises `ValueError` for anything `time.ParseDuration` refuses.
    """
    value = text.strip()
    sign = 1.0
    if value[:1] in "+-" and value:
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    if value == "0":
        return 0.0
    if not value:
        raise ValueError(f"invalid duration {text!r}")
    total, position = 0.0, 0
    for match in _PART.finditer(value):
        if match.start() != position:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def parse_duration(text: str, *, integer_unit: float) -> float:
    """Seconds in `text`: a Go duration, or an integer counted in `integer_unit` seconds."""
    stripped = text.strip()
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped) * integer_unit
    return parse_go_duration(stripped)
