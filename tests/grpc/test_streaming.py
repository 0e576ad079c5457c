"""Streaming subscriptions (SubscribeTopicEventsAlpha1) with the official SDK in its own process:
SUCCESS, RETRY and DROP, many messages in flight, dead letters after the retries, the metadata,
daprd's errors, and a clean unsubscribe (no phantom subscriber: dapr/dapr#10228)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..sidecar.test_standalone import running
from .kit import GrpcApp, GrpcSidecar, run_sdk

pytestmark = pytest.mark.process

# What every SDK process here starts with: publishing and reading the metadata over HTTP.
PRELUDE = """
    import json, os, time, urllib.request
    BASE = "http://127.0.0.1:" + os.environ["DAPR_HTTP_PORT"]

    def publish(topic, data, pubsub="pubsub"):
        request = urllib.request.Request(
            f"{BASE}/v1.0/publish/{pubsub}/{topic}", data=json.dumps(data).encode(),
            headers={"content-type": "application/json"}, method="POST")
        urllib.request.urlopen(request).read()

    def streaming(topic):
        body = json.load(urllib.request.urlopen(BASE + "/v1.0/metadata"))
        return [s for s in body["subscriptions"] if s["topic"] == topic and s["type"] == "STREAMING"]

    def grpc_streaming(topic):  # GetMetadata over gRPC: the subscriptions' types
        import grpc
        from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2
        with grpc.insecure_channel("127.0.0.1:" + os.environ["DAPR_GRPC_PORT"]) as channel:
            answer = dapr_pb2_grpc.DaprStub(channel).GetMetadata(metadata_pb2.GetMetadataRequest())
        kinds = metadata_pb2.PubsubSubscriptionType
        return [kinds.Name(s.type) for s in answer.subscriptions if s.topic == topic]

    def streaming_gone(topic):
        deadline = time.monotonic() + 10  # the server unsubscribes once it sees the cancel
        while streaming(topic) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not streaming(topic)

    def fields(message):
        return {"id": message.id(), "data": message.data(), "topic": message.topic(),
                "pubsub": message.pubsub_name(), "type": message.type(), "source": message.source(),
                "spec": message.spec_version(), "content_type": message.data_content_type(),
                "extensions": sorted(message.extensions())}
"""

ANSWERS = (
    PRELUDE
    + """
    from dapr.clients import DaprClient

    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "streamed")
        listed, grpc_listed = streaming("streamed"), grpc_streaming("streamed")
        for n in (1, 2, 3):
            publish("streamed", {"n": n})
        seen, first = [], {}
        while len(seen) < 4:  # 1, 2 (RETRY), 2 again, 3
            message = subscription.next_message()
            n = message.data()["n"]
            seen.append((n, message.id()))
            first.setdefault(n, fields(message))
            if n == 1:
                subscription.respond_success(message)
            elif n == 2 and [s for s in seen if s[0] == 2] == [seen[-1]]:
                subscription.respond_retry(message)
            elif n == 2:
                subscription.respond_success(message)
            else:
                subscription.respond_drop(message)
        publish("streamed", {"n": 4})  # nothing acked or dropped comes back before it
        after = subscription.next_message()
        subscription.respond_success(after)
        subscription.close()
        gone = streaming_gone("streamed")
        publish("streamed", {"n": 5})  # nobody subscribes now: discarded (daprd's in-memory), no error
        print(json.dumps({"listed": listed, "grpc_listed": grpc_listed, "seen": seen, "first": first,
                          "after": after.data(), "gone": gone, "grpc_after": grpc_streaming("streamed")}))
