"""Bulk publish (reference 1.8): the entries of a request read as daprd reads them, each
published as a single message, and the ones that failed in daprd's shape."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._envelope import PublishRequest, is_content_type
from ._errors import kit_error
from ._exceptions import DaprAPIError
from ._json import go_dumps

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__: list[str] = []


async def publish_bulk(
    runtime: Runtime,
    pubsub: str,
    topic: str,
    body: bytes,
    metadata: Mapping[str, str],
    traceparent: str = "",
    tracestate: str = "",
) -> list[dict[str, str]]:
    """Publish every entry of `body` (a JSON array, as daprd reads it) to a pubsub the
    caller has checked (`Runtime.check_pubsub`); the failed entries, `{"entryId",
    "error"}` each. Raises `DaprAPIError` when the request as a whole is refused: a
    malformed entry, a forbidden topic."""
    requests = bulk_requests(runtime.app_id, pubsub, topic, body, metadata, traceparent, tracestate)
    # Scopes are checked on the whole request, once the entries are read (reference 1.8).
    runtime.check_scopes(pubsub, topic)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(runtime.publish(request, entry=True) for _, request in requests), return_exceptions=True
    )
    if runtime.metrics is not None:
        published = sum(not isinstance(result, BaseException) for result in results)
        elapsed = (time.perf_counter() - started) * 1000
        runtime.metrics.published_bulk(pubsub, topic, published == len(results), published, elapsed)
    failed = []
    for (entry_id, _), result in zip(requests, results, strict=True):
        if isinstance(result, DaprAPIError):
            failed.append({"entryId": entry_id, "error": result.message})
        elif isinstance(result, BaseException):
            failed.append({"entryId": entry_id, "error": f"{type(result).__name__}: {result}"})
    return failed


def _entry_bytes(event: Any, content_type: str) -> bytes:
    """daprd's `ConvertEventToBytes` (reference 1.8)."""
    if is_content_type(content_type, "application/octet-stream"):
        if not isinstance(event, str):
            raise ValueError("error: mismatch between contentType and event")
        return base64.b64decode(event)
    if content_type.lower().startswith("text/") or is_content_type(content_type, "application/xml"):
        if not isinstance(event, str):
            raise ValueError("error: mismatch between contentType and event")
        return event.encode()
    if is_content_type(content_type, "application/json") or is_content_type(
        content_type, "application/cloudevents+json"
    ):
        return go_dumps(event)
    raise ValueError("error: mismatch between contentType and event")


def bulk_requests(
    app_id: str,
    pubsub: str,
    topic: str,
    body: bytes,
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str,
) -> list[tuple[str, PublishRequest]]:
    """The entries of a bulk publish, checked as daprd checks them; raises `DaprAPIError`."""
    try:
        entries = json.loads(body)
        if not isinstance(entries, list):
            raise ValueError("the body is not a JSON array")
    except ValueError as exc:
        raise _bulk_error(
            400,
            "DAPR_PUBSUB_UNMARSHAL_EVENTS",
            f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: {exc}",
            {"appID": app_id},
            pubsub,
        ) from None
    seen: set[str] = set()
    requests = []
    for entry in entries:
        entry_id = entry.get("entryId", entry.get("entryID")) if isinstance(entry, dict) else None
        if not isinstance(entry_id, str) or not entry_id or entry_id in seen:
            problem = "entryId is duplicated or not present for entry"
            raise _bulk_error(
                400,
                "DAPR_PUBSUB_MARSHAL_EVENTS",
                f"error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: {problem}",
                {"appID": app_id, "error": problem},
                pubsub,
            )
        seen.add(entry_id)
        assert isinstance(entry, dict)
        content_type = entry.get("contentType") or ""
        try:
            data = _entry_bytes(entry.get("event"), str(content_type))
        except (ValueError, TypeError) as exc:
            raise _bulk_error(
                400,
                "DAPR_PUBSUB_MARSHAL_ENVELOPE",
                f"error when marshalling cloud event envelope for topic {topic} pubsub {pubsub}: {exc}",
                {"appID": app_id, "error": str(exc)},
                pubsub,
            ) from None
        entry_metadata = entry.get("metadata")
        if isinstance(entry_metadata, dict):
            # Request-level metadata reaches only entries that have their own (reference 1.8).
            merged = {**metadata, **{str(k): str(v) for k, v in entry_metadata.items()}}
        else:
            merged = {"rawPayload": metadata["rawPayload"]} if "rawPayload" in metadata else {}
        requests.append(
            (
                entry_id,
                PublishRequest(pubsub, topic, data, str(content_type), merged, traceparent, tracestate),
            )
        )
    return requests


def _bulk_error(
    status: int, reason: str, message: str, metadata: Mapping[str, str], pubsub: str
) -> DaprAPIError:
    return kit_error(status, "ERR_PUBSUB_EVENTS_SER", reason, message, metadata, pubsub)
