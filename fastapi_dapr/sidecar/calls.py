"""`Dapr.invoke`: service invocation from the app's own code (reference 6).

Embedded, it resolves and checks targets exactly as `/v1.0/invoke` does and
uses the same connection pools; this app's own id is served in process. In
remote mode the call goes to daprd's `/v1.0/invoke`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlencode

from starlette.types import Message, Scope

from .._exceptions import DaprAPIError
from .._headers import declared_length, field_problem, forwardable, invocation_headers
from .._invocation import InvocationSettings, InvokeResponse
from .._trace import CURRENT, context, header_pairs
from .asgi import http_scope
from .invocation import VERBS, InvalidMethod, invoke_self, normalize_method
from .timeouts import within

if TYPE_CHECKING:
    from .._dapr import Dapr
    from .proxy import Body
    from .runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


def _body(json: Any, content: bytes | str | AsyncIterable[bytes] | None) -> tuple[Body, str | None]:
    if json is not None and content is not None:
        raise TypeError("give json or content, not both")
    if json is not None:
        from pydantic import BaseModel
        from pydantic_core import to_json, to_jsonable_python

        value = json.model_dump(mode="json") if isinstance(json, BaseModel) else to_jsonable_python(json)
        return to_json(value), "application/json"
    if isinstance(content, str):
        return content.encode(), "text/plain; charset=utf-8"
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content), None
    if content is None:
        return None, None
    return _iterate(content), None


async def _iterate(content: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in content:
        yield chunk


async def invoke(
    dapr: Dapr,
    target: str,
    method: str,
    *,
    http_method: str,
    json: Any,
    content: bytes | str | AsyncIterable[bytes] | None,
    headers: Mapping[str, str] | None,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
    timeout: float | None,
) -> InvokeResponse:
    verb = http_method.upper()
    if verb not in VERBS:
        raise ValueError(f"http_method must be one of {sorted(VERBS)}, not {http_method!r}")
    try:
        method = normalize_method(method.lstrip("/"))
    except InvalidMethod as exc:
        raise DaprAPIError(
            500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: invalid method: {exc}"
        ) from None
    body, content_type = _body(json, content)
    given = list((headers or {}).items())
    for name, value in given:
        problem = field_problem(name, value)
        if problem is not None:
            raise ValueError(f"headers: {problem}")
    # Framing comes from the body: a length for bytes, a streamed body's declared length
    # (counted as it is sent), chunked otherwise.
    streamed = body is not None and not isinstance(body, bytes)
    declared = declared_length(given) if streamed else None
    # As daprd: a traceparent it reads is passed on (a given one, else the trace of what
    # the app is handling), one it can't read is not.
    lowered = {name.lower(): value for name, value in given}
    trace = (
        context(lowered["traceparent"], lowered.get("tracestate"))
        if "traceparent" in lowered
        else CURRENT.get()
    )
    given = [(name, value) for name, value in given if name.lower() not in ("traceparent", "tracestate")]
    if content_type is not None and "content-type" not in lowered:
        given.append(("content-type", content_type))
    query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params or ()))
    if dapr.mode == "remote":
        header_list = [*forwardable(given), *header_pairs(trace)]
        call = _Call(method, verb, query, header_list, body, declared, timeout)
        return await _invoke_remote(dapr, target, call)
    runtime = dapr._running()
    from .invocation_policy import built_in_retry, invocation_policy, run_invocation

    if runtime.is_own_id(target):
        header_list = [*forwardable(given), *header_pairs(trace)]
        length = len(body) if isinstance(body, bytes) else declared
        if length is not None:
            header_list.append(("content-length", str(length)))
        call = _Call(method, verb, query, header_list, body, declared, timeout)
        target = runtime.app_id  # `{id}.{namespace}` too: the policies name the app id
        policy = invocation_policy(runtime, None, target, method)

        def open_self() -> Awaitable[InvokeResponse]:
            return _invoke_self(dapr, call)

        opener = open_self
    else:
        found = await runtime.find_target(target)
        policy = invocation_policy(runtime, found, target, method)
        connect_retry = built_in_retry(runtime, found)
        header_list = invocation_headers(
            given, target=found, identity=(runtime.app_id, runtime.namespace), trace=trace
        )

        async def open_network() -> InvokeResponse:
            upstream = await runtime.upstreams().open(
                found,
                method,
                verb,
                query,
                header_list,
                body,
                length=declared,
                timeout=timeout,
                connect_retry=connect_retry,
                clock=runtime.clock,
            )
            return InvokeResponse(
                upstream.status, upstream.headers, upstream.chunks(), _closer(upstream.release)
            )

        opener = open_network
    if policy.is_empty:
        return await opener()
    replayable = body is None or isinstance(body, bytes)
    return await run_invocation(runtime, policy, target, opener, replayable=replayable)


class _Call(NamedTuple):
    """One invocation, read and encoded."""

    method: str
    verb: str
    query: str
    headers: list[tuple[str, str]]
    body: Body
    declared: int | None  # the length a streamed body declared
    timeout: float | None


async def _invoke_remote(dapr: Dapr, target: str, call: _Call) -> InvokeResponse:
    from .proxy import PATH_SAFE, Target, Upstreams

    if dapr._remote_invoker is None:
        dapr._remote_invoker = Upstreams(InvocationSettings(), {}, app_id=dapr.app_id, namespace="default")
    headers = call.headers
    if dapr._api_token:
        # To daprd, this app's own sidecar: its token, and only it (a caller's, passed on in
        # `headers=dict(request.headers)`, would come first and be the one daprd reads).
        headers = [(k, v) for k, v in headers if k != "dapr-api-token"]
        headers.append(("dapr-api-token", dapr._api_token))
    daprd = Target("app", "daprd", dapr.dapr_http_endpoint.rstrip("/"))
    path = f"v1.0/invoke/{quote(target, safe='')}/method/{quote(call.method, safe=PATH_SAFE)}"
    upstream = await dapr._remote_invoker.open(
        daprd,
        path,
        call.verb,
        call.query,
        headers,
        call.body,
        length=call.declared,
        timeout=call.timeout,
        escaped=True,
    )
    return InvokeResponse(upstream.status, upstream.headers, upstream.chunks(), _closer(upstream.release))


def _closer(release: Any) -> Any:
    async def close() -> None:
        release()

    return close


async def _invoke_self(dapr: Dapr, call: _Call) -> InvokeResponse:
    """This app's own route, in process, streaming both ways as the HTTP API does."""
    runtime = dapr._running()
    scope = http_scope(
        call.verb,
        "/" + call.method,
        [(name.encode("latin-1"), value.encode("latin-1")) for name, value in call.headers],
        query_string=call.query.encode(),
        state=runtime.lifespan_state,
    )
    return await open_in_process(
        runtime,
        scope,
        call.body,
        call.timeout,
        method=call.method,
        via_header=False,
        api_token_configured=False,
        max_body_size=dapr.sidecar.max_body_size if dapr.sidecar is not None else 4 << 20,
    )


