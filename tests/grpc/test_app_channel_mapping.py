"""The gRPC app channel's mapping, in process: what it sends an `AppCallback` server (a fake one,
here) for the engine's POSTs and the invocation route's requests, and how it reads the answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from fastapi_dapr._exceptions import SubscriptionError
from fastapi_dapr._status import Status
from fastapi_dapr._subscription import BulkSubscribe
from fastapi_dapr.sidecar.answers import bulk_statuses, classify
from fastapi_dapr.sidecar.app_channel import AppChannelError
from fastapi_dapr.sidecar.asgi import call_app, http_scope
from fastapi_dapr.sidecar.cel import Rules
from fastapi_dapr.sidecar.delivery import ZERO_TRACEPARENT, Route
from fastapi_dapr.sidecar.grpc_api.app_channel import GrpcAppChannel

from ..sidecar.test_standalone import free_port

Handler = Callable[[Any, Any], Awaitable[Any]]


class FakeApp(appcallback_pb2_grpc.AppCallbackServicer, appcallback_pb2_grpc.AppCallbackAlphaServicer):
    """Answers each RPC with `handlers[name]` (UNIMPLEMENTED without one); `calls` what came."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    async def _serve(self, name: str, request: Any, context: Any) -> Any:
        self.calls.append((name, request, dict(context.invocation_metadata())))
        handler = self.handlers.get(name)
        if handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")
        return await handler(request, context)

    async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        return await self._serve("ListTopicSubscriptions", request, context)

    async def OnTopicEvent(self, request: Any, context: Any) -> Any:
        return await self._serve("OnTopicEvent", request, context)

    async def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
        return await self._serve("OnBulkTopicEvent", request, context)

    async def OnBulkTopicEventAlpha1(self, request: Any, context: Any) -> Any:
        return await self._serve("OnBulkTopicEventAlpha1", request, context)

    async def OnInvoke(self, request: Any, context: Any) -> Any:
        return await self._serve("OnInvoke", request, context)


def answer(message: Any) -> Handler:
    async def handler(request: Any, context: Any) -> Any:
        return message

    return handler


