"""Calling the app's ASGI interface in process: a delivery without a socket."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._handler import DirectHandler, direct_handler
from .._routing import route_entries as _route_entries
from .._status import Status

try:  # FastAPI >= 0.118 runs its routers inside this middleware
    from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
except ImportError:  # pragma: no cover - older FastAPI
    AsyncExitStackMiddleware = None  # type: ignore[assignment,misc]

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


class AppUnreachable(Exception):
    """The app failed before it sent a response (daprd: a transport error)."""


class AppResponse(NamedTuple):
    """What the app answered (immutable: the answers of statuses are shared)."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]
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


def _plain(app: Any) -> bool:
    """Whether skipping the app's middleware stack changes nothing the app can observe:
    no middleware of its own and no handler for 500/Exception (those belong to the
    error middleware, which is skipped: an exception is then read as a 500, as that
    middleware answers)."""
    if getattr(app, "user_middleware", None) != [] or getattr(app, "router", None) is None:
        return False
    return not any(key in (500, Exception) for key in getattr(app, "exception_handlers", {}))


def _probe(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def _matched_route(app: Any, method: str, path: str) -> tuple[BaseRoute, dict[str, Any]] | None:
    """The route the app's router runs for `method path`, when the app is plain
    (see `_plain`); otherwise None."""
    if not _plain(app):
        return None
    probe = _probe(method, path)
    for route in app.router.routes:
        match, child_scope = route.matches(probe)
        if match == Match.FULL:
            return route, child_scope
        if match != Match.NONE:
            return None  # a partial match: let the app answer it (405...)
    return None


def _direct_target(app: Any, method: str, path: str) -> ASGIApp | None:
    """The matched route (see `_matched_route`), run inside the same exception and
    exit-stack middleware FastAPI puts around its router."""
    matched = _matched_route(app, method, path)
    if matched is None:
        return None
    target: ASGIApp = _MatchedRoute(*matched)
    if AsyncExitStackMiddleware is not None:
        target = AsyncExitStackMiddleware(target)
    handlers = getattr(app, "exception_handlers", {})
    return ExceptionMiddleware(target, handlers=handlers, debug=getattr(app, "debug", False))


def _direct_handler(app: Any, path: str) -> DirectHandler | None:
    """The subscription handler behind `POST path` without its HTTP endpoint, when
    the endpoint would add nothing: the app is plain (see `_plain`), the handler
    takes no FastAPI parameters, and its route is a plain `APIRoute` (no custom
    route class) with no dependencies (its own, its routers' or the app's).

    Routes are looked at in the order the router tries them, included routers'
    routes in place (FastAPI >= 0.13x keeps those as lazy wrappers); the first
    that matches the path fully is the one.
    """
    if not _plain(app):
        return None
    probe = _probe("POST", path)
    for entry in _route_entries(app.router.routes):
        matches = getattr(entry, "matches", None)
        if matches is None:
            return None  # a route that cannot be probed: leave the choice to the router
        match, child_scope = matches(probe)
        if match == Match.NONE:
            continue
        if match != Match.FULL or type(getattr(entry, "original_route", entry)) is not APIRoute:
            return None
        handler = direct_handler(child_scope.get("endpoint"))
        dependant = getattr(entry, "dependant", None)
        if handler is None or dependant is None or dependant.dependencies:
            return None
        return handler
    return None


# What a handler's status is answered with (Status.response); never changed once made.
_STATUS_ANSWERS = {status: AppResponse(200, (), status.body) for status in Status}


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
        self._handlers: dict[tuple[str, int], DirectHandler | None] = {}

    def _target(self, method: str, path: str) -> ASGIApp:
        routes = getattr(getattr(self.app, "router", None), "routes", ())
        key = (method, path, len(routes))
        target = self._targets.get(key)
        if target is None:
            target = _direct_target(self.app, method, path) or self.app
            self._targets[key] = target
        return target

    def handler(self, path: str) -> DirectHandler | None:
        """The subscription handler `POST path` reaches, if it can be called without
        HTTP (see `_direct_handler`); cached per path."""
        key = (path, len(getattr(getattr(self.app, "router", None), "routes", ())))
        try:
            return self._handlers[key]
        except KeyError:
            handler = self._handlers[key] = _direct_handler(self.app, path)
            return handler

    async def deliver(
        self,
        handler: DirectHandler,
        path: str,
        body: bytes,
        event: Mapping[str, Any] | None,
        *,
        headers: Callable[[], Sequence[tuple[bytes, bytes]]],
        state: Mapping[str, Any] | None = None,
    ) -> AppResponse:
        """Run `handler` on one delivery (`event`: what `body` encodes, if known):
        the answer its endpoint would have given. `headers` gives the delivery's
        headers, for an exception handler that reads the request."""
        try:
            answer = await handler(body, event)
        except Exception as exc:  # what the endpoint lets through: HTTPException, or a bug
            scope = http_scope("POST", path, headers(), state=state)
            scope.update(app=self.app, router=getattr(self.app, "router", None))
            answer = await self._exception_answer(exc, scope, body)
        if isinstance(answer, Status):
            return _STATUS_ANSWERS[answer]
        return await _run(answer, http_scope("POST", path, []), b"")

    async def _exception_answer(self, exc: Exception, scope: dict[str, Any], body: bytes) -> Response:
        """As the app's exception middleware: the handler for the exception's status code,
        else for the nearest class of it; without one, the app is unreachable, as
        an exception through a plain app's router is (see `_plain`)."""
        handlers = getattr(self.app, "exception_handlers", {})
        handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
        if handler is None:
            raise AppUnreachable(f"{type(exc).__name__}: {exc}") from exc
        request = Request(scope, _Exchange(body).receive)
        try:
            if _is_async_callable(handler):
                response: Response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        except Exception as error:
            raise AppUnreachable(f"{type(error).__name__}: {error}") from error
        return response

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


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return asyncio.iscoroutinefunction(obj) or asyncio.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


async def _run(app: ASGIApp, scope: dict[str, Any], body: bytes) -> AppResponse:
    """One request through `app`, answered as a server would see it: an exception
    after the answer went out (a background task's) is only logged."""
    exchange = _Exchange(body)
    try:
        await app(scope, exchange.receive, exchange.send)
    except Exception as exc:
        if not exchange.finished:
            raise AppUnreachable(f"{type(exc).__name__}: {exc}") from exc
        # The answer went out; the exception is only re-raised by Starlette's
        # error middleware so that servers can log it, which we do.
        logger.debug("the app raised after answering %s %s", scope["method"], scope["path"], exc_info=True)
    finally:
        exchange.finish()
    if exchange.status == 0:
        raise AppUnreachable("the app returned without sending a response")
    return AppResponse(exchange.status, exchange.headers, b"".join(exchange.chunks))


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
    return await _run(app, scope, body)
