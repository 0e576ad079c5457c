"""Bulk publish (reference 1.8): the entries of a request read as daprd reads them, each
published as a single message, and the ones that failed in daprd's shape.

A request holds at most `max_entries` entries, and its entries are read and published a
turn's worth at a time, the event loop serving other requests between two turns: a bulk
of thousands of entries costs the other callers a few milliseconds at a time, not seconds.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._error_codes import PubSubErrors, kit_error
from .._exceptions import DaprAPIError
from .._json import MAX_DEPTH, TooDeep, go_dumps, loads
from .._media import is_content_type, is_text, media_type
from .._publishing import metadata_problem
from .envelope import PublishRequest

if TYPE_CHECKING:
    from .publisher import Envelope
    from .runtime import Runtime

__all__: list[str] = []

DEFAULT_MAX_ENTRIES = 10_000
_TURN = 100  # entries read, or started publishing, between two turns of the event loop


async def publish_bulk(
    runtime: Runtime,
    pubsub: str,
    topic: str,
    body: bytes,
    metadata: Mapping[str, str],
    traceparent: str = "",
    tracestate: str = "",
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[dict[str, str]]:
    """Publish every entry of `body` (a JSON array, as daprd reads it) to a pubsub the
    caller has checked (`Runtime.check_pubsub`); the failed entries, `{"entryId",
    "error"}` each. Raises `DaprAPIError` when the request as a whole is refused: a
    malformed entry, more than `max_entries` entries, a forbidden topic."""
    requests = await bulk_requests(
        runtime.app_id, pubsub, topic, body, metadata, traceparent, tracestate, max_entries=max_entries
    )
    return await publish_requests(runtime, pubsub, topic, requests)


async def publish_requests(
    runtime: Runtime, pubsub: str, topic: str, requests: Sequence[tuple[str, PublishRequest]]
) -> list[dict[str, str]]:
    """Publish the checked entries (`(entry id, request)`, as `bulk_requests` or the gRPC
    API reads them); the failed entries, as `publish_bulk` answers them."""
    # Every envelope is made before any entry is published: one that cannot be made refuses
    # the request as a whole, as in daprd (400 here, as for a single publish); metadata the
    # broker cannot use (a TTL) fails that entry only, as daprd's component does.
    envelopes: list[Envelope | DaprAPIError] = []
    for start in range(0, len(requests), _TURN):
        if start:
            await asyncio.sleep(0)
        for _, request in requests[start : start + _TURN]:
            try:
                envelopes.append(runtime.envelope(request))
            except DaprAPIError as exc:
                if exc.error_code != "ERR_PUBSUB_REQUEST_METADATA":
                    raise
                envelopes.append(exc)
    # Scopes are checked on the whole request, once the entries are read (reference 1.8).
    runtime.check_scopes(pubsub, topic)
    started = time.perf_counter()
    results = await _publish_all(runtime, [request for _, request in requests], envelopes)
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


async def _publish_all(
    runtime: Runtime, requests: Sequence[PublishRequest], envelopes: Sequence[Envelope | DaprAPIError]
) -> list[Any]:
    """Each request's message id or error. All are published at once, as daprd's default
    bulk publisher does (an entry waiting for room in a queue does not hold up the others),
    but started a turn's worth at a time."""
    tasks: list[asyncio.Future[str]] = []
    try:
        for start in range(0, len(requests), _TURN):
            tasks += [
                _published(runtime, request, envelope)
                for request, envelope in zip(
                    requests[start : start + _TURN], envelopes[start : start + _TURN], strict=True
                )
            ]
            await asyncio.sleep(0)  # those run their start before more are made
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:  # the caller was cancelled: so are its entries
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)


def _published(
    runtime: Runtime, request: PublishRequest, envelope: Envelope | DaprAPIError
) -> asyncio.Future[str]:
    if isinstance(envelope, DaprAPIError):
        failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        failed.set_exception(envelope)
        failed.exception()  # read by gather; marked so that a cancelled request logs nothing
        return failed
    return asyncio.ensure_future(runtime.publish(request, entry=envelope))


def _entry_bytes(event: Any, content_type: str) -> bytes:
    """daprd's `ConvertEventToBytes` (reference 1.8)."""
    if is_content_type(content_type, "application/octet-stream"):
        if not isinstance(event, str):
            raise ValueError("error: mismatch between contentType and event")
        return base64.b64decode(event)
    if is_text(media_type(content_type, strip=False)):
        if not isinstance(event, str):
            raise ValueError("error: mismatch between contentType and event")
        return event.encode()
    if is_content_type(content_type, "application/json") or is_content_type(
        content_type, "application/cloudevents+json"
    ):
        return go_dumps(event)
    raise ValueError("error: mismatch between contentType and event")


