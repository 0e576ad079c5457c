"""`pubsub.rabbitmq` against a real rabbitmq-server started by the tests: daprd's layout, field by
field, read and written with aio-pika directly; delivery through an app; dead letters, routing
keys, the concurrency mode. One server for the module, a virtual host for each test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import DROP, RETRY, CloudEvent, Dapr
from fastapi_dapr.brokers import Broker, BrokerError
from fastapi_dapr.testing import DaprTest

from ..rabbitmq_server import RabbitMQServer, shared_rabbitmq_server

aio_pika = pytest.importorskip("aio_pika", reason="the rabbitmq extra is not installed")
from aiormq.exceptions import ChannelPreconditionFailed  # noqa: E402

pytestmark = [pytest.mark.rabbitmq, pytest.mark.process]

ENVELOPE = {
    "specversion": "1.0", "id": "e-1", "source": "shop", "type": "com.dapr.event.sent",
    "datacontenttype": "application/json", "data": {"order": 7}, "topic": "orders", "pubsubname": "pubsub",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    with shared_rabbitmq_server(tmp_path_factory.mktemp("rabbitmq"), vhosts=40) as started:
        yield started


@pytest.fixture
def url(server: RabbitMQServer) -> str:
    """The URL of a virtual host of this test's own."""
    return server.url(server.next_vhost())


@pytest.fixture
async def amqp(url: str) -> AsyncIterator[Any]:
    """A channel of aio-pika's own, beside the component: what another client sees."""
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def open_broker(url: str) -> AsyncIterator[Any]:
    from fastapi_dapr.brokers.rabbitmq import RabbitMQBroker

    brokers: list[Broker] = []

    async def open_broker(app_id: str = "app", **metadata: str) -> Broker:
        broker = RabbitMQBroker("pubsub", {"connectionString": url, **metadata}, app_id=app_id)
        await broker.start()
        brokers.append(broker)
        return broker

    yield open_broker
    for broker in brokers:
        await broker.close()


def rabbitmq_app(folder: Path, url: str, extra: str = "", app_id: str = "checkout") -> tuple[FastAPI, Dapr]:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.rabbitmq\n  version: v1\n  metadata:\n"
        f"  - name: connectionString\n    value: {url}\n" + extra
    )
    app = FastAPI()
    return app, Dapr(app, app_id=app_id, resources_path=resources)


async def get_one(channel: Any, queue: str, timeout: float = 10) -> Any:
    """The next message of `queue` as it is on the wire (aiormq's: its properties unread),
    waited for by a consumer of its own."""
    underlay = await channel.get_underlay_channel()
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_message(message: Any) -> None:
        if not got.done():
            got.set_result(message)
            await underlay.basic_ack(message.delivery.delivery_tag)

    await underlay.basic_qos(prefetch_count=1)
    consuming = await underlay.basic_consume(queue, on_message)
    try:
        return await asyncio.wait_for(got, timeout)
    finally:
        await underlay.basic_cancel(consuming.consumer_tag)


# -- what this component writes is what daprd's reads ------------------------------------------


async def test_a_message_published_is_written_as_daprd_writes_it(open_broker: Any, amqp: Any) -> None:
    broker = await open_broker(deliveryMode="0", ttlInSeconds="30")
    await broker.publish("orders", b"{}", {})  # the exchange is declared by the first publish
    # daprd's declaration of the topic's exchange (fanout, durable, auto-delete) is accepted as
    # it is: RabbitMQ would refuse it (406) if the flags differed.
    exchange = await amqp.declare_exchange("orders", "fanout", durable=True, auto_delete=True)
    queue = await amqp.declare_queue("reader", durable=True)
    await queue.bind(exchange, routing_key="")
    metadata = {
        "ttlInSeconds": "60", "priority": "300", "messageID": "m-1", "correlationID": "c-1",
        "type": "order.created", "traceparent": ENVELOPE["traceparent"],
    }  # fmt: skip
    message_id = await broker.publish("orders", json.dumps(ENVELOPE).encode(), metadata)
    got = await get_one(amqp, "reader")
    properties = got.header.properties
    assert message_id == "m-1"
    assert json.loads(got.body) == ENVELOPE  # the body is the CloudEvent, as published
    assert properties.content_type == "text/plain"  # daprd's, unless contentType says otherwise
    assert properties.delivery_mode is None  # deliveryMode 0: none, as amqp091-go sends it
    assert properties.expiration == "60000"  # ttlInSeconds in milliseconds (over the component's)
    assert properties.priority == 255  # at most 255, as daprd clamps it
    assert (properties.message_id, properties.correlation_id) == ("m-1", "c-1")
    assert properties.message_type == "order.created"
    # The publish's metadata, in the headers: daprd reads them only with
    # publishMessagePropertiesToMetadata.
    assert properties.headers == metadata
    assert (got.delivery.exchange, got.delivery.routing_key) == ("orders", "")


