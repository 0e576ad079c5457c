"""`go_dumps`: what Go's `json.Marshal` of a map writes (sorted keys, compact, HTML characters
and the line separators escaped), for the envelopes daprd's components store."""

from __future__ import annotations

import pytest

from fastapi_dapr._json import go_dumps


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ({"b": 1, "a": {"d": [1, 2], "c": None}}, b'{"a":{"c":null,"d":[1,2]},"b":1}'),
        ({"h": "<a&b>"}, b'{"h":"\\u003ca\\u0026b\\u003e"}'),  # ASCII text
        ({"h": "caf\u00e9 <b>"}, '{"h":"caf\u00e9 \\u003cb\\u003e"}'.encode()),  # and not
        ({"s": "a\u2028b\u2029c"}, b'{"s":"a\\u2028b\\u2029c"}'),
        ({"s": "\u00e9 only"}, '{"s":"\u00e9 only"}'.encode()),
        ({"s": "\ud800"}, '{"s":"\ufffd"}'.encode()),  # a lone surrogate, as Go writes it
    ],
)
def test_written_as_gos_json_marshal_writes_a_map(value: object, written: bytes) -> None:
    assert go_dumps(value) == written
