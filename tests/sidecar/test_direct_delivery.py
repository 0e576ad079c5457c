"""The engine calls a handler that reads nothing but its event without HTTP around it: every
answer must be the one its endpoint gives when the same delivery goes through the app's
middleware and router (reference 3.3)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.responses import Response

from fastapi_dapr import DROP, RETRY, SUCCESS, CloudEvent, Dapr, DaprRouter, RetryPolicy
from fastapi_dapr.testing import DaprTest, DeliveryReport, FakeClock

PATH = "/events/pubsub/orders"
HEAD = b'{"specversion":"1.0","source":"s","type":"t",'  # a CloudEvent's start, as published
ONCE = RetryPolicy(policy="constant", duration=1.0, max_retries=1)


class Order(BaseModel):
    id: str
    quantity: int


class Refused(HTTPException):
    """An HTTPException subclass the app answers with a handler of its own."""


def make_app(handler: Callable[..., Any], *, plain: bool) -> tuple[FastAPI, Dapr]:
    """`handler` subscribed to `orders`; `plain=False` adds a middleware, so every
    delivery goes through the app's whole stack instead."""
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", retry=ONCE)
    dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")(handler)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        # It reads the request, as handlers do: the app, and the delivery's headers.
        assert request.app is app
        return JSONResponse({"status": "DROP", "why": request.headers["pubsubname"]}, status_code=200)

    @app.exception_handler(418)  # by status code: looked at before the classes
    async def teapot(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"status": "DROP"}, status_code=200)

    if not plain:

        @app.middleware("http")
        async def passthrough(request: Request, call_next: Callable[..., Awaitable[Any]]) -> Any:
            return await call_next(request)

    return app, dapr


async def outcome(handler: Callable[..., Any], data: Any, *, plain: bool) -> tuple[Any, ...]:
    app, dapr = make_app(handler, plain=plain)
    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", data)
        direct = dapr.backend.running().workers[0].engine.call.handler(PATH) is not None
    assert direct is plain  # the path under test was the one taken
    return summary(report)


def summary(report: DeliveryReport) -> tuple[Any, ...]:
    return report.outcome, [(a.status, a.http_status) for a in report.attempts]


async def returns_none(event: CloudEvent[Order]) -> None:
    return None


async def returns_retry(event: CloudEvent[Order]) -> Any:
    return RETRY


async def returns_drop_string(event: CloudEvent[Order]) -> Any:
    return "DROP"


async def returns_success(order: Order) -> Any:
    return SUCCESS


async def returns_status_object(event: CloudEvent[Order]) -> Any:
    return {"status": "DROP", "note": "a dict, serialised as FastAPI would"}


async def returns_response_404(event: CloudEvent[Order]) -> Response:
    return Response(b"gone", status_code=404)


async def returns_json_response_retry(event: CloudEvent[Order]) -> Response:
    return JSONResponse({"status": "RETRY"}, status_code=200)


async def raises_http_404(event: CloudEvent[Order]) -> None:
    raise HTTPException(404, "no such order")


async def raises_http_503(event: CloudEvent[Order]) -> None:
    raise HTTPException(503, "later")


async def raises_refused(event: CloudEvent[Order]) -> None:
    raise Refused(409, "duplicate")


async def raises_http_418(event: CloudEvent[Order]) -> None:
    raise HTTPException(418, "a teapot")


def failing_task() -> None:
    raise RuntimeError("the background task failed")


async def returns_response_whose_background_task_fails(event: CloudEvent[Order]) -> Response:
    return Response(status_code=204, background=BackgroundTask(failing_task))


async def raises_error(event: CloudEvent[Order]) -> None:
    raise RuntimeError("database down")


def sync_returns_drop(event: CloudEvent[Order]) -> Any:
    return DROP


def sync_raises(event: CloudEvent[Order]) -> None:
    raise RuntimeError("sync failure")


async def untyped(event: CloudEvent) -> None:
    assert isinstance(event.data, dict)


HANDLERS = [
    returns_none,
    returns_retry,
    returns_drop_string,
    returns_success,
    returns_status_object,
    returns_response_404,
    returns_json_response_retry,
    raises_http_404,
    raises_http_503,
    raises_refused,
    raises_http_418,
    returns_response_whose_background_task_fails,
    raises_error,
    sync_returns_drop,
    sync_raises,
    untyped,
]


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.__name__)
async def test_the_direct_call_answers_as_the_endpoint(handler: Callable[..., Any]) -> None:
    through_http = await outcome(handler, {"id": "o-1", "quantity": 2}, plain=False)
    direct = await outcome(handler, {"id": "o-1", "quantity": 2}, plain=True)
    assert direct == through_http


async def test_a_payload_that_does_not_fit_is_dropped_on_both_paths(caplog: pytest.LogCaptureFixture) -> None:
    results = []
    for plain in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
            results.append(await outcome(returns_none, {"id": "o-1", "quantity": "many"}, plain=plain))
        assert "data failed validation" in caplog.text
        assert "quantity" in caplog.text
    assert results[0] == results[1] == ("dead-lettered", [(DROP, 200)])


async def test_a_background_task_of_a_returned_response_runs() -> None:
    ran: list[str] = []

    async def handler(event: CloudEvent[Order]) -> Response:
        return Response(status_code=204, background=BackgroundTask(ran.append, event.data.id))

    assert await outcome(handler, {"id": "o-7", "quantity": 1}, plain=True) == ("delivered", [(SUCCESS, 204)])
    assert ran == ["o-7"]


