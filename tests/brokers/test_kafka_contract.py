"""The broker contract (tests/brokers/contract.py) against `pubsub.kafka`, on a Kafka-protocol
broker of its own (tests/kafka_server.py; in CI a missing broker fails the tests).

The contract's topics are made ahead with one partition each, as Apache Kafka makes a topic
on first use (`num.partitions` 1): the order the contract checks is a partition's. The
group reads from the oldest record (`initialOffset: oldest`), as the contract's messages
published before the first subscription must arrive; daprd's default, newest, is tested in
test_kafka.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fastapi_dapr.brokers import Broker

from ..kafka_server import kafka_server
from .contract import BrokerContract, OpenBroker, receive

pytest.importorskip("aiokafka", reason="the kafka extra is not installed")

pytestmark = [pytest.mark.kafka, pytest.mark.process]

TOPICS = ("orders", "raw", "t", "a", "b", "early")
# What daprd's component adds to the headers of every delivery (consumer.go, GetEventMetadata).
DELIVERY_KEYS = {"__offset", "__topic", "__timestamp", "__partition"}

# Quick group membership for the tests (daprd's names; its defaults are 3s and 10s).
FAST = {"heartbeatInterval": "100ms", "sessionTimeout": "6s"}


class TestKafkaBroker(BrokerContract):
    instances_share = True  # replicas, on any host, are members of one consumer group

    @pytest.fixture
    async def open_broker(self) -> AsyncIterator[OpenBroker]:
        from fastapi_dapr.brokers.kafka import KafkaBroker

        async with kafka_server() as server:
            await server.create_topics(TOPICS)

            async def open_broker(**metadata: str) -> Broker:
                settings = {"brokers": server.url, "authType": "none", "initialOffset": "oldest", **FAST}
                broker = KafkaBroker("pubsub", {**settings, **metadata}, app_id="app")
                await broker.start()
                return broker

            yield open_broker

    async def test_messages_arrive_in_order_with_their_id_topic_data_and_metadata(
        self, broker: Broker
    ) -> None:
        # The contract's test, but for the entries daprd's Kafka component adds to every
        # delivery's metadata (the published entries come back as headers, unchanged).
        consumer = await broker.subscribe("orders")
        ids = [await broker.publish("orders", f"m{n}".encode(), {"n": str(n)}) for n in range(5)]
        assert len(set(ids)) == 5
        assert all(ids)
        received = await receive(consumer, 5)
        assert [d.message.id for d in received] == ids
        assert [d.message.data for d in received] == [f"m{n}".encode() for n in range(5)]
        published = [
            {k: v for k, v in d.message.metadata.items() if k not in DELIVERY_KEYS} for d in received
        ]
        assert published == [{"n": str(n)} for n in range(5)]
        assert all(set(d.message.metadata) == DELIVERY_KEYS | {"n"} for d in received)
        assert [d.message.metadata["__offset"] for d in received] == [str(n) for n in range(5)]
        assert {d.message.topic for d in received} == {"orders"}
        for delivery in received:
            await delivery.ack()

    async def test_data_is_bytes_kept_as_published(self, broker: Broker) -> None:
        consumer = await broker.subscribe("raw")
        data = bytes(range(256)) * 4
        await broker.publish("raw", data, {})
        await broker.publish("raw", b"", {})
        first, empty = await receive(consumer, 2)
        assert (first.message.data, set(first.message.metadata)) == (data, DELIVERY_KEYS)
        assert empty.message.data == b""

    async def test_a_message_handed_back_comes_again(self, broker: Broker) -> None:
        consumer = await broker.subscribe("t")
        await broker.publish("t", b"once", {"k": "v"})
        (delivery,) = await receive(consumer, 1)
        await delivery.nack(redeliver=True)  # RETRY, or a stop with the message in hand
        (again,) = await receive(consumer, 1)
        assert (again.message.id, again.message.data) == (delivery.message.id, b"once")
        assert dict(again.message.metadata) == dict(delivery.message.metadata)
        assert again.message.metadata["k"] == "v"
        await again.ack()
        await self.nothing_comes(consumer)
