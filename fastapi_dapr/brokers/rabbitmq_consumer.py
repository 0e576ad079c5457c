"""`pubsub.rabbitmq`: the consumer of one subscription, on a channel of its own.

It declares the subscription's layout (the topic's exchange, the queue and its bindings,
the dead-letter exchange and queue: `rabbitmq_layout.py`), sets the prefetch and consumes
with manual acks. Messages RabbitMQ pushes (at most `prefetchCount` unacknowledged) wait
in a buffer for the engine's runners. When the channel or the connection is lost, what it
held is RabbitMQ's again (it requeues every unacknowledged message of a closed channel):
the buffer is emptied, an ack for a message of the old channel is not sent (it will be
delivered again: at least once), and the consumer declares and consumes anew once the
connection is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aio_pika.abc
import aiormq.abc
from aiormq import spec
from aiormq.exceptions import ChannelInvalidStateError

from . import BrokerError, Consumer, Delivery, Message, WaitingLine, one_at_a_time
from .rabbitmq_layout import (
    dead_letter_names,
    dead_letter_queue_arguments,
    delivery_metadata,
    queue_arguments,
    routing_keys,
)
from .rabbitmq_link import NO_WAIT, Failure, Link
from .rabbitmq_settings import RabbitSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

DeclareExchange = Callable[[aiormq.abc.AbstractChannel, str, str, bool], Awaitable[None]]


class Acks:
    """The acknowledgements of one channel, gathered while the previous ones are sent and sent
    in as few frames as they can be: the settled head of the delivery tags as one `multiple`
    ack (RabbitMQ acks every unsettled tag up to it), the others one by one.

    A tag is in `_order` from its delivery until it leaves the head; `_states` says what became
    of it: None (the engine has it), `_PENDING` (acked, not sent), `_SENT` (acked or rejected
    on the wire). A multiple ack never ends on a tag already sent: RabbitMQ would close the
    channel for an unknown tag.
    """

    __slots__ = ("_order", "_sending", "_states", "channel")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._order: collections.deque[int] = collections.deque()
        self._states: dict[int, int | None] = {}
        self._sending: asyncio.Future[None] | None = None

    def delivered(self, tag: int) -> None:
        self._order.append(tag)
        self._states[tag] = None

    def ack(self, tag: int) -> None:
        self._states[tag] = _PENDING
        if self._sending is None:
            # It first runs in the next turn of the loop, once this turn's acks are in.
            self._sending = asyncio.ensure_future(self._send())

    def sent(self, tag: int) -> None:
        """Rejected on the wire (a nack): settled, never to end a multiple ack."""
        self._states[tag] = _SENT

    def _batch(self) -> tuple[int | None, list[int]]:
        last = None
        order, states = self._order, self._states
        while order and states[order[0]] is not None:
            tag = order.popleft()
            if states.pop(tag) == _PENDING:
                last = tag
        pending = [tag for tag, state in states.items() if state == _PENDING]
        for tag in pending:
            states[tag] = _SENT
        return last, pending

    async def _send(self) -> None:
        channel = self.channel
        try:
            while True:
                last, pending = self._batch()
                if last is None and not pending:
                    return
                if channel.is_closed:
                    return  # its messages are RabbitMQ's again
                if last is not None:
                    await channel.basic_ack(last, multiple=True, **NO_WAIT)
                for tag in pending:
                    await channel.basic_ack(tag, **NO_WAIT)
        except (*Failure, ChannelInvalidStateError) as exc:
            logger.warning("rabbitmq pubsub: acks failed (%s); RabbitMQ delivers their messages again", exc)
        finally:
            self._sending = None

    async def drain(self, timeout: float) -> None:
        """The acks gathered so far, sent (at most `timeout` seconds)."""
        if self._sending is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # unsent: delivered again
                await asyncio.wait_for(asyncio.shield(self._sending), timeout)


_PENDING, _SENT = 1, 2


class RabbitDelivery(Delivery):
    """A message with the acks of the channel it came on and its delivery tag there."""

    __slots__ = ("acks", "tag")

    def __init__(self, consumer: QueueConsumer, message: Message, acks: Acks, tag: int) -> None:
        super().__init__(consumer, message)
        self.acks = acks
        self.tag = tag


class QueueConsumer(Consumer):
    """This process's consumer of the queue of one subscription."""

    def __init__(
        self,
        topic: str,
        queue: str,
        subscription: Mapping[str, str],
        *,
        pubsub: str,
        settings: RabbitSettings,
        link: Link,
        declare_exchange: DeclareExchange,
    ) -> None:
        self.topic = topic
        self.queue = queue
        self._subscription = dict(subscription)
        self._pubsub = pubsub
        self._settings = settings
        self._link = link
        self._declare_exchange = declare_exchange
        self._arguments = queue_arguments(settings, queue, subscription)  # refused here: at subscribe
        self._buffer: collections.deque[RabbitDelivery] = collections.deque()
        self._waiting = WaitingLine()
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._acks: Acks | None = None
        self._tag = ""
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        # concurrencyMode single: one message of this subscription at a time, as daprd: a
        # turn is taken by each receive and given back when its message is settled.
        self._turn = asyncio.Semaphore(1) if settings.single else None
        self.concurrency = 1 if settings.single else None

    # -- the channel ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare and consume; `BrokerError` (RabbitMQ's refusal, such as a 406 for a queue
        declared with other arguments) stops the subscription."""
        try:
            await self._consume(await self._link.connection(self._settings.reconnect_wait + 10))
        except Failure as exc:
            await self._drop_channel()
            raise BrokerError(f"cannot subscribe to {self.topic} (queue {self.queue}): {exc}") from None
        self._keeper = asyncio.create_task(self._keep(), name=f"rabbitmq consumer {self.queue}")

    async def declare(self, channel: aiormq.abc.AbstractChannel) -> None:
        """daprd's layout of this subscription (`prepareSubscription`)."""
        settings = self._settings
        await self._declare_exchange(channel, self.topic, settings.exchange_kind, settings.durable)
        if settings.enable_dead_letter:
            exchange, queue = dead_letter_names(self.queue)
            await self._declare_exchange(channel, exchange, "fanout", True)
            await channel.queue_declare(
                queue,
                durable=True,
                auto_delete=settings.delete_when_unused,
                arguments=dead_letter_queue_arguments(settings),
            )
            await channel.queue_bind(queue, exchange, routing_key="")
        await channel.queue_declare(
            self.queue,
            durable=settings.durable,
            auto_delete=settings.delete_when_unused,
            arguments=self._arguments,
        )
        for key in routing_keys(self._subscription):
            await channel.queue_bind(self.queue, self.topic, routing_key=key)

    async def _consume(self, connection: aio_pika.abc.AbstractConnection) -> None:
        settings = self._settings
        self._channel = channel = await connection.channel(publisher_confirms=False)
        self._underlay = underlay = await channel.get_underlay_channel()
        self._acks = Acks(underlay)
        await self.declare(underlay)
        if settings.prefetch_count > 0:
            await underlay.basic_qos(prefetch_count=settings.prefetch_count)
        # A tag of its own per attempt: a tag used again on one channel is a connection error.
        self._tag = f"{self.queue}-{secrets.token_hex(8)}"[-255:]
        await underlay.basic_consume(
            self.queue, self._on_message, no_ack=settings.auto_ack, consumer_tag=self._tag
        )

    async def _keep(self) -> None:
        """Consume again, once the connection is back, after the channel was lost."""
        wait = self._settings.reconnect_wait
        while not self._closed:
            channel = self._channel
            if channel is not None:
                await channel.closed()
            self._lost()
            if self._closed:
                return
            try:
                await self._consume(await self._link.connection(wait + 10))
            except (*Failure, BrokerError, ChannelInvalidStateError) as exc:
                await self._drop_channel()
                logger.warning(
                    "rabbitmq pubsub %s: consuming %s failed (%s); again in %gs",
                    self._pubsub,
                    self.queue,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            logger.info("rabbitmq pubsub %s: consuming %s again", self._pubsub, self.queue)

    def _lost(self) -> None:
        """The channel is gone, and with it every unacknowledged message: RabbitMQ requeued them."""
        self._channel = None
        self._underlay = None
        self._acks = None
        self._buffer.clear()

    async def _drop_channel(self) -> None:
        channel, self._channel, self._underlay, self._acks = self._channel, None, None, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except (*Failure, ChannelInvalidStateError, RuntimeError):
                pass

    # -- messages ------------------------------------------------------------------------------

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        acks = self._acks
        if acks is None or message.channel is not acks.channel:
            return  # of a channel given up meanwhile: RabbitMQ requeues it
        properties = message.header.properties
        headers = properties.headers
        metadata: Mapping[str, str] = {}
        if headers or self._settings.properties_to_metadata:
            metadata = delivery_metadata(
                headers, properties, daprd_properties=self._settings.properties_to_metadata
            )
        delivery = message.delivery
        assert isinstance(delivery, spec.Basic.Deliver)
        tag = delivery.delivery_tag
        assert tag is not None
        if not self._settings.auto_ack:
            acks.delivered(tag)
        message_id = properties.message_id or ""
        self._buffer.append(
            RabbitDelivery(self, Message(self.topic, message.body, metadata, message_id), acks, tag)
        )
        self._waiting.wake_one()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._turn is None:
            return await self._take(max_count)
        return await one_at_a_time(self._turn, self._take)

    async def _take(self, max_count: int) -> list[Delivery]:
        while not self._buffer:
            await self._waiting.wait()
        batch: list[Delivery] = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._waiting.wake_one()
        return batch

    def _done(self) -> None:
        if self._turn is not None:
            self._turn.release()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Gathered, and sent with the others of this event-loop turn (`Acks`): the runner
        goes on at once. A process that dies first has them delivered again (at least once)."""
        for delivery in deliveries:
            assert isinstance(delivery, RabbitDelivery)
            self._done()
            if not self._settings.auto_ack:
                delivery.acks.ack(delivery.tag)

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        """Handed back (`redeliver`): requeued. Given up: rejected, requeued only with
        `requeueInFailure`; otherwise RabbitMQ moves it to the dead-letter exchange with
        `enableDeadLetter`, and drops it without (as daprd)."""
        assert isinstance(delivery, RabbitDelivery)
        self._done()
        if self._settings.auto_ack:
            if redeliver:
                logger.warning(
                    "rabbitmq pubsub %s: a message of %s handed back is lost: autoAck is on",
                    self._pubsub,
                    self.queue,
                )
            return
        channel = delivery.acks.channel
        if channel.is_closed:
            return  # RabbitMQ requeued it with the channel
        delivery.acks.sent(delivery.tag)
        requeue = redeliver or self._settings.requeue_in_failure
        try:
            await channel.basic_nack(delivery.tag, requeue=requeue)
        except (*Failure, ChannelInvalidStateError) as exc:
            self._not_settled(delivery, exc)

    def _not_settled(self, delivery: RabbitDelivery, exc: BaseException) -> None:
        logger.warning(
            "rabbitmq pubsub %s: settling message %s of %s failed (%s); RabbitMQ delivers it again",
            self._pubsub,
            delivery.message.id,
            self.queue,
            exc,
        )

    async def close(self) -> None:
        """Stop consuming; what is buffered goes back to the queue, and so does what the
        engine still holds (RabbitMQ requeues what a closed channel had not acked)."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        underlay, acks = self._underlay, self._acks
        if underlay is not None and acks is not None and not underlay.is_closed:
            try:
                await asyncio.wait_for(underlay.basic_cancel(self._tag), 5)
                await acks.drain(5)
                for delivery in self._buffer:
                    delivery.acks.sent(delivery.tag)
                    await underlay.basic_nack(delivery.tag, requeue=True)
            except (*Failure, ChannelInvalidStateError):
                pass
        self._buffer.clear()
        await self._drop_channel()
