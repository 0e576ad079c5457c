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

# Quick group membership for the tests (daprd's names; its defaults are 3s and 10s).
FAST = {"heartbeatInterval": "100ms", "sessionTimeout": "6s"}


class TestKafkaBroker(BrokerContract):
    instances_share = True  # replicas, on any host, are members of one consumer group
    # What daprd's component adds to the headers of every delivery (consumer.go, GetEventMetadata).
    delivery_keys = frozenset({"__offset", "__topic", "__timestamp", "__partition"})

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

    async def test_a_delivery_has_its_offset_and_partition(self, broker: Broker) -> None:
        consumer = await broker.subscribe("orders")
        for n in range(3):
            await broker.publish("orders", f"m{n}".encode(), {})
        received = await receive(consumer, 3)
        assert [d.message.metadata["__offset"] for d in received] == ["0", "1", "2"]
        assert {(d.message.metadata["__topic"], d.message.metadata["__partition"]) for d in received} == {
            ("orders", "0")
        }
        for delivery in received:
            await delivery.ack()
