"""Calls of this app's own routes in process: `/v1.0/invoke` of the app's own id, and
`Dapr.invoke` of it (reference 6), streaming both ways through its ASGI interface,
the answer handed over as a network target's would be."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.types import Message, Scope

from .._exceptions import DaprAPIError
from .._invocation import InvokeResponse
from .invocation import invoke_self
from .timeouts import within

if TYPE_CHECKING:
    from .proxy import Body
    from .runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


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
