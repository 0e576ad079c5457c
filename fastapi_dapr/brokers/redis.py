"""`pubsub.redis`: Redis Streams with daprd's data layout (reference 5), at-least-once for real.

Layout, as daprd's component: the stream key is the topic; an entry has `data`
(the CloudEvent or raw bytes) and `metadata` (a JSON object of strings); the
consumer group is `consumerID` (default: the app id), created from the start
of the stream (`0`, `MKSTREAM`). So daprd and this broker read each other's
messages on one Redis.

Where it differs from daprd, on purpose:

- Each process reads as a consumer of its own inside the shared group
  (`<consumerID>-<host>-<pid>-<random>`), so replicas share the load and the
  pending messages of a dead one are claimed by the others (`XAUTOCLAIM` after
  `processingTimeout`). daprd gives every replica the same consumer name.
- A message is acknowledged only once processed: SUCCESS, DROP, or a
  successful dead-letter publish. A failed or given-up message stays pending
  and comes back after `processingTimeout` (daprd acknowledges failed messages
  since components-contrib 1.17, which loses them).
- Messages this process holds (buffered or being handled) have their idle time
  reset while they are held, so another replica does not claim a message that
  is merely slow (daprd's #4599).
- `redeliverInterval` and `processingTimeout` accept Go durations and integer
  milliseconds alike (daprd ignores a duration string for `redeliverInterval`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .._durations import parse_duration
from . import Broker, BrokerError, Consumer, Delivery, Message, WaitingLine

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastapi_dapr")

_RETRY_MAX = 5.0  # seconds between reconnection attempts, at most
_ACK_BATCH = 50  # acks that go out at once without waiting for more
_ACK_DELAY = 0.002  # seconds a smaller batch of acks waits for company


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _duration(metadata: Mapping[str, str], key: str, default: float) -> float:
    value = metadata.get(key, "").strip()
    if not value:
        return default
    try:
        return parse_duration(value, integer_unit=1e-3)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer milliseconds): {value!r}") from None


def _integer(metadata: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    value = metadata.get(key, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {number}")
    return number


class _StreamConsumer(Consumer):
    """This process's consumer in the group of one stream.

    One reader task fetches batches (`XREADGROUP ... COUNT queueDepth`) into a
    local buffer of at most `queueDepth` messages, from which the engine's
    runners take; claims of other consumers' stale messages go to the same
    buffer. Acks are gathered and sent as one `XACK` per event-loop turn.
    """

    def __init__(self, broker: RedisBroker, topic: str) -> None:
        self._broker = broker
        self.topic = topic
        self.group = broker.consumer_group
        self.name = broker.consumer_name
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._line = WaitingLine()
        self._room = asyncio.Event()
        self._room.set()
        self._held: dict[str, float] = {}  # ids buffered or being handled -> since when
        self._acks: list[str] = []
        self._ack_wanted = asyncio.Event()
        self._acker: asyncio.Task[None] | None = None
        self._closed = False
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._broker.ensure_group(self.topic)
        self._reader = asyncio.create_task(self._read_loop(), name=f"redis reader {self.topic}")
        self._acker = asyncio.create_task(self._ack_loop(), name=f"redis acks {self.topic}")
        if self._broker.processing_timeout > 0:
            self._keeper = asyncio.create_task(self._keep_held(), name=f"redis keeper {self.topic}")

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        client = self._broker.client
        broker = self._broker
        delay = 0.1
        next_claim = 0.0  # claim stale messages at once on start, then every redeliverInterval
        claim_from = "0-0"
        while not self._closed:
            await self._room.wait()
            room = broker.queue_depth - len(self._buffer)
            try:
                entries: list[tuple[bytes, dict[bytes, bytes] | None]] = []
                if broker.reclaims and time.monotonic() >= next_claim:
                    claim_from, entries = await self._claim(claim_from, room)
                    if claim_from == "0-0":
                        next_claim = time.monotonic() + broker.redeliver_interval
                if not entries:
                    answer: Any = await client.xreadgroup(
                        self.group, self.name, {self.topic: ">"}, count=room, block=broker.block_ms
                    )
                    entries = answer[0][1] if answer else []  # RESP2: [[stream, entries]]
                delay = 0.1
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    logger.warning(
                        "redis pubsub %s: group of %s is gone; recreating it", broker.name, self.topic
                    )
                    await self._retry_later(lambda: broker.ensure_group(self.topic))
                    continue
                raise
            except (RedisError, OSError) as exc:
                logger.warning(
                    "redis pubsub %s: reading %s failed (%s); retrying in %.1fs",
                    broker.name,
                    self.topic,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            for entry_id, fields in entries:
                self._add(entry_id.decode(), fields)

    async def _retry_later(self, action: Any) -> None:
        try:
            await action()
        except (RedisError, OSError):
            await asyncio.sleep(1.0)

    async def _claim(
        self, start: str, count: int
    ) -> tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]:
        """Entries other consumers held longer than `processingTimeout` (`XAUTOCLAIM`)."""
        broker = self._broker
        answer = await broker.client.xautoclaim(
            self.topic,
            self.group,
            self.name,
            min_idle_time=int(broker.processing_timeout * 1000),
            start_id=start,
            count=count,
        )
        next_start = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        claimed = [(entry_id, fields) for entry_id, fields in answer[1] if entry_id is not None]
        deleted = answer[2] if len(answer) > 2 else []
        if deleted:  # trimmed while pending: nothing left to deliver, clean the pending list
            await broker.client.xack(self.topic, self.group, *deleted)
        if claimed:
            logger.info(
                "redis pubsub %s: claimed %d messages of %s idle for over %gs",
                broker.name,
                len(claimed),
                self.topic,
                broker.processing_timeout,
            )
        return next_start, claimed

    def _add(self, entry_id: str, fields: Mapping[bytes, bytes] | None) -> None:
        if entry_id in self._held:
            return  # already here (claimed back while buffered)
        fields = fields or {}
        data = fields.get(b"data", b"")
        metadata: dict[str, str] = {}
        raw = fields.get(b"metadata")
        if raw:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()}
            except ValueError:
                logger.warning(
                    "redis pubsub %s: entry %s of %s has metadata that is not JSON; ignored",
                    self._broker.name,
                    entry_id,
                    self.topic,
                )
        self._held[entry_id] = time.monotonic()
        self._buffer.append(Delivery(self, Message(self.topic, data, metadata, entry_id)))
        if len(self._buffer) >= self._broker.queue_depth:
            self._room.clear()
        self._line.wake_one()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        while not self._buffer:
            await self._line.wait()
        batch = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._line.wake_one()
        if len(self._buffer) < self._broker.queue_depth:
            self._room.set()
        return batch

    # -- settling ------------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Queue the XACK: one command takes every ack gathered while the previous one ran.

        The runner goes on at once. A process that dies before the XACK went out
        has its messages delivered again (at least once); a graceful stop sends it.
        """
        self._acks.extend(delivery.message.id for delivery in deliveries)
        self._ack_wanted.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wanted.wait()
            if len(self._acks) < _ACK_BATCH and not self._closed:
                await asyncio.sleep(_ACK_DELAY)  # a moment for more acks to join: fewer XACKs
            self._ack_wanted.clear()
            ids, self._acks = self._acks, []
            if ids:
                await self._flush(ids)
            if self._closed and not self._acks:
                return

    async def _flush(self, ids: list[str]) -> None:
        try:
            await self._broker.client.xack(self.topic, self.group, *ids)
        except (RedisError, OSError) as exc:
            # Not lost: still pending, they come back after processingTimeout (at least once).
            logger.warning(
                "redis pubsub %s: acknowledging %d messages of %s failed (%s); they will be delivered again",
                self._broker.name,
                len(ids),
                self.topic,
                exc,
            )
        for message_id in ids:
            self._held.pop(message_id, None)

    async def nack(self, delivery: Delivery, *, redeliver: bool) -> None:
        """Not processed: left pending in Redis, to be claimed again after `processingTimeout`.

        In both cases: a message given up (no dead-letter topic, or its publish
        failed) is not acknowledged either, so it is never lost.
        """
        message_id = delivery.message.id
        if redeliver and not self._closed:
            self._buffer.appendleft(delivery)  # handed back to this process: try it again here
            self._line.wake_one()
            return
        self._held.pop(message_id, None)  # its idle time grows again: others may claim it
        if not redeliver:
            logger.warning(
                "redis pubsub %s: message %s of %s not acknowledged; it will be delivered again after %gs",
                self._broker.name,
                message_id,
                self.topic,
                self._broker.processing_timeout,
            )

    async def _keep_held(self) -> None:
        """Reset the idle time of what this process holds, so nobody claims it meanwhile."""
        broker = self._broker
        period = max(broker.processing_timeout / 3, 0.05)
        while not self._closed:
            await asyncio.sleep(period)
            ids = list(self._held)
            if not ids:
                continue
            try:
                await broker.client.xclaim(
                    self.topic,
                    self.group,
                    self.name,
                    min_idle_time=0,
                    message_ids=list[Any](ids),
                    justid=True,
                )
            except (RedisError, OSError) as exc:
                logger.debug("redis pubsub %s: keeping %s failed: %s", broker.name, self.topic, exc)

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
                    logger.exception(
                        "redis pubsub %s: the reader of %s failed", self._broker.name, self.topic
                    )
        if self._acker is not None:
            self._ack_wanted.set()  # the acks gathered so far go out, then the loop ends
            await self._acker
        # What is still buffered stays pending in Redis: claimed again after processingTimeout.
        self._buffer.clear()
        self._held.clear()


