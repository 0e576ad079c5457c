"""Resiliency (reference 8): every `Resiliency` resource of the app merged, and the policy each
target gets: apps, HTTPEndpoints and URLs invoked, components in and out.

The policies themselves are `policy.py`'s, their circuit breakers `breaker.py`'s;
`resiliency_resource.py` reads the resources.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from .._exceptions import ResourceError
from .._retry import Clock, RetryPolicy
from .breaker import BreakerTemplate, CircuitBreaker, State
from .policy import NO_POLICY, Abandoned, Policy

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

BUILT_IN_SERVICE_RETRIES = "DaprBuiltInServiceRetries"
# daprd retries a call to another app whose sidecar can't be reached (connection
# refused or reset) three times, a second apart, where no policy targets that app.
_BUILT_IN_SERVICE = RetryPolicy(policy="constant", duration=1.0, max_retries=3)


@dataclasses.dataclass(frozen=True)
class PolicyNames:
    """A target's named policies, as its `targets` entry lists them."""

    timeout: str | None = None
    retry: str | None = None
    circuit_breaker: str | None = None

    def names(self) -> Iterable[tuple[str, str | None]]:
        return (("timeout", self.timeout), ("retry", self.retry), ("circuitBreaker", self.circuit_breaker))


@dataclasses.dataclass(frozen=True)
class AppTarget:
    policies: PolicyNames
    cache_size: int = 100  # circuitBreakerCacheSize: one breaker per endpoint, least recently used out


@dataclasses.dataclass(frozen=True)
class ComponentTarget:
    inbound: PolicyNames
    outbound: PolicyNames


@dataclasses.dataclass(frozen=True)
class ResiliencyResource:
    """One `Resiliency` resource, read and checked."""

    name: str
    source: str
    scopes: tuple[str, ...] = ()
    timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    retries: Mapping[str, RetryPolicy] = dataclasses.field(default_factory=dict)
    circuit_breakers: Mapping[str, BreakerTemplate] = dataclasses.field(default_factory=dict)
    apps: Mapping[str, AppTarget] = dataclasses.field(default_factory=dict)
    components: Mapping[str, ComponentTarget] = dataclasses.field(default_factory=dict)


_NO_NAMES = PolicyNames()
Direction = Literal["Inbound", "Outbound"]
_KINDS = (("timeout", "Timeout"), ("retry", "Retry"), ("circuitBreaker", "CircuitBreaker"))


