"""Pub/sub brokers: the family of interchangeable parts behind a `pubsub.*` Component.

A broker stores messages by topic and hands them to consumer groups; what to do
with them (routing, retries, dead letters) is the delivery engine's business.
Each Component `spec.type` names its class by import string, imported only
when a resource asks for it, so a broker's client library is needed only by the
apps that use that broker.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

__all__ = [
    "BROKER_TYPES",
    "Broker",
    "BrokerError",
    "BrokerMetrics",
    "Consumer",
    "Delivery",
    "Message",
    "WaitingLine",
    "load_broker_class",
    "one_at_a_time",
]

BROKER_TYPES: dict[str, tuple[str, str | None]] = {
    # spec.type: (import string, the extra that installs its client)
    "pubsub.in-memory": ("fastapi_dapr.brokers.memory:MemoryBroker", None),
    "pubsub.redis": ("fastapi_dapr.brokers.redis:RedisBroker", "redis"),
    "pubsub.rabbitmq": ("fastapi_dapr.brokers.rabbitmq:RabbitMQBroker", "rabbitmq"),
    "pubsub.jetstream": ("fastapi_dapr.brokers.jetstream:JetStreamBroker", "nats"),
    "pubsub.kafka": ("fastapi_dapr.brokers.kafka:KafkaBroker", "kafka"),
}


class BrokerError(Exception):
    """The broker could not do what was asked (not connected, full, ...)."""


class BrokerMetrics(Protocol):
    """What a broker counts of what it settles on its own; the runtime's metrics are one."""

    def parked(self, pubsub: str, topic: str) -> None:
        """A message of `topic` put aside after its last allowed delivery."""


class Message(NamedTuple):
    """One message as a broker stores it (reference 5.1: `data` and `metadata`).

    `decoded` is the CloudEvent `data` encodes, when the broker still has it
    from the publisher (in process); consumers must not change it. (A named
    tuple: immutable, and cheap to make once per message.)
    """

    topic: str
    data: bytes
    metadata: Mapping[str, str]
    id: str = ""
    decoded: Mapping[str, Any] | None = None


class Delivery:
    """A message handed to a consumer, to settle exactly once."""

    __slots__ = ("_consumer", "message")

    def __init__(self, consumer: Consumer, message: Message) -> None:
        self._consumer = consumer
        self.message = message

    async def ack(self) -> None:
        """Processed (delivered, dropped or dead-lettered): never deliver it again."""
        await self._consumer.ack([self])

    async def nack(self, *, redeliver: bool) -> None:
        """Not processed. `redeliver=True` when it should be tried again (shutdown);
        `False` when retries are exhausted and there is no dead-letter topic."""
        await self._consumer.nack(self, redeliver=redeliver)


class WaitingLine:
    """Receivers waiting for messages, each on a future of its own; a message wakes
    one of them (as `asyncio.Queue` does), so many cost nothing while idle.

    A wake that has not been taken up yet stands for the next ones: the woken
    receiver looks at what has arrived meanwhile, and takes one message while
    waking the next receiver if more are left. So a batch of messages costs one
    wake-up at a time, and a receiver that handles its message without
    suspending takes the next itself instead of waking another for it.
    """

    __slots__ = ("_receivers", "_woken")

    def __init__(self) -> None:
        self._receivers: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0  # receivers woken that have not run yet

    def wake_one(self) -> None:
        if self._woken:
            return  # one is on its way: it wakes the next if there is more
        while self._receivers:
            receiver = self._receivers.popleft()
            if not receiver.done():
                receiver.set_result(None)
                self._woken += 1
                return

    async def wait(self) -> None:
        """Wait for a turn (callers check again for messages when woken)."""
        receiver = asyncio.get_running_loop().create_future()
        self._receivers.append(receiver)
        try:
            await receiver
        except asyncio.CancelledError:
            if receiver.done() and not receiver.cancelled():
                self._woken -= 1
                self.wake_one()  # it was this one's turn: pass it on
            raise
        self._woken -= 1


class Consumer:
    """A consumer group's view of one topic."""

    concurrency: int | None = None
    """Messages of this subscription handled at once (daprd's `concurrencyMode: single`: 1,
    which `receive` enforces too); None: the engine's limit."""

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        """Wait for at least one message; return at most `max_count`."""
        raise NotImplementedError

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        raise NotImplementedError

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


async def one_at_a_time(
    turn: asyncio.Semaphore, take: Callable[[int], Awaitable[Sequence[Delivery]]]
) -> Sequence[Delivery]:
    """One message, once `turn` is free (`concurrencyMode: single`): the consumer gives the
    turn back when that message is settled, or here when none was taken."""
    await turn.acquire()
    try:
        return await take(1)
    except BaseException:
        turn.release()
        raise


class Broker:
    """A pub/sub component instance."""

    type_name: str = ""
    metadata_keys: frozenset[str] | None = None
    """The metadata names this type knows (used, or ignored on purpose); the runtime names
    any other one at start-up. None: not checked."""
    concurrency: int | None = None
    """Messages handled at once across the subscriptions of this component (daprd's
    `concurrency` metadata, where the component has one); None: the engine's limit."""
    metrics: BrokerMetrics | None = None
    """Where a broker counts what it settles on its own: set by whoever runs it (the
    runtime gives its metrics) before `start`."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        self.name = name
        self.metadata = dict(metadata)
        self.app_id = app_id

    async def start(self) -> None:
        """Connect; raise `BrokerError` if the broker cannot be used."""

    async def close(self) -> None:
        """Disconnect and release everything."""

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        """Store one message; return its id. Raise `BrokerError` when it is not taken.

        `decoded` is the CloudEvent `data` encodes, if any: a broker that keeps
        messages in memory may hand it to consumers with the message.
        """
        raise NotImplementedError

    @property
    def consumer_group(self) -> str:
        """`consumerID` from the metadata, else the app id (reference 4.3, 5.2)."""
        return self.metadata.get("consumerID", "").strip() or self.app_id

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        """Join this component's consumer group on `topic`; `metadata` is the subscription's
        (a broker may read names of its own there: RabbitMQ's `queueName`, `routingKey`...)."""
        raise NotImplementedError

    def subscriptions_started(self) -> None:
        """Every subscription of the runtime to this component has joined its topic: a
        broker that kept messages for subscriptions to come lets go of the others."""

    def discards(self, topic: str) -> bool:
        """Whether a message published to `topic` now is discarded, nobody subscribing to
        it and the component keeping none (the in-memory one); False when it is kept."""
        return False


def load_broker_class(type_name: str) -> type[Broker]:
    """The broker class for a Component `spec.type`; `LookupError` or `ImportError` if none."""
    try:
        target, extra = BROKER_TYPES[type_name]
    except KeyError:
        raise LookupError(
            f"unsupported pub/sub type {type_name!r}; supported: {', '.join(sorted(BROKER_TYPES))}"
        ) from None
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f": pip install 'fastapi-dapr[{extra}]'" if extra else ""
        raise ImportError(f"{type_name} needs a library that is not installed{hint}") from exc
    broker_class: type[Broker] = getattr(module, attribute)
    return broker_class
