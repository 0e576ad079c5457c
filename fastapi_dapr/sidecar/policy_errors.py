"""The failures of an attempt run under a resiliency policy (reference 8): what the policy
itself stops (an open circuit, a timeout), and what an operation tells the runner.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


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
