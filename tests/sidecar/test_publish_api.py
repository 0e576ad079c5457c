"""`POST /v1.0/publish`: every error answer, status and body, and who may call it (reference 1.1-1.3)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from fastapi_dapr import BulkEntry, BulkPublishEntry, CloudEvent, Dapr, DaprAPIError, FailedEntry
from fastapi_dapr.testing import DaprTest, DaprTestClient


@pytest.fixture
def client() -> Iterator[DaprTestClient]:
    app = FastAPI()
    Dapr(app, app_id="app1", api_token="")
    with DaprTestClient(app) as client:
        yield client


def test_success_is_204_with_an_empty_body(client: DaprTestClient) -> None:
    for method in ("POST", "PUT"):
        answer = client.request(method, "/v1.0/publish/pubsub/orders", json={"a": 1})
        assert (answer.status_code, answer.content) == (204, b"")


def test_unknown_pubsub_is_daprds_404_body(client: DaprTestClient) -> None:
    answer = client.post("/v1.0/publish/mypubsub/orders", json={})
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/json"
    # Byte for byte the body of reference 1.3: a Go struct, so errorCode, message, details.
    assert answer.content == (
        b'{"errorCode":"ERR_PUBSUB_NOT_FOUND","message":"pubsub mypubsub is not found",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io",'
        b'"metadata":{},"reason":"DAPR_PUBSUB_NOT_FOUND"}]}'
    )


def test_unknown_pubsub_error_carries_the_request_metadata(client: DaprTestClient) -> None:
    answer = client.post("/v1.0/publish/nope/orders?metadata.k=v", json={})
    assert answer.json()["details"][0]["metadata"] == {"k": "v"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1.0/publish/pubsub",
        "/v1.0/publish/pubsub/",
        "/v1.0/publish/bulk/pubsub",
        "/v1.0-alpha1/publish/bulk/pubsub/",
    ],
)
def test_a_publish_without_a_topic_says_so(client: DaprTestClient, path: str) -> None:
    # daprd's routes miss these paths and its invocation fallback answers "no app id" (a
    # difference: docs/differences.md); errors.md's ERR_TOPIC_NAME_EMPTY is what it is.
    answer = client.post(path, json={})
    assert answer.status_code == 404
    assert answer.json()["errorCode"] == "ERR_TOPIC_NAME_EMPTY"
    assert answer.json()["message"] == "topic is empty in pubsub pubsub"


def test_a_publish_to_an_unknown_pubsub_without_a_topic_names_the_pubsub_first(
    client: DaprTestClient,
) -> None:
    answer = client.post("/v1.0/publish/nope", json={})
    assert (answer.status_code, answer.json()["errorCode"]) == (404, "ERR_PUBSUB_NOT_FOUND")


@pytest.mark.parametrize("path", ["/v1.0/publish", "/v1.0/publish/"])
def test_a_publish_path_without_a_pubsub_falls_through_to_invocation(
    client: DaprTestClient, path: str
) -> None:
    answer = client.post(path, json={})
    assert answer.status_code == 404
    assert answer.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "failed getting app id either from the URL path or the header dapr-app-id",
    }


def test_wrong_method_falls_through_to_invocation(client: DaprTestClient) -> None:
    answer = client.get("/v1.0/publish/pubsub/orders")
    assert answer.status_code == 404
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"


def test_bad_raw_payload_value(client: DaprTestClient) -> None:
    answer = client.post("/v1.0/publish/pubsub/orders?metadata.rawPayload=yes", json={})
    assert answer.status_code == 400
    message = (
        "failed deserializing metadata. Error: rawPayload value must be a valid boolean: actual is 'yes'"
    )
    assert answer.json() == {
        "errorCode": "ERR_PUBSUB_REQUEST_METADATA",
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                "description": message,
                "owner": "",
                "resource_name": "pubsub",
                "resource_type": "pubsub",
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"rawPayload": "yes"},
                "reason": "DAPR_PUBSUB_METADATA_DESERIALIZATION",
            },
        ],
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        # daprd's TryGetTTL refuses these, and then its publish ignores the error:
        ("abc", "ttl value must be a valid integer: actual is 'abc'"),
        ("-5", "ttl value must be higher than zero: actual is '-5'"),
        ("99999999999999999999", "ttl value must be a valid integer: actual is '99999999999999999999'"),
        # daprd takes these (Go durations), and the message expires at once:
        ("0", "ttl value must be higher than zero: actual is '0'"),
        ("0s", "ttl value must be higher than zero: actual is '0s'"),
        ("-10s", "ttl value must be higher than zero: actual is '-10s'"),
        ("1ns", "ttl value must be at least 1s, the precision of an expiration: actual is '1ns'"),
        ("999ms", "ttl value must be at least 1s, the precision of an expiration: actual is '999ms'"),
    ],
)
async def test_a_ttl_that_cannot_work_is_refused_on_every_path(value: str, problem: str) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="app1", api_token="")
    message = f"failed deserializing metadata. Error: {problem}"
    async with DaprTest(app) as test:
        for key in ("ttlInSeconds", "ttl"):
            answer = await test.client.post(f"/v1.0/publish/pubsub/orders?metadata.{key}={value}", json={})
            assert answer.status_code == 400
            assert answer.json()["errorCode"] == "ERR_PUBSUB_REQUEST_METADATA"
            assert answer.json()["message"] == message
        with pytest.raises(DaprAPIError) as refused:
            await dapr.publish("pubsub", "orders", {}, metadata={"ttlInSeconds": value})
        assert (refused.value.status_code, refused.value.error_code) == (400, "ERR_PUBSUB_REQUEST_METADATA")
        assert refused.value.message == message
        # A bulk entry with that TTL (its own, or the request's merged into its own) fails.
        entries = [
            {"entryId": "own", "event": {}, "contentType": "application/json", "metadata": {"ttl": value}},
            {"entryId": "merged", "event": {}, "contentType": "application/json", "metadata": {}},
        ]
        answer = await test.client.post(
            f"/v1.0-alpha1/publish/bulk/pubsub/orders?metadata.ttlInSeconds={value}", json=entries
        )
        assert answer.status_code == 500
        assert answer.json()["failedEntries"] == [
            {"entryId": "own", "error": message},
            {"entryId": "merged", "error": message},
        ]
        failed = await dapr.publish_bulk("pubsub", "orders", [BulkPublishEntry({}, metadata={"ttl": value})])
        assert failed == [FailedEntry("0", message)]


@pytest.mark.parametrize(("value", "seconds"), [("1", 1), ("%2B2", 2), ("1s", 1), ("1.5s", 1.5), ("2m", 120)])
async def test_a_ttl_of_a_second_or_more_sets_the_expiration(value: str, seconds: float) -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    async with DaprTest(app) as test:
        consumer = await dapr.backend.running().brokers["pubsub"].subscribe("kept")  # read by this test only
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        answer = await test.client.post(f"/v1.0/publish/pubsub/kept?metadata.ttlInSeconds={value}", json={})
        assert answer.status_code == 204
        (delivery,) = await consumer.receive(1)
    event = json.loads(delivery.message.data)
    moment = datetime.datetime.fromisoformat(event["expiration"].replace("Z", "+00:00"))
    assert before <= moment <= before + datetime.timedelta(seconds=seconds + 1)


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"null", b"", b'"text"'])
def test_broken_user_cloudevent(client: DaprTestClient, body: bytes) -> None:
    answer = client.post(
        "/v1.0/publish/pubsub/orders", content=body, headers={"content-type": "application/cloudevents+json"}
    )
    # daprd answers 500 here; it is the caller's mistake, so 400 (docs: differences).
    assert answer.status_code == 400
    payload = answer.json()
    assert payload["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    assert payload["message"] == "cannot create cloudevent"
    assert payload["details"][1]["reason"] == "DAPR_PUBSUB_CLOUD_EVENT_CREATION"
    assert payload["details"][1]["metadata"]["appID"] == "app1"


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    app = FastAPI()
    Dapr(app, max_body_size=1024)
    with DaprTestClient(app) as client:
        assert client.post("/v1.0/publish/pubsub/t", content=b"x" * 1024).status_code == 204
        answer = client.post("/v1.0/publish/pubsub/t", content=b"x" * 1025)
        assert answer.status_code == 413
        assert answer.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b"x" * 1000
            yield b"x" * 1000

        assert client.post("/v1.0/publish/pubsub/t", content=chunks()).status_code == 413


def test_topic_parameters_are_unescaped_as_daprd_does() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    topics: list[str | None] = []

    for topic in ("A/B/C", "a/b", "with space", "plus+sign"):

        @dapr.subscribe("pubsub", topic)
        async def handler(event: CloudEvent) -> None:
            topics.append(event.topic)

    with DaprTestClient(app) as client:
        for path in ("A/B/C", "a%2Fb", "with+space", "plus%2Bsign"):
            assert client.post(f"/v1.0/publish/pubsub/{path}", json={}).status_code == 204
            client.wait_for_delivery()
    assert topics == ["A/B/C", "a/b", "with space", "plus+sign"]


def test_invalid_escape_is_400_plain_text(client: DaprTestClient) -> None:
    answer = client.post("/v1.0/publish/pubsub/bad%zzescape", json={})
    assert answer.status_code == 400
    assert answer.text == 'failed to unescape request parameter "bad%zzescape"\n'


def test_queue_full_is_a_publish_error_not_growth(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n"
        "  - {name: maxQueueLength, value: 2}\n  - {name: publishTimeout, value: 10ms}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, resources_path=tmp_path)
    release = asyncio.Event()

    @dapr.subscribe("pubsub", "slow")
    async def slow(event: CloudEvent) -> None:
        await release.wait()

    with DaprTestClient(app) as client:
        statuses = [client.post("/v1.0/publish/pubsub/slow", json={}).status_code for _ in range(100)]
        # 64 in flight in the engine, 2 queued, then the queue pushes back.
        assert statuses.count(204) == 66
        answer = client.post("/v1.0/publish/pubsub/slow", json={})
        assert answer.status_code == 500
        body = answer.json()
        assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
        assert body["message"].startswith("error when publishing to topic slow in pubsub pubsub: ")
        assert "full" in body["message"]
        client.portal.call(release.set)  # type: ignore[union-attr]
        for _ in range(66):
            assert client.wait_for_delivery(topic="slow").outcome == "delivered"


async def test_waiting_publishers_do_not_overfill_the_queue(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n"
        "  - {name: maxQueueLength, value: 2}\n  - {name: publishTimeout, value: 10s}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, resources_path=tmp_path)
    async with DaprTest(app):
        broker: Any = dapr.backend.running().brokers["pubsub"]
        consumer = await broker.subscribe("direct")  # nobody else reads this topic
        for n in range(2):
            await dapr.publish("pubsub", "direct", n)
        waiting = {asyncio.ensure_future(dapr.publish("pubsub", "direct", n)) for n in range(20)}
        await asyncio.sleep(0)  # each publisher runs once: all find the queue full
        assert broker.queued() == 2
        assert not any(task.done() for task in waiting)
        for _ in range(10):
            await consumer.receive(1)  # one slot frees ...
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            assert broker.queued() == 2  # ... and one waiting publisher takes it, not all of them
            assert len(done) == 1
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


def test_health_and_metadata(client: DaprTestClient) -> None:
    assert client.get("/v1.0/healthz").status_code == 204
    assert client.get("/v1.0/healthz/outbound").status_code == 204
    metadata = client.get("/v1.0/metadata").json()
    assert metadata["id"] == "app1"
    assert metadata["components"] == [
        {"name": "pubsub", "type": "pubsub.in-memory", "version": "v1", "capabilities": []}
    ]


def test_before_the_app_starts_the_sidecar_says_so() -> None:
    app = FastAPI()
    Dapr(app)
    client = TestClient(app)  # no `with`: no lifespan, no sidecar
    answer = client.post("/v1.0/publish/pubsub/orders", json={})
    assert answer.status_code == 503
    assert answer.json()["errorCode"] == "ERR_SIDECAR_NOT_STARTED"
    assert client.get("/v1.0/healthz").status_code == 500


# -- who may call it ----------------------------------------------------------


def test_remote_clients_are_refused_without_a_token() -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    with TestClient(app, client=("203.0.113.9", 4000)) as remote:
        answer = remote.post("/v1.0/publish/pubsub/orders", json={})
        assert answer.status_code == 403
        assert "DAPR_API_TOKEN" in answer.json()["message"]
        assert remote.get("/v1.0/healthz").status_code == 204  # probes are not refused
        assert remote.get("/v1.0/metadata").status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_are_served_without_a_token(host: str) -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    with TestClient(app, client=(host, 4000), base_url="http://127.0.0.1:8000") as local:
        assert local.post("/v1.0/publish/pubsub/orders", json={}).status_code == 204


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
def test_requests_through_a_proxy_are_not_local(header: str) -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    with TestClient(app, client=("127.0.0.1", 4000), base_url="http://127.0.0.1:8000") as local:
        answer = local.post("/v1.0/publish/pubsub/orders", json={}, headers={header: "127.0.0.1"})
        assert answer.status_code == 403


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 204),
        ({"origin": "http://localhost:8000", "sec-fetch-site": "same-origin"}, 204),
        ({"sec-fetch-site": "none"}, 204),  # typed in the address bar
        # a page of another site: a "simple" cross-site POST needs no CORS preflight
        ({"origin": "https://evil.example", "sec-fetch-site": "cross-site"}, 403),
        ({"origin": "null"}, 403),
        ({"sec-fetch-site": "same-site"}, 403),
        # DNS rebinding: the browser connects to 127.0.0.1 for a name the attacker controls
        ({"host": "attacker.example:8000"}, 403),
        ({"host": "localhost:8000"}, 204),
        ({"host": "[::1]:8000"}, 204),
    ],
)
def test_browser_requests_from_other_sites_are_refused(headers: dict[str, str], status: int) -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    with TestClient(app, client=("127.0.0.1", 4000), base_url="http://127.0.0.1:8000") as local:
        answer = local.post(
            "/v1.0/publish/pubsub/orders?metadata.rawPayload=true",
            content=b'{"type":"order.refund"}',
            headers={"content-type": "text/plain", **headers},
        )
        assert answer.status_code == status


async def test_a_body_cut_short_is_not_published() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    seen: list[Any] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        seen.append(event.data)

    async with DaprTest(app) as test:
        messages = [
            {"type": "http.request", "body": b'{"amount": 100', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1.0/publish/pubsub/orders",
            "raw_path": b"/v1.0/publish/pubsub/orders",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 500
        assert dapr.backend.running().brokers["pubsub"].queued() == 0  # type: ignore[attr-defined]
        # a whole one goes through, and is the only delivery
        report = await test.publish_and_wait("pubsub", "orders", {"amount": 1})
    assert report.outcome == "delivered"
    assert seen == [{"amount": 1}]


def test_a_forwarded_client_name_is_not_trusted() -> None:
    # A server trusting X-Forwarded-For puts the client's own words in `client`.
    app = FastAPI()
    Dapr(app, api_token="")
    with TestClient(app, client=("testclient", 4000)) as spoofed:
        answer = spoofed.get("/v1.0/metadata", headers={"x-forwarded-for": "testclient"})
        assert answer.status_code == 403


def test_api_token_is_required_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_API_TOKEN", "tok3n")
    app = FastAPI()
    Dapr(app)
    with TestClient(app, client=("198.51.100.7", 4000)) as remote:
        for token in (None, "wrong", "tok3n "):
            headers = {"dapr-api-token": token} if token else {}
            answer = remote.post("/v1.0/publish/pubsub/orders", json={}, headers=headers)
            assert answer.status_code == 401
            assert answer.text == "invalid api token\n"
            assert answer.headers["content-type"].startswith("text/plain")
        answer = remote.post("/v1.0/publish/pubsub/orders", json={}, headers={"dapr-api-token": "tok3n"})
        assert answer.status_code == 204
        assert remote.get("/v1.0/healthz").status_code == 204
        assert remote.get("/v1.0/healthz/outbound").status_code == 204
        # Only the exact health paths skip the token.
        assert remote.get("/v1.0/healthz/../metadata").status_code == 401
        assert remote.get("/v1.0/metadata?x=/healthz").status_code == 401


def test_app_routes_are_not_affected(client: DaprTestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)

    @app.get("/v1.0x")
    async def lookalike() -> dict[str, Any]:
        return {"app": True}

    assert client.get("/v1.0x").json() == {"app": True}
    assert json.loads(client.get("/dapr/subscribe").content) == []


# -- metadata that becomes headers --------------------------------------------


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("metadata.note=a%0D%0Ab", "the metadata value of 'note' has CR, LF or another control character"),
        ("metadata.note=a%0Ab", "the metadata value of 'note' has CR, LF or another control character"),
        ("metadata.note=a%00b", "the metadata value of 'note' has CR, LF or another control character"),
        ("metadata.a:b=1", "the metadata key 'a:b' is not an HTTP token"),
        ("metadata.a%20b=1", "the metadata key 'a b' is not an HTTP token"),
        ("metadata.k%0A=1", "the metadata key 'k\\n' is not an HTTP token"),
        ("metadata.=1", "the metadata key '' is not an HTTP token"),
    ],
)
async def test_metadata_that_cannot_be_a_header_is_refused_on_every_path(query: str, problem: str) -> None:
    # Every key and value becomes a header of the deliveries (reference 3.2): such a message
    # would fail every delivery to an app over HTTP, then its dead-letter publish.
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    key, _, raw_value = query[len("metadata.") :].partition("=")
    metadata = {unquote(key): unquote(raw_value)}

    def is_refused(error: dict[str, Any]) -> None:
        assert error["errorCode"] == "ERR_PUBSUB_REQUEST_METADATA"
        assert error["message"].startswith("failed deserializing metadata. Error: ")
        assert problem in error["message"]
        assert error["details"][-1]["reason"] == "DAPR_PUBSUB_METADATA_DESERIALIZATION"

    async with DaprTest(app) as test:
        broker: Any = dapr.backend.running().brokers["pubsub"]
        await broker.subscribe("orders")  # keeps whatever is published
        answer = await test.client.post(f"/v1.0/publish/pubsub/orders?{query}", json={})
        assert answer.status_code == 400
        is_refused(answer.json())
        bulk = "/v1.0-alpha1/publish/bulk/pubsub/orders"
        good = {"entryId": "good", "event": {}, "contentType": "application/json"}
        answer = await test.client.post(f"{bulk}?{query}", json=[good])  # the request's metadata
        assert answer.status_code == 400
        is_refused(answer.json())
        answer = await test.client.post(bulk, json=[good, {**good, "entryId": "bad", "metadata": metadata}])
        assert answer.status_code == 400  # the whole request: nothing published
        is_refused(answer.json())
        for call in (
            lambda: dapr.publish("pubsub", "orders", {}, metadata=metadata),
            lambda: dapr.publish_bulk("pubsub", "orders", [{}], metadata=metadata),
            lambda: dapr.publish_bulk("pubsub", "orders", [{}, BulkPublishEntry({}, metadata=metadata)]),
        ):
            with pytest.raises(DaprAPIError) as refused:
                await call()
            assert refused.value.status_code == 400
            is_refused(refused.value.to_json())
        assert broker.queued() == 0

    remote = FastAPI()
    nowhere = Dapr(remote, mode="remote", dapr_http_endpoint="http://127.0.0.1:9")  # never called
    async with remote.router.lifespan_context(remote):
        for call in (
            lambda: nowhere.publish("pubsub", "orders", {}, metadata=metadata),
            lambda: nowhere.publish_bulk("pubsub", "orders", [BulkPublishEntry({}, metadata=metadata)]),
        ):
            with pytest.raises(DaprAPIError) as refused:
                await call()
            assert refused.value.status_code == 400
            is_refused(refused.value.to_json())


def test_metadata_values_with_tabs_and_any_letters_are_delivered_as_headers() -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    seen: list[dict[str, str]] = []

    @app.post("/orders")
    async def orders(request: Request) -> dict[str, str]:
        seen.append(dict(request.headers))
        return {"status": "SUCCESS"}

    dapr.subscribe("pubsub", "orders", route="/orders")(orders)
    with DaprTestClient(app) as client:
        query = "metadata.note=a%09b&metadata.city=K%C3%B8benhavn&metadata.x-trace.id=7"
        assert client.post(f"/v1.0/publish/pubsub/orders?{query}", json={}).status_code == 204
        assert client.wait_for_delivery().outcome == "delivered"
    (headers,) = seen
    assert headers["note"] == "a\tb"
    assert headers["city"].encode("latin-1").decode() == "København"  # UTF-8, as daprd sends it
    assert headers["x-trace.id"] == "7"


# -- JSON nested deeper than the sidecar reads (MAX_DEPTH) --------------------


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_json_body_nested_too_deep_is_kept_as_text(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    got: list[Any] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        got.append(event.data)

    body = b"[" * 1000 + b"]" * 1000
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"), DaprTestClient(app) as client:
        answer = client.post(
            "/v1.0/publish/pubsub/orders", content=body, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 204
        assert client.wait_for_delivery().outcome == "delivered"
    assert got == [body.decode()]  # as any body that does not parse (reference 1.4, case B)
    assert caplog.records == []


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":'
        + json.dumps(nested(200)).encode()
        + b"}",
    ],
)
def test_a_cloudevent_nested_too_deep_is_400(client: DaprTestClient, body: bytes) -> None:
    answer = client.post(
        "/v1.0/publish/pubsub/orders", content=body, headers={"content-type": "application/cloudevents+json"}
    )
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    assert "nests deeper than 128 levels" in answer.json()["details"][1]["metadata"]["error"]


def test_json_as_deep_as_the_bound_goes_through_rules_to_single_and_bulk_handlers() -> None:
    app = FastAPI()
    dapr = Dapr(app, api_token="")
    got: list[Any] = []

    @dapr.subscribe("pubsub", "orders", match='event.type == "com.dapr.event.sent"', priority=1)
    async def on_order(event: CloudEvent) -> None:
        got.append(event.data)

    @dapr.subscribe("pubsub", "batches", bulk=True)
    async def on_batch(entries: list[BulkEntry[Any]]) -> None:
        got.extend(entry.event.data for entry in entries)

    deepest = nested(128)
    with DaprTestClient(app) as client:
        for topic in ("orders", "batches"):
            assert client.post(f"/v1.0/publish/pubsub/{topic}", json=deepest).status_code == 204
            assert client.wait_for_delivery(topic=topic).outcome == "delivered"
    assert got == [deepest, deepest]


async def test_data_nested_too_deep_is_refused_by_dapr_publish() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    async with DaprTest(app) as test:
        assert (await test.publish_and_wait("pubsub", "orders", nested(128))).outcome == "delivered"
        with pytest.raises(DaprAPIError) as refused:
            await dapr.publish("pubsub", "orders", nested(129))
    assert (refused.value.status_code, refused.value.error_code) == (400, "ERR_PUBSUB_CLOUD_EVENTS_SER")


async def test_a_message_another_publisher_nested_too_deep_is_settled_as_invalid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A daprd publishing to the same Redis stream reads 10,000 levels: its message must not
    # break the delivery here.
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    deep = b'{"specversion":"1.0","id":"1","data":' + b"[" * 1000 + b"]" * 1000 + b"}"
    async with DaprTest(app) as test:
        await dapr.backend.running().brokers["pubsub"].publish("orders", deep, {})
        report = await test.wait_for_delivery()
    assert report.outcome == "invalid"
    assert "nests deeper than 200 levels" in str(report.reason)
    assert "Traceback" not in caplog.text


def test_a_delivery_from_daprd_nested_too_deep_is_dropped_not_a_500(caplog: pytest.LogCaptureFixture) -> None:
    # daprd reads and sends 10,000 levels: the app's side reads 200, then drops what it cannot.
    app = FastAPI()
    dapr = Dapr(app, mode="remote", dapr_http_endpoint="http://127.0.0.1:9")

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    @dapr.subscribe("pubsub", "batches", bulk=True)
    async def on_batch(entries: list[BulkEntry[Any]]) -> None: ...

    deep = b"[" * 1000 + b"]" * 1000
    event = b'{"specversion":"1.0","id":"deep","source":"s","type":"t","data":' + deep + b"}"
    bulk = b'{"entries":[{"entryId":"e","event":' + event + b'}],"metadata":{}}'
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), TestClient(app) as client:
        single = client.post(
            "/events/pubsub/orders", content=event, headers={"content-type": "application/cloudevents+json"}
        )
        batch = client.post(
            "/events/pubsub/batches", content=bulk, headers={"content-type": "application/json"}
        )
    assert (single.status_code, single.json()) == (200, {"status": "DROP"})
    assert batch.status_code == 400
    assert batch.json()["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert "Traceback" not in caplog.text


# -- before deliveries start, and after they stop ------------------------------


def starting_app(publish: Callable[[Dapr], Awaitable[None]], **dapr_options: Any) -> tuple[FastAPI, Dapr]:
    """An app whose own start-up runs `publish`, before the runtime's deliveries start."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publish(dapr)
        yield

    app = FastAPI(lifespan=lifespan)
    dapr = Dapr(app, **dapr_options)
    return app, dapr


