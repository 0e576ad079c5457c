"""Deliveries to a gRPC app: the engine's POSTs as `OnTopicEvent` and `OnBulkTopicEvent` calls.

The delivery engine posts a message (or a batch) as it would to an HTTP app; here
its body becomes daprd's gRPC envelope, and the app's answer is given back in the
engine's terms, read as daprd's gRPC postman reads it:

- a `TopicEventResponse` status: SUCCESS, RETRY and DROP as `{"status": ...}`, any
  other value as a status the engine does not know (retried);
- `UNIMPLEMENTED` (the app has no handler): a 404, which the engine reads as DROP;
- any other gRPC error: retried, with the gRPC code (0-16) as the answer's status, so
  that a Resiliency policy's `matching.gRPCStatusCodes` applies as in daprd.

A batch goes to `OnBulkTopicEvent`, and to `OnBulkTopicEventAlpha1` when the app does
not implement the stable one (daprd's fallback); its statuses come back entry by entry.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2

from ..._json import DELIVERY_DEPTH, go_dumps, loads
from ..delivery import ZERO_TRACEPARENT, Route
from .stream_event import EventError, topic_event

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_STATUS_NAMES = {0: "SUCCESS", 1: "RETRY", 2: "DROP"}
_STATUS_BODIES = {number: go_dumps({"status": name}) for number, name in _STATUS_NAMES.items()}
_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_VALUE = re.compile(r"[\x20-\x7e]*\Z")
Answer = tuple[int, bytes]  # the HTTP status and body the engine reads


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a delivery path of the channel leads: a route, and the path the app gave it."""

    route: Route
    path: str


def valid_metadata(pairs: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    """The pairs gRPC can send as metadata: names of lower-case letters, digits, `-_.` (not
    `grpc-`, reserved), text values of printable ASCII (`-bin` values are bytes). grpcio
    fails the whole call on one bad pair; the others are left out."""
    kept: list[tuple[str, str | bytes]] = []
    for key, value in pairs:
        if not _KEY.match(key) or key.startswith("grpc-"):
            continue
        if key.endswith("-bin") != isinstance(value, bytes):
            continue
        if isinstance(value, str) and not _VALUE.match(value):
            continue
        kept.append((key, value))
    return kept


def delivery_metadata(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """The gRPC metadata of a delivery, from the headers the engine gave its POST: the
    message's metadata, `dapr-api-token` and the trace, without the body's framing."""
    pairs: list[tuple[str, str | bytes]] = []
    for name, raw in headers:
        key = name.decode("latin-1").lower()
        if key in ("content-type", "content-length"):
            continue
        value = raw.decode("latin-1")
        if key == "traceparent" and value == ZERO_TRACEPARENT:
            continue  # the engine's "no trace": daprd sends none then
        pairs.append((key, value))
    return valid_metadata(pairs)


def failed(exc: grpc.aio.AioRpcError, what: str) -> Answer:
    """The engine's answer for a call that ended with a gRPC error (see the module's text)."""
    code = exc.code()
    if code is grpc.StatusCode.UNIMPLEMENTED:
        logger.warning("%s: the app answered UNIMPLEMENTED (%s): dropped", what, exc.details())
        return 404, b""
    logger.debug("%s: the app answered %s (%s): retried", what, code.name, exc.details())
    number: int = code.value[0]
    return number, b""


def _event(body: bytes) -> dict[str, Any]:
    try:
        event = loads(body, DELIVERY_DEPTH)
    except ValueError as exc:
        raise EventError(f"the event is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise EventError("the event is not a JSON object")
    return event


async def deliver(stub: Any, target: Target, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Answer:
    """One message through `OnTopicEvent`; `EventError` when it has no gRPC envelope."""
    request = topic_event(_event(body), target.route, target.path)
    try:
        response = await stub.OnTopicEvent(request, metadata=delivery_metadata(headers))
    except grpc.aio.AioRpcError as exc:
        return failed(exc, f"OnTopicEvent of event {request.id!r} on {target.route.describe()}")
    status = response.status
    return 200, _STATUS_BODIES.get(status) or go_dumps({"status": str(status)})


def _entry(item: dict[str, Any], target: Target) -> Any:
    """One entry of a batch: the raw bytes, or the CloudEvent (whose `data_base64` daprd's
    bulk envelope does not read)."""
    content_type = item.get("contentType") or ""
    metadata = item.get("metadata") or {}
    event = item.get("event")
    if target.route.raw_payload:
        try:
            data = base64.b64decode(event if isinstance(event, str) else "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"the raw payload is not base64: {exc}") from None
        return appcallback_pb2.TopicEventBulkRequestEntry(
            entry_id=item.get("entryId", ""), bytes=data, content_type=content_type, metadata=metadata
        )
    if not isinstance(event, dict):
        raise EventError("the event is not a JSON object")
    single = topic_event({k: v for k, v in event.items() if k != "data_base64"}, target.route, "")
    cloud_event = appcallback_pb2.TopicEventCERequest(
        id=single.id,
        source=single.source,
        type=single.type,
        spec_version=single.spec_version,
        data_content_type=single.data_content_type,
        data=single.data,
        extensions=single.extensions,
    )
    return appcallback_pb2.TopicEventBulkRequestEntry(
        entry_id=item.get("entryId", ""),
        cloud_event=cloud_event,
        content_type=content_type,
        metadata=metadata,
    )


def bulk_request(target: Target, body: bytes) -> Any:
    """The `TopicEventBulkRequest` of the engine's batch. An entry without an envelope is
    left out: without a status, the engine retries it (daprd: RETRY)."""
    batch = _event(body)
    entries = []
    for item in batch.get("entries") or ():
        try:
            entries.append(_entry(item, target))
        except (EventError, TypeError, ValueError) as exc:
            logger.debug("bulk entry %s on %s: %s", item.get("entryId"), target.route.describe(), exc)
    return appcallback_pb2.TopicEventBulkRequest(
        id=str(batch.get("id", "")),
        entries=entries,
        metadata={str(k): str(v) for k, v in (batch.get("metadata") or {}).items()},
        topic=target.route.topic,
        pubsub_name=target.route.pubsub,
        type=str(batch.get("type", "")),
        path=target.path,
    )


async def deliver_bulk(
    stub: Any, alpha: Any, target: Target, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> Answer:
    """A batch through `OnBulkTopicEvent` (`OnBulkTopicEventAlpha1` when unimplemented), its
    statuses in the engine's bulk answer (`{"statuses": [{"entryId", "status"}]}`)."""
    request = bulk_request(target, body)
    metadata = delivery_metadata(headers)
    try:
        try:
            response = await stub.OnBulkTopicEvent(request, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            response = await alpha.OnBulkTopicEventAlpha1(request, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return failed(exc, f"OnBulkTopicEvent of {len(request.entries)} events on {target.route.describe()}")
    statuses = [
        {"entryId": entry.entry_id, "status": _STATUS_NAMES.get(entry.status, str(entry.status))}
        for entry in response.statuses
    ]
    return 200, go_dumps({"statuses": statuses})
