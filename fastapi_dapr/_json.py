"""JSON the way daprd's Go code reads and writes it."""

from __future__ import annotations

import json
from typing import Any

__all__: list[str] = []

_decoder = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_dumps(value: Any) -> bytes:
    """`json.Marshal` of Go maps: sorted keys, compact, HTML characters escaped.

    The escaped characters can only occur inside JSON strings, so replacing
    them after encoding is exact.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _GO_ESCAPES:
        if char in text:
            text = text.replace(char, escape)
    return text.encode()


def decode_first(body: bytes | str) -> Any:
    """The first JSON value of `body`, as Go's `json.Decoder.Decode` reads it.

    Trailing data after the first value is ignored; invalid UTF-8 becomes
    U+FFFD. Raises `ValueError` when there is no valid first value.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    start = len(text) - len(text.lstrip(_WHITESPACE))
    value, _ = _decoder.raw_decode(text, start)
    return value
