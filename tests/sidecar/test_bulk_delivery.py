"""Bulk deliveries: daprd's bulk envelope in, one status per entry out (reference 3.6)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import Response

from fastapi_dapr import DROP, RETRY, SUCCESS, BulkEntry, Dapr, HandlerSignatureError

from ..daprd_wire import bulk_body, envelope


class Order(BaseModel):
    order_id: str
    quantity: int


def post_bulk(app: FastAPI, path: str, body: bytes) -> Any:
    return TestClient(app).post(
        path,
        content=body,
        headers={"content-type": "application/json", "pubsubname": "pubsub"},
    )


def statuses(answer: Any) -> dict[str, str]:
    assert answer.status_code == 200
    return {item["entryId"]: item["status"] for item in answer.json()["statuses"]}


def orders(n: int) -> list[tuple[str, Any]]:
    return [(f"e{i}", envelope({"order_id": f"o{i}", "quantity": i})) for i in range(n)]


@pytest.fixture
def app() -> FastAPI:
    return FastAPI()


@pytest.fixture
def dapr(app: FastAPI) -> Dapr:
    return Dapr(app, app_api_token="")


def test_entries_are_typed_and_none_means_success_for_all(app: FastAPI, dapr: Dapr) -> None:
    received: list[BulkEntry[Order]] = []

    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> None:
        received.extend(entries)

    answer = post_bulk(app, "/events/pubsub/orders", bulk_body(orders(3)))
    assert answer.json() == {
        "statuses": [
            {"entryId": "e0", "status": "SUCCESS"},
            {"entryId": "e1", "status": "SUCCESS"},
            {"entryId": "e2", "status": "SUCCESS"},
        ]
    }
    assert [e.entry_id for e in received] == ["e0", "e1", "e2"]
    assert received[2].event.data == Order(order_id="o2", quantity=2)
    assert received[2].event.topic == "orders"
    assert received[0].metadata == {"pubsubName": "pubsub"}
    assert received[0].content_type == "application/cloudevents+json"


@pytest.mark.parametrize("outcome", [SUCCESS, RETRY, DROP])
def test_one_status_for_the_whole_batch(app: FastAPI, dapr: Dapr, outcome: Any) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> Any:
        return outcome

    assert set(statuses(post_bulk(app, "/events/pubsub/orders", bulk_body(orders(2)))).values()) == {
        outcome.value
    }


def test_status_per_entry_and_missing_entries_are_retried(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> dict[str, Any]:
        return {"e0": SUCCESS, "e1": "DROP", "e2": "success", "unknown": SUCCESS}

    assert statuses(post_bulk(app, "/events/pubsub/orders", bulk_body(orders(4)))) == {
        "e0": "SUCCESS",
        "e1": "DROP",
        "e2": "RETRY",  # lower case is not a status, as in daprd
        "e3": "RETRY",  # missing from the answer: daprd retries it
    }


def test_invalid_entries_are_dropped_and_the_rest_delivered(
    app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[str] = []

    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> None:
        received.extend(e.entry_id for e in entries)

    batch = [*orders(2), ("bad", envelope({"order_id": "x", "quantity": "lots"}))]
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        answer = post_bulk(app, "/events/pubsub/orders", bulk_body(batch))
    assert statuses(answer) == {"e0": "SUCCESS", "e1": "SUCCESS", "bad": "DROP"}
    assert received == ["e0", "e1"]
    assert "bad" in caplog.text
    assert "quantity" in caplog.text


def test_all_entries_invalid_does_not_call_the_handler(app: FastAPI, dapr: Dapr) -> None:
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> None:
        calls.append(len(entries))

    answer = post_bulk(app, "/events/pubsub/orders", bulk_body([("x", envelope("nope"))]))
    assert statuses(answer) == {"x": "DROP"}
    assert calls == []


def test_exception_retries_the_entries_the_handler_got(
    app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture
) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> None:
        raise RuntimeError("broker of the broker is down")

    batch = [*orders(2), ("bad", envelope(None))]
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"):
        answer = post_bulk(app, "/events/pubsub/orders", bulk_body(batch))
    assert statuses(answer) == {"e0": "RETRY", "e1": "RETRY", "bad": "DROP"}
    assert "broker of the broker is down" in caplog.text


def test_raw_payload_bulk_entries(app: FastAPI, dapr: Dapr) -> None:
    received: list[bytes] = []

    @dapr.subscribe("pubsub", "raw", bulk=True, raw_payload=True)
    def on_raw(entries: list[BulkEntry[bytes]]) -> None:
        received.extend(e.event.data for e in entries)

    body = bulk_body(
        [("r1", base64.b64encode(b"\x00one").decode()), ("r2", base64.b64encode(b"two").decode())],
        topic="raw",
        content_type="application/octet-stream",
    )
    assert statuses(post_bulk(app, "/events/pubsub/raw", body)) == {
        "r1": "SUCCESS",
        "r2": "SUCCESS",
    }
    assert received == [b"\x00one", b"two"]


def test_response_returned_by_bulk_handler_is_passed_through(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> Response:
        return Response(status_code=404)

    assert post_bulk(app, "/events/pubsub/orders", bulk_body(orders(1))).status_code == 404


def test_unsupported_return_value_retries_the_batch(
    app: FastAPI, dapr: Dapr, caplog: pytest.LogCaptureFixture
) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> list[str]:
        return ["SUCCESS"]

    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"):
        answer = post_bulk(app, "/events/pubsub/orders", bulk_body(orders(1)))
    assert statuses(answer) == {"e0": "RETRY"}
    assert "returned 'list'" in caplog.text


def test_malformed_bulk_envelope_is_a_400_in_dapr_error_format(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> None: ...

    for body in (b"[1,2]", b"{", b'{"entries": 5}'):
        answer = post_bulk(app, "/events/pubsub/orders", body)
        assert answer.status_code == 400
        assert set(answer.json()) == {"errorCode", "message"}


def test_bulk_handler_signature_is_checked(dapr: Dapr) -> None:
    with pytest.raises(HandlerSignatureError, match="list\\[BulkEntry\\[T\\]\\]"):

        @dapr.subscribe("pubsub", "orders", bulk=True)
        async def wrong(order: Order) -> None: ...

    with pytest.raises(HandlerSignatureError, match="subscribe with bulk=True"):

        @dapr.subscribe("pubsub", "other")
        async def not_bulk(entries: list[BulkEntry[Order]]) -> None: ...


def test_handler_statuses_keep_the_drops_of_invalid_entries(app: FastAPI, dapr: Dapr) -> None:
    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders(entries: list[BulkEntry[Order]]) -> dict[str, Any]:
        return {"statuses": [{"entryId": e.entry_id, "status": "SUCCESS"} for e in entries]}

    batch = [*orders(1), ("bad", envelope({"order_id": "x", "quantity": "lots"}))]
    assert statuses(post_bulk(app, "/events/pubsub/orders", bulk_body(batch))) == {
        "e0": "SUCCESS",
        "bad": "DROP",
    }
