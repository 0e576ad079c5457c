"""Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`) and the gRPC app channel: the `[grpc]` extra.

Nothing here is imported unless gRPC is asked for (`Dapr(app, grpc_port=...)`,
`fastapi-dapr sidecar --dapr-grpc-port` or `--app-protocol grpc`); `require()`
says what is missing and how to install it. The services are the generated stubs
the official `dapr` package ships (`DaprServicer`, `AppCallbackStub`): no proto of
Dapr's is generated or copied here.

- server.py: the `grpc.aio` server, its guard (token, loopback; peer.py reads the caller) and
  its metrics
- servicer.py: `DaprServicer`'s methods, each handed to the module of its block
- errors.py: daprd's gRPC status codes and rich error details
- publish.py, invoke.py, info.py (secrets, metadata, shutdown), streaming.py and
  stream_event.py (`SubscribeTopicEventsAlpha1`; the runtime side is ../dynamic.py),
  unserved.py (the blocks this sidecar does not serve)
- app_channel.py, app_deliveries.py, app_invoke.py: an app that serves `AppCallback`
  (`--app-protocol grpc`)
"""

from __future__ import annotations

__all__: list[str] = []

INSTALL = "pip install 'fastapi-dapr[grpc]'"


def require(what: str) -> None:
    """Raise `ImportError` naming the install command when the `[grpc]` extra is missing."""
    try:
        import grpc  # noqa: F401
        import grpc_status  # noqa: F401
        from dapr.proto.runtime.v1 import dapr_pb2_grpc  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{what} needs gRPC, which is an optional extra: {INSTALL} (missing: {exc.name})"
        ) from None