def aborting(code: grpc.StatusCode, text: str) -> Handler:
    async def handler(request: Any, context: Any) -> Any:
        await context.abort(code, text)

    return handler


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeApp, GrpcAppChannel]]:
    app = FakeApp()
    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(app, server)
    appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(app, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = GrpcAppChannel("127.0.0.1", port)
    try:
        await channel.wait_until_listening(5)
        yield app, channel
    finally:
        await channel.close()
        await server.stop(None)


def route(topic: str = "orders", *, bulk: BulkSubscribe | None = None, raw: bool = False) -> Route:
    metadata = {"rawPayload": "true"} if raw else {}
    return Route("pubsub", topic, Rules([], ""), None, bulk, "PROGRAMMATIC", metadata)


EVENT = {
    "id": "e1",
    "source": "pub",
    "type": "com.dapr.event.sent",
    "specversion": "1.0",
    "datacontenttype": "application/json",
    "data": {"n": 1, "tag": "<b>"},
    "topic": "orders",
    "pubsubname": "pubsub",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


async def test_subscriptions_are_read_as_daprd_reads_them(fake: tuple[FakeApp, GrpcAppChannel]) -> None:
    app, channel = fake
    subscriptions = [
        appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic="plain"),
        appcallback_pb2.TopicSubscription(
            pubsub_name="pubsub",
            topic="ruled",
            routes=appcallback_pb2.TopicRoutes(
                rules=[appcallback_pb2.TopicRule(match='event.type == "a"', path="a")], default="/other"
            ),
            dead_letter_topic="dead",
            metadata={"rawPayload": "true"},
            bulk_subscribe=appcallback_pb2.BulkSubscribeConfig(enabled=True, max_messages_count=0),
        ),
    ]
    app.handlers["ListTopicSubscriptions"] = answer(
        appcallback_pb2.ListTopicSubscriptionsResponse(subscriptions=subscriptions)
    )
    plain, ruled = await channel.subscriptions("myapp", "app-secret")
    assert (plain.topic, plain.rules, plain.default, plain.bulk, plain.dead_letter_topic) == (
        "plain",
        (),
        "",
        None,
        None,
    )
    assert (ruled.rules, ruled.default, ruled.dead_letter_topic) == (
        (('event.type == "a"', "a"),),
        "/other",
        "dead",
    )
    assert ruled.bulk == BulkSubscribe(100, 1000)  # daprd's defaults for 0
    assert ruled.raw_payload
    assert app.calls[0][2]["dapr-api-token"] == "app-secret"

    bad = appcallback_pb2.TopicRoutes(rules=[appcallback_pb2.TopicRule(match="data.x > 1", path="x")])
    app.handlers["ListTopicSubscriptions"] = answer(
        appcallback_pb2.ListTopicSubscriptionsResponse(
            subscriptions=[appcallback_pb2.TopicSubscription(pubsub_name="p", topic="t", routes=bad)]
        )
    )
    with pytest.raises(SubscriptionError, match=r"data\.x > 1"):
        await channel.subscriptions("myapp", None)
    del app.handlers["ListTopicSubscriptions"]
    assert await channel.subscriptions("myapp", None) == []  # UNIMPLEMENTED: none


async def deliver(
    channel: GrpcAppChannel, topic_route: Route, body: bytes, headers: list[tuple[bytes, bytes]]
) -> Any:
    (planned,) = channel.delivery_routes([topic_route])
    path = planned.rules.route({})
    assert path is not None
    assert path.startswith("/#grpc/")
    return await call_app(channel, "POST", path, headers, body)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(0, Status.SUCCESS), (1, Status.RETRY), (2, Status.DROP), (7, None)],
)
async def test_a_delivery_is_an_on_topic_event(
    fake: tuple[FakeApp, GrpcAppChannel], status: int, expected: Status | None
) -> None:
    app, channel = fake
    app.handlers["OnTopicEvent"] = answer(appcallback_pb2.TopicEventResponse(status=status))
    headers = [
        (b"content-type", b"application/cloudevents+json"),
        (b"dapr-api-token", b"app-secret"),
        (b"pubsubname", b"pubsub"),
        (b"traceparent", EVENT["traceparent"].encode()),
    ]
    response = await deliver(channel, route(), json.dumps(EVENT).encode(), headers)
    assert classify(response).status is expected
    ((_, request, metadata),) = app.calls
    assert (request.id, request.source, request.type, request.spec_version) == (
        "e1",
        "pub",
        "com.dapr.event.sent",
        "1.0",
    )
    assert (request.topic, request.pubsub_name, request.path) == ("orders", "pubsub", "")
    assert request.data == b'{"n":1,"tag":"\\u003cb\\u003e"}'  # as Go's json.Marshal writes it
    assert dict(request.extensions) == {
        "topic": "orders",
        "pubsubname": "pubsub",
        "traceparent": EVENT["traceparent"],
    }
    assert metadata["dapr-api-token"] == "app-secret"
    assert metadata["traceparent"] == EVENT["traceparent"]
    assert "content-type" not in metadata or metadata["content-type"] == "application/grpc"


async def test_delivery_errors_are_read_as_daprd_reads_them(fake: tuple[FakeApp, GrpcAppChannel]) -> None:
    app, channel = fake
    raw = {
        **EVENT,
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(b"\x00\x01").decode(),
    }
    del raw["data"]
    headers = [(b"traceparent", ZERO_TRACEPARENT.encode())]
    # UNIMPLEMENTED (no handler): dropped, as daprd drops it.
    dropped = classify(await deliver(channel, route(), json.dumps(raw).encode(), headers))
    assert (dropped.status, dropped.http_status) == (Status.DROP, 404)
    ((_, request, metadata),) = app.calls
    assert request.data == b"\x00\x01"  # data_base64, decoded
    assert "traceparent" not in metadata  # no trace: none sent
    # Any other gRPC error is retried, its code standing for the status (resiliency's matching).
    app.handlers["OnTopicEvent"] = aborting(grpc.StatusCode.UNAVAILABLE, "busy")
    retried = classify(await deliver(channel, route(), json.dumps(EVENT).encode(), []))
    assert (retried.status, retried.http_status) == (None, 14)


async def test_a_bulk_delivery_falls_back_to_alpha1_and_reads_each_status(
    fake: tuple[FakeApp, GrpcAppChannel],
) -> None:
    app, channel = fake
    statuses = [
        appcallback_pb2.TopicEventBulkResponseEntry(entry_id="a", status=0),
        appcallback_pb2.TopicEventBulkResponseEntry(entry_id="b", status=2),
    ]
    app.handlers["OnBulkTopicEventAlpha1"] = answer(appcallback_pb2.TopicEventBulkResponse(statuses=statuses))
    body = {
        "id": "batch",
        "type": "com.dapr.event.sent.bulk",
        "topic": "orders",
        "pubsubname": "pubsub",
        "metadata": {"pubsubName": "pubsub"},
        "entries": [
            {
                "entryId": e,
                "event": base64.b64encode(e.encode()).decode(),
                "metadata": {},
                "contentType": "text/plain",
            }
            for e in ("a", "b", "c")
        ],
    }
    bulk_route = route(bulk=BulkSubscribe(), raw=True)
    response = await deliver(channel, bulk_route, json.dumps(body).encode(), [(b"dapr-api-token", b"t")])
    got = bulk_statuses(response, ["a", "b", "c"])
    assert [got[e].status for e in "abc"] == [Status.SUCCESS, Status.DROP, None]  # c: no status, retried
    assert [name for name, _, _ in app.calls] == ["OnBulkTopicEvent", "OnBulkTopicEventAlpha1"]
    request = app.calls[-1][1]
    assert (request.id, request.topic, request.pubsub_name, request.path) == ("batch", "orders", "pubsub", "")
    assert [entry.bytes for entry in request.entries] == [b"a", b"b", b"c"]


