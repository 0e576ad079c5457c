"""Bulk publish: `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` and `Dapr.publish_bulk`
(reference 1.8)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastapi_dapr import BulkPublishEntry, CloudEvent, Dapr, DaprAPIError, FailedEntry
from fastapi_dapr.testing import DaprTest, DaprTestClient

from ..servers import serve

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
    assert "ttl value must be a valid integer: actual is 'soon'" in body["failedEntries"][0]["error"]
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


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        (
            [{"entryId": "x", "event": 1, "contentType": "application/json"}, {"event": 2}],
            "error: entryId is duplicated or not present for entry: the entry at index 1 has no entryId",
        ),
        (
            [
                {"entryId": "x", "event": 1, "contentType": "application/json"},
                {"entryId": "y", "event": 2, "contentType": "application/json"},
                {"entryId": "x", "event": 3, "contentType": "application/json"},
            ],
            "error: entryId is duplicated or not present for entry: "
            "the entry at index 2 has entryId 'x', as the entry at index 0 does",
        ),
        (
            [
                {"entryId": "x", "event": 1, "contentType": "application/json"},
                {"entryId": "order-7", "event": {"n": 1}, "contentType": "text/plain"},
            ],
            "pubsub pubsub: entry order-7: error: mismatch between contentType and event",
        ),
    ],
)
def test_a_refused_entry_is_named(entries: Any, named: str) -> None:
    app, _, got = collecting_app()
    with DaprTestClient(app) as client:
        answer = client.post(BULK, json=entries)
    assert answer.status_code == 400
    assert answer.json()["message"].endswith(named)
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
    assert "ttl value must be a valid integer" in failed[0].error
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


def test_a_bulk_over_the_entry_limit_is_400_and_publishes_nothing() -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="", max_bulk_entries=3)
    entries = [{"entryId": str(n), "event": {"n": n}, "contentType": "application/json"} for n in range(4)]
    with DaprTestClient(app) as client:
        broker: Any = dapr.backend.running().brokers["pubsub"]
        client.portal.call(broker.subscribe, "orders")  # type: ignore[union-attr]  # keeps what comes
        answer = client.post(BULK, json=entries)
        assert answer.status_code == 400
        body = answer.json()
        assert body["errorCode"] == "ERR_PUBSUB_EVENTS_SER"
        assert body["message"] == (
            "error when unmarshaling the request for topic orders pubsub pubsub: "
            "4 entries, more than the limit of 3 a request"
        )
        assert body["details"][1]["reason"] == "DAPR_PUBSUB_UNMARSHAL_EVENTS"

        async def in_code() -> None:
            with pytest.raises(DaprAPIError) as refused:
                await dapr.publish_bulk("pubsub", "orders", [{"n": n} for n in range(4)])
            assert (refused.value.status_code, refused.value.error_code) == (400, "ERR_PUBSUB_EVENTS_SER")

        client.portal.call(in_code)  # type: ignore[union-attr]
        assert broker.queued() == 0
        assert client.post(BULK, json=entries[:3]).status_code == 204
        assert broker.queued() == 3


def test_the_entry_limit_is_set_on_the_command_line_and_must_be_positive() -> None:
    from fastapi_dapr.sidecar.cli import _options, parser
    from fastapi_dapr.sidecar.standalone import StandaloneSidecar

    def fail(message: str) -> Any:
        raise AssertionError(message)

    arguments = parser().parse_args(["sidecar", "--app-id", "x", "--max-bulk-entries", "5"])
    assert StandaloneSidecar(_options(arguments, fail)).api.max_bulk_entries == 5
    defaults = parser().parse_args(["sidecar", "--app-id", "x"])
    assert StandaloneSidecar(_options(defaults, fail)).api.max_bulk_entries == 10_000
    with pytest.raises(SystemExit):
        parser().parse_args(["sidecar", "--app-id", "x", "--max-bulk-entries", "0"])
    with pytest.raises(ValueError, match="max_bulk_entries must be at least 1"):
        Dapr(FastAPI(), max_bulk_entries=0)


async def test_other_requests_are_answered_while_a_large_bulk_is_published() -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    entries = [{"entryId": str(n), "event": {"n": n}, "contentType": "application/json"} for n in range(5000)]
    async with DaprTest(app) as test:
        broker: Any = dapr.backend.running().brokers["pubsub"]
        consumer = await broker.subscribe("orders")  # keeps what is published; only this test reads it
        bulk = asyncio.ensure_future(test.client.post(BULK, json=entries))
        await consumer.receive(1)  # the first entry is published: the bulk is under way
        health = await test.client.get("/v1.0/healthz")
        published_by_then = broker.queued() + 1
        answer = await bulk
        published = broker.queued() + 1
    assert health.status_code == 204
    # Answered between two turns of the bulk, not once it was over.
    assert published_by_then < len(entries) / 2
    assert (answer.status_code, published) == (204, len(entries))


def test_an_event_nested_too_deep_is_400_and_one_as_deep_as_the_bound_is_delivered() -> None:
    app, _, got = collecting_app()
    deepest: Any = []
    for _ in range(127):
        deepest = [deepest]  # 128 levels
    too_deep = b"[" * 1000 + b"]" * 1000
    with DaprTestClient(app) as client:
        answer = client.post(
            BULK, content=b'[{"entryId":"a","contentType":"application/json","event":' + too_deep + b"}]"
        )
        assert answer.status_code == 400
        assert answer.json()["errorCode"] == "ERR_PUBSUB_EVENTS_SER"
        assert answer.json()["message"].endswith("an event nests deeper than 128 levels")
        entry = {"entryId": "a", "event": deepest, "contentType": "application/json"}
        assert client.post(BULK, json=[entry]).status_code == 204
        wait_for(client, 1)
    assert [event.data for event in got] == [deepest]


@pytest.mark.parametrize("event", [None, [1, 2], "text", 5])
def test_an_entry_that_cannot_be_a_cloudevent_refuses_the_whole_request(event: Any) -> None:
    # daprd makes every envelope before it publishes any, and refuses the request as a
    # whole when one cannot be made (500 there; 400 here, as for a single publish).
    app, _, got = collecting_app()
    entries = [
        {"entryId": "a", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "b", "event": event, "contentType": "application/cloudevents+json"},
    ]
    with DaprTestClient(app) as client:
        answer = client.post(BULK, json=entries)
        client.publish_and_wait("pubsub", "orders", {"n": "after"})  # behind "a", had it gone out
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    assert answer.json()["message"] == "cannot create cloudevent"
    assert [event.data for event in got] == [{"n": "after"}]