async def test_the_component_ttl_and_routing_key_and_content_type(open_broker: Any, amqp: Any) -> None:
    broker = await open_broker(exchangeKind="direct", ttlInSeconds="30")
    await broker.publish("orders", b"x", {})
    exchange = await amqp.declare_exchange("orders", "direct", durable=True, auto_delete=True)
    queue = await amqp.declare_queue("eu", durable=True)
    await queue.bind(exchange, routing_key="eu")
    await broker.publish("orders", b"us", {"routingKey": "us"})  # routed elsewhere: nobody's
    await broker.publish("orders", b"eu", {"routingKey": "eu", "contentType": "application/json"})
    got = await get_one(amqp, "eu")
    properties = got.header.properties
    assert (got.body, got.delivery.routing_key, properties.content_type) == (b"eu", "eu", "application/json")
    assert properties.expiration == "30000"  # the component's ttlInSeconds
    assert properties.delivery_mode == 2  # persistent, this component's default (daprd's is 0)
    assert properties.message_id  # an id on every message (daprd sets one only from messageID)
    assert properties.priority is None


async def test_queues_are_declared_with_daprds_arguments(open_broker: Any, amqp: Any) -> None:
    broker = await open_broker(
        enableDeadLetter="true", maxLen="100", maxLenBytes="1048576", deletedWhenUnused="false"
    )
    subscription = {"maxPriority": "999", "singleActiveConsumer": "true", "maxLen": "50"}
    await broker.subscribe("orders", subscription)
    # As daprd declares them (prepareSubscription): a redeclaration with exactly these succeeds...
    arguments = {
        "x-dead-letter-exchange": "dlx-app-orders", "x-max-length": 50, "x-max-length-bytes": 1048576,
        "x-max-priority": 255, "x-queue-type": "classic", "x-single-active-consumer": True,
    }  # fmt: skip
    await amqp.declare_queue("app-orders", durable=True, auto_delete=False, arguments=arguments)
    dead = {"x-max-length": 100, "x-max-length-bytes": 1048576, "x-queue-mode": "lazy"}
    await amqp.declare_queue("dlq-app-orders", durable=True, auto_delete=False, arguments=dead)
    await amqp.declare_exchange("dlx-app-orders", "fanout", durable=True, auto_delete=False)
    await amqp.declare_exchange("orders", "fanout", durable=True, auto_delete=False)
    # ...and one with any other argument is refused, as daprd's would be by ours.
    with pytest.raises(ChannelPreconditionFailed, match="x-max-priority"):
        await amqp.declare_queue("app-orders", durable=True, arguments={**arguments, "x-max-priority": 10})


