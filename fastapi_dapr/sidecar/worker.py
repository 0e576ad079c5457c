"""The worker of one subscription: it reads the consumer and delivers each message to the app.

A plain subscription has `concurrency` runners, each taking one message at a
time and posting it (retried on the route's schedule) until it is settled; a
bulk subscription has one reader that gathers batches, delivered each by a
task of its own (bulk_delivery.py). On a stop, what is in flight has a grace
period to finish, and what is not done goes back to the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from .._status import NOTE, HandlerNote, Status
from .._trace import CURRENT, context
from ..brokers import Broker, Consumer, Delivery
from .answers import answered, classify, drop_reason, given_up, noted
from .asgi import AppUnreachable
from .bulk_delivery import BulkDelivery
from .delivery import Attempt, Route
from .engine import Engine
from .policy_errors import CircuitBusy, CircuitOpen, PolicyError
from .prepared import Preparer
from .progress import InProgress
from .retry_schedule import RetrySchedule
from .settlement import Settlement

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


def runners(limit: int, broker: Broker, consumer: Consumer) -> int:
    """The runners of a subscription: the engine's `limit`, or less if its component or its
    consumer hands out fewer messages at once."""
    return min(limit, broker.concurrency or limit, consumer.concurrency or limit)


class Worker:
    """Consumes one subscription and delivers its messages.

    A plain subscription has `concurrency` runners, each taking one message
    at a time from the consumer (so at most that many are in flight); a bulk
    subscription has one reader that gathers batches and a task per batch.
    `limit`, when given, is shared by the workers of one component: a message
    (or a batch) is handled only while holding it (daprd's `concurrency`
    workers per component).
    """

    def __init__(
        self,
        engine: Engine,
        route: Route,
        consumer: Consumer,
        concurrency: int,
        limit: asyncio.Semaphore | None = None,
    ) -> None:
        self.engine = engine
        self.route = route
        self.consumer = consumer
        self.concurrency = max(1, concurrency)
        self._limit = limit
        self._readers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()  # runners in the middle of a message
        self._tasks: set[asyncio.Task[None]] = set()  # bulk batches
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        # The messages being delivered, while the runtime has observers (fastapi_dapr.testing).
        self.progress: dict[Delivery, InProgress] = {}
        self.policy = engine.inbound(route.pubsub)
        self.preparer = Preparer(engine, route)
        self.settlement = Settlement(engine, route)
        self.schedule = RetrySchedule(engine, route, self.policy)
        self.bulk = BulkDelivery(
            engine,
            route,
            self.policy,
            preparer=self.preparer,
            settlement=self.settlement,
            schedule=self.schedule,
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        name = f"fastapi-dapr {self.route.describe()}"
        if self.route.bulk is not None:
            self._readers = [asyncio.create_task(self._read_bulk(), name=name)]
        else:
            self._readers = [asyncio.create_task(self._run(), name=name) for _ in range(self.concurrency)]

    async def stop(self, grace: float) -> None:
        """Stop taking messages; let in-flight ones finish for `grace` seconds, then return them."""
        self._closing = True
        for reader in self._readers:
            if reader not in self._busy:
                reader.cancel()  # waiting for a message: nothing to finish
        working = [reader for reader in self._readers if reader in self._busy] + list(self._tasks)
        if working:
            _, pending = await asyncio.wait(working, timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._readers, *self._tasks, return_exceptions=True)
        self.settlement.say_held()
        await self.consumer.close()

    @property
    def in_flight(self) -> int:
        return len(self._busy) + len(self._tasks)

    async def _run(self) -> None:
        runner = asyncio.current_task()
        assert runner is not None
        while not self._closing:
            (delivery,) = await self.consumer.receive(1)
            self._busy.add(runner)
            try:
                await self._guarded(delivery)
            except Exception:
                logger.exception("delivery failed on %s", self.route.describe())
            finally:
                self._busy.discard(runner)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        if len(self._tasks) >= self.concurrency:
            self._room.clear()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery task failed on %s", self.route.describe(), exc_info=task.exception())

    async def _guarded(self, delivery: Delivery) -> None:
        try:
            if self._limit is None:
                await self._deliver(delivery)
            else:
                async with self._limit:
                    if self._closing:  # stopped while waiting for a turn: hand it back
                        await self.settlement.hand_back(delivery)
                        return
                    await self._deliver(delivery)
        except asyncio.CancelledError:
            await self.settlement.hand_back(delivery)
            raise
        except Exception:
            await self.settlement.engine_failed(delivery)
        finally:
            self.progress.pop(delivery, None)

    # -- bulk ------------------------------------------------------------------

    async def _read_bulk(self) -> None:
        assert self.route.bulk is not None
        size = self.route.bulk.max_messages_count
        wait = self.route.bulk.max_await_duration_ms / 1000
        loop = asyncio.get_running_loop()
        while not self._closing:
            while len(self._tasks) >= self.concurrency:
                await self._room.wait()
            batch = list(await self.consumer.receive(size))
            deadline = loop.time() + wait
            try:
                while len(batch) < size and not self._closing:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        more = await asyncio.wait_for(self.consumer.receive(size - len(batch)), remaining)
                    except asyncio.TimeoutError:
                        break
                    batch.extend(more)
                if self._closing:
                    # wait_for may swallow a cancellation whose receive had just
                    # finished (Python < 3.12): return the batch all the same.
                    raise asyncio.CancelledError
            except asyncio.CancelledError:
                # Stopped while gathering: what was taken goes back, as for in-flight messages.
                for delivery in batch:
                    await self.settlement.hand_back(delivery)
                raise
            self._spawn(self._guarded_bulk(batch))

    async def _guarded_bulk(self, batch: list[Delivery]) -> None:
        settled: set[int] = set()
        try:
            if self._limit is None:
                await self.bulk.deliver(batch, settled)
            else:
                async with self._limit:
                    await self.bulk.deliver(batch, settled)
        except asyncio.CancelledError:
            for index, delivery in enumerate(batch):
                if index not in settled:
                    await self.settlement.hand_back(delivery)
            raise

    # -- one message ---------------------------------------------------------

    async def _deliver(self, delivery: Delivery) -> None:
        settlement = self.settlement
        prepared, problem, outcome = self.preparer.prepare(delivery.message)
        if problem is not None and outcome is not None:
            await settlement.undeliverable(delivery, prepared, outcome, problem)
            return
        assert prepared.path is not None
        # A handler that reads nothing but the event is called without HTTP around it.
        direct = self.engine.call.handler(prepared.path)
        headers = self.preparer.headers(prepared) if direct is None else []
        attempts: list[Attempt] = []
        started = self.engine.clock.monotonic()
        # The parsed event, for the first attempt only: a handler may change what it got.
        decoded = prepared.event if prepared.exact else None
        policy = self.policy
        path = prepared.path
        event = prepared.event
        parent = event.get("traceparent") or event.get("traceid")
        trace = context(str(parent), str(event.get("tracestate") or "")) if parent else None
        watched: InProgress | None = None
        if self.engine.observers:
            watched = InProgress(self.route, delivery.message.id, path, attempts, self.engine.clock)
            self.progress[delivery] = watched

        note = HandlerNote()  # the last attempt's: what its handler noted
        traced = False  # whether a line showed the handler's traceback

        async def post() -> Attempt:
            nonlocal decoded, note
            # The handler's own publishes and invocations carry the message's trace on.
            token = CURRENT.set(trace) if trace is not None else None
            note = HandlerNote()
            noting = NOTE.set(note)
            try:
                if direct is None:
                    response = await self.engine.post(path, headers, prepared.body)
                else:
                    given, decoded = decoded, None
                    response = await self.engine.call.deliver(
                        direct,
                        path,
                        prepared.body,
                        given,
                        headers=lambda: self.preparer.headers(prepared),
                        state=self.engine.lifespan_state(),
                    )
            finally:
                NOTE.reset(noting)
                if token is not None:
                    CURRENT.reset(token)
            return noted(classify(response), note)

        metrics = self.engine.metrics
        timed_out = False
        while True:
            final = False
            began = time.perf_counter() if metrics is not None else 0.0
            try:
                if policy.bare:
                    attempt = await post()
                else:
                    attempt = await policy.attempt(post, self.engine.clock, answered)
            except AppUnreachable as exc:
                attempt = Attempt(None, None, str(exc))
            except (CircuitOpen, CircuitBusy) as exc:
                attempt, final = Attempt(None, None, f"{policy.name}: {exc}"), True
            except PolicyError as exc:  # the attempt's timeout: the handler was cancelled
                attempt = Attempt(None, None, str(exc))
                if not timed_out:
                    timed_out = True
                    policy.activated("timeout")
            attempts.append(attempt)
            if metrics is not None and not final:  # an open circuit posts nothing
                settlement.measure(metrics, attempt, began)
            if attempt.status is Status.SUCCESS:
                await delivery.ack()
                settlement.report(delivery, prepared.event_id, path, "delivered", attempts)
                return
            if attempt.status is Status.DROP:
                reason, detail = drop_reason(attempt, note)
                await settlement.undeliverable(delivery, prepared, "dropped", reason, attempts, detail=detail)
                return
            error = None if traced else note.error  # its traceback once per message
            delay = self.schedule.delay(len(attempts), started, (attempt.http_status,), final)
            if delay is None:
                await settlement.undeliverable(
                    delivery, prepared, "failed", given_up(attempts), attempts, error=error
                )
                return
            if settlement.attempt_failed(delivery, prepared, len(attempts), attempt, delay, error):
                traced = traced or error is not None
            if watched is not None:
                watched.waiting(delay)
            if not await self.schedule.wait(delay):
                await settlement.hand_back(
                    delivery, prepared.event_id, path, attempts, "the engine stopped before the next retry"
                )
                return
            if watched is not None:
                watched.posting()
