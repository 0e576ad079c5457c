"""A message in the middle of its delivery, as a worker sees it while someone watches the reports.

`fastapi_dapr.testing` reads them when a wait for a delivery report times out, to
say what is still going on: which attempt runs, or how long until the next one.
A worker keeps them only while the runtime has observers, so an app that nobody
watches pays nothing for them.
"""

from __future__ import annotations

from .._retry import Clock
from .delivery import Attempt, Route

__all__: list[str] = []


class InProgress:
    """One message on one route: its attempts so far (the worker's own list, growing as
    they end), and the delay the next one waits for, when a retry is scheduled."""

    __slots__ = ("_clock", "attempts", "message_id", "path", "retry_delay", "route", "since")

    def __init__(
        self, route: Route, message_id: str, path: str, attempts: list[Attempt], clock: Clock
    ) -> None:
        self.route = route
        self.message_id = message_id
        self.path = path
        self.attempts = attempts
        self._clock = clock
        self.retry_delay: float | None = None  # None: an attempt is running
        self.since = clock.monotonic()  # when that attempt, or that wait, began

    def waiting(self, delay: float) -> None:
        self.retry_delay, self.since = delay, self._clock.monotonic()

    def posting(self) -> None:
        self.retry_delay, self.since = None, self._clock.monotonic()

    def describe(self) -> str:
        """Two lines: the message, then what its attempts did and what it waits for now."""
        head = f"message {self.message_id} on {self.route.describe()} (to {self.path})"
        elapsed = max(0.0, self._clock.monotonic() - self.since)
        number = len(self.attempts) + 1
        if self.attempts:
            last = self.attempts[-1]
            what = last.detail or (
                last.status.name if last.status is not None else f"HTTP {last.http_status}"
            )
            count = len(self.attempts)
            failed = f"{count} attempt{'s' if count > 1 else ''} failed, the last with {what}"
        else:
            failed = "no attempt ended yet"
        if self.retry_delay is None:
            now = f"attempt {number} running for {elapsed:.1f}s"
        else:
            left = max(0.0, self.retry_delay - elapsed)
            now = f"attempt {number} in {left:.1f}s (a retry delay of {self.retry_delay:.3g}s)"
        return f"{head}:\n{failed}; {now}"