async def test_a_queue_daprd_declared_is_consumed_as_it_is(open_broker: Any, amqp: Any) -> None:
    # daprd's declaration first, with its defaults (durable, auto-delete, a classic queue)...
    exchange = await amqp.declare_exchange("orders", "fanout", durable=True, auto_delete=True)
    queue = await amqp.declare_queue(
        "checkout-orders", durable=True, auto_delete=True, arguments={"x-queue-type": "classic"}
    )
    await queue.bind(exchange, routing_key="")
    # ...then this component's, for the same app id: no 406, and it consumes what is there.
    broker = await open_broker(app_id="checkout")
    consumer = await broker.subscribe("orders")
    await exchange.publish(aio_pika.Message(b"from daprd", content_type="text/plain"), routing_key="")
    (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
    assert (delivery.message.data, dict(delivery.message.metadata)) == (b"from daprd", {})
    await delivery.ack()


async def test_a_queue_declared_with_other_arguments_is_refused_by_name(open_broker: Any, amqp: Any) -> None:
    await amqp.declare_queue("app-orders", durable=True, auto_delete=True, arguments={"x-max-length": 5})
    broker = await open_broker()
    with pytest.raises(BrokerError, match=r"cannot subscribe to orders \(queue app-orders\).*x-max-length"):
        await broker.subscribe("orders")
    with pytest.raises(BrokerError, match="invalid queue type lazy"):
        await broker.subscribe("orders", {"queueType": "lazy"})


# -- what daprd's component writes is what this one reads ----------------------------------------


KEEP = "  - name: deletedWhenUnused\n    value: 'false'\n"  # the queues stay when the app stops


async def test_a_message_written_as_daprd_writes_it_is_delivered(url: str, amqp: Any, tmp_path: Path) -> None:
    app, dapr = rabbitmq_app(tmp_path, url, KEEP)
    got: list[CloudEvent[dict[str, Any]]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, Any]]) -> None:
        got.append(event)

    async with DaprTest(app) as test:
        # As daprd's publishSync: to the topic's exchange, routing key "", text/plain, transient,
        # no message id, no headers, the CloudEvent as the body.
        exchange = await amqp.get_exchange("orders")
        message = aio_pika.Message(json.dumps(ENVELOPE).encode(), content_type="text/plain", delivery_mode=0)
        await exchange.publish(message, routing_key="")
        report = await test.wait_for_delivery(topic="orders", timeout=10)
    assert report.outcome == "delivered"
    assert (got[0].id, got[0].data, got[0].source) == ("e-1", {"order": 7}, "shop")
    queue = await amqp.declare_queue("checkout-orders", passive=True)  # the app id's queue...
    assert queue.declaration_result.message_count == 0  # ...acknowledged