async def open_in_process(
    runtime: Runtime,
    scope: Scope,
    body: Body,
    timeout: float | None,
    *,
    method: str,
    via_header: bool,
    api_token_configured: bool,
    max_body_size: int,
) -> InvokeResponse:
    """Call this app's own route for `method` (a `/v1.0/invoke` of this app's id); the
    answer once its headers came, its body streaming, as a network target's answer."""
    messages: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=16)
    finished = asyncio.Event()

    async def receive() -> Message:
        if body is None or isinstance(body, bytes):
            if not finished.is_set():
                finished.set()
                return {"type": "http.request", "body": body or b"", "more_body": False}
        else:
            async for chunk in body:
                return {"type": "http.request", "body": chunk, "more_body": True}
            if not finished.is_set():
                finished.set()
                return {"type": "http.request", "body": b"", "more_body": False}
        await response_done.wait()
        return {"type": "http.disconnect"}

    response_done = asyncio.Event()

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await invoke_self(
                runtime.app,
                scope,
                receive,
                send,
                method=method,
                via_header=via_header,
                api_token_configured=api_token_configured,
                app_api_token=runtime.app_api_token,
                app_id=runtime.app_id,
                namespace=runtime.namespace,
                max_body_size=max_body_size,
            )
        finally:
            await messages.put(None)

    metrics = runtime.metrics
    if metrics is not None:
        metrics.invocation_sent(runtime.app_id, body is not None and not isinstance(body, bytes))
    started = time.perf_counter()
    task = asyncio.create_task(run())
    try:
        start = await within(messages.get(), timeout)
    except BaseException as exc:
        task.cancel()  # cancelled (a policy's timeout) or timed out: the app sees the caller go
        runtime.resiliency.abandoned.adopt(task)  # awaited at shutdown if it goes on
        if not isinstance(exc, asyncio.TimeoutError):
            raise
        raise DaprAPIError(
            500,
            "ERR_DIRECT_INVOKE",
            f"failed to invoke, id: {runtime.app_id}, err: no answer within {timeout}s",
        ) from None
    if start is None or start["type"] != "http.response.start":
        problem = None
        with contextlib.suppress(asyncio.CancelledError):
            problem = task.exception() if task.done() else None
        raise DaprAPIError(
            500,
            "ERR_DIRECT_INVOKE",
            f"failed to invoke, id: {runtime.app_id}, err: the app failed before answering: {problem!r}",
        )

    if metrics is not None:
        streaming = body is not None and not isinstance(body, bytes)
        elapsed = (time.perf_counter() - started) * 1000
        metrics.invocation_answered(runtime.app_id, start["status"], streaming, elapsed)
    complete = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal complete
        while True:
            message = await messages.get()
            if message is None:
                return
            if message["type"] == "http.response.body":
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    complete = True
                    return

    async def close() -> None:
        response_done.set()
        if not complete:
            task.cancel()  # the caller stopped reading: the app sees the request go away
        # A complete answer lets the app finish (its background tasks run after it).
        try:
            await task
        except asyncio.CancelledError:
            if complete:
                raise
        except Exception:
            logger.debug("the app raised after answering an invocation of %s", method, exc_info=True)

    return InvokeResponse(start["status"], start.get("headers", []), chunks(), close)
