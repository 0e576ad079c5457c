"""A delivered CloudEvent as the `TopicEventRequest` a streaming subscription receives.

daprd's gRPC envelope of a subscribed message: the event's `id`, `source`, `type`,
`specversion` and `datacontenttype` (when strings), the subscription's topic, pubsub
and path, every other attribute in `extensions`, and `data`: `data_base64` decoded;
else `data` as its text for a text or XML content type, JSON-encoded (as Go's
`json.Marshal`) for a JSON or CloudEvents one, and empty for any other.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2

from ..._json import go_dumps
from ..delivery import Route

__all__: list[str] = []

# What the envelope has fields for: never repeated in `extensions` (daprd's list).
_OWN_FIELDS = frozenset(("id", "source", "datacontenttype", "type", "specversion", "data", "data_base64"))


class EventError(Exception):
    """The event cannot be put in an envelope (daprd: a retriable error)."""


def _media_type(content_type: str) -> str:
    return content_type.lower().partition(";")[0]


def is_text(content_type: str) -> bool:
    """daprd's `IsStringContentType`: `text/...` or XML."""
    return content_type.lower().startswith("text/") or _media_type(content_type) == "application/xml"


def is_json(content_type: str) -> bool:
    """daprd's `IsJSONContentType` or `IsCloudEventContentType`."""
    return _media_type(content_type) in ("application/json", "application/cloudevents+json")


def _string(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    return value if isinstance(value, str) else ""


def event_data(event: Mapping[str, Any], content_type: str) -> bytes:
    """The envelope's `data` (see the module's text); `EventError` where daprd refuses it."""
    encoded = event.get("data_base64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise EventError("unexpected data type encountered in envelope")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"unable to base64 decode cloudEvent field data_base64: {exc}") from None
    data = event.get("data")
    if data is None:
        return b""
    if is_text(content_type):
        if not isinstance(data, str):
            raise EventError("unexpected data type encountered in envelope")
        return data.encode()
    if is_json(content_type):
        return go_dumps(data)
    return b""


def topic_event(event: Mapping[str, Any], route: Route, path: str) -> Any:
    """The `TopicEventRequest` of `event` delivered on `route` to `path`."""
    content_type = _string(event, "datacontenttype")
    envelope = appcallback_pb2.TopicEventRequest(
        id=_string(event, "id"),
        source=_string(event, "source"),
        type=_string(event, "type"),
        spec_version=_string(event, "specversion"),
        data_content_type=content_type,
        data=event_data(event, content_type),
        topic=route.topic,
        pubsub_name=route.pubsub,
        path=path,
    )
    extensions = struct_pb2.Struct()
    try:
        extensions.update({key: value for key, value in event.items() if key not in _OWN_FIELDS})
    except (TypeError, ValueError) as exc:
        raise EventError(f"unable to marshal cloudEvent extensions: {exc}") from None
    envelope.extensions.CopyFrom(extensions)
    return envelope
