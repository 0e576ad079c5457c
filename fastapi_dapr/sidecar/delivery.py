"""The delivery engine: from a broker message to the app's route, as daprd delivers (reference 3).

One `Worker` per subscription reads its consumer, runs a bounded number of
messages at once, and settles each one exactly once: ack after SUCCESS, DROP
or a successful dead-letter publish; nack when retries are exhausted and there
is no dead-letter topic, or when the engine stops before it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic_core import from_json
from starlette.types import ASGIApp

from .._go import path_clean
from .._headers import not_passed_on
from .._json import DELIVERY_DEPTH, go_dumps, loads, nests_deeper
from .._retry import Clock
from .._status import Status
from .._subscription import BulkSubscribe, is_raw
from .._trace import CURRENT, context
from ..brokers import Consumer, Delivery, Message
from .asgi import AppCaller, AppResponse, AppUnreachable
from .cel import RoutingError, Rules
from .envelope import has_expired, raw_payload_event
from .policy import Policy
from .policy_errors import CircuitBusy, CircuitOpen, PolicyError

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []  # Attempt and DeliveryReport are public in fastapi_dapr.testing

logger = logging.getLogger("fastapi_dapr")
# What became of messages the app did not take (drops, dead letters, give-ups), with
# structured fields (`extra=`): a logger of its own, to route or filter them.
events = logging.getLogger("fastapi_dapr.delivery")

ZERO_TRACEPARENT = "00-00000000000000000000000000000000-0000000000000000-00"

Outcome = Literal[
    "delivered", "dropped", "dead-lettered", "expired", "unmatched", "invalid", "failed", "returned"
]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One POST to the app: the status it meant, and why."""

    status: Status | None  # None: an error daprd retries like RETRY
    http_status: int | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """What became of one message on one subscription."""

    pubsub: str
    topic: str
    message_id: str
    event_id: str | None
    path: str | None
    outcome: Outcome
    attempts: tuple[Attempt, ...] = ()
    reason: str = ""

    @property
    def status(self) -> Status | None:
        """The status of the last attempt, if the app was called."""
        return self.attempts[-1].status if self.attempts else None


@dataclasses.dataclass(frozen=True)
class Route:
    """A subscription as the engine runs it."""

    pubsub: str
    topic: str
    rules: Rules
    dead_letter_topic: str | None
    bulk: BulkSubscribe | None
    kind: Literal["PROGRAMMATIC", "DECLARATIVE"]
    metadata: Mapping[str, str]

    @functools.cached_property
    def raw_payload(self) -> bool:
        """From the subscription's metadata, as daprd reads it (reference 3.1 step 3)."""
        return is_raw(self.metadata)

    def describe(self) -> str:
        return f"pubsub={self.pubsub!r} topic={self.topic!r}"


@functools.lru_cache(maxsize=1024)
def clean_path(path: str) -> str:
    """daprd posts to `path.Clean(path)` with a leading `/` (reference 3.2)."""
    return path_clean("/" + path)


