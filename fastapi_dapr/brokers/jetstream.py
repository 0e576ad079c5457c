"""`pubsub.jetstream`: NATS JetStream with daprd's layout, through nats-py, at-least-once for real.

Layout, as daprd's component (`jetstream_layout.py`): the subject is the topic, the body
the CloudEvent, its id the `Nats-Msg-Id`; a subscription is a push consumer of the stream
that holds the topic (`streamName`, else found by subject), with daprd's consumer
settings (`jetstream_settings.py`). The streams are the operator's, as with daprd: neither
creates them. So an app under daprd and an app on fastapi-dapr read each other's
messages on one NATS server, and can share a durable consumer.

Guarantees: a publish answers once the stream stored the message (the server's
acknowledgement); a consumer acknowledges only what the engine settled, so what a process
killed, or a connection lost, left unacknowledged is delivered again after `ackWait`
(`jetstream_consumer.py`). The connection is made again for as long as it takes, and the
subscriptions follow it; with file storage the stream and the consumers survive a
restart of the server.

Where it differs from daprd (docs/jetstream.md): the consumer is durable without
`durableName` too, shared by the replicas of the consumer group; a second replica uses the
consumer another made instead of failing to make it again; the publish's metadata goes
with the message; a message given up waits `ackWait` before it comes again, also when
`ackWait` is not set; the connection never stops reconnecting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import nats
import nats.aio.client
import nats.errors

from . import Broker, BrokerError, Consumer
from .jetstream_consumer import JetStreamConsumer, api_request
from .jetstream_layout import check_subject, consumer_names, deliver_subject, publish_headers
from .jetstream_publish import Publisher
from .jetstream_settings import METADATA_KEYS, JetStreamSettings, tls_context

__all__ = ["JetStreamBroker"]

logger = logging.getLogger("fastapi_dapr")

PUBLISH_TIMEOUT = 5.0  # seconds for the stream to acknowledge a publish (nats.go's default)
CONNECT_TIMEOUT = 5.0
RECONNECT_WAIT = 1.0  # seconds between two attempts to reach a server again


class JetStreamBroker(Broker):
    """NATS JetStream, with daprd's `pubsub.jetstream` metadata."""

    type_name = "pubsub.jetstream"
    metadata_keys = METADATA_KEYS

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        self.settings = JetStreamSettings.read(name, self.metadata)
        self._client: nats.aio.client.Client | None = None
        self._consumers: list[JetStreamConsumer] = []
        self._publisher: Publisher | None = None
        self._streams: dict[str, str] = {}
        self._checked: set[str] = set()  # topics that can be subjects
        self._closing = False
        self._last_error: BaseException | None = None

    @property
    def client(self) -> nats.aio.client.Client:
        if self._client is None:
            raise BrokerError(f"jetstream pubsub {self.name} is not started")
        return self._client

    async def start(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {
            "servers": [url.strip() for url in settings.url.split(",") if url.strip()],
            "name": settings.name,
            "connect_timeout": CONNECT_TIMEOUT,
            "reconnect_time_wait": RECONNECT_WAIT,
            "max_reconnect_attempts": 1,  # the first connection gives up soon; reconnecting never stops
            "error_cb": self._error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            # The topics are checked here (once each); every other subject is the server's or ours.
            "skip_subject_validation": True,
        }
        # daprd's order: a JWT and its seed, else a client certificate, else a token.
        if settings.jwt:
            options.update(_jwt_callbacks(settings.jwt, settings.seed_key))
        elif settings.token and not settings.tls_client_cert:
            options["token"] = settings.token
        context = await asyncio.to_thread(tls_context, settings)
        if context is not None:
            options["tls"] = context
        try:
            self._client = await nats.connect(**options)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            reason = self._last_error if isinstance(exc, nats.errors.NoServersError) else exc
            raise BrokerError(f"cannot reach NATS at {settings.url}: {_say(reason)}") from None
        self._client.options["max_reconnect_attempts"] = -1
        try:
            await api_request(self._client, f"{settings.api_prefix}.INFO")
            self._publisher = Publisher(self._client, PUBLISH_TIMEOUT)
            await self._publisher.start()
        except (BrokerError, nats.errors.Error) as exc:
            await self.close()
            raise BrokerError(f"JetStream is not available at {settings.url}: {exc}") from None

    async def _error(self, error: Exception) -> None:
        self._last_error = error
        if self._client is not None:  # while connecting, the failure is said by start()
            logger.warning("jetstream pubsub %s: %s", self.name, _say(error))

    async def _disconnected(self) -> None:
        if not self._closing:
            logger.warning("jetstream pubsub %s: disconnected from NATS; reconnecting", self.name)

    async def _reconnected(self) -> None:
        logger.info("jetstream pubsub %s: reconnected to NATS", self.name)
        for consumer in self._consumers:
            consumer.reconnected()

    async def close(self) -> None:
        self._closing = True
        for consumer in list(self._consumers):
            await consumer.close()
        self._consumers.clear()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            # The last acknowledgements go out; those not sent come again after ackWait.
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await asyncio.wait_for(client.flush(), 5)
            await client.close()

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        """A JetStream publish as daprd's (subject, body, `Nats-Msg-Id`), with the metadata;
        the id of the message: its stream and sequence."""
        client, publisher = self._client, self._publisher
        if client is None or publisher is None or self._closing:
            raise BrokerError(f"jetstream pubsub {self.name} is not started, or is closing")
        if not client.is_connected:
            raise BrokerError("not connected to NATS (reconnecting)")
        try:
            if topic not in self._checked:
                check_subject(topic, "the topic")
                if len(self._checked) < 10_000:
                    self._checked.add(topic)
            headers = publish_headers(data, metadata, decoded)
        except ValueError as exc:
            raise BrokerError(f"publishing to {topic}: {exc}") from None
        stream, sequence = await publisher.publish(topic, data, headers)
        return f"{stream}:{sequence}"

    async def _stream_of(self, topic: str) -> str:
        """`streamName`, else the one stream whose subjects take `topic` (nats.go's
        `StreamNameBySubject`, as daprd finds it)."""
        if self.settings.stream_name:
            return self.settings.stream_name
        if topic in self._streams:
            return self._streams[topic]
        answer = await api_request(
            self.client, f"{self.settings.api_prefix}.STREAM.NAMES", {"subject": topic}
        )
        streams = answer.get("streams") or []
        if len(streams) != 1:
            found = f"{len(streams)} streams ({', '.join(streams)})" if streams else "no stream"
            raise BrokerError(f"{found} take the subject {topic}: create one, or set streamName")
        self._streams[topic] = stream = str(streams[0])
        return stream

    async def subscribe(self, topic: str, metadata: Mapping[str, str] | None = None) -> Consumer:
        settings = self.settings
        try:
            check_subject(topic, "the topic")
            stream = await self._stream_of(topic)
            durable, group = consumer_names(
                topic, self.consumer_group, settings.durable_name, settings.queue_group_name
            )
            config = settings.consumer_config(topic, durable, group, deliver_subject(stream, durable))
            consumer = JetStreamConsumer(
                topic,
                pubsub=self.name,
                settings=settings,
                client=self.client,
                stream=stream,
                durable=durable,
                group=group,
                config=config,
            )
            await consumer.start()
        except (BrokerError, nats.errors.Error, ValueError) as exc:
            raise BrokerError(f"cannot subscribe to {topic} on JetStream: {exc}") from None
        self._consumers.append(consumer)
        return consumer


def _say(error: BaseException | None) -> str:
    return (str(error) or type(error).__name__) if error is not None else "no answer"


def _jwt_callbacks(jwt: str, seed: str) -> dict[str, Any]:
    """nats-py's user credentials for daprd's `jwt` and `seedKey` (values, not files)."""
    try:
        import nkeys  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - the nats extra brings it
        raise BrokerError("jwt and seedKey need nkeys: pip install 'fastapi-dapr[nats]'") from None

    def user_jwt() -> bytes:
        return jwt.encode()

    def signature(nonce: str) -> bytes:
        keys = nkeys.from_seed(bytearray(seed.strip().encode()))
        try:
            return base64.b64encode(keys.sign(nonce.encode()))
        finally:
            keys.wipe()

    return {"user_jwt_cb": user_jwt, "signature_cb": signature}
