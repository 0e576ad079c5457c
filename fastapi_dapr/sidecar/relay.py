"""The relay: one `/v1.0/invoke` request of the HTTP API streamed to its network target, and the
answer streamed back (reference 6.2).

The caller is watched from the end of its body to the end of the answer: when it
goes away, the exchange is cancelled and its connection closed. Sending, pools
and redirects are the `Upstreams`' business (`proxy.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.types import Receive, Scope, Send

from .._call import VERBS
from .._exceptions import DaprAPIError
from .._headers import declared_length, invocation_headers
from .._retry import Clock, RetryPolicy
from .._trace import from_headers
from .caller import CallerWatch, RequestBody, too_large_message
from .errors import error_response
from .http1 import MalformedAnswer, UpstreamError
from .proxy import Target, Upstream, Upstreams

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


def is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    """daprd's test: an `Accept` of exactly `text/event-stream`."""
    return any(
        name.lower() == "accept" and value.strip().lower() == "text/event-stream" for name, value in headers
    )


def caller_error(error: DaprAPIError, body: RequestBody | None, max_body_size: int) -> DaprAPIError | None:
    """What to answer for a failed invocation: None when the caller went away meanwhile, and
    413 when what failed was its streamed body going over the limit."""
    if body is not None and body.gone:
        return None
    if body is not None and body.too_large:
        limit = too_large_message(max_body_size)
        return DaprAPIError(413, "ERR_DIRECT_INVOKE", limit)
    return error


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def proxy_asgi(
    upstreams: Upstreams,
    target: Target,
    method: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    via_header: bool,
    max_body_size: int,
    connect_retry: RetryPolicy | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve one `/v1.0/invoke` request by streaming it to `target` and its answer back.

    The caller is watched from the end of its body to the end of the answer: when it
    goes away, the exchange is cancelled and its connection closed, whatever the
    answer's kind (daprd cancels the upstream request with its caller's context)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = invocation_headers(
        raw,
        target=target,
        identity=(upstreams.app_id, upstreams.namespace),
        trace=from_headers(raw),
        drop_app_id=via_header,
    )
    verb = scope["method"].upper()
    if verb not in VERBS:
        verb = "POST"  # as daprd sends a verb it does not know
    with CallerWatch(receive) as watch:
        body = RequestBody(receive, max_body_size, on_end=watch.start) if _has_body(raw) else None
        if body is None:
            watch.start()
        try:
            upstream = await upstreams.open(
                target,
                method,
                verb,
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                body.__aiter__() if body is not None else None,
                length=declared_length(raw) if body is not None else None,
                connect_retry=connect_retry,
                clock=clock,
            )
        except DaprAPIError as exc:
            error = caller_error(exc, body, max_body_size)
            if error is not None:
                await error_response(error)(scope, receive, send)
            return
        watch.on_gone(upstream.abort)
        if not upstream.uploading:
            watch.start()  # an early answer stopped the upload: what is left of the body is nobody's
        await stream_answer(upstream, send, target.name, event_stream=is_sse(headers), watch=watch)


async def stream_answer(
    upstream: Upstream, send: Send, name: str, *, event_stream: bool, watch: CallerWatch
) -> None:
    """Pass the upstream's answer on to the caller as it arrives; its connection is given
    back once the body is whole, closed otherwise (and at once when the caller leaves)."""
    status = upstream.status
    if event_stream and 200 <= status < 300:
        status = 200  # as daprd: an event stream is answered 200
    try:
        await send({"type": "http.response.start", "status": status, "headers": upstream.headers})
        while not watch.gone:
            chunk, last = await upstream.next_chunk()
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                break
    except MalformedAnswer:
        pass  # logged where it was found; the caller sees the answer cut short
    except UpstreamError as exc:
        # Too late for an error answer: the caller sees the answer cut short.
        logger.warning("invocation of %s: the answer was cut short: %s", name, exc)
    except OSError:
        pass  # the caller went away
    finally:
        upstream.abort()  # nothing if the answer was read whole: its connection is back in the pool
