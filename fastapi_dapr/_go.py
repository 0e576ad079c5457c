"""Go's readings of text that daprd relies on: durations, integers and `path.Clean`.

Go's `time.ParseDuration` and `strconv.ParseInt` take ASCII digits only and no
surrounding space: Python's `int()` and `\\d` would also take `" 10"`, `"1_0"`
and Arabic-Indic or other Unicode digits, which daprd refuses.
"""

from __future__ import annotations

import posixpath
import re

__all__: list[str] = []

_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_PART = re.compile(r"([0-9]*)(?:(\.)([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX = 2**63  # Go's time.Duration and int64: -2**63 to 2**63 - 1


def parse_go_int(text: str) -> int:
    """Go's `strconv.ParseInt(text, 10, 64)` (and `Atoi`): `ValueError` for anything it refuses."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"invalid integer {text!r}")
    significant = text.lstrip("+-").lstrip("0")
    if len(significant) > 19:
        raise ValueError(f"integer {text!r} out of range")
    number = int(significant or "0") * (-1 if text[0] == "-" else 1)
    if not -_MAX <= number < _MAX:
        raise ValueError(f"integer {text!r} out of range")
    return number


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as `1h2m3.5s` or `-250ms`.

    Raises `ValueError` for anything `time.ParseDuration` refuses, overflow included.
    """
    value = text
    negative = value[:1] == "-"
    if value[:1] in ("+", "-"):
        value = value[1:]
    if value == "0":
        return 0.0
    if not value:
        raise ValueError(f"invalid duration {text!r}")
    total, position = 0, 0
    while position < len(value):
        match = _PART.match(value, position)
        whole, fraction = (match.group(1), match.group(3) or "") if match else ("", "")
        if match is None or not (whole or fraction) or len(whole.lstrip("0")) > 19:
            raise ValueError(f"invalid duration {text!r}")
        unit = _NS[match.group(4)]
        fraction = fraction[:20]  # finer than a nanosecond of an hour: Go drops these digits too
        total += int(whole.lstrip("0") or "0") * unit + int(fraction or "0") * unit // 10 ** len(fraction)
        if total > _MAX:
            raise ValueError(f"invalid duration {text!r}")
        position = match.end()
    if total == _MAX and not negative:
        raise ValueError(f"invalid duration {text!r}")
    return (-total if negative else total) / 1e9


def parse_duration(text: str, *, integer_unit: float) -> float:
    """Seconds in `text`: an integer counted in `integer_unit` seconds, else a Go duration.

    daprd's order: `strconv.ParseInt` first, then `time.ParseDuration`.
    """
    try:
        number = parse_go_int(text)
    except ValueError:
        return parse_go_duration(text)
    seconds = number * integer_unit
    if abs(seconds) * 1e9 >= _MAX:
        raise ValueError(f"invalid duration {text!r}: out of range")
    return seconds


def path_clean(path: str) -> str:
    """Go's `path.Clean`: slashes collapsed, `.` and `..` resolved, `"."` for nothing.

    `posixpath.normpath` is Go's rule but for one POSIX exception: it keeps exactly two
    leading slashes, which Go collapses like any others."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


# What Go's url.PathEscape-style escaping of a path leaves as it is: daprd re-escapes an
# invocation's method this way before it sends it on.
PATH_SAFE = "/:@!$&'()*+,;=-._~"
