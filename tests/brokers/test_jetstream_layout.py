"""The `Dapr-Metadata` header of a JetStream message is read from the broker: anything in it,
however written and by whom, gives a delivery's metadata, never an error."""

from __future__ import annotations

import pytest

from fastapi_dapr.brokers.jetstream_layout import METADATA, delivery_metadata


@pytest.mark.parametrize(
    ("header", "metadata"),
    [
        (None, {"Topic": "orders"}),  # written by daprd or any other client
        ("{}", {}),
        ('{"a": "1"}', {"a": "1"}),
        ("not json", {"Topic": "orders"}),
        ('["a"]', {"Topic": "orders"}),
        ('"text"', {"Topic": "orders"}),
        ("{", {"Topic": "orders"}),
        ('{"n": 1, "nested": {"x": [1]}, "none": null}', {"n": "1", "nested": '{"x": [1]}', "none": "null"}),
        ('{"a": "\\u0000\\r\\n"}', {"a": "\x00\r\n"}),
    ],
)
def test_any_header_gives_metadata(header: str | None, metadata: dict[str, str]) -> None:
    headers = None if header is None else {METADATA: header}
    assert delivery_metadata(headers, "orders") == metadata


def test_a_deep_header_is_metadata_not_a_crash() -> None:
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert delivery_metadata({METADATA: deep}, "orders") == {"Topic": "orders"}
