"""Bulk publish: `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` and `Dapr.publish_bulk`
(reference 1.8)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastapi_dapr import BulkPublishEntry, CloudEvent, Dapr, DaprAPIError, FailedEntry
from fastapi_dapr.testing import DaprTest, DaprTestClient

from .servers import serve

BULK = "/v1.0-alpha1/publish/bulk/pubsub/orders"


def collecting_app() -> tuple[FastAPI, Dapr, list[CloudEvent[Any]]]:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", api_token="")
    got: list[CloudEvent[Any]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Any]) -> None:
        got.append(event)

    return app, dapr, got


def wait_for(client: DaprTestClient, count: int) -> None:
    for _ in range(count):
        client.wait_for_delivery(topic="orders")


def test_every_kind_of_entry_is_published_and_delivered() -> None:
    app, _, got = collecting_app()
    entries = [
        {"entryId": "json", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "text", "event": "hello", "contentType": "text/plain"},
        {"entryId": "bytes", "event": base64.b64encode(b"\x00\x01").decode(),
         "contentType": "application/octet-stream"},
        # The official Node SDK spells it entryID.
        {"entryID": "node", "event": {"n": 2}, "contentType": "application/json"},
    ]  # fmt: skip
    with DaprTestClient(app) as client:
        answer = client.post(BULK, json=entries)
        wait_for(client, 4)
    assert (answer.status_code, answer.content) == (204, b"")
    by_type = {event.datacontenttype: event.data for event in got}
    assert by_type["text/plain"] == "hello"
    assert by_type["application/octet-stream"] == b"\x00\x01"  # decoded from the base64 given
    assert sorted(e.data["n"] for e in got if e.datacontenttype == "application/json") == [1, 2]


def test_mixed_good_and_bad_entries_answer_the_failed_ones_in_daprds_shape() -> None:
    app, _, got = collecting_app()
    entries = [
        {"entryId": "a", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "bad", "event": {"n": 2}, "contentType": "application/json",
         "metadata": {"ttlInSeconds": "soon"}},
        {"entryId": "c", "event": {"n": 3}, "contentType": "application/json"},
    ]  # fmt: skip
    with DaprTestClient(app) as client:
        answer = client.post(BULK, json=entries)
        wait_for(client, 2)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["failedEntries", "errorCode"]  # daprd's struct order, on the wire
    assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert [entry["entryId"] for entry in body["failedEntries"]] == ["bad"]
    assert "ttlInSeconds value must be a valid integer" in body["failedEntries"][0]["error"]
    assert answer.headers["metadata.responseData"] == answer.text
    assert sorted(event.data["n"] for event in got) == [1, 3]  # the good ones went out


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ({"entryId": "a"}, "DAPR_PUBSUB_UNMARSHAL_EVENTS"),  # not an array
        ([{"event": 1, "contentType": "application/json"}], "DAPR_PUBSUB_MARSHAL_EVENTS"),
        (
            [
                {"entryId": "x", "event": 1, "contentType": "application/json"},
                {"entryId": "x", "event": 2, "contentType": "application/json"},
            ],
            "DAPR_PUBSUB_MARSHAL_EVENTS",
        ),
        ([{"entryId": "a", "event": {"n": 1}, "contentType": "text/plain"}], "DAPR_PUBSUB_MARSHAL_ENVELOPE"),
        ([{"entryId": "a", "event": {"n": 1}}], "DAPR_PUBSUB_MARSHAL_ENVELOPE"),  # no contentType
    ],
)
def test_a_malformed_request_is_400_and_publishes_nothing(entries: Any, reason: str) -> None:
    app, _, got = collecting_app()
    with DaprTestClient(app) as client:
        answer = client.post(BULK, json=entries)
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == "ERR_PUBSUB_EVENTS_SER"
    (info,) = [d for d in answer.json()["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == reason
    assert got == []


def test_request_metadata_reaches_only_the_entries_that_have_their_own() -> None:
    app, _, got = collecting_app()
    entries = [
        {"entryId": "own", "event": {"n": 1}, "contentType": "application/json", "metadata": {}},
        {"entryId": "none", "event": {"n": 2}, "contentType": "application/json"},
    ]
    with DaprTestClient(app) as client:
        assert client.post(BULK + "?metadata.ttlInSeconds=60", json=entries).status_code == 204
        wait_for(client, 2)
    expiration = {event.data["n"]: event.expiration for event in got}
    assert expiration[1] is not None  # merged into the entry's own metadata (reference 1.8)
    assert expiration[2] is None


async def test_publish_bulk_in_code_takes_data_and_entries() -> None:
    app, dapr, got = collecting_app()
    async with DaprTest(app) as test:
        failed = await dapr.publish_bulk(
            "pubsub",
            "orders",
            [
                {"n": 1},
                "plain text",
                BulkPublishEntry(b"\x00", entry_id="raw"),
                BulkPublishEntry({"n": 2}, metadata={"ttlInSeconds": "soon"}),
            ],
        )
        for _ in range(3):
            await test.wait_for_delivery(topic="orders")
    assert failed == [FailedEntry("3", failed[0].error)]  # the entry id is its position
    assert "ttlInSeconds" in failed[0].error
    assert sorted(str(event.datacontenttype) for event in got) == [
        "application/json",
        "application/octet-stream",
        "text/plain",
    ]


async def test_publish_bulk_in_code_raises_what_refuses_the_whole_request() -> None:
    app, dapr, _ = collecting_app()
    async with DaprTest(app):
        with pytest.raises(DaprAPIError) as refused:
            await dapr.publish_bulk("nope", "orders", [{"n": 1}])
    assert (refused.value.status_code, refused.value.error_code) == (404, "ERR_PUBSUB_NOT_FOUND")


async def test_publish_bulk_under_daprd_posts_its_bulk_api() -> None:
    received: list[Any] = []
    daprd = FastAPI()

    @daprd.post("/v1.0-alpha1/publish/bulk/{pubsub}/{topic}")
    async def bulk(pubsub: str, topic: str, request: Request) -> Response:
        entries = json.loads(await request.body())
        received.append((pubsub, topic, dict(request.query_params), entries))
        failed = [{"entryId": entries[1]["entryId"], "error": "broker said no"}]
        return JSONResponse({"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"}, 500)

    async with serve(daprd) as url:
        app = FastAPI()
        dapr = Dapr(app, mode="remote", dapr_http_endpoint=url)
        async with app.router.lifespan_context(app):  # its end closes the client of daprd
            failed = await dapr.publish_bulk(
                "pubsub", "orders", [{"n": 1}, BulkPublishEntry("hi", entry_id="e2")], metadata={"k": "v"}
            )
    assert failed == [FailedEntry("e2", "broker said no")]
    ((pubsub, topic, query, entries),) = received
    assert (pubsub, topic, query) == ("pubsub", "orders", {"metadata.k": "v"})
    assert entries == [
        {"entryId": "0", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "e2", "event": "hi", "contentType": "text/plain"},
    ]
