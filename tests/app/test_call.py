"""`Dapr.invoke`'s arguments checked before anything is sent (fastapi_dapr._call)."""

from __future__ import annotations

import pytest

from fastapi_dapr import DaprAPIError
from fastapi_dapr._call import prepare_call

ARGUMENTS = {
    "http_method": "GET",
    "json": None,
    "content": None,
    "headers": None,
    "params": None,
    "timeout": None,
}


def test_a_query_string_in_the_method_points_at_params() -> None:
    with pytest.raises(DaprAPIError) as refused:
        prepare_call("orders", "items?x=1", **ARGUMENTS)
    assert "forbidden character" in refused.value.message
    assert "a query string goes in params=: invoke('orders', 'items', params=...)" in refused.value.message


def test_other_forbidden_characters_get_no_such_hint() -> None:
    with pytest.raises(DaprAPIError) as refused:
        prepare_call("orders", "items#x", **ARGUMENTS)
    assert "params=" not in refused.value.message


def test_params_make_the_query_string() -> None:
    call = prepare_call("orders", "items", **{**ARGUMENTS, "params": {"x": "1"}})
    assert (call.method, call.query) == ("items", "x=1")
