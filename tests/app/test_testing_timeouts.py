"""A wait of the test helpers that times out says what is still going on: the deliveries in
progress (each one's attempts, and the delay before its next), that nothing subscribes to the
topic waited on, and `FakeClock` when retry delays are waited on the real clock."""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr, RetryPolicy
from fastapi_dapr.testing import DaprTest, DaprTestClient, FakeClock


def flaky_app() -> tuple[FastAPI, asyncio.Event]:
    app = FastAPI()
    dapr = Dapr(app, app_id="shop", retry=RetryPolicy(policy="constant", duration=30.0))
    release = asyncio.Event()

    @dapr.subscribe("pubsub", "flaky")
    async def flaky(event: CloudEvent[dict[str, int]]):  # type: ignore[no-untyped-def]
        return RETRY

    @dapr.subscribe("pubsub", "slow")
    async def slow(event: CloudEvent[dict[str, int]]) -> None:
        await release.wait()

    return app, release


def test_a_retry_waited_on_the_real_clock_is_named_with_its_delay_and_fakeclock() -> None:
    app, _ = flaky_app()
    with DaprTestClient(app) as client, pytest.raises(AssertionError) as info:
        client.publish_and_wait("pubsub", "flaky", {"n": 1}, timeout=0.2)
    text = str(info.value)
    assert text.startswith(
        "no delivery report came within 0.2s for message 1 of pubsub='pubsub' topic='flaky'.\n"
        "In progress:\n"
        "  - message 1 on pubsub='pubsub' topic='flaky' (to /events/pubsub/flaky):\n"
        "    1 attempt failed, the last with RETRY; attempt 2 in "
    )
    left = re.search(r"attempt 2 in ([0-9.]+)s \(a retry delay of 30s\)", text)
    assert left is not None
    assert 29 < float(left.group(1)) <= 30
    assert text.endswith(
        "Retry delays are waited on the real clock: give the test a FakeClock, and they take\n"
        "no time (fastapi_dapr.testing.FakeClock: DaprTestClient(app, clock=FakeClock()))."
    )


async def test_an_attempt_still_running_is_named_with_its_time() -> None:
    app, release = flaky_app()
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        with pytest.raises(AssertionError) as info:
            await test.publish_and_wait("pubsub", "slow", {"n": 2}, timeout=0.1)
        release.set()
        report = await test.wait_for_delivery(topic="slow")  # the same message, once released
    text = str(info.value)
    assert (
        "  - message 1 on pubsub='pubsub' topic='slow' (to /events/pubsub/slow):\n"
        "    no attempt ended yet; attempt 1 running for 0.0s\n"  # on the FakeClock, which has not moved
    ) in text
    assert "clock.advance" in text
    assert "give the test a FakeClock" not in text  # it has one
    assert report.outcome == "delivered"


def test_a_topic_nothing_subscribes_to_is_said_so() -> None:
    app, _ = flaky_app()
    with DaprTestClient(app) as client:
        client.post("/v1.0/publish/pubsub/nobody", json={"n": 3})
        with pytest.raises(AssertionError) as info:
            client.wait_for_delivery(pubsub="pubsub", topic="nobody", timeout=0.05)
        assert [m.data for m in client.published("pubsub", "nobody")] == [{"n": 3}]
    assert str(info.value) == (
        "no delivery report came within 0.05s on pubsub='pubsub' topic='nobody'.\n"
        "Nothing in the app subscribes to topic 'nobody' (its subscriptions: pubsub='pubsub' topic='flaky', "
        "pubsub='pubsub' topic='slow'),\n"
        "so a message there makes no report: published(pubsub, topic) lists what was published.\n"
        "No delivery is in progress."
    )


def test_nothing_in_progress_is_said_so() -> None:
    app, _ = flaky_app()
    with DaprTestClient(app) as client, pytest.raises(AssertionError) as info:
        client.wait_for_delivery(topic="flaky", timeout=0.05)
    assert (
        str(info.value)
        == "no delivery report came within 0.05s on topic='flaky'.\nNo delivery is in progress."
    )
