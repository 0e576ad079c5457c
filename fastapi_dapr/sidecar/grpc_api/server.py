"""The gRPC API's server: `grpc.aio` in the running event loop, on one loopback address.

`GrpcServer` serves `servicer.DaprService` behind one guard, the gRPC API's
front door as `SidecarAPI._refusal` is the HTTP API's: with `DAPR_API_TOKEN` set
every call needs it in the `dapr-api-token` metadata (compared in constant time;
daprd's Unauthenticated otherwise), without one only loopback peers are answered
(the server listens on loopback only, and the peer is checked all the same). The
guard also counts every call in the metrics (daprd's `dapr_grpc_io_server_*`).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from ..addresses import names_this_machine
from . import errors

if TYPE_CHECKING:
    from ..api import SidecarAPI
    from .servicer import DaprService

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

TOKEN_KEY = "dapr-api-token"


def peer_host(peer: str) -> str:
    """The address of a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""  # unix sockets and the rest: not a loopback TCP peer


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


def _wrap(handler: grpc.RpcMethodHandler, guard: Guard, method: str) -> grpc.RpcMethodHandler:
    def unary(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            began = time.perf_counter()
            try:
                await guard.check(context)
                answer = await inner(request, context)
            except BaseException:
                guard.measure_failure(method, context, began)
                raise
            guard.measure(method, context, began)
            return answer

        return call

    def streaming(inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            began = time.perf_counter()
            try:
                await guard.check(context)
                async for answer in inner(request, context):
                    yield answer
            except BaseException:
                guard.measure_failure(method, context, began)
                raise
            guard.measure(method, context, began)

        return call

    serializers = {
        "request_deserializer": handler.request_deserializer,
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
        Streaming subscriptions are ended first: they would otherwise hold the whole grace."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.service.close()
        await server.stop(grace)
