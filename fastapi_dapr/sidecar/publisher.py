"""The publisher of one runtime: a message checked as daprd checks it, then published.

Used by the publish API, by the bulk publish (one envelope per entry, all made
before any is published), by `Dapr.publish` in embedded mode and by the
delivery engine for dead letters. Each publish runs under the component's
outbound Resiliency policy; errors are daprd's (`PubSubErrors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .._error_codes import PubSubErrors
from .._exceptions import DaprAPIError
from .._retry import Clock
from ..brokers import Broker, BrokerError, Message
from .delivery import Route
from .envelope import BadMetadata, EnvelopeError, PublishRequest, message_data
from .policy import Policy, with_timeout
from .policy_errors import AttemptTimeout, NotRetried, PolicyError
from .resiliency import Resiliency
from .scopes import TopicScopes

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

DEAD_LETTER_TIMEOUT = 30.0


class Envelope(NamedTuple):
    """A publish made ready: its pubsub, the bytes it stores, the envelope they encode."""

    broker: Broker
    data: bytes
    event: dict[str, Any] | None


class Sent(NamedTuple):
    """A message a broker took, as `Publisher.observers` see it: its pubsub and topic, the
    bytes stored (the envelope, or the payload of a raw one), its metadata and its id."""

    pubsub: str
    topic: str
    data: bytes
    metadata: Mapping[str, str]
    message_id: str


class Publisher:
    """Publishing for the app `app_id` to `brokers` (by name), within their `scopes`.

    The dictionaries are the runtime's components, shared: what starts or closes
    there is what is published to here. `observers` are called with every message a
    broker took (`fastapi_dapr.testing` records them): API, bulk entries, dead letters.
    """

    def __init__(
        self,
        *,
        app_id: str,
        brokers: Mapping[str, Broker],
        scopes: Mapping[str, TopicScopes],
        resiliency: Resiliency,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.app_id = app_id
        self.brokers = brokers
        self.scopes = scopes
        self.resiliency = resiliency
        self.clock = clock
        self.metrics = metrics
        self.observers: list[Callable[[Sent], None]] = []
        self._outbound: dict[str, Policy] = {}

    def check_pubsub(self, pubsub: str, topic: str, metadata: Mapping[str, str]) -> Broker:
        """The component for `pubsub`; daprd's errors when there is none or no topic."""
        if not self.brokers:
            raise PubSubErrors.not_configured(pubsub, metadata)
        broker = self.brokers.get(pubsub)
        if broker is None:
            raise PubSubErrors.not_found(pubsub, metadata)
        if not topic:
            raise PubSubErrors.topic_empty(pubsub, metadata)
        return broker

    def check_scopes(self, pubsub: str, topic: str) -> None:
        """daprd's 403 when this app may not publish to `topic` (reference 4.2)."""
        if not self.scopes[pubsub].may_publish(topic):
            raise PubSubErrors.forbidden(pubsub, topic, self.app_id)

    def envelope(self, request: PublishRequest) -> Envelope:
        """The pubsub, the bytes it stores and the envelope they encode, for `request`, checked
        as daprd checks a publish before it reaches the scopes; raises `DaprAPIError`."""
        broker = self.check_pubsub(request.pubsub, request.topic, request.metadata)
        try:
            data, event = message_data(request, self.app_id)
        except BadMetadata as exc:
            raise PubSubErrors.bad_metadata(request.pubsub, request.metadata, str(exc)) from None
        except EnvelopeError as exc:
            raise PubSubErrors.cloud_event_creation(request.pubsub, self.app_id, str(exc)) from None
        return Envelope(broker, data, event)

    def outbound_policy(self, pubsub: str) -> Policy:
        """The policy of publishing to `pubsub` (the API, bulk entries, dead letters)."""
        policy = self._outbound.get(pubsub)
        if policy is None:
            policy = self._outbound[pubsub] = self.resiliency.component_policy(pubsub, "Outbound")
        return policy

    async def publish(self, request: PublishRequest, *, entry: Envelope | None = None) -> str:
        """Publish as `POST /v1.0/publish` does (reference 1.2); raises `DaprAPIError`.

        `entry`: the envelope of one entry of a bulk publish, made and checked with the
        others before any is published; the bulk metrics count it instead."""
        broker, data, event = entry if entry is not None else self.envelope(request)
        # After the envelope, as daprd orders it: a bad body answers before a scope does.
        self.check_scopes(request.pubsub, request.topic)
        metrics = self.metrics
        if metrics is None or entry is not None:
            return await self._publish_message(broker, request.topic, data, request.metadata, event)
        started = time.perf_counter()
        success = False
        try:
            message_id = await self._publish_message(broker, request.topic, data, request.metadata, event)
            success = True
            return message_id
        finally:
            metrics.published(broker.name, request.topic, success, (time.perf_counter() - started) * 1000)

    async def _publish_message(
        self,
        broker: Broker,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        event: Mapping[str, Any] | None = None,
    ) -> str:
        policy = self.outbound_policy(broker.name)
        try:
            if policy.is_empty:
                return await self._publish_once(broker, topic, data, metadata, event)
            return await policy.run(
                lambda: self._publish_once(broker, topic, data, metadata, event), self.clock
            )
        except NotRetried as exc:
            raise exc.error from exc.__cause__
        except PolicyError as exc:  # an open circuit, or the last attempt's timeout
            raise PubSubErrors.publish_failed(broker.name, topic, str(exc)) from exc

    async def _publish_once(
        self,
        broker: Broker,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        event: Mapping[str, Any] | None,
    ) -> str:
        try:
            message_id = await broker.publish(topic, data, metadata, decoded=event)
        except BrokerError as exc:
            raise PubSubErrors.publish_failed(broker.name, topic, str(exc)) from exc
        except Exception as exc:
            logger.exception("pubsub %s failed to publish to %s", broker.name, topic)
            # A bug, not a broker's error: retrying would not help.
            raise NotRetried(
                PubSubErrors.publish_failed(broker.name, topic, f"{type(exc).__name__}: {exc}")
            ) from exc
        if self.observers:
            sent = Sent(broker.name, topic, data, dict(metadata), message_id)
            for observer in self.observers:
                observer(sent)
        return message_id

    async def dead_letter(self, route: Route, message: Message, metadata: Mapping[str, str]) -> bool:
        """Publish a message its subscription gave up on to the route's dead-letter topic;
        whether it was published."""
        # daprd republishes the broker's bytes unchanged, with the message's
        # metadata, to the same component (reference 3.4).
        assert route.dead_letter_topic is not None
        broker = self.brokers.get(route.pubsub)
        if broker is None:
            return False
        done = False
        if not self.scopes[broker.name].may_publish(route.dead_letter_topic):
            # Scopes apply to dead letters too (reference 3.4).
            logger.error(
                "dead-letter publish to %s refused: topic %s is not allowed for app id %s",
                route.dead_letter_topic,
                route.dead_letter_topic,
                self.app_id,
                extra=_dead_letter_fields(route, message, "the topic is not allowed for this app id"),
            )
        else:
            topic = route.dead_letter_topic
            try:
                # As daprd (deadLetterPublishTimeout): 30 s at most, outbound retries included.
                await with_timeout(
                    lambda: self._publish_message(broker, topic, message.data, metadata, message.decoded),
                    DEAD_LETTER_TIMEOUT,
                    self.clock,
                    self.resiliency.abandoned,
                )
                done = True
            except DaprAPIError as exc:
                logger.error(
                    "dead-letter publish to %s failed: %s",
                    topic,
                    exc.message,
                    extra=_dead_letter_fields(route, message, exc.message),
                )
            except AttemptTimeout:
                problem = f"not done within {DEAD_LETTER_TIMEOUT:g}s"
                logger.error(
                    "dead-letter publish to %s failed: %s",
                    topic,
                    problem,
                    extra=_dead_letter_fields(route, message, problem),
                )
        if self.metrics is not None:
            self.metrics.dead_lettered(route.pubsub, route.topic, route.dead_letter_topic, done)
        return done


def _dead_letter_fields(route: Route, message: Message, reason: str) -> dict[str, Any]:
    return {
        "pubsub": route.pubsub,
        "topic": route.topic,
        "dead_letter_topic": route.dead_letter_topic,
        "message_id": message.id,
        "reason": reason,
    }
