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
from typing import Literal

__all__ = ["RetryPolicy"]


class Clock:
    """Real time: `asyncio.sleep` and the event loop's monotonic clock."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A retry policy, with the fields of a Resiliency `retries` policy.

    `policy="constant"` waits `duration` between attempts; `"exponential"`
    waits `initial_interval`, then `multiplier` times longer each time, at most
    `max_interval`, each wait randomised by +/- `randomization_factor` (daprd's
    fixed values: 0.5 s, 1.5 and 0.5). `max_retries` counts retries after the
    first attempt; -1 retries until `max_elapsed` (exponential) or forever.
    `http_status_codes`, when given, are the statuses worth retrying.
    """

    policy: Literal["constant", "exponential"] = "exponential"
    duration: float = 5.0
    initial_interval: float = 0.5
    multiplier: float = 1.5
    randomization_factor: float = 0.5
    max_interval: float = 60.0
    max_retries: int = -1
    max_elapsed: float | None = 900.0
    http_status_codes: frozenset[int] | None = None

    def delay(self, retry: int, elapsed: float, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None to stop."""
        if self.max_retries >= 0 and retry > self.max_retries:
            return None
        if self.policy == "constant":
            return self.duration
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return None
        interval = min(self.initial_interval * self.multiplier ** (retry - 1), self.max_interval)
        if self.randomization_factor:
            spread = self.randomization_factor * interval
            interval = (rng or random).uniform(interval - spread, interval + spread)
        return interval

    def retries_status(self, status_code: int | None) -> bool:
        """Whether a failure with this HTTP status (None: no status) is worth retrying."""
        if status_code is None or self.http_status_codes is None:
            return True
        return status_code in self.http_status_codes


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
