"""The core `DaprTest` and `DaprTestClient` share (`fastapi_dapr.testing` is their surface).

A `Probe` gives the embedded sidecar a test's settings before the app starts (its
clock, the in-memory swap of its pub/sub components, the recording of what it
publishes), takes them back when the app has stopped, and waits on the engine's
delivery reports; when a wait times out, it says what was still going on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._cloudevent import CloudEvent
from ._dapr import Dapr
from ._exceptions import DaprAPIError
from ._retry import Clock

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .sidecar.delivery import DeliveryReport
    from .sidecar.embedded import EmbeddedBackend
    from .sidecar.publisher import Sent
    from .sidecar.runtime import Runtime

__all__: list[str] = []  # PublishedMessage is public in fastapi_dapr.testing

DEFAULT_TIMEOUT = 10.0
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, as daprd reads rawPayload


@dataclasses.dataclass(frozen=True)
class PublishedMessage:
    """A message the app published, as its pub/sub component took it.

    Every publish of the app under test is recorded, to a topic something
    subscribes to or not: `Dapr.publish` and `Dapr.publish_bulk` (one message
    per entry), Dapr's HTTP and gRPC publish APIs, and the dead letters the
    sidecar sends. `body` is what the broker stores: the CloudEvent's JSON, or
    the payload itself when it was published raw (`rawPayload` metadata).
    """

    pubsub: str
    """The pub/sub component it was published to."""
    topic: str
    """The topic."""
    message_id: str  # the broker's id of the message
    """The broker's id of the message."""
    body: bytes
    """What the broker stores: the CloudEvent's JSON, or the raw payload."""
    metadata: Mapping[str, str]  # the publish's metadata (`metadata.*` of the HTTP API)
    """The publish's metadata (the `metadata.*` of the HTTP API)."""

    @property
    def raw(self) -> bool:
        """Whether it was published without a CloudEvent around it (`rawPayload`)."""
        return self.metadata.get("rawPayload", "") in _GO_TRUE

    @functools.cached_property
    def event(self) -> CloudEvent[Any] | None:
        """The CloudEvent the message is (its `type`, `source`, `id`, extensions...);
        None for a raw payload."""
        if self.raw:
            return None
        return CloudEvent[Any].model_validate(json.loads(self.body))

    @property
    def data(self) -> Any:
        """The event's data as the subscriber gets it untyped (JSON decoded, text as `str`,
        `data_base64` as `bytes`); a raw payload's bytes."""
        event = self.event
        return self.body if event is None else event.data

    @property
    def content_type(self) -> str | None:
        """The event's `datacontenttype`; None for a raw payload."""
        event = self.event
        return None if event is None else event.datacontenttype


def dapr_of(app: FastAPI) -> tuple[Dapr, EmbeddedBackend]:
    dapr = getattr(app.state, "fastapi_dapr", None)
    if not isinstance(dapr, Dapr):
        raise RuntimeError("this app has no Dapr instance: create one with Dapr(app)")
    if dapr.mode != "embedded":
        raise RuntimeError("fastapi_dapr.testing runs the embedded sidecar: use Dapr(app, mode='embedded')")
    from .sidecar.embedded import EmbeddedBackend

    assert isinstance(dapr.backend, EmbeddedBackend)  # embedded mode's
    return dapr, dapr.backend


def pubsub_names(memory_pubsub: bool | Iterable[str]) -> bool | frozenset[str]:
    """`memory_pubsub=` as the backend takes it: True (all), False, or the names."""
    if isinstance(memory_pubsub, bool):
        return memory_pubsub
    if isinstance(memory_pubsub, str):
        return frozenset((memory_pubsub,))
    return frozenset(memory_pubsub)


@dataclasses.dataclass
class _Waiter:
    match: Callable[[DeliveryReport], bool]
    future: asyncio.Future[DeliveryReport]


