"""`pubsub.in-memory`: the embedded default broker, and the test double, in one.

Each consumer group of a topic has its own bounded queue; a publish lands in
every group's queue (fan-out across groups, competing consumers within one).
A full queue makes publishers wait up to `publishTimeout`, then fail, so a
slow subscriber pushes back instead of growing memory without limit. Messages
live as long as the process: published to a topic nobody subscribes to, they
are discarded, as daprd's in-memory component does (reference 5.5).

Until the runtime's subscriptions have joined their topics (the app's own
start-up runs before them, and the standalone sidecar waits for its app), a
message to a topic nobody has joined yet is kept for the subscription that
will: at most `maxQueueLength` such messages, a publish beyond them fails.
Once the subscriptions have stopped, a publish to their topics fails: nobody
would receive it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .._go import parse_duration, parse_go_int
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
        self.claimed = False  # a subscription's; else kept for one to come (`MemoryBroker._hold`)
        self.subscribers = 0  # subscriptions sharing it (competing consumers): closed by the last

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
        self.subscribers -= 1
        if self.subscribers <= 0:
            self._discard("as its last subscription ended")

    def _discard(self, when: str) -> None:
        self.closed = True
        self._broker._remove(self)
        self._not_full.set()  # publishers waiting for this queue go on without it
        if self.items:
            # In-memory messages end with the process: say how many, and which.
            logger.warning(
                "in-memory pubsub %s: %d messages of topic %s were not delivered and are discarded "
                "%s (ids %s)",
                self._broker.name,
                len(self.items),
                self.topic,
                when,
                ", ".join(message.id for message in list(self.items)[:20])
                + (" ..." if len(self.items) > 20 else ""),
            )
            self.items.clear()


class MemoryBroker(Broker):
    """In-process pub/sub with bounded queues.

    Metadata: `maxQueueLength` (messages per consumer group, and kept before the
    subscriptions start; default 10000) and `publishTimeout` (how long a publisher
    waits for room, default 5s).
    """

    type_name = "pubsub.in-memory"
    metadata_keys = frozenset(("maxQueueLength", "publishTimeout"))

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
        self._holding = True  # until `subscriptions_started`
        self._unclaimed: dict[str, _Queue] = {}  # by topic: kept for a subscription to come
        self._stopped: set[str] = set()  # topics whose subscriptions have stopped

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
        if self._holding and (not queues or topic in self._unclaimed):
            queues = [self._hold(topic)]
        elif not queues:
            if topic in self._stopped:
                raise BrokerError(f"the subscriptions to topic {topic} have stopped: nobody would receive it")
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

    def _hold(self, topic: str) -> _Queue:
        """The queue that keeps `topic`'s messages for a subscription to come."""
        held = sum(len(queue.items) for queue in self._unclaimed.values())
        if held >= self.capacity:
            raise BrokerError(
                f"{held} messages wait for the subscriptions to start, the most this component keeps "
                "(maxQueueLength)"
            )
        queue = self._unclaimed.get(topic)
        if queue is None:
            queue = self._unclaimed[topic] = _Queue(self, topic, self.consumer_group, self.capacity)
            self._queues.setdefault(topic, {})[queue.group] = queue
        return queue

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        group = self.consumer_group
        self._unclaimed.pop(topic, None)  # its messages are this subscription's
        groups = self._queues.setdefault(topic, {})
        queue = groups.get(group)
        if queue is None:
            queue = groups[group] = _Queue(self, topic, group, self.capacity)
        # One of the subscriptions the runtime starts with: once they stop, publishing to the
        # topic fails. One made later (a streaming subscription) leaves the topic as daprd's
        # in-memory component does when it ends: messages nobody subscribes to are discarded.
        queue.claimed = queue.claimed or self._holding
        queue.subscribers += 1
        return queue

    def subscriptions_started(self) -> None:
        self._holding = False
        unclaimed, self._unclaimed = self._unclaimed, {}
        for queue in unclaimed.values():
            queue._discard("at start-up: no subscription to the topic started")

    def discards(self, topic: str) -> bool:
        return not self._holding and not self._queues.get(topic)

    async def close(self) -> None:
        for groups in list(self._queues.values()):
            for queue in list(groups.values()):
                queue._discard("at shutdown")

    def _remove(self, queue: _Queue) -> None:
        groups = self._queues.get(queue.topic, {})
        if groups.get(queue.group) is queue:
            del groups[queue.group]
            if queue.claimed:
                self._stopped.add(queue.topic)

    def queued(self) -> int:
        """Messages waiting in every queue (for tests and benchmarks)."""
        return sum(len(q.items) for groups in self._queues.values() for q in groups.values())
