"""`pubsub.redis`: command lines, the connections of the hot path (XADD, XACK, XREADGROUP).

A command line is a connection of its own, kept for one kind of work, on which a
batch of commands is packed at once (with hiredis) and sent in one write, its
replies read in order under one deadline. redis-py's client does the rest: it
connects, authenticates, selects the database and sets up TLS.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if sys.version_info >= (3, 11, 3):  # as redis-py chooses (redis-py#2633)
    from asyncio import timeout as _deadline  # type: ignore[attr-defined,unused-ignore]
else:  # pragma: no cover - redis-py depends on async-timeout there
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,no-redef,unused-ignore]


__all__: list[str] = []

_IDLE_RECONNECT = 30.0  # seconds after which an unused command line connects anew


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


def pack(*args: bytes | str | int) -> bytes:
    return _packer(args)


class TLSConnection(Connection):
    """A redis-py connection over TLS with a context made once, in memory: daprd's
    `clientCert` and `clientKey` are PEM values, which need not touch the disk."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        self._tls_context = tls_context
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self._tls_context}


def _reply_reader(connection: Connection) -> Callable[[], Awaitable[Any]]:
    """Read one raw reply: a `ResponseError` is returned, not raised.

    The connection's parser reads it as `Connection.read_response` would,
    without that method's per-reply work (a timeout, health-check bookkeeping,
    error wrapping) which `CommandLine` does once per batch instead.
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


class CommandLine:
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

    async def execute(
        self,
        packed: Sequence[bytes],
        *,
        blocking: float = 0.0,
        ahead: int = 0,
        answered: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """The reply of each command (a `ResponseError` for one Redis refused);
        raises `RedisError` or `OSError` when the connection fails or is too slow.

        `answered`, when given, gets the replies of the first `ahead` commands as soon
        as they are read, before the others' (a blocking read's) come."""
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
                if answered is None:
                    return [await read() for _ in packed]
                replies = [await read() for _ in range(ahead)]
                answered(replies)
                return replies + [await read() for _ in range(len(packed) - ahead)]
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
