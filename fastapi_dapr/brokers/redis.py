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
- A message is delivered `maxDeliveryCount` times at most (Redis's own count),
  then parked in a stream of its own for an operator (`redis_parking.py`);
  daprd has no bound.

The client is redis-py's asyncio client, which connects, authenticates, selects
the database, sets up TLS and parses replies (with hiredis). The commands of
the hot path (XADD, XACK, XREADGROUP) go through command lines (`redis_lines.py`):
connections of their own, on which a batch of commands is packed at once and
sent in one write, its replies read in order under one deadline. The metadata
is read by `redis_settings.py`; each topic is read by a `redis_stream.py` consumer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._json import go_dumps
from . import Broker, BrokerError, Consumer
from .redis_lines import CommandLine, TLSConnection, pack
from .redis_parking import Parking
from .redis_settings import METADATA_KEYS, RedisSettings, tls_context
from .redis_stream import StreamConsumer

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastapi_dapr")


class RedisBroker(Broker):
    """Redis Streams, with daprd's `pubsub.redis` metadata (reference 5.3)."""

    type_name = "pubsub.redis"
    metadata_keys = METADATA_KEYS

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        self.settings = RedisSettings.read(name, self.metadata)
        self.concurrency = self.settings.concurrency
        self.consumer_name = (
            f"{self.consumer_group}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._client: aioredis.Redis | None = None
        self._parking: Parking | None = None
        self._lines: aioredis.ConnectionPool | None = None
        self._writes: CommandLine | None = None
        self._consumers: list[StreamConsumer] = []
        self._adds: list[tuple[bytes, asyncio.Future[str]]] = []
        self._acking: dict[StreamConsumer, None] = {}  # consumers with acks to send, in order
        self._writing: asyncio.Future[None] | None = None
        self._closing = False

    # The settings most looked at (by operators, by tests), on the broker itself.

    @property
    def processing_timeout(self) -> float:
        return self.settings.processing_timeout

    @property
    def redeliver_interval(self) -> float:
        return self.settings.redeliver_interval

    @property
    def max_deliveries(self) -> int:
        return self.settings.max_deliveries

    @property
    def parking(self) -> Parking:
        if self._parking is None:
            raise BrokerError(f"redis pubsub {self.name} is not started")
        return self._parking

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise BrokerError(f"redis pubsub {self.name} is not started")
        return self._client

    def command_line(self) -> CommandLine:
        if self._lines is None:
            raise BrokerError(f"redis pubsub {self.name} is not started")
        return CommandLine(self._lines, self.settings.read_timeout)

    async def start(self) -> None:
        settings = self.settings
        connection: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "db": settings.db,
            "username": settings.username,
            "password": settings.password,
            "protocol": 2,  # the reply shapes read here are RESP2's
            "socket_connect_timeout": settings.dial_timeout,
            "health_check_interval": 30,
        }
        if settings.tls:
            connection["connection_class"] = TLSConnection
            connection["tls_context"] = await asyncio.to_thread(tls_context, self.metadata)
        # The client's commands time out on their own; the command lines keep their deadlines.
        self._client = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(**connection, socket_timeout=settings.read_timeout)
        )
        self._parking = Parking(self._client, self.name, settings, self.metrics)
        self._lines = aioredis.ConnectionPool(**connection, socket_timeout=None)
        self._writes = self.command_line()
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            await self.close()
            raise BrokerError(f"cannot reach Redis at {settings.host}:{settings.port}: {exc}") from None

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()  # their last acks go out with the writes
        self._consumers.clear()
        self._closing = True  # from here on a publish is refused, and nothing new is written
        while self._writing is not None:  # the batches already taken
            await asyncio.gather(self._writing, return_exceptions=True)
        if self._writes is not None:
            await self._writes.close()
            self._writes = None
        if self._lines is not None:
            await self._lines.disconnect()
            self._lines = None
        if self._client is not None:
            await self._client.aclose()
            await self._client.connection_pool.disconnect()  # a pool given to the client is not its own
            self._client = None

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        """XADD as daprd's component writes it (reference 5.1); the entry's id."""
        if self._writes is None or self._closing:
            raise BrokerError(f"redis pubsub {self.name} is not started, or is closing")
        trim: tuple[str, ...] = ()
        settings = self.settings
        if settings.max_len_approx > 0:
            trim = ("MAXLEN", "~", str(settings.max_len_approx))
        elif settings.stream_ttl > 0:
            trim = ("MINID", "~", f"{int((time.time() - settings.stream_ttl) * 1000)}-1")
        fields = go_dumps(metadata) if metadata else b"{}"
        added: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._adds.append((pack("XADD", topic, *trim, "*", "data", data, "metadata", fields), added))
        self._write_soon()
        return await added

    def want_ack(self, consumer: StreamConsumer) -> None:
        """`consumer` has acks gathered: its XACK goes out with the next write."""
        self._acking[consumer] = None
        self._write_soon()

    def _write_soon(self) -> None:
        if self._writing is None and self._writes is not None and not self._closing:
            self._writing = asyncio.ensure_future(self._write_batches(self._writes))

    async def _write_batches(self, line: CommandLine) -> None:
        """The XADDs and XACKs of one event-loop turn, and of every turn while the
        previous batch was out, go to Redis in one write.

        (This task first runs in the turn after the one that started it, once
        every publisher of that turn has added its command.)
        """
        try:
            while self._adds or self._acking:
                adds, self._adds = self._adds, []
                # A consumer's next read may have taken its acks meanwhile.
                acks = [(consumer, *consumer.ack_command()) for consumer in self._acking if consumer.has_acks]
                self._acking = {}
                commands = [command for command, _ in adds] + [command for _, command, _ in acks]
                if not commands:
                    break
                replies: list[Any] | None = None
                try:
                    replies = await line.execute(commands)
                except (RedisError, OSError) as exc:
                    replies = [exc] * len(commands)
                finally:
                    self._settle(adds, acks, replies)  # every publisher and ack answered, whatever happened
        finally:
            self._writing = None
            adds, self._adds = self._adds, []
            self._settle(adds, [], None)

    @staticmethod
    def _settle(
        adds: Sequence[tuple[bytes, asyncio.Future[str]]],
        acks: Sequence[tuple[StreamConsumer, bytes, list[str]]],
        replies: Sequence[Any] | None,
    ) -> None:
        """Answer the publishers and the consumers of one batch; `replies` None: it was
        not answered (the writer was cancelled)."""
        unanswered = BrokerError("publishing stopped before Redis answered")
        for index, (_, added) in enumerate(adds):
            reply = unanswered if replies is None else replies[index]
            if added.done():
                continue  # the publisher went away
            if isinstance(reply, bytes):
                added.set_result(reply.decode())
            elif reply is unanswered:
                added.set_exception(unanswered)
            else:
                added.set_exception(BrokerError(f"Redis did not take the message: {reply}"))
        for index, (consumer, _, ids) in enumerate(acks):
            consumer.acked(ids, unanswered if replies is None else replies[len(adds) + index])

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        consumer = StreamConsumer(
            topic,
            pubsub=self.name,
            settings=self.settings,
            group=self.consumer_group,
            name=self.consumer_name,
            client=self.client,
            reads=self.command_line(),
            parking=self.parking,
            want_ack=self.want_ack,
        )
        try:
            await consumer.start()
        except (RedisError, OSError) as exc:
            await consumer.close()
            raise BrokerError(f"cannot subscribe to {topic} on Redis: {exc}") from None
        self._consumers.append(consumer)
        return consumer
