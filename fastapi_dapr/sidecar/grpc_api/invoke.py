"""InvokeService, daprd's service invocation over gRPC, made a call of the HTTP API's own route.

daprd's InvokeService (deprecated there, still what the SDKs' `invoke_method` sends over
gRPC) makes the same invocation as its HTTP API. Here it is that invocation: the request
becomes an in-process request to `/v1.0/invoke/{id}/method/{method}` of the SidecarAPI
(`serve_trusted`: the gRPC guard has checked the caller already), so the targets (app ids,
HTTPEndpoints, URLs, in that precedence), the allow-list, the SSRF rules, resiliency and the
header rules are the HTTP route's own. What is translated, as daprd translates it
(pkg/api/grpc InvokeService, pkg/messaging/v1, pkg/channel/http):

- the verb of `http_extension` (none, NONE and CONNECT are refused as daprd's HTTP app channel
  refuses them, wrapped in ERR_DIRECT_INVOKE; a gRPC app of this sidecar needs none and gets
  POST), its query string, `data.value` as the body, and `content_type` as Content-Type
  (`application/x-protobuf` when `data` has a type URL);
- the call's metadata as headers (`invocation_headers`);
- the answer (`answer_metadata`, `reply`): a 2xx is `InvokeResponse{data, content_type}`, any
  other status daprd's error for it (`ErrorFromHTTPResponseCode`); both carry the target's
  headers, the trace and `dapr-http-status` as initial metadata;
- the API's own errors (an unknown app id, a target that can't be reached, a refused URL)
  are answered as the gRPC API answers them (`errors.abort_api_error`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import grpc
from dapr.proto.common.v1 import common_pb2
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from ..._exceptions import DaprAPIError
from ..._headers import not_passed_on
from ..._trace import context as trace_context
from ..._trace import header_pairs
from ..errors import ERROR_SINK, describe, direct_invoke_error
from ..invocation import find_target
from . import errors
from .peer import peer_host

if TYPE_CHECKING:
    from starlette.types import Message, Scope

    from ..api import SidecarAPI
    from ..runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Metadata = list[tuple[str, "str | bytes"]]

PROTOBUF = "application/x-protobuf"  # daprd's content type of `data` with a type URL
STATUS_KEY = "dapr-http-status"
# Never passed on as a request header: re-derived (the trace), set from the message (the
# body's type and length), or read by the HTTP route as the target (`dapr-app-id`, `host`).
_NOT_FORWARDED = frozenset(
    {"traceparent", "tracestate", "grpc-trace-bin", "destination-app-id", "content-type", "content-length"}
    | {"dapr-app-id", "host"}
)
_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})
# IANA's permanent request header names, which daprd prefixes with `dapr-` in the answer's metadata.
_PERMANENT = frozenset(
    {"accept", "accept-charset", "accept-language", "accept-ranges", "connection", "keep-alive"}
    | {"proxy-connection", "transfer-encoding", "upgrade", "cache-control", "content-type"}
    | {"content-length", "cookie", "date", "expect", "from", "host", "if-match", "if-modified-since"}
    | {"if-none-match", "if-schedule-tag-match", "if-unmodified-since", "max-forwards", "origin"}
    | {"pragma", "referer", "via", "warning"}
)
# What grpc-go does not send as an application's metadata.
_RESERVED = frozenset(
    {"content-type", "user-agent", "te", "grpc-message-type", "grpc-encoding", "grpc-message"}
    | {"grpc-status", "grpc-timeout", "grpc-status-details-bin"}
)
_ANSWER_TRACE = frozenset({"traceparent", "tracestate", "grpc-trace-bin", "destination-app-id"})
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*\Z")
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_VERBS = {number: name for name, number in common_pb2.HTTPExtension.Verb.items()}


async def invoke_service(service: Any, request: Any, context: Any) -> Any:
    """daprd's InvokeService: the invocation of `request.message` on the app `request.id`."""
    runtime: Runtime = await service.running(context)
    app_id: str = request.id
    message = request.message
    if not app_id:
        await _fail(context, "", "app id is empty")
    verb, problem = http_verb(message)
    grpc_app = runtime.is_own_id(app_id) and _is_grpc_app(runtime)
    if problem is not None:
        if not grpc_app:
            await _refuse_verb(context, runtime, app_id, problem)
        verb = "POST"  # daprd's gRPC channel sends the message as it is; the app channel's verb is POST
    metadata = list(context.invocation_metadata() or ())
    trace = request_trace(metadata)
    headers = invocation_headers(metadata, message, drop_token=service.api.api_token is not None, trace=trace)
    scope = invocation_scope(verb, app_id, message, headers, context.peer())
    try:
        answer = await call_route(service.api, scope, message.data.value)
    except Exception as exc:
        logger.exception("InvokeService of %s failed", app_id)
        await _fail(context, app_id, describe(exc))
    if answer.error is not None:
        await errors.abort_api_error(context, answer.error)
    if not answer.status:
        await _fail(context, app_id, "the target sent no answer")
    return await reply(context, answer, trace, grpc_app=grpc_app)


