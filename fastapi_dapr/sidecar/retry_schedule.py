"""The retry schedule of a subscription: whether and when a failed delivery is posted again.

The component's inbound retry policy gives the delay (reference 3.4); each retry
is counted as daprd counts it, and the wait before it ends early when the
engine stops, so that the message goes back to the broker instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from .delivery import Route
from .engine import Engine
from .policy import Policy

__all__: list[str] = []


class RetrySchedule:
    """The delays between the POSTs of one message (or one batch) on one route."""

    __slots__ = ("engine", "policy", "route")

    def __init__(self, engine: Engine, route: Route, policy: Policy) -> None:
        self.engine = engine
        self.route = route
        self.policy = policy

    def delay(self, retry: int, started: float, statuses: Iterable[int | None], final: bool) -> float | None:
        """The wait before retry number `retry`, None to give up.

        `started` is when the first POST began (the clock's monotonic time),
        `statuses` the HTTP statuses that failed (each must be one the policy
        retries), `final` whether the failure allows no retry (an open circuit).
        """
        retry_policy = self.policy.retry
        if retry_policy is None or final or not all(map(retry_policy.retries_status, statuses)):
            return None
        delay = retry_policy.delay(retry, self.engine.clock.monotonic() - started)
        if delay is not None:
            self.policy.activated("retry")
            metrics = self.engine.metrics
            if metrics is not None:
                metrics.retried(self.route.pubsub, self.route.topic)
        return delay

    async def wait(self, seconds: float) -> bool:
        """Wait before a retry; False if the engine is stopping meanwhile."""
        stopping = self.engine.stopping
        if stopping.is_set():
            return False
        sleeper = asyncio.ensure_future(self.engine.clock.sleep(seconds))
        stopper = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            for task in (sleeper, stopper):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return not stopping.is_set()
