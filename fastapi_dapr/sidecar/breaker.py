"""Circuit breakers (reference 8.3): gobreaker's state machine, which daprd uses, and the
`circuitBreakers` policies breakers are made from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Literal

from .._retry import Clock
from .policy_errors import CircuitBusy, CircuitOpen

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


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