class _LRU(collections.OrderedDict[str, CircuitBreaker]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = max(1, size)

    def take(self, key: str, make: Callable[[], CircuitBreaker]) -> CircuitBreaker:
        breaker = self.get(key)
        if breaker is None:
            breaker = self[key] = make()
            while len(self) > self.size:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return breaker


class Resiliency:
    """Every Resiliency resource of the app, merged, and the policy of each target.

    Later resources overwrite policies and targets of the same name, as daprd
    merges them. A target naming a policy no resource defines is an error at
    start-up (daprd ignores it, or fails on it later).
    """

    def __init__(
        self,
        resources: Iterable[ResiliencyResource] = (),
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.metrics = metrics
        self.abandoned = Abandoned()  # the attempts its timeouts gave up; `close` stops them
        self.timeouts: dict[str, float] = {}
        self.retries: dict[str, RetryPolicy] = {BUILT_IN_SERVICE_RETRIES: _BUILT_IN_SERVICE}
        self.breakers: dict[str, BreakerTemplate] = {}
        self.apps: dict[str, AppTarget] = {}
        self.components: dict[str, ComponentTarget] = {}
        self.names: list[str] = []
        sources: dict[str, str] = {}
        for resource in resources:
            self.names.append(resource.name)
            self.timeouts.update(resource.timeouts)
            for name, policy in resource.retries.items():
                if name == BUILT_IN_SERVICE_RETRIES and policy.max_retries < 3:  # -1 too, as daprd
                    logger.warning(
                        "%s: Resiliency %r: %s may not retry fewer than 3 times: 3 it is",
                        resource.source,
                        resource.name,
                        name,
                    )
                    policy = dataclasses.replace(policy, max_retries=3)
                self.retries[name] = policy
            self.breakers.update(resource.circuit_breakers)
            for app in resource.apps:
                sources[f"apps.{app}"] = f"{resource.source}: Resiliency {resource.name!r}"
            for component in resource.components:
                sources[f"components.{component}"] = f"{resource.source}: Resiliency {resource.name!r}"
            self.apps.update(resource.apps)
            self.components.update(resource.components)
        self._check(sources)
        self._app_defaults = self._defaults(("App",))
        self._component_breakers: dict[tuple[str, Direction], CircuitBreaker] = {}
        self._endpoint_breakers: dict[str, _LRU] = {}

    def _check(self, sources: Mapping[str, str]) -> None:
        tables: dict[str, Mapping[str, object]] = {
            "timeout": self.timeouts,
            "retry": self.retries,
            "circuitBreaker": self.breakers,
        }
        listed: list[tuple[str, PolicyNames]] = [(f"apps.{a}", t.policies) for a, t in self.apps.items()]
        for component, target in self.components.items():
            where = f"components.{component}"
            listed += [(where, target.inbound), (where, target.outbound)]
        for where, names in listed:
            for kind, name in names.names():
                if name is not None and name not in tables[kind]:
                    raise ResourceError(
                        f"{sources[where]}: spec.targets.{where}: {kind} {name!r} is not a policy of any "
                        "Resiliency resource"
                    )

    # -- lookups ---------------------------------------------------------------

    def _default(self, kind: str, levels: Iterable[str]) -> str | None:
        tables: dict[str, Mapping[str, object]] = {
            "timeout": self.timeouts,
            "retry": self.retries,
            "circuitBreaker": self.breakers,
        }
        table = tables[kind]
        title = dict(_KINDS)[kind]
        for level in (*levels, ""):
            name = f"Default{level}{title}Policy"
            if name in table:
                return name
        return None

    def _defaults(self, levels: tuple[str, ...]) -> PolicyNames:
        return PolicyNames(
            timeout=self._default("timeout", levels),
            retry=self._default("retry", levels),
            circuit_breaker=self._default("circuitBreaker", levels),
        )

    def _timeout(self, name: str | None) -> float | None:
        """A named timeout in seconds; 0 is no timeout, as in daprd."""
        return (self.timeouts.get(name) or None) if name else None

    @property
    def metrics_name(self) -> str:
        """daprd's `name` label of resiliency metrics: the last Resiliency resource loaded."""
        return self.names[-1] if self.names else ""

    def _reporter(self, direction: str, target: str) -> Callable[[str], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None
        name = self.metrics_name

        def report(kind: str) -> None:
            metrics.activated(name, kind, direction, target)

        return report

    def _watch(self, breaker: CircuitBreaker, direction: str, target: str) -> CircuitBreaker:
        metrics = self.metrics
        if metrics is not None:
            name = self.metrics_name

            def changed(state: State) -> None:
                metrics.activated(name, "circuitbreaker", direction, target, state)

            breaker.on_change = changed
        return breaker

    def component_defined(self, component: str) -> bool:
        return component in self.components

    def component_policy(self, component: str, direction: Direction, kind: str = "Pubsub") -> Policy:
        """The inbound (deliveries) or outbound (publishing) policy of a component."""
        target = self.components.get(component)
        if target is not None:
            names = target.inbound if direction == "Inbound" else target.outbound
        else:
            names = self._defaults((f"{kind}Component{direction}", f"Component{direction}", "Component"))
        breaker = None
        if names.circuit_breaker is not None:
            template = self.breakers[names.circuit_breaker]
            key = (component, direction)
            breaker = self._component_breakers.get(key)
            if breaker is None:
                breaker = template.create(f"{template.name}-{component}", self.clock)
                self._component_breakers[key] = self._watch(breaker, direction.lower(), f"{kind}_{component}")
        return Policy(
            f"component[{component}] {'input' if direction == 'Inbound' else 'output'}",
            self._timeout(names.timeout),
            self.retries.get(names.retry) if names.retry else None,
            breaker,
            self._reporter(direction.lower(), f"{kind}_{component}"),
            self.abandoned,
        )

    def app_defined(self, app: str) -> bool:
        return app in self.apps

    def endpoint_policy(self, app: str, endpoint: str) -> Policy:
        """The policy of an invocation of `app` (an app id, an HTTPEndpoint, a URL).

        Its circuit breaker is the one of `endpoint` (daprd's key: the app and the
        method, the HTTPEndpoint and its base URL, or the URL and the method).
        """
        target = self.apps.get(app)
        if target is not None:
            names, size = target.policies, target.cache_size
        else:
            names, size = self._app_defaults, 100
            if names == _NO_NAMES:
                return NO_POLICY  # the common case, every call: nothing to build
        breaker = None
        if names.circuit_breaker is not None:
            template = self.breakers[names.circuit_breaker]
            cache = self._endpoint_breakers.get(app)
            if cache is None:
                cache = self._endpoint_breakers[app] = _LRU(size)
            breaker = cache.take(
                endpoint,
                lambda: self._watch(template.create(endpoint, self.clock), "outbound", f"app_{app}"),
            )
        return Policy(
            f"endpoint[{app}, {endpoint}]",
            self._timeout(names.timeout),
            self.retries.get(names.retry) if names.retry else None,
            breaker,
            self._reporter("outbound", f"app_{app}"),
            self.abandoned,
        )

    @property
    def built_in_service_retries(self) -> RetryPolicy:
        return self.retries[BUILT_IN_SERVICE_RETRIES]

    async def close(self, grace: float) -> None:
        """Stop what the timeouts left running: cancelled, and awaited for `grace` seconds at most."""
        await self.abandoned.close(grace)
