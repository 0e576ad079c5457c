"""Resiliency policies (reference 8): timeouts, retries and circuit breakers, and the
policy each target gets.

A `Policy` runs an operation as daprd's runner does: the retry loop outermost, the
circuit breaker around each attempt, and the timeout around the attempt itself. An
open circuit fails at once and is never retried. Every wait and deadline is on an
injected `Clock`, so tests check schedules without sleeping through them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .._exceptions import ResourceError
from .._retry import Clock, RetryPolicy

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

T = TypeVar("T")

BUILT_IN_SERVICE_RETRIES = "DaprBuiltInServiceRetries"
# daprd retries a call to another app whose sidecar can't be reached (connection
# refused or reset) three times, a second apart, where no policy targets that app.
_BUILT_IN_SERVICE = RetryPolicy(policy="constant", duration=1.0, max_retries=3)


class PolicyError(Exception):
    """An attempt stopped by the policy itself: an open circuit or a timeout."""


class CircuitOpen(PolicyError):
    def __init__(self) -> None:
        super().__init__("circuit breaker is open")  # gobreaker's words, as daprd reports them


class CircuitBusy(PolicyError):
    def __init__(self) -> None:
        super().__init__("too many requests")  # half-open, and its trial requests are taken


class AttemptTimeout(PolicyError):
    def __init__(self, seconds: float) -> None:
        super().__init__("context deadline exceeded")  # daprd's words (Go's context error)
        self.seconds = seconds


class CodeFailure(Exception):
    """An attempt that failed with a status (an HTTP status, or a gRPC code 0 to 16).

    The retry's `matching` decides whether it is retried; `result` is what the
    attempt gave (for an invocation, the answer the caller gets if it is the last).
    """

    def __init__(self, status: int, detail: str, result: Any = None) -> None:
        super().__init__(detail)
        self.status = status
        self.result = result


class NotRetried(Exception):
    """Raised by an operation for a failure no retry can help; the runner raises `error`.

    `counts=False` for a refusal made here, before the target was reached (a URL the
    rules refuse, a body over the limit): it says nothing of the target's health, so the
    circuit breaker does not count it.
    """

    def __init__(self, error: BaseException, *, counts: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.counts = counts


# -- circuit breakers ----------------------------------------------------------


@dataclasses.dataclass
class Counts:
    """What a circuit breaker counts in its current generation (gobreaker's `Counts`)."""

    requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0


Trip = Callable[[Counts], bool]
_TRIP_VARIABLES = (
    "requests",
    "totalSuccesses",
    "totalFailures",
    "consecutiveSuccesses",
    "consecutiveFailures",
)


def default_trip(counts: Counts) -> bool:
    return counts.consecutive_failures > 5


def compile_trip(expression: str) -> Trip:
    """A `trip` CEL expression over the counts; `ValueError` if it does not compile.

    As in daprd, an expression that fails to evaluate, or does not give a boolean,
    does not trip the breaker.
    """
    import celpy
    from celpy import celtypes

    environment = celpy.Environment()
    try:
        program = environment.program(environment.compile(expression))
    except Exception as exc:  # celpy's parse errors have no common base
        raise ValueError(f"the CEL expression {expression!r} does not compile: {exc}") from None

    def trip(counts: Counts) -> bool:
        values = (
            counts.requests,
            counts.total_successes,
            counts.total_failures,
            counts.consecutive_successes,
            counts.consecutive_failures,
        )
        activation = {
            name: celtypes.IntType(value) for name, value in zip(_TRIP_VARIABLES, values, strict=True)
        }
        try:
            result = program.evaluate(activation)
        except Exception:
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)

    return trip


@dataclasses.dataclass(frozen=True)
class BreakerTemplate:
    """A `circuitBreakers` policy: what each of its breakers starts from."""

    name: str
    max_requests: int = 1
    interval: float = 0.0
    timeout: float = 60.0
    trip: Trip = default_trip
    trip_text: str = "consecutiveFailures > 5"

    def create(self, name: str, clock: Clock) -> CircuitBreaker:
        return CircuitBreaker(
            name,
            max_requests=self.max_requests,
            interval=self.interval,
            timeout=self.timeout,
            trip=self.trip,
            clock=clock,
        )


