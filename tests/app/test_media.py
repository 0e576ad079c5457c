"""The one Content-Type parser (`fastapi_dapr._media`), with each caller's way of comparing."""

from __future__ import annotations

import pytest

from fastapi_dapr._media import is_content_type, is_json, is_text, media_type, parameter


@pytest.mark.parametrize(
    ("value", "read", "unstripped", "cased"),
    [
        ("application/json", "application/json", "application/json", "application/json"),
        (" Application/JSON ; charset=utf-8", "application/json", " application/json ", "Application/JSON"),
        ("text/plain;", "text/plain", "text/plain", "text/plain"),
        ("", "", "", ""),
        (";", "", "", ""),
        (";;a=b", "", "", ""),
        ("\t", "", "\t", ""),
        ("a;b;c", "a", "a", "a"),
        ("x/y\x00z", "x/y\x00z", "x/y\x00z", "x/y\x00z"),  # nothing refused: a reading, not a check
        ("\u0130/X", "i\u0307/x", "i\u0307/x", "\u0130/X"),  # str.lower, as before
    ],
)
def test_media_type_is_before_the_first_semicolon(value: str, read: str, unstripped: str, cased: str) -> None:
    assert media_type(value) == read
    assert media_type(value, strip=False) == unstripped
    assert media_type(value, lower=False) == cased


@pytest.mark.parametrize(
    ("value", "charset"),
    [
        ("text/plain; charset=latin-1", "latin-1"),
        ('text/plain; CharSet="utf-16"', "utf-16"),
        ("text/plain;charset=a;charset=b", "a"),  # the first wins
        ("text/plain; charset=", None),  # empty: as if absent
        ('text/plain; charset=""', ""),  # quoted empty: given, and empty
        ("text/plain; charset = x", None),  # a space before `=` is another name
        ("text/plain", None),
        ("charset=x", None),  # the type, not a parameter
        ("", None),
        (";" * 10_000 + "charset=x", "x"),
    ],
)
def test_a_parameter_is_read_as_before(value: str, charset: str | None) -> None:
    assert parameter(value, "charset") == charset


def test_json_and_text_media_types() -> None:
    assert all(map(is_json, ["application/json", "text/json", "application/cloudevents+json", "+json"]))
    assert not any(map(is_json, ["application/jsonx", "json", "application/json5", ""]))
    assert all(map(is_text, ["text/plain", "text/", "application/xml"]))
    assert not any(map(is_text, ["application/xml+x", "texts/plain", "", "application/xhtml+xml"]))


def test_components_contrib_s_comparison_does_not_strip() -> None:
    assert is_content_type("Application/Octet-Stream; x=1", "application/octet-stream")
    assert not is_content_type(" application/octet-stream", "application/octet-stream")
    assert not is_content_type("application/octet-stream ;x", "application/octet-stream")
