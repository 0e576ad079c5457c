"""The parts of a streaming subscription, in process: the `TopicEventRequest` of a message (daprd's
fields and `data` encoding), the stream matching the client's answers to its deliveries, and the
in-memory broker's queue shared by competing subscriptions."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from fastapi_dapr.brokers.memory import MemoryBroker
from fastapi_dapr.sidecar.dynamic import stream_route
from fastapi_dapr.sidecar.grpc_api.stream_event import EventError, event_data, topic_event
from fastapi_dapr.sidecar.grpc_api.streaming import Stream

ROUTE = stream_route("pubsub", "orders", {}, "")


def event(**fields: Any) -> dict[str, Any]:
    return {"id": "e1", "source": "app", "type": "t", "specversion": "1.0", "topic": "orders", **fields}


@pytest.mark.parametrize(
    ("fields", "data"),
    [
        (
            {"datacontenttype": "application/json", "data": {"b": "<x>", "a": 1}},
            b'{"a":1,"b":"\\u003cx\\u003e"}',
        ),
        ({"datacontenttype": "application/json; charset=utf-8", "data": "text"}, b'"text"'),
        ({"datacontenttype": "application/cloudevents+json", "data": [1, 2]}, b"[1,2]"),
        ({"datacontenttype": "text/plain", "data": "héllo"}, "héllo".encode()),
        ({"datacontenttype": "application/xml", "data": "<a/>"}, b"<a/>"),
        (
            {
                "datacontenttype": "application/octet-stream",
                "data_base64": base64.b64encode(b"\0\1").decode(),
            },
            b"\0\1",
        ),
        ({"datacontenttype": "application/octet-stream", "data": "ignored"}, b""),  # daprd: no data
        ({"data": {"a": 1}}, b""),  # no content type: neither text nor JSON
        ({"datacontenttype": "application/json"}, b""),
    ],
)
def test_data_is_encoded_as_daprd_encodes_it(fields: dict[str, Any], data: bytes) -> None:
    assert topic_event(event(**fields), ROUTE, "/").data == data


@pytest.mark.parametrize(
    "fields",
    [
        {"datacontenttype": "text/plain", "data": {"not": "text"}},
        {"data_base64": "not base64!"},
        {"data_base64": 12},
    ],
)
def test_data_daprd_refuses_is_an_error(fields: dict[str, Any]) -> None:
    with pytest.raises(EventError):
        event_data(fields, str(fields.get("datacontenttype", "")))


def test_the_fields_and_the_extensions() -> None:
    envelope = topic_event(
        event(datacontenttype="application/json", data={}, traceparent="00-1-2-01", custom={"n": 1}, id=7),
        ROUTE,
        "/",
    )
    assert (envelope.id, envelope.source, envelope.type, envelope.spec_version) == ("", "app", "t", "1.0")
    assert (envelope.topic, envelope.pubsub_name, envelope.path) == ("orders", "pubsub", "/")
    extensions = dict(envelope.extensions)
    assert set(extensions) == {"topic", "traceparent", "custom"}  # not the fields it has of its own
    assert extensions["custom"]["n"] == 1


class Answer:
    """The client's `event_processed`, as the stream reads it."""

    def __init__(self, event_id: str, status: int) -> None:
        self.id = event_id
        self.status = type("TopicEventResponse", (), {"status": status})()


def body(event_id: str) -> bytes:
    return json.dumps(event(id=event_id, datacontenttype="application/json", data={"id": event_id})).encode()


async def written(stream: Stream, count: int) -> list[str]:
    return [(await stream.outbox.get()).event_message.id for _ in range(count)]


async def test_answers_in_any_order_reach_their_deliveries() -> None:
    stream = Stream(ROUTE)
    deliveries = [asyncio.ensure_future(stream.deliver(body(f"e{n}"))) for n in range(3)]
    assert await written(stream, 3) == ["e0", "e1", "e2"]  # all in flight before any answer
    stream.processed(Answer("e2", 2))
    stream.processed(Answer("e0", 0))
    stream.processed(Answer("e1", 1))
    answers = [json.loads((await delivery)[1])["status"] for delivery in deliveries]
    assert answers == ["SUCCESS", "RETRY", "DROP"]
    assert stream.pending == {}


async def test_two_deliveries_of_one_id_are_answered_in_turn() -> None:
    stream = Stream(ROUTE)
    first = asyncio.ensure_future(stream.deliver(body("same")))
    second = asyncio.ensure_future(stream.deliver(body("same")))
    await written(stream, 2)
    stream.processed(Answer("same", 1))
    assert json.loads((await first)[1])["status"] == "RETRY"
    assert not second.done()
    stream.processed(Answer("same", 0))
    assert json.loads((await second)[1])["status"] == "SUCCESS"


async def test_an_unknown_status_is_retried_and_an_unknown_id_ignored() -> None:
    stream = Stream(ROUTE)
    delivery = asyncio.ensure_future(stream.deliver(body("e")))
    await written(stream, 1)
    stream.processed(Answer("nobody", 0))
    stream.processed(Answer("e", 7))
    status, answer = await delivery
    assert (status, json.loads(answer)["status"]) == (200, "UNKNOWN")  # the engine retries it


async def test_a_closed_stream_hands_back_what_it_has_and_writes_nothing_more() -> None:
    stream = Stream(ROUTE)
    in_flight = asyncio.ensure_future(stream.deliver(body("e")))
    await written(stream, 1)
    stream.close()
    with pytest.raises(asyncio.CancelledError):  # the worker hands it back to the broker
        await in_flight
    with pytest.raises(asyncio.CancelledError):
        await stream.deliver(body("later"))
    assert stream.outbox.empty()


async def test_an_event_daprd_cannot_envelope_is_an_error_the_engine_retries() -> None:
    stream = Stream(ROUTE)
    status, _ = await stream.deliver(json.dumps(event(data_base64=12)).encode())
    assert status == 500
    assert stream.outbox.empty()


async def test_a_shared_in_memory_queue_outlives_all_but_its_last_subscription() -> None:
    broker = MemoryBroker("pubsub", {}, app_id="app")
    app_side = await broker.subscribe("orders")
    stream_side = await broker.subscribe("orders")  # the same consumer group: competing consumers
    broker.subscriptions_started()
    await stream_side.close()
    await broker.publish("orders", b"{}", {})
    (delivery,) = await asyncio.wait_for(app_side.receive(1), 1)
    assert delivery.message.data == b"{}"
    await app_side.close()
    assert broker.queued() == 0


async def test_a_topic_whose_stream_ended_takes_publishes_again() -> None:
    broker = MemoryBroker("pubsub", {}, app_id="app")
    broker.subscriptions_started()
    stream_side = await broker.subscribe("streamed")  # after the runtime's start: a stream's
    await stream_side.close()
    await broker.publish("streamed", b"{}", {})  # discarded, as daprd's in-memory component does
    assert broker.queued() == 0
