"""A resiliency policy and its runner (reference 8): a timeout, a retry and a circuit breaker
around an operation.

A `Policy` runs an operation as daprd's runner does: the retry loop outermost, the
circuit breaker around each attempt, and the timeout around the attempt itself. An
open circuit fails at once and is never retried. Every wait and deadline is on an
injected `Clock`, so tests check schedules without sleeping through them. What the
timeouts give up on is owned by an `Abandoned`, which stops it at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._retry import Clock, RetryPolicy
from .breaker import CircuitBreaker
from .policy_errors import AttemptTimeout, CircuitBusy, CircuitOpen, CodeFailure, NotRetried

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

T = TypeVar("T")


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
