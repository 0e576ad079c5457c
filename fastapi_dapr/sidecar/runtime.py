"""The embedded sidecar's runtime: the coordinator of one app's components, publisher and deliveries.

Created when the app starts (inside its lifespan) in embedded mode, and by the
standalone sidecar. It starts the components (`Components`), publishes through
its `Publisher`, starts a delivery worker per subscription, and owns every
background task it starts, and stops them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from .._exceptions import DaprAPIError
from .._invocation import InvocationSettings
from .._retry import DEFAULT_DELIVERY_RETRY, Clock, RetryPolicy
from .._subscription import TopicSubscription
from ..brokers import Broker
from .cel import Rules
from .components import Components
from .delivery import DeliveryReport, Route
from .dynamic import Dynamic
from .engine import Engine
from .envelope import PublishRequest
from .policy import Policy
from .publisher import Envelope, Publisher
from .resiliency import Resiliency
from .resources import Resources
from .worker import Worker, runners

if TYPE_CHECKING:
    from .metrics import Metrics
    from .proxy import Target, Upstreams

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

RUNTIME_VERSION = "fastapi-dapr"


class Runtime:
    """Everything the embedded sidecar runs, for one app."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        app_id: str,
        app_api_token: str | None,
        resources: Resources,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        concurrency: int = 64,
        shutdown_grace: float = 10.0,
        invocation: InvocationSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.app_id = app_id
        self.app_api_token = app_api_token
        self.resources = resources
        self.retry = retry or DEFAULT_DELIVERY_RETRY
        self.clock = clock or Clock()
        self.namespace = os.environ.get("NAMESPACE", "default")
        if metrics is not None:
            metrics.app_id, metrics.namespace = app_id, self.namespace
        self.resiliency = Resiliency(resources.resiliencies, clock=self.clock, metrics=metrics)
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.components = Components(resources, app_id=app_id, metrics=metrics)
        # The components' own dictionaries: what starts or closes there is seen here.
        self.brokers = self.components.brokers
        self.secret_stores = self.components.secret_stores
        self.scopes = self.components.scopes
        self.http_endpoints = self.components.http_endpoints
        self.publisher = Publisher(
            app_id=app_id,
            brokers=self.brokers,
            scopes=self.scopes,
            resiliency=self.resiliency,
            clock=self.clock,
            metrics=metrics,
        )
        self.invocation = invocation or InvocationSettings()
        self._upstreams: Upstreams | None = None
        self.routes: list[Route] = []
        self.workers: list[Worker] = []
        self.dynamic = Dynamic(self)  # streaming subscriptions (the gRPC API's), started while running
        self.lifespan_state: Mapping[str, Any] | None = None
        self._observers: list[Callable[[DeliveryReport], None]] = []
        self._stopping = asyncio.Event()
        self.ready = False
        self.extended_metadata: dict[str, str] = {}  # set with PUT /v1.0/metadata/{key}

    # -- components ----------------------------------------------------------

    async def start_components(self) -> None:
        await self.components.start()

    # -- invocation targets --------------------------------------------------

    def upstreams(self) -> Upstreams:
        """The network targets and their connection pools, made on first use."""
        if self._upstreams is None:
            from .proxy import Upstreams  # loaded only when something is invoked

            self._upstreams = Upstreams(
                self.invocation,
                self.http_endpoints,
                app_id=self.app_id,
                namespace=self.namespace,
                metrics=self.metrics,
            )
        return self._upstreams

    def is_own_id(self, name: str) -> bool:
        """Whether invoking `name` is invoking this app: its id, or `{id}.{namespace}` in its own
        namespace (daprd's requestAppIDAndNamespace, then invokeLocal), unless an HTTPEndpoint
        resource has that name (Dapr's precedence, reference 6.2)."""
        if name in self.http_endpoints:
            return False
        return name in (self.app_id, f"{self.app_id}.{self.namespace}")

    async def find_target(self, name: str) -> Target:
        """The network target `name` names (not this app's own id); daprd's error if none."""
        target = self.upstreams().resolve(name)
        if target is None:
            raise DaprAPIError(
                500,
                "ERR_DIRECT_INVOKE",
                f"failed to invoke, id: {name}, err: couldn't find service: {name} (not this app's id "
                f"{self.app_id!r}, not an HTTPEndpoint resource, and not in InvocationSettings.apps)",
            )
        return target

    async def close(self) -> None:
        # First what resiliency timeouts gave up: such an attempt may still use a component.
        await self.resiliency.close(self.shutdown_grace)
        if self._upstreams is not None:
            await self._upstreams.close()
            self._upstreams = None
        await self.components.close()
        self.ready = False

    # -- subscriptions -------------------------------------------------------

    def plan_routes(self, programmatic: Sequence[TopicSubscription]) -> list[Route]:
        """Programmatic subscriptions, then declarative ones for other topics (reference 2.2)."""
        routes = [
            Route(
                sub.pubsub,
                sub.topic,
                Rules(sub.rules, sub.default),
                sub.dead_letter_topic,
                sub.bulk,
                "PROGRAMMATIC",
                sub.metadata,
            )
            for sub in programmatic
        ]
        taken = {(route.pubsub, route.topic) for route in routes}
        for declared in self.resources.subscriptions:
            key = (declared.pubsub, declared.topic)
            if key in taken:
                logger.info(
                    "%s: Subscription %r replaced by the app's own subscription to %s",
                    declared.source,
                    declared.name,
                    declared.topic,
                )
                continue
            taken.add(key)
            routes.append(
                Route(
                    declared.pubsub,
                    declared.topic,
                    Rules(declared.rules, declared.default),
                    declared.dead_letter_topic,
                    declared.bulk,
                    "DECLARATIVE",
                    declared.metadata,
                )
            )
        return routes

    def engine(self, app: ASGIApp) -> Engine:
        """The delivery engine posting to `app` (the app itself, or a streaming subscription's)."""
        return Engine(
            app=app,
            app_api_token=self.app_api_token,
            inbound=self.inbound_policy,
            clock=self.clock,
            dead_letter=self.publisher.dead_letter,
            observers=self._observers,
            lifespan_state=lambda: self.lifespan_state,
            stopping=self._stopping,
            metrics=self.metrics,
            discards=self._discards,
        )

    def _discards(self, pubsub: str, topic: str) -> bool:
        broker = self.brokers.get(pubsub)
        return broker is not None and broker.discards(topic)

    @property
    def stopping(self) -> bool:
        """Whether the subscriptions are stopping (or stopped): none starts now."""
        return self._stopping.is_set()

    async def start_subscriptions(self, programmatic: Sequence[TopicSubscription]) -> None:
        self._stopping.clear()
        engine = self.engine(self.app)
        # Streaming subscriptions opened before (standalone: while waiting for the app) stay listed.
        streaming = [route for route in self.routes if route.kind == "STREAMING"]
        self.routes = self.plan_routes(programmatic) + streaming
        starting: list[tuple[Route, Broker]] = []
        for route in self.routes:
            broker = self.brokers.get(route.pubsub)
            if broker is None:
                logger.error(
                    "subscription to %s on pubsub %s not started: no such pubsub component",
                    route.topic,
                    route.pubsub,
                )
                continue
            if not self.scopes[broker.name].may_subscribe(route.topic):
                logger.error(
                    "subscription to %s on pubsub %s not started: topic %s is not allowed for app id %s",
                    route.topic,
                    route.pubsub,
                    route.topic,
                    self.app_id,
                )
                continue
            starting.append((route, broker))
        # A component's `concurrency` bounds its subscriptions together: each has at most
        # that many runners, and when there are several they share one limit.
        limits = {
            name: asyncio.Semaphore(broker.concurrency)
            for name, broker in self.brokers.items()
            if broker.concurrency is not None and sum(b is broker for _, b in starting) > 1
        }
        for route, broker in starting:
            consumer = await broker.subscribe(route.topic, route.metadata)
            count = runners(self.concurrency, broker, consumer)
            worker = Worker(engine, route, consumer, count, limits.get(broker.name))
            worker.start()
            self.workers.append(worker)
        self.subscriptions_started()

    def subscriptions_started(self) -> None:
        """Every subscription there will be has joined its topic (or there are none): the
        in-memory brokers stop keeping messages for subscriptions to come."""
        for broker in self.brokers.values():
            broker.subscriptions_started()
        self.ready = True

    def inbound_policy(self, pubsub: str) -> Policy:
        """The policy of deliveries from `pubsub`: its Resiliency policy, else the default retry.

        daprd does not retry a delivery no policy covers (reference 3.4); here such a
        delivery is retried by `Dapr(retry=...)`, by default a minute of backoff.
        """
        policy = self.resiliency.component_policy(pubsub, "Inbound")
        if policy.is_empty and not self.resiliency.component_defined(pubsub):
            return Policy(f"component[{pubsub}] input (fastapi-dapr's default retry)", retry=self.retry)
        return policy

    async def stop_subscriptions(self) -> None:
        self._stopping.set()
        workers, self.workers = self.workers, []
        await asyncio.gather(
            *(worker.stop(self.shutdown_grace) for worker in workers),
            self.dynamic.stop_all(self.shutdown_grace),
        )

    # -- publishing ----------------------------------------------------------

    def check_pubsub(self, pubsub: str, topic: str, metadata: Mapping[str, str]) -> Broker:
        """The component for `pubsub`; daprd's errors when there is none or no topic."""
        return self.publisher.check_pubsub(pubsub, topic, metadata)

    def check_scopes(self, pubsub: str, topic: str) -> None:
        """daprd's 403 when this app may not publish to `topic` (reference 4.2)."""
        self.publisher.check_scopes(pubsub, topic)

    def envelope(self, request: PublishRequest) -> Envelope:
        """The publish `request` made ready and checked (`Publisher.envelope`)."""
        return self.publisher.envelope(request)

    async def publish(self, request: PublishRequest, *, entry: Envelope | None = None) -> str:
        """Publish as `POST /v1.0/publish` does (`Publisher.publish`); raises `DaprAPIError`."""
        return await self.publisher.publish(request, entry=entry)

    # -- observation ---------------------------------------------------------

    def add_observer(self, observer: Callable[[DeliveryReport], None]) -> Callable[[], None]:
        """Call `observer` with every delivery report; returns the function that removes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def in_flight(self) -> int:
        return sum(worker.in_flight for worker in self.workers) + self.dynamic.in_flight()

    def set_extended_metadata(self, key: str, value: bytes, limit: int) -> bool:
        """Keep `value` as `key` of the extended metadata (daprd's SetMetadata), unless the
        extended metadata would then hold more than `limit` bytes; whether it was kept."""
        text = value.decode("utf-8", errors="replace")  # as Go's JSON writes a string of bytes
        kept = {**self.extended_metadata, key: text}
        if sum(len(k.encode()) + len(v.encode()) for k, v in kept.items()) > limit:
            return False
        self.extended_metadata = kept
        return True

    def shutdown(self) -> Callable[[], None]:
        """What `POST /v1.0/shutdown` runs once its 204 is sent; `DaprAPIError` if refused.

        daprd stops gracefully. The embedded sidecar is the app's own process, so the
        process is asked to stop as SIGTERM asks it: only when something in it (the
        server: uvicorn, hypercorn, a gunicorn worker) handles SIGTERM, since without a
        handler the signal would kill the process at once, and a test client has none."""
        if not callable(signal.getsignal(signal.SIGTERM)):
            raise DaprAPIError(
                501,
                "ERR_API_UNIMPLEMENTED",
                "the embedded sidecar is the app's own process, and nothing in it stops gracefully "
                "on SIGTERM (no server such as uvicorn runs it): stop the app itself",
            )

        def stop() -> None:
            # A warning: the app stops because of a call, and the server's own lines do not say so.
            logger.warning("shutdown requested through the API: stopping the app as on SIGTERM")
            signal.raise_signal(signal.SIGTERM)

        return stop

    def metadata(self, *, channel_port: int | None = None) -> dict[str, Any]:
        """`GET /v1.0/metadata` in daprd's shape."""
        body: dict[str, Any] = {
            "id": self.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "enabledFeatures": [],
            "components": [
                {
                    "name": broker.name,
                    "type": broker.type_name or "pubsub",
                    "version": "v1",
                    "capabilities": [],
                }
                for broker in self.brokers.values()
            ],
            # What PUT /v1.0/metadata/{key} set; the runtime's own key last, as daprd's.
            "extended": {"appCommand": "", **self.extended_metadata, "runtime": "fastapi-dapr embedded"},
            "subscriptions": [
                {
                    "pubsubname": route.pubsub,
                    "topic": route.topic,
                    "metadata": dict(route.metadata),
                    "rules": [{"match": m, "path": p} for m, p in _rules_of(route)],
                    "deadLetterTopic": route.dead_letter_topic or "",
                    "type": route.kind,
                }
                for route in self.routes
            ],
            "httpEndpoints": [{"name": name} for name in self.http_endpoints],
            "appConnectionProperties": {"protocol": "http", "channelAddress": "in-process"},
            "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": False},
        }
        if channel_port:
            body["appConnectionProperties"]["port"] = channel_port
        return body


def _rules_of(route: Route) -> list[tuple[str, str]]:
    rules = route.rules.rules()
    if route.rules.default is not None:
        rules.append(("", route.rules.default))
    return rules
