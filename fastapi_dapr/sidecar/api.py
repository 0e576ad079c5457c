"""Dapr's HTTP API as an ASGI application: the embedded sidecar's front door.

The same application is mounted on the app's own port by `Dapr(app)` (its
paths are daprd's: `/v1.0/publish/...`), can be mounted elsewhere by the user,
and is served on a port of its own by the standalone sidecar. Paths are read
as daprd reads them: the escaped path cleaned (`path.Clean`), then each
parameter unescaped with Go's `url.QueryUnescape` (reference 1.1).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import logging
import posixpath
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._exceptions import DaprAPIError
from .._invocation import InvokeResponse
from .._json import go_dumps
from .._trace import CURRENT, context, from_headers, header_pairs
from .blocks import VERSIONS, find_unserved
from .bulk_publish import DEFAULT_MAX_ENTRIES, publish_bulk
from .caller import BodyTooLarge, CallerWatch, ClientGone, RequestBody, declared_size, read_body
from .envelope import PublishRequest
from .errors import direct_invoke_error, error_response
from .invocation import InvalidMethod, find_target, invoke_self, is_streaming, measured, normalize_method
from .invocation_policy import built_in_retry, invocation_policy, run_invocation, send_response
from .resiliency import Policy
from .runtime import Runtime

if TYPE_CHECKING:
    from .http1 import Response as Upstream
    from .metrics import Metrics
    from .proxy import Target
from ..secretstores import SecretStoreError

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

API_PREFIXES = tuple(f"/{version}/" for version in VERSIONS)
HEALTH_PATHS = ("/v1.0/healthz", "/v1.0/healthz/outbound")
METADATA_KEY_PREFIX = "/v1.0/metadata/"  # PUT /v1.0/metadata/{key}: one segment, as chi routes it
METRICS_PATH = "/metrics"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # daprd's --max-body-size default
DEFAULT_MAX_HEADERS = 16 * 1024  # what uvicorn's h11 server accepts by default
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_NO_APP_ID = "failed getting app id either from the URL path or the header dapr-app-id"


class _BadParameter(Exception):
    pass


class _SelfInvocation(NamedTuple):
    method: str
    via_header: bool


class _NetworkInvocation(NamedTuple):
    target: Target
    method: str
    via_header: bool


def route_path(scope: Scope) -> str:
    """The path below the mount point, as Starlette computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


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
    return go_clean(path)


def go_clean(path: str) -> str:
    """Go's `path.Clean` of an absolute path."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def query_unescape(value: str) -> str:
    """Go's `url.QueryUnescape`: `%XX` decoded and `+` as a space; a bad escape is an error."""
    if _BAD_ESCAPE.search(value):
        raise _BadParameter(value)
    return unquote_plus(value, errors="replace")


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
    if not _is_loopback_host(client[0]):
        return False
    # A browser is a loopback client too. A cross-site page can POST (a "simple"
    # request needs no CORS preflight), and DNS rebinding lets it read answers:
    # refuse what only a browser sends, and a Host that is not this machine.
    origin = headers.get("origin")
    if origin is not None and not _is_loopback_url(origin):
        return False
    if headers.get("sec-fetch-site", "none") not in ("none", "same-origin"):
        return False
    host = headers.get("host")
    return host is None or _is_loopback_url("//" + host)


