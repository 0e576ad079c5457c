"""`DaprService`: the `dapr.proto.runtime.v1.Dapr` service, each RPC handed to its block's module.

The RPCs of blocks this sidecar does not serve answer as the HTTP API answers for
them (unserved.py); every other RPC of `DaprServicer` answers UNIMPLEMENTED, as
daprd does for what it lacks (the SDK's bulk-publish fallback relies on it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from . import errors, info, invoke, publish, streaming, unserved

if TYPE_CHECKING:
    from ..api import SidecarAPI
    from ..runtime import Runtime

__all__: list[str] = []

Context = Any  # grpc.aio.ServicerContext (grpcio ships no types)


class DaprService(dapr_pb2_grpc.DaprServicer):  # type: ignore[misc,unused-ignore]
    """The gRPC API of the runtime `api` serves (the same one the HTTP API serves)."""

    def __init__(self, api: SidecarAPI) -> None:
        self.api = api
        self.streams = streaming.Streams(self)

    async def running(self, context: Context) -> Runtime:
        """The runtime; daprd's Unavailable answer before it started."""
        runtime = self.api.current_runtime()
        if runtime is None:
            await errors.abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the sidecar has not started (embedded: it runs inside the app's lifespan)",
            )
        return runtime

    async def close(self, grace: float) -> None:
        """End what holds a call open (streaming subscriptions): the server is stopping; they
        have `grace` seconds to end (each in its own call), then are cancelled with their calls."""
        await self.streams.close(grace)

    async def closed(self) -> None:
        """Once their calls are cancelled: the streams' subscriptions have stopped."""
        await self.streams.closed()

    # -- pub/sub -------------------------------------------------------------

    async def PublishEvent(self, request: Any, context: Context) -> Any:
        return await publish.publish_event(self, request, context)

    async def BulkPublishEvent(self, request: Any, context: Context) -> Any:
        return await publish.bulk_publish_event(self, request, context)

    async def BulkPublishEventAlpha1(self, request: Any, context: Context) -> Any:
        return await publish.bulk_publish_event(self, request, context)

    def SubscribeTopicEventsAlpha1(self, request_iterator: Any, context: Context) -> AsyncIterator[Any]:
        return self.streams.subscribe(request_iterator, context)

    # -- invocation ----------------------------------------------------------

    async def InvokeService(self, request: Any, context: Context) -> Any:
        return await invoke.invoke_service(self, request, context)

    # -- secrets, metadata, shutdown -----------------------------------------

    async def GetSecret(self, request: Any, context: Context) -> Any:
        return await info.get_secret(self, request, context)

    async def GetBulkSecret(self, request: Any, context: Context) -> Any:
        return await info.get_bulk_secret(self, request, context)

    async def GetMetadata(self, request: Any, context: Context) -> Any:
        return await info.get_metadata(self, request, context)

    async def SetMetadata(self, request: Any, context: Context) -> Any:
        return await info.set_metadata(self, request, context)

    async def Shutdown(self, request: Any, context: Context) -> Any:
        return await info.shutdown(self, request, context)


def _unimplemented(name: str) -> Any:
    async def method(self: DaprService, request: Any, context: Context) -> Any:
        await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")

    method.__name__ = name
    return method


def _unserved(name: str) -> Any:
    async def method(self: DaprService, request: Any, context: Context) -> Any:
        return await unserved.answer(self, name, request, context)

    method.__name__ = name
    return method


# Every other RPC of the generated servicer: coroutines, as grpc.aio runs them.
for _name in dir(dapr_pb2_grpc.DaprServicer):
    if _name.startswith("_") or _name in DaprService.__dict__:
        continue
    setattr(DaprService, _name, _unserved(_name) if _name in unserved.ANSWERS else _unimplemented(_name))
