"""`pubsub.rabbitmq`: RabbitMQ with daprd's layout, through aio-pika, at-least-once for real.

Layout, as daprd's component (`rabbitmq_layout.py`): an exchange per topic, a queue per
subscription (`queueName`, else `{consumerID}-{topic}`) with daprd's exact arguments, the
dead-letter exchange and queue with `enableDeadLetter`, a message's properties from its
metadata. So an app under daprd and an app on fastapi-dapr read each other's messages
on one RabbitMQ, and each can declare what the other declared.

Guarantees: a publish answers once RabbitMQ confirmed it (publisher confirms), and the
message is persistent, the exchange and the queue durable; a consumer acks only what the
engine settled (SUCCESS, DROP, a dead letter published), so the unacknowledged messages
of a process killed, or of a connection lost, are RabbitMQ's to deliver again. A lost
connection is made again `reconnectWaitSeconds` later (`rabbitmq_link.py`), and the
subscriptions declare and consume anew (`rabbitmq_consumer.py`).

Where it differs from daprd (docs/rabbitmq.md): publisher confirms, persistent messages
and a bounded prefetch by default; a separate connection for publishing; the publish's
metadata in the message headers (and so delivered with it); the message id set on every
message; messages published before the subscriptions start kept for a queue that did not
exist yet.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import aio_pika.abc
import aiormq.abc
from aiormq import spec
from aiormq.exceptions import AMQPError, ChannelClosed, ChannelInvalidStateError, DeliveryError

from .._json import go_dumps
from . import Broker, BrokerError, Consumer
from .rabbitmq_consumer import QueueConsumer
from .rabbitmq_layout import message_properties, queue_name, routing_keys
from .rabbitmq_link import NO_WAIT, Failure, Link
from .rabbitmq_settings import METADATA_KEYS, RabbitSettings, tls_context

__all__ = ["RabbitMQBroker"]

logger = logging.getLogger("fastapi_dapr")

PUBLISH_ATTEMPTS = 3  # daprd's publishMaxRetries
PUBLISH_TIMEOUT = 10.0  # seconds for RabbitMQ to confirm one publish
# Messages kept, before the subscriptions start, for a queue that does not exist yet.
EARLY_MESSAGES, EARLY_BYTES = 10_000, 64 * 1024 * 1024

_Kept = tuple[str, bytes, spec.Basic.Properties]  # routing key, body, properties


class RabbitMQBroker(Broker):
    """RabbitMQ, with daprd's `pubsub.rabbitmq` metadata."""

    type_name = "pubsub.rabbitmq"
    metadata_keys = METADATA_KEYS

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        self.settings = RabbitSettings.read(name, self.metadata)
        self._publishing: Link | None = None
        self._consuming: Link | None = None
        self._out: aiormq.abc.AbstractChannel | None = None  # the publishing channel
        self._out_generation = 0
        self._opening = asyncio.Lock()
        self._admin: aio_pika.abc.AbstractChannel | None = None  # declarations made when publishing
        self._exchanges: set[str] = set()  # declared on the current publishing connection
        self._consumers: list[QueueConsumer] = []
        self._closing = False
        self._holding = True  # until subscriptions_started: messages kept for queues to come
        self._early: dict[str, list[_Kept]] = {}
        self._early_size = 0

    async def start(self) -> None:
        context = await asyncio.to_thread(tls_context, self.metadata) if self.settings.tls else None
        self._publishing = Link(self.name, "publishing", self.settings, context)
        self._consuming = Link(self.name, "consuming", self.settings, context)
        try:
            await self._publishing.open()
            await self._consuming.open()
        except BrokerError:
            await self.close()
            raise

    @property
    def links(self) -> tuple[Link, Link]:
        """The publishing and the consuming connection."""
        if self._publishing is None or self._consuming is None:
            raise BrokerError(f"rabbitmq pubsub {self.name} is not started")
        return self._publishing, self._consuming

    async def close(self) -> None:
        self._closing = True
        for consumer in list(self._consumers):
            await consumer.close()
        self._consumers.clear()
        self._early.clear()
        for link in (self._publishing, self._consuming):
            if link is not None:
                await link.close()
        self._out = self._admin = None

    # -- publishing ----------------------------------------------------------------------------

    async def declare_exchange(
        self, channel: aiormq.abc.AbstractChannel, name: str, kind: str, durable: bool
    ) -> None:
        """An exchange as daprd declares it: `deletedWhenUnused` is its auto-delete."""
        await channel.exchange_declare(
            name, exchange_type=kind, durable=durable, auto_delete=self.settings.delete_when_unused
        )

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        """The publishing channel, opened again after it or its connection was lost."""
        link = self.links[0]
        channel = self._out
        if channel is not None and not channel.is_closed and self._out_generation == link.generation:
            return channel
        async with self._opening:
            channel = self._out
            if channel is None or channel.is_closed or self._out_generation != link.generation:
                connection = await link.connection(self.settings.reconnect_wait + 5)
                opened = await connection.channel(publisher_confirms=self.settings.publisher_confirm)
                channel = await opened.get_underlay_channel()
                self._out, self._out_generation = channel, link.generation
                self._exchanges.clear()  # a channel closed by a 404: the exchange may be gone
            return channel

    async def _ensure_exchange(self, topic: str) -> None:
        """The topic's exchange, declared once per connection on a channel of its own (RabbitMQ
        closes the channel of a refused declaration: not the one publishes are in flight on)."""
        admin = self._admin
        if admin is None or admin.is_closed:
            connection = await self.links[0].connection(self.settings.reconnect_wait + 5)
            admin = self._admin = await connection.channel(publisher_confirms=False)
        try:
            await self.declare_exchange(
                await admin.get_underlay_channel(), topic, self.settings.exchange_kind, self.settings.durable
            )
        except ChannelClosed as exc:
            raise BrokerError(f"RabbitMQ refused the exchange {topic}: {exc}") from None
        self._exchanges.add(topic)

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        """To the topic's exchange, as daprd publishes (`publishSync`); the message id, once
        RabbitMQ confirmed it. A lost channel or connection is tried again, three times."""
        if self._closing:
            raise BrokerError(f"rabbitmq pubsub {self.name} is closed")
        message_id = uuid.uuid4().hex
        fields = message_properties(self.settings, metadata, message_id)
        if (
            decoded is not None
            and "expiration" in decoded
            and "expiration" in fields
            and _ttl_given(metadata)
        ):
            # RabbitMQ expires the message itself (daprd's component declares the TTL feature):
            # as daprd, the CloudEvent carries no `expiration` of the TTL's.
            data = go_dumps({key: value for key, value in decoded.items() if key != "expiration"})
        properties = spec.Basic.Properties(**fields)
        routing_key = metadata.get("routingKey", "")
        error: BaseException | None = None
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                channel = await self._channel()
                if topic not in self._exchanges:
                    await self._ensure_exchange(topic)
                confirmed = await channel.basic_publish(
                    data,
                    exchange=topic,
                    routing_key=routing_key,
                    properties=properties,
                    timeout=PUBLISH_TIMEOUT,
                    **(NO_WAIT if self.settings.publisher_confirm else {}),
                )
            except (ChannelClosed, ChannelInvalidStateError) as exc:
                error = exc  # the channel (a 404: the exchange went with its last queue) or the connection
                self._exchanges.discard(topic)
                continue
            except DeliveryError as exc:
                raise BrokerError(f"RabbitMQ did not take the message: {exc}") from None
            except asyncio.TimeoutError:
                raise BrokerError(
                    f"RabbitMQ did not confirm the message within {PUBLISH_TIMEOUT:g}s"
                ) from None
            except (AMQPError, OSError) as exc:
                error = exc
                continue
            if confirmed is not None and not isinstance(confirmed, spec.Basic.Ack):
                raise BrokerError(f"RabbitMQ did not take the message: {confirmed}")
            if self._holding:
                self._keep(topic, routing_key, data, properties)
            return str(properties.message_id)
        raise BrokerError(f"publishing to {topic} failed: {error}")

    def _keep(self, topic: str, routing_key: str, data: bytes, properties: spec.Basic.Properties) -> None:
        if (
            len(data) + self._early_size > EARLY_BYTES
            or sum(map(len, self._early.values())) >= EARLY_MESSAGES
        ):
            return  # kept no more: a publisher that never subscribes must not grow without end
        self._early.setdefault(topic, []).append((routing_key, data, properties))
        self._early_size += len(data)

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        """Declare the subscription's layout and consume its queue; `metadata` is the
        subscription's (daprd's `queueName`, `routingKey`, `queueType`, `maxPriority`,
        `singleActiveConsumer`, `maxLen`, `maxLenBytes`)."""
        if self._closing:
            raise BrokerError(f"rabbitmq pubsub {self.name} is closed")
        subscription = dict(metadata or {})
        queue = queue_name(topic, self.consumer_group, subscription)
        try:
            consumer = QueueConsumer(
                topic,
                queue,
                subscription,
                pubsub=self.name,
                settings=self.settings,
                link=self.links[1],
                declare_exchange=self.declare_exchange,
            )
        except ValueError as exc:
            raise BrokerError(f"cannot subscribe to {topic}: {exc}") from None
        kept = self._early.pop(topic, []) if self._holding else []
        new = bool(kept) and not await self._queue_exists(queue)
        await consumer.start()
        self._consumers.append(consumer)
        if new:
            await self._replay(kept, queue, routing_keys(subscription))
        return consumer

    async def _queue_exists(self, queue: str) -> bool:
        connection = await self.links[1].connection(self.settings.reconnect_wait + 5)
        channel = await connection.channel(publisher_confirms=False)
        try:
            await (await channel.get_underlay_channel()).queue_declare(queue, passive=True)
        except ChannelClosed:
            return False  # 404 NOT_FOUND (and the channel is closed by it)
        finally:
            if not channel.is_closed:
                await channel.close()
        return True

    async def _replay(self, kept: list[_Kept], queue: str, keys: list[str]) -> None:
        """What was published to the topic before its queue existed, into that queue alone
        (the default exchange routes by queue name), as the queue's bindings would have
        routed it."""
        kind = self.settings.exchange_kind
        for routing_key, data, properties in kept:
            if not _routes(kind, routing_key, keys):
                continue
            try:
                channel = await self._channel()
                await channel.basic_publish(
                    data, exchange="", routing_key=queue, properties=properties, timeout=PUBLISH_TIMEOUT
                )
            except (*Failure, ChannelInvalidStateError, BrokerError) as exc:
                logger.warning(
                    "rabbitmq pubsub %s: a message published before %s existed was not added to it: %s",
                    self.name,
                    queue,
                    exc,
                )

    def subscriptions_started(self) -> None:
        self._holding = False
        self._early.clear()
        self._early_size = 0


def _ttl_given(metadata: Mapping[str, str]) -> bool:
    return any(key.lower() in ("ttl", "ttlinseconds") and value for key, value in metadata.items())


def _routes(kind: str, routing_key: str, bindings: list[str]) -> bool:
    """Whether an exchange of `kind` routes `routing_key` to a queue bound with `bindings`."""
    if kind in ("fanout", "headers"):  # headers: daprd binds without arguments, which match all
        return True
    if kind == "direct":
        return routing_key in bindings
    return any(_topic_matches(binding.split("."), routing_key.split(".")) for binding in bindings)


def _topic_matches(pattern: list[str], words: list[str]) -> bool:
    """AMQP's topic matching: `*` is one word, `#` zero or more."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_matches(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _topic_matches(rest, words[1:])
