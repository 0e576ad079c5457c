"""The example service's own tests: deliveries posted as daprd posts them."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastapi_dapr.testing import DaprTest, FakeClock

from .main import RESOURCES, app, dapr
from .store import store


def cloudevent(topic: str, data: Any, type_: str = "com.dapr.event.sent") -> bytes:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "specversion": "1.0",
            "source": "checkout",
            "type": type_,
            "datacontenttype": "application/json",
            "topic": topic,
            "pubsubname": "pubsub",
            "data": data,
        }
    ).encode()


@pytest.fixture
def client() -> Iterator[TestClient]:
    store.clear()
    with TestClient(app) as client:
        yield client


def post(client: TestClient, path: str, body: bytes) -> str:
    answer = client.post(path, content=body, headers={"content-type": "application/cloudevents+json"})
    assert answer.status_code == 200
    status: str = answer.json()["status"]
    return status


def test_subscriptions_advertised_to_dapr(client: TestClient) -> None:
    assert client.get("/dapr/subscribe").json() == [
        {
            "pubsubname": "pubsub",
            "topic": "payments",
            "routes": {
                "rules": [
                    {
                        "match": 'event.type == "payment.refunded"',
                        "path": "/billing/events/pubsub/payments",
                    }
                ],
                "default": "/billing/events/pubsub/payments/on_payment",
            },
        },
        {
            "pubsubname": "pubsub",
            "topic": "orders",
            "route": "/events/pubsub/orders",
            "deadLetterTopic": "orders-dead",
        },
        {"pubsubname": "pubsub", "topic": "orders-dead", "route": "/events/pubsub/orders-dead"},
    ]


def test_order_then_payment_then_refund(client: TestClient) -> None:
    order = {"id": "o-1", "item": "book", "quantity": 2}
    assert post(client, "/events/pubsub/orders", cloudevent("orders", order)) == "SUCCESS"
    assert client.get("/orders/o-1").json()["status"] == "accepted"

    payment = {"order_id": "o-1", "amount": 12.5}
    path = "/billing/events/pubsub/payments/on_payment"
    assert post(client, path, cloudevent("payments", payment, "payment.made")) == "SUCCESS"
    assert client.get("/orders/o-1").json()["status"] == "paid"

    refund = cloudevent("payments", payment, "payment.refunded")
    assert post(client, "/billing/events/pubsub/payments", refund) == "SUCCESS"
    assert client.get("/orders/o-1").json()["status"] == "refunded"


def test_payment_before_its_order_is_retried(client: TestClient) -> None:
    body = cloudevent("payments", {"order_id": "later", "amount": 1}, "payment.made")
    assert post(client, "/billing/events/pubsub/payments/on_payment", body) == "RETRY"


def test_oversized_and_invalid_orders_are_dropped(client: TestClient) -> None:
    too_big = {"id": "o-2", "item": "pallet", "quantity": 1000}
    assert post(client, "/events/pubsub/orders", cloudevent("orders", too_big)) == "DROP"
    invalid = {"id": "o-3", "item": "air", "quantity": 0}
    assert post(client, "/events/pubsub/orders", cloudevent("orders", invalid)) == "DROP"
    assert client.get("/orders/o-2").status_code == 404


def test_dead_letter_handler_records_the_rejection(client: TestClient) -> None:
    dead = {"id": "o-2", "item": "pallet", "quantity": 1000}
    assert post(client, "/events/pubsub/orders-dead", cloudevent("orders", dead)) == "SUCCESS"
    assert client.get("/orders/o-2").json() == {"id": "o-2", "status": "rejected", "original": dead}


@contextlib.contextmanager
def resources(tmp_path: Path, *, app_url: str = "http://127.0.0.1:8000", redis: str = "") -> Iterator[None]:
    """The example's own resources, copied, with this test's addresses in them."""
    common = tmp_path / "common"
    shutil.copytree(RESOURCES / "common", common)
    shipping = common / "shipping.yaml"
    shipping.write_text(shipping.read_text().replace("http://127.0.0.1:8000", app_url))
    secrets = common / "secrets.yaml"
    relative = "example_app/resources/common/secrets.json"
    secrets.write_text(secrets.read_text().replace(relative, str(common / "secrets.json")))
    pubsub = tmp_path / ("redis" if redis else "memory")
    shutil.copytree(RESOURCES / pubsub.name, pubsub)
    if redis:
        component = pubsub / "pubsub.yaml"
        component.write_text(component.read_text().replace("127.0.0.1:6379", redis))
    before = dapr.resources_paths
    dapr.resources_paths = [common, pubsub]
    try:
        yield
    finally:
        dapr.resources_paths = before


async def test_the_full_flow_through_the_embedded_sidecar(tmp_path: Path) -> None:
    store.clear()
    with resources(tmp_path):
        async with DaprTest(app) as test:
            await full_flow(test)


async def full_flow(test: DaprTest) -> None:
    client = test.client
    answer = await client.post("/orders", json={"id": "o-9", "item": "lamp", "quantity": 1})
    assert answer.status_code == 202
    assert (await test.wait_for_delivery(topic="orders")).outcome == "delivered"
    assert (await client.get("/orders/o-9")).json()["status"] == "accepted"

    await client.post("/orders/o-9/payments", json={"amount": 30})
    report = await test.wait_for_delivery(topic="payments")
    assert report.path == "/billing/events/pubsub/payments/on_payment"
    assert (await client.get("/orders/o-9")).json()["status"] == "paid"

    await client.post("/orders/o-9/payments", json={"amount": 30, "refund": True})
    assert (await test.wait_for_delivery(topic="payments")).path == "/billing/events/pubsub/payments"
    assert (await client.get("/orders/o-9")).json()["status"] == "refunded"

    # Too large: dropped by the handler, then handled on the dead-letter topic.
    await client.post("/orders", json={"id": "o-10", "item": "pallet", "quantity": 500})
    assert (await test.wait_for_delivery(topic="orders")).outcome == "dead-lettered"
    assert (await test.wait_for_delivery(topic="orders-dead")).outcome == "delivered"
    assert (await client.get("/orders/o-10")).json()["status"] == "rejected"


@pytest.mark.redis
async def test_the_full_flow_over_redis_streams(tmp_path: Path) -> None:
    """The Redis variant of the resources, against a redis-server of the test's own."""
    from tests.redis_server import redis_server

    store.clear()
    async with redis_server(tmp_path) as server:
        with resources(tmp_path, redis=server.url):
            async with DaprTest(app) as test:
                assert app.state.fastapi_dapr.backend.running().brokers["pubsub"].type_name == "pubsub.redis"
                await full_flow(test)