async def test_daprds_message_properties_reach_the_metadata_when_asked(open_broker: Any, amqp: Any) -> None:
    broker = await open_broker(publishMessagePropertiesToMetadata="true")
    consumer = await broker.subscribe("orders")
    exchange = await amqp.get_exchange("orders")
    message = aio_pika.Message(
        b"{}",
        message_id="m-9",
        correlation_id="c-9",
        type="kind",
        content_type="text/plain",
        headers={"h": "v"},
    )
    await exchange.publish(message, routing_key="")
    (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
    assert dict(delivery.message.metadata) == {
        "h": "v", "metadata.h": "v", "metadata.messageid": "m-9", "metadata.correlationid": "c-9",
        "metadata.type": "kind", "metadata.contenttype": "text/plain",
    }  # fmt: skip
    await delivery.ack()


async def test_hostile_headers_and_properties_are_read_and_never_become_http_headers_as_they_are(
    open_broker: Any, amqp: Any
) -> None:
    # Written by another client: every AMQP field type in the headers, tables and arrays nested,
    # bytes that are not UTF-8, CR and LF, long strings, and properties with control characters.
    import datetime
    import decimal

    from fastapi_dapr.sidecar.delivery import message_headers

    broker = await open_broker(publishMessagePropertiesToMetadata="true")
    consumer = await broker.subscribe("orders")
    exchange = await amqp.get_exchange("orders")
    headers: dict[str, Any] = {
        "x-bytes": bytearray(b"\xff\xfe ok"),
        "x-crlf": "a\r\nx-evil: 1",
        "x-int": 7,
        "x-bool": True,
        "x-none": None,
        "x-decimal": decimal.Decimal("1.25"),
        "x-time": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "x-table": {"b": [1, "two", {"c": None}], "a": False},
        "x-long": "v" * 100_000,
        "bad name": "v",
    }
    message = aio_pika.Message(b"{}", message_id="m\r\n9", correlation_id="c\x00", headers=headers)
    await exchange.publish(message, routing_key="")
    (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
    await delivery.ack()
    metadata = delivery.message.metadata
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items())
    assert metadata["x-bytes"] == metadata["metadata.x-bytes"] == "\ufffd\ufffd ok"
    assert (metadata["x-int"], metadata["x-bool"], metadata["x-crlf"]) == ("7", "true", "a\r\nx-evil: 1")
    assert "x-none" not in metadata
    assert "metadata.x-none" not in metadata
    assert (metadata["metadata.messageid"], metadata["metadata.correlationid"]) == ("m\r\n9", "c\x00")
    assert len(metadata["x-long"]) == 100_000
    # Other types as daprd's fmt.Sprintf("%v") writes what amqp091-go decoded.
    assert metadata["metadata.x-table"] == "map[a:false b:[1 two map[c:<nil>]]]"
    assert (metadata["metadata.x-decimal"], metadata["metadata.x-time"]) == (
        "{2 125}",
        "2026-01-02 03:04:05 +0000 UTC",
    )
    sent = dict(message_headers(metadata))
    assert not {b"x-crlf", b"metadata.x-crlf", b"metadata.messageid", b"metadata.correlationid"} & set(sent)
    assert b"bad name" not in sent
    assert sent[b"x-int"] == b"7"


# -- through an app ------------------------------------------------------------------------------


async def test_publish_through_the_app_and_deliver(url: str, tmp_path: Path) -> None:
    app, dapr = rabbitmq_app(tmp_path, url)
    seen: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        seen.append(event.data["n"])

    async with DaprTest(app) as test:
        for n in range(10):
            await test.publish_and_wait("pubsub", "orders", {"n": n}, timeout=10)
    assert sorted(seen) == list(range(10))


async def test_failed_messages_are_retried_until_processed(url: str, tmp_path: Path) -> None:
    """A handler failing the first two attempts and every 5th message once: all end up processed."""
    from fastapi_dapr import RetryPolicy
    from fastapi_dapr.testing import FakeClock

    app, dapr = rabbitmq_app(tmp_path, url)
    attempts: dict[int, int] = {}
    processed: list[int] = []

    @dapr.subscribe("pubsub", "jobs")
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
            await test.publish_and_wait("pubsub", "jobs", {"n": n}, timeout=10)
    assert sorted(processed) == list(range(10))
    assert attempts == {n: 3 if n < 2 else 2 if n % 5 == 4 else 1 for n in range(10)}


async def test_a_message_given_up_goes_to_the_dead_letter_queue_and_a_drop_does_not(
    url: str, amqp: Any, tmp_path: Path
) -> None:
    from fastapi_dapr import RetryPolicy

    app, dapr = rabbitmq_app(tmp_path, url, KEEP + "  - name: enableDeadLetter\n    value: 'true'\n")

    @dapr.subscribe("pubsub", "jobs")
    async def on_job(event: CloudEvent[dict[str, str]]) -> Any:
        return DROP if event.data["job"] == "drop" else RETRY

    dapr.retry = RetryPolicy(policy="constant", duration=0.0, max_retries=1)
    async with DaprTest(app) as test:
        dropped = await test.publish_and_wait("pubsub", "jobs", {"job": "drop"}, timeout=10)
        failed = await test.publish_and_wait("pubsub", "jobs", {"job": "fail"}, timeout=10)
    assert (dropped.outcome, failed.outcome) == ("dropped", "failed")
    # Rejected without requeue, the failed one went to dlq-{queue} through dlx-{queue}: a DROP is
    # acknowledged, as daprd acknowledges it.
    dead = await get_one(amqp, "dlq-checkout-jobs")
    assert json.loads(dead.body)["data"] == {"job": "fail"}
    assert dead.header.properties.headers["x-death"][0]["reason"] == "rejected"
    queue = await amqp.declare_queue("dlq-checkout-jobs", passive=True)
    assert queue.declaration_result.message_count == 0


async def test_requeue_in_failure_gives_a_message_given_up_again(open_broker: Any) -> None:
    broker = await open_broker(requeueInFailure="true")
    consumer = await broker.subscribe("jobs")
    await broker.publish("jobs", b"unlucky", {})
    (first,) = await asyncio.wait_for(consumer.receive(1), 10)
    await first.nack(redeliver=False)  # retries exhausted, no dead-letter topic
    (again,) = await asyncio.wait_for(consumer.receive(1), 10)
    assert (again.message.id, again.message.data) == (first.message.id, b"unlucky")
    await again.ack()


async def test_routing_keys_of_the_subscription_bind_its_queue(open_broker: Any) -> None:
    broker = await open_broker(exchangeKind="topic")
    consumer = await broker.subscribe("orders", {"routingKey": "eu.*,us.ny"})
    for key in ("eu.fr", "asia.jp", "us.ny", "us.ca", "eu.de.berlin"):
        await broker.publish("orders", key.encode(), {"routingKey": key})
    first, second = await asyncio.wait_for(consumer.receive(2), 10), None
    got = [d.message.data for d in first]
    if len(got) < 2:
        second = await asyncio.wait_for(consumer.receive(1), 10)
        got += [d.message.data for d in second]
    assert got == [b"eu.fr", b"us.ny"]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(consumer.receive(1), 0.5)


async def test_a_queue_name_of_the_subscription_is_its_queue(open_broker: Any, amqp: Any) -> None:
    broker = await open_broker()
    consumer = await broker.subscribe("orders", {"queueName": "shared-orders"})
    await broker.publish("orders", b"x", {})
    (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
    await delivery.ack()
    await amqp.declare_queue("shared-orders", passive=True)  # there, and no app-orders:
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await amqp.declare_queue("app-orders", passive=True)


async def test_concurrency_mode_single_hands_out_one_message_at_a_time(open_broker: Any) -> None:
    broker = await open_broker(concurrencyMode="single")
    consumer = await broker.subscribe("jobs")
    for n in range(3):
        await broker.publish("jobs", str(n).encode(), {})
    (first,) = await asyncio.wait_for(consumer.receive(10), 10)  # one, however many are asked
    second = asyncio.ensure_future(consumer.receive(10))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(second), 0.3)  # not before the first is settled
    await first.ack()
    (next_one,) = await asyncio.wait_for(second, 10)
    assert (first.message.data, next_one.message.data) == (b"0", b"1")
    await next_one.ack()


async def test_the_metadata_names_daprd_knows_are_known(tmp_path: Path, url: str, caplog: Any) -> None:
    from fastapi_dapr.brokers.rabbitmq import RabbitMQBroker

    extra = "  - name: prefetchCont\n    value: '5'\n  - name: deletedWhenUnused\n    value: 'false'\n"
    app, _ = rabbitmq_app(tmp_path, url, extra)
    async with DaprTest(app):
        pass
    assert (
        "prefetchCont is not a metadata name of pubsub.rabbitmq (did you mean prefetchCount?)" in caplog.text
    )
    assert "reconnectWaitSeconds" in (RabbitMQBroker.metadata_keys or ())


async def test_a_ttl_is_the_messages_expiration_not_the_cloudevents(
    url: str, amqp: Any, tmp_path: Path
) -> None:
    app, dapr = rabbitmq_app(tmp_path, url)
    exchange = await amqp.declare_exchange("orders", "fanout", durable=True, auto_delete=True)
    queue = await amqp.declare_queue("reader", durable=True)
    await queue.bind(exchange, routing_key="")
    async with DaprTest(app):
        await dapr.publish("pubsub", "orders", {"n": 2}, metadata={"ttlInSeconds": "60"})
        got = await get_one(amqp, "reader")
    # As daprd with a component that expires messages itself: RabbitMQ's expiration, in ms,
    # and no `expiration` in the CloudEvent.
    assert got.header.properties.expiration == "60000"
    event = json.loads(got.body)
    assert event["data"] == {"n": 2}
    assert "expiration" not in event


async def test_a_declarative_subscriptions_metadata_names_its_queue_and_routing_keys(
    url: str, amqp: Any, tmp_path: Path
) -> None:
    app, dapr = rabbitmq_app(tmp_path, url, KEEP + "  - name: exchangeKind\n    value: direct\n")
    (tmp_path / "resources" / "subscription.yaml").write_text(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: eu}\nspec:\n"
        "  pubsubname: pubsub\n  topic: orders\n  routes: {default: /orders}\n"
        "  metadata: {queueName: eu-orders, routingKey: eu}\n"
    )
    got: list[Any] = []

    @app.post("/orders")
    async def orders(event: dict[str, Any]) -> None:
        got.append(event["data"])

    async with DaprTest(app) as test:
        await dapr.publish("pubsub", "orders", "us", metadata={"routingKey": "us"})
        await dapr.publish("pubsub", "orders", "eu", metadata={"routingKey": "eu"})
        await test.wait_for_delivery(topic="orders", timeout=10)
    assert got == ["eu"]
    await amqp.declare_queue("eu-orders", passive=True)  # the subscription's queue