@functools.lru_cache(maxsize=1024)
def _is_loopback_url(url: str) -> bool:
    """Whether an Origin (`http://localhost:8000`) or `//Host` names this machine; one that
    cannot be read (`[`, an unclosed or invalid IPv6 address) does not."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return _is_loopback_host(host or "")


@functools.lru_cache(maxsize=1024)
def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _metadata(query_string: bytes) -> dict[str, str]:
    """`?metadata.key=value` parameters, first value of each (reference 1.1)."""
    result: dict[str, str] = {}
    if not query_string:
        return result
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key.startswith("metadata.") and key[len("metadata.") :] not in result:
            result[key[len("metadata.") :]] = value
    return result


def _release(upstream: Upstream) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        upstream.release()

    return release


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
        if isinstance(response, (_SelfInvocation, _NetworkInvocation)):
            runtime = self._runtime()
            assert runtime is not None
            target = response.target if isinstance(response, _NetworkInvocation) else None
            name = target.name if target is not None else runtime.app_id
            policy = invocation_policy(runtime, target, name, response.method)
            if not policy.is_empty:
                await self._invoke_with_policy(runtime, policy, name, target, response, scope, receive, send)
                return
        if isinstance(response, _SelfInvocation):
            runtime = self._runtime()
            assert runtime is not None
            if runtime.metrics is not None:
                send = measured(send, runtime.metrics, runtime.app_id, is_streaming(scope["headers"]))
            await invoke_self(
                runtime.app,
                scope,
                receive,
                send,
                method=response.method,
                via_header=response.via_header,
                api_token_configured=self.api_token is not None,
                app_api_token=runtime.app_api_token,
                app_id=runtime.app_id,
                namespace=runtime.namespace,
                max_body_size=self.max_body_size,
            )
            return
        if isinstance(response, _NetworkInvocation):
            runtime = self._runtime()
            assert runtime is not None
            from .proxy import proxy_asgi

            await proxy_asgi(
                runtime.upstreams(),
                response.target,
                response.method,
                scope,
                receive,
                send,
                via_header=response.via_header,
                max_body_size=self.max_body_size,
                connect_retry=built_in_retry(runtime, response.target),
                clock=runtime.clock,
            )
            return
        await response(scope, receive, send)

    async def _invoke_with_policy(
        self,
        runtime: Runtime,
        policy: Policy,
        name: str,
        target: Target | None,
        call: _SelfInvocation | _NetworkInvocation,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """An invocation under a Resiliency policy: its body read whole when it has a length,
        so that it can be sent again (reference 8). The caller is watched from the end of
        its body: when it leaves, the attempts stop and the target sees its request go."""
        from .._headers import invocation_headers
        from .calls import open_in_process
        from .proxy import caller_error

        raw: list[tuple[bytes, bytes]] = scope["headers"]
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in raw}
        body: bytes | AsyncIterator[bytes] | None = None
        streamed: RequestBody | None = None
        with CallerWatch(receive) as watch:
            if declared_size(headers) is not None:
                try:
                    body = await read_body(receive, headers, self.max_body_size)
                except ClientGone:
                    return
                except BodyTooLarge:
                    limit = f"the request body is larger than the limit of {self.max_body_size} bytes"
                    refusal = error_response(DaprAPIError(413, "ERR_DIRECT_INVOKE", limit))
                    await refusal(scope, receive, send)
                    return
                watch.start()
            elif "transfer-encoding" in headers:
                streamed = RequestBody(receive, self.max_body_size, on_end=watch.start)
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
                        method=call.method,
                        via_header=call.via_header,
                        api_token_configured=self.api_token is not None,
                        max_body_size=self.max_body_size,
                    )

            else:
                upstreams = runtime.upstreams()
                outbound = invocation_headers(
                    raw,
                    target=target,
                    identity=(runtime.app_id, runtime.namespace),
                    trace=from_headers(raw),
                    drop_app_id=call.via_header,
                )
                query = scope.get("query_string", b"").decode("latin-1")
                network = target
                connect_retry = built_in_retry(runtime, network)

                async def opener() -> InvokeResponse:
                    upstream = await upstreams.open(
                        network,
                        call.method,
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
                error = caller_error(exc, streamed, self.max_body_size)
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

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> Response | _SelfInvocation | _NetworkInvocation | None:
        """The answer; None for 204 No Content, the answer of a publish."""
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
        refused = self._refusal(scope, headers, path)
        if refused is not None:
            return refused
        method = scope["method"]
        runtime = self._runtime()
        if path == METRICS_PATH and self.metrics is not None:
            if method not in ("GET", "HEAD"):
                return JSONResponse(
                    {"errorCode": "ERR_METHOD_NOT_ALLOWED", "message": f"{method} {path}: use GET"},
                    status_code=405,
                    headers={"allow": "GET, HEAD"},
                )
            return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)
        try:
            if path in HEALTH_PATHS and method in ("GET", "HEAD"):
                if runtime is None or (path == "/v1.0/healthz" and not runtime.ready):
                    return JSONResponse(
                        {"errorCode": "ERR_HEALTH_NOT_READY", "message": "dapr is not ready"},
                        status_code=500,
                    )
                return None
            if runtime is None:
                return JSONResponse(
                    {
                        "errorCode": "ERR_SIDECAR_NOT_STARTED",
                        "message": "the embedded sidecar runs inside the app's lifespan and has not "
                        "started (in tests: `with TestClient(app) as client`)",
                    },
                    status_code=503,
                )
            if path.startswith("/v1.0/secrets/") and method == "GET":
                return await self._secrets(runtime, path[len("/v1.0/secrets/") :])
            if path == "/v1.0/metadata" and method == "GET":
                return Response(go_dumps(runtime.metadata()), media_type="application/json")
            key = path[len(METADATA_KEY_PREFIX) :]
            if method == "PUT" and path.startswith(METADATA_KEY_PREFIX) and "/" not in key:
                return await self._put_metadata(runtime, receive, headers, query_unescape(key))
            if path == "/v1.0/shutdown" and method == "POST":
                # daprd answers 204, then stops; the stop runs once the answer is sent.
                return Response(status_code=204, background=BackgroundTask(runtime.shutdown()))
            if method in ("POST", "PUT"):
                for prefix in ("/v1.0/publish/bulk/", "/v1.0-alpha1/publish/bulk/"):
                    if path.startswith(prefix):
                        return await self._bulk_publish(runtime, scope, receive, headers, path[len(prefix) :])
                if path.startswith("/v1.0/publish/"):
                    return await self._publish(
                        runtime, scope, receive, headers, path[len("/v1.0/publish/") :]
                    )
            unserved = find_unserved(path, method)
            if unserved is not None:
                answer, params = unserved
                unescaped = {name: query_unescape(value) for name, value in params.items()}
                return error_response(answer(unescaped, runtime.app_id, runtime.namespace))
            return await self._invocation(runtime, scope, headers)
        except _BadParameter as exc:
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
                    f"the request body is larger than the limit of {self.max_body_size} bytes",
                )
            )
        except DaprAPIError as exc:
            return error_response(exc)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _split(rest: str) -> tuple[str, str] | None:
        pubsub, slash, topic = rest.partition("/")
        if not slash or not pubsub:
            return None
        return query_unescape(pubsub), query_unescape(topic)

    async def _invocation(
        self, runtime: Runtime, scope: Scope, headers: Mapping[str, str]
    ) -> Response | _SelfInvocation | _NetworkInvocation:
        """Any other path is service invocation, as in daprd (reference 6.1)."""
        found = find_target(route_path(scope), headers)
        if found is None:
            return error_response(direct_invoke_error(404, _NO_APP_ID))
        target, method, via_header = found
        try:
            method = normalize_method(method)
        except InvalidMethod as exc:
            return error_response(
                direct_invoke_error(500, f"failed to invoke, id: {target}, err: invalid method: {exc}")
            )
        if scope["method"] == "CONNECT":
            return error_response(
                direct_invoke_error(500, f"failed to invoke, id: {target}, err: invalid HTTP verb")
            )
        declared = declared_size(headers)
        if declared is not None and declared > self.max_body_size:
            return error_response(
                DaprAPIError(
                    413,
                    "ERR_DIRECT_INVOKE",
                    f"the request body is larger than the limit of {self.max_body_size} bytes",
                )
            )
        # Dapr's precedence (reference 6.2): an HTTPEndpoint of that name, a URL, an app id.
        if runtime.is_own_id(target):
            return _SelfInvocation(method, via_header)
        try:
            found_target = await runtime.find_target(target)
        except DaprAPIError as exc:
            return error_response(exc)
        return _NetworkInvocation(found_target, method, via_header)

    async def _put_metadata(
        self, runtime: Runtime, receive: Receive, headers: Mapping[str, str], key: str
    ) -> Response | None:
        """`PUT /v1.0/metadata/{key}`: the body is the value of `key` in the extended metadata."""
        try:
            body = await read_body(receive, headers, self.max_body_size)
        except ClientGone:
            return error_response(
                DaprAPIError(400, "ERR_BODY_READ", "failed to read request body: the client went away")
            )
        except BodyTooLarge:
            body = None
        # daprd keeps any number of values of any size: here they hold the body limit in all.
        if body is None or not runtime.set_extended_metadata(key, body, self.max_body_size):
            return error_response(
                DaprAPIError(
                    413,
                    "ERR_METADATA_TOO_LARGE",
                    f"the extended metadata (keys and values together) may hold at most "
                    f"{self.max_body_size} bytes",
                )
            )
        return None

    @staticmethod
    async def _secrets(runtime: Runtime, rest: str) -> Response:
        """`GET /v1.0/secrets/{store}/{key}` and `/v1.0/secrets/{store}/bulk` (reference 7.4)."""
        parts = rest.split("/")
        if len(parts) != 2 or not all(parts):
            return error_response(direct_invoke_error(404, _NO_APP_ID))
        store_name, key = (query_unescape(part) for part in parts)
        if not runtime.secret_stores:
            return error_response(
                DaprAPIError(500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured")
            )
        store = runtime.secret_stores.get(store_name)
        if store is None:
            # daprd's status for an unknown store is 401.
            return error_response(
                DaprAPIError(
                    401, "ERR_SECRET_STORE_NOT_FOUND", f"failed finding secret store with key {store_name}"
                )
            )
        try:
            if parts[1] == "bulk":
                return Response(go_dumps(await store.bulk_get()), media_type="application/json")
            return Response(go_dumps(await store.get_secret(key)), media_type="application/json")
        except SecretStoreError as exc:
            message = (
                f"failed getting secrets from secret store {store_name}: {exc}"
                if parts[1] == "bulk"
                else f"failed getting secret with key {key} from secret store {store_name}: {exc}"
            )
            return error_response(DaprAPIError(500, "ERR_SECRET_GET", message))

    async def _read_publish(
        self, runtime: Runtime, scope: Scope, receive: Receive, headers: Mapping[str, str], rest: str
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        """Pubsub, topic, metadata and body of a publish; None when the path has no topic."""
        names = self._split(rest)
        if names is None:
            return None  # daprd: no route matches, the invocation fallback answers
        pubsub, topic = names
        metadata = _metadata(scope.get("query_string", b""))
        runtime.check_pubsub(pubsub, topic, metadata)  # daprd validates before reading the body
        return pubsub, topic, metadata, await read_body(receive, headers, self.max_body_size)

    async def _publish(
        self, runtime: Runtime, scope: Scope, receive: Receive, headers: Mapping[str, str], rest: str
    ) -> Response | None:
        read = await self._read_publish(runtime, scope, receive, headers, rest)
        if read is None:
            return error_response(direct_invoke_error(404, _NO_APP_ID))
        pubsub, topic, metadata, body = read
        trace = context(headers.get("traceparent"), headers.get("tracestate"))
        await runtime.publish(
            PublishRequest(
                pubsub=pubsub,
                topic=topic,
                data=body,
                content_type=headers.get("content-type", ""),
                metadata=metadata,
                traceparent=trace[0] if trace is not None else "",
                tracestate=trace[1] if trace is not None else "",
            )
        )
        return None

    async def _bulk_publish(
        self, runtime: Runtime, scope: Scope, receive: Receive, headers: Mapping[str, str], rest: str
    ) -> Response | None:
        read = await self._read_publish(runtime, scope, receive, headers, rest)
        if read is None:
            return error_response(direct_invoke_error(404, _NO_APP_ID))
        pubsub, topic, metadata, body = read
        trace = context(headers.get("traceparent"), headers.get("tracestate"))
        failed = await publish_bulk(
            runtime,
            pubsub,
            topic,
            body,
            metadata,
            trace[0] if trace is not None else "",
            trace[1] if trace is not None else "",
            max_entries=self.max_bulk_entries,
        )
        if not failed:
            return None
        # Not the kit error format: daprd's own shape for bulk results (reference 1.8), a Go
        # struct, so its fields in this order; the same JSON in `metadata.responseData`.
        data = b'{"failedEntries":' + go_dumps(failed) + b',"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE"}'
        return Response(
            data,
            status_code=500,
            media_type="application/json",
            headers={"metadata.responseData": data.decode()},
        )


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
            path = route_path(scope)
            if (
                path.startswith(API_PREFIXES)
                or path[1:] in VERSIONS
                or (path == METRICS_PATH and self.api.metrics is not None)
            ):
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
