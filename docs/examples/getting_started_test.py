from .quickstart import app

# --8<-- [start:test]
from fastapi_dapr.testing import DaprTestClient


def test_large_orders_are_dead_lettered():
    with DaprTestClient(app) as client:
        accepted = client.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2})
        too_large = client.publish_and_wait("pubsub", "orders", {"id": "o-2", "quantity": 500})
    assert accepted.outcome == "delivered"
    assert too_large.outcome == "dead-lettered"


# --8<-- [end:test]
