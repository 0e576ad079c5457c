"""The CloudEvent model handed to subscription handlers.

The event (this module's models) and the HTTP binding that reads it from a
delivery (`_binding.py`) are kept apart, as in cloudevents/sdk-python.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Mapping
from functools import cache
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._json import DELIVERY_DEPTH, loads

__all__ = ["BulkEntry", "CloudEvent"]

DataT = TypeVar("DataT")

_DataKind = Literal["any", "bytes", "str", "structured"]


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvent 1.0 as daprd delivers it, with `data` validated as `DataT`.

    Every attribute of the envelope is a field; attributes that are not part of
    the spec or of Dapr's additions are extensions, found in `extensions`.
    `data` is validated against `DataT` alone, never against the envelope, so a
    model with fields named `id`, `type` or `source` describes the payload.
    Binary payloads (`data_base64`, used by daprd for raw subscriptions and
    `application/octet-stream`) are decoded when `DataT` is `bytes`, and parsed
    as JSON when `DataT` is a model or another structured type.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = ""
    """The event's id, unique per source: what a handler deduplicates on."""
    source: str = ""
    """Who sent it; daprd puts the publishing app's id."""
    type: str = ""
    """The kind of event; daprd's default is `com.dapr.event.sent`."""
    specversion: str = "1.0"
    """The CloudEvents version."""
    datacontenttype: str | None = None
    """The content type of `data`."""
    dataschema: str | None = None
    """A URI of the schema `data` follows."""
    subject: str | None = None
    """What the event is about, within the source."""
    time: datetime.datetime | None = None
    """When it happened; None when absent or unreadable."""
    data: DataT = Field(default=None)  # type: ignore[assignment]
    """The payload, validated as `DataT`."""
    data_base64: str | None = None
    """A binary payload as sent, base64-encoded (decoded into `data`)."""
    # Dapr's additions (reference 1.4).
    topic: str | None = None
    """The topic it was published to."""
    pubsubname: str | None = None
    """The pub/sub component it came through."""
    traceid: str | None = None
    """The publish's `traceparent` again, under Dapr's older name."""
    traceparent: str | None = None
    """The W3C `traceparent` of the publish."""
    tracestate: str | None = None
    """The W3C `tracestate` of the publish."""
    expiration: str | None = None
    """When the message expires (RFC 3339), set from the publish's `ttlInSeconds`."""

    @property
    def extensions(self) -> dict[str, Any]:
        """Attributes outside the spec and Dapr's additions, as sent."""
        return dict(self.model_extra or {})

    @field_validator("time", mode="wrap")
    @classmethod
    def _lenient_time(cls, value: Any, handler: Any) -> datetime.datetime | None:
        # A malformed optional attribute must not turn a good message into a
        # poison one: the time is dropped, the message is kept.
        try:
            result: datetime.datetime | None = handler(value)
        except ValueError:
            return None
        return result

    @model_validator(mode="before")
    @classmethod
    def _decode_data(cls, values: Any) -> Any:
        if not isinstance(values, Mapping):
            return values
        kind = _data_kind(cls)
        given = data = values.get("data")
        encoded = values.get("data_base64")
        if data is None and isinstance(encoded, str):
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                data = None  # left for DataT to refuse
        if data is None:
            return values if "data" in values else {**values, "data": None}
        decoded = _coerce(data, kind)
        if decoded is given:
            return values
        return {**values, "data": decoded}


def _coerce(data: Any, kind: _DataKind) -> Any:
    """Bring `data` to the form `DataT` validates from."""
    if kind == "bytes":
        if isinstance(data, str):
            return data.encode()
        if not isinstance(data, bytes):
            return json.dumps(data, separators=(",", ":")).encode()
        return data
    if kind == "str":
        if isinstance(data, bytes):
            return data.decode("utf-8", errors="replace")
        return data
    if kind == "structured" and isinstance(data, (str, bytes)):
        # A JSON payload that travelled as text or as base64 (raw payloads).
        try:
            return loads(data, DELIVERY_DEPTH)
        except ValueError:
            return data
    return data


@cache
def _data_kind(cls: type[BaseModel]) -> _DataKind:
    args = cls.__pydantic_generic_metadata__["args"]
    target = args[0] if args else Any
    if target is Any or target is object:
        return "any"
    if target is bytes:
        return "bytes"
    if target is str:
        return "str"
    return "structured"


class BulkEntry(BaseModel, Generic[DataT]):
    """One entry of a bulk delivery: a handler of a `bulk` subscription gets a list of them,
    and answers a status per `entry_id`."""

    model_config = ConfigDict(populate_by_name=True)

    entry_id: str = Field(alias="entryId")
    """The entry's id, the key of its status in the handler's answer."""
    event: CloudEvent[DataT]
    """The message, as a single delivery would have it."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """The message's metadata."""
    content_type: str = Field(default="application/cloudevents+json", alias="contentType")
    """How the entry was sent."""