def http_verb(message: Any) -> tuple[str, str | None]:
    """The HTTP verb of an InvokeRequest; with daprd's refusal when it has none it can send."""
    if not message.HasField("http_extension"):
        return "", "missing HTTP extension field"
    number = message.http_extension.verb
    verb = _VERBS.get(number, str(number))  # an unknown number: Go's name for it, its digits
    if verb in ("NONE", "CONNECT"):
        return "", "invalid HTTP verb"
    return verb, None


async def _refuse_verb(context: Any, runtime: Runtime, app_id: str, problem: str) -> NoReturn:
    """daprd's refusal of a verb, which comes from the target's channel: after the target
    was found (an unknown id is that error instead)."""
    if not runtime.is_own_id(app_id):
        try:
            await runtime.find_target(app_id)
        except DaprAPIError as exc:
            await errors.abort_api_error(context, exc)
    await _fail(context, app_id, f"rpc error: code = InvalidArgument desc = {problem}")


def _is_grpc_app(runtime: Runtime) -> bool:
    """Whether this app is reached through the gRPC app channel (`--app-protocol grpc`)."""
    from .app_channel import GrpcAppChannel

    return isinstance(getattr(runtime, "channel", None), GrpcAppChannel)


async def _fail(context: Any, app_id: str, reason: str) -> NoReturn:
    await errors.abort_api_error(
        context, direct_invoke_error(500, f"failed to invoke, id: {app_id}, err: {reason}")
    )


def request_trace(metadata: Sequence[tuple[str, str | bytes]]) -> tuple[str, str] | None:
    """The trace the call carries in `traceparent` and `tracestate` metadata, read as on HTTP."""
    found = {key: value for key, value in metadata if key in ("traceparent", "tracestate")}
    parent, state = found.get("traceparent"), found.get("tracestate")
    return trace_context(
        parent if isinstance(parent, str) else None, state if isinstance(state, str) else None
    )


def invocation_headers(
    metadata: Sequence[tuple[str, str | bytes]],
    message: Any,
    *,
    drop_token: bool,
    trace: tuple[str, str] | None,
) -> list[tuple[bytes, bytes]]:
    """The HTTP request headers of a call's `metadata`, as daprd's InternalMetadataToHTTPHeader
    makes them: binary (`-bin`) keys, hop-by-hop names and those a `connection` key names
    dropped, `grpc-*` and the HTTP/2 pseudo-headers as `dapr-*`, the trace re-derived, the
    caller's `dapr-api-token` dropped once the guard checked it (daprd's auth interceptor
    deletes it); then the message's content type and the body's length."""
    pairs = [(key.lower(), value) for key, value in metadata if isinstance(value, str)]
    dropped = not_passed_on([value for key, value in pairs if key == "connection"], also=_NOT_FORWARDED)
    headers = []
    for key, value in pairs:
        if key in dropped or key.endswith("-bin") or (drop_token and key == "dapr-api-token"):
            continue
        if key == "authorization" and find_target("/", {"authorization": value}) is not None:
            continue  # Basic `dapr-app-id`: the HTTP route would read it as the target
        if key in _PSEUDO:
            key = "dapr-" + key[1:]
        elif key.startswith("grpc-"):
            key = "dapr-" + key
        headers.append((key.encode("latin-1"), value.encode("latin-1", "replace")))
    headers += [(name.encode(), value.encode()) for name, value in header_pairs(trace)]
    content_type = PROTOBUF if message.data.type_url else message.content_type
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    headers.append((b"content-length", str(len(message.data.value)).encode()))
    return headers


def invocation_scope(
    verb: str, app_id: str, message: Any, headers: list[tuple[bytes, bytes]], peer: str
) -> dict[str, Any]:
    """The ASGI scope of `/v1.0/invoke/{app_id}/method/{method}`. The path is the decoded one the
    route reads (the id escaped once more: the route unescapes it, as daprd its path parameter);
    the raw path has the method in one escaped segment, so that no `..` in it can route the
    request anywhere but to the invocation."""
    target = quote(app_id, safe="")
    method = message.method
    query = message.http_extension.querystring
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "2",
        "method": verb,
        "scheme": "http",
        "path": f"/v1.0/invoke/{target}/method/{method}",
        "raw_path": f"/v1.0/invoke/{quote(target, safe='')}/method/{quote(method, safe='')}".encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": (peer_host(peer) or "127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "extensions": {},
    }


class RouteAnswer:
    """What the invocation route answered: the target's status, headers and body, or the API's
    own `error` (its error answers report themselves through `ERROR_SINK`)."""

    __slots__ = ("chunks", "complete", "error", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        self.error: DaprAPIError | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)