"""
)


@pytest.mark.parametrize("mode", ["embedded", "standalone"])
async def test_messages_answered_success_retry_and_drop(mode: str) -> None:
    peer: Any = GrpcApp() if mode == "embedded" else GrpcSidecar("streamer", None)
    async with running(peer):
        result = await run_sdk(ANSWERS, http_port=peer.port, grpc_port=peer.grpc_port)
    (listed,) = result["listed"]
    assert listed["pubsubname"] == "pubsub"
    assert listed["rules"] == [{"match": "", "path": "/"}]
    assert result["grpc_listed"] == ["STREAMING"]
    assert result["grpc_after"] == []
    numbers = [n for n, _ in result["seen"]]
    assert sorted(numbers) == [1, 2, 2, 3]
    retried = [event_id for n, event_id in result["seen"] if n == 2]
    assert retried[0] == retried[1]  # the same message again after RETRY
    assert result["after"] == {"n": 4}  # SUCCESS and DROP are not delivered again
    first = result["first"]["1"]
    assert first["topic"] == "streamed"
    assert first["pubsub"] == "pubsub"
    assert first["content_type"] == "application/json"
    assert first["spec"] == "1.0"
    assert first["type"] == "com.dapr.event.sent"
    assert first["data"] == {"n": 1}
    assert {"pubsubname", "topic", "traceparent", "time"} <= set(first["extensions"])
    assert "data" not in first["extensions"]
    assert "id" not in first["extensions"]
    assert result["gone"]


IN_FLIGHT = (
    PRELUDE
    + """
    from dapr.clients import DaprClient

    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "busy")
        for n in range(20):
            publish("busy", {"n": n})
        held = [subscription.next_message() for _ in range(20)]  # all before any answer
        for message in reversed(held):
            subscription.respond_success(message)
        publish("busy", {"n": "marker"})
        marker = subscription.next_message()
        subscription.respond_success(marker)
        subscription.close()
        gone = streaming_gone("busy")
        again = client.subscribe("pubsub", "busy")  # daprd 1.18.1 kept a phantom subscriber here
        for n in range(10):
            publish("busy", {"n": 100 + n})
        fresh = []
        for _ in range(10):
            message = again.next_message()
            fresh.append(message.data()["n"])
            again.respond_success(message)
        again.close()
        print(json.dumps({"held": sorted(m.data()["n"] for m in held), "marker": marker.data(),
                          "gone": gone, "fresh": sorted(fresh)}))
"""
)


async def test_many_in_flight_then_a_new_subscription_gets_everything() -> None:
    app = GrpcApp()
    async with running(app):
        result = await run_sdk(IN_FLIGHT, http_port=app.port, grpc_port=app.grpc_port)
    assert result["held"] == list(range(20))
    assert result["marker"] == {"n": "marker"}  # answered in reverse order, all acked
    assert result["gone"]
    assert result["fresh"] == [100 + n for n in range(10)]


RESOURCES = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.in-memory, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: scoped}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - {name: subscriptionScopes, value: "grpcapp=allowed"}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: quick}
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 10ms, maxRetries: 2}
  targets:
    components:
      pubsub:
        inbound: {retry: quick}
"""

DEAD_LETTER = (
    PRELUDE
    + """
    from dapr.clients import DaprClient

    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "doomed", dead_letter_topic="orders")
        publish("doomed", {"doomed": True})
        attempts = []
        for _ in range(3):  # the first attempt and maxRetries 2
            message = subscription.next_message()
            attempts.append(message.id())
            subscription.respond_retry(message)
        received = json.load(urllib.request.urlopen(BASE + "/received?count=1&kind=orders"))
        subscription.close()
        print(json.dumps({"attempts": attempts, "orders": [r["body"] for r in received["received"]]}))
"""
)


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "resources.yaml").write_text(RESOURCES)
    return folder


async def test_the_dead_letter_topic_gets_it_after_the_retries(resources: Path) -> None:
    app = GrpcApp(resources=resources)
    async with running(app):
        result = await run_sdk(DEAD_LETTER, http_port=app.port, grpc_port=app.grpc_port)
    assert len(set(result["attempts"])) == 1
    assert len(result["attempts"]) == 3
    (dead,) = result["orders"]
    assert dead["data"] == {"doomed": True}
    assert dead["topic"] == "doomed"