async def test_a_message_published_while_the_app_starts_is_delivered_once_deliveries_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def publish(dapr: Dapr) -> None:
        await dapr.publish("pubsub", "orders", {"n": 1})
        await dapr.publish("pubsub", "nobody", {"n": 2})

    app, dapr = starting_app(publish)
    got: list[Any] = []
    delivered = asyncio.Event()

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        got.append(event.data)
        delivered.set()

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app):  # its reports start after the start-up: the handler says it
            await asyncio.wait_for(delivered.wait(), 10)
    assert got == [{"n": 1}]
    # Kept until the subscriptions started: none took this one, as a log line says.
    assert "1 messages of topic nobody were not delivered and are discarded at start-up" in caplog.text


async def test_messages_kept_until_deliveries_start_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n  - {name: maxQueueLength, value: 2}\n"
    )
    refusals: list[DaprAPIError] = []

    async def publish(dapr: Dapr) -> None:
        for n in range(3):
            try:
                await dapr.publish("pubsub", "orders" if n % 2 else "audits", n)
            except DaprAPIError as exc:
                refusals.append(exc)

    app, dapr = starting_app(publish, resources_path=tmp_path)
    got: list[Any] = []
    both = asyncio.Event()

    @dapr.subscribe("pubsub", "orders")
    @dapr.subscribe("pubsub", "audits")
    async def on_any(event: CloudEvent) -> None:
        got.append(event.data)
        if len(got) == 2:
            both.set()

    async with DaprTest(app):
        await asyncio.wait_for(both.wait(), 10)
    assert sorted(got) == [0, 1]
    (refusal,) = refusals
    assert (refusal.status_code, refusal.error_code) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    assert "2 messages wait for the subscriptions to start" in refusal.message


async def test_a_publish_once_deliveries_stopped_is_refused_not_dropped() -> None:
    refusals: list[DaprAPIError] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        try:  # the app's own shutdown runs after the runtime's deliveries stopped
            await dapr.publish("pubsub", "orders", {"n": 1})
        except DaprAPIError as exc:
            refusals.append(exc)

    app = FastAPI(lifespan=lifespan)
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    async with DaprTest(app):
        pass
    (refusal,) = refusals
    assert (refusal.status_code, refusal.error_code) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    assert "the subscriptions to topic orders have stopped" in refusal.message


async def test_before_and_after_the_runtime_a_publish_is_refused() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    for moment in ("before", "after"):
        with pytest.raises(DaprAPIError) as refused:
            await dapr.publish("pubsub", "orders", {"n": 1})
        assert (refused.value.status_code, refused.value.error_code) == (503, "ERR_SIDECAR_NOT_STARTED"), (
            moment
        )
        if moment == "before":
            async with DaprTest(app):
                pass
