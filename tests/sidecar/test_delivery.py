"""Deliveries posted to handler routes exactly as daprd posts them (reference 3.1-3.3, 3.6)."""

from __future__ import annotations

import base64
import datetime
import json
import logging
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import PlainTextResponse

from fastapi_dapr import (
    DROP,
    RETRY,
    SUCCESS,
    CloudEvent,
    Dapr,
    DaprRouter,
    HandlerSignatureError,
    Status,
)

from ..daprd_wire import ZERO_TRACEPARENT, delivery_headers, envelope, go_json, raw_envelope


class Order(BaseModel):
    order_id: str
    quantity: int


class Collision(BaseModel):
    """A payload whose fields share names with envelope attributes."""

    id: int
    type: str
    source: list[str]


def tenant(x_tenant: Annotated[str, Header()]) -> str:
    return x_tenant.upper()


def deliver(client: TestClient, path: str, event: dict[str, Any], **headers: Any) -> Any:
    return client.post(path, content=go_json(event), headers=delivery_headers(**headers))


@pytest.fixture
def app() -> FastAPI:
    return FastAPI()


@pytest.fixture
def dapr(app: FastAPI) -> Dapr:
    return Dapr(app, app_id="checkout", app_api_token="")


def test_typed_cloudevent_gets_every_attribute(app: FastAPI, dapr: Dapr) -> None:
    received: list[CloudEvent[Order]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> None:
        received.append(event)

    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = envelope(
        {"order_id": "o-1", "quantity": 2},
        traceparent=traceparent,
        subject="sub-1",
        myextension="ext-value",
    )
    answer = deliver(TestClient(app), "/events/pubsub/orders", event, traceparent=traceparent)
    assert answer.status_code == 200
    assert answer.json() == {"status": "SUCCESS"}
    (got,) = received
    assert got.data == Order(order_id="o-1", quantity=2)
    assert got.id == event["id"]
    assert got.source == "checkout"
    assert got.type == "com.dapr.event.sent"
    assert got.specversion == "1.0"
    assert got.datacontenttype == "application/json"
    assert got.subject == "sub-1"
    assert got.time == datetime.datetime(2026, 8, 21, 12, tzinfo=datetime.timezone.utc)
    assert got.topic == "orders"
    assert got.pubsubname == "pubsub"
    assert got.traceparent == traceparent
    assert got.traceid == traceparent
    assert got.tracestate == ""
    assert got.extensions == {"myextension": "ext-value"}


def test_plain_model_parameter_gets_the_data(app: FastAPI, dapr: Dapr) -> None:
    received: list[Order] = []

    @dapr.subscribe("pubsub", "orders")
    def on_order(order: Order) -> None:  # a sync handler runs in the thread pool
        received.append(order)

    answer = deliver(TestClient(app), "/events/pubsub/orders", envelope({"order_id": "a", "quantity": 1}))
    assert answer.json() == {"status": "SUCCESS"}
    assert received == [Order(order_id="a", quantity=1)]


def test_model_fields_named_like_envelope_attributes_validate_against_data(app: FastAPI, dapr: Dapr) -> None:
    received: list[Any] = []

    @dapr.subscribe("pubsub", "collide")
    async def typed(event: CloudEvent[Collision]) -> None:
        received.append(event)

    @dapr.subscribe("pubsub", "collide-plain")
    async def plain(payload: Collision) -> None:
        received.append(payload)

    client = TestClient(app)
    payload = {"id": 7, "type": "widget", "source": ["factory"]}
    assert deliver(client, "/events/pubsub/collide", envelope(payload)).json() == {"status": "SUCCESS"}
    assert deliver(client, "/events/pubsub/collide-plain", envelope(payload)).json() == {"status": "SUCCESS"}
    event, data = received
    assert event.data == Collision(id=7, type="widget", source=["factory"])
    assert event.type == "com.dapr.event.sent"  # the envelope's, not the payload's
    assert data == Collision(id=7, type="widget", source=["factory"])

    # An envelope whose own id/type/source would fit is not mistaken for the data.
    answer = deliver(client, "/events/pubsub/collide", envelope({"unrelated": True}))
    assert answer.json() == {"status": "DROP"}


def test_payload_that_does_not_validate_is_dropped_with_a_log_line(
    app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Order] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
    async def on_order(order: Order) -> None:
        calls.append(order)

    event = envelope({"order_id": "o-1", "quantity": "many"})
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        answer = deliver(TestClient(app), "/events/pubsub/orders", event)
    # 200 + DROP: daprd sends it to the dead-letter topic instead of retrying it forever.
    assert answer.status_code == 200
    assert answer.json() == {"status": "DROP"}
    assert calls == []
    (record,) = caplog.records
    assert event["id"] in record.getMessage()
    assert "data.quantity" in record.getMessage()
    assert "on_order" in record.getMessage()


def test_body_that_is_not_json_is_dropped(app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None: ...

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        answer = TestClient(app).post(
            "/events/pubsub/orders", content=b"{not json", headers=delivery_headers()
        )
    assert answer.json() == {"status": "DROP"}
    assert "<unparseable body>" in caplog.text


@pytest.mark.parametrize(
    ("outcome", "status_code", "body"),
    [
        (None, 200, {"status": "SUCCESS"}),
        (SUCCESS, 200, {"status": "SUCCESS"}),
        (RETRY, 200, {"status": "RETRY"}),
        (DROP, 200, {"status": "DROP"}),
        ("RETRY", 200, {"status": "RETRY"}),
        ({"status": "RETRY", "why": "busy"}, 200, {"status": "RETRY", "why": "busy"}),
    ],
)
def test_return_values_give_daprd_statuses(
    app: FastAPI, dapr: Dapr, outcome: Any, status_code: int, body: Any
) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> Any:
        return outcome

    answer = deliver(TestClient(app), "/events/pubsub/orders", envelope({"a": 1}))
    assert answer.status_code == status_code
    assert answer.json() == body
    assert answer.headers["content-type"] == "application/json"


def test_status_strings_are_exactly_what_daprd_matches() -> None:
    assert [s.value for s in Status] == ["SUCCESS", "RETRY", "DROP"]
    assert SUCCESS.body == b'{"status":"SUCCESS"}'
    assert str(RETRY) == "RETRY"


def test_response_is_passed_through_untouched(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> PlainTextResponse:
        return PlainTextResponse("gone", status_code=404, headers={"x-why": "test"})

    answer = deliver(TestClient(app), "/events/pubsub/orders", envelope(1))
    assert answer.status_code == 404
    assert answer.text == "gone"
    assert answer.headers["x-why"] == "test"


def test_exception_answers_500_retry_and_logs_traceback(
    app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture
) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        raise ValueError("database down")

    event = envelope({"a": 1})
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"):
        answer = deliver(TestClient(app), "/events/pubsub/orders", event)
    assert answer.status_code == 500
    assert answer.json() == {"status": "RETRY"}
    (record,) = caplog.records
    assert event["id"] in record.getMessage()
    assert record.exc_info is not None
    assert "database down" in caplog.text


def test_sync_handler_exception_is_retry_too(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders")
    def on_order(event: CloudEvent) -> None:
        raise RuntimeError("nope")

    answer = deliver(TestClient(app), "/events/pubsub/orders", envelope({"a": 1}))
    assert (answer.status_code, answer.json()) == (500, {"status": "RETRY"})


def test_http_exception_is_the_handlers_choice(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        raise HTTPException(status_code=404, detail="unknown order")  # daprd: drop

    answer = deliver(TestClient(app), "/events/pubsub/orders", envelope({"a": 1}))
    assert answer.status_code == 404
    assert answer.json() == {"detail": "unknown order"}


def test_dependencies_headers_request_and_background_tasks(app: FastAPI, dapr: Dapr) -> None:
    seen: dict[str, Any] = {}

    async def record(value: str) -> None:
        seen["background"] = value

    @dapr.subscribe("pubsub", "orders")
    async def on_order(
        request: Request,
        background: BackgroundTasks,
        order: Order,
        who: Annotated[str, Depends(tenant)],
        pubsubname: str = Header(),
        traceparent: str | None = Header(default=None),
    ) -> None:
        seen["path"] = request.url.path
        seen["order"] = order
        seen["who"] = who
        seen["pubsubname"] = pubsubname
        seen["traceparent"] = traceparent
        background.add_task(record, order.order_id)

    answer = deliver(
        TestClient(app),
        "/events/pubsub/orders",
        envelope({"order_id": "o-9", "quantity": 1}),
        metadata={"X-Tenant": "acme"},
    )
    assert answer.json() == {"status": "SUCCESS"}
    assert seen == {
        "path": "/events/pubsub/orders",
        "order": Order(order_id="o-9", quantity=1),
        "who": "ACME",
        "pubsubname": "pubsub",
        "traceparent": ZERO_TRACEPARENT,
        "background": "o-9",
    }


def test_dependency_overrides_apply(app: FastAPI, dapr: Dapr) -> None:
    def repository() -> str:
        return "real"

    seen: list[str] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent, repo: str = Depends(repository)) -> None:
        seen.append(repo)

    app.dependency_overrides[repository] = lambda: "fake"
    deliver(TestClient(app), "/events/pubsub/orders", envelope(1))
    assert seen == ["fake"]


def test_handler_without_event_parameter(app: FastAPI, dapr: Dapr) -> None:
    calls: list[int] = []

    @dapr.subscribe("pubsub", "ping")
    async def ping() -> None:
        calls.append(1)

    assert deliver(TestClient(app), "/events/pubsub/ping", envelope(None)).json() == {"status": "SUCCESS"}
    assert calls == [1]


def test_untyped_cloudevent_and_unannotated_parameter_take_any_data(app: FastAPI, dapr: Dapr) -> None:
    seen: list[Any] = []

    @dapr.subscribe("pubsub", "a")
    async def a(event: CloudEvent) -> None:
        seen.append(event.data)

    @dapr.subscribe("pubsub", "b")
    async def b(data):  # type: ignore[no-untyped-def]
        seen.append(data)

    client = TestClient(app)
    deliver(client, "/events/pubsub/a", envelope({"x": [1, 2]}))
    deliver(client, "/events/pubsub/b", envelope("text", content_type="text/plain"))
    assert seen == [{"x": [1, 2]}, "text"]


def test_raw_payload_subscription_gets_decoded_bytes(app: FastAPI, dapr: Dapr) -> None:
    seen: list[Any] = []

    @dapr.subscribe("pubsub", "raw", raw_payload=True)
    async def raw(event: CloudEvent[bytes]) -> None:
        seen.append((event.data, event.datacontenttype, event.source))

    @dapr.subscribe("pubsub", "raw-json", raw_payload=True)
    async def raw_json(order: Order) -> None:
        seen.append(order)

    client = TestClient(app)
    payload = b"\x00\xffbinary"
    assert deliver(client, "/events/pubsub/raw", raw_envelope(payload)).json() == {"status": "SUCCESS"}
    assert deliver(
        client, "/events/pubsub/raw-json", raw_envelope(b'{"order_id":"r","quantity":3}')
    ).json() == {"status": "SUCCESS"}
    assert seen == [
        (payload, "application/octet-stream", "Dapr"),
        Order(order_id="r", quantity=3),
    ]


def test_binary_data_published_as_octet_stream(app: FastAPI, dapr: Dapr) -> None:
    seen: list[bytes] = []

    @dapr.subscribe("pubsub", "blobs")
    async def blob(data: bytes) -> None:
        seen.append(data)

    event = envelope(b"\x01\x02\x03", content_type="application/octet-stream")
    assert "data" not in event
    deliver(TestClient(app), "/events/pubsub/blobs", event)
    assert seen == [b"\x01\x02\x03"]


def test_text_data_as_bytes_is_utf8(app: FastAPI, dapr: Dapr) -> None:
    seen: list[bytes] = []

    @dapr.subscribe("pubsub", "text")
    async def text(data: bytes) -> None:
        seen.append(data)

    deliver(TestClient(app), "/events/pubsub/text", envelope("héllo", content_type="text/plain"))
    assert seen == ["héllo".encode()]


def test_json_data_that_travelled_as_a_string_is_parsed_for_a_model(app: FastAPI, dapr: Dapr) -> None:
    # daprd keeps an unparseable application/json body as a string, and text
    # publishers put JSON in strings: a model handler still gets its model.
    seen: list[Order] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None:
        seen.append(order)

    event = envelope('{"order_id": "s", "quantity": 4}', content_type="text/plain")
    assert deliver(TestClient(app), "/events/pubsub/orders", event).json() == {"status": "SUCCESS"}
    assert seen == [Order(order_id="s", quantity=4)]


def test_binary_mode_cloudevent_from_ce_headers(app: FastAPI, dapr: Dapr) -> None:
    seen: list[CloudEvent[Order]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> None:
        seen.append(event)

    answer = TestClient(app).post(
        "/events/pubsub/orders",
        content=b'{"order_id": "b", "quantity": 5}',
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "bin-1",
            "ce-source": "/knative",
            "ce-type": "order.created",
            "ce-time": "2026-01-02T03:04:05Z",
            "ce-tenant": "a%20b",
        },
    )
    assert answer.json() == {"status": "SUCCESS"}
    (event,) = seen
    assert (event.id, event.source, event.type) == ("bin-1", "/knative", "order.created")
    assert event.datacontenttype == "application/json"
    assert event.data == Order(order_id="b", quantity=5)
    assert event.time == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert event.extensions == {"tenant": "a b"}


def test_binary_mode_with_binary_data(app: FastAPI, dapr: Dapr) -> None:
    seen: list[bytes] = []

    @dapr.subscribe("pubsub", "blobs")
    async def blob(data: bytes) -> None:
        seen.append(data)

    TestClient(app).post(
        "/events/pubsub/blobs",
        content=b"\x00\x01\xfe",
        headers={"content-type": "application/octet-stream", "ce-specversion": "1.0", "ce-id": "1"},
    )
    assert seen == [b"\x00\x01\xfe"]


def test_plain_json_body_that_is_not_a_cloudevent_is_the_data(app: FastAPI, dapr: Dapr) -> None:
    seen: list[Order] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None:
        seen.append(order)

    TestClient(app).post("/events/pubsub/orders", json={"order_id": "p", "quantity": 1})
    assert seen == [Order(order_id="p", quantity=1)]


def test_malformed_time_does_not_poison_the_message(app: FastAPI, dapr: Dapr) -> None:
    seen: list[CloudEvent[int]] = []

    @dapr.subscribe("pubsub", "t")
    async def handler(event: CloudEvent[int]) -> None:
        seen.append(event)

    deliver(TestClient(app), "/events/pubsub/t", envelope(5, time="yesterday"))
    assert seen[0].time is None
    assert seen[0].data == 5


def test_missing_data_for_a_model_is_dropped(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order) -> None: ...

    event = envelope(None)
    del event["data"]
    assert deliver(TestClient(app), "/events/pubsub/orders", event).json() == {"status": "DROP"}


def test_app_api_token_is_required_when_set(app: FastAPI) -> None:
    dapr = Dapr(app, app_api_token="s3cret")
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        calls.append(1)

    client = TestClient(app)
    for token in (None, "wrong", "s3cre", "s3cret "):
        answer = deliver(client, "/events/pubsub/orders", envelope(1), token=token)
        assert answer.status_code == 401
        assert answer.json()["message"] == "invalid api token"
        assert "errorCode" in answer.json()
    assert client.get("/dapr/subscribe").status_code == 401
    assert calls == []
    answer = deliver(client, "/events/pubsub/orders", envelope(1), token="s3cret")
    assert answer.json() == {"status": "SUCCESS"}
    assert client.get("/dapr/subscribe", headers={"dapr-api-token": "s3cret"}).status_code == 200
    assert calls == [1]


def test_app_api_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_API_TOKEN", "from-env")
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    client = TestClient(app)
    assert deliver(client, "/events/pubsub/orders", envelope(1)).status_code == 401
    assert deliver(client, "/events/pubsub/orders", envelope(1), token="from-env").status_code == 200


def test_router_without_dapr_instance_reads_token_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_API_TOKEN", "t")
    app = FastAPI()
    router = DaprRouter()

    @router.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    app.include_router(router)
    client = TestClient(app)
    assert deliver(client, "/events/pubsub/orders", envelope(1)).status_code == 401
    assert deliver(client, "/events/pubsub/orders", envelope(1), token="t").status_code == 200


def test_two_event_parameters_are_refused(dapr: Dapr) -> None:
    with pytest.raises(HandlerSignatureError, match="'a' and 'b' would receive the event"):

        @dapr.subscribe("pubsub", "orders")
        async def handler(a: Order, b: Order) -> None: ...


def test_body_parameters_are_refused(dapr: Dapr) -> None:
    from fastapi import Body

    with pytest.raises(HandlerSignatureError, match="Body"):

        @dapr.subscribe("pubsub", "orders")
        async def handler(a: Annotated[Order, Body()]) -> None: ...


def test_string_annotations_resolve_in_the_handlers_module(app: FastAPI, dapr: Dapr) -> None:
    # This module uses `from __future__ import annotations`: every annotation
    # here is a string that must be resolved against this module, not ours.
    seen: list[Order] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(order: Order, x: str | None = Header(default=None)) -> None:
        seen.append(order)

    deliver(TestClient(app), "/events/pubsub/orders", envelope({"order_id": "f", "quantity": 0}))
    assert seen == [Order(order_id="f", quantity=0)]


def test_cloudevent_model_decodes_base64_for_bytes() -> None:
    event = CloudEvent[bytes].model_validate(
        {"specversion": "1.0", "data_base64": base64.b64encode(b"\x00a").decode()}
    )
    assert event.data == b"\x00a"
    assert CloudEvent[bytes].model_validate({"data": "x"}).data == b"x"
    assert CloudEvent[bytes].model_validate({"data": {"a": 1}}).data == b'{"a":1}'
    assert CloudEvent[str].model_validate({"data_base64": "aGk="}).data == "hi"
    assert CloudEvent.model_validate({"data_base64": "aGk="}).data == b"hi"


def test_cloudevent_model_json_round_trip() -> None:
    event = CloudEvent[Order].model_validate_json(
        json.dumps(envelope({"order_id": "j", "quantity": 1}, ext="x"))
    )
    assert event.data.quantity == 1
    dumped = json.loads(event.model_dump_json(exclude_none=True))
    assert dumped["data"] == {"order_id": "j", "quantity": 1}
    assert dumped["ext"] == "x"