ERRORS = """
    import json, queue, grpc
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2
    from google.rpc import status_pb2, error_details_pb2
    import os

    channel = grpc.insecure_channel("127.0.0.1:" + os.environ["DAPR_GRPC_PORT"])
    stub = dapr_pb2_grpc.DaprStub(channel)

    def initial(pubsub="pubsub", topic="twice"):
        request = pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name=pubsub, topic=topic)
        return pubsub_pb2.SubscribeTopicEventsRequestAlpha1(initial_request=request)

    def call(*requests):
        answers = []
        try:
            for answer in stub.SubscribeTopicEventsAlpha1(iter(requests)):
                answers.append(answer.WhichOneof("subscribe_topic_events_response_type"))
        except grpc.RpcError as error:
            reasons = []
            for key, value in error.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    for detail in status_pb2.Status.FromString(value).details:
                        info = error_details_pb2.ErrorInfo()
                        if detail.Unpack(info):
                            reasons.append(info.reason)
            return {"answers": answers, "code": error.code().name, "message": error.details(),
                    "reasons": reasons}
        return {"answers": answers, "code": "OK"}

    processed = pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
        event_processed=pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(id="x"))
    print(json.dumps({
        "twice": call(initial(), initial()),
        "not_initial": call(processed),
        "unknown": call(initial("nope")),
        "no_topic": call(initial(topic="")),
        "forbidden": call(initial("scoped", "secret")),
        "allowed": call(initial("scoped", "allowed")),
    }))
"""


async def test_daprds_errors(resources: Path) -> None:
    app = GrpcApp(resources=resources)
    async with running(app):
        result = await run_sdk(ERRORS, http_port=app.port, grpc_port=app.grpc_port)
    assert result["twice"] == {
        "answers": ["initial_response"],
        "code": "UNKNOWN",
        "message": "duplicate initial request received",
        "reasons": [],
    }
    assert result["not_initial"]["code"] == "UNKNOWN"
    assert result["not_initial"]["message"] == "initial request is required"
    assert result["unknown"] == {
        "answers": [],
        "code": "INVALID_ARGUMENT",
        "message": "pubsub nope is not found",
        "reasons": ["DAPR_PUBSUB_NOT_FOUND"],
    }
    assert result["no_topic"]["message"] == "topic is required"
    assert result["forbidden"]["code"] == "UNKNOWN"
    assert result["forbidden"]["message"] == (
        "failed to create subscription for scoped: subscription to topic 'secret' on pubsub 'scoped' "
        "is not allowed"
    )
    assert result["allowed"] == {"answers": ["initial_response"], "code": "OK"}  # ended by the client


HANDLERS = (
    PRELUDE
    + """
    import asyncio, threading
    from dapr.clients import DaprClient
    from dapr.clients.grpc._response import TopicEventResponse
    from dapr.aio.clients import DaprClient as AioClient

    got, done = [], threading.Event()

    def handler(message):
        got.append(message.data())
        if len(got) == 2:
            done.set()
        return TopicEventResponse("success")

    with DaprClient() as client:
        close = client.subscribe_with_handler("pubsub", "handled", handler)
        publish("handled", {"n": 1})
        publish("handled", {"n": 2})
        done.wait(20)
        close()
        handled_gone = streaming_gone("handled")

    async def aio():
        async with AioClient() as client:
            subscription = await client.subscribe("pubsub", "async")
            publish("async", "text")
            message = await subscription.next_message()
            await subscription.respond_success(message)
            await subscription.close()
            raw = await client.subscribe("pubsub", "rawstream", metadata={"rawPayload": "true"})
            url = BASE + "/v1.0/publish/pubsub/rawstream?metadata.rawPayload=true"
            request = urllib.request.Request(url, data=bytes([0, 255, 1]), method="POST")
            urllib.request.urlopen(request).read()
            bytes_message = await raw.next_message()
            await raw.respond_success(bytes_message)
            await raw.close()
            return [message.data(), bytes_message.raw_data().hex(), bytes_message.data_content_type()]

    print(json.dumps({"handled": sorted(g["n"] for g in got), "handled_gone": handled_gone,
                      "aio": asyncio.run(aio())}))
"""
)


async def test_subscribe_with_handler_and_the_async_client() -> None:
    app = GrpcApp()
    async with running(app):
        result = await run_sdk(HANDLERS, http_port=app.port, grpc_port=app.grpc_port)
    assert result == {
        "handled": [1, 2],
        "handled_gone": True,
        # a raw payload (the subscription's rawPayload metadata) arrives as its bytes
        "aio": ["text", "00ff01", "application/octet-stream"],
    }


