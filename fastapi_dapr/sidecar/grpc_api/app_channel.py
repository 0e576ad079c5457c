"""The gRPC app channel of the standalone sidecar (`--app-protocol grpc`): an app serving Dapr's
`AppCallback` service, as daprd reaches it.

`GrpcAppChannel` has the HTTP `AppChannel`'s interface: an ASGI application the
runtime is given as its app, `wait_until_listening`, `subscriptions` and `close`.
So the delivery engine and the invocation route run unchanged, and the channel
turns what they post into gRPC calls (one `grpc.aio` channel to the app):

- a POST to one of the channel's delivery paths is a delivery: `OnTopicEvent`, or
  `OnBulkTopicEvent` for a bulk subscription (app_deliveries.py);
- anything else is an invocation of the app's id: `OnInvoke` (app_invoke.py).

The delivery paths are the channel's own: `delivery_routes` gives each path of each
subscription (the app's, from `ListTopicSubscriptions`, and the declarative ones) a
path `/#grpc/N`. No invocation can reach such a path (daprd refuses `#` in a method),
so a delivery is never taken for an invocation, nor the other way round; the path the
app gave goes in the envelope's `path`, which `dapr.ext.grpc` dispatches on, and is
what the metadata lists (`app_path`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import empty_pb2
from starlette.types import Receive, Scope, Send

from ..._match import check_match
from ..._subscription import BulkSubscribe, TopicSubscription
from ..app_channel import AppChannelError
from ..cel import Rules
from ..delivery import Route
from .app_deliveries import Target, deliver, deliver_bulk
from .app_invoke import invoke

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_WAIT_REPORT = 5.0  # seconds between two "still waiting for the app" log lines
_SUBSCRIBE_RETRIES = (0.5, 0.75, 1.0)  # daprd's DaprBuiltInInitializationRetries
_PREFIX = "/#grpc/"
_CLOSE_GRACE = 1.0  # seconds: what is in flight is done when the sidecar closes the channel


class GrpcAppChannel:
    """Calls the `AppCallback` service of the app at `host:port` (h2c)."""

    protocol = "grpc"

    def __init__(self, host: str, port: int, *, max_body_size: int = 4 * 1024 * 1024) -> None:
        self.host, self.port = host, port
        self.max_body_size = max_body_size
        self._channel: Any = None
        self._stub: Any = None
        self._alpha: Any = None
        self._targets: dict[str, Target] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _connection(self) -> Any:
        """The channel to the app, made on first use (in the running loop)."""
        if self._channel is None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            options = [
                ("grpc.enable_http_proxy", 0),  # the app is local: never through a proxy
                ("grpc.max_send_message_length", -1),
                # daprd's limit on an invocation's answer (MaxCallRecvMsgSize).
                ("grpc.max_receive_message_length", self.max_body_size),
                # Reconnect soon after the app (re)starts, as the HTTP channel tries every 50 ms.
                ("grpc.initial_reconnect_backoff_ms", 50),
                ("grpc.min_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            self._channel = grpc.aio.insecure_channel(f"{host}:{self.port}", options=options)
            self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)  # type: ignore[no-untyped-call]
            self._alpha = appcallback_pb2_grpc.AppCallbackAlphaStub(self._channel)  # type: ignore[no-untyped-call]
        return self._channel

    # -- the ASGI side ---------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._connection()
        target = self._targets.get(scope["path"]) if scope["method"] == "POST" else None
        if target is None:
            await invoke(self._stub, scope, receive, send)
            return
        chunks = []
        while True:  # the engine sends a delivery's body whole, in one message
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if target.route.bulk is not None:
            status, answer = await deliver_bulk(self._stub, self._alpha, target, scope["headers"], body)
        else:
            status, answer = await deliver(self._stub, target, scope["headers"], body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer, "more_body": False})

    # -- the delivery paths ----------------------------------------------------

    def delivery_routes(self, routes: list[Route]) -> list[Route]:
        """`routes` with the channel's delivery path in place of each path (see the module's text)."""
        self._targets = {}

        def assign(route: Route, path: str) -> str:
            synthetic = f"{_PREFIX}{len(self._targets)}"
            self._targets[synthetic] = Target(route, path)
            return synthetic

        planned = []
        for route in routes:
            rules = [(match, assign(route, path)) for match, path in route.rules.rules()]
            default = route.rules.default
            planned.append(
                dataclasses.replace(
                    route, rules=Rules(rules, None if default is None else assign(route, default))
                )
            )
        return planned

    def app_path(self, path: str) -> str:
        """The path the app gave for one of the channel's delivery paths (others unchanged)."""
        target = self._targets.get(path)
        return target.path if target is not None else path

    # -- the life cycle --------------------------------------------------------

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(_CLOSE_GRACE)

    async def wait_until_listening(self, timeout: float | None) -> None:
        """Return once the app accepts a gRPC connection (the channel is READY), as daprd
        waits for its app; until `timeout` seconds (None: for ever). Raises `AppChannelError`."""
        channel = self._connection()
        loop = asyncio.get_running_loop()
        started = reported = loop.time()
        while True:
            state = channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                return
            now = loop.time()
            if timeout is not None and now - started >= timeout:
                raise AppChannelError(
                    f"the app did not accept a gRPC connection on {self.address} within {timeout:g}s "
                    f"(the channel is {state.name}); is --app-port right, is the app running, and does "
                    "it serve gRPC (--app-protocol grpc)?"
                )
            if now - reported >= _WAIT_REPORT:
                reported = now
                logger.info("waiting for the gRPC app on %s (%.0fs so far)", self.address, now - started)
            wait = _WAIT_REPORT if timeout is None else min(_WAIT_REPORT, timeout - (now - started))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(channel.wait_for_state_change(state), max(wait, 0.01))

    async def subscriptions(self, app_id: str, app_api_token: str | None) -> list[TopicSubscription]:
        """The app's subscriptions, from `ListTopicSubscriptions`, read as daprd reads them.

        UNIMPLEMENTED means none; another error is retried three times, then raises
        `AppChannelError` (which the sidecar logs, and goes on, as daprd does); a rule
        that does not compile refuses the whole list (`SubscriptionError`)."""
        self._connection()
        metadata = (("dapr-api-token", app_api_token),) if app_api_token else None
        for pause in (*_SUBSCRIBE_RETRIES, None):
            try:
                response = await self._stub.ListTopicSubscriptions(empty_pb2.Empty(), metadata=metadata)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    logger.info("the gRPC app does not implement ListTopicSubscriptions: no subscriptions")
                    return []
                if pause is None:
                    raise AppChannelError(
                        f"ListTopicSubscriptions on the app at {self.address} failed: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from None
                await asyncio.sleep(pause)
        return [_subscription(item, index) for index, item in enumerate(response.subscriptions)]


def _subscription(item: Any, index: int) -> TopicSubscription:
    """One `TopicSubscription` of the app's answer, as daprd reads it: no routes, or routes
    with neither rules nor a default, is the default path `""`."""
    where = f"ListTopicSubscriptions item {index} (pubsub {item.pubsub_name!r}, topic {item.topic!r})"
    rules = []
    for number, rule in enumerate(item.routes.rules):
        if rule.match.strip():
            check_match(rule.match.strip(), f"{where} rule {number}")
        rules.append((rule.match, rule.path))
    default: str | None = item.routes.default or None
    if not rules and default is None:
        default = ""
    bulk = None
    if item.HasField("bulk_subscribe") and item.bulk_subscribe.enabled:
        count, wait = item.bulk_subscribe.max_messages_count, item.bulk_subscribe.max_await_duration_ms
        # daprd's bulk subscriber takes 0 or less as its default, as for an HTTP app.
        bulk = BulkSubscribe(count if count > 0 else 100, wait if wait > 0 else 1000)
    return TopicSubscription(
        pubsub=item.pubsub_name,
        topic=item.topic,
        rules=tuple(rules),
        default=default,
        dead_letter_topic=item.dead_letter_topic or None,
        metadata=dict(item.metadata),
        bulk=bulk,
        handlers=(),
    )
