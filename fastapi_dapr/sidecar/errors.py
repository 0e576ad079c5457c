"""The HTTP answer of daprd's API errors (their catalog is the app side's `_error_codes`), and
the words (`describe`) for the failures they report."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from contextvars import ContextVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._exceptions import DaprAPIError
from .._json import go_dumps
from .http1 import UpstreamError

__all__: list[str] = []


def error_body(error: DaprAPIError) -> bytes:
    """`error` as daprd writes it: a Go struct, so `errorCode`, `message` and `details` in
    that order (not sorted); inside `details`, Go maps, so sorted keys (reference 1.3)."""
    fields = [b'"%s":%s' % (name.encode(), go_dumps(value)) for name, value in error.to_json().items()]
    return b"{" + b",".join(fields) + b"}"


# Set by an in-process caller of the API that must tell the API's own errors from what an
# invocation's target answered (the gRPC API's InvokeService): called with the scope and
# the error of each error answer sent.
ERROR_SINK: ContextVar[Callable[[Scope, DaprAPIError], None] | None] = ContextVar(
    "fastapi_dapr_error_sink", default=None
)


class ErrorResponse(Response):
    """The HTTP answer for an API error, which tells `ERROR_SINK` when it is sent."""

    def __init__(self, error: DaprAPIError) -> None:
        super().__init__(error_body(error), status_code=error.status_code, media_type="application/json")
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = ERROR_SINK.get()
        if sink is not None:
            sink(scope, self.error)
        await super().__call__(scope, receive, send)


def error_response(error: DaprAPIError) -> Response:
    """The HTTP answer for `error`, serialised as daprd's Go code does."""
    return ErrorResponse(error)


def direct_invoke_error(status_code: int, message: str) -> DaprAPIError:
    """Service invocation's older-style error: no details (reference 1.3, last note)."""
    return DaprAPIError(status_code, "ERR_DIRECT_INVOKE", message)


def describe(exc: BaseException, peer: tuple[str | None, int | None] | None = None) -> str:
    """A failure in a few words, for an error message or a log.

    Without `peer`: the OS's words for an `OSError` that has them, else the exception's
    own. With `peer` (the host and port talked to): which step failed with it, TLS,
    resolving the name, connecting or the answer, as the proxy reports a transport failure."""
    if peer is None:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        if isinstance(exc, asyncio.TimeoutError):
            return "no answer within the timeout"
        return str(exc) or type(exc).__name__
    host, port = peer
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {where} was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"the host {host} could not be resolved: {exc.strerror}"
    if isinstance(exc, UpstreamError):
        return f"{where}: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from {where} within the timeout"
    if isinstance(exc, OSError):
        return f"could not connect to {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__} talking to {where}: {exc}"
