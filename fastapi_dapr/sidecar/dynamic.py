"""Subscriptions made and ended while the runtime runs: the gRPC API's streaming subscriptions.

A streaming subscription (SubscribeTopicEventsAlpha1) is delivered by the same
engine as any other: a `Worker` reads its own consumer of the topic and posts
each message, under the component's inbound policy and retry schedule, with its
dead-letter topic, to an ASGI app the stream provides (grpc_api/streaming.py),
which writes the message on the stream and answers with the client's status.

`Dynamic` starts such a subscription (the component's checks first, as daprd
makes them), lists it in the runtime's routes (the metadata shows it while it
runs) and stops it: the worker hands back what is in flight, its consumer is
closed, and its route leaves the metadata, so nothing is delivered for it
afterwards and a new subscription to the topic gets every message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp

from .._error_codes import PubSubErrors
from .cel import Rules
from .delivery import Route
from .worker import Worker, runners

if TYPE_CHECKING:
    from .runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

STREAM_PATH = "/"  # daprd routes every message of a streaming subscription to "/"


class NotAllowed(Exception):
    """The component's scopes do not let this app subscribe to the topic (daprd's text)."""


class SubscriberClosed(Exception):
    """The runtime's subscriptions are stopping: no new one starts."""


class DynamicSubscription:
    """One subscription started while the runtime runs, until it is stopped."""

    __slots__ = ("on_stop", "route", "stopping", "worker")

    def __init__(self, route: Route, worker: Worker, on_stop: Callable[[], None]) -> None:
        self.route = route
        self.worker = worker
        self.on_stop = on_stop  # told when the runtime stops it (not when its owner does)
        self.stopping: asyncio.Future[None] | None = None


def stream_route(pubsub: str, topic: str, metadata: Mapping[str, str], dead_letter_topic: str) -> Route:
    """The route of a streaming subscription, as daprd makes it: every message to "/"."""
    return Route(
        pubsub,
        topic,
        Rules((), STREAM_PATH),
        dead_letter_topic or None,
        None,
        "STREAMING",
        dict(metadata),
    )


class Dynamic:
    """The subscriptions of `runtime` that start and stop while it runs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.running: list[DynamicSubscription] = []

    async def start(self, route: Route, app: ASGIApp, on_stop: Callable[[], None]) -> DynamicSubscription:
        """Deliver `route`'s messages to `app`; raises daprd's errors (`DaprAPIError` for an
        unknown pubsub, `NotAllowed` for the scopes, `SubscriberClosed` while stopping)."""
        runtime = self.runtime
        if runtime.stopping:
            raise SubscriberClosed("subscriber is closed")
        broker = runtime.brokers.get(route.pubsub)
        if broker is None:
            raise PubSubErrors.not_found(route.pubsub, {})
        if not runtime.scopes[broker.name].may_subscribe(route.topic):
            raise NotAllowed(
                f"failed to create subscription for {route.pubsub}: subscription to topic "
                f"'{route.topic}' on pubsub '{route.pubsub}' is not allowed"
            )
        consumer = await broker.subscribe(route.topic, route.metadata)
        worker = Worker(runtime.engine(app), route, consumer, runners(runtime.concurrency, broker, consumer))
        worker.start()
        subscription = DynamicSubscription(route, worker, on_stop)
        self.running.append(subscription)
        runtime.routes.append(route)
        logger.info("streaming subscription to %s started", route.describe())
        return subscription

    async def stop(self, subscription: DynamicSubscription, grace: float = 0.0) -> None:
        """End `subscription` (once; again does nothing): out of the metadata first, then its
        worker stopped, what it has in flight after `grace` seconds handed back to the broker."""
        if subscription.stopping is None:
            runtime = self.runtime
            runtime.routes = [route for route in runtime.routes if route is not subscription.route]
            subscription.stopping = asyncio.ensure_future(subscription.worker.stop(grace))
            subscription.stopping.add_done_callback(lambda _: self._stopped(subscription))
        await asyncio.shield(subscription.stopping)

    def _stopped(self, subscription: DynamicSubscription) -> None:
        self.running = [running for running in self.running if running is not subscription]
        logger.info("streaming subscription to %s stopped", subscription.route.describe())

    async def stop_all(self, grace: float) -> None:
        """The runtime stops: every subscription ends, its owner told."""
        running = list(self.running)
        await asyncio.gather(*(self.stop(subscription, grace) for subscription in running))
        for subscription in running:
            subscription.on_stop()

    def in_flight(self) -> int:
        return sum(subscription.worker.in_flight for subscription in self.running)
