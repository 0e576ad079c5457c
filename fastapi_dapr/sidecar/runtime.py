"""The embedded sidecar's runtime: components, subscriptions, publishing and delivery.

Created when the app starts (inside its lifespan) in embedded mode, and by the
standalone sidecar. It owns every background task it starts, and stops them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from starlette.types import ASGIApp

from .._error_codes import PubSubErrors
from .._exceptions import DaprAPIError, ResourceError
from .._invocation import InvocationSettings
from .._retry import DEFAULT_DELIVERY_RETRY, Clock, RetryPolicy
from .._subscription import TopicSubscription
from ..brokers import Broker, BrokerError, Message, load_broker_class
from ..secretstores import SecretStore, SecretStoreError, load_secret_store_class
from .cel import Rules
from .delivery import DeliveryReport, Route
from .endpoints import ResolvedEndpoint, resolve_endpoint
from .engine import Engine
from .envelope import BadMetadata, EnvelopeError, PublishRequest, message_data
from .policy import Policy, with_timeout
from .policy_errors import AttemptTimeout, NotRetried, PolicyError
from .resiliency import Resiliency
from .resources import Component, Resources
from .scopes import TopicScopes
from .worker import Worker

if TYPE_CHECKING:
    from .metrics import Metrics
    from .proxy import Target, Upstreams

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

DEFAULT_PUBSUB = Component(
    name="pubsub", type="pubsub.in-memory", version="v1", metadata=(), source="<built-in default>"
)
RUNTIME_VERSION = "fastapi-dapr"
DEAD_LETTER_TIMEOUT = 30.0


class Envelope(NamedTuple):
    """A publish made ready: its pubsub, the bytes it stores, the envelope they encode."""

    broker: Broker
    data: bytes
    event: dict[str, Any] | None


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
        self._outbound: dict[str, Policy] = {}
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.brokers: dict[str, Broker] = {}
        self.secret_stores: dict[str, SecretStore] = {}
        self.scopes: dict[str, TopicScopes] = {}
        self.http_endpoints: dict[str, ResolvedEndpoint] = {}
        self.invocation = invocation or InvocationSettings()
        self._upstreams: Upstreams | None = None
        self.routes: list[Route] = []
        self.workers: list[Worker] = []
        self.lifespan_state: Mapping[str, Any] | None = None
        self._observers: list[Callable[[DeliveryReport], None]] = []
        self._stopping = asyncio.Event()
        self.ready = False
        self.extended_metadata: dict[str, str] = {}  # set with PUT /v1.0/metadata/{key}

    # -- components ----------------------------------------------------------

    def _pubsub_components(self) -> list[Component]:
        components = [c for c in self.resources.components if c.type.startswith("pubsub.")]
        return components or [DEFAULT_PUBSUB]

    async def _start_component(self, component: Component, make: Callable[[dict[str, str]], Any]) -> Any:
        """Create and start one component; None if it failed and may be skipped."""
        instance = None
        try:
            values = await self.resolve_metadata(component)
            instance = make(values)
            await asyncio.wait_for(instance.start(), component.init_timeout)
        except (
            LookupError,
            ImportError,
            ValueError,
            BrokerError,
            SecretStoreError,
            asyncio.TimeoutError,
        ) as exc:
            problem = str(exc) or type(exc).__name__
            if instance is not None:  # it may hold what it got before it failed
                try:
                    await instance.close()
                except Exception:
                    logger.exception("component %s did not close cleanly", component.name)
            if component.ignore_errors:
                logger.warning(
                    "%s: Component %r not started (ignoreErrors): %s",
                    component.source,
                    component.name,
                    problem,
                )
                return None
            raise ResourceError(f"{component.source}: Component {component.name!r}: spec: {problem}") from exc
        return instance

    async def resolve_metadata(self, component: Component) -> dict[str, str]:
        """The component's metadata, `secretKeyRef` values read from `auth.secretStore`."""
        values = component.values()
        for index, item in enumerate(component.metadata):
            if item.secret_name is None:
                continue
            field = f"spec.metadata[{index}].secretKeyRef"
            values[item.name] = await self.secret_value(
                component.secret_store,
                item.secret_name,
                item.secret_key or item.secret_name,
                where=f"{component.source}: Component {component.name!r}: {field}",
            )
        return values

    async def secret_value(self, store_name: str | None, secret: str, key: str, where: str) -> str:
        """One value of one secret, for a resource; `ResourceError` (naming `where`) if unavailable.

        daprd leaves such a reference empty with a warning, or parks the resource
        until the store appears; a reference that cannot be resolved stops the start here.
        """
        if not store_name:
            raise ResourceError(f"{where}: needs auth.secretStore to name the secret store")
        store = self.secret_stores.get(store_name)
        if store is None:
            raise ResourceError(f"{where}: secret store {store_name!r} is not loaded")
        try:
            data = await store.get_secret(secret)
        except SecretStoreError as exc:
            raise ResourceError(f"{where}: {exc}") from None
        if key not in data:
            raise ResourceError(f"{where}: secret {secret!r} has no key {key!r}")
        return data[key]

    def _secret_store_factory(self, component: Component) -> Callable[[dict[str, str]], SecretStore]:
        def make(values: dict[str, str]) -> SecretStore:
            return load_secret_store_class(component.type)(component.name, values)

        return make

    def _broker_factory(self, component: Component) -> Callable[[dict[str, str]], Broker]:
        def make(values: dict[str, str]) -> Broker:
            # Scopes that cannot be read refuse the component, as any bad metadata does.
            self.scopes[component.name] = TopicScopes.from_metadata(values, self.app_id)
            broker = load_broker_class(component.type)(component.name, values, app_id=self.app_id)
            broker.metrics = self.metrics
            return broker

        return make

    async def start_components(self) -> None:
        # Secret stores first, as daprd does: the other components may need them (reference 7.2).
        for component in self.resources.components:
            if component.type.startswith("secretstores."):
                store = await self._start_component(component, self._secret_store_factory(component))
                if store is not None:
                    self.secret_stores[component.name] = store
        for endpoint in self.resources.http_endpoints:
            self.http_endpoints[endpoint.name] = await resolve_endpoint(endpoint, self.secret_value)
        for component in self._pubsub_components():
            broker = await self._start_component(component, self._broker_factory(component))
            if broker is not None:
                self.brokers[component.name] = broker
            else:
                self.scopes.pop(component.name, None)
        for component in self.resources.components:
            if not component.type.startswith(("pubsub.", "secretstores.")):
                logger.info(
                    "%s: Component %r of type %s is not used by the embedded sidecar",
                    component.source,
                    component.name,
                    component.type,
                )

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
        components: list[Broker | SecretStore] = [*self.brokers.values(), *self.secret_stores.values()]
        for component in components:
            try:
                await component.close()
            except Exception:
                logger.exception("component %s did not close cleanly", component.name)
        self.brokers.clear()
        self.secret_stores.clear()
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

    async def start_subscriptions(self, programmatic: Sequence[TopicSubscription]) -> None:
        self._stopping.clear()
        engine = Engine(
            app=self.app,
            app_api_token=self.app_api_token,
            inbound=self.inbound_policy,
            clock=self.clock,
            dead_letter=self._dead_letter,
            observers=self._observers,
            lifespan_state=lambda: self.lifespan_state,
            stopping=self._stopping,
            metrics=self.metrics,
        )
        self.routes = self.plan_routes(programmatic)
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
            consumer = await broker.subscribe(route.topic)
            runners = min(self.concurrency, broker.concurrency or self.concurrency)
            worker = Worker(engine, route, consumer, runners, limits.get(broker.name))
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

    def outbound_policy(self, pubsub: str) -> Policy:
        """The policy of publishing to `pubsub` (the API, bulk entries, dead letters)."""
        policy = self._outbound.get(pubsub)
        if policy is None:
            policy = self._outbound[pubsub] = self.resiliency.component_policy(pubsub, "Outbound")
        return policy

    async def stop_subscriptions(self) -> None:
        self._stopping.set()
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.stop(self.shutdown_grace) for worker in workers))

    # -- publishing ----------------------------------------------------------

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
            return await broker.publish(topic, data, metadata, decoded=event)
        except BrokerError as exc:
            raise PubSubErrors.publish_failed(broker.name, topic, str(exc)) from exc
        except Exception as exc:
            logger.exception("pubsub %s failed to publish to %s", broker.name, topic)
            # A bug, not a broker's error: retrying would not help.
            raise NotRetried(
                PubSubErrors.publish_failed(broker.name, topic, f"{type(exc).__name__}: {exc}")
            ) from exc

    async def _dead_letter(self, route: Route, message: Message, metadata: Mapping[str, str]) -> bool:
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

    # -- observation ---------------------------------------------------------

    def add_observer(self, observer: Callable[[DeliveryReport], None]) -> Callable[[], None]:
        """Call `observer` with every delivery report; returns the function that removes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def in_flight(self) -> int:
        return sum(worker.in_flight for worker in self.workers)

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


def _dead_letter_fields(route: Route, message: Message, reason: str) -> dict[str, Any]:
    return {
        "pubsub": route.pubsub,
        "topic": route.topic,
        "dead_letter_topic": route.dead_letter_topic,
        "message_id": message.id,
        "reason": reason,
    }


def _rules_of(route: Route) -> list[tuple[str, str]]:
    rules = route.rules.rules()
    if route.rules.default is not None:
        rules.append(("", route.rules.default))
    return rules
