"""Calling the app's ASGI interface in process: a delivery without a socket."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:  # FastAPI >= 0.118 runs its routers inside this middleware
    from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
except ImportError:  # pragma: no cover - older FastAPI
    AsyncExitStackMiddleware = None  # type: ignore[assignment,misc]

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


class AppUnreachable(Exception):
    """The app failed before it sent a response (daprd: a transport error)."""


@dataclasses.dataclass
class AppResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@functools.lru_cache(maxsize=1024)
def _raw_path(path: str) -> bytes:
    return quote(path).encode()


class _Exchange:
    """The server side of one in-process request: what the app receives and sends."""

    __slots__ = ("body", "chunks", "disconnected", "finished", "headers", "request_sent", "status")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.request_sent = False
        self.finished = False
        self.disconnected: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def receive(self) -> Message:
        if not self.request_sent:
            self.request_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not self.finished:  # rare: an app that waits for the client to go away
            if self.disconnected is None:
                self.disconnected = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.disconnected)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif kind == "http.response.body":
            self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.finish()

    def finish(self) -> None:
        self.finished = True
        if self.disconnected is not None and not self.disconnected.done():
            self.disconnected.set_result(None)


class _MatchedRoute:
    """The ASGI app of one route the router already matched for a path."""

    __slots__ = ("child_scope", "route")

    def __init__(self, route: BaseRoute, child_scope: dict[str, Any]) -> None:
        self.route = route
        self.child_scope = child_scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.update(self.child_scope)
        await self.route.handle(scope, receive, send)


def _direct_target(app: Any, method: str, path: str) -> ASGIApp | None:
    """What the app would run for `method path` below its middleware stack, when
    skipping that stack changes nothing the app can observe; otherwise None.

    That is when the app has no middleware of its own and no handler for
    500/Exception (those belong to the error middleware, which is skipped: an
    exception is then read as a 500, as that middleware answers). The route is
    matched once by the app's own router, and run inside the same exception and
    exit-stack middleware FastAPI puts around its router.
    """
    router = getattr(app, "router", None)
    if getattr(app, "user_middleware", None) != [] or router is None:
        return None
    handlers = getattr(app, "exception_handlers", {})
    if any(key in (500, Exception) for key in handlers):
        return None
    probe = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    for route in router.routes:
        match, child_scope = route.matches(probe)
        if match == Match.FULL:
            target: ASGIApp = _MatchedRoute(route, child_scope)
            if AsyncExitStackMiddleware is not None:
                target = AsyncExitStackMiddleware(target)
            return ExceptionMiddleware(target, handlers=handlers, debug=getattr(app, "debug", False))
        if match != Match.NONE:
            return None  # a partial match: let the app answer it (405...)
    return None


class AppCaller:
    """Calls one app in process, as a server would, but without a socket.

    For a FastAPI or Starlette app without middleware of its own, the request
    goes straight to the route the router matches for its path (cached per
    path): the same handler, dependencies and exception handlers, without
    walking the middleware stack and the route table for every message.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._targets: dict[tuple[str, str, int], ASGIApp] = {}

    def _target(self, method: str, path: str) -> ASGIApp:
        routes = getattr(getattr(self.app, "router", None), "routes", ())
        key = (method, path, len(routes))
        target = self._targets.get(key)
        if target is None:
            target = _direct_target(self.app, method, path) or self.app
            self._targets[key] = target
        return target

    async def __call__(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        state: Mapping[str, Any] | None = None,
    ) -> AppResponse:
        target = self._target(method, path)
        extra = None if target is self.app else {"app": self.app, "router": self.app.router}  # type: ignore[attr-defined]
        return await call_app(target, method, path, headers, body, state=state, extra=extra)


def http_scope(
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    query_string: bytes = b"",
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The scope of an in-process request, as a server on loopback would make it."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": _raw_path(path),
        "query_string": query_string,
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)  # as servers do: a shallow copy of the lifespan state
    return scope


async def call_app(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AppResponse:
    """One HTTP request through `app` (middleware, routing, exception handlers)."""
    scope = http_scope(method, path, headers, state=state)
    if extra:
        scope.update(extra)
    exchange = _Exchange(body)
    try:
        await app(scope, exchange.receive, exchange.send)
    except Exception as exc:
        if not exchange.finished:
            raise AppUnreachable(f"{type(exc).__name__}: {exc}") from exc
        # The answer went out; the exception is only re-raised by Starlette's
        # error middleware so that servers can log it, which we do.
        logger.debug("the app raised after answering %s %s", method, path, exc_info=True)
    finally:
        exchange.finish()
    if exchange.status == 0:
        raise AppUnreachable("the app returned without sending a response")
    return AppResponse(exchange.status, exchange.headers, b"".join(exchange.chunks))