async def bulk_requests(
    app_id: str,
    pubsub: str,
    topic: str,
    body: bytes,
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str,
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[tuple[str, PublishRequest]]:
    """The entries of a bulk publish, checked as daprd checks them, a turn's worth at a
    time; raises `DaprAPIError`."""
    problem = metadata_problem(metadata)
    if problem is not None:
        raise PubSubErrors.bad_metadata(pubsub, metadata, problem)
    try:
        try:  # the array and an entry are two levels: an event may nest as deep as a body
            entries = loads(body, MAX_DEPTH + 2)
        except TooDeep:
            raise ValueError(f"an event nests deeper than {MAX_DEPTH} levels") from None
        if not isinstance(entries, list):
            raise ValueError("the body is not a JSON array")
        if len(entries) > max_entries:
            raise ValueError(f"{len(entries)} entries, more than the limit of {max_entries} a request")
    except ValueError as exc:
        raise bulk_error(
            400,
            "DAPR_PUBSUB_UNMARSHAL_EVENTS",
            f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: {exc}",
            {"appID": app_id},
            pubsub,
        ) from None
    seen: dict[str, int] = {}
    requests: list[tuple[str, PublishRequest]] = []
    for start in range(0, len(entries), _TURN):
        if start:
            await asyncio.sleep(0)  # other requests are served between two turns
        for entry in entries[start : start + _TURN]:
            requests.append(_request(app_id, pubsub, topic, entry, seen, metadata, traceparent, tracestate))
    return requests


def _request(
    app_id: str,
    pubsub: str,
    topic: str,
    entry: Any,
    seen: dict[str, int],
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str,
) -> tuple[str, PublishRequest]:
    entry_id = entry.get("entryId", entry.get("entryID")) if isinstance(entry, dict) else None
    check_entry_id(app_id, pubsub, topic, entry_id, seen)
    assert isinstance(entry, dict)
    assert isinstance(entry_id, str)
    content_type = entry.get("contentType") or ""
    try:
        data = _entry_bytes(entry.get("event"), str(content_type))
    except (ValueError, TypeError) as exc:
        raise bulk_error(
            400,
            "DAPR_PUBSUB_MARSHAL_ENVELOPE",
            f"error when marshalling cloud event envelope for topic {topic} pubsub {pubsub}: "
            f"entry {entry_id}: {exc}",
            {"appID": app_id, "entryId": entry_id, "error": str(exc)},
            pubsub,
        ) from None
    entry_metadata = entry.get("metadata")
    own = {str(k): str(v) for k, v in entry_metadata.items()} if isinstance(entry_metadata, dict) else None
    return entry_id, entry_request(
        pubsub, topic, entry_id, data, str(content_type), own, metadata, traceparent, tracestate
    )


def check_entry_id(app_id: str, pubsub: str, topic: str, entry_id: Any, seen: dict[str, int]) -> None:
    """daprd's refusal of a bulk request with an entry without an id or with another's,
    naming the entry (daprd's message does not); adds the id to `seen`, with its index."""
    index = len(seen)
    if isinstance(entry_id, str) and entry_id and entry_id not in seen:
        seen[entry_id] = index
        return
    problem = "entryId is duplicated or not present for entry"
    if isinstance(entry_id, str) and entry_id:
        first = seen[entry_id]
        which = f"the entry at index {index} has entryId {entry_id!r}, as the entry at index {first} does"
    else:
        which = f"the entry at index {index} has no entryId"
    raise bulk_error(
        400,
        "DAPR_PUBSUB_MARSHAL_EVENTS",
        f"error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: {problem}: {which}",
        {"appID": app_id, "error": problem},
        pubsub,
    )


def entry_request(
    pubsub: str,
    topic: str,
    entry_id: str,
    data: bytes,
    content_type: str,
    entry_metadata: Mapping[str, str] | None,
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str,
) -> PublishRequest:
    """The publish of one entry: `entry_metadata` None when the entry has none of its own."""
    if entry_metadata is not None:
        # Request-level metadata reaches only entries that have their own (reference 1.8).
        merged = {**metadata, **entry_metadata}
        unusable = metadata_problem(merged)
        if unusable is not None:
            raise PubSubErrors.bad_metadata(pubsub, metadata, f"entry {entry_id}: {unusable}")
    else:
        merged = {"rawPayload": metadata["rawPayload"]} if "rawPayload" in metadata else {}
    return PublishRequest(pubsub, topic, data, content_type, merged, traceparent, tracestate)


def bulk_error(
    status: int, reason: str, message: str, metadata: Mapping[str, str], pubsub: str
) -> DaprAPIError:
    return kit_error(status, "ERR_PUBSUB_EVENTS_SER", reason, message, metadata, pubsub)
