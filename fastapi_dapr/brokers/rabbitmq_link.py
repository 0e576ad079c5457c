"""`pubsub.rabbitmq`: one AMQP connection, made again `reconnectWaitSeconds` after it is lost.

A broker has two, as RabbitMQ advises: one for publishing and one for consuming, so that
the flow control RabbitMQ applies to a publishing connection never holds up the acks.
Each `Link` connects at start (a failure stops the start), and when the connection is
lost (RabbitMQ restarted, the network cut, a missed heartbeat) it waits
`reconnectWaitSeconds`, as daprd does, and connects again until it succeeds or is closed.
Whoever needs the connection waits for it (`connection`), up to a deadline of its own;
`generation` counts the connections made, so that a channel of an older one is known to
be gone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
from aiormq.exceptions import AMQPError

from . import BrokerError
from .rabbitmq_settings import RabbitSettings

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

CONNECT_TIMEOUT = 10.0  # seconds for one connection attempt (TCP, TLS, AMQP handshake)
Failure = (AMQPError, OSError, asyncio.TimeoutError, ssl.SSLError)
# aiormq 7 (Python 3.11+) can queue a frame without waiting until it is written: a publish
# then waits for its confirm alone, and an ack for nothing. aiormq 6 always waits.
NO_WAIT: dict[str, Any] = (
    {"wait": False} if "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters else {}
)


def connection_url(settings: RabbitSettings) -> str:
    """The URL aio-pika connects to: the component's, with daprd's heartbeat and, for
    `saslExternal`, the EXTERNAL mechanism, unless the URL says otherwise."""
    url = settings.url
    query: list[str] = []
    if "heartbeat=" not in url:
        query.append(f"heartbeat={max(0, round(settings.heartbeat))}")
    if settings.sasl_external and "auth=" not in url:
        query.append("auth=external")
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(query)


class Link:
    """One connection of the broker `pubsub`, for `purpose` (publishing or consuming)."""

    def __init__(
        self,
        pubsub: str,
        purpose: str,
        settings: RabbitSettings,
        ssl_context: ssl.SSLContext | None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self._pubsub = pubsub
        self._purpose = purpose
        self._settings = settings
        self._ssl_context = ssl_context
        self._on_connected = on_connected
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._up = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.generation = 0

    async def _connect(self) -> aio_pika.abc.AbstractConnection:
        settings = self._settings
        properties: dict[str, Any] = {}
        if settings.client_name:
            properties["connection_name"] = settings.client_name
        connection = await aio_pika.connect(
            connection_url(settings),
            ssl_context=self._ssl_context,
            timeout=CONNECT_TIMEOUT,
            client_properties=properties or None,
        )
        connection.close_callbacks.add(self._lost)
        self._connection = connection
        self.generation += 1
        self._up.set()
        if self._on_connected is not None:
            self._on_connected()
        return connection

    async def open(self) -> None:
        """Connect; `BrokerError` naming the address when RabbitMQ cannot be used."""
        try:
            await self._connect()
        except Failure as exc:
            raise BrokerError(
                f"cannot reach RabbitMQ at {self._settings.display}: {_describe(exc)}"
            ) from None

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def connection(self, timeout: float) -> aio_pika.abc.AbstractConnection:
        """The connection, once there is one; `BrokerError` after `timeout` seconds without."""
        if not self._up.is_set():
            if self._closing:
                raise BrokerError(f"rabbitmq pubsub {self._pubsub} is closed")
            try:
                await asyncio.wait_for(self._up.wait(), timeout)
            except asyncio.TimeoutError:
                raise BrokerError(
                    f"not connected to RabbitMQ at {self._settings.display} (reconnecting)"
                ) from None
        if self._connection is None or self._closing:
            raise BrokerError(f"rabbitmq pubsub {self._pubsub} is closed")
        return self._connection

    def _lost(self, _: Any, exc: BaseException | None = None) -> None:
        self._up.clear()
        self._connection = None
        if self._closing:
            return
        logger.warning(
            "rabbitmq pubsub %s: the %s connection to %s was lost (%s); reconnecting in %gs",
            self._pubsub,
            self._purpose,
            self._settings.display,
            _describe(exc) if exc is not None else "closed",
            self._settings.reconnect_wait,
        )
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        wait = self._settings.reconnect_wait
        while not self._closing:
            await asyncio.sleep(wait)
            if self._closing:
                return
            try:
                await self._connect()
            except Failure as exc:
                logger.warning(
                    "rabbitmq pubsub %s: reconnecting to %s failed (%s); again in %gs",
                    self._pubsub,
                    self._settings.display,
                    _describe(exc),
                    wait,
                )
                continue
            logger.info("rabbitmq pubsub %s: the %s connection is back", self._pubsub, self._purpose)
            return

    async def close(self) -> None:
        self._closing = True
        self._up.clear()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
            except (*Failure, RuntimeError):
                pass  # gone already: nothing left to release


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
