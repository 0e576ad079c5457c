"""How a message ends on a route: acked or nacked, dead-lettered, logged, reported and counted.

Each message is settled exactly once. One the app will not get (its DROP, retries
exhausted, expired, unmatched, not a CloudEvent) goes to the route's dead-letter
topic when it has one (reference 3.4), and is logged on `fastapi_dapr.delivery`
with structured fields either way. Every end is reported to the observers
(`DeliveryReport`) and, with metrics on, counted as daprd counts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._status import Status
from ..brokers import Delivery
from .delivery import Attempt, DeliveryReport, Outcome, Route
from .engine import Engine
from .prepared import Prepared

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

# What became of messages the app did not take (drops, dead letters, give-ups), with
# structured fields (`extra=`): a logger of its own, to route or filter them.
events = logging.getLogger("fastapi_dapr.delivery")


class Settlement:
    """Settles, reports and counts the messages of one route."""

    __slots__ = ("engine", "route")

    def __init__(self, engine: Engine, route: Route) -> None:
        self.engine = engine
        self.route = route

    def report(
        self,
        delivery: Delivery,
        event_id: str | None,
        path: str | None,
        outcome: Outcome,
        attempts: Sequence[Attempt],
        reason: str = "",
    ) -> None:
        if self.engine.metrics is not None:
            self.engine.metrics.settled(self.route.pubsub, self.route.topic, outcome)
        if not self.engine.observers:
            return  # nobody watches: no report to build
        report = DeliveryReport(
            pubsub=self.route.pubsub,
            topic=self.route.topic,
            message_id=delivery.message.id,
            event_id=event_id,
            path=path,
            outcome=outcome,
            attempts=tuple(attempts),
            reason=reason,
        )
        for observer in list(self.engine.observers):
            observer(report)

    async def hand_back(
        self,
        delivery: Delivery,
        event_id: str | None = None,
        path: str | None = None,
        attempts: Sequence[Attempt] = (),
        reason: str = "the engine stopped first",
    ) -> None:
        """The engine stops before the message is done: it goes back to the broker."""
        await delivery.nack(redeliver=True)
        self.report(delivery, event_id, path, "returned", attempts, reason)

    async def engine_failed(self, delivery: Delivery) -> None:
        """A bug of the engine's, not an answer of the app's: the message is not lost,
        it is left to the broker to give again (at least once). Called while handling it."""
        events.exception(
            "delivery failed on %s; the message is handed back",
            self.route.describe(),
            extra={
                "message_id": delivery.message.id,
                "pubsub": self.route.pubsub,
                "topic": self.route.topic,
                "outcome": "failed",
                "reason": "the engine failed",
            },
        )
        await delivery.nack(redeliver=False)
        self.report(delivery, None, None, "failed", (), "the engine failed")

    def measure(self, metrics: Metrics, attempt: Attempt, began: float) -> None:
        """One POST to the app, as daprd's postman counts it (`process_status`, `status`)."""
        if attempt.status is Status.SUCCESS:
            process_status, status = "success", ""
        elif attempt.status is Status.DROP:
            # The app's DROP is a success of the app's; a 404 is not.
            process_status, status = "drop", "drop" if attempt.http_status == 404 else "success"
        else:
            process_status, status = "retry", ""
        elapsed = (time.perf_counter() - began) * 1000
        metrics.delivered(self.route.pubsub, self.route.topic, process_status, status, elapsed)

    async def undeliverable(
        self,
        delivery: Delivery,
        prepared: Prepared | None,
        outcome: Outcome,
        reason: str,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        """A message the app will not get: dead-letter it if possible, log it, settle it."""
        event_id = prepared.event_id if prepared else None
        path = prepared.path if prepared else None
        metadata = prepared.metadata if prepared else dict(delivery.message.metadata)
        fields = self._log_fields(delivery, prepared, outcome, reason, attempts)
        topic = self.route.dead_letter_topic
        dead_lettered = bool(topic) and await self.engine.dead_letter(self.route, delivery.message, metadata)

        def log(level: int, text: str, *args: object) -> None:
            fields.update(outcome=ends, reason=reason)
            where = self.route.describe()
            events.log(level, "event %s on %s " + text, event_id or "<no id>", where, *args, extra=fields)

        ends: Outcome = outcome
        if dead_lettered:
            ends, ack = "dead-lettered", True
            log(logging.WARNING, "sent to dead-letter topic %s: %s", topic, reason)
        elif topic:
            reason += f"; and the dead-letter publish to {topic} failed"
            ends, ack = "failed", False
            log(logging.ERROR, "not settled: %s", reason)
        elif outcome == "failed":
            ack = False
            log(logging.ERROR, "given up: %s; no dead-letter topic", reason)
        else:
            ack = True
            log(logging.WARNING, "dropped: %s; no dead-letter topic", reason)
        if ack:
            await delivery.ack()
        else:
            await delivery.nack(redeliver=False)
        self._not_posted(outcome, dead_lettered)
        self.report(delivery, event_id, path, ends, attempts, reason)

    def _not_posted(self, outcome: Outcome, dead_lettered: bool) -> None:
        """A message settled without a POST, counted as daprd counts it."""
        metrics = self.engine.metrics
        if metrics is None:
            return
        if outcome == "expired":
            metrics.delivered(self.route.pubsub, self.route.topic, "drop", "", None)
        elif outcome == "unmatched":
            metrics.delivered(self.route.pubsub, self.route.topic, "drop", "success", None)
        elif outcome == "invalid":
            status = "drop" if dead_lettered else "retry"
            metrics.delivered(self.route.pubsub, self.route.topic, status, "", None)

    def _log_fields(
        self,
        delivery: Delivery,
        prepared: Prepared | None,
        outcome: Outcome,
        reason: str,
        attempts: Sequence[Attempt],
    ) -> dict[str, Any]:
        """The structured fields of a log line about one message (`extra=`)."""
        event = prepared.event if prepared is not None else {}
        traceparent = event.get("traceparent") or event.get("traceid") or ""
        return {
            "event_id": prepared.event_id if prepared is not None else None,
            "message_id": delivery.message.id,
            "pubsub": self.route.pubsub,
            "topic": self.route.topic,
            "path": prepared.path if prepared is not None else None,
            "outcome": outcome,
            "reason": reason,
            "attempts": len(attempts),
            "dead_letter_topic": self.route.dead_letter_topic,
            "traceparent": str(traceparent),
        }
