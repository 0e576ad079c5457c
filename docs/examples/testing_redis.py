from pathlib import Path

from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTestClient

# --8<-- [start:app]
RESOURCES = Path(__file__).parent / "resources" / "checkout-redis"  # pubsub.redis
app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=RESOURCES)


@dapr.subscribe("pubsub", "orders")
async def on_order(event: CloudEvent[dict[str, str]]) -> None:
    await dapr.publish("pubsub", "shipments", {"order": event.data["id"]})


# --8<-- [end:app]


# --8<-- [start:test]
def test_orders_are_shipped_without_redis():
    # Every pub/sub component of the app on the in-memory broker:
    with DaprTestClient(app, memory_pubsub=True) as client:
        report = client.publish_and_wait("pubsub", "orders", {"id": "o-1"})
        # Not in allowedTopics: refused, as it would be on Redis.
        refused = client.post("/v1.0/publish/pubsub/refunds", json={})
    assert report.outcome == "delivered"
    assert client.published("pubsub", "shipments")[0].data == {"order": "o-1"}
    assert refused.status_code == 403


# --8<-- [end:test]
