"""PublishEvent, BulkPublishEvent and BulkPublishEventAlpha1, as daprd's gRPC API serves them.

The same runtime as `POST /v1.0/publish` and the bulk route (publish_routes.py): the
same checks, envelope, scopes, TTLs and resiliency; only the request's shape differs.
Metadata keys are bare (`rawPayload`, `ttlInSeconds`, `cloudevent.id`: what the HTTP API
reads from `?metadata.<key>=`), an empty `data_content_type` is read as `text/plain` by
the envelope as on HTTP, the trace comes from the `traceparent` and `tracestate` metadata
of the call, and the body limit is the server's message limit (grpc's RESOURCE_EXHAUSTED,
as in daprd, whose limit is the same flag's). daprd's gRPC differences from its HTTP API:
no metadata in the ErrorInfo of "not found" and "not configured", and an empty pubsub
name is its own error.

A bulk publish answers its failed entries (`failed_entries`: id and error) in an OK
answer, the API's contract; its bulk entries are bytes already, so no entry is refused for
its encoding as over HTTP. The request as a whole is refused as daprd refuses it: an entry
without an id or with another's, an envelope that cannot be made, a forbidden topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dapr.proto.runtime.v1 import pubsub_pb2
from google.protobuf import empty_pb2

from ..._error_codes import PubSubErrors, kit_error
from ..._exceptions import DaprAPIError
from ..._publishing import metadata_problem
from ..._trace import context as trace_context
from ..bulk_publish import bulk_error, check_entry_id, entry_request, publish_requests
from ..envelope import BadMetadata, PublishRequest, is_raw_payload
from . import errors

__all__: list[str] = []

_EMPTY = empty_pb2.Empty()


def call_trace(context: Any) -> tuple[str, str]:
    """The call's trace as daprd reads it ("" when none): `grpc-trace-bin` first (OpenCensus'
    binary form, no tracestate), else the `traceparent` and `tracestate` metadata."""
    parent = state = binary = None
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and parent is None:
            parent = value
        elif key == "tracestate" and state is None:
            state = value
        elif key == "grpc-trace-bin" and binary is None:
            binary = value
    if binary is not None:
        parent, state = _from_binary(bytes(binary)), None
    trace = trace_context(parent, state) if isinstance(parent, str) else None
    return trace if trace is not None else ("", "")


def _from_binary(value: bytes) -> str | None:
    """daprd's SpanContextFromBinary, as a traceparent: version 0, then field 0 (the trace
    id, 16 bytes), field 1 (the span id, 8) and field 2 (the flags, 1), the last two optional."""
    if value[:1] != b"\0" or value[1:2] != b"\0" or len(value) < 18:
        return None
    trace_id, rest = value[2:18], value[18:]
    span_id, flags = bytes(8), 0
    if len(rest) >= 9 and rest[0] == 1:
        span_id, rest = rest[1:9], rest[9:]
    if len(rest) >= 2 and rest[0] == 2:
        flags = rest[1]
    return f"00-{trace_id.hex()}-{span_id.hex()}-{flags:02x}"


def check(runtime: Any, pubsub: str, topic: str, metadata: Mapping[str, str]) -> None:
    """daprd's gRPC checks of the pubsub and topic, in its order; raises `DaprAPIError`."""
    try:
        runtime.check_pubsub(pubsub, topic, metadata)
    except DaprAPIError as exc:
        if exc.error_code == "ERR_PUBSUB_NOT_FOUND" and not pubsub:
            raise kit_error(
                404, "ERR_PUBSUB_EMPTY", "DAPR_PUBSUB_NAME_EMPTY", "pubsub name is empty", metadata, ""
            ) from None
        if exc.error_code in ("ERR_PUBSUB_NOT_FOUND", "ERR_PUBSUB_NOT_CONFIGURED"):
            exc.details[-1]["metadata"] = {}  # daprd's gRPC API gives these no metadata
        raise


async def publish_event(service: Any, request: Any, context: Any) -> Any:
    """`PublishEvent`: Empty once the broker has the message."""
    runtime = await service.running(context)
    metadata = dict(request.metadata)
    traceparent, tracestate = call_trace(context)
    try:
        check(runtime, request.pubsub_name, request.topic, metadata)
        await runtime.publish(
            PublishRequest(
                pubsub=request.pubsub_name,
                topic=request.topic,
                data=request.data,
                content_type=request.data_content_type,
                metadata=metadata,
                traceparent=traceparent,
                tracestate=tracestate,
            )
        )
    except DaprAPIError as exc:
        await errors.abort_api_error(context, exc)
    return _EMPTY


async def bulk_publish_event(service: Any, request: Any, context: Any) -> Any:
    """`BulkPublishEvent` (and its Alpha1): the failed entries, none when all were published."""
    runtime = await service.running(context)
    pubsub, topic = request.pubsub_name, request.topic
    metadata = dict(request.metadata)
    try:
        check(runtime, pubsub, topic, metadata)
        requests = bulk_entries(runtime.app_id, request, metadata, call_trace(context), service.api)
        failed = await publish_requests(runtime, pubsub, topic, requests)
    except DaprAPIError as exc:
        await errors.abort_api_error(context, exc)
    return pubsub_pb2.BulkPublishResponse(
        failedEntries=[
            pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=entry["entryId"], error=entry["error"])
            for entry in failed
        ]
    )


def bulk_entries(
    app_id: str, request: Any, metadata: Mapping[str, str], trace: tuple[str, str], api: Any
) -> list[tuple[str, PublishRequest]]:
    """The entries of a bulk request, checked as daprd checks them; raises `DaprAPIError`."""
    pubsub, topic = request.pubsub_name, request.topic
    entries = request.entries
    if len(entries) > api.max_bulk_entries:  # this sidecar's limit, the HTTP API's
        raise bulk_error(
            400,
            "DAPR_PUBSUB_UNMARSHAL_EVENTS",
            f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: "
            f"{len(entries)} entries, more than the limit of {api.max_bulk_entries} a request",
            {"appID": app_id},
            pubsub,
        )
    problem = metadata_problem(metadata)
    try:
        is_raw_payload(metadata)  # daprd reads it for the whole request, before the entries
    except BadMetadata as exc:
        problem = str(exc)
    if problem is not None:
        raise PubSubErrors.bad_metadata(pubsub, metadata, problem)
    seen: dict[str, int] = {}
    requests = []
    for entry in entries:
        check_entry_id(app_id, pubsub, topic, entry.entry_id, seen)
        # An empty map is Go's nil: an entry without metadata of its own.
        own = dict(entry.metadata) or None
        requests.append(
            (
                entry.entry_id,
                entry_request(
                    pubsub, topic, entry.entry_id, entry.event, entry.content_type, own, metadata, *trace
                ),
            )
        )
    return requests