async def call_route(api: SidecarAPI, scope: Scope, body: bytes) -> RouteAnswer:
    """Run the invocation route on `scope` with `body`. The caller stays until the gRPC call ends:
    its cancellation (the client went away, the deadline passed) cancels the invocation."""
    answer = RouteAnswer()
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # never resolved: cancelled with the call
        raise AssertionError("unreachable")  # pragma: no cover

    def sink(error_scope: Scope, error: DaprAPIError) -> None:
        if error_scope is scope and not answer.status:
            answer.error = error

    token = ERROR_SINK.set(sink)
    try:
        await api.serve_trusted(scope, receive, answer.send)
    except Exception:
        if not answer.complete:
            raise
        # The answer went out whole (a server's error middleware re-raises after its 500).
        logger.debug("an invocation's target raised after answering", exc_info=True)
    finally:
        ERROR_SINK.reset(token)
    return answer


async def reply(  # noqa: RET503
    context: Any, answer: RouteAnswer, trace: tuple[str, str] | None, *, grpc_app: bool = False
) -> Any:
    """daprd's answer for what the target answered: its headers as initial metadata, then the
    InvokeResponse of a 2xx, or the error of any other status. From a gRPC app (`grpc_app`),
    whose failed call the app channel answers as its status in JSON, that status itself, as
    daprd passes a gRPC app's status on (ErrorFromInternalStatus)."""
    metadata = answer_metadata(answer.headers, answer.status, trace, http=not grpc_app)
    await context.send_initial_metadata(metadata)
    body = answer.body
    app_status = _app_status(body) if grpc_app and not 200 <= answer.status < 300 else None
    if app_status is not None:
        trailer = ((errors.DETAILS_KEY, app_status.SerializeToString()),) if app_status.details else ()
        code = _CODES.get(app_status.code, grpc.StatusCode.UNKNOWN)
        await context.abort(code, app_status.message, trailing_metadata=trailer)
    if 200 <= answer.status < 300:
        content_type = next((v for k, v in answer.headers if k.lower() == b"content-type"), b"")
        return common_pb2.InvokeResponse(
            data=any_pb2.Any(value=body), content_type=content_type.decode("latin-1")
        )
    try:
        # daprd cuts the body at 63 bytes; a cut that is not UTF-8 can't be in a protobuf
        # string, and daprd then sends the status without its details.
        detail: str | None = body[:63].decode("utf-8")
    except UnicodeDecodeError:
        detail = None
    code, text, details = errors.from_http_status(answer.status, detail or "")
    await errors.abort(context, code, text, details if detail is not None else ())


def _app_status(body: bytes) -> Any:
    """The `google.rpc.Status` a gRPC app's failed call was answered with, as JSON; None if not one."""
    try:
        shown = json.loads(body)
    except ValueError:
        return None
    if not isinstance(shown, dict) or not isinstance(shown.get("code"), int):
        return None
    try:
        return json_format.ParseDict(shown, status_pb2.Status())
    except (TypeError, AttributeError, json_format.ParseError):  # details of unknown types
        return status_pb2.Status(code=shown["code"], message=str(shown.get("message", "")))


def answer_metadata(
    headers: Sequence[tuple[bytes, bytes]],
    status: int,
    trace: tuple[str, str] | None,
    *,
    http: bool = True,
) -> Metadata:
    """The target's answer headers as daprd's InternalMetadataToGrpcMetadata makes them: names in
    lower case, IANA's permanent ones prefixed `dapr-`, `-bin` values base64-decoded; the trace
    (the answer's own, else the request's) as `traceparent` and `tracestate`;
    and `dapr-http-status`. What gRPC can't carry (grpc-go's reserved names, a name or value
    that is not metadata's) is left out. The answer of a gRPC app (not `http`) was metadata to
    begin with: no prefix, no status, and not the framing the app channel added."""
    metadata: Metadata = []
    own: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in _ANSWER_TRACE:
            own.setdefault(name, value)
            continue
        if not http and name in ("content-type", "content-length"):
            continue
        if http and name in _PERMANENT:
            name = "dapr-" + name
        if name in _RESERVED or name.startswith("grpc-") or not _METADATA_KEY.match(name):
            continue
        if name.endswith("-bin"):
            with contextlib.suppress(ValueError):  # not base64: nothing daprd could decode
                metadata.append((name, base64.b64decode(value, validate=True)))
        elif _METADATA_VALUE.match(value):
            metadata.append((name, value))
    answered = trace_context(own.get("traceparent"), own.get("tracestate"))
    # daprd adds `grpc-trace-bin` too: grpcio's core keeps that key to itself, both ways.
    metadata += header_pairs(answered or trace)
    if http:
        metadata.append((STATUS_KEY, str(status)))
    return metadata
