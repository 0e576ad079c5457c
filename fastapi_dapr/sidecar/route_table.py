"""The Dapr API's routing table: which handler answers a method and a cleaned path.

The routes are tried in their order and the first that matches answers, so the
order is daprd's precedence (a publish before the invocation fallback, say); a
path no route matches goes to the table's fallback. A route marked `started`
is only tried once the runtime runs: before that the table answers daprd's 503
for it, and for the fallback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from .api_call import Handler

__all__: list[str] = []


class Route(NamedTuple):
    """`path` exactly, or every path under it when it ends with `/`; `methods` (empty: any)."""

    path: str
    methods: frozenset[str]
    handler: Handler
    started: bool = True  # tried only once the runtime runs
    one_segment: bool = False  # under `path`: one segment only ("/" not in the rest), as chi routes it


class RouteTable:
    """Ordered routes, and the handler of whatever none of them matches."""

    def __init__(self, routes: Iterable[Route], fallback: Handler) -> None:
        self.routes: Sequence[Route] = tuple(routes)
        self.fallback = Route("", frozenset(), fallback)
        # The hot path (a publish, an invocation) asks again and again for the same few paths.
        self.find: Callable[[str, str], tuple[Route, str]] = functools.lru_cache(maxsize=4096)(self._find)

    def _find(self, method: str, path: str) -> tuple[Route, str]:
        """The route that answers, and the rest of the path below its prefix."""
        for route in self.routes:
            if route.methods and method not in route.methods:
                continue
            if not route.path.endswith("/"):
                if path == route.path:
                    return route, ""
                continue
            if path.startswith(route.path):
                rest = path[len(route.path) :]
                if not (route.one_segment and "/" in rest):
                    return route, rest
        return self.fallback, path
