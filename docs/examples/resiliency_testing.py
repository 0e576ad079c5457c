from pathlib import Path

from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr
from fastapi_dapr.testing import DaprTest, FakeClock

app = FastAPI()
dapr = Dapr(
    app, app_id="checkout", resources_path=Path(__file__).parent / "resources"
)


@dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
async def on_order(event: CloudEvent[dict[str, str]]):
    return RETRY  # never takes it: retried as the policy says, then dead-lettered


# --8<-- [start:test]
async def test_the_retry_schedule():
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1"})
    assert clock.sleeps == [2.0, 2.0, 2.0]  # constant, duration 2s, maxRetries 3
    assert report.outcome == "dead-lettered"


# --8<-- [end:test]
