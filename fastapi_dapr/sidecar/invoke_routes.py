"""The Dapr API's service invocation: the route of every path no other route answers.

As in daprd (reference 6.1), `/v1.0/invoke/{id}/method/{method}` and any path
with a `dapr-app-id` header invoke a method; the handler checks the call and
finds its target, and answers an `Invocation`, which streams the call to this
app (in process) or to a network target, under the target's Resiliency policy
when it has one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from .._call import InvalidMethod, normalize_method
from .._exceptions import DaprAPIError
from .._invocation import InvokeResponse
from .._trace import from_headers
from .api_call import NO_APP_ID, Answer, ApiCall, ApiSettings, route_path
from .caller import (
    BodyTooLarge,
    CallerWatch,
    ClientGone,
    RequestBody,
    declared_size,
    read_body,
    too_large_message,
)
from .errors import direct_invoke_error, error_response
from .invocation import find_target, invoke_self, is_streaming, measured
from .invocation_policy import built_in_retry, invocation_policy, run_invocation, send_response
from .policy import Policy

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from .http1 import Response as Upstream
    from .proxy import Target
    from .runtime import Runtime

__all__: list[str] = []


async def invocation(call: ApiCall, rest: str) -> Answer:
    """The invocation `call` asks for, or daprd's error when it cannot be made."""
    headers = call.headers
    found = find_target(route_path(call.scope), headers)
    if found is None:
        return error_response(direct_invoke_error(404, NO_APP_ID))
    target, method, via_header = found
    try:
        method = normalize_method(method)
    except InvalidMethod as exc:
        return error_response(
            direct_invoke_error(500, f"failed to invoke, id: {target}, err: invalid method: {exc}")
        )
    if call.method == "CONNECT":
        return error_response(
            direct_invoke_error(500, f"failed to invoke, id: {target}, err: invalid HTTP verb")
        )
    max_body_size = call.api.max_body_size
    declared = declared_size(headers)
    if declared is not None and declared > max_body_size:
        return error_response(
            DaprAPIError(
                413,
                "ERR_DIRECT_INVOKE",
                too_large_message(max_body_size),
            )
        )
    # Dapr's precedence (reference 6.2): an HTTPEndpoint of that name, a URL, an app id.
    runtime = call.running
    if runtime.is_own_id(target):
        return Invocation(call.api, runtime, None, method, via_header)
    try:
        found_target = await runtime.find_target(target)
    except DaprAPIError as exc:
        return error_response(exc)
    return Invocation(call.api, runtime, found_target, method, via_header)


def _release(upstream: Upstream) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        upstream.release()

    return release


class Invocation:
    """One invocation of `method` on `target` (None: this app), as an ASGI application."""

    __slots__ = ("api", "method", "runtime", "target", "via_header")

    def __init__(
        self, api: ApiSettings, runtime: Runtime, target: Target | None, method: str, via_header: bool
    ) -> None:
        self.api = api
        self.runtime = runtime
        self.target = target
        self.method = method
        self.via_header = via_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        target = self.target
        name = target.name if target is not None else runtime.app_id
        policy = invocation_policy(runtime, target, name, self.method)
        if not policy.is_empty:
            await self._with_policy(policy, name, scope, receive, send)
            return
        if target is None:
            if runtime.metrics is not None:
                send = measured(send, runtime.metrics, runtime.app_id, is_streaming(scope["headers"]))
            await invoke_self(
                runtime.app,
                scope,
                receive,
                send,
                method=self.method,
                via_header=self.via_header,
                api_token_configured=self.api.api_token is not None,
                app_api_token=runtime.app_api_token,
                app_id=runtime.app_id,
                namespace=runtime.namespace,
                max_body_size=self.api.max_body_size,
            )
            return
        from .relay import proxy_asgi

        await proxy_asgi(
            runtime.upstreams(),
            target,
            self.method,
            scope,
            receive,
            send,
            via_header=self.via_header,
            max_body_size=self.api.max_body_size,
            connect_retry=built_in_retry(runtime, target),
            clock=runtime.clock,
        )

    async def _with_policy(
        self, policy: Policy, name: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """An invocation under a Resiliency policy: its body read whole when it has a length,
        so that it can be sent again (reference 8). The caller is watched from the end of
        its body: when it leaves, the attempts stop and the target sees its request go."""
        from .._headers import invocation_headers
        from .calls import open_in_process
        from .relay import caller_error

        runtime = self.runtime
        target = self.target
        max_body_size = self.api.max_body_size
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in raw}
        body: bytes | AsyncIterator[bytes] | None = None
        streamed: RequestBody | None = None
        with CallerWatch(receive) as watch:
            if declared_size(headers) is not None:
                try:
                    body = await read_body(receive, headers, max_body_size)
                except ClientGone:
                    return
                except BodyTooLarge:
                    limit = too_large_message(max_body_size)
                    refusal = error_response(DaprAPIError(413, "ERR_DIRECT_INVOKE", limit))
                    await refusal(scope, receive, send)
                    return
                watch.start()
            elif "transfer-encoding" in headers:
                streamed = RequestBody(receive, max_body_size, on_end=watch.start)
                body = streamed.__aiter__()
            else:
                watch.start()
            verb = scope["method"].upper()
            opener: Callable[[], Awaitable[InvokeResponse]]
            outbound: list[tuple[str, str]] = []
            if target is None:

                def opener() -> Awaitable[InvokeResponse]:
                    return open_in_process(
                        runtime,
                        scope,
                        body,
                        None,
                        method=self.method,
                        via_header=self.via_header,
                        api_token_configured=self.api.api_token is not None,
                        max_body_size=max_body_size,
                    )

            else:
                upstreams = runtime.upstreams()
                outbound = invocation_headers(
                    raw,
                    target=target,
                    identity=(runtime.app_id, runtime.namespace),
                    trace=from_headers(raw),
                    drop_app_id=self.via_header,
                )
                query = scope.get("query_string", b"").decode("latin-1")
                network = target
                connect_retry = built_in_retry(runtime, network)

                async def opener() -> InvokeResponse:
                    upstream = await upstreams.open(
                        network,
                        self.method,
                        verb,
                        query,
                        outbound,
                        body,
                        connect_retry=connect_retry,
                        clock=runtime.clock,
                    )
                    return InvokeResponse(
                        upstream.status, upstream.headers, upstream.chunks(), _release(upstream)
                    )

            try:
                answer = await run_invocation(runtime, policy, name, opener, replayable=streamed is None)
            except DaprAPIError as exc:
                error = caller_error(exc, streamed, max_body_size)
                if error is not None:
                    await error_response(error)(scope, receive, send)
                return
            # The cancellation may be lost in a race (an answer ready in the same turn):
            # closing the answer ends its streaming whatever happens.
            watch.on_gone(lambda: runtime.resiliency.abandoned.close_answer(answer))
            # daprd's test, on the headers the target got (an HTTPEndpoint may add `Accept`).
            sent = outbound if target is not None else list(headers.items())
            event_stream = any(
                k.lower() == "accept" and v.strip().lower() == "text/event-stream" for k, v in sent
            )
            with contextlib.suppress(OSError):  # the caller went away
                await send_response(answer, send, event_stream=event_stream)
