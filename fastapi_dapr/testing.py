"""Testing apps built with fastapi-dapr: publish, then await the delivery and its status.

Everything here runs the real embedded sidecar (the real engine and the
in-memory broker), inside the app's real lifespan, and waits on the engine's
own reports: no sleeps, no patching.

In a synchronous test, with Starlette's `TestClient`::

    with DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "orders", {"id": "o-1"})
        assert report.status is SUCCESS

In an async test::

    async with DaprTest(app) as dapr_test:
        report = await dapr_test.publish_and_wait("pubsub", "orders", {"id": "o-1"})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal
from fastapi import FastAPI
from starlette.testclient import TestClient

from ._dapr import Dapr
from ._retry import Clock

if TYPE_CHECKING:
    from .sidecar.delivery import Attempt, DeliveryReport
    from .sidecar.embedded import EmbeddedBackend

__all__ = ["Attempt", "DaprTest", "DaprTestClient", "DeliveryReport", "FakeClock"]


def __getattr__(name: str) -> Any:
    # The reports are the sidecar side's: loaded when asked for, so that importing this
    # module (for FakeClock, say) under a real daprd loads nothing of the sidecar side.
    if name in ("Attempt", "DeliveryReport"):
        from .sidecar import delivery

        return getattr(delivery, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_TIMEOUT = 10.0


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock(Clock):
    """A clock whose time moves only when it is told to.

    A wait (a retry's backoff) takes no time: it moves the clock forward by
    its length at once, and is remembered in `sleeps`. `advance(seconds)` moves
    it forward from a test. Deadlines (a Resiliency timeout, a circuit
    breaker's open period) pass when the clock passes them, however it is moved.
    Give it to `DaprTest` or `DaprTestClient` to check a retry schedule, a
    timeout or a circuit breaker without waiting for them.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._advance(seconds)
        await asyncio.sleep(0)

    def monotonic(self) -> float:
        return self.now

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _FakeTimer:
        self._loop = asyncio.get_running_loop()  # where the deadlines run
        timer = _FakeTimer(self.now + seconds, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock forward, and run the deadlines it passes, earliest first.

        From a synchronous test (`DaprTestClient` runs the app in a thread of its own)
        the deadlines run in the app's event loop, and this returns once they have.
        """
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop is here or not loop.is_running():
            self._advance(seconds)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                self._advance(seconds)
            finally:
                done.set_result(None)

        loop.call_soon_threadsafe(run)
        done.result(timeout=DEFAULT_TIMEOUT)

    def _advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()


def _dapr_of(app: FastAPI) -> tuple[Dapr, EmbeddedBackend]:
    dapr = getattr(app.state, "fastapi_dapr", None)
    if not isinstance(dapr, Dapr):
        raise RuntimeError("this app has no Dapr instance: create one with Dapr(app)")
    if dapr.mode != "embedded":
        raise RuntimeError("fastapi_dapr.testing runs the embedded sidecar: use Dapr(app, mode='embedded')")
    from .sidecar.embedded import EmbeddedBackend

    assert isinstance(dapr.backend, EmbeddedBackend)  # embedded mode's
    return dapr, dapr.backend


@dataclasses.dataclass
class _Waiter:
    match: Callable[[DeliveryReport], bool]
    future: asyncio.Future[DeliveryReport]


class _Recorder:
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

    async def wait(self, match: Callable[[DeliveryReport], bool], timeout: float) -> DeliveryReport:
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
            raise AssertionError(f"no delivery report came within {timeout}s") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _matcher(pubsub: str | None, topic: str | None) -> Callable[[DeliveryReport], bool]:
    return lambda r: (pubsub is None or r.pubsub == pubsub) and (topic is None or r.topic == topic)


class _Probe:
    """The async core shared by `DaprTest` and `DaprTestClient`."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.backend = backend
        self.recorder = _Recorder()

    def attach(self) -> None:
        self.backend.add_observer(self.recorder)

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
        )

    async def wait_for_delivery(
        self,
        *,
        pubsub: str | None = None,
        topic: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        return await self.recorder.wait(_matcher(pubsub, topic), timeout)


class DaprTest:
    """Run an app's lifespan (and its embedded sidecar) in an async test.

    `client` is an `httpx.AsyncClient` bound to the app, for its HTTP API.
    """

    def __init__(self, app: FastAPI, *, clock: FakeClock | None = None) -> None:
        self.app = app
        self.dapr, backend = _dapr_of(app)
        if clock is not None:
            backend.clock = clock
        self._probe = _Probe(backend)
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = None

    @property
    def reports(self) -> list[DeliveryReport]:
        """Every delivery report since the app started."""
        return self._probe.recorder.reports

    async def __aenter__(self) -> DaprTest:
        await self._stack.enter_async_context(_lifespan(self.app))
        self._probe.attach()  # the runtime, and its observers, end with the lifespan
        import httpx

        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        self.client = await self._stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

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
        """Publish, then wait for what became of that message (not of others)."""
        return await self._probe.publish_and_wait(
            pubsub, topic, data, content_type=content_type, metadata=metadata, timeout=timeout
        )

    async def wait_for_delivery(
        self,
        *,
        pubsub: str | None = None,
        topic: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        """The next report on `topic` not yet returned by this method (oldest first)."""
        return await self._probe.wait_for_delivery(pubsub=pubsub, topic=topic, timeout=timeout)


class DaprTestClient(TestClient):
    """Starlette's `TestClient`, plus waiting for deliveries.

    Use it as a context manager, so that the app's lifespan (and the embedded
    sidecar) runs.
    """

    def __init__(self, app: FastAPI, *, clock: FakeClock | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.dapr, backend = _dapr_of(app)
        if clock is not None:
            backend.clock = clock
        self._probe = _Probe(backend)

    def __enter__(self) -> DaprTestClient:
        super().__enter__()
        self._portal().call(self._attach)
        return self

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)  # reports made while stopping are still recorded

    def _portal(self) -> BlockingPortal:
        if self.portal is None:
            raise RuntimeError("use DaprTestClient as a context manager: `with DaprTestClient(app) as c:`")
        return self.portal

    async def _attach(self) -> None:
        self._probe.attach()

    @property
    def reports(self) -> list[DeliveryReport]:
        """Every delivery report since the app started."""
        return self._probe.recorder.reports

    def publish_and_wait(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        """Publish, then wait for what became of that message (not of others)."""

        async def run() -> DeliveryReport:
            return await self._probe.publish_and_wait(
                pubsub, topic, data, content_type=content_type, metadata=metadata, timeout=timeout
            )

        return self._portal().call(run)

    def wait_for_delivery(
        self,
        *,
        pubsub: str | None = None,
        topic: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DeliveryReport:
        """The next report on `topic` not yet returned by this method (oldest first)."""

        async def run() -> DeliveryReport:
            return await self._probe.wait_for_delivery(pubsub=pubsub, topic=topic, timeout=timeout)

        return self._portal().call(run)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan protocol, as a server does."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def receive() -> dict[str, Any]:
        return await to_app.get()

    async def send(message: dict[str, Any]) -> None:
        await from_app.put(message)

    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
    await to_app.put({"type": "lifespan.startup"})
    answer = await _next(from_app, task)
    if answer["type"] != "lifespan.startup.complete":
        error = await _finish(task)
        if error is not None:
            raise error  # what stopped the start-up: a SubscriptionError, a ResourceError...
        raise RuntimeError(f"the app failed to start: {answer.get('message', answer['type'])}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        answer = await _next(from_app, task)
        await _finish(task)
        if answer["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"the app failed to stop: {answer.get('message', answer['type'])}")


async def _next(queue: asyncio.Queue[dict[str, Any]], task: asyncio.Task[Any]) -> dict[str, Any]:
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    task.result()  # re-raises what the app raised
    raise RuntimeError("the app ended its lifespan without answering")


async def _finish(task: asyncio.Task[Any]) -> BaseException | None:
    try:
        await task
    except Exception as exc:
        return exc
    return None