class Recorder:
    """Every final report since it was attached, and the tests waiting for one."""

    def __init__(self) -> None:
        self.reports: list[DeliveryReport] = []
        self._unclaimed: list[DeliveryReport] = []
        self._waiters: list[_Waiter] = []

    def __call__(self, report: DeliveryReport) -> None:
        self.reports.append(report)
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.match(report):
                waiter.future.set_result(report)
                self._waiters.remove(waiter)
                return
        self._unclaimed.append(report)

    async def wait(
        self, match: Callable[[DeliveryReport], bool], timeout: float, explain: Callable[[], str]
    ) -> DeliveryReport:
        for report in self._unclaimed:
            if match(report):
                self._unclaimed.remove(report)
                return report
        future: asyncio.Future[DeliveryReport] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(match, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(explain()) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _matcher(pubsub: str | None, topic: str | None) -> Callable[[DeliveryReport], bool]:
    return lambda r: (pubsub is None or r.pubsub == pubsub) and (topic is None or r.topic == topic)


class Probe:
    """One test's hold on an app's embedded sidecar, from before its start to after its stop."""

    def __init__(self, app: FastAPI, *, clock: Clock | None, memory_pubsub: bool | Iterable[str]) -> None:
        self.dapr, self.backend = dapr_of(app)
        self.clock = clock
        self.memory_pubsub = pubsub_names(memory_pubsub)
        self.recorder = Recorder()
        self.published: list[PublishedMessage] = []
        self._saved: tuple[Clock | None, bool | frozenset[str]] | None = None

    def begin(self) -> None:
        """Before the app starts: the test's settings, and the recording of its publishes
        (those of its own start-up too)."""
        backend = self.backend
        self._saved = (backend.clock, backend.memory_pubsub)
        if self.clock is not None:
            backend.clock = self.clock
        backend.memory_pubsub = self.memory_pubsub
        backend.publish_observers.append(self._record)

    def attach(self) -> None:
        """Once the app has started, in its event loop: the delivery reports."""
        self.backend.add_observer(self.recorder)  # the runtime, and its observers, end with the lifespan

    def end(self) -> None:
        """Once the app has stopped: the app as it was before the test."""
        if self._saved is None:
            return
        backend = self.backend
        backend.clock, backend.memory_pubsub = self._saved
        self._saved = None
        if self._record in backend.publish_observers:
            backend.publish_observers.remove(self._record)

    def _record(self, sent: Sent) -> None:
        self.published.append(
            PublishedMessage(
                sent.pubsub, sent.topic, sent.message_id, sent.data, MappingProxyType(sent.metadata)
            )
        )

    def published_to(self, pubsub: str | None, topic: str | None) -> list[PublishedMessage]:
        return [
            message
            for message in self.published
            if (pubsub is None or message.pubsub == pubsub) and (topic is None or message.topic == topic)
        ]

    async def publish_and_wait(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        message_id = await self.backend.publish(pubsub, topic, data, content_type, metadata)
        return await self.recorder.wait(
            lambda r: r.pubsub == pubsub and r.topic == topic and r.message_id == message_id,
            timeout,
            lambda: self.explain(
                f"no delivery report came within {timeout:g}s for message {message_id} of "
                f"pubsub={pubsub!r} topic={topic!r}",
                pubsub,
                topic,
            ),
        )

    async def wait_for_delivery(
        self,
        *,
        pubsub: str | None = None,
        topic: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        where = " ".join(
            f"{name}={value!r}" for name, value in (("pubsub", pubsub), ("topic", topic)) if value
        )
        return await self.recorder.wait(
            _matcher(pubsub, topic),
            timeout,
            lambda: self.explain(
                f"no delivery report came within {timeout:g}s" + (f" on {where}" if where else ""),
                pubsub,
                topic,
            ),
        )

    def explain(self, headline: str, pubsub: str | None, topic: str | None) -> str:
        """`headline`, and what the sidecar is doing: the deliveries in progress (each one's
        attempts and the delay before its next), or that nothing subscribes to the topic."""
        try:
            runtime = self.backend.running()
        except DaprAPIError:
            return f"{headline}; the app has stopped"
        lines = [headline + "."]
        if topic is not None and not any(
            route.topic == topic and (pubsub is None or route.pubsub == pubsub) for route in runtime.routes
        ):
            routes = ", ".join(route.describe() for route in runtime.routes) or "none"
            lines.append(f"Nothing in the app subscribes to topic {topic!r} (its subscriptions: {routes}),")
            lines.append(
                "so a message there makes no report: published(pubsub, topic) lists what was published."
            )
        busy = in_progress(runtime)
        if busy:
            lines.append("In progress:")
            for entry, _ in busy:
                first, _, rest = entry.partition("\n")
                lines.append(f"  - {first}")
                lines += [f"    {line}" for line in rest.splitlines()]
        else:
            lines.append("No delivery is in progress.")
        waiting = any(retrying for _, retrying in busy)
        if waiting and type(runtime.clock) is Clock:
            lines.append(
                "Retry delays are waited on the real clock: give the test a FakeClock, and they take"
            )
            lines.append("no time (fastapi_dapr.testing.FakeClock: DaprTestClient(app, clock=FakeClock())).")
        elif busy and type(runtime.clock) is not Clock:
            lines.append(
                "On a FakeClock, a Resiliency timeout passes only when the clock moves: clock.advance(s)."
            )
        return "\n".join(lines)


def in_progress(runtime: Runtime) -> list[tuple[str, bool]]:
    """A line for each delivery in progress, and whether it waits for a retry."""
    found: list[tuple[str, bool]] = []
    for worker in runtime.workers:
        found += [(entry.describe(), entry.retry_delay is not None) for entry in worker.progress.values()]
        if worker.route.bulk is not None and worker.in_flight:
            found.append((f"{worker.in_flight} bulk deliveries on {worker.route.describe()}", False))
    return found
