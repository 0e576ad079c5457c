"""`POST /v1.0/publish`: every error answer, status and body, and who may call it (reference 1.1-1.3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTestClient


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


@pytest.mark.parametrize("path", ["/v1.0/publish/pubsub", "/v1.0/publish/pubsub/", "/v1.0/publish"])
def test_missing_topic_falls_through_to_invocation(client: DaprTestClient, path: str) -> None:
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
        ("abc", "ttlInSeconds value must be a valid integer: actual is 'abc'"),
        ("-5", "ttlInSeconds value must be higher than zero: actual is '-5'"),
    ],
)
def test_bad_ttl_is_refused_where_daprd_ignores_it(client: DaprTestClient, value: str, problem: str) -> None:
    answer = client.post(f"/v1.0/publish/pubsub/orders?metadata.ttlInSeconds={value}", json={})
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == "ERR_PUBSUB_REQUEST_METADATA"
    assert answer.json()["message"] == f"failed deserializing metadata. Error: {problem}"


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
    from fastapi_dapr.testing import DaprTest

    app = FastAPI()
    dapr = Dapr(app, resources_path=tmp_path)
    async with DaprTest(app):
        broker: Any = dapr._running().brokers["pubsub"]
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

    from fastapi_dapr.testing import DaprTest

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
        assert dapr._running().brokers["pubsub"].queued() == 0  # type: ignore[attr-defined]
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
