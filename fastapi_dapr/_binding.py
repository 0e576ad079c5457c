"""The HTTP binding: a delivery request (body and headers) to a CloudEvent.

daprd always posts `application/cloudevents+json` (reference 3.2), so the
structured mode is the hot path. Binary mode (`ce-*` headers) and plain bodies
serve other senders and direct calls. The binding is written here rather than
taken from the `cloudevents` package, whose HTTP bindings invent a `time`
attribute that was never sent and, in 2.x, turn binary data into text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from ._json import DELIVERY_DEPTH, loads
from ._media import is_json, is_text, media_type

__all__: list[str] = []  # internal: the public names are in fastapi_dapr.__all__

_CE_PREFIX = "ce-"


def _decode_body(body: bytes, content_type: str) -> Any:
    media = media_type(content_type)
    if is_json(media):
        try:
            return loads(body, DELIVERY_DEPTH)
        except ValueError:
            return body.decode("utf-8", errors="replace")
    if is_text(media):
        return body.decode("utf-8", errors="replace")
    return body


def event_dict_from_http(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The CloudEvent attributes and data carried by a delivery request.

    Raises `ValueError` for a structured-mode body that is not JSON.
    """
    content_type = headers.get("content-type", "")
    if _CE_PREFIX + "specversion" in headers:
        attributes: dict[str, Any] = {}
        for name, value in headers.items():
            if name.startswith(_CE_PREFIX):
                attributes[name[len(_CE_PREFIX) :]] = unquote(value)
        if content_type:
            attributes["datacontenttype"] = content_type
        attributes["data"] = _decode_body(body, content_type) if body else None
        return attributes
    media = media_type(content_type)
    if media == "application/cloudevents+json" or (is_json(media) and body):
        parsed = loads(body, DELIVERY_DEPTH)  # ValueError for a broken body, or one nested too deep
        if isinstance(parsed, dict) and "specversion" in parsed:
            return parsed
        # JSON that is not a CloudEvent: the whole body is the data.
        return {"data": parsed, "datacontenttype": content_type or "application/json"}
    return {
        "data": _decode_body(body, content_type) if body else None,
        "datacontenttype": content_type or None,
    }
