"""The limit of bench/grpc_publish.py: a process serving nothing but Dapr's `PublishEvent`,
answering `Empty` at once, with `grpc.aio` on the same event loop as the embedded app
(uvloop when installed, as uvicorn picks it).

The official SDK's clients ask the sidecar's HTTP health endpoint before their first call,
so a loopback HTTP listener answers every request with 204: the SDK runs unchanged.

    python bench/apps/bare_grpc.py   # prints `bare grpc: gRPC on PORT, HTTP on PORT` once ready

SIGTERM stops it (in-flight calls get a second). With BENCH_PROFILE=PATH it serves under cProfile.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from google.protobuf import empty_pb2

EMPTY = empty_pb2.Empty()
NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class BarePublish(dapr_pb2_grpc.DaprServicer):  # type: ignore[misc]
    """Every RPC of Dapr's service but PublishEvent answers UNIMPLEMENTED (the generated base)."""

    async def PublishEvent(self, request: Any, context: Any) -> Any:
        return EMPTY


async def _healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """204 to each request on the connection, whatever it asks (the SDK's health probe)."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(NO_CONTENT)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve() -> None:
    server = grpc.aio.server()
    dapr_pb2_grpc.add_DaprServicer_to_server(BarePublish(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    health = await asyncio.start_server(_healthz, "127.0.0.1", 0)
    http_port = health.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"bare grpc: gRPC on {port}, HTTP on {http_port}", flush=True)
    profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile stats while serving
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            await stop.wait()
        finally:
            profiler.disable()
            profiler.dump_stats(profile)
    else:
        await stop.wait()
    health.close()
    await server.stop(1.0)


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
        return
    uvloop.run(serve())


if __name__ == "__main__":
    main()
