"""`pubsub.jetstream` against a real nats-server started by the tests: daprd's layout field by
field (read and written with nats-py directly), consumers shared with daprd's, settlement,
settings, authentication and TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from fastapi_dapr import RETRY, CloudEvent, Dapr
from fastapi_dapr.brokers import Broker, BrokerError
from fastapi_dapr.testing import DaprTest

from ..daprd_wire import envelope, go_json
from ..nats_server import NatsServer, add_stream, nats_server

nats = pytest.importorskip("nats", reason="the nats extra is not installed")

pytestmark = [pytest.mark.nats, pytest.mark.process]

WAIT = 10.0
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "resources"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with nats_server(tmp_path) as started:
        await add_stream(started.url, "ORDERS", ["orders", "orders.>"])
        yield started


@pytest.fixture
async def client(server: NatsServer) -> AsyncIterator[Any]:
    """A plain nats-py client: what daprd's component, or any NATS client, does."""
    connection = await nats.connect(server.url)
    yield connection
    await connection.close()


async def open_broker(server: NatsServer, **metadata: str) -> Broker:
    from fastapi_dapr.brokers.jetstream import JetStreamBroker

    broker = JetStreamBroker("pubsub", {"natsURL": server.url, **metadata}, app_id="checkout")
    await broker.start()
    return broker


def jetstream_app(tmp_path: Path, url: str, extra: str = "") -> tuple[FastAPI, Dapr]:
    folder = tmp_path / "resources"
    folder.mkdir(exist_ok=True)
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        f"  type: pubsub.jetstream\n  version: v1\n  metadata:\n  - name: natsURL\n    value: {url}\n" + extra
    )
    app = FastAPI()
    return app, Dapr(app, app_id="checkout", resources_path=folder)


async def api(client: Any, subject: str, payload: Any = None) -> dict[str, Any]:
    body = b"" if payload is None else json.dumps(payload).encode()
    answer: dict[str, Any] = json.loads((await client.request(f"$JS.API.{subject}", body, timeout=5)).data)
    return answer


# -- what daprd writes, delivered here -------------------------------------------------------------


async def test_a_message_written_as_daprd_writes_it_is_delivered_with_daprds_metadata(
    server: NatsServer, client: Any, tmp_path: Path
) -> None:
    app, dapr = jetstream_app(tmp_path, server.url)
    seen: list[tuple[str, Any, str | None]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]], request: Request) -> None:
        seen.append((event.id, event.data, request.headers.get("topic")))

    event = envelope({"n": 7}, topic="orders", source="daprd-app")
    async with DaprTest(app) as test:
        # daprd's Publish: the subject is the topic, the CloudEvent id the Nats-Msg-Id, no other header.
        acknowledged = await client.jetstream().publish(
            "orders", go_json(event), headers={"Nats-Msg-Id": event["id"]}
        )
        report = await test.wait_for_delivery(topic="orders", timeout=WAIT)
    assert report.outcome == "delivered"
    assert report.message_id == f"ORDERS:{acknowledged.seq}"
    assert seen == [(event["id"], {"n": 7}, "orders")]  # daprd's {"Topic": subject}, as a header
    # Acknowledged: nothing is pending for the consumer.
    info = await api(client, "CONSUMER.INFO.ORDERS.checkout-orders")
    assert (info["num_ack_pending"], info["num_pending"]) == (0, 0)


# -- what is written here, as daprd's component would read it ---------------------------------------


async def test_a_publish_is_the_cloudevent_on_the_topics_subject_with_its_id_as_nats_msg_id(
    server: NatsServer, client: Any, tmp_path: Path
) -> None:
    app, dapr = jetstream_app(tmp_path, server.url)
    async with DaprTest(app):
        await dapr.publish("pubsub", "orders", {"n": 1}, metadata={"note": 'kept: ünïcode, quotes " and all'})
    stored = await client.jetstream().get_msg("ORDERS", 1)
    assert stored.subject == "orders"
    event = json.loads(stored.data)
    assert (event["data"], event["topic"], event["pubsubname"], event["source"]) == (
        {"n": 1},
        "orders",
        "pubsub",
        "checkout",
    )
    assert event["type"] == "com.dapr.event.sent"
    assert stored.headers["Nats-Msg-Id"] == event["id"]  # the broker's deduplication key, as daprd's
    # The metadata goes with it, in one header daprd does not read; all else is daprd's.
    assert set(stored.headers) == {"Nats-Msg-Id", "Dapr-Metadata"}
    assert json.loads(stored.headers["Dapr-Metadata"]) == {"note": 'kept: ünïcode, quotes " and all'}