def message_headers(metadata: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Message metadata as delivery headers (reference 3.2)."""
    headers = []
    dropped = not_passed_on(())  # metadata names no connection: only the hop-by-hop names
    for key, value in metadata.items():
        name = key.lower()
        if (
            name in ("content-type", "content-length", "traceparent", "tracestate")
            or name.endswith("-bin")
            or name in dropped
        ):
            continue
        if name.startswith("grpc-"):
            name = "dapr-" + name
        headers.append((name.encode("latin-1", errors="replace"), value.encode()))
    return headers


_KNOWN_ANSWERS = {
    (200, status.body): Attempt(status, None if status is Status.RETRY else 200) for status in Status
}
_DECODER = json.JSONDecoder()


def _loads(data: bytes) -> Any:
    """The JSON value of a message: pydantic's parser, several times faster than the
    standard one, which reads what it refuses (a lone surrogate escape, a BOM)."""
    try:
        return from_json(data)
    except ValueError:
        return loads(data, DELIVERY_DEPTH)  # another publisher's message may nest deeper


def classify(response: AppResponse) -> Attempt:
    """Read the app's answer to a single delivery as daprd does (reference 3.3)."""
    code = response.status
    if code == 404:
        return Attempt(Status.DROP, code, "404: the app has no such route")
    if not 200 <= code < 300:
        return Attempt(None, code, f"HTTP {code}")
    known = _KNOWN_ANSWERS.get((code, response.body))
    if known is not None:  # what fastapi-dapr's own handlers answer
        return known
    if not response.body.strip():
        return Attempt(Status.SUCCESS, code)
    try:
        if nests_deeper(response.body):
            raise ValueError("nested too deep")
        parsed = _DECODER.raw_decode(response.body.decode("utf-8", errors="replace").strip())[0]
    except ValueError:
        return Attempt(Status.SUCCESS, code, "the body is not JSON: read as SUCCESS")
    if parsed is None:
        return Attempt(Status.SUCCESS, code)
    if not isinstance(parsed, dict):
        return Attempt(Status.SUCCESS, code, "the body is not an object: read as SUCCESS")
    value: Any = parsed.get("status")
    if "status" not in parsed:  # Go matches field names case-insensitively
        value = next((v for k, v in parsed.items() if k.lower() == "status"), None)
    if value is None or value == "":
        return Attempt(Status.SUCCESS, code)
    if not isinstance(value, str):
        return Attempt(Status.SUCCESS, code, "status is not a string: read as SUCCESS")
    if value in ("SUCCESS", "RETRY", "DROP"):
        return Attempt(Status(value), None if value == "RETRY" else code)
    return Attempt(None, None, f"unknown status {value!r}")


def _bulk_statuses(response: AppResponse, entry_ids: Sequence[str]) -> dict[str, Attempt]:
    """Read the app's answer to a bulk delivery (reference 3.6)."""
    code = response.status
    if code == 404:
        return {e: Attempt(Status.DROP, code, "404: the app has no such route") for e in entry_ids}
    if not 200 <= code < 300:
        return {e: Attempt(None, code, f"HTTP {code}") for e in entry_ids}
    failed = {e: Attempt(None, code, "no status for this entry") for e in entry_ids}
    try:
        parsed = loads(response.body)
        items = parsed["statuses"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        # A 2xx without a readable answer fails every entry, unlike single delivery.
        return {e: Attempt(None, code, "the answer has no statuses") for e in entry_ids}
    for item in items:
        if not isinstance(item, dict):
            continue
        entry_id, status = item.get("entryId"), item.get("status")
        if entry_id in failed and status in ("SUCCESS", "DROP"):
            failed[entry_id] = Attempt(Status(status), code)
        elif entry_id in failed and status == "RETRY":
            failed[entry_id] = Attempt(Status.RETRY, None)
        elif entry_id in failed:
            failed[entry_id] = Attempt(None, None, f"unknown status {status!r}")
    return failed


def _answered(attempt: Attempt) -> bool:
    """For a circuit breaker: the app took the message (SUCCESS, or DROP: its decision)."""
    return attempt.status is Status.SUCCESS or attempt.status is Status.DROP


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

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> AppResponse:
        return await self.call("POST", path, headers, body, state=self.lifespan_state())

    def base_headers(self, content_type: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if self.app_api_token:
            headers.append((b"dapr-api-token", self.app_api_token.encode()))
        return headers

    async def wait(self, seconds: float) -> bool:
        """Wait before a retry; False if the engine is stopping meanwhile."""
        if self.stopping.is_set():
            return False
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            for task in (sleeper, stopper):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return not self.stopping.is_set()


class _Prepared:
    """A message made ready for its POST: event, body, path and headers."""

    __slots__ = ("body", "event", "event_id", "exact", "headers", "metadata", "path")

    def __init__(self) -> None:
        self.event: dict[str, Any] = {}
        # `event` is what `body` encodes (no trace attributes added), parsed for this
        # delivery alone (not the publisher's, shared with other subscriptions): the
        # handler's event may be validated from it, which does not copy what it holds.
        self.exact = True
        self.event_id: str | None = None
        self.body = b""
        self.metadata: dict[str, str] = {}
        self.path: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []


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
        self.policy = engine.inbound(route.pubsub)
        # What every message without metadata of its own carries (reference 3.1).
        self._plain_metadata: dict[str, str] = {"pubsubName": route.pubsub}
        self._pubsub_header = (b"pubsubname", route.pubsub.encode())

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
                        await delivery.nack(redeliver=True)
                        self._report(delivery, None, None, "returned", (), "the engine stopped first")
                        return
                    await self._deliver(delivery)
        except asyncio.CancelledError:
            await delivery.nack(redeliver=True)
            self._report(delivery, None, None, "returned", (), "the engine stopped first")
            raise
        except Exception:
            # A bug of the engine's, not an answer of the app's: the message is not lost,
            # it is left to the broker to give again (at least once).
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
            self._report(delivery, None, None, "failed", (), "the engine failed")

    # -- one message ---------------------------------------------------------

    def _report(
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

    def _measure(self, metrics: Metrics, attempt: Attempt, began: float) -> None:
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

    async def _settle_undeliverable(
        self,
        delivery: Delivery,
        prepared: _Prepared | None,
        outcome: Outcome,
        reason: str,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        """A message the app will not get: dead-letter it if possible, log it, settle it."""
        event_id = prepared.event_id if prepared else None
        path = prepared.path if prepared else None
        metadata = prepared.metadata if prepared else dict(delivery.message.metadata)
        fields = self._log_fields(delivery, prepared, outcome, reason, attempts)
        dead_lettered = False
        if self.route.dead_letter_topic:
            if await self.engine.dead_letter(self.route, delivery.message, metadata):
                dead_lettered = True
                fields["outcome"] = "dead-lettered"
                events.warning(
                    "event %s on %s sent to dead-letter topic %s: %s",
                    event_id or "<no id>",
                    self.route.describe(),
                    self.route.dead_letter_topic,
                    reason,
                    extra=fields,
                )
                await delivery.ack()
                self._not_posted(outcome, dead_lettered)
                self._report(delivery, event_id, path, "dead-lettered", attempts, reason)
                return
            reason += f"; and the dead-letter publish to {self.route.dead_letter_topic} failed"
            fields.update(outcome="failed", reason=reason)
            events.error(
                "event %s on %s not settled: %s",
                event_id or "<no id>",
                self.route.describe(),
                reason,
                extra=fields,
            )
            await delivery.nack(redeliver=False)
            self._not_posted(outcome, dead_lettered)
            self._report(delivery, event_id, path, "failed", attempts, reason)
            return
        if outcome == "failed":
            events.error(
                "event %s on %s given up: %s; no dead-letter topic",
                event_id or "<no id>",
                self.route.describe(),
                reason,
                extra=fields,
            )
            await delivery.nack(redeliver=False)
        else:
            events.warning(
                "event %s on %s dropped: %s; no dead-letter topic",
                event_id or "<no id>",
                self.route.describe(),
                reason,
                extra=fields,
            )
            await delivery.ack()
        self._not_posted(outcome, dead_lettered)
        self._report(delivery, event_id, path, outcome, attempts, reason)

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
        prepared: _Prepared | None,
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

    def _prepare(self, message: Message) -> tuple[_Prepared, str | None, Outcome | None]:
        """Build the event, route it; on failure, the outcome and why."""
        prepared = _Prepared()
        if message.metadata:
            metadata = dict(message.metadata)
            metadata["pubsubName"] = self.route.pubsub
        else:
            metadata = self._plain_metadata  # shared, read only
        prepared.metadata = metadata
        if self.route.raw_payload:
            event = raw_payload_event(message.data, self.route.topic, self.route.pubsub)
            for key in ("traceid", "traceparent", "tracestate"):
                if metadata.get(key):
                    event[key] = metadata[key]
            if metadata.get("traceparent"):
                event["traceid"] = metadata["traceparent"]
            prepared.body = go_dumps(event)
        else:
            if message.decoded is not None:
                event = message.decoded  # type: ignore[assignment]  # read-only from here on
                prepared.exact = False  # shared: the handler gets its own, from the bytes
            else:
                try:
                    event = _loads(message.data)
                    if not isinstance(event, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    return prepared, f"the message is not a JSON CloudEvent ({exc})", "invalid"
            missing = (
                [k for k in ("traceid", "traceparent", "tracestate") if k not in event and k in metadata]
                if metadata is not self._plain_metadata  # that one carries no trace
                else None
            )
            if missing:
                event = {**event, **{key: metadata[key] for key in missing}}
                prepared.exact = False
            prepared.body = message.data
        prepared.event = event
        event_id = event.get("id")
        prepared.event_id = str(event_id) if event_id is not None else None
        if has_expired(event):
            return prepared, f"expired at {event.get('expiration')}", "expired"
        try:
            path = self.route.rules.route(event)
        except RoutingError as exc:
            return prepared, f"routing failed: {exc}", "invalid"
        if path is None:
            return prepared, "no routing rule matches and there is no default route", "unmatched"
        prepared.path = clean_path(path)
        return prepared, None, None

    def _headers(self, prepared: _Prepared) -> list[tuple[bytes, bytes]]:
        """The headers of the POST to the app (reference 3.2)."""
        event = prepared.event
        headers = self.engine.base_headers(b"application/cloudevents+json", prepared.body)
        if prepared.metadata is self._plain_metadata:
            headers.append(self._pubsub_header)
        else:
            headers.extend(message_headers(prepared.metadata))
        traceparent = event.get("traceparent") or event.get("traceid") or ZERO_TRACEPARENT
        headers.append((b"traceparent", str(traceparent).encode()))
        if event.get("tracestate"):
            headers.append((b"tracestate", str(event["tracestate"]).encode()))
        return headers

    async def _deliver(self, delivery: Delivery) -> None:
        prepared, problem, outcome = self._prepare(delivery.message)
        if problem is not None and outcome is not None:
            await self._settle_undeliverable(delivery, prepared, outcome, problem)
            return
        assert prepared.path is not None
        # A handler that reads nothing but the event is called without HTTP around it.
        direct = self.engine.call.handler(prepared.path)
        headers = self._headers(prepared) if direct is None else []
        attempts: list[Attempt] = []
        started = self.engine.clock.monotonic()
        # The parsed event, for the first attempt only: a handler may change what it got.
        decoded = prepared.event if prepared.exact else None
        policy = self.policy
        path = prepared.path
        event = prepared.event
        parent = event.get("traceparent") or event.get("traceid")
        trace = context(str(parent), str(event.get("tracestate") or "")) if parent else None

        async def post() -> Attempt:
            nonlocal decoded
            # The handler's own publishes and invocations carry the message's trace on.
            token = CURRENT.set(trace) if trace is not None else None
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
                        headers=lambda: self._headers(prepared),
                        state=self.engine.lifespan_state(),
                    )
            finally:
                if token is not None:
                    CURRENT.reset(token)
            return classify(response)

        metrics = self.engine.metrics
        timed_out = False
        while True:
            final = False
            began = time.perf_counter() if metrics is not None else 0.0
            try:
                if policy.bare:
                    attempt = await post()
                else:
                    attempt = await policy.attempt(post, self.engine.clock, _answered)
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
                self._measure(metrics, attempt, began)
            if attempt.status is Status.SUCCESS:
                await delivery.ack()
                self._report(delivery, prepared.event_id, prepared.path, "delivered", attempts)
                return
            if attempt.status is Status.DROP:
                await self._settle_undeliverable(
                    delivery,
                    prepared,
                    "dropped",
                    f"the app answered DROP ({attempt.detail or 'DROP'})",
                    attempts,
                )
                return
            retry = policy.retry
            delay = (
                retry.delay(len(attempts), self.engine.clock.monotonic() - started)
                if retry is not None and not final and retry.retries_status(attempt.http_status)
                else None
            )
            if delay is None:
                reason = f"{len(attempts)} attempts failed, the last with {attempt.detail or 'RETRY'}"
                await self._settle_undeliverable(delivery, prepared, "failed", reason, attempts)
                return
            policy.activated("retry")
            if metrics is not None:
                metrics.retried(self.route.pubsub, self.route.topic)
            if not await self.engine.wait(delay):
                await delivery.nack(redeliver=True)
                self._report(
                    delivery,
                    prepared.event_id,
                    prepared.path,
                    "returned",
                    attempts,
                    "the engine stopped before the next retry",
                )
                return

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
                    await delivery.nack(redeliver=True)
                    self._report(delivery, None, None, "returned", (), "the engine stopped first")
                raise
            self._spawn(self._guarded_bulk(batch))

    async def _guarded_bulk(self, batch: list[Delivery]) -> None:
        settled: set[int] = set()
        try:
            if self._limit is None:
                await self._deliver_bulk(batch, settled)
            else:
                async with self._limit:
                    await self._deliver_bulk(batch, settled)
        except asyncio.CancelledError:
            for index, delivery in enumerate(batch):
                if index not in settled:
                    await delivery.nack(redeliver=True)
                    self._report(delivery, None, None, "returned", (), "the engine stopped first")
            raise

    async def _deliver_bulk(self, batch: list[Delivery], settled: set[int]) -> None:
        by_path: dict[str, list[tuple[int, str, _Prepared]]] = {}
        for index, delivery in enumerate(batch):
            prepared, problem, outcome = self._prepare(delivery.message)
            if problem is not None and outcome is not None:
                await self._settle_undeliverable(delivery, prepared, outcome, problem)
                settled.add(index)  # only once settled: a cancellation before returns it
                continue
            assert prepared.path is not None
            by_path.setdefault(prepared.path, []).append((index, str(uuid.uuid4()), prepared))
        for path, entries in by_path.items():
            await self._post_bulk(path, batch, entries, settled)

    def _bulk_body(self, entries: Sequence[tuple[int, str, _Prepared]]) -> bytes:
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
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, entry_ids: list[str]
    ) -> dict[str, Attempt]:
        response = await self.engine.post(path, headers, body)
        return _bulk_statuses(response, entry_ids)

    async def _post_bulk(
        self,
        path: str,
        batch: list[Delivery],
        entries: list[tuple[int, str, _Prepared]],
        settled: set[int],
    ) -> None:
        history: dict[str, list[Attempt]] = {entry_id: [] for _, entry_id, _ in entries}
        policy = self.policy
        pending = entries
        started = self.engine.clock.monotonic()
        retry = 0
        while True:
            body = self._bulk_body(pending)
            headers = self.engine.base_headers(b"application/json", body)
            headers.append((b"pubsubname", self.route.pubsub.encode()))
            entry_ids = [entry_id for _, entry_id, _ in pending]
            final = False

            post = functools.partial(self._post_batch, path, headers, body, entry_ids)
            metrics = self.engine.metrics
            began = time.perf_counter() if metrics is not None else 0.0
            try:
                if policy.bare:
                    results = await post()
                else:
                    # The breaker counts the POST: a failure when any entry failed.
                    results = await policy.attempt(
                        post, self.engine.clock, lambda got: all(map(_answered, got.values()))
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
                    self._measure(metrics, attempt, began)
                delivery = batch[index]
                if attempt.status is Status.SUCCESS:
                    await delivery.ack()
                    settled.add(index)
                    self._report(delivery, prepared.event_id, path, "delivered", history[entry_id])
                elif attempt.status is Status.DROP:
                    # daprd acks a bulk 404 without dead-lettering; here it is dead-lettered
                    # like any DROP, so that nothing disappears unseen.
                    await self._settle_undeliverable(
                        delivery,
                        prepared,
                        "dropped",
                        f"the app answered DROP ({attempt.detail or 'DROP'})",
                        history[entry_id],
                    )
                    settled.add(index)
                else:
                    failed.append((index, entry_id, prepared))
            if not failed:
                return
            retry += 1
            policy_retry = policy.retry
            worth = (
                policy_retry is not None
                and not final
                and all(policy_retry.retries_status(results[e].http_status) for _, e, _ in failed)
            )
            delay = (
                policy_retry.delay(retry, self.engine.clock.monotonic() - started)
                if policy_retry is not None and worth
                else None
            )
            if delay is not None:
                policy.activated("retry")
                if metrics is not None:
                    metrics.retried(self.route.pubsub, self.route.topic)
            if delay is None:
                for index, entry_id, prepared in failed:
                    last = history[entry_id][-1]
                    reason = (
                        f"{len(history[entry_id])} attempts failed, the last with {last.detail or 'RETRY'}"
                    )
                    settled.add(index)
                    await self._settle_undeliverable(
                        batch[index], prepared, "failed", reason, history[entry_id]
                    )
                return
            if not await self.engine.wait(delay):
                for index, entry_id, prepared in failed:
                    await batch[index].nack(redeliver=True)
                    settled.add(index)
                    self._report(
                        batch[index],
                        prepared.event_id,
                        path,
                        "returned",
                        history[entry_id],
                        "the engine stopped before the next retry",
                    )
                return
            pending = failed
