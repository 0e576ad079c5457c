"""W3C trace context as daprd carries it with no tracing exporter (reference 1.7): from publish
to delivery, through every kind of invocation, back on the API's answers, and on from the
handler of a delivery or a request to its own `Dapr.publish()` and `Dapr.invoke()`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response

from fastapi_dapr import CloudEvent, Dapr, InvocationSettings
from fastapi_dapr._trace import context, traceparent, tracestate
from fastapi_dapr.testing import DaprTest

from ..daprd_wire import ZERO_TRACEPARENT
from ..servers import serve

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TS = "vendor=opaque,other@tenant=x y"


# -- reading a traceparent as daprd (OpenTelemetry) reads it ---------------------------------


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        (TP, TP),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-FF",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
        ),
        # A later version may have more fields; it is written back as version 00.
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", TP),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper-case ids
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),  # 00 has 4 fields
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version 255
        (ZERO_TRACEPARENT, None),  # all-zero ids
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),  # short trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", None),  # odd flags
        ("00-a-b-01", None),
        ("", None),
    ],
)
def test_traceparent(given: str, passed_on: str | None) -> None:
    assert traceparent(given) == passed_on


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        (TS, TS),
        (" a=1 , b=2", "a=1,b=2"),  # spaces around members
        ("a=1,,b=2", "a=1,b=2"),
        ("a=1,a=2", ""),  # a key twice
        ("A=1", ""),  # keys are lower case
        ("a", ""),
        ("a=1=2", ""),  # `=` is not allowed in a value
        (",".join(f"k{n}=v" for n in range(33)), ""),  # more than 32 members
        ("a=" + "x" * 255 + ",b=" + "y" * 255, ""),  # longer than daprd sends (512)
    ],
)
def test_tracestate(given: str, passed_on: str) -> None:
    assert tracestate(given) == passed_on


def test_no_tracestate_without_a_traceparent() -> None:
    assert context("garbage", TS) is None
    assert context(TP, None) == (TP, "")


# -- publish to delivery ------------------------------------------------------------------


def recording_app(**options: Any) -> tuple[FastAPI, Dapr, list[dict[str, Any]]]:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", **options)
    seen: list[dict[str, Any]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, Any]], request: Request) -> None:
        seen.append({"headers": dict(request.headers), "event": event})

    @app.api_route("/hello", methods=["GET", "POST"])
    async def hello(request: Request) -> dict[str, Any]:
        seen.append({"headers": dict(request.headers)})
        return {"ok": True}

    @app.get("/own-trace")
    async def own_trace() -> Response:
        return Response(headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})

    return app, dapr, seen


@pytest.mark.parametrize(
    ("sent", "delivered", "state"),
    [
        ({"traceparent": TP, "tracestate": TS}, TP, TS),
        ({}, ZERO_TRACEPARENT, None),  # reference 1.7: none sent, the all-zero form delivered
        ({"traceparent": "00-a-b-01", "tracestate": TS}, ZERO_TRACEPARENT, None),  # unreadable: dropped
    ],
)
async def test_publish_to_delivery(sent: dict[str, str], delivered: str, state: str | None) -> None:
    app, _, seen = recording_app()
    async with DaprTest(app) as test:
        answer = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1}, headers=sent)
        assert answer.status_code == 204
        await test.wait_for_delivery(topic="orders")
    (delivery,) = seen
    assert delivery["headers"]["traceparent"] == delivered
    assert delivery["headers"].get("tracestate") == state
    assert delivery["event"].traceparent == (TP if sent.get("traceparent") == TP else "")
    # daprd's answer to the publish carries the request's trace.
    assert answer.headers.get("traceparent") == (TP if sent.get("traceparent") == TP else None)


async def test_a_handler_publishes_and_invokes_in_the_trace_of_its_delivery() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    seen: dict[str, Any] = {}

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:  # called without HTTP
        await dapr.publish("pubsub", "shipments", {"n": event.data["n"]})
        await dapr.invoke("orders", "hello")
        await dapr.invoke("orders", "hello", headers={"traceparent": "nonsense"})  # not read: dropped

    @dapr.subscribe("pubsub", "shipments")
    async def on_shipment(event: CloudEvent[dict[str, int]], request: Request) -> None:
        seen["shipment"] = (event.traceparent, event.tracestate, request.headers["traceparent"])

    @app.get("/hello")
    async def hello(request: Request) -> None:
        seen.setdefault("invoked", []).append(request.headers.get("traceparent"))

    async with DaprTest(app) as test:
        headers = {"traceparent": TP, "tracestate": TS}
        answer = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1}, headers=headers)
        assert answer.status_code == 204
        assert (await test.wait_for_delivery(topic="orders")).outcome == "delivered"
        assert (await test.wait_for_delivery(topic="shipments")).outcome == "delivered"
        # Outside any handler there is no trace to carry on.
        await dapr.publish("pubsub", "shipments", {"n": 2})
        await test.wait_for_delivery(topic="shipments")
    assert seen["invoked"] == [TP, None]
    assert seen["shipment"] == ("", "", ZERO_TRACEPARENT)  # the last one: no trace


async def test_a_request_handler_invokes_and_publishes_in_the_request_trace() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    seen: list[Any] = []

    @app.post("/checkout")
    async def checkout() -> None:
        await dapr.invoke("orders", "hello")
        await dapr.publish("pubsub", "orders", {"n": 1})

    @app.get("/hello")
    async def hello(request: Request) -> None:
        seen.append((request.headers.get("traceparent"), request.headers.get("tracestate")))

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        seen.append((event.traceparent, event.tracestate))

    async with DaprTest(app) as test:
        answer = await test.client.post("/checkout", headers={"traceparent": TP, "tracestate": TS})
        assert answer.status_code == 200
        await test.wait_for_delivery(topic="orders")
    assert seen == [(TP, TS), (TP, TS)]


# -- invocation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ({"traceparent": TP, "tracestate": TS}, (TP, TS)),
        ({"traceparent": TP.upper(), "tracestate": TS}, (None, None)),  # unreadable: dropped, state too
        ({"tracestate": TS}, (None, None)),
        ({}, (None, None)),  # none: none made up
    ],
)
async def test_self_invocation(sent: dict[str, str], received: tuple[str | None, str | None]) -> None:
    app, dapr, seen = recording_app()
    async with DaprTest(app) as test:
        answer = await test.client.get("/v1.0/invoke/orders/method/hello", headers=sent)
        assert answer.status_code == 200
        own = await test.client.get("/v1.0/invoke/orders/method/own-trace", headers=sent)
        await dapr.invoke("orders", "hello", headers=sent)
    api, in_code = seen
    for request in (api, in_code):
        assert (request["headers"].get("traceparent"), request["headers"].get("tracestate")) == received
    # The answer carries the caller's trace, unless the app answered with one of its own.
    assert answer.headers.get("traceparent") == received[0]
    assert answer.headers.get("tracestate") == received[1]
    assert own.headers["traceparent"] == "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


async def test_network_targets_get_the_trace(tmp_path: Path) -> None:
    upstream = FastAPI()
    seen: list[dict[str, str]] = []

    @upstream.get("/{path:path}")
    async def anything(request: Request) -> dict[str, str]:
        seen.append(dict(request.headers))
        return {}

    async with serve(upstream) as url:
        folder = tmp_path / "resources"
        folder.mkdir()
        (folder / "endpoint.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: svc}\n"
            f"spec: {{baseUrl: '{url}'}}\n"
        )
        app = FastAPI()
        dapr = Dapr(
            app,
            app_id="orders",
            resources_path=folder,
            invocation=InvocationSettings(
                apps={"billing": url}, allowed_urls=["127.0.0.1"], allow_private_addresses=True
            ),
        )
        async with DaprTest(app) as test:
            targets = ["billing", "svc", url]
            for target in targets:
                path = f"/v1.0/invoke/{target}/method/x"
                answer = await test.client.get(path, headers={"traceparent": TP, "tracestate": TS})
                assert answer.status_code == 200
                assert answer.headers["traceparent"] == TP  # the upstream sent none: the caller's
                await test.client.get(path, headers={"traceparent": "00-bad", "tracestate": TS})
                await dapr.invoke(target, "x", headers={"traceparent": TP})
    assert len(seen) == 9
    for good, bad, in_code in zip(seen[0::3], seen[1::3], seen[2::3], strict=True):
        assert (good["traceparent"], good["tracestate"]) == (TP, TS)
        assert "traceparent" not in bad
        assert "tracestate" not in bad
        assert in_code["traceparent"] == TP
        assert "tracestate" not in in_code


async def test_health_answers_carry_no_trace() -> None:
    app, _, _ = recording_app()
    async with DaprTest(app) as test:
        answer = await test.client.get("/v1.0/healthz", headers={"traceparent": TP})
        metadata = await test.client.get("/v1.0/metadata", headers={"traceparent": TP})
    assert answer.status_code == 204
    assert "traceparent" not in answer.headers
    assert metadata.headers["traceparent"] == TP
    assert json.loads(metadata.text)["id"] == "orders"


async def test_bulk_publish_carries_the_trace() -> None:
    app, _, seen = recording_app()
    async with DaprTest(app) as test:
        entries = [{"entryId": "1", "event": {"n": 1}, "contentType": "application/json"}]
        answer = await test.client.post(
            "/v1.0-alpha1/publish/bulk/pubsub/orders", json=entries, headers={"traceparent": TP}
        )
        assert answer.status_code == 204
        await test.wait_for_delivery(topic="orders")
    assert seen[0]["headers"]["traceparent"] == TP
