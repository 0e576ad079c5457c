"""The example service's own tests: deliveries posted as daprd posts them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .main import app
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


def test_the_full_flow_through_the_embedded_sidecar() -> None:
    from fastapi_dapr.testing import DaprTestClient

    store.clear()
    with DaprTestClient(app) as client:
        assert client.post("/orders", json={"id": "o-9", "item": "lamp", "quantity": 1}).status_code == 202
        assert client.wait_for_delivery(topic="orders").outcome == "delivered"
        assert client.get("/orders/o-9").json()["status"] == "accepted"

        client.post("/orders/o-9/payments", json={"amount": 30})
        report = client.wait_for_delivery(topic="payments")
        assert report.path == "/billing/events/pubsub/payments/on_payment"
        assert client.get("/orders/o-9").json()["status"] == "paid"

        client.post("/orders/o-9/payments", json={"amount": 30, "refund": True})
        assert client.wait_for_delivery(topic="payments").path == "/billing/events/pubsub/payments"
        assert client.get("/orders/o-9").json()["status"] == "refunded"

        # Too large: dropped by the handler, then handled on the dead-letter topic.
        client.post("/orders", json={"id": "o-10", "item": "pallet", "quantity": 500})
        assert client.wait_for_delivery(topic="orders").outcome == "dead-lettered"
        assert client.wait_for_delivery(topic="orders-dead").outcome == "delivered"
        assert client.get("/orders/o-10").json()["status"] == "rejected"