def invocation_scope(
    verb: str, method: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> dict[str, Any]:
    return http_scope(verb, "/" + method, headers, query_string=query)


async def test_an_invocation_is_an_on_invoke(fake: tuple[FakeApp, GrpcAppChannel]) -> None:
    app, channel = fake
    data = any_pb2.Any(type_url="type.googleapis.com/x.Y", value=b"proto")

    async def handler(request: Any, context: Any) -> Any:
        await context.send_initial_metadata((("x-answer", "1"),))
        return common_pb2.InvokeResponse(data=data, content_type="text/plain")

    app.handlers["OnInvoke"] = handler
    headers = [
        (b"content-type", b"text/plain"),
        (b"accept", b"*/*"),
        (b"x-custom", b"yes"),
        (b"x-thing-bin", base64.b64encode(b"\x00\xff")),
        (b"host", b"127.0.0.1"),
        (b"x-bad", "é".encode("latin-1")),  # not ASCII: no gRPC metadata can carry it
    ]
    scope = invocation_scope("PUT", "orders/1", b"a=1&b=2", headers)
    response = await _call(channel, scope, b"body")
    assert response["status"] == 200
    assert response["headers"][b"content-type"] == b"application/x-protobuf"  # a type URL, as daprd
    assert response["headers"][b"x-answer"] == b"1"
    assert response["body"] == b"proto"
    ((_, request, metadata),) = app.calls
    assert request.method == "orders/1"
    assert (request.data.value, request.data.type_url, request.content_type) == (b"body", "", "text/plain")
    assert (request.http_extension.verb, request.http_extension.querystring) == (
        common_pb2.HTTPExtension.PUT,
        "a=1&b=2",
    )
    assert (metadata["dapr-content-type"], metadata["dapr-accept"], metadata["x-custom"]) == (
        "text/plain",
        "*/*",
        "yes",
    )
    assert metadata["x-thing-bin"] == b"\x00\xff"
    assert not {"host", "dapr-host", "x-bad"} & set(metadata)


async def test_an_invocation_error_is_answered_as_daprd_answers_http_callers(
    fake: tuple[FakeApp, GrpcAppChannel],
) -> None:
    app, channel = fake
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="GONE", domain="app"))
    rich = status_pb2.Status(code=5, message="no such order", details=[detail])

    async def handler(request: Any, context: Any) -> Any:
        context.set_trailing_metadata((("grpc-status-details-bin", rich.SerializeToString()),))
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")

    app.handlers["OnInvoke"] = handler
    response = await _call(channel, invocation_scope("GET", "orders/9", b"", []), b"")
    assert response["status"] == 404
    assert json.loads(response["body"]) == {
        "code": 5,
        "message": "no such order",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "GONE", "domain": "app"}],
    }
    del app.handlers["OnInvoke"]
    missing = await _call(channel, invocation_scope("POST", "nothing", b"", []), b"")
    assert (missing["status"], json.loads(missing["body"])["code"]) == (501, 12)


async def _call(channel: GrpcAppChannel, scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    sent: list[Any] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the caller stays: a server's receive waits
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await channel(scope, receive, send)
    start, end = sent
    return {"status": start["status"], "headers": dict(start["headers"]), "body": end["body"]}


async def test_an_app_that_does_not_listen_is_a_clear_error() -> None:
    channel = GrpcAppChannel("127.0.0.1", free_port())
    try:
        with pytest.raises(AppChannelError, match="did not accept a gRPC connection"):
            await channel.wait_until_listening(0.3)
        route_ = route()
        unreachable = classify(await deliver(channel, route_, json.dumps(EVENT).encode(), []))
        assert (unreachable.status, unreachable.http_status) == (None, 14)  # UNAVAILABLE: retried
    finally:
        await channel.close()