async def test_the_broker_drops_a_cloudevent_published_twice_by_its_id(
    server: NatsServer, client: Any
) -> None:
    broker = await open_broker(server)
    try:
        event = go_json(envelope({"n": 1}))
        first = await broker.publish("orders", event, {})
        again = await broker.publish("orders", event, {})  # a publisher's retry, say
        raw = await broker.publish("orders", b"not a cloudevent", {})  # no id: stored every time
        raw_again = await broker.publish("orders", b"not a cloudevent", {})
    finally:
        await broker.close()
    assert first == again == "ORDERS:1"
    assert (raw, raw_again) == ("ORDERS:2", "ORDERS:3")
    info = await api(client, "STREAM.INFO.ORDERS")
    assert info["state"]["messages"] == 3


async def test_the_consumer_made_here_is_the_one_daprds_subscribe_makes(
    server: NatsServer, client: Any
) -> None:
    metadata = {
        "durableName": "billing", "queueGroupName": "billing-replicas", "ackWait": "20s",
        "maxDeliver": "7", "maxAckPending": "50", "deliverPolicy": "new", "heartbeat": "2s",
        "flowControl": "true", "rateLimit": "80000", "backOff": "1s, 3s",
    }  # fmt: skip
    broker = await open_broker(server, **metadata)
    try:
        await broker.subscribe("orders")
        info = await api(client, "CONSUMER.INFO.ORDERS.billing")
    finally:
        await broker.close()
    config = info["config"]
    # nats.go's encoding of the ConsumerConfig daprd's Subscribe builds from that metadata.
    assert {
        key: config.get(key)
        for key in (
            "durable_name",
            "deliver_group",
            "deliver_policy",
            "ack_policy",
            "ack_wait",
            "max_deliver",
            "max_ack_pending",
            "filter_subject",
            "replay_policy",
            "idle_heartbeat",
            "flow_control",
            "rate_limit_bps",
            "backoff",
        )
    } == {
        "durable_name": "billing",
        "deliver_group": "billing-replicas",
        "deliver_policy": "new",
        "ack_policy": "explicit",
        "ack_wait": 1_000_000_000,
        "max_deliver": 7,
        "max_ack_pending": 50,
        "filter_subject": "orders",
        "replay_policy": "instant",
        "idle_heartbeat": 2_000_000_000,
        "flow_control": True,
        "rate_limit_bps": 80000,
        "backoff": [1_000_000_000, 3_000_000_000],
    }  # fmt: skip  (with a backoff, the server takes its first delay as the ack wait)
    assert config["deliver_subject"] == "_INBOX.dapr.ORDERS.billing"
    from fastapi_dapr.brokers.jetstream_settings import JetStreamSettings

    sent = JetStreamSettings.read("p", {"natsURL": "x", **metadata}).consumer_config(
        "orders", "billing", "billing-replicas", "_INBOX.x"
    )
    assert sent["ack_wait"] == 20_000_000_000  # as nats.go sends it
    assert sent["num_replicas"] == 0


async def test_a_consumer_daprd_made_is_used_as_it_is_and_shared_with_daprds_replica(
    server: NatsServer, client: Any
) -> None:
    # daprd's Subscribe with durableName and queueGroupName: AddConsumer with a new inbox, then
    # a queue subscription bound to it.
    inbox = client.new_inbox()
    config = {
        "durable_name": "shared", "deliver_subject": inbox, "deliver_group": "workers",
        "deliver_policy": "all", "ack_policy": "explicit", "filter_subject": "orders",
        "replay_policy": "instant", "num_replicas": 0,
    }  # fmt: skip
    created = await api(
        client, "CONSUMER.CREATE.ORDERS.shared.orders", {"stream_name": "ORDERS", "config": config}
    )
    assert "error" not in created
    daprd_got: list[bytes] = []
    ours: list[bytes] = []
    all_in = asyncio.Event()

    async def daprd_handler(msg: Any) -> None:
        daprd_got.append(msg.data)
        await msg.ack()
        if len(ours) + len(daprd_got) >= 60:
            all_in.set()

    await client.subscribe(inbox, queue="workers", cb=daprd_handler)
    # A second daprd replica would fail here: nats-server 2.9 refuses to move an active consumer.
    moved = await api(
        client,
        "CONSUMER.CREATE.ORDERS.shared.orders",
        {"stream_name": "ORDERS", "config": {**config, "deliver_subject": client.new_inbox()}},
    )
    assert moved["error"]["err_code"] == 10013  # consumer name already in use
    broker = await open_broker(server, durableName="shared", queueGroupName="workers")
    try:
        consumer = await broker.subscribe("orders")  # ours joins daprd's instead

        async def take() -> None:
            while True:
                for delivery in await consumer.receive(10):
                    ours.append(delivery.message.data)
                    await delivery.ack()
                if len(ours) + len(daprd_got) >= 60:
                    all_in.set()

        taker = asyncio.ensure_future(take())
        publisher = client.jetstream()
        for n in range(60):
            await publisher.publish("orders", str(n).encode())
        await asyncio.wait_for(all_in.wait(), WAIT)
        taker.cancel()
        info = await api(client, "CONSUMER.INFO.ORDERS.shared")
    finally:
        await broker.close()
    assert sorted(ours + daprd_got, key=int) == [str(n).encode() for n in range(60)]  # each once
    assert ours  # shared
    assert daprd_got
    assert info["config"]["deliver_subject"] == inbox  # daprd's consumer, untouched


