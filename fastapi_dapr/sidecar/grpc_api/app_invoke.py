"""Invocations of a gRPC app: an HTTP request to the app's id as an `OnInvoke` call, and back.

What the invocation route hands the app channel (the method as the path, the verb,
the query, the headers it forwards, the body) becomes daprd's `InvokeRequest`: the
method, the body in `data` (an `Any` without a type), its content type and the
`http_extension` (verb and query string). The headers go as metadata as daprd's
gRPC channel sends them: the IANA permanent header names prefixed with `dapr-`
(`dapr-content-type`, `dapr-accept`), `-bin` values base64-decoded, the trace as
`traceparent` and `tracestate`.

The `InvokeResponse` is answered with status 200, its data as the body and its
content type (`application/x-protobuf` when the data has a type URL, as daprd); the
app's response headers pass on as HTTP headers. A gRPC error is answered as daprd
answers an HTTP caller: the HTTP status of the gRPC code and the status as JSON
(`{"code":5,"message":"...","details":[...]}`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from dapr.proto.common.v1 import common_pb2
from google.protobuf import any_pb2, json_format
from starlette.types import Receive, Scope, Send

from ..caller import CallerWatch, ClientGone, read_body
from .app_deliveries import valid_metadata

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

# The IANA permanent request header names daprd prefixes with `dapr-`.
_PERMANENT = frozenset(
    {
        "accept", "accept-charset", "accept-language", "accept-ranges", "connection", "keep-alive",
        "proxy-connection", "transfer-encoding", "upgrade", "cache-control", "content-type",
        "content-length", "cookie", "date", "expect", "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-schedule-tag-match", "if-unmodified-since", "max-forwards", "origin",
        "pragma", "referer", "via", "warning",
    }
)  # fmt: skip
_NOT_SENT = frozenset(("host", "destination-app-id", "grpc-trace-bin"))  # Go's server keeps no Host
_NOT_ANSWERED = frozenset(
    {
        "content-type", "content-length", "traceparent", "tracestate", "connection", "keep-alive",
        "proxy-connection", "transfer-encoding", "upgrade", "http2-settings", "te", "trailer",
        "proxy-authorization", "proxy-authenticate",
    }
)  # fmt: skip
# daprd's HTTPStatusFromCode, by gRPC code.
_HTTP_STATUS = (200, 408, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)
_VERBS = {name: number for name, number in common_pb2.HTTPExtension.Verb.items() if name != "NONE"}


def http_status(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return _HTTP_STATUS[number] if 0 <= number < len(_HTTP_STATUS) else 500


def request_metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """The metadata of the call, from the headers the invocation forwards (see the module's text)."""
    pairs: list[tuple[str, str | bytes]] = []
    for name, raw in headers:
        key = name.decode("latin-1").lower()
        if key in _NOT_SENT:
            continue
        value = raw.decode("latin-1")
        if key.endswith("-bin"):
            with contextlib.suppress(binascii.Error, ValueError):  # daprd leaves out what does not decode
                pairs.append((key, base64.b64decode(value, validate=True)))
            continue
        if key in _PERMANENT or key.startswith("grpc-"):
            key = "dapr-" + key
        pairs.append((key, value))
    return valid_metadata(pairs)


def response_headers(metadata: Iterable[tuple[str, Any]] | None) -> list[tuple[bytes, bytes]]:
    """The app's response metadata as HTTP headers, as daprd passes them on."""
    headers = []
    for key, value in metadata or ():
        name = key.lower()
        if name.endswith("-bin") or name in _NOT_ANSWERED or not isinstance(value, str):
            continue
        if name.startswith(("grpc-", ":")):
            name = "dapr-" + name.lstrip(":")
        headers.append((name.encode("latin-1"), value.encode("latin-1", errors="replace")))
    return headers


def invoke_request(scope: Scope, body: bytes) -> Any:
    """The `InvokeRequest` of the invocation `scope` (its path is `/` and the method)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    verb = scope["method"].upper()
    return common_pb2.InvokeRequest(
        method=scope["path"][1:],
        data=any_pb2.Any(value=body),
        content_type=content_type.decode("latin-1"),
        http_extension=common_pb2.HTTPExtension(
            verb=_VERBS.get(verb, _VERBS["POST"]),
            querystring=scope.get("query_string", b"").decode("latin-1"),
        ),
    )


def error_body(exc: grpc.aio.AioRpcError) -> bytes:
    """The status of a failed call as daprd writes it for an HTTP caller: its code, message
    and details (from `grpc-status-details-bin`), as protobuf's JSON."""
    from google.rpc import error_details_pb2, status_pb2  # noqa: F401 - the details' types

    status = status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status.details.extend(status_pb2.Status.FromString(value).details)
            except Exception:  # protobuf's DecodeError: an app's broken trailer
                logger.debug("the app's grpc-status-details-bin does not decode", exc_info=True)
    try:
        shown = json_format.MessageToDict(status)
    except (TypeError, KeyError):  # a detail of a type this process does not know
        del status.details[:]
        shown = json_format.MessageToDict(status)
    return json.dumps(shown, separators=(",", ":")).encode()


async def _answer(send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
    head = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def invoke(stub: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve the invocation `scope` with the app's `OnInvoke`; the caller's leaving cancels it."""
    with CallerWatch(receive) as watch:
        try:
            body = await read_body(receive, {}, 1 << 62)  # the invocation route bounds it
        except ClientGone:
            return
        watch.start()
        call = stub.OnInvoke(invoke_request(scope, body), metadata=request_metadata(scope["headers"]))
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            headers = response_headers(exc.initial_metadata())
            headers.append((b"content-type", b"application/json"))
            await _answer(send, http_status(exc.code()), headers, error_body(exc))
            return
        headers = response_headers(await call.initial_metadata())
        content_type = "application/x-protobuf" if response.data.type_url else response.content_type
        if content_type:
            headers.append((b"content-type", content_type.encode("latin-1", errors="replace")))
        await _answer(send, 200, headers, response.data.value)
