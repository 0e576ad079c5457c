"""`pubsub.jetstream`: the consumer of one topic, a subscriber to a push consumer of its stream.

The server pushes the consumer's messages to its deliver subject (a queue subscription
when the consumer has a deliver group, so that the replicas share them), at most
`maxAckPending` unacknowledged at a time. They wait in a local buffer for the engine's
runners. A message is acknowledged (`+ACK`) once the engine settled it; handed back, it
is negatively acknowledged (`-NAK`) for the server to deliver again at once; given up,
the same with a delay of the consumer's `ackWait` (daprd's `NakWithDelay(ackWait)`).
While this process holds a message (buffered or being handled) it tells the server it
is still at work (`+WPI`), so that a slow message is not delivered to another replica
meanwhile; a process killed says nothing, and its messages come again after `ackWait`.

The consumer itself is looked up, else created (`JetStreamConsumer.bind`); it is checked
again every few seconds and after every reconnection, and made again if it is gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import nats.aio.client
import nats.aio.msg
import nats.errors

from . import BrokerError, Consumer, Delivery, Message, WaitingLine, one_at_a_time
from .jetstream_layout import delivery_metadata, stream_sequence
from .jetstream_settings import JetStreamSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

API_TIMEOUT = 5.0  # seconds for the server to answer a JetStream API request
CHECK_EVERY = 5.0  # seconds between two checks that the consumer is still there
CONSUMER_NOT_FOUND, STREAM_NOT_FOUND, NAME_IN_USE = 10014, 10059, 10013
# Consumer settings compared with an existing consumer's: a difference is named, not changed.
_COMPARED = (
    "deliver_policy", "opt_start_seq", "ack_policy", "ack_wait", "max_deliver", "backoff", "rate_limit_bps",
    "max_ack_pending", "flow_control", "idle_heartbeat", "num_replicas", "mem_storage",
)  # fmt: skip


class ApiError(BrokerError):
    """The server refused a JetStream API request; `code` is its `err_code`."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code


