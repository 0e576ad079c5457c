"""`pubsub.redis`: the stream consumer, this process's reader in the consumer group of one topic.

It reads new entries (`XREADGROUP`), claims the stale ones of consumers gone
silent (`XAUTOCLAIM`, after `processingTimeout`), keeps what it holds from being
claimed, gathers acknowledgements for the broker's next write, and hands a
message given up to the parking (`redis_parking.py`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from . import Consumer, Delivery, Message, WaitingLine
from .redis_lines import CommandLine, pack
from .redis_parking import Parking
from .redis_settings import RedisSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_RETRY_MAX = 5.0  # seconds between reconnection attempts, at most
# A consumer of the group with nothing pending, silent this long (a live one reads every
# second), is a replica gone for good: its name is removed from the group, checked this often.
_DEPARTED_AFTER = 3600.0
_DEPARTED_CHECK = 600.0
_Entry = tuple[bytes, Any]  # an entry id and its fields: a flat [field, value, ...] list or a dict


def _data_and_metadata(fields: Any) -> tuple[bytes, bytes | None]:
    """An entry's `data` and `metadata`: redis-py gives a dict, a raw RESP2 reply a flat list."""
    if fields is None:
        return b"", None
    if isinstance(fields, Mapping):
        return fields.get(b"data", b""), fields.get(b"metadata")
    data, metadata = b"", None
    for index in range(0, len(fields) - 1, 2):
        name = fields[index]
        if name == b"data":
            data = fields[index + 1]
        elif name == b"metadata":
            metadata = fields[index + 1]
    return data, metadata