async def test_a_consumer_that_does_not_fit_the_subscription_is_refused_by_name(
    server: NatsServer, client: Any
) -> None:
    broker = await open_broker(server, durableName="one")
    other = await open_broker(server, durableName="one")
    try:
        await broker.subscribe("orders")
        with pytest.raises(
            BrokerError, match=r"filters orders, not orders\.paid: give each topic a durableName"
        ):
            await broker.subscribe("orders.paid")
        # durableName without queueGroupName: one subscriber at a time, as daprd's.
        with pytest.raises(
            BrokerError, match="has a subscriber already and no deliver group: set queueGroupName"
        ):
            await other.subscribe("orders")
        with pytest.raises(
            BrokerError, match="no stream take the subject nowhere: create one, or set streamName"
        ):
            await broker.subscribe("nowhere")
        with pytest.raises(BrokerError, match="no JetStream stream takes the subject nowhere"):
            await broker.publish("nowhere", b"x", {})
    finally:
        await broker.close()
        await other.close()
    named = await open_broker(server, streamName="MISSING")
    try:
        with pytest.raises(BrokerError, match="stream MISSING not found"):
            await named.subscribe("orders")
    finally:
        await named.close()


# -- settling ------------------------------------------------------------------------------------


async def test_a_message_given_up_comes_again_after_ack_wait_up_to_max_deliver(
    server: NatsServer, client: Any
) -> None:
    broker = await open_broker(server, ackWait="1s", maxDeliver="2")
    try:
        consumer = await broker.subscribe("orders")
        await broker.publish("orders", b"unlucky", {})
        (first,) = await asyncio.wait_for(consumer.receive(1), WAIT)
        loop = asyncio.get_running_loop()
        given_up = loop.time()
        await first.nack(redeliver=False)  # retries exhausted, no dead-letter topic
        (again,) = await asyncio.wait_for(consumer.receive(1), WAIT)
        assert loop.time() - given_up >= 0.9  # daprd's NakWithDelay(ackWait)
        assert (again.message.id, again.message.data) == (first.message.id, b"unlucky")
        await again.nack(redeliver=False)
        with pytest.raises(asyncio.TimeoutError):  # maxDeliver 2: the server stops there
            await asyncio.wait_for(consumer.receive(1), 2.0)
    finally:
        await broker.close()


async def test_a_message_being_handled_is_not_given_to_another_replica(server: NatsServer) -> None:
    slow = await open_broker(server, ackWait="600ms")
    other = await open_broker(server, ackWait="600ms")
    try:
        slow_consumer = await slow.subscribe("orders")
        await slow.publish("orders", b"long job", {})
        (held,) = await asyncio.wait_for(slow_consumer.receive(1), WAIT)
        other_consumer = await other.subscribe("orders")
        # Held for four times ackWait: the server hears it is in progress, and keeps it here.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(other_consumer.receive(1), 2.4)
        await held.ack()
    finally:
        await slow.close()
        await other.close()


async def test_a_closed_consumer_hands_back_what_it_had_not_given_out(server: NatsServer) -> None:
    first = await open_broker(server, ackWait="30s")
    second = await open_broker(server, ackWait="30s")
    try:
        consumer = await first.subscribe("orders")
        for n in range(5):
            await first.publish("orders", str(n).encode(), {})
        (taken,) = await asyncio.wait_for(consumer.receive(1), WAIT)
        await taken.ack()
        await asyncio.sleep(0.2)  # the other four are pushed here meanwhile
        await consumer.close()  # long before ackWait: they go to the other replica at once
        later = await second.subscribe("orders")
        received = []
        while len(received) < 4:
            batch = await asyncio.wait_for(later.receive(10), 5)
            for delivery in batch:
                await delivery.ack()  # single mode: the next comes once this one is settled
            received += batch
        assert sorted(d.message.data for d in received) == [b"1", b"2", b"3", b"4"]
    finally:
        await first.close()
        await second.close()


# -- through the app -------------------------------------------------------------------------------


