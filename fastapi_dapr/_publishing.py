"""What a publisher sends: a message's data encoded as the publish API takes it, and the
entries of a bulk publish (reference 1.4, 1.8). Loaded in both modes: no sidecar here."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json, to_jsonable_python

from ._cloudevent import CloudEvent
from ._headers import BAD_VALUE_RE, TOKEN_RE
from ._json import NO_VALUE
from ._media import is_text, media_type

__all__ = ["BulkPublishEntry", "FailedEntry"]


def encode_data(data: Any, content_type: str | None) -> tuple[bytes, str, Any]:
    """The body and Content-Type of a publish of `data`, and the JSON value the
    body encodes when it is JSON (`NO_VALUE` otherwise)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type or "application/octet-stream", NO_VALUE
    if isinstance(data, str):
        return data.encode(), content_type or "text/plain", NO_VALUE
    if isinstance(data, CloudEvent):
        body = data.model_dump_json(exclude_none=True).encode()
        return body, content_type or "application/cloudevents+json", NO_VALUE
    value = data.model_dump(mode="json") if isinstance(data, BaseModel) else to_jsonable_python(data)
    return to_json(value), content_type or "application/json", value


def metadata_problem(metadata: Mapping[str, Any]) -> str | None:
    """Why `metadata` cannot travel with a message; None when it can.

    Each key and value becomes a header of every delivery (reference 3.2): a key that is
    not an HTTP token, or a value with CR, LF or another control character, would fail
    every delivery to an app over HTTP, and every dead-letter publish after it.
    """
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"metadata keys and values must be strings: {key!r}"
        if not TOKEN_RE.fullmatch(key):
            return (
                f"the metadata key {key[:40]!r} is not an HTTP token (it becomes a header of the deliveries)"
            )
        if BAD_VALUE_RE.search(value):
            return (
                f"the metadata value of {key!r} has CR, LF or another control character "
                "(it becomes a header of the deliveries)"
            )
    return None


@dataclasses.dataclass(frozen=True)
class BulkPublishEntry:
    """One message of `Dapr.publish_bulk`: its data, encoded as `Dapr.publish` encodes
    it, and what daprd's bulk API takes beside. An entry given without `metadata` gets
    none of the request's, as in daprd, except `rawPayload`."""

    data: Any
    """The message: bytes, str, a pydantic model or anything JSON can hold."""
    entry_id: str | None = None
    """The entry's id in the answer's failed entries; default its position, "0", "1", ..."""
    content_type: str | None = None
    """The data's content type; default as `Dapr.publish` chooses it."""
    metadata: Mapping[str, str] | None = None
    """This entry's `metadata.*` (`ttlInSeconds`, headers for the subscriber...)."""


@dataclasses.dataclass(frozen=True)
class FailedEntry:
    """An entry of a bulk publish that was not published, and why."""

    entry_id: str
    """The entry's id, as given or its position."""
    error: str
    """Why it was not published, as daprd words it."""


def bulk_body(entries: Iterable[Any]) -> bytes:
    """daprd's bulk publish request body for `entries` (`BulkPublishEntry`s, or data)."""
    wire = []
    for index, given in enumerate(entries):
        entry = given if isinstance(given, BulkPublishEntry) else BulkPublishEntry(given)
        body, content_type, value = encode_data(entry.data, entry.content_type)
        media = media_type(content_type)
        event: Any
        if media == "application/octet-stream":
            event = base64.b64encode(body).decode()
        elif is_text(media):
            event = body.decode("utf-8", errors="replace")
        else:  # JSON: daprd marshals the event itself
            event = value if value is not NO_VALUE else json.loads(body)
        item: dict[str, Any] = {
            "entryId": entry.entry_id if entry.entry_id is not None else str(index),
            "event": event,
            "contentType": content_type,
        }
        if entry.metadata is not None:
            item["metadata"] = dict(entry.metadata)
        wire.append(item)
    return json.dumps(wire).encode()


def failed_entries(failed: Iterable[Mapping[str, Any]]) -> list[FailedEntry]:
    return [FailedEntry(str(item.get("entryId", "")), str(item.get("error", ""))) for item in failed]
