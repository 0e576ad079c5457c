"""One call to the Dapr API as its route handlers see it, and what a handler answers.

A handler gets the call and the rest of the path after its route's prefix (still
escaped: each parameter is unescaped with `query_unescape`, as daprd unescapes
it). It answers an ASGI application to run (a Starlette `Response`, or an
invocation that streams), or None for 204 No Content.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Runtime

__all__: list[str] = []

NO_APP_ID = "failed getting app id either from the URL path or the header dapr-app-id"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")

Answer = ASGIApp | None  # None: 204 No Content


class ApiSettings(Protocol):
    """What a route handler reads of the API that called it (`SidecarAPI` is one): the
    handlers depend on these settings, not on the API's class, so nothing imports back."""

    @property
    def api_token(self) -> str | None: ...
    @property
    def max_body_size(self) -> int: ...
    @property
    def max_bulk_entries(self) -> int: ...
    @property
    def metrics(self) -> Metrics | None: ...


class BadParameter(Exception):
    """A path parameter with a bad `%` escape: daprd's 400."""


class ApiCall:
    """The request, read once: its headers as a dictionary, its path escaped and cleaned."""

    __slots__ = ("api", "headers", "method", "path", "receive", "runtime", "scope")

    def __init__(
        self,
        api: ApiSettings,
        runtime: Runtime | None,
        scope: Scope,
        receive: Receive,
        headers: Mapping[str, str],
        path: str,
    ) -> None:
        self.api = api
        self.runtime = runtime  # None before the app started
        self.scope = scope
        self.receive = receive
        self.headers = headers
        self.path = path
        self.method: str = scope["method"]

    @property
    def running(self) -> Runtime:
        """The runtime, for a route that is only tried once it runs."""
        assert self.runtime is not None
        return self.runtime


Handler = Callable[[ApiCall, str], Awaitable[Answer]]


def route_path(scope: Scope) -> str:
    """The path below the mount point, as Starlette computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def query_unescape(value: str) -> str:
    """Go's `url.QueryUnescape`: `%XX` decoded and `+` as a space; a bad escape is an error."""
    if _BAD_ESCAPE.search(value):
        raise BadParameter(value)
    return unquote_plus(value, errors="replace")
