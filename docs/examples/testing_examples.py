from .orders_service import app

# --8<-- [start:sync]
from fastapi_dapr import SUCCESS
from fastapi_dapr.testing import DaprTestClient


def test_order_is_stored():
    with DaprTestClient(app) as client:  # Starlette's TestClient, and more
        order = {"id": "o-1", "quantity": 2}
        report = client.publish_and_wait("pubsub", "orders", order)
        assert report.status is SUCCESS
        assert client.get("/orders/o-1").json()["status"] == "accepted"


def test_endpoint_publishes():
    with DaprTestClient(app) as client:
        client.post("/orders", json={"id": "o-2", "quantity": 1})
        report = client.wait_for_delivery(topic="orders")
        assert report.outcome == "delivered"


# --8<-- [end:sync]


# --8<-- [start:async]
import pytest

from fastapi_dapr.testing import DaprTest


@pytest.mark.anyio  # anyio's pytest plugin (FastAPI installs it) or pytest-asyncio
async def test_order_is_stored_async():
    async with DaprTest(app) as dapr_test:
        order = {"id": "o-1", "quantity": 2}
        report = await dapr_test.publish_and_wait("pubsub", "orders", order)
        answer = await dapr_test.client.get("/orders/o-1")
        assert report.outcome == "delivered"
        assert answer.json()["status"] == "accepted"


# --8<-- [end:async]


# --8<-- [start:published]
def test_an_order_is_invoiced():
    with DaprTestClient(app) as client:
        client.publish_and_wait("pubsub", "orders", {"id": "o-3", "quantity": 5})
        # A topic nothing in the app subscribes to:
        (invoice,) = client.published("pubsub", "invoices")
    assert invoice.data == {"order": "o-3", "quantity": 5}
    assert invoice.content_type == "application/json"
    assert invoice.event.source == "orders"  # the CloudEvent's source: the app id
    assert [m.topic for m in client.published()] == ["orders", "invoices"]


# --8<-- [end:published]


# --8<-- [start:clock]
from fastapi_dapr.testing import FakeClock


def test_retries_on_a_fake_clock():
    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "flaky", {"n": 1})
    assert len(report.attempts) == 3
    assert clock.sleeps == [1.0, 1.0]  # the policy's 1 s, twice, and no time taken


# --8<-- [end:clock]