class StreamConsumer(Consumer):
    """This process's consumer in the group of one stream.

    One reader task fetches batches (`XREADGROUP ... COUNT queueDepth`) into a
    local buffer of at most `queueDepth` messages, from which the engine's
    runners take; claims of other consumers' stale messages go to the same
    buffer. Acks are gathered into one `XACK`, which goes out with the broker's
    next write (see `RedisBroker.publish`).
    """

    def __init__(
        self,
        topic: str,
        *,
        pubsub: str,
        settings: RedisSettings,
        group: str,
        name: str,
        client: aioredis.Redis,
        reads: CommandLine,
        parking: Parking,
        want_ack: Callable[[StreamConsumer], None],
    ) -> None:
        """`pubsub` names the component in logs; `name` is this consumer's in `group`;
        `client` runs the commands off the hot path, `reads` the reads; `want_ack` asks
        the broker to send this consumer's gathered acks with its next write."""
        self.topic = topic
        self.group = group
        self.name = name
        self._pubsub = pubsub
        self._settings = settings
        self._client = client
        self._reads = reads
        self._parking = parking
        self._want_ack = want_ack
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._waiting = WaitingLine()
        self._room = asyncio.Event()
        self._room.set()
        self._held: dict[str, None] = {}  # ids buffered or being handled, in order
        self._acks: list[str] = []  # gathered, not sent yet
        self._acks_out = 0  # sent, not answered yet
        self._acks_settled = asyncio.Event()
        self._closed = False
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._ensure_group()
        self._reader = asyncio.create_task(self._read_loop(), name=f"redis reader {self.topic}")
        if self._settings.processing_timeout > 0:
            self._keeper = asyncio.create_task(self._keep_held(), name=f"redis keeper {self.topic}")

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self.topic, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        settings = self._settings
        delay = 0.1
        next_claim = 0.0  # claim stale messages at once on start, then every redeliverInterval
        next_forget = 0.0
        claim_from = "0-0"
        while not self._closed:
            await self._room.wait()
            room = settings.queue_depth - len(self._buffer)
            if room <= 0:  # filled meanwhile (messages handed back): wait for room again
                self._room.clear()
                continue
            try:
                entries: list[_Entry] = []
                if settings.reclaims and time.monotonic() >= next_claim:
                    claim_from, entries = await self._claim(claim_from, room)
                    if claim_from == "0-0":
                        next_claim = time.monotonic() + settings.redeliver_interval
                    if claim_from == "0-0" and time.monotonic() >= next_forget:
                        next_forget = time.monotonic() + _DEPARTED_CHECK
                        await self._forget_departed()
                if not entries:
                    entries = await self._read(room)
                delay = 0.1
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):  # READONLY, UNBLOCKED (a failover), MISCONF...: later
                    await self._back_off(exc, delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                logger.warning(
                    "redis pubsub %s: group of %s is gone; recreating it", self._pubsub, self.topic
                )
                await self._retry_later(self._ensure_group)
                continue
            except (RedisError, OSError) as exc:
                await self._back_off(exc, delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            for entry_id, fields in entries:
                self._add(entry_id.decode(), *_data_and_metadata(fields))
            if entries:
                # A turn for the runners: the acks of what they settle at once go out with
                # the next read, in the same write, instead of in a write of their own.
                await asyncio.sleep(0)

    async def _back_off(self, error: Exception, delay: float) -> None:
        logger.warning(
            "redis pubsub %s: reading %s failed (%s); retrying in %.1fs",
            self._pubsub,
            self.topic,
            error,
            delay,
        )
        await asyncio.sleep(delay)

    async def _read(self, count: int) -> list[_Entry]:
        """New entries for this group (`XREADGROUP ... >`), waiting up to `block_ms` for some.

        The acks gathered and not sent yet go first, in the same write (their reply
        comes at once, before the read's)."""
        block = self._settings.block_ms
        command = pack(
            *("XREADGROUP", "GROUP", self.group, self.name, "COUNT", count, "BLOCK", block),
            *("STREAMS", self.topic, ">"),
        )
        if not self._acks:
            (reply,) = await self._reads.execute([command], blocking=block / 1000)
        else:
            ack, ids = self.ack_command()
            sent: list[bool] = []

            def answered(replies: list[Any]) -> None:
                sent.append(True)
                self.acked(ids, replies[0])

            try:
                _, reply = await self._reads.execute(
                    [ack, command], blocking=block / 1000, ahead=1, answered=answered
                )
            except BaseException:
                if not sent:  # not answered: they go again, with the broker's next write
                    self._acks_out -= len(ids)
                    self._acks[:0] = ids
                    self._want_ack(self)
                raise
        if isinstance(reply, ResponseError):
            raise reply
        return list(reply[0][1]) if reply else []  # RESP2: [[stream, [[id, fields], ...]]], or nil

    async def _retry_later(self, action: Any) -> None:
        try:
            await action()
        except (RedisError, OSError):
            await asyncio.sleep(1.0)

    async def _claim(self, start: str, count: int) -> tuple[str, list[_Entry]]:
        """Entries other consumers held longer than `processingTimeout` (`XAUTOCLAIM`)."""
        settings = self._settings
        answer = await self._client.xautoclaim(
            self.topic,
            self.group,
            self.name,
            min_idle_time=int(settings.processing_timeout * 1000),
            start_id=start,
            count=count,
        )
        next_start = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        claimed = [(entry_id, fields) for entry_id, fields in answer[1] if entry_id is not None]
        deleted = answer[2] if len(answer) > 2 else []
        if deleted:  # trimmed while pending: nothing left to deliver, clean the pending list
            await self._client.xack(self.topic, self.group, *deleted)
        if claimed:
            logger.info(
                "redis pubsub %s: claimed %d messages of %s idle for over %gs",
                self._pubsub,
                len(claimed),
                self.topic,
                settings.processing_timeout,
            )
            ids = [entry_id.decode() for entry_id, _ in claimed]
            kept = await self._parking.sift_claimed(self.topic, self.group, self.name, ids)
            claimed = [entry for entry, keep in zip(claimed, kept, strict=True) if keep]
        return next_start, claimed

    async def _forget_departed(self) -> None:
        """Remove from the group the names of replicas gone for good (killed, or moved),
        once nothing is pending for them: each process reads under a name of its own,
        and the group would otherwise keep every name it ever saw."""
        settings = self._settings
        silent_ms = max(_DEPARTED_AFTER, 10 * settings.processing_timeout) * 1000
        for consumer in await self._client.xinfo_consumers(self.topic, self.group):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] >= silent_ms:
                await self._client.xgroup_delconsumer(self.topic, self.group, name)
                logger.info(
                    "redis pubsub %s: consumer %s of %s is gone; forgotten", self._pubsub, name, self.topic
                )

    def _add(self, entry_id: str, data: bytes, raw: bytes | None) -> None:
        if entry_id in self._held:
            return  # already here (claimed back while buffered)
        metadata: dict[str, str] = {}
        if raw and raw != b"{}":
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()}
            except ValueError:
                logger.warning(
                    "redis pubsub %s: entry %s of %s has metadata that is not JSON; ignored",
                    self._pubsub,
                    entry_id,
                    self.topic,
                )
        self._held[entry_id] = None
        self._buffer.append(Delivery(self, Message(self.topic, data, metadata, entry_id)))
        if len(self._buffer) >= self._settings.queue_depth:
            self._room.clear()
        self._waiting.wake_one()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        while not self._buffer:
            await self._waiting.wait()
        batch = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._waiting.wake_one()
        if len(self._buffer) < self._settings.queue_depth:
            self._room.set()
        return batch

    # -- settling ------------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Gather the ids for the next `XACK`; the runner goes on at once.

        A process that dies before the XACK went out has its messages delivered
        again (at least once); a graceful stop sends it.
        """
        self._acks.extend(delivery.message.id for delivery in deliveries)
        self._want_ack(self)

    @property
    def has_acks(self) -> bool:
        """Whether acks are gathered and not sent yet (a read may have taken them)."""
        return bool(self._acks)

    def ack_command(self) -> tuple[bytes, list[str]]:
        """The XACK of every id gathered so far, for the broker's next write."""
        ids, self._acks = self._acks, []
        self._acks_out += len(ids)
        return pack("XACK", self.topic, self.group, *ids), ids

    def acked(self, ids: list[str], reply: Any) -> None:
        """The answer to an `ack_command()`: a count, or the error it failed with."""
        self._acks_out -= len(ids)
        if isinstance(reply, BaseException):
            # Not lost: still pending, they come back after processingTimeout (at least once).
            logger.warning(
                "redis pubsub %s: acknowledging %d messages of %s failed (%s); they will be delivered again",
                self._pubsub,
                len(ids),
                self.topic,
                reply,
            )
        for message_id in ids:
            self._held.pop(message_id, None)
        self._acks_settled.set()

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        """Not processed: handed back to this process (`redeliver`), or left pending in Redis,
        to be claimed again after `processingTimeout`.

        A message given up (no dead-letter topic, or its publish failed) is not
        acknowledged, so it is never lost; on its last allowed delivery it is parked.
        """
        message_id = delivery.message.id
        if redeliver and not self._closed:
            self._buffer.appendleft(delivery)  # handed back to this process: try it again here
            if len(self._buffer) >= self._settings.queue_depth:
                self._room.clear()
            self._waiting.wake_one()
            return
        self._held.pop(message_id, None)  # its idle time grows again: others may claim it
        if not redeliver:
            await self._parking.give_up(self.topic, self.group, self.name, message_id)

    async def _keep_held(self) -> None:
        """Reset the idle time of what this process holds, so nobody claims it meanwhile."""
        settings = self._settings
        period = max(settings.processing_timeout / 3, 0.05)
        while not self._closed:
            await asyncio.sleep(period)
            ids = list(self._held)
            if not ids:
                continue
            try:
                await self._client.xclaim(
                    self.topic,
                    self.group,
                    self.name,
                    min_idle_time=0,
                    message_ids=list[Any](ids),
                    justid=True,
                )
            except (RedisError, OSError) as exc:
                logger.debug("redis pubsub %s: keeping %s failed: %s", self._pubsub, self.topic, exc)

    async def close(self) -> None:
        self._closed = True
        self._room.set()
        for task in (self._reader, self._keeper):
            if task is not None:
                task.cancel()
        for task in (self._reader, self._keeper):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    logger.exception("redis pubsub %s: the reader of %s failed", self._pubsub, self.topic)
        await self._reads.close()
        while self._acks or self._acks_out:  # the acks gathered so far go out
            self._acks_settled.clear()
            if self._acks:
                self._want_ack(self)
            try:
                await asyncio.wait_for(self._acks_settled.wait(), self._settings.read_timeout + 1)
            except asyncio.TimeoutError:
                break  # unanswered: still pending in Redis, delivered again
        # What is still buffered stays pending in Redis: claimed again after processingTimeout.
        self._buffer.clear()
        self._held.clear()
