"""The bulk delivery of a subscription: a batch of messages in one POST, settled entry by entry.

The worker gathers the batch (`bulkSubscribe`'s size and wait); here its
messages are prepared, grouped by the path their rules choose, and posted as
one `com.dapr.event.sent.bulk` event per path (reference 3.6). Each entry is
settled by its own status in the answer; the entries that failed are posted
again, together, on the route's retry schedule.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .._json import go_dumps
from .._status import NOTE, HandlerNote, Status
from ..brokers import Delivery
from .answers import answered, bulk_statuses, drop_reason, given_up, noted
from .asgi import AppUnreachable
from .delivery import Attempt, Route
from .engine import Engine
from .policy import Policy
from .policy_errors import CircuitBusy, CircuitOpen, PolicyError
from .prepared import Prepared, Preparer
from .retry_schedule import RetrySchedule
from .settlement import Settlement

__all__: list[str] = []

Entry = tuple[int, str, Prepared]  # the message's index in its batch, its entry id, the message


class BulkDelivery:
    """Delivers the batches of one route."""

    def __init__(
        self,
        engine: Engine,
        route: Route,
        policy: Policy,
        *,
        preparer: Preparer,
        settlement: Settlement,
        schedule: RetrySchedule,
    ) -> None:
        self.engine = engine
        self.route = route
        self.policy = policy
        self.preparer = preparer
        self.settlement = settlement
        self.schedule = schedule

    async def deliver(self, batch: list[Delivery], settled: set[int]) -> None:
        """Deliver `batch`, adding to `settled` the index of each message once it is settled
        (so that a cancellation hands back the others)."""
        by_path: dict[str, list[Entry]] = {}
        for index, delivery in enumerate(batch):
            prepared, problem, outcome = self.preparer.prepare(delivery.message)
            if problem is not None and outcome is not None:
                await self.settlement.undeliverable(delivery, prepared, outcome, problem)
                settled.add(index)  # only once settled: a cancellation before returns it
                continue
            assert prepared.path is not None
            by_path.setdefault(prepared.path, []).append((index, str(uuid.uuid4()), prepared))
        for path, entries in by_path.items():
            await self._post(path, batch, entries, settled)

    def _body(self, entries: Sequence[Entry]) -> bytes:
        items = []
        for _, entry_id, prepared in entries:
            if self.route.raw_payload:
                event: Any = prepared.event.get("data_base64", "")
                content_type = prepared.metadata.get("content-type", "application/octet-stream")
            else:
                event = prepared.event
                content_type = prepared.metadata.get("content-type", "application/cloudevents+json")
            items.append(
                {
                    "entryId": entry_id,
                    "event": event,
                    "metadata": prepared.metadata,
                    "contentType": content_type,
                }
            )
        return go_dumps(
            {
                "id": str(uuid.uuid4()),
                "type": "com.dapr.event.sent.bulk",
                "topic": self.route.topic,
                "pubsubname": self.route.pubsub,
                "metadata": {"pubsubName": self.route.pubsub},
                "entries": items,
            }
        )

    async def _post_batch(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        entry_ids: list[str],
        note: HandlerNote,
    ) -> dict[str, Attempt]:
        noting = NOTE.set(note)  # the handler's exception, for the engine's own line
        try:
            response = await self.engine.post(path, headers, body)
        finally:
            NOTE.reset(noting)
        return bulk_statuses(response, entry_ids)

    async def _post(self, path: str, batch: list[Delivery], entries: list[Entry], settled: set[int]) -> None:
        settlement = self.settlement
        history: dict[str, list[Attempt]] = {entry_id: [] for _, entry_id, _ in entries}
        policy = self.policy
        pending = entries
        started = self.engine.clock.monotonic()
        retry = 0
        traced = False  # whether a line showed the handler's traceback
        while True:
            body = self._body(pending)
            headers = self.engine.base_headers(b"application/json", body)
            headers.append((b"pubsubname", self.route.pubsub.encode()))
            entry_ids = [entry_id for _, entry_id, _ in pending]
            final = False

            note = HandlerNote()
            post = functools.partial(self._post_batch, path, headers, body, entry_ids, note)
            metrics = self.engine.metrics
            began = time.perf_counter() if metrics is not None else 0.0
            try:
                if policy.bare:
                    results = await post()
                else:
                    # The breaker counts the POST: a failure when any entry failed.
                    results = await policy.attempt(
                        post, self.engine.clock, lambda got: all(map(answered, got.values()))
                    )
            except AppUnreachable as exc:
                results = {entry_id: Attempt(None, None, str(exc)) for entry_id in entry_ids}
            except (CircuitOpen, CircuitBusy) as exc:
                final = True
                results = {entry_id: Attempt(None, None, f"{policy.name}: {exc}") for entry_id in entry_ids}
            except PolicyError as exc:
                results = {entry_id: Attempt(None, None, str(exc)) for entry_id in entry_ids}
            failed = []
            for index, entry_id, prepared in pending:
                attempt = results[entry_id]
                history[entry_id].append(attempt)
                if metrics is not None and not final:  # each entry counted, as one message
                    settlement.measure(metrics, attempt, began)
                delivery = batch[index]
                if attempt.status is Status.SUCCESS:
                    await delivery.ack()
                    settled.add(index)
                    settlement.report(delivery, prepared.event_id, path, "delivered", history[entry_id])
                elif attempt.status is Status.DROP:
                    # daprd acks a bulk 404 without dead-lettering; here it is dead-lettered
                    # like any DROP, so that nothing disappears unseen.
                    reason, _ = drop_reason(attempt, None)
                    await settlement.undeliverable(delivery, prepared, "dropped", reason, history[entry_id])
                    settled.add(index)
                else:
                    failed.append((index, entry_id, prepared))
            if not failed:
                return
            retry += 1
            statuses = (results[entry_id].http_status for _, entry_id, _ in failed)
            delay = self.schedule.delay(retry, started, statuses, final)
            error = None if traced else note.error  # the handler's traceback once per batch
            if delay is None:
                for index, entry_id, prepared in failed:
                    tried = history[entry_id]
                    settled.add(index)
                    await settlement.undeliverable(
                        batch[index], prepared, "failed", given_up(tried), tried, error=error
                    )
                    error = None
                return
            first = noted(results[failed[0][1]], note)
            if settlement.batch_failed(retry, len(failed), len(pending), first, delay, error):
                traced = traced or error is not None
            if not await self.schedule.wait(delay):
                for index, entry_id, prepared in failed:
                    await settlement.hand_back(
                        batch[index],
                        prepared.event_id,
                        path,
                        history[entry_id],
                        "the engine stopped before the next retry",
                    )
                    settled.add(index)
                return
            pending = failed
