"""`pubsub.kafka`: Kafka with daprd's record layout (components-contrib common/component/kafka).

Layout, as daprd's component: the topic is the Kafka topic; a record's value is the
message (the CloudEvent, or the raw payload); every publish metadata entry is a
record header, `partitionKey` (or `__key`) the key and `partitionNumber` the
partition; a record without a partition goes where Sarama's default hash partitioner
puts it (FNV-1a of the key, not aiokafka's murmur2), so that records of one key land
in one partition whichever of daprd or this broker wrote them. The consumer group is
`consumerGroup`, else `consumerID`, else the app id; its members use the `range`
assignor (`consumerGroupRebalanceStrategy`). A delivery's metadata is the headers,
with `__key`, `__offset`, `__topic`, `__timestamp` and `__partition`.

Where it differs from daprd, on purpose: an offset is committed only once every
message before it in its partition is done (daprd marks as it goes, and passes over a
message whose retries ran out, which loses it), and a message given up is delivered
again after a pause rather than blocking its partition (kafka_consumer.py).

The client is aiokafka; the settings are read by kafka_settings.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from . import Broker, BrokerError, Consumer
from .kafka_consumer import TopicConsumer
from .kafka_settings import METADATA_KEYS, KafkaSettings, partition_for, record_layout

__all__ = ["KafkaBroker"]

logger = logging.getLogger("fastapi_dapr")


class KafkaBroker(Broker):
    """Kafka, with daprd's `pubsub.kafka` metadata."""

    type_name = "pubsub.kafka"
    metadata_keys = METADATA_KEYS

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        self.settings = KafkaSettings.read(name, self.metadata, group=super().consumer_group)
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[TopicConsumer] = []
        self._connection: dict[str, Any] = {}

    @property
    def consumer_group(self) -> str:
        """`consumerGroup`, else `consumerID`, else the app id (daprd's order)."""
        return self.settings.group

    async def start(self) -> None:
        settings = self.settings
        mechanism, protocol = settings.sasl()
        self._connection = {
            "bootstrap_servers": list(settings.brokers),
            "client_id": settings.client_id,
            "security_protocol": protocol,
            "ssl_context": settings.tls_context(),
            "request_timeout_ms": int(max(settings.dial_timeout, 1.0) * 1000),
        }
        if mechanism is not None:
            self._connection.update(
                sasl_mechanism=mechanism,
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=settings.sasl_password,
            )
        producer = AIOKafkaProducer(
            **self._connection,
            acks=settings.acks,
            compression_type=settings.compression,
            max_request_size=settings.max_message_bytes,
            partitioner=partition_for,
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise BrokerError(f"cannot reach Kafka at {','.join(settings.brokers)}: {exc}") from None
        self._producer = producer

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        self._consumers.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # sends what it holds first

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        """One record as daprd's producer writes it; its id is `<partition>-<offset>`."""
        producer = self._producer
        if producer is None:
            raise BrokerError(f"kafka pubsub {self.name} is not started, or is closing")
        try:
            key, partition, headers = record_layout(metadata)
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        try:
            sent = await producer.send(topic, data, key=key, partition=partition, headers=headers)
            record = await sent
        except (KafkaError, AssertionError, ValueError) as exc:  # aiokafka asserts a partition's range
            raise BrokerError(f"Kafka did not take the message for {topic}: {exc!r}") from None
        return f"{record.partition}-{record.offset}"

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        if self._producer is None:
            raise BrokerError(f"kafka pubsub {self.name} is not started")
        consumer = TopicConsumer(topic, pubsub=self.name, settings=self.settings, connection=self._connection)
        try:
            await consumer.start()
        except (KafkaError, OSError) as exc:
            await consumer.close()
            raise BrokerError(f"cannot subscribe to {topic} on Kafka: {exc}") from None
        self._consumers.append(consumer)
        return consumer
