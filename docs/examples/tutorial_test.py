from fastapi_dapr.testing import DaprTestClient, FakeClock
from main import app, orders

ORDER = {"id": "t-1", "item": "book", "quantity": 2}
PAYMENT = {"order_id": "t-1", "amount": 12.5}


def test_an_order_then_its_payment():
    with DaprTestClient(app) as client:
        client.publish_and_wait("pubsub", "orders", ORDER)
        client.publish_and_wait("pubsub", "payments", PAYMENT)
        assert client.get("/orders/t-1").json()["status"] == "paid"


def test_a_huge_order_is_dead_lettered():
    huge = {"id": "t-2", "item": "book", "quantity": 500}
    with DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "orders", huge)
        assert report.outcome == "dead-lettered"
        rejected = client.wait_for_delivery(topic="orders-dead")
        assert rejected.outcome == "delivered"
    assert orders["t-2"]["status"] == "rejected"


def test_a_payment_without_its_order_is_retried():
    orphan = {"order_id": "t-0", "amount": 1.0}
    clock = FakeClock()  # the retries' waits take no time
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "payments", orphan)
    statuses = [attempt.status for attempt in report.attempts]
    assert statuses == ["RETRY"] * 11  # the first attempt, and 10 retries
    assert report.outcome == "failed"
