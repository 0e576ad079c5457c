"""JSON the way daprd's Go code reads and writes it."""

from __future__ import annotations

import json
import re
from typing import Any

__all__: list[str] = []

NO_VALUE: Any = object()  # "no JSON value was given", where None would be JSON null


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text} does not fit a float")  # never write Infinity, which is not JSON
    return number


_decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_WHITESPACE = " \t\n\r"
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_NEEDS_ESCAPE = re.compile("[<>&\u2028\u2029]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_dumps(value: Any) -> bytes:
    """`json.Marshal` of Go maps: sorted keys, compact, HTML characters escaped.

    The escaped characters can only occur inside JSON strings, so replacing
    them after encoding is exact.
    """
    text = _encoder.encode(value)
    if _NEEDS_ESCAPE.search(text):
        text = _NEEDS_ESCAPE.sub(lambda match: _GO_ESCAPES[match.group()], text)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (from "\ud800" in JSON): U+FFFD, as Go writes it
        return _LONE_SURROGATE.sub("\ufffd", text).encode()


def decode_first(body: bytes | str) -> Any:
    """The first JSON value of `body`, as Go's `json.Decoder.Decode` reads it.

    Trailing data after the first value is ignored; invalid UTF-8 becomes
    U+FFFD. Raises `ValueError` when there is no valid first value.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    start = len(text) - len(text.lstrip(_WHITESPACE))
    value, _ = _decoder.raw_decode(text, start)
    return value