async def api_request(client: nats.aio.client.Client, subject: str, payload: Any = None) -> dict[str, Any]:
    """One JetStream API request (`subject` with its prefix); its answer, or `ApiError` for a
    refusal, `BrokerError` when the server does not answer."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    try:
        answer = await client.request(subject, body, timeout=API_TIMEOUT)
    except nats.errors.NoRespondersError:
        raise BrokerError(f"no JetStream answers {subject} (is the server started with -js?)") from None
    except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
        raise BrokerError(f"{subject}: {exc or type(exc).__name__}") from None
    reply: dict[str, Any] = json.loads(answer.data)
    error = reply.get("error")
    if error:
        raise ApiError(int(error.get("err_code", 0)), str(error.get("description", error)))
    return reply


class JetStreamDelivery(Delivery):
    __slots__ = ("reply", "touched")

    def __init__(self, consumer: JetStreamConsumer, message: Message, reply: str) -> None:
        super().__init__(consumer, message)
        self.reply = reply
        self.touched = time.monotonic()  # when the server last heard of it


class JetStreamConsumer(Consumer):
    """This process's subscriber to the consumer of one topic."""

    def __init__(
        self,
        topic: str,
        *,
        pubsub: str,
        settings: JetStreamSettings,
        client: nats.aio.client.Client,
        stream: str,
        durable: str,
        group: str,
        config: dict[str, Any],
    ) -> None:
        self.topic = topic
        self.stream = stream
        self.durable = durable
        self.group = group
        self.deliver_subject = str(config["deliver_subject"])
        self._config = config
        self._pubsub = pubsub
        self._settings = settings
        self._client = client
        self._prefix = settings.api_prefix
        self._buffer: collections.deque[JetStreamDelivery] = collections.deque()
        self._held: dict[int, JetStreamDelivery] = {}  # stream sequence: buffered or being handled
        self._waiting = WaitingLine()
        self._subscription: Any = None
        self._keeper: asyncio.Task[None] | None = None
        self._check_now = asyncio.Event()
        self._closed = False
        self.ack_wait = settings.ack_wait or 30.0  # the consumer's, once bound
        # concurrencyMode single (daprd's default): one message of this subscription at a time,
        # as daprd handles each subscription's messages; a turn is taken by each receive and
        # given back when its message is settled.
        self._turn = asyncio.Semaphore(1) if settings.single else None
        self.concurrency = 1 if settings.single else None

    # -- the consumer --------------------------------------------------------------------------

    async def bind(self) -> dict[str, Any]:
        """The consumer's info: the existing one if there is one (as it is, its differences
        from this component's settings named), else the one created now. `BrokerError`
        when it cannot be used for this topic."""
        info_subject = f"{self._prefix}.CONSUMER.INFO.{self.stream}.{self.durable}"
        try:
            info = await api_request(self._client, info_subject)
        except ApiError as exc:
            if exc.code == STREAM_NOT_FOUND:
                raise BrokerError(f"stream {self.stream} not found") from None
            if exc.code != CONSUMER_NOT_FOUND:
                raise
            create = f"{self._prefix}.CONSUMER.DURABLE.CREATE.{self.stream}.{self.durable}"
            try:
                info = await api_request(
                    self._client, create, {"stream_name": self.stream, "config": self._config}
                )
            except ApiError as refused:
                if refused.code != NAME_IN_USE:  # made meanwhile by another replica: use it
                    raise BrokerError(
                        f"cannot create consumer {self.durable} on stream {self.stream}: {refused}"
                    ) from None
                info = await api_request(self._client, info_subject)
            else:
                logger.info(
                    "jetstream pubsub %s: consumer %s created on stream %s for %s",
                    self._pubsub,
                    self.durable,
                    self.stream,
                    self.topic,
                )
                return info
        self._check(info)
        return info

    def _check(self, info: dict[str, Any]) -> None:
        config = info.get("config", {})
        where = f"consumer {self.durable} of stream {self.stream}"
        if not config.get("deliver_subject"):
            raise BrokerError(f"{where} is a pull consumer: daprd's component and this one push")
        if config.get("filter_subject", "") != self.topic:
            raise BrokerError(
                f"{where} filters {config.get('filter_subject') or 'every subject'}, not {self.topic}: "
                "give each topic a durableName of its own"
            )
        if config.get("deliver_group", "") != self.group:
            theirs = config.get("deliver_group") or "none"
            raise BrokerError(
                f"{where} has the deliver group {theirs}, not {self.group or 'none'} (queueGroupName)"
            )
        if not self.group and info.get("push_bound") and self._subscription is None:
            raise BrokerError(
                f"{where} has a subscriber already and no deliver group: set queueGroupName so that "
                "replicas share it"
            )
        differences = [
            key for key in _COMPARED if key in self._config and config.get(key) != self._config[key]
        ]
        if differences and self._subscription is None:  # named once, when it is first bound
            logger.warning(
                "jetstream pubsub %s: %s exists with other settings (%s); used as it is",
                self._pubsub,
                where,
                ", ".join(differences),
            )

    async def start(self) -> None:
        info = await self.bind()
        await self._subscribe(info)
        self._keeper = asyncio.create_task(self._keep(), name=f"jetstream keeper {self.topic}")

    async def _subscribe(self, info: dict[str, Any]) -> None:
        config = info.get("config", {})
        self.ack_wait = float(config.get("ack_wait", 30e9)) / 1e9 or 30.0
        subject = str(config["deliver_subject"])
        if self._subscription is not None and subject == self.deliver_subject:
            return
        if self._subscription is not None:
            await self._unsubscribe()
        self.deliver_subject = subject
        self._subscription = await self._client.subscribe(subject, queue=self.group, cb=self._on_message)

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    def reconnected(self) -> None:
        self._check_now.set()

    async def _keep(self) -> None:
        """Tell the server what is still being worked on; check that the consumer is there."""
        last_check = time.monotonic()
        while not self._closed:
            period = max(min(self.ack_wait / 3, CHECK_EVERY), 0.05)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), period)
            now = time.monotonic()
            try:
                await self._touch(now, period)
                if self._check_now.is_set() or now - last_check >= CHECK_EVERY:
                    self._check_now.clear()
                    last_check = now
                    await self._subscribe(await self.bind())
            except (BrokerError, nats.errors.Error) as exc:
                logger.warning("jetstream pubsub %s: checking %s failed: %s", self._pubsub, self.topic, exc)

    async def _touch(self, now: float, period: float) -> None:
        if not self._settings.acks:
            return
        for delivery in list(self._held.values()):
            if now - delivery.touched >= period:
                delivery.touched = now
                await self._client.publish(delivery.reply, b"+WPI")

    # -- messages ------------------------------------------------------------------------------

    async def _on_message(self, msg: nats.aio.msg.Msg) -> None:
        reply = msg.reply
        position = stream_sequence(reply) if reply else None
        if position is None:
            await self._control(msg)
            return
        sequence = position[1]
        if self._closed:
            if self._settings.acks:
                await self._send(reply, b"-NAK")  # pushed before the unsubscribe: for another replica
            return
        if sequence in self._held:
            return  # delivered again while held here: settled with the first
        message = Message(
            self.topic, msg.data, delivery_metadata(msg.headers, msg.subject), f"{position[0]}:{sequence}"
        )
        delivery = JetStreamDelivery(self, message, reply)
        self._held[sequence] = delivery
        self._buffer.append(delivery)
        self._waiting.wake_one()

    async def _control(self, msg: nats.aio.msg.Msg) -> None:
        """A status message of the server's: flow control asks for an answer, and so does a
        heartbeat naming a stalled consumer."""
        headers = msg.headers or {}
        if headers.get("Status") != "100":
            return
        answer = msg.reply or headers.get("Nats-Consumer-Stalled", "")
        if answer:
            await self._client.publish(answer, b"")

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._turn is None:
            return await self._take(max_count)
        return await one_at_a_time(self._turn, self._take)

    async def _take(self, max_count: int) -> list[JetStreamDelivery]:
        while not self._buffer:
            await self._waiting.wait()
        batch = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._waiting.wake_one()
        return batch

    def _release(self, delivery: Delivery) -> str | None:
        """Forget a settled delivery; its reply subject, or None when nothing is to be sent."""
        assert isinstance(delivery, JetStreamDelivery)
        sequence = int(delivery.message.id.rpartition(":")[2])
        if self._held.get(sequence) is delivery:
            del self._held[sequence]
        return delivery.reply if self._settings.acks else None

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """`+ACK` each, sent with the other writes of this event-loop turn. A process that dies
        first has them delivered again after `ackWait` (at least once)."""
        for delivery in deliveries:
            if self._turn is not None:
                self._turn.release()
            reply = self._release(delivery)
            if reply is not None:
                await self._send(reply, b"+ACK")

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        """Handed back: `-NAK`, delivered again at once (here or to another replica). Given up:
        `-NAK` with the delay `ackWait`, then again, up to the consumer's `maxDeliver`."""
        if self._turn is not None:
            self._turn.release()
        reply = self._release(delivery)
        if reply is None:
            return
        if redeliver:
            await self._send(reply, b"-NAK")
        else:
            await self._send(reply, b'-NAK {"delay":%d}' % round(self.ack_wait * 1e9))

    async def _send(self, reply: str, body: bytes) -> None:
        try:
            await self._client.publish(reply, body)
        except nats.errors.Error as exc:
            # Not lost: unacknowledged, the server delivers it again after ackWait.
            logger.warning(
                "jetstream pubsub %s: settling a message of %s failed: %s", self._pubsub, self.topic, exc
            )

    async def close(self) -> None:
        """Stop the pushes; what is buffered goes back to the server at once (`-NAK`), and so
        does what the engine hands back; what it still holds comes again after `ackWait`."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        await self._unsubscribe()
        buffered, self._buffer = list(self._buffer), collections.deque()
        for delivery in buffered:
            reply = self._release(delivery)
            if reply is not None:
                await self._send(reply, b"-NAK")
