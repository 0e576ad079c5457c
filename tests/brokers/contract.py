"""The broker contract: what the runtime and its delivery workers rely on from every broker.

Written once, run against every broker: a test module subclasses `BrokerContract` with
a `Test...` class that overrides the `open_broker` fixture (tests/brokers/test_memory.py,
tests/brokers/test_redis_contract.py). Every broker added to `BROKER_TYPES` later must
pass it: give it such a module, and let the contract's tests run unchanged.

The interface is fastapi_dapr/brokers/__init__.py's, used as the runtime uses it: start,
subscribe (a consumer group's view of a topic), publish, receive in batches, settle each
delivery once (ack, or nack with or without redelivery), `subscriptions_started`, close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import pytest

from fastapi_dapr.brokers import BROKER_TYPES, Broker, BrokerError, Consumer, Delivery, load_broker_class

__all__ = ["BrokerContract", "OpenBroker"]

OpenBroker = Callable[..., Awaitable[Broker]]
"""`await open_broker(**metadata)`: a started broker of the component `pubsub`, app id `app`."""

WAIT = 10.0


async def receive(consumer: Consumer, count: int, *, max_count: int = 100) -> list[Delivery]:
    """Exactly `count` deliveries, in the order they came, in as many batches as it takes."""
    received: list[Delivery] = []
    while len(received) < count:
        limit = min(max_count, count - len(received))
        batch = await asyncio.wait_for(consumer.receive(limit), WAIT)
        assert 1 <= len(batch) <= limit
        received += batch
    return received


class BrokerContract:
    """The contract's tests; a subclass named `Test<Broker>` runs them against one broker."""

    instances_share: ClassVar[bool] = True
    """Whether two broker instances of one component see the same messages (replicas of an
    app on Redis do); False for a broker that lives in one process (the memory broker),
    where the replicas of one process are one instance."""

    quiet: ClassVar[float] = 0.5
    """How long nothing must come for `nothing_comes`: long enough for a broker that reads in
    the background (Redis' blocking reads), short enough that a broker that would deliver
    what it must not is caught within the test."""

    delivery_keys: ClassVar[frozenset[str]] = frozenset()
    """The metadata the broker adds to every delivery besides what was published (Kafka's
    `__offset`, `__topic`, ...): checked present, and left out where the published metadata
    is compared."""

    def published(self, delivery: Delivery) -> dict[str, str]:
        """The delivery's metadata without what the broker adds to every delivery."""
        metadata = dict(delivery.message.metadata)
        assert self.delivery_keys <= set(metadata)
        return {key: value for key, value in metadata.items() if key not in self.delivery_keys}

    async def nothing_comes(self, consumer: Consumer) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consumer.receive(1), self.quiet)

    @pytest.fixture
    def open_broker(self) -> OpenBroker:
        """Overridden by each broker's module: opens a started broker."""
        raise NotImplementedError(f"{type(self).__name__} overrides the open_broker fixture")

    @pytest.fixture
    async def broker(self, opened: OpenBroker) -> Broker:
        return await opened()

    @pytest.fixture
    async def opened(self, open_broker: OpenBroker) -> AsyncIterator[OpenBroker]:
        """`open_broker`, with every broker it opened closed after the test."""
        brokers: list[Broker] = []

        async def open_one(**metadata: str) -> Broker:
            brokers.append(await open_broker(**metadata))
            return brokers[-1]

        yield open_one
        for broker in reversed(brokers):
            await broker.close()

    async def replica(self, opened: OpenBroker, broker: Broker, **metadata: str) -> Broker:
        """Another replica of the app (same consumer group unless `consumerID` says otherwise)."""
        return await opened(**metadata) if self.instances_share else broker

    # -- the component ---------------------------------------------------------------------

    def test_its_type_name_loads_its_class(self, broker: Broker) -> None:
        assert broker.type_name in BROKER_TYPES
        assert isinstance(broker, load_broker_class(broker.type_name))
        assert broker.name == "pubsub"
        assert broker.consumer_group == "app"  # the app id unless consumerID is set

    async def test_consumer_id_names_the_group(self, opened: OpenBroker) -> None:
        assert (await opened(consumerID="audit")).consumer_group == "audit"

    # -- publish and receive ---------------------------------------------------------------

    async def test_messages_arrive_in_order_with_their_id_topic_data_and_metadata(
        self, broker: Broker
    ) -> None:
        consumer = await broker.subscribe("orders")
        ids = [await broker.publish("orders", f"m{n}".encode(), {"n": str(n)}) for n in range(5)]
        assert len(set(ids)) == 5
        assert all(ids)
        received = await receive(consumer, 5)
        assert [d.message.id for d in received] == ids
        assert [d.message.data for d in received] == [f"m{n}".encode() for n in range(5)]
        assert [self.published(d) for d in received] == [{"n": str(n)} for n in range(5)]
        assert {d.message.topic for d in received} == {"orders"}
        for delivery in received:
            await delivery.ack()

    async def test_data_is_bytes_kept_as_published(self, broker: Broker) -> None:
        consumer = await broker.subscribe("raw")
        data = bytes(range(256)) * 4
        await broker.publish("raw", data, {})
        await broker.publish("raw", b"", {})
        first, empty = await receive(consumer, 2)
        assert (first.message.data, self.published(first)) == (data, {})
        assert empty.message.data == b""

    async def test_the_decoded_event_is_kept_or_left_out_never_changed(self, broker: Broker) -> None:
        consumer = await broker.subscribe("t")
        await broker.publish("t", b'{"data": 1}', {}, decoded={"data": 1})
        (delivery,) = await receive(consumer, 1)
        assert delivery.message.decoded in (None, {"data": 1})

    async def test_a_batch_holds_at_most_what_is_asked_and_comes_as_soon_as_one_is_there(
        self, broker: Broker
    ) -> None:
        consumer = await broker.subscribe("t")
        waiting = asyncio.ensure_future(consumer.receive(10))
        await broker.publish("t", b"first", {})
        assert [d.message.data for d in await asyncio.wait_for(waiting, WAIT)] == [b"first"]
        for n in range(25):
            await broker.publish("t", str(n).encode(), {})
        received = await receive(consumer, 25, max_count=4)  # asserts each batch's size
        assert [d.message.data for d in received] == [str(n).encode() for n in range(25)]

    async def test_topics_are_apart(self, broker: Broker) -> None:
        a, b = await broker.subscribe("a"), await broker.subscribe("b")
        await broker.publish("a", b"for a", {})
        await broker.publish("b", b"for b", {})
        assert [d.message.data for d in await receive(a, 1)] == [b"for a"]
        assert [d.message.data for d in await receive(b, 1)] == [b"for b"]
        await self.nothing_comes(a)

    async def test_a_receive_cancelled_takes_nothing_with_it(self, broker: Broker) -> None:
        # The delivery workers' receives are cancelled at every stop: the message a
        # cancelled receive would have had goes to the next one.
        consumer = await broker.subscribe("t")
        cancelled = asyncio.ensure_future(consumer.receive(1))
        await asyncio.sleep(0)  # it waits
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await broker.publish("t", b"kept", {})
        assert [d.message.data for d in await receive(consumer, 1)] == [b"kept"]

    async def test_what_is_published_before_the_subscriptions_start_reaches_them(
        self, broker: Broker
    ) -> None:
        # The app's own start-up runs before the runtime's subscriptions join their topics.
        await broker.publish("early", b"before", {})
        consumer = await broker.subscribe("early")
        broker.subscriptions_started()
        await broker.publish("early", b"after", {})
        assert [d.message.data for d in await receive(consumer, 2)] == [b"before", b"after"]

    # -- settling ---------------------------------------------------------------------------

    async def test_a_message_handed_back_comes_again(self, broker: Broker) -> None:
        consumer = await broker.subscribe("t")
        await broker.publish("t", b"once", {"k": "v"})
        (delivery,) = await receive(consumer, 1)
        await delivery.nack(redeliver=True)  # RETRY, or a stop with the message in hand
        (again,) = await receive(consumer, 1)
        assert (again.message.id, again.message.data) == (delivery.message.id, b"once")
        assert self.published(again) == {"k": "v"}
        await again.ack()
        await self.nothing_comes(consumer)

    async def test_a_message_given_up_does_not_hold_up_the_next(self, broker: Broker) -> None:
        consumer = await broker.subscribe("t")
        for data in (b"given up", b"next"):
            await broker.publish("t", data, {})
        (given_up,) = await receive(consumer, 1, max_count=1)
        await given_up.nack(redeliver=False)  # retries exhausted, no dead-letter topic
        (following,) = await receive(consumer, 1)
        assert following.message.data == b"next"
        await following.ack()
        await self.nothing_comes(consumer)

    async def test_an_acked_message_is_not_delivered_again_to_the_group(
        self, broker: Broker, opened: OpenBroker
    ) -> None:
        consumer = await broker.subscribe("t")
        await broker.publish("t", b"done", {})
        (delivery,) = await receive(consumer, 1)
        await delivery.ack()
        await consumer.close()
        later = await (await self.replica(opened, broker)).subscribe("t")  # the group again
        await broker.publish("t", b"new", {})
        assert [d.message.data for d in await receive(later, 1)] == [b"new"]
        await self.nothing_comes(later)

    # -- consumer groups --------------------------------------------------------------------

    async def test_the_replicas_of_a_group_share_its_messages_each_one_once(
        self, broker: Broker, opened: OpenBroker
    ) -> None:
        first = await broker.subscribe("t")
        second = await (await self.replica(opened, broker)).subscribe("t")
        for n in range(30):
            await broker.publish("t", str(n).encode(), {})
        seen = await self.drain([first, second], 30)
        assert sorted(seen, key=int) == [str(n).encode() for n in range(30)]

    async def test_every_group_gets_every_message(self, broker: Broker, opened: OpenBroker) -> None:
        if not self.instances_share:
            pytest.skip("the groups of a broker in one process are its instances: none shares")
        app = await broker.subscribe("t")
        audit = await (await opened(consumerID="audit")).subscribe("t")
        for n in range(10):
            await broker.publish("t", str(n).encode(), {})
        for consumer in (app, audit):
            received = await receive(consumer, 10)
            assert [d.message.data for d in received] == [str(n).encode() for n in range(10)]

    async def drain(self, consumers: Sequence[Consumer], count: int) -> list[bytes]:
        """What `consumers`, receiving side by side and acking, get until `count` messages came."""
        seen: list[bytes] = []
        done = asyncio.Event()

        async def take(consumer: Consumer) -> None:
            while not done.is_set():
                for delivery in await consumer.receive(3):
                    seen.append(delivery.message.data)
                    await delivery.ack()
                if len(seen) >= count:
                    done.set()

        takers = [asyncio.ensure_future(take(consumer)) for consumer in dict.fromkeys(consumers)]
        try:
            await asyncio.wait_for(done.wait(), WAIT)
        finally:
            for taker in takers:
                taker.cancel()
            await asyncio.gather(*takers, return_exceptions=True)
        for consumer in dict.fromkeys(consumers):
            await self.nothing_comes(consumer)
        return seen

    # -- closing ----------------------------------------------------------------------------

    async def test_closing_with_messages_unsettled_does_not_hang(self, broker: Broker) -> None:
        consumer = await broker.subscribe("t")
        for n in range(5):
            await broker.publish("t", str(n).encode(), {})
        await receive(consumer, 2)  # in hand, never settled
        await asyncio.wait_for(consumer.close(), WAIT)
        await asyncio.wait_for(broker.close(), WAIT)

    async def test_a_closed_broker_refuses_to_publish_to_its_topics(self, broker: Broker) -> None:
        await broker.subscribe("t")
        broker.subscriptions_started()
        await broker.close()
        with pytest.raises(BrokerError):
            await broker.publish("t", b"too late", {})
