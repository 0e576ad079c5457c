"""The delivery engine: from a broker message to the app's route, as daprd delivers (reference 3).

One `Worker` (worker.py) per subscription reads its consumer, runs a bounded
number of messages at once, and settles each one exactly once: ack after
SUCCESS, DROP or a successful dead-letter publish; nack when retries are
exhausted and there is no dead-letter topic, or when the engine stops before
it is done. `Engine`, here, is what every worker shares.

The path of a message: prepared.py makes it a POST (event, body, path,
headers); the worker posts it under the component's inbound policy (a bulk
subscription posts batches: bulk_delivery.py); answers.py reads the app's
answer; retry_schedule.py says whether and when to post again; settlement.py
acks or nacks it, dead-letters, logs, reports and counts it. delivery.py holds
the types they share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from .._retry import Clock
from ..brokers import Message
from .asgi import AppCaller, AppResponse
from .delivery import DeliveryReport, Route
from .policy import Policy

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

DeadLetter = Callable[[Route, Message, Mapping[str, str]], Awaitable[bool]]
Observer = Callable[[DeliveryReport], None]


class Engine:
    """What every worker shares: the app, the policy, the clock and the reporters."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        app_api_token: str | None,
        inbound: Callable[[str], Policy],
        clock: Clock,
        dead_letter: DeadLetter,
        observers: list[Observer],
        lifespan_state: Callable[[], Mapping[str, Any] | None],
        stopping: asyncio.Event,
        metrics: Metrics | None = None,
        discards: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.app = app
        self.call = AppCaller(app)
        self.app_api_token = app_api_token
        self.inbound = inbound  # a component's inbound policy: retries, timeout, circuit breaker
        self.clock = clock
        self.dead_letter = dead_letter
        self.observers = observers  # shared with the runtime: reports are built only if watched
        self.lifespan_state = lifespan_state
        self.stopping = stopping
        self.metrics = metrics  # None: metrics are off, and nothing is measured
        # Whether a pubsub discards what is published to a topic now (nobody subscribes to it,
        # on the in-memory component), and the dead-letter topics already warned about.
        self.discards = discards or (lambda pubsub, topic: False)
        self.discarding_warned: set[tuple[str, str]] = set()

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> AppResponse:
        return await self.call("POST", path, headers, body, state=self.lifespan_state())

    def base_headers(self, content_type: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if self.app_api_token:
            headers.append((b"dapr-api-token", self.app_api_token.encode()))
        return headers
