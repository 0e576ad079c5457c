"""JSON the way daprd's Go code reads and writes it."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

__all__: list[str] = []

NO_VALUE: Any = object()  # "no JSON value was given", where None would be JSON null

MAX_DEPTH = 128
"""How deeply the arrays and objects of a JSON body may nest. Python's parsers recurse (a
few hundred levels is a `RecursionError`, pydantic refuses beyond 200); 128 leaves room for
the envelopes a message is wrapped in on its way to a handler. (Go's limit is 10,000.)"""
DELIVERY_DEPTH = 200
"""How deeply a delivery's JSON is read (a message read back from a broker, a request to a
subscription's route): MAX_DEPTH and the envelopes around it fit, as in pydantic's parser,
which stops there too; and far below Python's recursion limit, whatever calls the parser."""


class TooDeep(ValueError):
    """JSON that nests deeper than the sidecar reads."""


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
_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nests_deeper(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of JSON text `body` nest deeper than `limit` (a scalar
    is 0 deep, `[]` 1), found without parsing and without recursion, in linear time: the
    strings cut out, then the running count of brackets."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:  # escapes occur only in strings: an escaped quote must not end one
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", body.translate(None, _STRUCTURE))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def check_depth(body: bytes | str, limit: int = MAX_DEPTH) -> None:
    """Raise `TooDeep` when `body` nests deeper than `limit`."""
    data = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    if nests_deeper(data, limit):
        raise TooDeep(f"the JSON nests deeper than {limit} levels")


def loads(body: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """`json.loads`, refusing (`TooDeep`, a `ValueError`) what nests deeper than `limit`."""
    check_depth(body, limit)
    return json.loads(body)


def _reused_encoder() -> Any:
    """The C encoder that `_encoder.encode` makes anew on every call, made once, without
    the dictionary of the containers being encoded (`markers`): it keeps no state then
    (a circular value recurses to Python's limit instead; `go_dumps` says it as before)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return None
    try:
        return make(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    except TypeError:  # pragma: no cover - another signature: the encoder's own path
        return None


_one_shot = _reused_encoder()


def go_dumps(value: Any) -> bytes:
    """`json.Marshal` of Go maps: sorted keys, compact, HTML characters escaped.

    The escaped characters can only occur inside JSON strings, so replacing
    them after encoding is exact.
    """
    try:
        text = "".join(_one_shot(value, 0)) if _one_shot is not None else _encoder.encode(value)
    except RecursionError:  # circular, or too deep: the encoder's own error
        text = _encoder.encode(value)
    # An ASCII text (known without a scan) can hold only the first three: three substring
    # searches are several times quicker than the pattern's.
    if (
        ("<" in text or ">" in text or "&" in text)
        if text.isascii()
        else _NEEDS_ESCAPE.search(text) is not None
    ):
        text = _NEEDS_ESCAPE.sub(lambda match: _GO_ESCAPES[match.group()], text)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (from "\ud800" in JSON): U+FFFD, as Go writes it
        return _LONE_SURROGATE.sub("\ufffd", text).encode()


def decode_first(body: bytes | str) -> Any:
    """The first JSON value of `body`, as Go's `json.Decoder.Decode` reads it.

    Trailing data after the first value is ignored; invalid UTF-8 becomes
    U+FFFD. Raises `ValueError` when there is no valid first value, and
    `TooDeep` when the body nests deeper than `MAX_DEPTH`.
    """
    check_depth(body)
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    start = len(text) - len(text.lstrip(_WHITESPACE))
    value, _ = _decoder.raw_decode(text, start)
    return value