async def test_trace_attributes_from_metadata_reach_the_event_on_both_paths() -> None:
    # A message whose metadata carries the trace, not its envelope: the direct call must
    # read the event as the endpoint does, from the bytes the app would have been sent.
    seen: list[Any] = []

    async def handler(event: CloudEvent[Order]) -> None:
        seen.append((event.id, event.traceparent))

    for plain in (False, True):
        app, dapr = make_app(handler, plain=plain)
        async with DaprTest(app) as test:
            broker = dapr.backend.running().brokers["pubsub"]
            body = HEAD + b'"id":"e-1","data":{"id":"a","quantity":1}}'
            await broker.publish("orders", body, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
            await test.wait_for_delivery(topic="orders")
    assert seen[0] == seen[1] == ("e-1", None)  # the trace travels as a header (reference 3.2)


def needs_request(event: CloudEvent[Order], request: Request) -> None:
    assert request.headers["pubsubname"] == "pubsub"


def needs_dependency(event: CloudEvent[Order], user: str = Depends(lambda: "dep")) -> None:
    assert user == "dep"


def needs_background(event: CloudEvent[Order], tasks: BackgroundTasks) -> None:
    tasks.add_task(lambda: None)


@pytest.mark.parametrize("handler", [needs_request, needs_dependency, needs_background])
async def test_handlers_with_fastapi_parameters_go_through_the_endpoint(handler: Callable[..., Any]) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout")
    dapr.subscribe("pubsub", "orders")(handler)
    async with DaprTest(app) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
        assert dapr.backend.running().workers[0].engine.call.handler(PATH) is None
    assert report.outcome == "delivered"


@pytest.mark.parametrize("where", ["route", "app"])
async def test_route_and_app_dependencies_keep_the_endpoint(where: str) -> None:
    calls: list[str] = []

    def audit() -> None:
        calls.append("audit")

    app = FastAPI(dependencies=[Depends(audit)] if where == "app" else [])
    dapr = Dapr(app, app_id="checkout")
    router = APIRouter(dependencies=[Depends(audit)] if where == "route" else [])
    subscriptions = DaprRouter()

    @subscriptions.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None:
        calls.append(order.id)

    router.include_router(subscriptions)
    app.include_router(router)
    async with DaprTest(app) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
        assert dapr.backend.running().workers[0].engine.call.handler(PATH) is None
    assert report.outcome == "delivered"
    assert calls == ["audit", "o-1"]  # the dependency ran, before the handler


@pytest.mark.parametrize(
    ("annotation", "body"),
    [
        (CloudEvent[Order], HEAD + b'"id":"e-1","data":{"id":"a","quantity":1}}'),
        (CloudEvent[bytes], HEAD + b'"id":"e-2","data_base64":"aGk="}'),
        (CloudEvent[Any], HEAD + b'"id":"e-3","x-ext":"v","data":[1,2]}'),
        (CloudEvent[Any], b'{"no":"specversion"}'),
    ],
)
async def test_the_handler_gets_the_same_event_on_both_paths(annotation: Any, body: bytes) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(event: Any) -> None:
        seen.append(event.model_dump())

    handler.__annotations__["event"] = annotation  # resolved, not a string

    for plain in (False, True):
        app, dapr = make_app(handler, plain=plain)
        async with DaprTest(app) as test:
            await dapr.backend.running().brokers["pubsub"].publish("orders", body, {})
            await test.wait_for_delivery(topic="orders")
    assert len(seen) == 2
    assert seen[0] == seen[1]


async def test_a_subscription_on_an_included_router_is_called_directly_too() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout")
    router = DaprRouter(prefix="/shop")
    seen: list[str] = []

    @router.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None:
        seen.append(order.id)

    app.include_router(router, prefix="/v2")
    async with DaprTest(app) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
        assert dapr.backend.running().workers[0].engine.call.handler(report.path or "") is not None
    assert report.path == "/v2/shop/events/pubsub/orders"
    assert (report.outcome, seen) == ("delivered", ["o-1"])


async def test_a_custom_route_class_keeps_the_endpoint() -> None:
    from fastapi.routing import APIRoute

    calls: list[str] = []

    class Timed(APIRoute):
        def get_route_handler(self) -> Callable[..., Any]:
            handle = super().get_route_handler()

            async def timed(request: Request) -> Response:
                calls.append("timed")
                return await handle(request)

            return timed

    app = FastAPI()
    app.router.route_class = Timed
    dapr = Dapr(app, app_id="checkout")

    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None:
        calls.append(order.id)

    async with DaprTest(app) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
        assert dapr.backend.running().workers[0].engine.call.handler(PATH) is None
    assert report.outcome == "delivered"
    assert calls == ["timed", "o-1"]


async def test_a_retry_gets_the_event_as_published_even_if_the_first_attempt_changed_it() -> None:
    seen: list[list[str]] = []

    async def handler(event: CloudEvent[Any]) -> None:
        seen.append(list(event.data["items"]))
        event.data["items"].append("changed")
        raise RuntimeError("the first attempt fails")

    for plain in (False, True):
        app, dapr = make_app(handler, plain=plain)
        async with DaprTest(app, clock=FakeClock()) as test:
            body = HEAD + b'"id":"e-1","data":{"items":[]}}'
            await dapr.backend.running().brokers["pubsub"].publish("orders", body, {})
            await test.wait_for_delivery(topic="orders")
    assert seen == [[], [], [], []]  # two attempts on each path, each from the message