async def test_failed_messages_are_retried_until_processed(server: NatsServer, tmp_path: Path) -> None:
    from fastapi_dapr import RetryPolicy
    from fastapi_dapr.testing import FakeClock

    app, dapr = jetstream_app(tmp_path, server.url, "  - name: concurrencyMode\n    value: parallel\n")
    attempts: dict[int, int] = {}
    processed: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_job(event: CloudEvent[dict[str, int]]) -> Any:
        n = event.data["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n < 2 and attempts[n] <= 2:
            return RETRY
        if n % 5 == 4 and attempts[n] == 1:
            raise RuntimeError("every 5th fails once")
        processed.append(n)
        return None

    dapr.retry = RetryPolicy(policy="constant", duration=1.0, max_retries=3)
    async with DaprTest(app, clock=FakeClock()) as test:
        for n in range(10):
            await test.publish_and_wait("pubsub", "orders", {"n": n}, timeout=WAIT)
    assert sorted(processed) == list(range(10))
    assert attempts == {n: 3 if n < 2 else 2 if n % 5 == 4 else 1 for n in range(10)}


async def test_concurrency_mode_single_is_daprds_default_one_message_at_a_time(server: NatsServer) -> None:
    broker = await open_broker(server)
    try:
        consumer = await broker.subscribe("orders")
        for n in range(3):
            await broker.publish("orders", str(n).encode(), {})
        (first,) = await asyncio.wait_for(consumer.receive(10), WAIT)  # one, however many are asked
        second = asyncio.ensure_future(consumer.receive(10))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(second), 0.3)  # not before the first is settled
        await first.ack()
        (next_one,) = await asyncio.wait_for(second, WAIT)
        assert (first.message.data, next_one.message.data) == (b"0", b"1")
        await next_one.nack(redeliver=True)  # a nack gives the turn back too
        (again,) = await asyncio.wait_for(consumer.receive(10), WAIT)
        await again.ack()
    finally:
        await broker.close()


async def test_concurrency_mode_single_is_per_subscription_as_in_daprd(
    server: NatsServer, tmp_path: Path
) -> None:
    # daprd handles each subscription's messages one at a time: a slow one holds up its own.
    app, dapr = jetstream_app(tmp_path, server.url)
    other_handled = asyncio.Event()
    order: list[str] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        await asyncio.wait_for(other_handled.wait(), WAIT)  # held until the other topic's is handled
        order.append("orders")

    @dapr.subscribe("pubsub", "orders.audit")
    async def on_audit(event: CloudEvent[dict[str, int]]) -> None:
        order.append("orders.audit")
        other_handled.set()

    async with DaprTest(app) as test:
        await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        await test.client.post("/v1.0/publish/pubsub/orders.audit", json={"n": 2})
        first = await test.wait_for_delivery(topic="orders", timeout=WAIT + 5)
    assert first.outcome == "delivered"
    assert order == ["orders.audit", "orders"]


async def test_publishing_while_nats_is_down_is_a_500(server: NatsServer, tmp_path: Path) -> None:
    import httpx

    app, _ = jetstream_app(tmp_path, server.url)
    transport = httpx.ASGITransport(app=app)
    async with DaprTest(app), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.post("/v1.0/publish/pubsub/orders", json={"a": 1})).status_code == 204
        await server.stop()
        answer = await http.post("/v1.0/publish/pubsub/orders", json={"a": 1})
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"


# -- the docs page's component, and a consumer gone ---------------------------------------------


async def test_the_pages_component_delivers_as_it_says(
    server: NatsServer, tmp_path: Path, client: Any
) -> None:
    import shutil

    folder = tmp_path / "resources"
    shutil.copytree(EXAMPLES / "jetstream", folder)
    component = folder / "pubsub.yaml"
    component.write_text(component.read_text().replace("nats://localhost:4222", server.url))
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=folder)
    seen: list[Any] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        seen.append(event.data)

    async with DaprTest(app) as test:
        await test.publish_and_wait("pubsub", "orders", {"n": 1}, timeout=WAIT)
    assert seen == [{"n": 1}]
    config = (await api(client, "CONSUMER.INFO.ORDERS.checkout-orders"))["config"]
    assert (config["deliver_group"], config["ack_wait"], config["max_deliver"]) == (
        "checkout",
        30_000_000_000,
        10,
    )


async def test_a_consumer_deleted_under_a_subscription_is_made_again(server: NatsServer, client: Any) -> None:
    broker = await open_broker(server)
    try:
        consumer = await broker.subscribe("orders")
        deleted = await api(client, "CONSUMER.DELETE.ORDERS.checkout-orders")
        assert deleted.get("success") is True
        await broker.publish("orders", b"after", {})
        # Looked up again within a few seconds (at once after a reconnection), made again from
        # the start of the stream (deliverPolicy all), and the message comes.
        (delivery,) = await asyncio.wait_for(consumer.receive(1), 15)
        assert delivery.message.data == b"after"
        await delivery.ack()
    finally:
        await broker.close()
