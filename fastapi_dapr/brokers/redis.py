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
the hot path (XADD, XACK, XREADGROUP) go through `_CommandLine`s: connections
of their own, on which a batch of commands is packed at once and sent in one
write, its replies read in order under one deadline.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import secrets
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._go import parse_duration, parse_go_int
from .._json import go_dumps
from .._tls import load_client_certificate
from . import Broker, BrokerError, Consumer, Delivery, Message, WaitingLine
from .redis_parking import Parking

if sys.version_info >= (3, 11, 3):  # as redis-py chooses (redis-py#2633)
    from asyncio import timeout as _deadline  # type: ignore[attr-defined,unused-ignore]
else:  # pragma: no cover - redis-py depends on async-timeout there
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastapi_dapr")

_RETRY_MAX = 5.0  # seconds between reconnection attempts, at most
_IDLE_RECONNECT = 30.0  # seconds after which an unused command line connects anew
# A consumer of the group with nothing pending, silent this long (a live one reads every
# second), is a replica gone for good: its name is removed from the group, checked this often.
_DEPARTED_AFTER = 3600.0
_DEPARTED_CHECK = 600.0
# daprd's settings this component has no use for: named in a warning, not silently dropped.
_UNUSED_SETTINGS = (
    "redisMaxRetries", "redisMinRetryInterval", "redisMaxRetryInterval", "writeTimeout", "poolSize",
    "minIdleConns", "maxConnAge", "poolTimeout", "idleTimeout", "idleCheckFrequency", "useEntraID",
    "useOIDC",
)  # fmt: skip
_Entry = tuple[bytes, Any]  # an entry id and its fields: a flat [field, value, ...] list or a dict


def _pack_in_python(args: Sequence[bytes | str | int]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        value = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


_packer: Callable[[Sequence[bytes | str | int]], bytes]
try:
    import hiredis

    _packer = cast(Callable[[Sequence[bytes | str | int]], bytes], hiredis.pack_command)  # the same, in C
except ImportError:  # pragma: no cover - the redis extra brings hiredis
    _packer = _pack_in_python


def _pack(*args: bytes | str | int) -> bytes:
    return _packer(args)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _duration(metadata: Mapping[str, str], key: str, default: float) -> float:
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        return parse_duration(value, integer_unit=1e-3)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer milliseconds): {value!r}") from None


