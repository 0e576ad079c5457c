"""Calling the app's ASGI interface in process: a delivery without a socket."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


class AppUnreachable(Exception):
    """The app failed before it sent a response (daprd: a transport error)."""


@dataclasses.dataclass
class AppResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def call_app(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    state: Mapping[str, Any] | None = None,
) -> AppResponse:
    """One HTTP request through the whole app (middleware, routing, exception handlers)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)  # as servers do: a shallow copy of the lifespan state
    request_sent = False
    finished = asyncio.Event()
    status = 0
    response_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, response_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        if not finished.is_set():
            raise AppUnreachable(f"{type(exc).__name__}: {exc}") from exc
        # The answer went out; the exception is only re-raised by Starlette's
        # error middleware so that servers can log it, which we do.
        logger.debug("the app raised after answering %s %s", method, path, exc_info=True)
    finally:
        finished.set()
    if status == 0:
        raise AppUnreachable("the app returned without sending a response")
    return AppResponse(status, response_headers, b"".join(chunks))
