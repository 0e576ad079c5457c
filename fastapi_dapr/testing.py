"""Testing apps built with fastapi-dapr: publish, then await the delivery and its status.

Everything here runs the real embedded sidecar (the real engine and the
in-memory broker), inside the app's real lifespan, and waits on the engine's
own reports: no sleeps, no patching.

In a synchronous test, with Starlette's `TestClient`::

    with DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "orders", {"id": "o-1"})
        assert report.status is SUCCESS
        assert client.published("pubsub", "invoices")[0].data == {"order": "o-1"}

In an async test::

    async with DaprTest(app) as dapr_test:
        report = await dapr_test.publish_and_wait("pubsub", "orders", {"id": "o-1"})

`memory_pubsub=True` runs pub/sub components of other types (`pubsub.redis`) on
the in-memory broker, and `clock=FakeClock()` makes retry delays take no time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from ._retry import Clock
from ._testkit import DEFAULT_TIMEOUT, Probe, PublishedMessage

if TYPE_CHECKING:
    from ._testclient import DaprTestClient
    from .sidecar.delivery import Attempt, DeliveryReport

__all__ = ["Attempt", "DaprTest", "DaprTestClient", "DeliveryReport", "FakeClock", "PublishedMessage"]


def __getattr__(name: str) -> Any:
    # The reports are the sidecar side's: loaded when asked for, so that importing this
    # module (for FakeClock, say) under a real daprd loads nothing of the sidecar side.
    if name in ("Attempt", "DeliveryReport"):
        from .sidecar import delivery

        return getattr(delivery, name)
    # Starlette's TestClient wants httpx2 (the `testing` extra), and warns without it.
    if name == "DaprTestClient":
        from ._testclient import DaprTestClient

        return DaprTestClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        """The clock's time, in seconds from 0."""
        self.sleeps: list[float] = []
        """Every wait so far, in seconds, in order: a retry schedule."""
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` at once: the clock moves forward by them."""
        self.sleeps.append(seconds)
        self._advance(seconds)
        await asyncio.sleep(0)

    def monotonic(self) -> float:
        """The clock's time (`now`)."""
        return self.now

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _FakeTimer:
        """Call `callback` when the clock passes `now + seconds` (a timeout's deadline)."""
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


class DaprTest:
    """Run an app's lifespan (and its embedded sidecar) in an async test.

    `client` is an `httpx.AsyncClient` bound to the app, for its HTTP API.
    `clock` replaces the sidecar's clock (a `FakeClock`), and `memory_pubsub`
    runs the app's pub/sub components on the in-memory broker (True: all of
    them; or the names of those to swap), for this test's run only.
    """

    def __init__(
        self, app: FastAPI, *, clock: FakeClock | None = None, memory_pubsub: bool | Iterable[str] = False
    ) -> None:
        self.app = app
        """The app under test."""
        self._probe = Probe(app, clock=clock, memory_pubsub=memory_pubsub)
        self.dapr = self._probe.dapr
        """The app's `Dapr`."""
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = None
        """An `httpx.AsyncClient` bound to the app, inside the `async with` block."""

    @property
    def reports(self) -> list[DeliveryReport]:
        """Every delivery report since the app started."""
        return self._probe.recorder.reports

    def published(self, pubsub: str | None = None, topic: str | None = None) -> list[PublishedMessage]:
        """What the app published since it started (its start-up included), oldest first:
        to `topic` of `pubsub` when given. After the `async with` block too."""
        return self._probe.published_to(pubsub, topic)

    async def __aenter__(self) -> DaprTest:
        self._probe.begin()
        self._stack.callback(self._probe.end)  # last: once the app has stopped
        try:
            await self._stack.enter_async_context(_lifespan(self.app))
            self._probe.attach()  # the runtime, and its observers, end with the lifespan
            import httpx

            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
            self.client = await self._stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
            )
        except BaseException:
            await self._stack.aclose()
            raise
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