class RedisBroker(Broker):
    """Redis Streams, with daprd's `pubsub.redis` metadata (reference 5.3)."""

    type_name = "pubsub.redis"

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        host = self.metadata.get("redisHost", "").strip()
        if not host:
            raise ValueError("redisHost is required (host:port)")
        if host.rsplit(":", 1)[-1].isdigit() and not host.endswith("]"):
            self.host, _, port = host.rpartition(":")
            self.port = int(port)
        else:
            self.host, self.port = host, _integer(self.metadata, "redisPort", 6379, minimum=1)
        self.host = self.host.strip("[]")
        self.username = self.metadata.get("redisUsername") or None
        self.password = self.metadata.get("redisPassword") or None
        self.db = _integer(self.metadata, "redisDB", 0)
        self.tls = _truthy(self.metadata.get("enableTLS", "false"))
        self.processing_timeout = _duration(self.metadata, "processingTimeout", 60.0)
        self.redeliver_interval = _duration(self.metadata, "redeliverInterval", 15.0)
        self.queue_depth = _integer(self.metadata, "queueDepth", 100, minimum=1)
        self.concurrency = _integer(self.metadata, "concurrency", 10, minimum=1)
        self.max_len_approx = _integer(self.metadata, "maxLenApprox", 0)
        self.stream_ttl = _duration(self.metadata, "streamTTL", 0.0)
        # Client timeouts (daprd's names): a command unanswered for readTimeout fails,
        # and the broker reconnects; a blocking read waits at most half of it.
        self.dial_timeout = _duration(self.metadata, "dialTimeout", 5.0)
        self.read_timeout = _duration(self.metadata, "readTimeout", 5.0) or 5.0
        self.block_ms = max(10, int(min(1.0, self.read_timeout / 2) * 1000))
        if self.max_len_approx and self.stream_ttl:
            logger.warning("redis pubsub %s: maxLenApprox and streamTTL both set; maxLenApprox wins", name)
        self.consumer_name = (
            f"{self.consumer_group}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._client: aioredis.Redis | None = None
        self._consumers: list[_StreamConsumer] = []
        self._adds: list[tuple[str, dict[str, bytes | str], dict[str, Any], asyncio.Future[str]]] = []
        self._adding: asyncio.Future[None] | None = None
        self._running: set[asyncio.Future[None]] = set()

    @property
    def reclaims(self) -> bool:
        return self.processing_timeout > 0 and self.redeliver_interval > 0

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise BrokerError(f"redis pubsub {self.name} is not started")
        return self._client

    async def start(self) -> None:
        self._client = aioredis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.tls,
            protocol=2,  # the reply shapes below are RESP2's
            socket_connect_timeout=self.dial_timeout,
            socket_timeout=self.read_timeout,
            health_check_interval=30,
        )
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            await self._client.aclose()
            self._client = None
            raise BrokerError(f"cannot reach Redis at {self.host}:{self.port}: {exc}") from None

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        fields: dict[str, bytes | str] = {"data": data, "metadata": json.dumps(dict(metadata))}
        options: dict[str, Any] = {}
        if self.max_len_approx > 0:
            options = {"maxlen": self.max_len_approx, "approximate": True}
        elif self.stream_ttl > 0:
            options = {"minid": f"{int((time.time() - self.stream_ttl) * 1000)}-1", "approximate": True}
        # The XADDs of one event-loop turn go to Redis in one pipeline: one round trip.
        added: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._adds.append((topic, fields, options, added))
        if self._adding is None:
            self._adding = adding = asyncio.ensure_future(self._add_soon())
            self._running.add(adding)  # a strong reference until it is done
            adding.add_done_callback(self._running.discard)
        return await added

    async def _add_soon(self) -> None:
        await asyncio.sleep(0)  # the other publishers of this turn join in
        adds, self._adds = self._adds, []
        self._adding = None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for topic, fields, options, _ in adds:
                    pipe.xadd(topic, fields, **options)  # type: ignore[arg-type]
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, BrokerError) as exc:
            results = [exc] * len(adds)
        for (_, _, _, added), result in zip(adds, results, strict=True):
            if added.done():
                continue  # the publisher went away
            if isinstance(result, BaseException):
                added.set_exception(BrokerError(f"Redis did not take the message: {result}"))
            else:
                added.set_result(result.decode() if isinstance(result, bytes) else str(result))

    async def ensure_group(self, topic: str) -> None:
        try:
            await self.client.xgroup_create(topic, self.consumer_group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def subscribe(self, topic: str) -> Consumer:
        consumer = _StreamConsumer(self, topic)
        try:
            await consumer.start()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"cannot subscribe to {topic} on Redis: {exc}") from None
        self._consumers.append(consumer)
        return consumer
