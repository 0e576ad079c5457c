"""Service invocation: `/v1.0/invoke/{id}/method/{method}` (reference 6).

This module reads the target and the method as daprd does (6.1) and invokes the
app's own id in process, streaming both ways through its ASGI interface.
HTTPEndpoint, URL and other app id targets are not served yet.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._call import VERBS
from .._exceptions import DaprAPIError
from .._go import path_clean
from .._headers import IDENTITY, forwardable
from .._trace import from_headers, header_pairs
from .caller import LimitedReceive, too_large_message
from .errors import error_response

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

_KEPT = frozenset({"host", "content-length"})  # the app's own request, as its server gave it


def find_target(path: str, headers: Mapping[str, str]) -> tuple[str, str, bool] | None:
    """The target id and the method of an invocation, and whether `dapr-app-id` named it.

    In daprd's order (reference 6.1): the `dapr-app-id` header, Basic auth with
    user `dapr-app-id`, then the path `/v1.0/invoke/{id}/method/{method}`. None
    when none applies. `path` is the decoded request path.
    """
    app_id = headers.get("dapr-app-id")
    if app_id:
        return app_id, path_clean(path).lstrip("/"), True
    auth = headers.get("authorization", "")
    if auth.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if user.lower() == "dapr-app-id" and password and ":" not in password:
            return password, path_clean(path).lstrip("/"), False
    segments = path.split("/")
    position = 0
    for expected in ("v1.0", "invoke"):
        while position < len(segments) and segments[position] == "":
            position += 1
        if position >= len(segments) or segments[position] != expected:
            return None
        position += 1
    rest = "/".join(segments[position:]).lstrip("/")
    index = rest.find("/method/")
    if index <= 0:
        return None
    target = rest[:index]
    method = path_clean(rest[index + len("/method/") :])
    try:
        unescaped = unquote_plus(target, errors="strict")
    except UnicodeDecodeError:
        unescaped = ""
    return (unescaped or target), ("" if method == "." else method), False


def _forwarded_headers(
    scope: Scope,
    *,
    drop_app_id: bool,
    drop_api_token: bool,
    app_api_token: str | None,
    app_id: str,
    namespace: str,
    caller: tuple[str, str] | None = None,
) -> list[tuple[bytes, bytes]]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = []
    for key, value in forwardable(raw, keep=_KEPT):
        if key in IDENTITY or (drop_app_id and key == "dapr-app-id"):
            continue
        # daprd's API middleware removes the caller's token when DAPR_API_TOKEN is set, and
        # its app channel sets (replaces) it when APP_API_TOKEN is: the app never sees two.
        # With neither, daprd passes the caller's header on unchanged, and so does this.
        if key == "dapr-api-token" and (drop_api_token or app_api_token):
            continue
        if key in ("traceparent", "tracestate"):
            continue  # re-derived below, as daprd does
        headers.append((key.encode("latin-1"), value.encode("latin-1")))
    headers += [(name.encode(), value.encode()) for name, value in header_pairs(from_headers(raw))]
    # A self-invocation carries this app's identity as caller and callee (daprd's invokeLocal);
    # a call another sidecar passed on carries its app's (`caller`: id and namespace). And
    # the app's token, as any delivery from the sidecar does.
    caller_id, caller_namespace = caller or (app_id, namespace)
    headers += [
        (b"dapr-caller-app-id", caller_id.encode()),
        (b"dapr-callee-app-id", app_id.encode()),
        (b"dapr-caller-namespace", caller_namespace.encode()),
    ]
    if app_api_token:
        headers.append((b"dapr-api-token", app_api_token.encode()))
    return headers


async def invoke_self(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    method: str,
    via_header: bool,
    api_token_configured: bool,
    app_api_token: str | None,
    app_id: str,
    namespace: str,
    max_body_size: int,
    caller: tuple[str, str] | None = None,
) -> None:
    """Serve the request with the app's own route for `method`, streaming both ways.

    `caller` is the calling app's id and namespace when another sidecar passed the
    call on (the standalone sidecar's name resolution); by default this app's own."""
    verb = scope["method"].upper()
    child = dict(scope)
    child.update(
        {
            "method": verb if verb in VERBS else "POST",  # daprd sends an unknown verb as POST
            "path": "/" + method,
            "raw_path": quote("/" + method).encode(),
            "root_path": "",
            "headers": _forwarded_headers(
                scope,
                drop_app_id=via_header,
                drop_api_token=api_token_configured,
                app_api_token=app_api_token,
                app_id=app_id,
                namespace=namespace,
                caller=caller,
            ),
        }
    )
    limited = LimitedReceive(receive, max_body_size)
    started = False

    async def guarded_send(message: Message) -> None:
        nonlocal started
        if limited.too_large and not started:
            return  # what the app made of a cut body: the caller gets the 413 below instead
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(child, limited, guarded_send)
    except Exception:
        if not limited.too_large or started:
            raise
    if limited.too_large and not started:
        # As on the network path: a streamed body over the limit is daprd's 413.
        error = DaprAPIError(413, "ERR_DIRECT_INVOKE", too_large_message(max_body_size))
        await error_response(error)(scope, receive, send)


def measured(send: Send, metrics: Metrics, target: str, streaming: bool) -> Send:
    """Count one invocation of `target` now, and its answer when its status is sent."""
    metrics.invocation_sent(target, streaming)
    started = time.perf_counter()

    async def measuring_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            elapsed = (time.perf_counter() - started) * 1000
            metrics.invocation_answered(target, message["status"], streaming, elapsed)
        await send(message)

    return measuring_send


def is_streaming(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request whose body has no declared length (daprd's streaming invocation)."""
    return any(name == b"transfer-encoding" for name, _ in headers) and not any(
        name == b"content-length" for name, _ in headers
    )
