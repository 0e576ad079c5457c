"""How a message ends on a route: acked or nacked, dead-lettered, logged, reported and counted.

Each message is settled exactly once. One the app will not get (its DROP, retries
exhausted, expired, unmatched, not a CloudEvent) goes to the route's dead-letter
topic when it has one (reference 3.4), and is logged on `fastapi_dapr.delivery`
with structured fields either way. Every end is reported to the observers
(`DeliveryReport`) and, with metrics on, counted as daprd counts it.

Each failed attempt that will be retried is a warning there too, as daprd logs each
failure: at most `LINES_PER_SECOND` a second per route, the others counted and said
in the next line (or when the route stops). A handler's traceback goes with the first
line written about its message, not with every attempt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._status import Status
from ..brokers import Delivery
from .answers import failure
from .delivery import Attempt, DeliveryReport, Outcome, Route
from .engine import Engine
from .prepared import Prepared

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

# What became of messages the app did not take (drops, dead letters, give-ups), with
# structured fields (`extra=`): a logger of its own, to route or filter them.
events = logging.getLogger("fastapi_dapr.delivery")
logger = logging.getLogger("fastapi_dapr")

LINES_PER_SECOND = 10  # failed attempts logged per route and second; the others are counted


class Throttle:
    """At most `limit` lines in each second; counts the others until they are said."""

    __slots__ = ("count", "held", "limit", "since")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.since = -math.inf
        self.count = 0
        self.held = 0  # lines not written since the last summary

    def allow(self, now: float) -> bool:
        if now - self.since >= 1.0:
            self.since, self.count = now, 0
        if self.count < self.limit:
            self.count += 1
            return True
        self.held += 1
        return False

    def take_held(self) -> int:
        held, self.held = self.held, 0
        return held


def seconds(value: float) -> str:
    """A delay as a person reads it: 0.5s, 1.12s, 15s."""
    return f"{value:.2f}".rstrip("0").rstrip(".") + "s"


class Settlement:
    """Settles, reports and counts the messages of one route, and logs its failed attempts."""

    __slots__ = ("engine", "route", "throttle")

    def __init__(self, engine: Engine, route: Route) -> None:
        self.engine = engine
        self.route = route
        self.throttle = Throttle(LINES_PER_SECOND)

    def attempt_failed(
        self,
        delivery: Delivery,
        prepared: Prepared,
        number: int,
        attempt: Attempt,
        delay: float,
        error: BaseException | None = None,
    ) -> bool:
        """Attempt `number` of a message failed and is retried in `delay` seconds: one warning,
        unless the route's throttle holds it back; whether it was written. `error`, when
        given, is written with its traceback."""
        if not self.throttle.allow(self.engine.clock.monotonic()):
            return False
        self.say_held()
        fields = self._log_fields(delivery, prepared, "retrying", failure(attempt), ())
        fields.update(attempts=number, http_status=attempt.http_status, retry_in=delay)
        events.warning(
            "event %s on %s: attempt %d failed: %s; next attempt in %s",
            prepared.event_id or "<no id>",
            self.route.describe(),
            number,
            failure(attempt),
            seconds(delay),
            exc_info=error,
            extra=fields,
        )
        return True

    def batch_failed(
        self, number: int, failed: int, of: int, attempt: Attempt, delay: float, error: BaseException | None
    ) -> bool:
        """Attempt `number` of a bulk delivery failed for `failed` of its `of` entries (`attempt`:
        the first of them), as `attempt_failed`; whether it was written."""
        if not self.throttle.allow(self.engine.clock.monotonic()):
            return False
        self.say_held()
        events.warning(
            "bulk delivery on %s: attempt %d failed for %d of %d entries: %s; next attempt in %s",
            *(self.route.describe(), number, failed, of, failure(attempt), seconds(delay)),
            extra={
                "pubsub": self.route.pubsub,
                "topic": self.route.topic,
                "outcome": "retrying",
                "reason": failure(attempt),
                "attempts": number,
                "entries": failed,
                "retry_in": delay,
            },
            exc_info=error,
        )
        return True

    def say_held(self) -> None:
        """The failed attempts the throttle held back, in one line (the worker calls it on stop)."""
        held = self.throttle.take_held()
        if held:
            events.warning(
                "... %d more failed attempts on %s not logged (at most %d lines a second per subscription)",
                held,
                self.route.describe(),
                self.throttle.limit,
                extra={"pubsub": self.route.pubsub, "topic": self.route.topic, "suppressed": held},
            )

    def report(
        self,
        delivery: Delivery,
        event_id: str | None,
        path: str | None,
        outcome: Outcome,
        attempts: Sequence[Attempt],
        reason: str = "",
        detail: str = "",
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
            detail=detail,
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
        *,
        detail: str = "",
        error: BaseException | None = None,
    ) -> None:
        """A message the app will not get: dead-letter it if possible, log it, settle it.
        `detail` says more on `reason` (validation errors); `error`, the handler's exception
        whose traceback no line has shown yet, goes with the line."""
        event_id = prepared.event_id if prepared else None
        path = prepared.path if prepared else None
        metadata = prepared.metadata if prepared else dict(delivery.message.metadata)
        fields = self._log_fields(delivery, prepared, outcome, reason, attempts)
        fields["detail"] = detail
        topic = self.route.dead_letter_topic
        dead_lettered = bool(topic) and await self.engine.dead_letter(self.route, delivery.message, metadata)
        self.say_held()

        def log(level: int, text: str, *args: object) -> None:
            fields.update(outcome=ends, reason=reason)
            where = self.route.describe()
            events.log(
                level,
                "event %s on %s " + text,
                *(event_id or "<no id>", where, *args),
                exc_info=error,
                extra=fields,
            )

        said = f"{reason}: {detail}" if detail else reason
        ends: Outcome = outcome
        if dead_lettered:
            ends, ack = "dead-lettered", True
            log(logging.WARNING, "sent to dead-letter topic %s: %s", topic, said)
            self._warn_if_discarded(str(topic))
        elif topic:
            reason += f"; and the dead-letter publish to {topic} failed"
            said = f"{said}; and the dead-letter publish to {topic} failed"
            ends, ack = "failed", False
            log(logging.ERROR, "not settled: %s", said)
        elif outcome == "failed":
            ack = False
            log(logging.ERROR, "given up: %s; no dead-letter topic", said)
        else:
            ack = True
            log(logging.WARNING, "dropped: %s; no dead-letter topic", said)
        if ack:
            await delivery.ack()
        else:
            await delivery.nack(redeliver=False)
        self._not_posted(outcome, dead_lettered)
        self.report(delivery, event_id, path, ends, attempts, reason, detail)

    def _warn_if_discarded(self, topic: str) -> None:
        """A dead letter the component discards (nothing subscribes to its topic): once a topic."""
        key = (self.route.pubsub, topic)
        if key in self.engine.discarding_warned or not self.engine.discards(*key):
            return
        self.engine.discarding_warned.add(key)
        logger.warning(
            "dead letters of topic %r go to topic %r of pubsub %r, which nothing subscribes to: the "
            "in-memory component discards them (subscribe to %r to keep them, or use a component "
            "that stores messages, such as pubsub.redis)",
            *(self.route.topic, topic, self.route.pubsub, topic),
            extra={"pubsub": self.route.pubsub, "topic": self.route.topic, "dead_letter_topic": topic},
        )

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
        outcome: str,
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
