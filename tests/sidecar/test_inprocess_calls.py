"""In-process delivery runs the app as a server would: what the app can observe is the same
whether the engine calls the matched route directly (no middleware of the app's own) or the
whole app (with middleware)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from fastapi_dapr import CloudEvent, Dapr, DaprRouter
from fastapi_dapr.testing import DaprTestClient


class Conflict(Exception):
    pass


def database() -> str:
    return "real database"


def build(with_middleware: bool) -> tuple[FastAPI, list[Any]]:
    seen: list[Any] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"pool": "the lifespan's pool"}

    app = FastAPI(lifespan=lifespan)
    Dapr(app)

    if with_middleware:

        @app.middleware("http")
        async def count(request: Request, call_next: Any) -> Any:
            seen.append(("middleware", request.url.path))
            return await call_next(request)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"status": "DROP"})

    async def router_guard(request: Request) -> None:
        seen.append(("router dependency", request.url.path))

    router = DaprRouter(prefix="/r", dependencies=[Depends(router_guard)])

    @router.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent, request: Request, db: str = Depends(database)) -> None:
        seen.append(("handler", request.state.pool, db, request.app is app))

    app.include_router(router)

    @app.post("/declared")
    async def declared() -> None:
        raise Conflict

    app.dependency_overrides[database] = lambda: "test database"
    return app, seen


@pytest.mark.parametrize("with_middleware", [False, True])
def test_what_the_app_observes(with_middleware: bool) -> None:
    app, seen = build(with_middleware)
    with DaprTestClient(app) as client:
        assert client.publish_and_wait("pubsub", "orders", {"n": 1}).outcome == "delivered"
    expected: list[Any] = [
        ("router dependency", "/r/events/pubsub/orders"),
        ("handler", "the lifespan's pool", "test database", True),
    ]
    if with_middleware:
        expected.insert(0, ("middleware", "/r/events/pubsub/orders"))
    assert seen == expected


@pytest.mark.parametrize("with_middleware", [False, True])
def test_exception_handlers_apply(with_middleware: bool, tmp_path: Any) -> None:
    (tmp_path / "s.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: d}\n"
        "spec: {pubsubname: pubsub, topic: declared, route: /declared, deadLetterTopic: dead}\n"
    )
    app, _ = build(with_middleware)
    app.state.fastapi_dapr.resources_paths = [tmp_path]
    with DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "declared", {"n": 1})
    assert report.outcome == "dead-lettered"  # the handler's JSON said DROP
    assert len(report.attempts) == 1


def test_unknown_route_is_a_404_drop() -> None:
    app = FastAPI()
    Dapr(app)
    with DaprTestClient(app) as client:
        assert client.get("/v1.0/metadata").status_code == 200
    from fastapi_dapr.sidecar.asgi import AppCaller

    async def call() -> int:
        return (await AppCaller(app)("POST", "/nowhere", [], b"")).status

    import asyncio

    assert asyncio.run(call()) == 404


def test_sidecar_can_be_mounted_elsewhere() -> None:
    app = FastAPI()
    dapr = Dapr(app, serve_api=False)
    assert dapr.sidecar is not None
    app.mount("/dapr", dapr.sidecar)
    with DaprTestClient(app) as client:
        assert client.post("/v1.0/publish/pubsub/t", json={}).status_code == 404  # not served there
        assert client.post("/dapr/v1.0/publish/pubsub/t", json={}).status_code == 204
        assert client.get("/dapr/v1.0/healthz").status_code == 204


async def test_an_own_route_past_its_timeout_is_stopped_and_awaited_before_the_app_stops() -> None:
    # The caller gets its 500 at the deadline; the route, cancelled, may still clean up.
    # Its task has an owner that awaits it when the app stops: it never outlives the app.
    import asyncio

    from fastapi_dapr import DaprAPIError
    from fastapi_dapr.testing import DaprTest

    app = FastAPI()
    dapr = Dapr(app, app_id="self", api_token="")
    entered = asyncio.Event()
    ended: list[str] = []

    @app.get("/slow")
    async def slow() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await asyncio.Event().wait()  # a clean-up that goes on until cancelled again
            finally:
                ended.append("stopped")

    async with DaprTest(app):
        with pytest.raises(DaprAPIError, match="no answer within"):
            await dapr.invoke("self", "slow", timeout=0.05)
        assert entered.is_set()
        assert ended == []  # still cleaning up
    assert ended == ["stopped"]  # cancelled again and awaited before the app stopped