def _integer(metadata: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        number = parse_go_int(value)  # as Go reads it: ASCII digits, no spaces
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {number}")
    return number


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


class _TLSConnection(Connection):
    """A redis-py connection over TLS with a context made once, in memory: daprd's
    `clientCert` and `clientKey` are PEM values, which need not touch the disk."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        self._tls_context = tls_context
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self._tls_context}


def _tls_context(metadata: Mapping[str, str]) -> ssl.SSLContext:
    """daprd's TLS settings: the system's trust store (`SSL_CERT_FILE` adds a CA, as
    for Go), `insecureSkipTLSVerify`, and a client certificate for mutual TLS."""
    context = ssl.create_default_context()
    if _truthy(metadata.get("insecureSkipTLSVerify", "false")):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    certificate = metadata.get("clientCert", "").strip()
    key = metadata.get("clientKey", "").strip()
    if bool(certificate) != bool(key):
        raise ValueError("clientCert and clientKey go together: give both or neither")
    if certificate:
        load_client_certificate(context, certificate, key, names=("clientCert", "clientKey"))
    return context


def _reply_reader(connection: Connection) -> Callable[[], Awaitable[Any]]:
    """Read one raw reply: a `ResponseError` is returned, not raised.

    The connection's parser reads it as `Connection.read_response` would,
    without that method's per-reply work (a timeout, health-check bookkeeping,
    error wrapping) which `_CommandLine` does once per batch instead.
    """
    parser = getattr(connection, "_parser", None)
    if parser is not None and hasattr(parser, "read_response"):
        return functools.partial(parser.read_response, disable_decoding=True)

    async def read() -> Any:  # pragma: no cover - a redis-py without the parser attribute
        try:
            return await connection.read_response(disable_decoding=True)
        except ResponseError as exc:
            return exc

    return read


class _CommandLine:
    """One connection, kept for one kind of work (the writes; one stream's reads).

    The commands of a batch are sent in one write and their replies read in
    order, all under one deadline: `readTimeout`, plus the time a blocking read
    may wait. On any failure the connection is dropped (a late reply must never
    be read as the answer to the next command) and made again on next use.
    """

    def __init__(self, pool: aioredis.ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: Connection | None = None
        self._used = 0.0  # when last used (monotonic)

    async def execute(self, packed: Sequence[bytes], *, blocking: float = 0.0) -> list[Any]:
        """The reply of each command (a `ResponseError` for one Redis refused);
        raises `RedisError` or `OSError` when the connection fails or is too slow."""
        limit = self._timeout + blocking
        connection = self._connection
        try:
            # Everything under the deadline, connecting included: a handshake with a paused
            # Redis must not hang the writer (and every publisher behind it).
            async with _deadline(limit):
                if connection is None:
                    connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                    self._connection, self._used = connection, time.monotonic()
                elif time.monotonic() - self._used > _IDLE_RECONNECT:
                    # A server's idle timeout, or a peer gone quietly, would fail the batch on
                    # an old connection; a new one costs one handshake per idle spell.
                    await connection.disconnect()
                self._used = time.monotonic()
                await connection.send_packed_command(b"".join(packed), check_health=False)
                read = _reply_reader(connection)
                return [await read() for _ in packed]
        except asyncio.TimeoutError:
            if connection is not None:
                await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply from Redis within {limit:g}s") from None
        except BaseException:
            if connection is not None:
                await connection.disconnect(nowait=True)  # a late reply must not be read as another's
            raise

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.disconnect(nowait=True)
            finally:
                await self._pool.release(connection)


class _StreamConsumer(Consumer):
    """This process's consumer in the group of one stream.

    One reader task fetches batches (`XREADGROUP ... COUNT queueDepth`) into a
    local buffer of at most `queueDepth` messages, from which the engine's
    runners take; claims of other consumers' stale messages go to the same
    buffer. Acks are gathered into one `XACK`, which goes out with the broker's
    next write (see `RedisBroker.publish`).
    """

    def __init__(self, broker: RedisBroker, topic: str) -> None:
        self._broker = broker
        self.topic = topic
        self.group = broker.consumer_group
        self.name = broker.consumer_name
        self._reads = broker.command_line()
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
        await self._broker.ensure_group(self.topic)
        self._reader = asyncio.create_task(self._read_loop(), name=f"redis reader {self.topic}")
        if self._broker.processing_timeout > 0:
            self._keeper = asyncio.create_task(self._keep_held(), name=f"redis keeper {self.topic}")

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        broker = self._broker
        delay = 0.1
        next_claim = 0.0  # claim stale messages at once on start, then every redeliverInterval
        next_forget = 0.0
        claim_from = "0-0"
        while not self._closed:
            await self._room.wait()
            room = broker.queue_depth - len(self._buffer)
            if room <= 0:  # filled meanwhile (messages handed back): wait for room again
                self._room.clear()
                continue
            try:
                entries: list[_Entry] = []
                if broker.reclaims and time.monotonic() >= next_claim:
                    claim_from, entries = await self._claim(claim_from, room)
                    if claim_from == "0-0":
                        next_claim = time.monotonic() + broker.redeliver_interval
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
                logger.warning("redis pubsub %s: group of %s is gone; recreating it", broker.name, self.topic)
                await self._retry_later(lambda: broker.ensure_group(self.topic))
                continue
            except (RedisError, OSError) as exc:
                await self._back_off(exc, delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            for entry_id, fields in entries:
                self._add(entry_id.decode(), *_data_and_metadata(fields))

    async def _back_off(self, error: Exception, delay: float) -> None:
        logger.warning(
            "redis pubsub %s: reading %s failed (%s); retrying in %.1fs",
            self._broker.name,
            self.topic,
            error,
            delay,
        )
        await asyncio.sleep(delay)

    async def _read(self, count: int) -> list[_Entry]:
        """New entries for this group (`XREADGROUP ... >`), waiting up to `block_ms` for some."""
        block = self._broker.block_ms
        command = _pack(
            *("XREADGROUP", "GROUP", self.group, self.name, "COUNT", count, "BLOCK", block),
            *("STREAMS", self.topic, ">"),
        )
        (reply,) = await self._reads.execute([command], blocking=block / 1000)
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
            ids = [entry_id.decode() for entry_id, _ in claimed]
            kept = await broker.parking.sift_claimed(self.topic, self.group, self.name, ids)
            claimed = [entry for entry, keep in zip(claimed, kept, strict=True) if keep]
        return next_start, claimed

    async def _forget_departed(self) -> None:
        """Remove from the group the names of replicas gone for good (killed, or moved),
        once nothing is pending for them: each process reads under a name of its own,
        and the group would otherwise keep every name it ever saw."""
        broker = self._broker
        silent_ms = max(_DEPARTED_AFTER, 10 * broker.processing_timeout) * 1000
        for consumer in await broker.client.xinfo_consumers(self.topic, self.group):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] >= silent_ms:
                await broker.client.xgroup_delconsumer(self.topic, self.group, name)
                logger.info(
                    "redis pubsub %s: consumer %s of %s is gone; forgotten", broker.name, name, self.topic
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
                    self._broker.name,
                    entry_id,
                    self.topic,
                )
        self._held[entry_id] = None
        self._buffer.append(Delivery(self, Message(self.topic, data, metadata, entry_id)))
        if len(self._buffer) >= self._broker.queue_depth:
            self._room.clear()
        self._waiting.wake_one()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        while not self._buffer:
            await self._waiting.wait()
        batch = [self._buffer.popleft() for _ in range(min(max_count, len(self._buffer)))]
        if self._buffer:
            self._waiting.wake_one()
        if len(self._buffer) < self._broker.queue_depth:
            self._room.set()
        return batch

    # -- settling ------------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Gather the ids for the next `XACK`; the runner goes on at once.

        A process that dies before the XACK went out has its messages delivered
        again (at least once); a graceful stop sends it.
        """
        self._acks.extend(delivery.message.id for delivery in deliveries)
        self._broker.want_ack(self)

    def ack_command(self) -> tuple[bytes, list[str]]:
        """The XACK of every id gathered so far, for the broker's next write."""
        ids, self._acks = self._acks, []
        self._acks_out += len(ids)
        return _pack("XACK", self.topic, self.group, *ids), ids

    def acked(self, ids: list[str], reply: Any) -> None:
        """The answer to an `ack_command()`: a count, or the error it failed with."""
        self._acks_out -= len(ids)
        if isinstance(reply, BaseException):
            # Not lost: still pending, they come back after processingTimeout (at least once).
            logger.warning(
                "redis pubsub %s: acknowledging %d messages of %s failed (%s); they will be delivered again",
                self._broker.name,
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
            if len(self._buffer) >= self._broker.queue_depth:
                self._room.clear()
            self._waiting.wake_one()
            return
        self._held.pop(message_id, None)  # its idle time grows again: others may claim it
        if not redeliver:
            await self._broker.parking.give_up(self.topic, self.group, self.name, message_id)

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
        await self._reads.close()
        while self._acks or self._acks_out:  # the acks gathered so far go out
            self._acks_settled.clear()
            if self._acks:
                self._broker.want_ack(self)
            try:
                await asyncio.wait_for(self._acks_settled.wait(), self._broker.read_timeout + 1)
            except asyncio.TimeoutError:
                break  # unanswered: still pending in Redis, delivered again
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
        self.max_deliveries = _integer(self.metadata, "maxDeliveryCount", 10, minimum=1)
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
        if self.metadata.get("redisType", "node").strip().lower() not in ("", "node"):
            raise ValueError("redisType cluster is not supported: a single node (redisType node) only")
        if _truthy(self.metadata.get("failover", "false")):
            raise ValueError("failover (Redis Sentinel) is not supported: give the node in redisHost")
        unused = [key for key in _UNUSED_SETTINGS if self.metadata.get(key, "").strip()]
        if unused:
            logger.warning("redis pubsub %s: %s not used here; ignored", name, ", ".join(unused))
        self.consumer_name = (
            f"{self.consumer_group}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._client: aioredis.Redis | None = None
        self._parking: Parking | None = None
        self._lines: aioredis.ConnectionPool | None = None
        self._writes: _CommandLine | None = None
        self._consumers: list[_StreamConsumer] = []
        self._adds: list[tuple[bytes, asyncio.Future[str]]] = []
        self._acking: dict[_StreamConsumer, None] = {}  # consumers with acks to send, in order
        self._writing: asyncio.Future[None] | None = None
        self._closing = False

    @property
    def reclaims(self) -> bool:
        return self.processing_timeout > 0 and self.redeliver_interval > 0

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

    def command_line(self) -> _CommandLine:
        if self._lines is None:
            raise BrokerError(f"redis pubsub {self.name} is not started")
        return _CommandLine(self._lines, self.read_timeout)

    async def start(self) -> None:
        connection: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "protocol": 2,  # the reply shapes read here are RESP2's
            "socket_connect_timeout": self.dial_timeout,
            "health_check_interval": 30,
        }
        if self.tls:
            connection["connection_class"] = _TLSConnection
            connection["tls_context"] = await asyncio.to_thread(_tls_context, self.metadata)
        # The client's commands time out on their own; the command lines keep their deadlines.
        self._client = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(**connection, socket_timeout=self.read_timeout)
        )
        self._parking = Parking(self, self._client)
        self._lines = aioredis.ConnectionPool(**connection, socket_timeout=None)
        self._writes = self.command_line()
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            await self.close()
            raise BrokerError(f"cannot reach Redis at {self.host}:{self.port}: {exc}") from None

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
        if self.max_len_approx > 0:
            trim = ("MAXLEN", "~", str(self.max_len_approx))
        elif self.stream_ttl > 0:
            trim = ("MINID", "~", f"{int((time.time() - self.stream_ttl) * 1000)}-1")
        fields = go_dumps(metadata) if metadata else b"{}"
        added: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._adds.append((_pack("XADD", topic, *trim, "*", "data", data, "metadata", fields), added))
        self._write_soon()
        return await added

    def want_ack(self, consumer: _StreamConsumer) -> None:
        """`consumer` has acks gathered: its XACK goes out with the next write."""
        self._acking[consumer] = None
        self._write_soon()

    def _write_soon(self) -> None:
        if self._writing is None and self._writes is not None and not self._closing:
            self._writing = asyncio.ensure_future(self._write_batches(self._writes))

    async def _write_batches(self, line: _CommandLine) -> None:
        """The XADDs and XACKs of one event-loop turn, and of every turn while the
        previous batch was out, go to Redis in one write.

        (This task first runs in the turn after the one that started it, once
        every publisher of that turn has added its command.)
        """
        try:
            while self._adds or self._acking:
                adds, self._adds = self._adds, []
                acks = [(consumer, *consumer.ack_command()) for consumer in self._acking]
                self._acking = {}
                commands = [command for command, _ in adds] + [command for _, command, _ in acks]
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
        acks: Sequence[tuple[_StreamConsumer, bytes, list[str]]],
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
            await consumer.close()
            raise BrokerError(f"cannot subscribe to {topic} on Redis: {exc}") from None
        self._consumers.append(consumer)
        return consumer