async def test_a_shipping_quote_comes_from_the_carrier_endpoint(tmp_path: Path) -> None:
    from tests.servers import serve

    store.clear()
    async with serve(app) as base_url:
        with resources(tmp_path, app_url=base_url):
            async with DaprTest(app) as test:
                await test.client.post("/orders", json={"id": "o-5", "item": "chair", "quantity": 2})
                assert (await test.wait_for_delivery(topic="orders")).outcome == "delivered"
                quote = await test.client.get("/orders/o-5/shipping")
                # The carrier wants the token the HTTPEndpoint adds from the secret store.
                refused = await test.client.post(
                    "/partners/shipping/quotes", json={"item": "x", "quantity": 1}
                )
    assert quote.status_code == 200, quote.text
    assert quote.json() == {"order": "o-5", "carrier": "Parcel & Co", "price": 7.0, "days": 2}
    assert refused.status_code == 401


async def test_an_unreachable_carrier_is_a_502(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store.add("o-6", item="desk", quantity=1, status="accepted")
    with resources(tmp_path, app_url=f"http://127.0.0.1:{port}"):
        # The carrier policy retries the refused connection: its backoff passes on a FakeClock.
        async with DaprTest(app, clock=FakeClock()) as test:
            answer = await test.client.get("/orders/o-6/shipping")
    assert answer.status_code == 502
    detail = answer.json()["detail"]
    assert "could not connect" in detail
    # Served elsewhere than the HTTPEndpoint says, the example says what to change.
    assert "spec.baseUrl in example_app/resources/common/shipping.yaml" in detail
