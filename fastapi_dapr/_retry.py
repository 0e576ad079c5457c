"""Retry policies and the clock they wait on (reference 8).

A policy answers one question: after the n-th failed attempt, how long to
wait before the next one, or stop. The clock is injected so that tests check
a schedule without sleeping through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Literal, Protocol

__all__ = ["RetryPolicy"]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """Real time: `asyncio.sleep`, the monotonic clock and the event loop's timers."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` once `seconds` have passed (a timeout's deadline)."""
        return asyncio.get_running_loop().call_later(seconds, callback)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A retry policy, with the fields of a Resiliency `retries` policy.

    `policy="constant"` waits `duration` between attempts; `"exponential"`
    waits `initial_interval`, then `multiplier` times longer each time, at most
    `max_interval`, each wait randomised by +/- `randomization_factor` (daprd's
    fixed values: 0.5 s, 1.5 and 0.5). `max_retries` counts retries after the
    first attempt; -1 retries until `max_elapsed` (exponential) or forever.
    `http_status_codes`, when given, are the statuses worth retrying, and
    `grpc_status_codes` the gRPC codes (0 to 16) of components' errors.
    """

    policy: Literal["constant", "exponential"] = "exponential"
    """`"constant"` or `"exponential"` backoff."""
    duration: float = 5.0
    """Seconds between attempts, constant policy."""
    initial_interval: float = 0.5
    """Seconds before the first retry, exponential policy."""
    multiplier: float = 1.5
    """How much longer each wait is than the one before, exponential policy."""
    randomization_factor: float = 0.5
    """Each wait is randomised by +/- this fraction of it, exponential policy."""
    max_interval: float = 60.0
    """The longest wait in seconds, exponential policy."""
    max_retries: int = -1
    """Retries after the first attempt; -1: no limit but `max_elapsed`."""
    max_elapsed: float | None = 900.0
    """Seconds after which no retry starts, exponential policy; None: no limit."""
    http_status_codes: frozenset[int] | None = None
    """The HTTP statuses worth retrying; None: every one."""
    grpc_status_codes: frozenset[int] | None = None
    """The gRPC codes (0 to 16) of components' errors worth retrying; None: every one."""

    def delay(self, retry: int, elapsed: float, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None to stop."""
        if self.max_retries >= 0 and retry > self.max_retries:
            return None
        if self.policy == "constant":
            return self.duration
        interval = min(self.initial_interval * self.multiplier ** (retry - 1), self.max_interval)
        if self.randomization_factor:
            spread = self.randomization_factor * interval
            interval = (rng or random).uniform(interval - spread, interval + spread)
        if self.max_elapsed is not None and elapsed + interval > self.max_elapsed:
            return None  # as daprd's backoff: the next try would start past the limit
        return interval

    def retries_status(self, status_code: int | None) -> bool:
        """Whether a failure with this status (None: no status) is worth retrying.

        As daprd's `matching`: 0 to 16 is a gRPC code, 100 to 599 an HTTP status,
        anything else is not retried; an unset list retries every code of its kind.
        """
        if status_code is None:
            return True
        if 0 <= status_code <= 16:
            return self.grpc_status_codes is None or status_code in self.grpc_status_codes
        if 100 <= status_code <= 599:
            return self.http_status_codes is None or status_code in self.http_status_codes
        return False


# Without a Resiliency policy daprd does not retry deliveries at all, and the
# message is gone (reference 3.4). fastapi-dapr retries by this default instead:
# exponential from 0.5 s, x1.5, at most 15 s apart, 10 retries (about a minute).
DEFAULT_DELIVERY_RETRY = RetryPolicy(
    policy="exponential",
    initial_interval=0.5,
    multiplier=1.5,
    randomization_factor=0.5,
    max_interval=15.0,
    max_retries=10,
)