HAND_BACK = (
    PRELUDE
    + """
    import asyncio
    from dapr.aio.clients import DaprClient

    async def main():
        async with DaprClient() as client:
            first = await client.subscribe("pubsub", "handoff")
            second = await client.subscribe("pubsub", "handoff")  # competing consumers of the topic
            publish("handoff", {"n": 1})
            reads = {asyncio.ensure_future(first.next_message()): first,
                     asyncio.ensure_future(second.next_message()): second}
            done, pending = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            taken = done.pop()
            holder, other = reads[taken], (second if reads[taken] is first else first)
            message = taken.result()
            await holder.close()  # in flight, never answered: handed back, never acked
            (waiting,) = pending
            again = await asyncio.wait_for(waiting, 20)
            await other.respond_success(again)
            await other.close()
            return {"first": message.id(), "again": again.id(), "data": again.data()}

    print(json.dumps(asyncio.run(main())))
"""
)


async def test_a_message_in_flight_when_its_stream_closes_goes_to_another() -> None:
    app = GrpcApp()
    async with running(app):
        result = await run_sdk(HAND_BACK, http_port=app.port, grpc_port=app.grpc_port)
    assert result["first"] == result["again"]
    assert result["data"] == {"n": 1}


REDIS_HELD = (
    PRELUDE
    + """
    from dapr.clients import DaprClient

    with DaprClient() as client:
        first = client.subscribe("redis", "held")
        publish("held", {"n": 1}, pubsub="redis")
        held = first.next_message()  # in flight, never answered
        first.close()
        gone = streaming_gone("held")
        publish("held", {"n": 2}, pubsub="redis")  # kept in the stream while nobody reads it
        again = client.subscribe("redis", "held")
        got = []
        while len(got) < 2:
            message = again.next_message()
            got.append([message.id(), message.data()["n"]])
            again.respond_success(message)
        again.close()
        print(json.dumps({"held": held.id(), "gone": gone, "got": got}))
"""
)


@pytest.mark.redis
async def test_redis_hands_back_what_a_closed_stream_held(tmp_path: Path) -> None:
    from ..redis_server import redis_server

    async with redis_server(tmp_path) as server:
        folder = tmp_path / "resources"
        folder.mkdir()
        (folder / "redis.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: redis}\nspec:\n"
            "  type: pubsub.redis\n  version: v1\n  metadata:\n"
            f"  - {{name: redisHost, value: '{server.url}'}}\n"
            "  - {name: processingTimeout, value: 1s}\n  - {name: redeliverInterval, value: 100ms}\n"
        )
        app = GrpcApp(resources=folder)
        async with running(app):
            result = await run_sdk(REDIS_HELD, http_port=app.port, grpc_port=app.grpc_port)
        output = b"\n".join(app.output)
    assert result["gone"]
    assert sorted(n for _, n in result["got"]) == [1, 2]
    assert result["held"] in [event_id for event_id, _ in result["got"]]  # redelivered, not lost
    assert b"Traceback" not in output


OPEN_UNTIL_STOPPED = """
    import json
    from dapr.clients import DaprClient

    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "forever")
        try:
            subscription.next_message()  # the stream ends under it: the sidecar stops
            print(json.dumps({"ended": None}))
        except Exception as exc:
            print(json.dumps({"ended": str(exc)}))
"""


@pytest.mark.parametrize("mode", ["embedded", "standalone"])
async def test_an_open_stream_does_not_hold_the_sidecars_stop(mode: str) -> None:
    import asyncio

    import httpx

    peer: Any = GrpcApp() if mode == "embedded" else GrpcSidecar("streamer", None)
    await peer.start()
    try:
        sdk = asyncio.ensure_future(
            run_sdk(
                OPEN_UNTIL_STOPPED, http_port=peer.port, grpc_port=peer.grpc_port, DAPR_HEALTH_TIMEOUT="1"
            )
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{peer.port}") as client:
            for _ in range(500):  # the SDK's process starts, then subscribes
                body = (await client.get("/v1.0/metadata")).json()
                if any(s["type"] == "STREAMING" for s in body["subscriptions"]):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the streaming subscription never showed in the metadata")
        began = asyncio.get_running_loop().time()
    finally:
        await peer.stop(timeout=8)  # the gRPC server's grace would be 10 s with the stream held
    assert asyncio.get_running_loop().time() - began < 5
    result = await sdk
    assert result["ended"]
