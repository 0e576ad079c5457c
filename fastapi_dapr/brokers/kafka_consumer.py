"""`pubsub.kafka`: this process's member of the consumer group on one topic.

One aiokafka consumer per subscription, in the component's group, with the `range`
assignor (daprd's default, so a group mixed with daprd's replicas forms). A reader task
fetches records into a buffer of at most `_DEPTH` messages, from which the engine's
runners take them in partition order.

Offsets: each partition keeps the offsets handed out and not settled yet; the offset
committed is the first of them (or the next to fetch), so a message acked out of order
waits for the ones before it, and a process killed redelivers from the first message
not done (at least once). A message handed back comes again at once; one given up
comes again after `_GIVE_UP_DELAY` (daprd's consumer retries a failed message for
ever, with `consumeRetryEnabled`, its default), or, with `consumeRetryEnabled: false`,
is passed over (committed), as daprd does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from . import Consumer, Delivery, Message, WaitingLine
from .kafka_settings import KafkaSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_DEPTH = 256  # messages buffered per subscription (daprd's channelBufferSize default)
_GIVE_UP_DELAY = 5.0  # seconds before a message given up is delivered again
_POLL_WHILE_FULL = 30.0  # seconds between polls while the buffer is full
_JOIN_WAIT = 60.0  # how long `start` waits for the group to assign this member its partitions
# Sarama's strategies by daprd's names (Sarama names them the same in the group protocol).
_ASSIGNORS: dict[str, Any] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


class _Partition:
    """What this member holds of one partition: offsets handed out, in order, not settled."""

    __slots__ = ("committed", "next_fetch", "pending")

    def __init__(self, next_fetch: int) -> None:
        self.next_fetch = next_fetch
        self.pending: dict[int, None] = {}
        self.committed = -1

    def commit_point(self) -> int:
        return next(iter(self.pending), self.next_fetch)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: TopicConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer.commit()  # what is done, before another member takes it

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._consumer.assigned(set(assigned))


class TopicConsumer(Consumer):
    """This process's member of the group on one topic."""

    def __init__(
        self, topic: str, *, pubsub: str, settings: KafkaSettings, connection: dict[str, Any]
    ) -> None:
        self.topic = topic
        self._pubsub = pubsub
        self._settings = settings
        self._client = AIOKafkaConsumer(
            **connection,
            group_id=settings.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if settings.oldest else "latest",
            partition_assignment_strategy=(_ASSIGNORS[settings.assignor],),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            session_timeout_ms=int(settings.session_timeout * 1000),
            max_partition_fetch_bytes=max(settings.max_message_bytes, 1_048_576),
            isolation_level="read_uncommitted",
        )
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._waiting = WaitingLine()
        self._room = asyncio.Event()
        self._room.set()
        self._joined = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._closed = False
        self._reader: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._later: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
        """Join the group and wait until it assigned this member its partitions (so what is
        published from here on reaches the group, with `initialOffset: newest` too)."""
        self._client.subscribe([self.topic], listener=_Listener(self))
        await self._client.start()
        try:
            await asyncio.wait_for(self._joined.wait(), _JOIN_WAIT)
        except asyncio.TimeoutError:
            raise KafkaError(
                f"the group {self._settings.group} assigned nothing in {_JOIN_WAIT:g}s"
            ) from None
        for partition in self._client.assignment():
            await self._client.position(partition)  # the initial offset, resolved now
        self._reader = asyncio.create_task(self._read_loop(), name=f"kafka reader {self.topic}")
        self._committer = asyncio.create_task(self._commit_loop(), name=f"kafka committer {self.topic}")

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """The group's assignment: partitions kept go on where this member was; those lost
        are forgotten (another member has them from the last commit), their buffer dropped."""
        for partition in list(self._partitions):
            if partition not in partitions:
                del self._partitions[partition]
        for partition, state in self._partitions.items():
            self._client.seek(partition, state.next_fetch)
        kept = [d for d in self._buffer if _partition_of(d.message) in self._partitions]
        if len(kept) != len(self._buffer):
            self._buffer = collections.deque(kept)
            self._room.set()
        self._joined.set()

    # -- reading ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Fetch while the buffer has room. A full buffer pauses the partitions, and the loop
        still polls now and then: a member that stops polling for `max.poll.interval.ms`
        (five minutes) leaves the group, and a slow handler must not make it leave."""
        delay = 0.1
        while not self._closed:
            room = _DEPTH - len(self._buffer)
            if room <= 0:
                self._room.clear()
                self._client.pause(*self._client.assignment())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._room.wait(), _POLL_WHILE_FULL)
                if not self._room.is_set():
                    with contextlib.suppress(KafkaError):
                        await self._client.getmany(timeout_ms=0)  # a poll: paused, it returns nothing
                    continue
                self._client.resume(*self._client.paused())
                continue
            try:
                batches = await self._client.getmany(timeout_ms=500, max_records=room)
                delay = 0.1
            except KafkaError as exc:
                logger.warning("kafka pubsub %s: reading %s failed (%s)", self._pubsub, self.topic, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for partition, records in batches.items():
                self._add(partition, records)

    def _add(self, partition: TopicPartition, records: Sequence[Any]) -> None:
        if not records:
            return
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(records[0].offset)
        for record in records:
            if record.offset < state.next_fetch:
                continue  # fetched before a seek back: already here
            state.next_fetch = record.offset + 1
            state.pending[record.offset] = None
            message = Message(
                self.topic,
                record.value if record.value is not None else b"",
                self._metadata(record),
                f"{record.partition}-{record.offset}",
            )
            self._buffer.append(Delivery(self, message))
        if len(self._buffer) >= _DEPTH:
            self._room.clear()
        self._waiting.wake_one()

    def _metadata(self, record: Any) -> dict[str, str]:
        """daprd's delivery metadata: the headers (but those `excludeHeaderMetaRegex` finds),
        `__key`, `__offset`, `__topic`, `__timestamp` (milliseconds) and `__partition`."""
        escape: Callable[[str], str] = urllib.parse.quote_plus if self._settings.escape_headers else str
        metadata: dict[str, str] = {}
        if record.key is not None:
            metadata["__key"] = escape(record.key.decode(errors="replace"))
        metadata["__offset"] = str(record.offset)
        metadata["__topic"] = record.topic
        metadata["__timestamp"] = str(record.timestamp)
        metadata["__partition"] = str(record.partition)
        excluded = self._settings.excluded_headers
        for name, value in record.headers or ():
            if excluded is not None and excluded.search(name):
                continue  # excludeHeaderMetaRegex
            metadata[name] = escape(value.decode(errors="replace") if value is not None else "")
        return metadata

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        while not self._buffer:
            await self._waiting.wait()
        batch = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._waiting.wake_one()
        if len(self._buffer) < _DEPTH:
            self._room.set()
        return batch

    # -- settling --------------------------------------------------------------------------

    def _settle(self, message: Message) -> None:
        partition, offset = _partition_of(message), _offset_of(message)
        state = self._partitions.get(partition)
        settled = state is not None and state.pending.pop(offset, 0) is None
        if settled and state is not None and state.commit_point() > state.committed:
            self._commit_wanted.set()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Done: its offset is committed once every message before it is done too."""
        for delivery in deliveries:
            self._settle(delivery.message)

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        """Handed back: delivered again at once. Given up: again after a pause (or, with
        `consumeRetryEnabled: false`, passed over, as daprd does); never committed before."""
        if self._closed or _partition_of(delivery.message) not in self._partitions:
            return  # not ours any more: the member that has the partition delivers it again
        if redeliver:
            self._put_back(delivery)
        elif not self._settings.retry_given_up:
            logger.error(
                "kafka pubsub %s: message %s of %s given up; passed over (consumeRetryEnabled false)",
                self._pubsub,
                delivery.message.id,
                self.topic,
            )
            self._settle(delivery.message)
        else:
            self._later.add(asyncio.get_running_loop().call_later(_GIVE_UP_DELAY, self._retry, delivery))

    def _retry(self, delivery: Delivery) -> None:
        now = asyncio.get_running_loop().time()
        self._later = {handle for handle in self._later if handle.when() > now}  # this one is done
        if not self._closed and _partition_of(delivery.message) in self._partitions:
            self._put_back(delivery)

    def _put_back(self, delivery: Delivery) -> None:
        self._buffer.appendleft(delivery)
        self._waiting.wake_one()

    async def _commit_loop(self) -> None:
        while not self._closed:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self.commit()

    async def commit(self) -> None:
        """Commit, for each partition held, the first offset not done."""
        offsets = {
            partition: state.commit_point()
            for partition, state in self._partitions.items()
            if state.commit_point() > state.committed
        }
        if not offsets:
            return
        try:
            await self._client.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        except KafkaError as exc:  # a rebalance: the next owner delivers them again (at least once)
            logger.warning("kafka pubsub %s: committing %s failed (%s)", self._pubsub, self.topic, exc)
            return
        for partition, offset in offsets.items():
            state = self._partitions.get(partition)
            if state is not None:
                state.committed = max(state.committed, offset)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._room.set()
        for handle in self._later:
            handle.cancel()
        if self._reader is not None:
            self._reader.cancel()
        self._commit_wanted.set()  # the committer's last commit, not cut in the middle
        for task in (self._reader, self._committer):
            if task is None:
                continue
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("kafka pubsub %s: the reader of %s failed", self._pubsub, self.topic)
        try:
            await self.commit()
        finally:
            self._partitions.clear()
            await self._client.stop()  # leaves the group: the others take its partitions at once


def _partition_of(message: Message) -> TopicPartition:
    return TopicPartition(message.topic, int(message.id.partition("-")[0]))


def _offset_of(message: Message) -> int:
    return int(message.id.partition("-")[2])