State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """gobreaker's state machine, which daprd uses.

    Closed: requests pass, and a failure that makes `trip` true opens the
    circuit; with an `interval`, the counts start again every interval. Open:
    every request fails at once, until `timeout` has passed. Half-open: up to
    `max_requests` trial requests pass; that many successes in a row close the
    circuit, one failure opens it again.
    """

    def __init__(
        self,
        name: str,
        *,
        max_requests: int = 1,
        interval: float = 0.0,
        timeout: float = 60.0,
        trip: Trip = default_trip,
        clock: Clock,
    ) -> None:
        self.name = name
        self.max_requests = max_requests if max_requests > 0 else 1
        self.interval = interval
        self.timeout = timeout if timeout > 0 else 60.0
        self._trip = trip
        self._clock = clock
        self._state: State = "closed"
        self.on_change: Callable[[State], None] | None = None  # metrics: the new state
        self._generation = 0
        self._expiry: float | None = None
        self.counts = Counts()
        self._new_generation(clock.monotonic())

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"

    @property
    def state(self) -> State:
        return self._current(self._clock.monotonic())[0]

    def before(self) -> int:
        """Admit one request, or raise `CircuitOpen` / `CircuitBusy`; its generation."""
        state, generation = self._current(self._clock.monotonic())
        if state == "open":
            raise CircuitOpen
        if state == "half-open" and self.counts.requests >= self.max_requests:
            raise CircuitBusy
        self.counts.requests += 1
        return generation

    def after(self, generation: int, success: bool) -> None:
        """Count the outcome of a request admitted in `generation` (ignored if it is over)."""
        now = self._clock.monotonic()
        state, current = self._current(now)
        if current != generation:
            return
        counts = self.counts
        if success:
            counts.total_successes += 1
            counts.consecutive_successes += 1
            counts.consecutive_failures = 0
            if state == "half-open" and counts.consecutive_successes >= self.max_requests:
                self._set("closed", now)
            return
        counts.total_failures += 1
        counts.consecutive_failures += 1
        counts.consecutive_successes = 0
        if state == "half-open" or (state == "closed" and self._trip(counts)):
            self._set("open", now)

    def _current(self, now: float) -> tuple[State, int]:
        if self._state == "closed":
            if self._expiry is not None and self._expiry < now:
                self._new_generation(now)
        elif self._state == "open":
            assert self._expiry is not None
            if self._expiry < now:  # gobreaker: once the timeout is strictly over
                self._set("half-open", now)
        return self._state, self._generation

    def _set(self, state: State, now: float) -> None:
        if state == self._state:
            return
        before, self._state = self._state, state
        self._new_generation(now)
        logger.info("circuit breaker %r changed state from %s to %s", self.name, before, state)
        if self.on_change is not None:
            self.on_change(state)

    def _new_generation(self, now: float) -> None:
        self._generation += 1
        self.counts = Counts()
        if self._state == "closed":
            self._expiry = now + self.interval if self.interval > 0 else None
        elif self._state == "open":
            self._expiry = now + self.timeout
        else:
            self._expiry = None


# -- running an operation under a policy ------------------------------------------


