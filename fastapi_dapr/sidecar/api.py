"""Dapr's HTTP API as an ASGI application: the embedded sidecar's front door.

The same application is mounted on the app's own port by `Dapr(app)` (its
paths are daprd's: `/v1.0/publish/...`), can be mounted elsewhere by the user,
and is served on a port of its own by the standalone sidecar. Paths are read
as daprd reads them: the escaped path cleaned (`path.Clean`), then each
parameter unescaped with Go's `url.QueryUnescape` (reference 1.1). What may
call it is checked here; which handler answers is the routing table's
(`ROUTES`), the handlers are the `*_routes` modules.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._exceptions import DaprAPIError
from .._go import path_clean
from .._trace import CURRENT, from_headers, header_pairs
from . import metadata_routes, publish_routes
from .addresses import names_this_machine, url_names_this_machine
from .api_call import Answer, ApiCall, BadParameter, query_unescape, route_path
from .blocks import VERSIONS, find_unserved
from .bulk_publish import DEFAULT_MAX_ENTRIES
from .caller import BodyTooLarge, ClientGone, too_large_message
from .errors import error_response
from .invoke_routes import invocation
from .route_table import Route, RouteTable
from .runtime import Runtime
from .secrets_routes import secrets

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

API_PREFIXES = tuple(f"/{version}/" for version in VERSIONS)
HEALTH_PATHS = (metadata_routes.HEALTH_PATH, metadata_routes.OUTBOUND_HEALTH_PATH)
METRICS_PATH = "/metrics"
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # daprd's --max-body-size default
DEFAULT_MAX_HEADERS = 16 * 1024  # what uvicorn's h11 server accepts by default
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_READ = frozenset({"GET", "HEAD"})
_WRITE = frozenset({"POST", "PUT"})


async def _unrouted(call: ApiCall, rest: str) -> Answer:
    """A building block daprd routes and this sidecar does not serve, else service invocation."""
    unserved = find_unserved(call.path, call.method)
    if unserved is not None:
        answer, params = unserved
        runtime = call.running
        unescaped = {name: query_unescape(value) for name, value in params.items()}
        return error_response(answer(unescaped, runtime.app_id, runtime.namespace))
    return await invocation(call, rest)


# daprd's precedence: the first route that matches answers. The health checks answer before
# the runtime runs; every later route, and the fallback, answer 503 until it does.
ROUTES = (
    Route(metadata_routes.HEALTH_PATH, _READ, metadata_routes.health, started=False),
    Route(metadata_routes.OUTBOUND_HEALTH_PATH, _READ, metadata_routes.health, started=False),
    Route("/v1.0/secrets/", frozenset({"GET"}), secrets),
    Route("/v1.0/metadata", frozenset({"GET"}), metadata_routes.metadata),
    Route("/v1.0/metadata/", frozenset({"PUT"}), metadata_routes.put_metadata, one_segment=True),
    Route("/v1.0/shutdown", frozenset({"POST"}), metadata_routes.shutdown),
    Route("/v1.0/publish/bulk/", _WRITE, publish_routes.bulk_publish),
    Route("/v1.0-alpha1/publish/bulk/", _WRITE, publish_routes.bulk_publish),
    Route("/v1.0/publish/", _WRITE, publish_routes.publish),
)
# Served only with metrics; any method, so that the others have daprd's 405.
METRICS_ROUTE = Route(METRICS_PATH, frozenset(), metadata_routes.metrics, started=False)
_NOT_STARTED = {
    "errorCode": "ERR_SIDECAR_NOT_STARTED",
    "message": "the embedded sidecar runs inside the app's lifespan and has not "
    "started (in tests: `with TestClient(app) as client`)",
}


def is_api_path(path: str, metrics: bool) -> bool:
    """Whether the sidecar, in front of the app on its port (`SidecarDispatch`), answers `path`
    (the app's own, without its root path): every path of daprd's API versions, and `/metrics`
    when the sidecar serves metrics."""
    return path.startswith(API_PREFIXES) or path[1:] in VERSIONS or (metrics and path == METRICS_PATH)


def _escaped_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    root = scope.get("root_path", "")
    if isinstance(raw, bytes):
        text = raw.decode("latin-1")
        encoded_root = quote(root)
        if root and text.startswith(encoded_root):
            text = text[len(encoded_root) :]
        return text or "/"
    return quote(route_path(scope))


_NO_CONTENT_START = {"type": "http.response.start", "status": 204, "headers": []}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


@functools.lru_cache(maxsize=4096)
def _clean(path: str) -> str:
    return path_clean(path)


def is_local_client(scope: Scope, headers: Mapping[str, str]) -> bool:
    """Whether a request without the API token may be answered: it comes from this machine,
    and not from a web page a browser on this machine is showing."""
    if any(name in headers for name in _FORWARDING_HEADERS):
        # It came through a proxy: the socket's address says nothing, and a server
        # trusting the header may have put whatever the client wrote in `client`.
        return False
    client = scope.get("client")
    if not client:
        return False
    if client[0] == "testclient":  # Starlette's TestClient: in process, no network at all
        return True
    if not names_this_machine(client[0]):
        return False
    # A browser is a loopback client too. A cross-site page can POST (a "simple"
    # request needs no CORS preflight), and DNS rebinding lets it read answers:
    # refuse what only a browser sends, and a Host that is not this machine.
    origin = headers.get("origin")
    if origin is not None and not url_names_this_machine(origin):
        return False
    if headers.get("sec-fetch-site", "none") not in ("none", "same-origin"):
        return False
    host = headers.get("host")
    return host is None or url_names_this_machine("//" + host)


class SidecarAPI:
    """The Dapr HTTP API of one runtime.

    `runtime` returns the running `Runtime`, or None before the app started.
    With `api_token` set every call but the health checks needs it in the
    `dapr-api-token` header; without one only loopback clients are answered.
    A bulk publish takes at most `max_bulk_entries` entries.
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime | None],
        *,
        api_token: str | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        max_header_size: int = DEFAULT_MAX_HEADERS,
        metrics: Metrics | None = None,
        max_bulk_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_bulk_entries < 1:
            raise ValueError(f"max_bulk_entries must be at least 1, not {max_bulk_entries}")
        self._runtime = runtime
        self.metrics = metrics  # served at GET /metrics when given
        self.api_token = api_token or None
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.max_bulk_entries = max_bulk_entries
        routes = (METRICS_ROUTE, *ROUTES) if metrics is not None else ROUTES
        # Not `routes`: a framework that mounts this application reads that attribute as its routes.
        self.route_table = RouteTable(routes, _unrouted)

    def current_runtime(self) -> Runtime | None:
        """The running runtime; None before it started (the gRPC API serves it too)."""
        return self._runtime()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_noop(receive, send)
            return
        if scope["type"] != "http":
            return
        trace = from_headers(scope["headers"])
        if trace is not None and route_path(scope) not in HEALTH_PATHS:
            send = _answer_traced(send, trace)
        try:
            response = await self._handle(scope, receive)
        except Exception:
            # No error middleware stands in front of this application.
            logger.exception("the Dapr API failed on %s %s", scope["method"], scope["path"])
            response = JSONResponse(
                {"errorCode": "ERR_INTERNAL", "message": "internal error in the embedded sidecar"},
                status_code=500,
            )
        if response is None:
            await send(_NO_CONTENT_START)
            await send(_EMPTY_BODY)
            return
        await response(scope, receive, send)

    async def serve_trusted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request another front door of this API already let in (the gRPC API, whose
        guard checked the token or the peer): as `__call__`, without the token and loopback
        checks, and with an exception left to the caller. Only in-process code builds the scope."""
        response = await self._handle(scope, receive, trusted=True)
        if response is None:
            await send(_NO_CONTENT_START)
            await send(_EMPTY_BODY)
            return
        await response(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Mapping[str, str], path: str) -> Response | None:
        if path in HEALTH_PATHS and scope["method"] in ("GET", "HEAD"):
            return None
        if self.api_token:
            given = headers.get("dapr-api-token", "")
            if hmac.compare_digest(given.encode(), self.api_token.encode()):
                return None
            # daprd's exact answer (reference 6.6).
            return PlainTextResponse("invalid api token\n", status_code=401)
        if is_local_client(scope, headers):
            return None
        return JSONResponse(
            {
                "errorCode": "ERR_FORBIDDEN",
                "message": "without a token the Dapr API on this port answers only local clients "
                "(a loopback address and Host, no proxy, no cross-site browser request); to allow "
                "others, set DAPR_API_TOKEN and send it in the dapr-api-token header",
            },
            status_code=403,
        )

    async def _handle(self, scope: Scope, receive: Receive, *, trusted: bool = False) -> Answer:
        """The answer; None for 204 No Content, the answer of a publish. `trusted`: the caller
        was checked already (`serve_trusted`)."""
        # One pass over the raw headers; later look-ups are dictionary hits.
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        if sum(len(name) + len(value) for name, value in scope["headers"]) > self.max_header_size:
            return JSONResponse(
                {
                    "errorCode": "ERR_HEADERS_TOO_LARGE",
                    "message": "the request headers are larger than the limit of "
                    f"{self.max_header_size} bytes",
                },
                status_code=431,
            )
        path = _clean(_escaped_path(scope))
        refused = None if trusted else self._refusal(scope, headers, path)
        if refused is not None:
            return refused
        call = ApiCall(self, self._runtime(), scope, receive, headers, path)
        route, rest = self.route_table.find(call.method, path)
        if route.started and call.runtime is None:
            return JSONResponse(_NOT_STARTED, status_code=503)
        try:
            return await route.handler(call, rest)
        except BadParameter as exc:
            return PlainTextResponse(f'failed to unescape request parameter "{exc}"\n', status_code=400)
        except ClientGone:
            return error_response(
                DaprAPIError(
                    500, "ERR_PUBSUB_PUBLISH_MESSAGE", "the client went away before sending the whole body"
                )
            )
        except BodyTooLarge:
            return error_response(
                DaprAPIError(
                    413,
                    "ERR_PUBSUB_PUBLISH_MESSAGE",
                    too_large_message(self.max_body_size),
                )
            )
        except DaprAPIError as exc:
            return error_response(exc)


def _answer_traced(send: Send, trace: tuple[str, str]) -> Send:
    """daprd's answers carry the request's trace when they have none of their own."""
    extra = [(name.encode(), value.encode()) for name, value in header_pairs(trace)]

    async def traced_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"traceparent" for name, _ in headers):
                message = {**message, "headers": headers + extra}
        await send(message)

    return traced_send


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class SidecarDispatch:
    """In front of the app's whole middleware stack: daprd's API paths go to the
    sidecar, everything else to the app.

    The sidecar is another server that happens to share the app's port: the
    app's middleware (authentication, CORS, sessions...) does not apply to it.
    """

    def __init__(self, api: SidecarAPI, app: ASGIApp) -> None:
        self.api = api
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if is_api_path(route_path(scope), self.api.metrics is not None):
                await self.api(scope, receive, send)
                return
            trace = from_headers(scope["headers"])
            if trace is not None:
                # What the app handles carries this trace on (`Dapr.publish`, `Dapr.invoke`).
                token = CURRENT.set(trace)
                try:
                    await self.app(scope, receive, send)
                finally:
                    CURRENT.reset(token)
                return
        await self.app(scope, receive, send)
