"""The Dapr API's publish routes: `POST /v1.0/publish/{pubsub}/{topic}` and the bulk publish.

Both check the pubsub and topic before they read the body, as daprd does; a
path without a topic is no publish route in daprd, so it answers as the
invocation fallback does.
"""

from __future__ import annotations

import functools
from urllib.parse import parse_qsl

from starlette.responses import Response

from .._json import go_dumps
from .._trace import context
from .api_call import NO_APP_ID, Answer, ApiCall, query_unescape
from .bulk_publish import publish_bulk
from .caller import read_body
from .envelope import PublishRequest
from .errors import direct_invoke_error, error_response

__all__: list[str] = []


@functools.lru_cache(maxsize=4096)
def _split(rest: str) -> tuple[str, str] | None:
    pubsub, slash, topic = rest.partition("/")
    if not slash or not pubsub:
        return None
    return query_unescape(pubsub), query_unescape(topic)


def _metadata(query_string: bytes) -> dict[str, str]:
    """`?metadata.key=value` parameters, first value of each (reference 1.1)."""
    result: dict[str, str] = {}
    if not query_string:
        return result
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key.startswith("metadata.") and key[len("metadata.") :] not in result:
            result[key[len("metadata.") :]] = value
    return result


async def _read_publish(call: ApiCall, rest: str) -> tuple[str, str, dict[str, str], bytes] | None:
    """Pubsub, topic, metadata and body of a publish; None when the path has no topic."""
    names = _split(rest)
    metadata = _metadata(call.scope.get("query_string", b""))
    if names is None and rest and "/" not in rest:
        # `/v1.0/publish/{pubsub}`: no daprd route matches it (its cleaned path loses the
        # trailing slash of `{pubsub}/`), and its invocation fallback answers "no app id".
        # It is a publish without a topic: say so (the pubsub's own errors first, as daprd's order).
        call.running.publisher.check_pubsub(query_unescape(rest), "", metadata)
    if names is None:
        return None  # no pubsub either: daprd's invocation fallback answers
    pubsub, topic = names
    call.running.publisher.check_pubsub(pubsub, topic, metadata)  # daprd validates before reading the body
    return pubsub, topic, metadata, await read_body(call.receive, call.headers, call.api.max_body_size)


async def publish(call: ApiCall, rest: str) -> Answer:
    """`POST|PUT /v1.0/publish/{pubsub}/{topic}`: 204 once the broker has the message."""
    read = await _read_publish(call, rest)
    if read is None:
        return error_response(direct_invoke_error(404, NO_APP_ID))
    pubsub, topic, metadata, body = read
    headers = call.headers
    trace = context(headers.get("traceparent"), headers.get("tracestate"))
    await call.running.publisher.publish(
        PublishRequest(
            pubsub=pubsub,
            topic=topic,
            data=body,
            content_type=headers.get("content-type", ""),
            metadata=metadata,
            traceparent=trace[0] if trace is not None else "",
            tracestate=trace[1] if trace is not None else "",
        )
    )
    return None


async def bulk_publish(call: ApiCall, rest: str) -> Answer:
    """`POST|PUT /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` (and `/v1.0/`): 204, or the failed entries."""
    read = await _read_publish(call, rest)
    if read is None:
        return error_response(direct_invoke_error(404, NO_APP_ID))
    pubsub, topic, metadata, body = read
    trace = context(call.headers.get("traceparent"), call.headers.get("tracestate"))
    failed = await publish_bulk(
        call.running,
        pubsub,
        topic,
        body,
        metadata,
        trace[0] if trace is not None else "",
        trace[1] if trace is not None else "",
        max_entries=call.api.max_bulk_entries,
    )
    if not failed:
        return None
    # Not the kit error format: daprd's own shape for bulk results (reference 1.8), a Go
    # struct, so its fields in this order; the same JSON in `metadata.responseData`.
    data = b'{"failedEntries":' + go_dumps(failed) + b',"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE"}'
    return Response(
        data,
        status_code=500,
        media_type="application/json",
        headers={"metadata.responseData": data.decode()},
    )