class Abandoned:
    """The attempts given up at their deadline that have not stopped yet, and their owner.

    `with_timeout` cancels an attempt at its deadline and answers at once; an attempt
    that goes on (a cleanup that awaits, a library that ignores the cancellation) is
    kept here: its error retrieved and an answer it gives closed when it ends, and
    cancelled again and awaited by `close` when the runtime stops, so none outlives it.
    """

    def __init__(self) -> None:
        self._attempts: set[asyncio.Future[Any]] = set()
        self._closings: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._attempts) + len(self._closings)

    def adopt(self, attempt: asyncio.Future[Any]) -> None:
        self._attempts.add(attempt)
        attempt.add_done_callback(self._ended)

    def _ended(self, attempt: asyncio.Future[Any]) -> None:
        self._attempts.discard(attempt)
        if attempt.cancelled():
            return
        error = attempt.exception()
        if error is not None:
            logger.debug("an attempt abandoned at its deadline failed afterwards: %r", error)
            return
        self.close_answer(attempt.result())

    def close_answer(self, answer: Any) -> None:
        """Close an answer no one will read (an invocation's holds a connection), owned
        here until it is closed."""
        close = getattr(answer, "aclose", None)
        if close is not None:
            closing = asyncio.ensure_future(close())
            self._closings.add(closing)
            closing.add_done_callback(self._closed)

    def _closed(self, closing: asyncio.Future[Any]) -> None:
        self._closings.discard(closing)
        if not closing.cancelled() and closing.exception() is not None:
            logger.debug("the answer of an abandoned attempt did not close: %r", closing.exception())

    async def close(self, grace: float) -> None:
        """Cancel the attempts still running, and wait `grace` seconds at most for them
        (and for the answers being closed) to end; one that will not is logged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        cancelled: set[asyncio.Future[Any]] = set()
        while self._attempts or self._closings:
            for attempt in self._attempts - cancelled:
                attempt.cancel()
                cancelled.add(attempt)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(self._attempts | self._closings, timeout=remaining)
        if self:
            logger.warning(
                "%d attempt(s) given up at their deadline did not stop within %gs of the shutdown",
                len(self),
                grace,
            )


async def with_timeout(
    operation: Callable[[], Awaitable[T]], seconds: float, clock: Clock, abandoned: Abandoned
) -> T:
    """Run `operation`; at `seconds` on `clock` cancel it and raise `AttemptTimeout` at once.

    As daprd's runner: the deadline answers the caller whether or not the operation
    stops when cancelled; one that goes on is given to `abandoned`, which sees it end.
    A cancellation of the caller cancels the operation and is raised, on every Python
    version.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(operation())
    deadline: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def expire() -> None:
        if not deadline.done():
            deadline.set_result(None)

    timer = clock.call_later(seconds, expire)
    try:
        waiting: set[asyncio.Future[Any]] = {task, deadline}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        abandoned.adopt(task)
        raise
    finally:
        timer.cancel()
        deadline.cancel()
    if task.done():
        return task.result()
    task.cancel()
    abandoned.adopt(task)
    raise AttemptTimeout(seconds)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What applies to one target: a timeout per attempt, a retry policy, a circuit breaker."""

    name: str
    timeout: float | None = None
    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None
    # Metrics: called with the kind of policy ("retry", "timeout") when one activates.
    report: Callable[[str], None] | None = dataclasses.field(default=None, compare=False)
    # Where the attempts the timeout gives up go: their owner stops them at shutdown.
    abandoned: Abandoned | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and self.abandoned is None:
            raise ValueError(f"{self.name}: a policy with a timeout needs an owner for what it abandons")

    def activated(self, kind: str) -> None:
        if self.report is not None:
            self.report(kind)

    @property
    def is_empty(self) -> bool:
        return self.timeout is None and self.retry is None and self.breaker is None

    @property
    def bare(self) -> bool:
        """Whether an attempt runs as it is: no timeout and no circuit breaker around it."""
        return self.timeout is None and self.breaker is None

    async def attempt(
        self,
        operation: Callable[[], Awaitable[T]],
        clock: Clock,
        succeeded: Callable[[T], bool] | None = None,
    ) -> T:
        """One attempt: through the circuit breaker, under the timeout.

        A result counts as a failure for the breaker when `succeeded` says so; an
        exception always does (a cancellation too), except a refusal made here.
        """
        breaker = self.breaker
        generation = breaker.before() if breaker is not None else 0
        try:
            if self.timeout is None:
                result = await operation()
            else:
                assert self.abandoned is not None  # __post_init__
                result = await with_timeout(operation, self.timeout, clock, self.abandoned)
        except NotRetried as exc:
            if breaker is not None:
                breaker.after(generation, success=not exc.counts)
            raise
        except BaseException:
            # A cancellation too (the caller gave up, a shutdown): as daprd counts a
            # cancelled context; uncounted, a half-open trial would hold its place for ever.
            if breaker is not None:
                breaker.after(generation, False)
            raise
        if breaker is not None:
            breaker.after(generation, succeeded(result) if succeeded is not None else True)
        return result

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        clock: Clock,
        *,
        succeeded: Callable[[T], bool] | None = None,
        retries: bool = True,
    ) -> T:
        """Run `operation` with every part of the policy; the last failure is raised.

        The operation raises `CodeFailure` for a failed answer (retried when the
        retry's `matching` allows its status), `NotRetried` for a failure that is
        final, and any other exception for an error, which is retried (as daprd
        retries every error that carries no code). `succeeded` tells the circuit
        breaker whether a result returned is a success (by default it is);
        `retries=False` makes a single attempt.
        """
        retry = self.retry if retries else None
        started = clock.monotonic()
        attempts = 0
        timed_out = False
        while True:
            attempts += 1
            try:
                return await self.attempt(operation, clock, succeeded)
            except NotRetried as exc:
                raise exc.error from None
            except (CircuitOpen, CircuitBusy):
                raise
            except CodeFailure as exc:
                if retry is None or not retry.retries_status(exc.status):
                    raise
                last: Exception = exc
            except Exception as exc:
                if isinstance(exc, AttemptTimeout) and not timed_out:
                    timed_out = True  # as daprd counts it: once per operation
                    self.activated("timeout")
                if retry is None:
                    raise
                last = exc
            delay = retry.delay(attempts, clock.monotonic() - started)
            if delay is None:
                raise last
            self.activated("retry")
            logger.warning("%s: attempt %d failed (%s); retrying in %.3gs", self.name, attempts, last, delay)
            await clock.sleep(delay)


NO_POLICY = Policy("no policy")


# -- the Resiliency resources, merged ---------------------------------------------


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
