"""`pubsub.in-memory`: the embedded default broker, and the test double, in one.

Each consumer group of a topic has its own bounded queue; a publish lands in
every group's queue (fan-out across groups, competing consumers within one).
A full queue makes publishers wait up to `publishTimeout`, then fail, so a
slow subscriber pushes back instead of growing memory without limit. Messages
live as long as the process: published to a topic nobody subscribes to, they
are discarded, as daprd's in-memory component does (reference 5.5).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .._durations import parse_duration, parse_go_int
from . import Broker, BrokerError, Consumer, Delivery, Message, WaitingLine

__all__ = ["MemoryBroker"]

logger = logging.getLogger("fastapi_dapr")

_EMPTY: Mapping[str, str] = MappingProxyType({})
# A message handed to a consumer soon keeps the decoded CloudEvent, which
# spares the consumer a JSON parse; one that waits behind this many does not,
# which halves what a long queue holds in memory.
_KEEP_DECODED_BELOW = 1000


class _Queue(Consumer):
    """One consumer group's queue of one topic.

    Receivers wait in line, each on a future of its own, and a message wakes
    exactly one of them (as `asyncio.Queue` does): many receivers cost nothing
    while the queue is empty.
    """

    def __init__(self, broker: MemoryBroker, topic: str, group: str, capacity: int) -> None:
        self._broker = broker
        self.topic = topic
        self.group = group
        self.capacity = capacity
        self.items: collections.deque[Message] = collections.deque()
        self._line = WaitingLine()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.closed = False

    def put(self, message: Message) -> None:
        self.items.append(message)
        self._line.wake_one()
        if len(self.items) >= self.capacity:
            self._not_full.clear()

    async def wait_not_full(self) -> None:
        await self._not_full.wait()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        while not self.items:
            await self._line.wait()
        count = min(max_count, len(self.items))
        batch = [Delivery(self, self.items.popleft()) for _ in range(count)]
        if self.items:
            self._line.wake_one()
        if len(self.items) < self.capacity:
            self._not_full.set()
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        return None  # nothing to remember: the message left the queue when received

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        if redeliver and not self.closed:
            self.items.appendleft(delivery.message)
            self._line.wake_one()
            if len(self.items) >= self.capacity:
                self._not_full.clear()

    async def close(self) -> None:
        self.closed = True
        self._broker._remove(self)
        self._not_full.set()  # publishers waiting for this queue go on without it
        if self.items:
            # In-memory messages end with the process: say how many, and which.
            logger.warning(
                "in-memory pubsub %s: %d messages of topic %s were not delivered and are discarded "
                "at shutdown (ids %s)",
                self._broker.name,
                len(self.items),
                self.topic,
                ", ".join(message.id for message in list(self.items)[:20])
                + (" ..." if len(self.items) > 20 else ""),
            )
            self.items.clear()


class MemoryBroker(Broker):
    """In-process pub/sub with bounded queues.

    Metadata: `maxQueueLength` (messages per consumer group, default 10000) and
    `publishTimeout` (how long a publisher waits for room, default 5s).
    """

    type_name = "pubsub.in-memory"

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        capacity = self.metadata.get("maxQueueLength", "10000")
        try:
            self.capacity = parse_go_int(capacity)
            if self.capacity < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"maxQueueLength must be a positive integer, not {capacity!r}") from None
        timeout = self.metadata.get("publishTimeout", "5s")
        try:
            self.publish_timeout = parse_duration(timeout, integer_unit=1e-3)
        except ValueError:
            raise ValueError(f"publishTimeout is not a duration: {timeout!r}") from None
        self._queues: dict[str, dict[str, _Queue]] = {}
        self._ids = itertools.count(1)

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        queues = list(self._queues.get(topic, {}).values())
        message_id = str(next(self._ids))
        if not queues:
            logger.debug("in-memory pubsub %s: no subscriber on %s, message discarded", self.name, topic)
            return message_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        # The last check and the put below run with no await between them, so
        # publishers that waited together cannot all slip past one free slot.
        while True:
            full = next(
                (queue for queue in queues if not queue.closed and len(queue.items) >= queue.capacity),
                None,
            )
            if full is None:
                break
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(full.wait_not_full(), remaining)
            except asyncio.TimeoutError:
                raise BrokerError(
                    f"the queue of topic {topic} is full ({full.capacity} messages) "
                    f"and stayed full for {self.publish_timeout:g}s"
                ) from None
            queues = list(self._queues.get(topic, {}).values())
            if not queues:
                return message_id
        if decoded is not None and any(len(queue.items) >= _KEEP_DECODED_BELOW for queue in queues):
            decoded = None  # a long queue keeps bytes only: memory before speed
        message = Message(topic, data, dict(metadata) if metadata else _EMPTY, message_id, decoded)
        for queue in queues:
            if not queue.closed:
                queue.put(message)
        return message_id

    async def subscribe(self, topic: str) -> Consumer:
        group = self.consumer_group
        groups = self._queues.setdefault(topic, {})
        if group in groups:
            return groups[group]
        queue = _Queue(self, topic, group, self.capacity)
        groups[group] = queue
        return queue

    def _remove(self, queue: _Queue) -> None:
        groups = self._queues.get(queue.topic, {})
        if groups.get(queue.group) is queue:
            del groups[queue.group]

    def queued(self) -> int:
        """Messages waiting in every queue (for tests and benchmarks)."""
        return sum(len(q.items) for groups in self._queues.values() for q in groups.values())
