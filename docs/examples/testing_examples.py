from .orders_service import app

# --8<-- [start:sync]
from fastapi_dapr import SUCCESS
from fastapi_dapr.testing import DaprTestClient


def test_order_is_stored():
    with DaprTestClient(app) as client:  # Starlette's TestClient, plus two methods
        report = client.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2})
        assert report.status is SUCCESS
        assert client.get("/orders/o-1").json()["status"] == "accepted"


def test_endpoint_publishes():
    with DaprTestClient(app) as client:
        client.post("/orders", json={"id": "o-2", "quantity": 1})
        report = client.wait_for_delivery(topic="orders")
        assert report.outcome == "delivered"


# --8<-- [end:sync]


# --8<-- [start:async]
from fastapi_dapr.testing import DaprTest


async def test_order_is_stored_async():
    async with DaprTest(app) as dapr_test:
        report = await dapr_test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2})
        answer = await dapr_test.client.get("/orders/o-1")
        assert report.outcome == "delivered"
        assert answer.json()["status"] == "accepted"


# --8<-- [end:async]


def test_retries_on_a_fake_clock():
    # --8<-- [start:clock]
    from fastapi_dapr.testing import DaprTestClient, FakeClock

    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "flaky", {"n": 1})
    assert len(report.attempts) == 3
    assert clock.sleeps == [1.0, 1.0]
    # --8<-- [end:clock]
