"""The gRPC API's server: `grpc.aio` in the running event loop, on one loopback address.

`GrpcServer` serves `servicer.DaprService` behind one guard, the gRPC API's
front door as `SidecarAPI._refusal` is the HTTP API's: with `DAPR_API_TOKEN` set
every call needs it in the `dapr-api-token` metadata (compared in constant time;
daprd's Unauthenticated otherwise), without one only loopback peers are answered
(the server listens on loopback only, and the peer is checked all the same). The
guard also counts every call in the metrics (daprd's `dapr_grpc_io_server_*`).

Past the guard, what is not the caller's doing still gets a gRPC error of its own,
never grpcio's UNKNOWN with a Python exception's text: a request that is not a
message of its type is grpc-go's INTERNAL "error unmarshalling request", and a
handler's own failure INTERNAL (its traceback logged). The call's metadata is held
to the HTTP API's header limit (RESOURCE_EXHAUSTED past it), as daprd holds its
gRPC headers to its read buffer's.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from google.protobuf.message import DecodeError

from ..addresses import names_this_machine
from . import errors
from .peer import peer_host

if TYPE_CHECKING:
    from ..api import SidecarAPI
    from .servicer import DaprService

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

TOKEN_KEY = "dapr-api-token"


class Guard:
    """Checks each call before its handler runs, and measures it after."""

    def __init__(self, api: SidecarAPI) -> None:
        self.api = api

    async def check(self, context: Any) -> None:
        token = self.api.api_token
        if token:
            given = [value for key, value in context.invocation_metadata() or () if key == TOKEN_KEY]
            if not given:
                code, message, details = errors.from_http_status(401, "missing api token in request metadata")
                await errors.abort(context, code, message, details)
            value = given[0]
            if not hmac.compare_digest(value.encode() if isinstance(value, str) else value, token.encode()):
                code, message, details = errors.from_http_status(
                    401, "authentication error: api token mismatch"
                )
                await errors.abort(context, code, message, details)
            return
        if not names_this_machine(peer_host(context.peer())):
            await errors.abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "without a token the Dapr gRPC API answers only local clients; to allow others, "
                "set DAPR_API_TOKEN and send it in the dapr-api-token metadata",
            )

    def measure(self, method: str, context: Any, began: float) -> None:
        metrics = self.api.metrics
        if metrics is None:
            return
        code = context.code() if hasattr(context, "code") else None
        status = code.name if isinstance(code, grpc.StatusCode) else "OK"
        metrics.grpc_completed_rpc(method, status, (time.perf_counter() - began) * 1000)

    def measure_failure(self, method: str, context: Any, began: float) -> None:
        metrics = self.api.metrics
        if metrics is None:
            return
        code = context.code() if hasattr(context, "code") else None
        status = (
            code.name if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK else "UNKNOWN"
        )
        metrics.grpc_completed_rpc(method, status, (time.perf_counter() - began) * 1000)


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler, self.guard, handler_call_details.method)


@contextlib.asynccontextmanager
async def _answered(context: Any, method: str) -> AsyncIterator[None]:
    """Around a handler: a request that did not decode answers grpc-go's INTERNAL; a handler's
    own failure (a bug, never the caller's) is logged with its traceback and the caller gets
    INTERNAL, not grpcio's UNKNOWN with the exception's text. Aborts pass through."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except errors.Undecodable as exc:
        await errors.abort(context, grpc.StatusCode.INTERNAL, str(exc))
    except Exception:
        logger.exception("the gRPC API's %s failed", method)
        await errors.abort(context, grpc.StatusCode.INTERNAL, f"internal error of the sidecar in {method}")


def _decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering what it can't decode as an `Undecodable` (grpcio's own answer
    would be UNKNOWN with the exception's text), which the handler raises, past the guard."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Undecoded(str(exc))

    return deserialize


class _Undecoded(NamedTuple):
    problem: str


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecoded):
        raise errors.Undecodable(request.problem, streamed=False)
    return request


class _Requests:
    """A stream's requests, each decoded, or `Undecodable` raised."""

    def __init__(self, requests: Any) -> None:
        self._requests = requests
        self._reader: Any = None  # opened at the first read: a handler may read none

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        if self._reader is None:
            self._reader = self._requests.__aiter__()
        request = await self._reader.__anext__()
        if isinstance(request, _Undecoded):
            raise errors.Undecodable(request.problem, streamed=True)
        return request


def _wrap(handler: grpc.RpcMethodHandler, guard: Guard, method: str) -> grpc.RpcMethodHandler:
    requests = _Requests if handler.request_streaming else _decoded

    def unary(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            began = time.perf_counter()
            try:
                await guard.check(context)
                async with _answered(context, method):
                    answer = await inner(requests(request), context)
            except BaseException:
                guard.measure_failure(method, context, began)
                raise
            guard.measure(method, context, began)
            return answer

        return call

    def streaming(inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            began = time.perf_counter()
            try:
                await guard.check(context)
                async with _answered(context, method):
                    answers = inner(requests(request), context)
                    if inspect.isawaitable(answers):  # a coroutine handler (one that only aborts)
                        await answers
                    else:
                        async for answer in answers:
                            yield answer
            except BaseException:
                guard.measure_failure(method, context, began)
                raise
            guard.measure(method, context, began)

        return call

    serializers = {
        "request_deserializer": _decoding(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **serializers)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **serializers)


class GrpcServer:
    """Dapr's gRPC API for the runtime `api` serves, on `host`."""

    def __init__(self, api: SidecarAPI, *, host: str = "127.0.0.1") -> None:
        from .servicer import DaprService

        self.api = api
        self.host = host
        self.port: int | None = None
        self.service: DaprService = DaprService(api)
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int) -> int:
        """Listen on `port` (0: any free one) and serve; the port. `OSError` if it is taken."""
        limit = self.api.max_body_size
        server = grpc.aio.server(
            interceptors=[_Interceptor(Guard(self.api))],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                # The call's metadata: the HTTP API's header limit (grpc's own refuses at random
                # between 8 and 16 KiB).
                ("grpc.max_metadata_size", self.api.max_header_size),
                ("grpc.absolute_max_metadata_size", self.api.max_header_size),
                ("grpc.so_reuseport", 0),  # a taken port is an error, never a shared one
            ],
        )
        dapr_pb2_grpc.add_DaprServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        address = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"
        try:
            bound: int = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises when the port cannot be bound
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = bound
        return bound

    async def stop(self, grace: float) -> None:
        """Take no new calls; in-flight ones have `grace` seconds to finish, then are cancelled.
        Streaming subscriptions are ended first (they would otherwise hold the whole grace),
        within the grace too: a client that reads nothing holds its stream until it is cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        began = time.monotonic()
        await self.service.close(grace)
        await server.stop(max(0.0, grace - (time.monotonic() - began)))
        await self.service.closed()
