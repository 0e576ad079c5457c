"""`DaprTestClient`: Starlette's `TestClient`, plus the waits and records of `fastapi_dapr.testing`.

A module of its own, loaded when the name is first used: `starlette.testclient`
wants `httpx2` (the `testing` extra) on Starlette 1.x, and warns without it, which
a test of `DaprTest` or `FakeClock` alone should not pay for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal
from starlette.testclient import TestClient

from ._testkit import DEFAULT_TIMEOUT, Probe, PublishedMessage

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .sidecar.delivery import DeliveryReport
    from .testing import FakeClock

__all__: list[str] = []  # DaprTestClient is public in fastapi_dapr.testing


class DaprTestClient(TestClient):
    """Starlette's `TestClient`, plus waiting for deliveries and reading what was published.

    Use it as a context manager, so that the app's lifespan (and the embedded
    sidecar) runs. `clock` replaces the sidecar's clock (a `FakeClock`), and
    `memory_pubsub` runs the app's pub/sub components on the in-memory broker
    (True: all of them; or the names of those to swap), for this client's run only.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        clock: FakeClock | None = None,
        memory_pubsub: bool | Iterable[str] = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._probe = Probe(app, clock=clock, memory_pubsub=memory_pubsub)
        self.dapr = self._probe.dapr
        """The app's `Dapr`."""

    def __enter__(self) -> DaprTestClient:
        self._probe.begin()
        try:
            super().__enter__()
        except BaseException:
            self._probe.end()
            raise
        self._portal().call(self._attach)
        return self

    def __exit__(self, *args: Any) -> None:
        try:
            super().__exit__(*args)  # reports made while stopping are still recorded
        finally:
            self._probe.end()

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

    def published(self, pubsub: str | None = None, topic: str | None = None) -> list[PublishedMessage]:
        """What the app published since it started (its start-up included), oldest first:
        to `topic` of `pubsub` when given. After the `with` block too."""
        if self.portal is None:  # the app has stopped: nothing is added any more
            return self._probe.published_to(pubsub, topic)
        return self._portal().call(self._probe.published_to, pubsub, topic)  # read in the app's loop

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
