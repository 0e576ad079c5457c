"""`published(pubsub, topic)` of the test helpers: what the code under test published, as its
pub/sub component took it, also to topics nothing in the app subscribes to."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import DROP, BulkPublishEntry, CloudEvent, Dapr
from fastapi_dapr.testing import DaprTest, DaprTestClient, PublishedMessage


class Invoice(BaseModel):
    order: str
    amount: float


def shop(resources: Path | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await dapr.publish("pubsub", "lifecycle", "started")  # before any subscription runs
        yield

    app = FastAPI(lifespan=lifespan)
    dapr = Dapr(app, app_id="shop", resources_path=resources)

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
    async def on_order(event: CloudEvent[dict[str, Any]]):  # type: ignore[no-untyped-def]
        if event.data.get("quantity", 0) > 100:
            return DROP
        invoice = Invoice(order=event.data["id"], amount=9.5)
        await dapr.publish("pubsub", "invoices", invoice, metadata={"cloudevent.type": "invoice.created"})
        return None

    @app.post("/announce")
    async def announce() -> None:
        await dapr.publish_bulk(
            "pubsub", "news", ["one", {"n": 2}, BulkPublishEntry(b"\x00", "application/octet-stream")]
        )

    return app


def test_what_a_handler_published_to_a_topic_nobody_subscribes_to() -> None:
    app = shop()
    with DaprTestClient(app) as client:
        client.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2})
        (invoice,) = client.published("pubsub", "invoices")
    assert isinstance(invoice, PublishedMessage)
    assert (invoice.pubsub, invoice.topic) == ("pubsub", "invoices")
    assert invoice.data == {"order": "o-1", "amount": 9.5}
    assert Invoice.model_validate(invoice.data) == Invoice(order="o-1", amount=9.5)
    assert invoice.content_type == "application/json"
    assert invoice.metadata == {"cloudevent.type": "invoice.created"}
    assert invoice.event is not None
    assert invoice.event.type == "invoice.created"
    assert invoice.event.source == "shop"
    assert invoice.event.topic == "invoices"
    assert json.loads(invoice.body)["data"] == invoice.data  # the bytes the broker stores
    assert invoice.message_id


def test_every_publish_in_order_with_the_start_up_s_and_the_dead_letters() -> None:
    app = shop()
    with DaprTestClient(app) as client:
        client.publish_and_wait("pubsub", "orders", {"id": "o-9", "quantity": 500})  # dropped
        topics = [message.topic for message in client.published()]
        (dead,) = client.published("pubsub", "orders-dead")
    assert topics == ["lifecycle", "orders", "orders-dead"]
    assert dead.data == {"id": "o-9", "quantity": 500}  # the message itself, republished
    assert [m.topic for m in client.published(topic="lifecycle")] == ["lifecycle"]
    assert client.published("pubsub", "lifecycle")[0].data == "started"
    assert client.published("other-pubsub") == []


def test_the_http_publish_api_with_its_metadata_and_content_types() -> None:
    with DaprTestClient(shop()) as client:
        assert (
            client.post("/v1.0/publish/pubsub/audit?metadata.ttlInSeconds=60", json={"a": 1}).status_code
            == 204
        )
        client.post(
            "/v1.0/publish/pubsub/audit", content="plain words", headers={"content-type": "text/plain"}
        )
        client.post(
            "/v1.0/publish/pubsub/audit",
            content=b"\x01\x02",
            headers={"content-type": "application/octet-stream"},
        )
        client.post(
            "/v1.0/publish/pubsub/audit?metadata.rawPayload=true",
            content=b"as is",
            headers={"content-type": "application/octet-stream"},
        )
        ttl, text, binary, raw = client.published("pubsub", "audit")
    assert (ttl.data, ttl.content_type, dict(ttl.metadata)) == (
        {"a": 1},
        "application/json",
        {"ttlInSeconds": "60"},
    )
    assert ttl.event is not None
    assert ttl.event.expiration  # daprd's envelope, as stored
    assert (text.data, text.content_type) == ("plain words", "text/plain")
    assert (binary.data, binary.content_type) == (b"\x01\x02", "application/octet-stream")
    assert (raw.raw, raw.event, raw.data, raw.content_type) == (True, None, b"as is", None)
    assert raw.body == b"as is"


def test_a_refused_publish_is_not_recorded() -> None:
    with DaprTestClient(shop()) as client:
        assert client.post("/v1.0/publish/nope/audit", json={}).status_code == 404
        assert client.post("/v1.0/publish/pubsub/audit?metadata.rawPayload=maybe", json={}).status_code == 400
        assert client.published(topic="audit") == []


def test_bulk_publishes_one_message_per_entry() -> None:
    with DaprTestClient(shop()) as client:
        assert client.post("/announce").status_code == 200
        entries = [
            {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
            {"entryId": "2", "event": "two", "contentType": "text/plain", "metadata": {"k": "v"}},
        ]
        assert client.post("/v1.0-alpha1/publish/bulk/pubsub/bulk", json=entries).status_code == 204
        from_code = client.published("pubsub", "news")
        from_api = client.published("pubsub", "bulk")
    assert sorted(map(repr, (m.data for m in from_code))) == sorted(map(repr, ["one", {"n": 2}, b"\x00"]))
    by_data = {repr(m.data): m for m in from_api}
    assert set(by_data) == {repr({"n": 1}), repr("two")}
    assert by_data[repr("two")].metadata == {"k": "v"}
    assert by_data[repr("two")].content_type == "text/plain"


def test_each_run_records_its_own_publishes_and_keeps_them_after_it_ends() -> None:
    app = shop()
    with DaprTestClient(app) as first:
        first.publish_and_wait("pubsub", "orders", {"id": "o-1"})
    with DaprTestClient(app) as second:
        assert [m.topic for m in second.published()] == ["lifecycle"]
    assert [m.topic for m in first.published()] == ["lifecycle", "orders", "invoices"]  # after the block


async def test_the_async_helper_lists_them_too() -> None:
    app = shop()
    async with DaprTest(app) as test:
        await test.publish_and_wait("pubsub", "orders", {"id": "o-2"})
        assert (await test.client.post("/v1.0/publish/pubsub/audit", json=[1, 2])).status_code == 204
        (invoice,) = test.published("pubsub", "invoices")
        (audit,) = test.published("pubsub", "audit")
    assert invoice.data == {"order": "o-2", "amount": 9.5}
    assert audit.data == [1, 2]
    assert [m.topic for m in test.published()] == ["lifecycle", "orders", "invoices", "audit"]


async def test_the_grpc_publish_api_is_recorded_too() -> None:
    grpc = pytest.importorskip("grpc")  # the [grpc] extra, which the test extra has
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2

    app = FastAPI()
    dapr = Dapr(app, app_id="shop", grpc_port=0)
    async with DaprTest(app) as test, grpc.aio.insecure_channel(f"127.0.0.1:{dapr.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)
        request = pubsub_pb2.PublishEventRequest(
            pubsub_name="pubsub",
            topic="grpc",
            data=b'{"n": 1}',
            data_content_type="application/json",
            metadata={"ttlInSeconds": "30"},
        )
        await stub.PublishEvent(request)
        entries = [pubsub_pb2.BulkPublishRequestEntry(entry_id="e1", event=b"one", content_type="text/plain")]
        await stub.BulkPublishEvent(
            pubsub_pb2.BulkPublishRequest(pubsub_name="pubsub", topic="grpc-bulk", entries=entries)
        )
    (single,) = test.published("pubsub", "grpc")
    assert (single.data, single.content_type, dict(single.metadata)) == (
        {"n": 1},
        "application/json",
        {"ttlInSeconds": "30"},
    )
    assert [m.data for m in test.published("pubsub", "grpc-bulk")] == ["one"]
